//! `/jobs/{id}`: one job, server-rendered, then kept live by its event stream once hydrated.
//! Without JavaScript the page reloads itself every two seconds until the job is final.

use super::api::{CancelJob, RetryJob, get_job};
use super::results::JobResult;
use crate::clock::time_of_day;
use crate::not_found::NotFound;
#[cfg(any(feature = "hydrate", test))]
use crate::wire::LogLineView;
use crate::wire::{JobDetail, JobView};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

/// How many log lines the page keeps (the server keeps the same number).
#[cfg(any(feature = "hydrate", test))]
const LOG_LINES_SHOWN: usize = 1_000;

#[component]
pub fn JobPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").unwrap_or_default();
    let detail = Resource::new(id, get_job);

    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading job…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(Some(detail)) => view! { <LiveJob detail/> }.into_any(),
                    Ok(None) | Err(crate::error::AppError::NotFound) => {
                        view! { <NotFound/> }.into_any()
                    }
                    Err(err) => {
                        view! { <p class="form-error" role="alert">{err.to_string()}</p> }
                            .into_any()
                    }
                }
            })}
        </Suspense>
    }
}

#[component]
fn LiveJob(detail: JobDetail) -> impl IntoView {
    let retried_as = detail.retried_as;
    let job = RwSignal::new(detail.job);
    let logs = RwSignal::new(detail.logs);
    let initially_final = job.get_untracked().state.is_terminal();

    #[cfg(feature = "hydrate")]
    if !initially_final {
        subscribe(job, logs);
    }

    let state = move || job.read().state.as_str();
    let announcement = move || format!("Job {}", state());
    let percent = move || job.read().percent();

    view! {
        {(!initially_final).then(|| view! {
            // Read only when scripting is off: a page without JavaScript refreshes itself.
            <div inner_html=r#"<noscript><meta http-equiv="refresh" content="2"></noscript>"#></div>
        })}
        <section class="card job">
            <header class="job-header">
                <h1>{move || job.read().kind.clone()} " job"</h1>
                <span class=move || format!("badge state-{}", state()) data-testid="job-state">
                    {state}
                </span>
                <CancelButton job/>
                <RetryButton job/>
            </header>
            <p class="visually-hidden" role="status" aria-live="polite" data-testid="job-announcer">
                {announcement}
            </p>
            // A native bar: its width needs no inline style, which the page's policy forbids.
            <progress
                class="progress"
                max="100"
                value=move || percent().unwrap_or(0).to_string()
                role="progressbar"
                aria-label="Progress"
                aria-valuemin="0"
                aria-valuemax="100"
                aria-valuenow=move || percent().map(|p| p.to_string())
                data-testid="job-progress"
            ></progress>
            <p class="progress-line">
                <span data-testid="job-progress-text">
                    {move || percent().map(|p| format!("{p}%")).unwrap_or_else(|| "–".into())}
                </span>
                " "
                <span data-testid="job-stage">{move || job.read().stage.clone().unwrap_or_default()}</span>
                <Eta job/>
            </p>
            <Waiting job/>
            <Links job retried_as/>
            <JobFacts job/>
            <JobOutcome job/>
            <h2>"Log"</h2>
            <ol class="log" data-testid="job-logs">
                <For each=move || logs.get() key=|line| line.seq let:line>
                    <li><time datetime=line.at.clone()>{time_of_day(&line.at)}</time> " " {line.line}</li>
                </For>
            </ol>
        </section>
    }
}

#[component]
fn JobFacts(job: RwSignal<JobView>) -> impl IntoView {
    let time = move |pick: fn(&JobView) -> Option<String>| {
        move || {
            pick(&job.read())
                .map(|t| time_of_day(&t))
                .unwrap_or_else(|| "–".into())
        }
    };
    view! {
        <dl class="facts">
            <dt>"Id"</dt>
            <dd><code>{move || job.read().id.clone()}</code></dd>
            <dt>"Parameters"</dt>
            <dd><code data-testid="job-params">{move || job.read().params.to_string()}</code></dd>
            <dt>"Attempts"</dt>
            <dd data-testid="job-attempts">
                {move || format!("{} of {}", job.read().attempts, job.read().max_attempts)}
            </dd>
            <dt>"Priority"</dt>
            <dd data-testid="job-priority">{move || job.read().priority}</dd>
            <dt>"Created"</dt>
            <dd>{time(|j| Some(j.created_at.clone()))}</dd>
            <dt>"Started"</dt>
            <dd>{time(|j| j.started_at.clone())}</dd>
            <dt>"Finished"</dt>
            <dd>{time(|j| j.finished_at.clone())}</dd>
        </dl>
    }
}

