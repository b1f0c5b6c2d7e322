//! `/admin/workers`: every worker process the registry knows, alive or dead.

use super::api::console_workers;
use super::failure;
use leptos::prelude::*;

#[component]
pub fn WorkersPage() -> impl IntoView {
    let workers = Resource::new(|| (), |()| console_workers());
    // Heartbeats are not job events: re-read every few seconds, and when jobs change.
    #[cfg(feature = "hydrate")]
    {
        super::refresh_on_changes(move || workers.refetch());
        if let Ok(handle) =
            set_interval_with_handle(move || workers.refetch(), std::time::Duration::from_secs(5))
        {
            on_cleanup(move || handle.clear());
        }
    }
    view! {
        <section class="card wide">
            <h1>"Workers"</h1>
            <p class="hint">"A worker silent for 15 s is dead: its running jobs go back to the queue."</p>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match workers.await {
                        Err(err) => failure(err),
                        Ok(workers) if workers.is_empty() => view! {
                            <p>"No worker process has started yet."</p>
                        }.into_any(),
                        Ok(workers) => view! {
                            <table class="jobs" data-testid="workers">
                                <thead><tr>
                                    <th>"Worker"</th><th>"Host"</th><th>"Role"</th><th>"Version"</th>
                                    <th>"Started"</th><th>"Last heartbeat"</th><th>"Running"</th><th>"State"</th>
                                </tr></thead>
                                <tbody>
                                    {workers.into_iter().map(|w| view! {
                                        <tr data-testid="worker-row">
                                            <td><code>{w.name}</code></td>
                                            <td>{w.host}</td>
                                            <td>{w.role}</td>
                                            <td>{w.version}</td>
                                            <td><time datetime=w.started_at.clone()>{w.started_at.clone()}</time></td>
                                            <td>{format!("{} s ago", w.silent_s)}</td>
                                            <td>{format!("{} of {}", w.running, w.concurrency)}</td>
                                            <td>
                                                <span class=if w.alive { "badge state-running" } else { "badge state-failed" }>
                                                    {if w.alive { "alive" } else { "dead" }}
                                                </span>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}
