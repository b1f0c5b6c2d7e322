//! `/admin`: the counts per state, jobs per kind, finished jobs over 15 minutes, an hour or a
//! day, and wait and run times per kind.

use super::api::console_overview;
use super::chart::FinishedChart;
use super::wire::{Overview, WINDOWS};
use super::{failure, short_ms, thousands};
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

#[component]
pub fn OverviewPage() -> impl IntoView {
    let query = use_query_map();
    let window = move || query.read().get("window").unwrap_or_default();
    let overview = Resource::new(window, console_overview);
    #[cfg(feature = "hydrate")]
    super::refresh_on_changes(move || overview.refetch());
    view! {
        <section class="card wide">
            <h1>"Overview"</h1>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match overview.await {
                        Ok(overview) => view! { <OverviewBody overview/> }.into_any(),
                        Err(err) => failure(err),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn OverviewBody(overview: Overview) -> impl IntoView {
    let current = overview.window.clone();
    view! {
        <ul class="counts" data-testid="state-counts">
            {overview.counts.iter().map(|(state, count)| view! {
                <li>
                    <a href=format!("/admin/jobs?state={state}") data-state=state.clone()>
                        <span class=format!("badge state-{state}")>{state.clone()}</span>
                        " " <strong data-testid="state-count">{thousands(*count)}</strong>
                    </a>
                </li>
            }).collect_view()}
        </ul>
        <h2>"Finished jobs"</h2>
        <nav class="tabs" aria-label="Chart window">
            {WINDOWS.iter().map(|(name, _, _)| {
                let here = (*name == current).then_some("page");
                view! { <a href=format!("/admin?window={name}") aria-current=here>{*name}</a> }
            }).collect_view()}
        </nav>
        <FinishedChart bars=overview.bars bar_s=overview.bar_s/>
        <h2>"Kinds"</h2>
        <table class="jobs">
            <thead><tr><th>"Kind"</th><th>"Waiting"</th><th>"Running"</th><th>"State"</th></tr></thead>
            <tbody>
                {overview.kinds.into_iter().map(|kind| view! {
                    <tr>
                        <td><a href=format!("/admin/jobs?kind={}", kind.kind)>{kind.kind.clone()}</a></td>
                        <td>{thousands(kind.queued)}</td>
                        <td>{thousands(kind.running)}</td>
                        <td>{if kind.paused_since.is_some() { "paused" } else { "running" }}</td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
        <h2>"Wait and run times"</h2>
        {if overview.times.is_empty() {
            view! { <p class="hint">"No job finished in this window."</p> }.into_any()
        } else {
            view! {
                <table class="jobs" data-testid="times">
                    <thead><tr>
                        <th>"Kind"</th><th>"Jobs"</th><th>"Wait p50"</th><th>"Wait p95"</th>
                        <th>"Run p50"</th><th>"Run p95"</th>
                    </tr></thead>
                    <tbody>
                        {overview.times.into_iter().map(|t| view! {
                            <tr>
                                <td>{t.kind}</td><td>{thousands(t.jobs)}</td>
                                <td>{short_ms(t.wait_p50)}</td><td>{short_ms(t.wait_p95)}</td>
                                <td>{short_ms(t.run_p50)}</td><td>{short_ms(t.run_p95)}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any()
        }}
    }
}
