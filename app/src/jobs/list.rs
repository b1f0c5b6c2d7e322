//! `/jobs`: this browser's jobs, newest first, with states kept live.

use super::api::{CancelJob, list_jobs};
use crate::wire::JobList;
#[cfg(any(feature = "hydrate", test))]
use crate::wire::JobView;
use leptos::form::ActionForm;
use leptos::prelude::*;

#[component]
pub fn JobListPage() -> impl IntoView {
    let list = Resource::new(|| (), |()| list_jobs(None));
    view! {
        <section class="card">
            <h1>"My jobs"</h1>
            <Suspense fallback=|| view! { <p class="loading">"Loading jobs…"</p> }>
                {move || Suspend::new(async move {
                    match list.await {
                        Ok(list) => view! { <LiveList list/> }.into_any(),
                        Err(err) => {
                            view! { <p class="form-error" role="alert">{err.to_string()}</p> }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
fn LiveList(list: JobList) -> impl IntoView {
    let jobs = RwSignal::new(list.jobs);
    let cancel = ServerAction::<CancelJob>::new();

    #[cfg(feature = "hydrate")]
    subscribe(jobs);

    view! {
        <Show
            when=move || !jobs.read().is_empty()
            fallback=|| view! { <p data-testid="job-list-empty">"No jobs yet. " <a href="/">"Start one."</a></p> }
        >
            <table class="jobs" data-testid="job-list">
                <thead>
                    <tr><th>"Job"</th><th>"Kind"</th><th>"State"</th><th>"Progress"</th><th>"Created"</th><th><span class="visually-hidden">"Actions"</span></th></tr>
                </thead>
                <tbody>
                    <For each=move || jobs.get() key=|job| (job.id.clone(), job.state, job.percent()) let:job>
                        <tr data-testid="job-row" data-job-id=job.id.clone()>
                            <td><a href=format!("/jobs/{}", job.id)><code>{job.id.clone()}</code></a></td>
                            <td>{job.kind.clone()}</td>
                            <td>
                                <span class=format!("badge state-{}", job.state.as_str()) data-testid="job-row-state">
                                    {job.state.as_str()}
                                </span>
                            </td>
                            <td>{job.percent().map(|p| format!("{p}%")).unwrap_or_else(|| "–".into())}</td>
                            <td><time datetime=job.created_at.clone()>{job.created_at.get(11..19).unwrap_or_default().to_owned()}</time></td>
                            <td>
                                {(!job.state.is_terminal()).then_some(job.id.clone()).map(|id| view! {
                                    <ActionForm action=cancel attr:class="inline">
                                        <input type="hidden" name="id" value=id/>
                                        <button type="submit" class="secondary" data-testid="job-row-cancel">"Cancel"</button>
                                    </ActionForm>
                                })}
                            </td>
                        </tr>
                    </For>
                </tbody>
            </table>
        </Show>
    }
}

/// Puts a changed job in its place: replaces the row with its id, or adds a new one on top.
#[cfg(any(feature = "hydrate", test))]
fn upsert(jobs: &mut Vec<JobView>, job: JobView) {
    match jobs.iter_mut().find(|j| j.id == job.id) {
        Some(existing) => *existing = job,
        None => jobs.insert(0, job),
    }
}

#[cfg(feature = "hydrate")]
fn subscribe(jobs: RwSignal<Vec<JobView>>) {
    use crate::live::{Done, watch};
    use crate::wire::event;
    use std::rc::Rc;

    let on_event = Rc::new(move |name: &str, data: &str| {
        if name == event::JOB
            && let Ok(job) = serde_json::from_str::<JobView>(data)
        {
            jobs.update(|jobs| upsert(jobs, job));
        }
        true
    });
    let poll = Rc::new(move |_done: Done| {
        leptos::task::spawn_local(async move {
            if let Ok(list) = list_jobs(None).await {
                jobs.set(list.jobs);
            }
        });
    });
    let open = move || watch("/api/jobs/events".into(), &[event::JOB], on_event, poll);
    if !jobs.read_untracked().is_empty() {
        open();
        return;
    }
    // No jobs: perhaps a first visit, with no session yet. A GET (this page, the event stream)
    // never starts one, so the stream would watch a session no later job belongs to, and jobs
    // started from another tab would never appear. `list_jobs` is a POST, which starts the
    // session (as `POST /api/session` does for API clients); the stream opens after it.
    let owner = Owner::current();
    leptos::task::spawn_local(async move {
        if let Ok(list) = list_jobs(None).await {
            jobs.try_update(|jobs| {
                for job in list.jobs.into_iter().rev() {
                    upsert(jobs, job);
                }
            });
        }
        // Unless the page was left meanwhile: its cleanup closes the stream.
        if jobs.try_get_untracked().is_some()
            && let Some(owner) = owner
        {
            owner.with(open);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::JobState;

    fn job(id: &str, state: JobState) -> JobView {
        JobView::example(id, state)
    }

    #[test]
    fn changed_jobs_replace_their_row_and_new_jobs_go_on_top() {
        let mut jobs = vec![job("b", JobState::Running), job("a", JobState::Queued)];
        upsert(&mut jobs, job("a", JobState::Succeeded));
        assert_eq!(jobs[1].state, JobState::Succeeded);
        upsert(&mut jobs, job("c", JobState::Queued));
        let ids: Vec<_> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["c", "b", "a"]);
    }
}
