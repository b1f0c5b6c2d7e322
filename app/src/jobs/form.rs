//! The home page: pick a kind, fill in its form, start the job. Forms without a file call the
//! `start_job` server function through a plain HTML form, so they work before hydration and
//! without JavaScript, and once hydrated submit without a page load. Forms with a file post
//! multipart to `/upload`, which answers with a redirect (to the job, or back here with the
//! error in the query string).

use super::api::StartJob;
use super::kinds::{FieldSpec, Input, KINDS, KindSpec, kind_spec};
use crate::error::AppError;
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// The optional delay every form offers, sent beside the kind's own fields.
const DELAY: FieldSpec = FieldSpec {
    name: "delay_s",
    label: "Start after (s)",
    input: Input::Number {
        min: 0,
        max: 2_592_000,
    },
    default: "",
    hint: "optional: schedule the job this many seconds from now",
};

/// The priority every form offers: higher runs first when jobs wait for a worker.
const PRIORITY: FieldSpec = FieldSpec {
    name: "priority",
    label: "Priority",
    input: Input::Select(&[
        ("9", "9 (highest)"),
        ("8", "8"),
        ("7", "7"),
        ("6", "6"),
        ("5", "5 (normal)"),
        ("4", "4"),
        ("3", "3"),
        ("2", "2"),
        ("1", "1 (lowest)"),
    ]),
    default: "5",
    hint: "when jobs wait for a worker, higher runs first",
};

/// A fresh key for one rendering of a form.
fn new_idempotency_key() -> String {
    #[cfg(feature = "ssr")]
    {
        errand_engine::JobId::generate().to_string()
    }
    #[cfg(not(feature = "ssr"))]
    {
        let random = || (js_random() * 4_294_967_296.0) as u64;
        format!(
            "{:x}-{:08x}{:08x}",
            crate::clock::now_ms(),
            random(),
            random()
        )
    }
}

#[cfg(all(feature = "hydrate", not(feature = "ssr")))]
fn js_random() -> f64 {
    js_sys::Math::random()
}

#[cfg(not(any(feature = "hydrate", feature = "ssr")))]
fn js_random() -> f64 {
    0.5
}

#[component]
pub fn NewJobPage() -> impl IntoView {
    let query = use_query_map();
    let selected =
        Memo::new(move |_| kind_spec(&query.read().get("kind").unwrap_or_default()).name);
    let start = ServerAction::<StartJob>::new();

    view! {
        <section class="card">
            <h1>"Start a job"</h1>
            <nav class="kinds" aria-label="Job kind">
                {KINDS
                    .iter()
                    .map(|kind| {
                        let current = move || (selected.get() == kind.name).then_some("page");
                        view! {
                            <a href=format!("/?kind={}", kind.name) aria-current=current>
                                {kind.label}
                            </a>
                        }
                    })
                    .collect_view()}
            </nav>
            {move || {
                let spec = kind_spec(selected.get());
                view! { <KindForm spec start/> }
            }}
        </section>
    }
}

/// The error to show for a field (or, with `None`, the error not tied to a shown field): from
/// the server function's answer, or from the query string an upload redirect left.
fn error_for(
    spec: &'static KindSpec,
    start: ServerAction<StartJob>,
    field: Option<&'static str>,
) -> impl Fn() -> Option<String> + Copy + Send + Sync + 'static {
    let query = use_query_map();
    move || {
        let from_action = start.value().get().and_then(Result::err);
        let from_query = {
            let query = query.read();
            // An error without a kind (a refused request) belongs to whichever form is shown.
            query
                .get("kind")
                .is_none_or(|kind| kind == spec.name)
                .then(|| query.get("error"))
                .flatten()
                .map(|message| AppError::Invalid {
                    field: query.get("field").filter(|f| !f.is_empty()),
                    message,
                })
        };
        let error = from_action.or(from_query)?;
        match field {
            Some(name) => error.for_field(name),
            None => {
                let mut known = spec.field_names();
                known.extend([DELAY.name, PRIORITY.name]);
                error.general(&known)
            }
        }
    }
}

