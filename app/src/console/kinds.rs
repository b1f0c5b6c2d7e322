//! `/admin/kinds`: each kind's waiting and running jobs; pause and resume.

use super::api::{ConsolePause, console_kinds};
use super::wire::KindsPage as Kinds;
use super::{failure, read_only_note, thousands};
use leptos::form::ActionForm;
use leptos::prelude::*;

#[component]
pub fn KindsPage() -> impl IntoView {
    let pause = ServerAction::<ConsolePause>::new();
    let kinds = Resource::new(move || pause.version().get(), |_| console_kinds());
    #[cfg(feature = "hydrate")]
    super::refresh_on_changes(move || kinds.refetch());
    view! {
        <section class="card wide">
            <h1>"Kinds"</h1>
            <p class="hint">
                "A paused kind's queued jobs wait (their owners see \u{201c}paused by the operator\u{201d}); "
                "running ones finish."
            </p>
            {move || pause.value().get().and_then(Result::err).map(failure)}
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match kinds.await {
                        Ok(page) => view! { <KindTable page pause/> }.into_any(),
                        Err(err) => failure(err),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn KindTable(page: Kinds, pause: ServerAction<ConsolePause>) -> impl IntoView {
    let can_act = page.can_act;
    view! {
        {(!can_act).then(read_only_note)}
        <table class="jobs" data-testid="kinds">
            <thead><tr><th>"Kind"</th><th>"Waiting"</th><th>"Running"</th><th>"State"</th><th></th></tr></thead>
            <tbody>
                {page.kinds.into_iter().map(|kind| {
                    let paused = kind.paused_since.is_some();
                    let name = kind.kind.clone();
                    view! {
                        <tr data-testid="kind-row" data-kind=kind.kind.clone()>
                            <td><a href=format!("/admin/jobs?kind={}", kind.kind)>{kind.kind.clone()}</a></td>
                            <td>{thousands(kind.queued)}</td>
                            <td>{thousands(kind.running)}</td>
                            <td data-testid="kind-state">
                                {match &kind.paused_since {
                                    Some(since) => format!("paused since {since}"),
                                    None => "running".to_owned(),
                                }}
                            </td>
                            <td>
                                {can_act.then(|| view! {
                                    <ActionForm action=pause attr:class="inline">
                                        <input type="hidden" name="kind" value=name.clone()/>
                                        <input type="hidden" name="pause" value=(!paused).to_string()/>
                                        <button type="submit" class="secondary" data-testid="kind-toggle">
                                            {if paused { "Resume" } else { "Pause" }}
                                        </button>
                                    </ActionForm>
                                })}
                            </td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}
