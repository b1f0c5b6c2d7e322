//! The 404 page: unknown addresses, unknown jobs and other browsers' jobs all look the same.

use leptos::prelude::*;

#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    crate::server::set_status(axum::http::StatusCode::NOT_FOUND);

    view! {
        <section class="card" data-testid="not-found">
            <h1>"Not found"</h1>
            <p>"There is nothing here for this browser. " <a href="/">"Start a job"</a> " or see " <a href="/jobs">"your jobs"</a> "."</p>
        </section>
    }
}