#[component]
fn KindForm(spec: &'static KindSpec, start: ServerAction<StartJob>) -> impl IntoView {
    let general = error_for(spec, start, None);
    let body = view! {
        <p class="hint">{spec.summary}</p>
        <input type="hidden" name="kind" value=spec.name/>
        // Rendered with the page: a second submit of this same form makes no second job.
        <input type="hidden" name="idempotency_key" value=new_idempotency_key()/>
        <fieldset>
            <legend>{spec.label}</legend>
            {spec.fields.iter().map(|field| view! { <FormField spec field start/> }).collect_view()}
            <FormField spec field=&DELAY start/>
            <FormField spec field=&PRIORITY start/>
        </fieldset>
        <Show when=move || general().is_some()>
            <p class="form-error" role="alert" data-testid="form-error">{general}</p>
        </Show>
        <button type="submit" disabled=move || start.pending().get()>"Start job"</button>
    };
    if spec.uploads() {
        view! {
            <form id="job-form" method="post" action="/upload" enctype="multipart/form-data" novalidate=true>
                {body}
            </form>
        }
        .into_any()
    } else {
        view! { <ActionForm action=start attr:id="job-form" attr:novalidate=true>{body}</ActionForm> }.into_any()
    }
}

#[component]
fn FormField(
    spec: &'static KindSpec,
    field: &'static FieldSpec,
    start: ServerAction<StartJob>,
) -> impl IntoView {
    let message = error_for(spec, start, Some(field.name));
    let input_id = format!("field-{}", field.name);
    let error_id = format!("field-error-{}", field.name);
    // Upload forms are read by the server's multipart handler; the others by the server
    // function, whose `fields` argument is a map.
    let name = match field.input {
        Input::File { .. } => "file".to_owned(),
        _ if spec.uploads() || field == &DELAY || field == &PRIORITY => field.name.to_owned(),
        _ => format!("fields[{}]", field.name),
    };
    let invalid = move || message().is_some().to_string();
    let control = match field.input {
        Input::Number { min, max } => view! {
            <input id=input_id.clone() type="number" name=name value=field.default min=min max=max
                required=true aria-invalid=invalid aria-describedby=error_id.clone()/>
        }
        .into_any(),
        Input::Text | Input::Url | Input::Date => {
            let kind = match field.input {
                Input::Url => "url",
                Input::Date => "date",
                _ => "text",
            };
            view! {
                <input id=input_id.clone() type=kind name=name value=field.default
                    aria-invalid=invalid aria-describedby=error_id.clone()/>
            }
            .into_any()
        }
        Input::Textarea => view! {
            <textarea id=input_id.clone() name=name rows="4" aria-invalid=invalid aria-describedby=error_id.clone()>
                {field.default}
            </textarea>
        }
        .into_any(),
        Input::File { accept } => view! {
            <input id=input_id.clone() type="file" name=name accept=accept required=true
                aria-invalid=invalid aria-describedby=error_id.clone()/>
        }
        .into_any(),
        Input::Select(options) => view! {
            <select id=input_id.clone() name=name aria-invalid=invalid aria-describedby=error_id.clone()>
                {options
                    .iter()
                    .map(|(value, label)| view! { <option value=*value selected=*value == field.default>{*label}</option> })
                    .collect_view()}
            </select>
        }
        .into_any(),
    };
    view! {
        <div class="field">
            <label for=input_id>{field.label}</label>
            {control}
            {(!field.hint.is_empty()).then(|| view! { <small class="hint">{field.hint}</small> })}
            <Show when=move || message().is_some()>
                <p class="field-error" id=error_id.clone() role="alert" data-testid=format!("field-error-{}", field.name)>
                    {message}
                </p>
            </Show>
        </div>
    }
}