#[component]
fn JobOutcome(job: RwSignal<JobView>) -> impl IntoView {
    view! {
        {move || {
            let view = job.get();
            view.result.is_some().then(|| view! { <JobResult job=view/> })
        }}
        <Show when=move || job.read().error.is_some()>
            <h2>"Error"</h2>
            <p class="form-error" data-testid="job-error">
                {move || job.read().error.clone().unwrap_or_default()}
            </p>
        </Show>
    }
}

/// While a queued job waits: why and until when ("scheduled for …", "3 jobs ahead of it",
/// "waiting for a thumbnail slot (4 of 4 busy)"…), counting down live.
#[component]
fn Waiting(job: RwSignal<JobView>) -> impl IntoView {
    let now = crate::clock::ticking_now();
    let text = move || crate::wire::waiting_text(&job.read(), now.get());
    view! {
        <Show when=move || text().is_some()>
            <p class="waiting" data-testid="job-waiting">{text}</p>
        </Show>
    }
}

/// A running job's estimated time left, from its progress rate, counting down live.
#[component]
fn Eta(job: RwSignal<JobView>) -> impl IntoView {
    let now = crate::clock::ticking_now();
    let left = move || crate::wire::seconds_left(&job.read(), now.get());
    view! {
        <Show when=move || left().is_some()>
            <span class="eta" data-testid="job-eta">
                {move || format!("about {} s left", left().unwrap_or(0))}
            </span>
        </Show>
    }
}

/// Links between a job and its manual retries.
#[component]
fn Links(job: RwSignal<JobView>, retried_as: Vec<String>) -> impl IntoView {
    let retry_of = move || job.read().retry_of.clone();
    view! {
        {move || retry_of().map(|id| view! {
            <p data-testid="job-retry-of">"Retry of " <a href=format!("/jobs/{id}")><code>{id.clone()}</code></a></p>
        })}
        {(!retried_as.is_empty()).then(|| view! {
            <p data-testid="job-retried-as">
                "Retried as "
                {retried_as.iter().map(|id| view! { <a href=format!("/jobs/{id}")><code>{id.clone()}</code></a> " " }).collect_view()}
            </p>
        })}
    }
}

/// A Retry button once the job failed or was cancelled: it starts a new, linked job.
#[component]
fn RetryButton(job: RwSignal<JobView>) -> impl IntoView {
    let retry = ServerAction::<RetryJob>::new();
    let id = move || job.read().id.clone();
    let retriable = move || {
        matches!(
            job.read().state,
            crate::wire::JobState::Failed | crate::wire::JobState::Cancelled
        )
    };
    view! {
        <Show when=retriable>
            <ActionForm action=retry attr:class="inline">
                <input type="hidden" name="id" value=id/>
                <button type="submit" data-testid="retry-job" disabled=move || retry.pending().get()>"Retry"</button>
            </ActionForm>
        </Show>
        {move || retry.value().get().and_then(Result::err).map(|err| view! { <p class="form-error" role="alert">{err.to_string()}</p> })}
    }
}

/// A Cancel button while the job is queued or running (a plain form: works without JavaScript).
#[component]
fn CancelButton(job: RwSignal<JobView>) -> impl IntoView {
    let cancel = ServerAction::<CancelJob>::new();
    let id = move || job.read().id.clone();
    view! {
        <Show when=move || !job.read().state.is_terminal()>
            <ActionForm action=cancel attr:class="inline">
                <input type="hidden" name="id" value=id/>
                <button type="submit" class="secondary" data-testid="cancel-job" disabled=move || cancel.pending().get()>
                    "Cancel"
                </button>
            </ActionForm>
        </Show>
        {move || cancel.value().get().and_then(Result::err).map(|err| view! { <p class="form-error" role="alert">{err.to_string()}</p> })}
    }
}

