//! `/admin/jobs`: every owner's jobs, filtered (state, kind, owner, time, words) through the
//! query string, with the counts per state and bulk actions on everything the filter matches
//! (previewed, then confirmed). `/admin/jobs/{id}`: one job with its owner, worker, raw
//! parameters and result, log, and its actions.

use super::api::{
    ConsoleAct, ConsoleBulk, console_bulk_preview, console_bulks, console_job, console_jobs,
};
use super::wire::{BulkView, Filter, JobRecord, JobsPage};
use super::{failure, read_only_note, thousands};
use crate::clock::time_of_day;
use crate::not_found::NotFound;
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};

/// The bulk actions, with what each does to which jobs.
const BULK_ACTIONS: [(&str, &str); 3] = [
    ("retry", "retry (failed and cancelled jobs not retried yet)"),
    ("cancel", "cancel (queued and running jobs)"),
    ("delete", "delete (finished jobs)"),
];

/// The filter in the page's query string.
fn filter_from_query() -> Memo<Filter> {
    let query = use_query_map();
    Memo::new(move |_| {
        let query = query.read();
        let field = |name: &str| query.get(name).unwrap_or_default();
        Filter {
            state: field("state"),
            kind: field("kind"),
            owner: field("owner"),
            from: field("from"),
            to: field("to"),
            q: field("q"),
        }
    })
}

/// The filter's fields as hidden inputs (for forms that act on it), named `prefix[field]` for
/// a server function's `Filter` argument or plain for a page link.
fn hidden_filter(filter: &Filter, nested: bool) -> impl IntoView + use<> {
    let name = move |field: &str| {
        if nested {
            format!("filter[{field}]")
        } else {
            field.to_owned()
        }
    };
    filter
        .fields()
        .into_iter()
        .filter(|(_, value)| nested || !value.is_empty())
        .map(|(field, value)| view! { <input type="hidden" name=name(field) value=value.clone()/> })
        .collect_view()
}

#[component]
pub fn ConsoleJobsPage() -> impl IntoView {
    let query = use_query_map();
    let filter = filter_from_query();
    let before = move || query.read().get("before");
    // The bulk preview and progress are part of the page's address: a change of either (after
    // a client-side navigation) renders the page again.
    let extras = move || (query.read().get("preview"), query.read().get("bulk"));
    let page = Resource::new(
        move || (filter.get(), before(), extras()),
        |(f, b, _)| console_jobs(f, b),
    );
    #[cfg(feature = "hydrate")]
    super::refresh_on_changes(move || page.refetch());
    view! {
        <section class="card wide">
            <h1>"Jobs"</h1>
            <FilterForm filter/>
            <Transition fallback=|| view! { <p class="loading">"Loading jobs…"</p> }>
                {move || Suspend::new(async move {
                    match page.await {
                        Ok(page) => view! { <JobsBody page filter=filter.get_untracked()/> }.into_any(),
                        Err(err) => failure(err),
                    }
                })}
            </Transition>
        </section>
    }
}

/// The filter form; its fields follow the address (a state tab or a link changes it).
#[component]
fn FilterForm(filter: Memo<Filter>) -> impl IntoView {
    let field = move |pick: fn(&Filter) -> &String| move || pick(&filter.read()).clone();
    view! {
        <form method="get" action="/admin/jobs" class="filters" data-testid="filter-form">
            <label>"Search" <input type="search" name="q" value=field(|f| &f.q)
                placeholder="words in parameters, result or error" data-testid="filter-q"/></label>
            <label>"State"
                <select name="state" data-testid="filter-state">
                    <option value="">"any"</option>
                    {errand_states().into_iter().map(|state| view! {
                        <option value=state selected=move || filter.read().state == state>{state}</option>
                    }).collect_view()}
                </select>
            </label>
            <label>"Kind" <input name="kind" value=field(|f| &f.kind) data-testid="filter-kind"/></label>
            <label>"Owner" <input name="owner" value=field(|f| &f.owner) data-testid="filter-owner"/></label>
            <label>"From" <input type="date" name="from" value=field(|f| &f.from)/></label>
            <label>"To" <input type="date" name="to" value=field(|f| &f.to)/></label>
            <button type="submit" data-testid="filter-apply">"Filter"</button>
        </form>
    }
}

