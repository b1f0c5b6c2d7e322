//! `/admin/audit`: what operators did, newest first, kept across restarts.

use super::api::{PAGE_SIZE, console_audit};
use super::{failure, thousands};
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

#[component]
pub fn AuditPage() -> impl IntoView {
    let query = use_query_map();
    let before = move || {
        query
            .read()
            .get("before")
            .and_then(|b| b.parse::<i64>().ok())
    };
    let entries = Resource::new(before, console_audit);
    view! {
        <section class="card wide">
            <h1>"Audit log"</h1>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match entries.await {
                        Err(err) => failure(err),
                        Ok(entries) if entries.is_empty() => view! {
                            <p>"No operator has acted yet."</p>
                        }.into_any(),
                        Ok(entries) => {
                            let older = (entries.len() == PAGE_SIZE as usize)
                                .then(|| entries.last().map(|e| e.number))
                                .flatten();
                            view! {
                                <table class="jobs" data-testid="audit">
                                    <thead><tr>
                                        <th>"When"</th><th>"Who"</th><th>"Action"</th><th>"Target"</th><th>"Jobs"</th>
                                    </tr></thead>
                                    <tbody>
                                        {entries.into_iter().map(|e| view! {
                                            <tr data-testid="audit-row">
                                                <td><time datetime=e.at.clone()>{e.at.clone()}</time></td>
                                                <td>{e.role}" "<code title="login session">{e.session}</code></td>
                                                <td data-testid="audit-action">{e.action}</td>
                                                <td><code>{e.target}</code></td>
                                                <td>{thousands(e.jobs)}</td>
                                            </tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                                {older.map(|n| view! { <p><a href=format!("/admin/audit?before={n}")>"Older entries"</a></p> })}
                            }.into_any()
                        }
                    }
                })}
            </Transition>
        </section>
    }
}
