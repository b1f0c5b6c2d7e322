//! How each kind's result shows on its job page. Files a job wrote are served at
//! `/files/{job id}/{name}` to the session that owns the job.

use crate::wire::JobView;
use leptos::prelude::*;
use serde_json::Value;

fn file_url(job: &str, name: &str) -> String {
    format!("/files/{job}/{name}")
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() != 0.0)
            .map_or_else(|| n.to_string(), |f| format!("{f:.3}")),
        other => other.to_string(),
    }
}

/// The result of a finished job, by kind; any other kind shows its JSON.
#[component]
pub fn JobResult(job: JobView) -> impl IntoView {
    let Some(result) = job.result.clone() else {
        return ().into_any();
    };
    let body = match job.kind.as_str() {
        "thumbnail" => thumbnails(&job.id, &result).into_any(),
        "csv_import" => csv_report(&job.id, &result).into_any(),
        "webhook" => webhook(&result).into_any(),
        "export" => export(&job.id, &result).into_any(),
        _ => view! { <pre class="result">{serde_json::to_string_pretty(&result).unwrap_or_default()}</pre> }.into_any(),
    };
    view! {
        <h2>"Result"</h2>
        <div class="result-view" data-testid="job-result">{body}</div>
    }
    .into_any()
}

fn thumbnails(job: &str, result: &Value) -> impl IntoView {
    let outputs = result["outputs"].as_array().cloned().unwrap_or_default();
    let source = &result["source"];
    view! {
        <p>"From " {text(&source["name"])} ", " {text(&source["width"])} "×" {text(&source["height"])} " " {text(&source["format"])}</p>
        <div class="thumbnails" data-testid="thumbnails">
            {outputs
                .into_iter()
                .map(|output| {
                    let url = file_url(job, output["name"].as_str().unwrap_or_default());
                    view! {
                        <figure data-testid="thumbnail">
                            <img src=url.clone() alt=text(&output["name"]) loading="lazy"/>
                            <figcaption>
                                {text(&output["width"])} "×" {text(&output["height"])} " · "
                                {text(&output["bytes"])} " bytes · " {text(&output["format"])} " · "
                                <a href=url download=text(&output["name"])>"Download"</a>
                            </figcaption>
                        </figure>
                    }
                })
                .collect_view()}
        </div>
    }
}

fn csv_report(job: &str, result: &Value) -> impl IntoView {
    let columns = result["columns"].as_array().cloned().unwrap_or_default();
    let invalid = result["invalid_rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let report = file_url(job, result["report"].as_str().unwrap_or("report.json"));
    view! {
        <p>
            <span data-testid="csv-rows">{text(&result["rows"])}</span> " valid rows, "
            {text(&result["invalid_count"])} " invalid. "
            <a href=report download="report.json" data-testid="csv-report-download">"Download the full report (JSON)"</a>
        </p>
        <table class="jobs" data-testid="csv-report">
            <thead><tr><th>"Column"</th><th>"Type"</th><th>"Values"</th><th>"Empty"</th><th>"Min"</th><th>"Max"</th><th>"Mean"</th><th>"Distinct"</th><th>"Top values"</th></tr></thead>
            <tbody>
                {columns
                    .into_iter()
                    .map(|c| {
                        let distinct = format!("{}{}", text(&c["distinct"]), if c["distinct_capped"] == Value::Bool(true) { "+" } else { "" });
                        let top = c["top"].as_array().map(|top| {
                            top.iter().map(|pair| format!("{} ({})", text(&pair[0]), text(&pair[1]))).collect::<Vec<_>>().join(", ")
                        }).unwrap_or_default();
                        view! {
                            <tr data-testid="csv-column">
                                <td>{text(&c["name"])}</td><td>{text(&c["type"])}</td><td>{text(&c["count"])}</td>
                                <td>{text(&c["empty"])}</td><td>{text(&c["min"])}</td><td>{text(&c["max"])}</td>
                                <td>{text(&c["mean"])}</td><td>{distinct}</td><td>{top}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
        <h3>"Invalid rows"</h3>
        <ul class="invalid-rows" data-testid="csv-invalid-rows">
            {invalid
                .into_iter()
                .map(|row| view! { <li>"line " {text(&row["line"])} ": " {text(&row["reason"])}</li> })
                .collect_view()}
        </ul>
    }
}

fn webhook(result: &Value) -> impl IntoView {
    view! {
        <dl class="facts">
            <dt>"Status"</dt><dd data-testid="webhook-status">{text(&result["status"])}</dd>
            <dt>"Latency"</dt><dd data-testid="webhook-latency">{text(&result["latency_ms"])} " ms"</dd>
            <dt>"Attempts"</dt><dd>{text(&result["attempts"])}</dd>
            <dt>"Content type"</dt><dd>{text(&result["content_type"])}</dd>
        </dl>
        <pre class="result" data-testid="webhook-body">{text(&result["body"])}</pre>
        {(result["truncated"] == Value::Bool(true)).then(|| view! { <p class="hint">"(first 4 KiB shown)"</p> })}
    }
}

fn export(job: &str, result: &Value) -> impl IntoView {
    let url = file_url(job, result["file"].as_str().unwrap_or("export.csv"));
    view! {
        <p>
            <span data-testid="export-rows">{text(&result["rows"])}</span> " jobs exported. "
            <a href=url download="errand-jobs.csv" data-testid="export-download">"Download the CSV"</a>
        </p>
    }
}