fn errand_states() -> [&'static str; 5] {
    ["queued", "running", "succeeded", "failed", "cancelled"]
}

#[component]
fn JobsBody(page: JobsPage, filter: Filter) -> impl IntoView {
    let query = use_query_map();
    let preview = query.read_untracked().get("preview");
    let bulk = query
        .read_untracked()
        .get("bulk")
        .and_then(|id| id.parse::<u64>().ok());
    let older = page.next_before.clone().map(|before| {
        let query = filter.query_string();
        let sep = if query.is_empty() { "" } else { "&" };
        format!("/admin/jobs?{query}{sep}before={before}")
    });
    view! {
        <nav class="tabs" aria-label="States" data-testid="state-counts">
            <a href=format!("/admin/jobs?{}", filter.with_state("").query_string())
                aria-current=filter.state.is_empty().then_some("page")>"all"</a>
            {page.counts.iter().map(|(state, count)| {
                let here = (filter.state == *state).then_some("page");
                view! {
                    <a href=format!("/admin/jobs?{}", filter.with_state(state).query_string())
                        aria-current=here data-state=state.clone()>
                        {state.clone()} " " <span data-testid="state-count">{thousands(*count)}</span>
                    </a>
                }
            }).collect_view()}
        </nav>
        {page.counts_partial.then(|| view! {
            <p class="hint" data-testid="counts-partial">
                "The search matched more than " {thousands(super::wire::SEARCH_COUNTED)}
                " jobs; the counts are of the newest " {thousands(super::wire::SEARCH_COUNTED)} "."
            </p>
        })}
        {if page.can_act {
            view! { <BulkForms filter=filter.clone() preview bulk/> }.into_any()
        } else {
            read_only_note().into_any()
        }}
        {if page.rows.is_empty() {
            view! { <p data-testid="console-empty">"No job matches."</p> }.into_any()
        } else {
            view! {
                <table class="jobs" data-testid="console-jobs">
                    <thead><tr>
                        <th>"Job"</th><th>"Kind"</th><th>"Owner"</th><th>"State"</th>
                        <th>"Progress"</th><th>"Created"</th>
                    </tr></thead>
                    <tbody>
                        {page.rows.into_iter().map(|row| {
                            let job = row.job;
                            view! {
                                <tr data-testid="console-row" data-job-id=job.id.clone()>
                                    <td><a href=format!("/admin/jobs/{}", job.id)><code>{job.id.clone()}</code></a></td>
                                    <td>{job.kind.clone()}</td>
                                    <td><a href=format!("/admin/jobs?owner={}", row.owner)><code>{short(&row.owner)}</code></a></td>
                                    <td>
                                        <span class=format!("badge state-{}", job.state.as_str()) data-testid="console-row-state">
                                            {job.state.as_str()}
                                        </span>
                                    </td>
                                    <td>{job.percent().map(|p| format!("{p}%")).unwrap_or_else(|| "–".into())}</td>
                                    <td><time datetime=job.created_at.clone()>{job.created_at.replace('T', " ").get(..19).unwrap_or_default().to_owned()}</time></td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any()
        }}
        {older.map(|href| view! { <p><a href=href data-testid="older">"Older jobs"</a></p> })}
    }
}

/// The first characters of a long id.
fn short(id: &str) -> String {
    id.chars().take(10).collect::<String>() + "…"
}

/// The bulk actions on everything the filter matches: pick one and preview how many jobs it
/// touches; confirm; then follow its progress.
#[component]
fn BulkForms(filter: Filter, preview: Option<String>, bulk: Option<u64>) -> impl IntoView {
    let bulk_action = ServerAction::<ConsoleBulk>::new();
    let preview_view = preview
        .filter(|action| BULK_ACTIONS.iter().any(|(name, _)| name == action))
        .map(|action| {
            let count = Resource::new(
                {
                    let (filter, action) = (filter.clone(), action.clone());
                    move || (filter.clone(), action.clone())
                },
                |(filter, action)| console_bulk_preview(filter, action),
            );
            let filter = filter.clone();
            view! {
                <Suspense fallback=|| view! { <p class="loading">"Counting…"</p> }>
                    {move || {
                        let (filter, action) = (filter.clone(), action.clone());
                        let back = format!("/admin/jobs?{}", filter.query_string());
                        Suspend::new(async move {
                            match count.await {
                                Err(err) => failure(err),
                                Ok(count) => view! {
                                    <div class="confirm" data-testid="bulk-preview">
                                        <p>
                                            "This will " <strong>{action.clone()}</strong> " "
                                            <strong data-testid="bulk-count">{thousands(count)}</strong>
                                            " jobs matching this filter."
                                        </p>
                                        <ActionForm action=bulk_action attr:class="inline">
                                            {hidden_filter(&filter, true)}
                                            <input type="hidden" name="action" value=action.clone()/>
                                            <button type="submit" data-testid="bulk-confirm" disabled=count == 0>
                                                {format!("Yes, {action} {} jobs", thousands(count))}
                                            </button>
                                        </ActionForm>
                                        <a href=back.clone()>"Never mind"</a>
                                    </div>
                                }.into_any(),
                            }
                        })
                    }}
                </Suspense>
            }
        });
    view! {
        <form method="get" action="/admin/jobs" class="bulk inline" data-testid="bulk-form">
            {hidden_filter(&filter, false)}
            <label>"Every matching job: "
                <select name="preview" data-testid="bulk-action">
                    {BULK_ACTIONS.iter().map(|(name, label)| view! { <option value=*name>{*label}</option> }).collect_view()}
                </select>
            </label>
            <button type="submit" class="secondary" data-testid="bulk-preview-button">"Preview"</button>
        </form>
        {move || bulk_action.value().get().and_then(Result::err).map(failure)}
        {preview_view}
        {bulk.map(|id| view! { <BulkProgress id/> })}
    }
}

/// A bulk action's progress, re-read as jobs change until it is done.
#[component]
fn BulkProgress(id: u64) -> impl IntoView {
    let bulks = Resource::new(|| (), |()| console_bulks());
    #[cfg(feature = "hydrate")]
    {
        super::refresh_on_changes(move || bulks.refetch());
        if let Ok(handle) =
            set_interval_with_handle(move || bulks.refetch(), std::time::Duration::from_secs(1))
        {
            on_cleanup(move || handle.clear());
        }
    }
    view! {
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                let found: Option<BulkView> = bulks
                    .await
                    .ok()
                    .and_then(|bulks| bulks.into_iter().find(|b| b.id == id));
                found.map(|bulk| {
                    let state = match (&bulk.error, bulk.finished) {
                        (Some(error), _) => error.clone(),
                        (None, true) => "done".to_owned(),
                        (None, false) => "working…".to_owned(),
                    };
                    view! {
                        <div class="bulk-progress" data-testid="bulk-progress" data-finished=bulk.finished.to_string()>
                            <p>
                                {format!("{} of {}: ", bulk.action, bulk.target)}
                                <span data-testid="bulk-touched">{thousands(bulk.touched)}</span>
                                {format!(" jobs changed, {} of {} looked at — {state}", thousands(bulk.seen), thousands(bulk.expected))}
                            </p>
                            <progress max=bulk.expected.max(1) value=bulk.seen.min(bulk.expected.max(1))></progress>
                        </div>
                    }
                })
            })}
        </Transition>
    }
}

#[component]
pub fn ConsoleJobPage() -> impl IntoView {
    let params = use_params_map();
    let act = ServerAction::<ConsoleAct>::new();
    let id = move || params.read().get("id").unwrap_or_default();
    let job = Resource::new(
        move || (id(), act.version().get()),
        |(id, _)| console_job(id),
    );
    #[cfg(feature = "hydrate")]
    super::refresh_on_changes(move || job.refetch());
    view! {
        <Transition fallback=|| view! { <p class="loading">"Loading job…"</p> }>
            {move || Suspend::new(async move {
                match job.await {
                    Ok(Some(job)) => view! { <JobBody job act/> }.into_any(),
                    Ok(None) | Err(crate::error::AppError::NotFound) => view! { <NotFound/> }.into_any(),
                    Err(err) => failure(err),
                }
            })}
        </Transition>
    }
}

#[component]
fn JobBody(job: JobRecord, act: ServerAction<ConsoleAct>) -> impl IntoView {
    let view_ = job.detail.job.clone();
    let state = view_.state;
    let id = view_.id.clone();
    let button = move |action: &'static str, label: &'static str| {
        let id = id.clone();
        view! {
            <ActionForm action=act attr:class="inline">
                <input type="hidden" name="id" value=id/>
                <input type="hidden" name="action" value=action/>
                <button type="submit" class="secondary" data-testid=format!("console-{action}")>{label}</button>
            </ActionForm>
        }
    };
    let actions = job.can_act.then(|| {
        view! {
            <div class="actions">
                {matches!(state.as_str(), "failed" | "cancelled").then(|| button("retry", "Retry"))}
                {(!state.is_terminal()).then(|| button("cancel", "Cancel"))}
                {state.is_terminal().then(|| button("delete", "Delete"))}
            </div>
        }
    });
    let row = |name: &'static str, value: Option<String>| {
        value.map(|value| view! { <tr><th scope="row">{name}</th><td>{value}</td></tr> })
    };
    view! {
        <section class="card wide">
            <h1>"Job " <code>{view_.id.clone()}</code></h1>
            <p>
                <span class=format!("badge state-{}", state.as_str()) data-testid="console-job-state">{state.as_str()}</span>
                " " {view_.stage.clone().unwrap_or_default()}
            </p>
            {move || act.value().get().and_then(Result::err).map(failure)}
            {if job.can_act { actions.into_any() } else { read_only_note().into_any() }}
            <table class="facts">
                <tbody>
                    {row("Kind", Some(view_.kind.clone()))}
                    <tr><th scope="row">"Owner"</th><td>
                        <a href=format!("/admin/jobs?owner={}", job.owner) data-testid="console-job-owner"><code>{job.owner.clone()}</code></a>
                    </td></tr>
                    {row("Worker", job.worker.clone())}
                    {row("Attempts", Some(format!("{} of {}", view_.attempts, view_.max_attempts)))}
                    {row("Progress", view_.percent().map(|p| format!("{p}%")))}
                    {row("Created", Some(view_.created_at.clone()))}
                    {row("Runs at", view_.run_at.clone())}
                    {row("Started", view_.started_at.clone())}
                    {row("Finished", view_.finished_at.clone())}
                    {row("Error", view_.error.clone())}
                </tbody>
            </table>
            {view_.retry_of.clone().map(|of| view! {
                <p>"Retries " <a href=format!("/admin/jobs/{of}")><code>{of.clone()}</code></a></p>
            })}
            {(!job.detail.retried_as.is_empty()).then(|| view! {
                <p>"Retried as "
                    {job.detail.retried_as.iter().map(|r| view! {
                        <a href=format!("/admin/jobs/{r}")><code>{r.clone()}</code></a>" "
                    }).collect_view()}
                </p>
            })}
            {(!job.attempts.is_empty()).then(|| view! {
                <h2>"Attempts"</h2>
                <table class="jobs" data-testid="console-attempts">
                    <thead><tr><th>"#"</th><th>"Worker"</th><th>"Started"</th><th>"Ended"</th><th>"Outcome"</th><th>"Error"</th></tr></thead>
                    <tbody>
                        {job.attempts.iter().map(|attempt| view! {
                            <tr data-testid="console-attempt">
                                <td>{attempt.number}</td>
                                <td><code>{attempt.worker.clone().unwrap_or_default()}</code></td>
                                <td><time datetime=attempt.started_at.clone()>{time_of_day(&attempt.started_at)}</time></td>
                                <td>{attempt.ended_at.as_deref().map(time_of_day).unwrap_or_default()}</td>
                                <td>{attempt.outcome.clone().unwrap_or_else(|| "running".to_owned())}</td>
                                <td>{attempt.error.clone().unwrap_or_default()}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            })}
            <h2>"Parameters"</h2>
            <pre data-testid="console-params">{job.params.clone()}</pre>
            {job.result.clone().map(|result| view! { <h2>"Result"</h2><pre data-testid="console-result">{result}</pre> })}
            <h2>"Log"</h2>
            {if job.detail.logs.is_empty() {
                view! { <p class="hint">"No log lines."</p> }.into_any()
            } else {
                view! {
                    <ol class="log">
                        {job.detail.logs.iter().map(|line| view! {
                            <li><time datetime=line.at.clone()>{time_of_day(&line.at)}</time>" "{line.line.clone()}</li>
                        }).collect_view()}
                    </ol>
                }.into_any()
            }}
        </section>
    }
}
