//! Errand's web app: pages, components and server functions, rendered on the server (`ssr`) and
//! hydrated in the browser (`hydrate`). Server-only code lives in [`server`].

pub mod clock;
pub mod console;
pub mod error;
pub mod jobs;
#[cfg(feature = "hydrate")]
mod live;
pub mod not_found;
#[cfg(feature = "ssr")]
pub mod server;
pub mod wire;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Title, provide_meta_context};
use leptos_router::components::{A, ParentRoute, Route, Router, Routes};
use leptos_router::{Lazy, SsrMode, path};

pub use not_found::NotFound;

/// The HTML document around the app, rendered by the server; `stylesheet` is the address of
/// this build's CSS (its name carries a hash).
pub fn shell(options: LeptosOptions, stylesheet: std::sync::Arc<str>) -> impl IntoView {
    #[cfg(feature = "ssr")]
    server::set_page_policy();
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <link rel="icon" href="data:,"/>
                <link rel="stylesheet" id="leptos" href=stylesheet.to_string()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Title text="Errand"/>
        <Router>
            <header class="top">
                <a class="brand" href="/">"Errand"</a>
                <nav>
                    <A href="/">"New job"</A>
                    <A href="/jobs">"My jobs"</A>
                </nav>
            </header>
            <main>
                <Routes fallback=NotFound>
                    <Route path=path!("/") view=jobs::NewJobPage/>
                    <Route path=path!("/jobs") view=jobs::JobListPage/>
                    <Route path=path!("/jobs/:id") view=jobs::JobPage ssr=SsrMode::Async/>
                    // The operators' console: whole pages at once (they work without JavaScript),
                    // each page's code in a WASM chunk of its own (console/routes.rs).
                    <Route path=path!("/admin/login") view=console::LoginPage/>
                    <ParentRoute path=path!("/admin") view=console::ConsoleLayout>
                        <Route path=path!("") view={Lazy::<console::routes::OverviewRoute>::new()} ssr=SsrMode::Async/>
                        <Route path=path!("jobs") view={Lazy::<console::routes::JobsRoute>::new()} ssr=SsrMode::Async/>
                        <Route path=path!("jobs/:id") view={Lazy::<console::routes::JobRoute>::new()} ssr=SsrMode::Async/>
                        <Route path=path!("kinds") view={Lazy::<console::routes::KindsRoute>::new()} ssr=SsrMode::Async/>
                        <Route path=path!("workers") view={Lazy::<console::routes::WorkersRoute>::new()} ssr=SsrMode::Async/>
                        <Route path=path!("audit") view={Lazy::<console::routes::AuditRoute>::new()} ssr=SsrMode::Async/>
                    </ParentRoute>
                </Routes>
            </main>
        </Router>
    }
}
