//! `/admin/kinds`: each kind's waiting and running jobs, pause and resume; the recurring jobs,
//! run now, pause and resume.

use super::api::{ConsolePause, ConsoleSchedule, console_kinds};
use super::wire::{KindsPage as Kinds, ScheduleRow};
use super::{failure, read_only_note, thousands};
use crate::clock::time_of_day;
use leptos::form::ActionForm;
use leptos::prelude::*;

#[component]
pub fn KindsPage() -> impl IntoView {
    let pause = ServerAction::<ConsolePause>::new();
    let schedule = ServerAction::<ConsoleSchedule>::new();
    let kinds = Resource::new(
        move || (pause.version().get(), schedule.version().get()),
        |_| console_kinds(),
    );
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
            {move || schedule.value().get().and_then(Result::err).map(failure)}
            {move || schedule.value().get().and_then(Result::ok).flatten().map(|id| view! {
                <p class="notice" data-testid="schedule-ran">
                    "Started " <a href=format!("/admin/jobs/{id}")><code>{id.clone()}</code></a>
                </p>
            })}
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match kinds.await {
                        Ok(page) => {
                            let (schedules, can_act) = (page.schedules.clone(), page.can_act);
                            view! {
                                <KindTable page pause/>
                                <ScheduleTable schedules can_act action=schedule/>
                            }
                            .into_any()
                        }
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
            <thead><tr><th>"Kind"</th><th>"Waiting"</th><th>"Running"</th><th>"Limit"</th><th>"State"</th><th></th></tr></thead>
            <tbody>
                {page.kinds.into_iter().map(|kind| {
                    let paused = kind.paused_since.is_some();
                    let name = kind.kind.clone();
                    view! {
                        <tr data-testid="kind-row" data-kind=kind.kind.clone()>
                            <td><a href=format!("/admin/jobs?kind={}", kind.kind)>{kind.kind.clone()}</a></td>
                            <td>{thousands(kind.queued)}</td>
                            <td>{thousands(kind.running)}</td>
                            <td data-testid="kind-limit">{kind.limit.clone().unwrap_or_else(|| "–".into())}</td>
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

/// The recurring jobs (`--schedules`): pattern, next and last run, run now, pause and resume.
#[component]
fn ScheduleTable(
    schedules: Vec<ScheduleRow>,
    can_act: bool,
    action: ServerAction<ConsoleSchedule>,
) -> impl IntoView {
    let time = |at: &Option<String>| {
        at.as_deref()
            .map_or_else(|| "–".to_owned(), |at| format!("{} UTC", time_of_day(at)))
    };
    view! {
        <h2>"Recurring jobs"</h2>
        {schedules.is_empty().then(|| view! {
            <p class="hint" data-testid="no-schedules">"None: start errand with --schedules FILE to add some."</p>
        })}
        {(!schedules.is_empty()).then(|| view! {
            <table class="jobs" data-testid="schedules">
                <thead><tr>
                    <th>"Name"</th><th>"Pattern"</th><th>"Kind"</th><th>"Next run"</th>
                    <th>"Last run"</th><th>"State"</th><th></th>
                </tr></thead>
                <tbody>
                    {schedules.into_iter().map(|row| {
                        let paused = row.paused_since.is_some();
                        let (run_name, toggle_name) = (row.name.clone(), row.name.clone());
                        view! {
                            <tr data-testid="schedule-row" data-schedule=row.name.clone()>
                                <td>{row.name.clone()}</td>
                                <td><code>{row.cron.clone()}</code> " " {row.timezone.clone()}</td>
                                <td>{row.kind.clone()}</td>
                                <td data-testid="schedule-next">{time(&row.next_run)}</td>
                                <td>
                                    {match row.last_job.clone() {
                                        Some(id) => view! {
                                            <a href=format!("/admin/jobs/{id}")>{time(&row.last_run)}</a>
                                        }.into_any(),
                                        None => view! { "–" }.into_any(),
                                    }}
                                </td>
                                <td data-testid="schedule-state">
                                    {match &row.paused_since {
                                        Some(since) => format!("paused since {} UTC", time_of_day(since)),
                                        None => "active".to_owned(),
                                    }}
                                </td>
                                <td>
                                    {can_act.then(|| view! {
                                        <ActionForm action attr:class="inline">
                                            <input type="hidden" name="name" value=run_name/>
                                            <input type="hidden" name="action" value="run"/>
                                            <button type="submit" class="secondary" data-testid="schedule-run">"Run now"</button>
                                        </ActionForm>
                                        <ActionForm action attr:class="inline">
                                            <input type="hidden" name="name" value=toggle_name/>
                                            <input type="hidden" name="action" value=if paused { "resume" } else { "pause" }/>
                                            <button type="submit" class="secondary" data-testid="schedule-toggle">
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
        })}
    }
}
