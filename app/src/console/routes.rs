//! The console's pages as lazy routes: with `cargo leptos … --split`, the browser build puts
//! each page's code in a WASM chunk of its own, fetched when an `/admin` page is first shown, so
//! the people who only use `/` and `/jobs` never download the console. The server renders them
//! like any route.

use leptos::prelude::*;
use leptos_router::{LazyRoute, lazy_route};

/// `/admin`.
pub struct OverviewRoute;

#[lazy_route]
impl LazyRoute for OverviewRoute {
    fn data() -> Self {
        Self
    }

    fn view(_this: Self) -> AnyView {
        view! { <super::OverviewPage/> }.into_any()
    }
}

/// `/admin/jobs`.
pub struct JobsRoute;

#[lazy_route]
impl LazyRoute for JobsRoute {
    fn data() -> Self {
        Self
    }

    fn view(_this: Self) -> AnyView {
        view! { <super::ConsoleJobsPage/> }.into_any()
    }
}

/// `/admin/jobs/{id}`.
pub struct JobRoute;

#[lazy_route]
impl LazyRoute for JobRoute {
    fn data() -> Self {
        Self
    }

    fn view(_this: Self) -> AnyView {
        view! { <super::ConsoleJobPage/> }.into_any()
    }
}

/// `/admin/kinds`.
pub struct KindsRoute;

#[lazy_route]
impl LazyRoute for KindsRoute {
    fn data() -> Self {
        Self
    }

    fn view(_this: Self) -> AnyView {
        view! { <super::KindsPage/> }.into_any()
    }
}

/// `/admin/workers`.
pub struct WorkersRoute;

#[lazy_route]
impl LazyRoute for WorkersRoute {
    fn data() -> Self {
        Self
    }

    fn view(_this: Self) -> AnyView {
        view! { <super::WorkersPage/> }.into_any()
    }
}

/// `/admin/audit`.
pub struct AuditRoute;

#[lazy_route]
impl LazyRoute for AuditRoute {
    fn data() -> Self {
        Self
    }

    fn view(_this: Self) -> AnyView {
        view! { <super::AuditPage/> }.into_any()
    }
}
