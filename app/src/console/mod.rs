//! The operators' console (`/admin`): every owner's jobs, searched and acted on one by one or in
//! bulk, the kinds (pause and resume), the worker processes, the audit log and an overview with
//! charts. Server-rendered pages that work as plain pages and forms; once hydrated they follow
//! the console's event stream (`/api/admin/events`) and re-read what they show as jobs change.

pub mod api;
pub mod audit;
pub mod chart;
pub mod jobs;
pub mod kinds;
pub mod login;
pub mod overview;
pub mod routes;
#[cfg(feature = "ssr")]
pub mod server;
pub mod wire;
pub mod workers;

pub use audit::AuditPage;
pub use jobs::{ConsoleJobPage, ConsoleJobsPage};
pub use kinds::KindsPage;
pub use login::LoginPage;
pub use overview::OverviewPage;
pub use workers::WorkersPage;

use crate::error::AppError;
use leptos::prelude::*;
use leptos_router::components::{A, Outlet};

/// The console's frame: its navigation, the logout button, and the page.
#[component]
pub fn ConsoleLayout() -> impl IntoView {
    view! {
        <div class="console">
            <nav class="console-nav" aria-label="Console">
                <A href="/admin" exact=true>"Overview"</A>
                <A href="/admin/jobs">"Jobs"</A>
                <A href="/admin/kinds">"Kinds"</A>
                <A href="/admin/workers">"Workers"</A>
                <A href="/admin/audit">"Audit log"</A>
                <form method="post" action="/admin/logout" class="inline logout">
                    <button type="submit" class="secondary" data-testid="logout">"Log out"</button>
                </form>
            </nav>
            <Outlet/>
        </div>
    }
}

/// A console page's error, shown in place of its content.
fn failure(err: AppError) -> AnyView {
    view! { <p class="form-error" role="alert">{err.to_string()}</p> }.into_any()
}

/// The note a viewer sees where an admin would see buttons.
fn read_only_note() -> impl IntoView {
    view! {
        <p class="hint" data-testid="read-only">
            "You are logged in as a viewer: you can look, not act."
        </p>
    }
}

/// Re-reads a page (`refetch`) when jobs change: on the console's event stream once hydrated,
/// at most once a second; while the stream is down, every second.
#[cfg(feature = "hydrate")]
fn refresh_on_changes(refetch: impl Fn() + Clone + 'static) {
    use crate::live::{Done, watch};
    use crate::wire::event;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    let pending = Rc::new(Cell::new(false));
    let schedule = Rc::new(move || {
        if pending.replace(true) {
            return;
        }
        let (pending, refetch) = (pending.clone(), refetch.clone());
        set_timeout(
            move || {
                pending.set(false);
                refetch();
            },
            Duration::from_secs(1),
        );
    });
    let on_event = {
        let schedule = schedule.clone();
        Rc::new(move |_: &str, _: &str| {
            schedule();
            true
        })
    };
    let poll = Rc::new(move |_: Done| schedule());
    watch(
        "/api/admin/events".into(),
        &[event::JOB, event::RESYNC],
        on_event,
        poll,
    );
}

/// A count with thousands separators (`12,345`).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in ms, short (`850 ms`, `2.4 s`, `3.1 min`).
fn short_ms(ms: i64) -> String {
    match ms {
        ..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{:.1} min", ms as f64 / 60_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(short_ms(850), "850 ms");
        assert_eq!(short_ms(2_400), "2.4 s");
        assert_eq!(short_ms(186_000), "3.1 min");
    }
}