#[cfg(any(feature = "hydrate", test))]
/// Adds a log line unless the page already has it, keeping the newest lines.
fn push_log(logs: &mut Vec<LogLineView>, line: LogLineView) {
    if logs.last().is_some_and(|last| last.seq >= line.seq) {
        return;
    }
    logs.push(line);
    if logs.len() > LOG_LINES_SHOWN {
        let excess = logs.len() - LOG_LINES_SHOWN;
        logs.drain(..excess);
    }
}

#[cfg(any(feature = "hydrate", test))]
/// Adds the lines of a re-read snapshot to the page's, keeping lines the snapshot lacks (it may
/// have been read before they were written), in order, capped like [`push_log`].
fn merge_logs(logs: &mut Vec<LogLineView>, snapshot: Vec<LogLineView>) {
    let mut merged: std::collections::BTreeMap<i64, LogLineView> =
        logs.drain(..).map(|line| (line.seq, line)).collect();
    for line in snapshot {
        merged.entry(line.seq).or_insert(line);
    }
    let excess = merged.len().saturating_sub(LOG_LINES_SHOWN);
    logs.extend(merged.into_values().skip(excess));
}

#[cfg(feature = "hydrate")]
fn subscribe(job: RwSignal<JobView>, logs: RwSignal<Vec<LogLineView>>) {
    use crate::live::{Done, watch};
    use crate::wire::event;
    use std::rc::Rc;

    let id = job.get_untracked().id;
    let url = format!("/api/jobs/{id}/events");
    // A snapshot (a re-sync after the stream lagged, or a poll) may be older than what the page
    // shows already: it never takes the page back.
    let apply_detail = move |detail: JobDetail| {
        let done = detail.job.state.is_terminal();
        if job.with_untracked(|shown| detail.job.is_not_older_than(shown)) {
            job.set(detail.job);
        }
        logs.update(|logs| merge_logs(logs, detail.logs));
        !done
    };
    let on_event = Rc::new(move |name: &str, data: &str| match name {
        event::SNAPSHOT => serde_json::from_str(data).map_or(true, apply_detail),
        event::JOB => serde_json::from_str::<JobView>(data).map_or(true, |view| {
            let done = view.state.is_terminal();
            job.set(view);
            !done
        }),
        event::LOG => {
            if let Ok(line) = serde_json::from_str(data) {
                logs.update(|logs| push_log(logs, line));
            }
            true
        }
        _ => true,
    });
    let poll = Rc::new(move |done: Done| {
        let id = id.clone();
        leptos::task::spawn_local(async move {
            if let Ok(Some(detail)) = get_job(id).await
                && !apply_detail(detail)
            {
                done();
            }
        });
    });
    watch(
        url,
        &[event::SNAPSHOT, event::JOB, event::LOG],
        on_event,
        poll,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: i64) -> LogLineView {
        LogLineView {
            seq,
            at: String::new(),
            line: format!("line {seq}"),
        }
    }

    #[test]
    fn log_lines_are_not_repeated_and_are_capped() {
        let mut logs = vec![line(1), line(2)];
        push_log(&mut logs, line(2));
        assert_eq!(logs.len(), 2);
        push_log(&mut logs, line(3));
        assert_eq!(logs.last().map(|l| l.seq), Some(3));

        let mut many: Vec<_> = (1..=LOG_LINES_SHOWN as i64).map(line).collect();
        push_log(&mut many, line(LOG_LINES_SHOWN as i64 + 1));
        assert_eq!(many.len(), LOG_LINES_SHOWN);
        assert_eq!(many.first().map(|l| l.seq), Some(2));
    }

    #[test]
    fn a_stale_snapshot_never_removes_lines_the_page_has() {
        let mut logs: Vec<_> = (1..=30).map(line).collect();
        merge_logs(&mut logs, (1..=20).map(line).collect());
        assert_eq!(logs.len(), 30);
        assert_eq!(logs.last().map(|l| l.seq), Some(30));
        merge_logs(&mut logs, (25..=40).map(line).collect());
        let seqs: Vec<i64> = logs.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
        let mut full: Vec<_> = (1..=LOG_LINES_SHOWN as i64).map(line).collect();
        merge_logs(&mut full, vec![line(LOG_LINES_SHOWN as i64 + 5)]);
        assert_eq!(full.len(), LOG_LINES_SHOWN);
        assert_eq!(full.last().map(|l| l.seq), Some(LOG_LINES_SHOWN as i64 + 5));
    }
}
