//! File uploads and downloads: the multipart form that starts an upload-based job (works without
//! JavaScript: it answers with a redirect, to the job page or back to the form with the error),
//! the API's upload endpoint, and the download of a job's output files, served only to the
//! session that owns the job.

use crate::api::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, Multipart, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use errand_engine::{
    Engine, FormFields, Owner, Params, SubmitError, SubmitOptions, UploadId, UploadMeta,
    form_delay, form_priority, now_ms,
};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

/// Largest request body on the upload routes: the largest upload (100 MB) plus the form.
const MAX_REQUEST: usize = 101 * 1_000_000;
/// The most text fields an upload form may carry.
const MAX_FIELDS: usize = 32;

/// Largest upload the API takes when no kind is named.
const DEFAULT_MAX_UPLOAD: u64 = 100_000_000;
/// Largest text field of an upload form.
const MAX_FIELD: usize = 64 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/upload", post(upload_form))
        .route("/api/uploads", post(upload_api))
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .route("/files/{job}/{name}", get(job_file))
}

/// Why an upload was refused; shown to the person or returned by the API.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The session's uploads already hold its quota of bytes.
    #[error("{0}")]
    OverQuota(String),
    #[error("the upload could not be stored")]
    Storage(#[from] std::io::Error),
}

/// Most bytes of uploads one session may keep stored (`--session-max-upload-mb`); `None` for
/// no limit.
#[derive(Debug, Clone, Copy)]
pub struct UploadQuota(pub Option<u64>);

impl UploadQuota {
    fn exceeded(self) -> UploadError {
        let mb = self.0.unwrap_or_default() / 1_000_000;
        UploadError::OverQuota(format!(
            "this session's uploads would take more than {mb} MB, its limit; \
             delete finished jobs to make room"
        ))
    }
}

impl UploadError {
    fn file(message: impl Into<String>) -> Self {
        UploadError::Invalid {
            field: "file".into(),
            message: message.into(),
        }
    }

    fn from_multipart(err: &axum::extract::multipart::MultipartError) -> Self {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            UploadError::file("is larger than 100 MB")
        } else {
            UploadError::file(format!(
                "the upload was cut off or malformed: {}",
                err.body_text()
            ))
        }
    }
}

/// Streams one multipart file field to a new upload, refusing it past `max` bytes or past
/// what the session's quota leaves.
async fn store_file(
    engine: &Engine,
    owner: &Owner,
    mut field: Field<'_>,
    max: u64,
    quota: UploadQuota,
) -> Result<UploadId, UploadError> {
    let room = match quota.0 {
        None => u64::MAX,
        Some(quota) => quota.saturating_sub(engine.files().bytes_of(owner)?),
    };
    if room == 0 {
        return Err(quota.exceeded());
    }
    let filename = field
        .file_name()
        .unwrap_or("upload")
        .chars()
        .take(200)
        .collect::<String>();
    let content_type = field.content_type().map(str::to_owned);
    let files = engine.files();
    let (id, path) = files.begin_upload()?;
    let written = async {
        let mut out = tokio::fs::File::create(&path).await?;
        let mut size = 0_u64;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| UploadError::from_multipart(&e))?
        {
            size += chunk.len() as u64;
            if size > max {
                return Err(UploadError::file(format!(
                    "is larger than {} MB",
                    max / 1_000_000
                )));
            }
            if size > room {
                return Err(quota.exceeded());
            }
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        if size == 0 {
            return Err(UploadError::file("choose a file to upload"));
        }
        Ok(size)
    }
    .await;
    match written {
        Ok(size) => {
            files.finish_upload(
                id,
                &UploadMeta {
                    owner: owner.clone(),
                    filename,
                    content_type,
                    size,
                },
            )?;
            Ok(id)
        }
        Err(err) => {
            let _ = files.delete_upload(id);
            Err(err)
        }
    }
}

/// Deletes an upload that will not become a job (a refused or repeated submission).
fn discard(engine: &Engine, upload: Option<UploadId>) {
    if let Some(id) = upload
        && let Err(err) = engine.files().delete_upload(id)
    {
        tracing::warn!(%err, upload = %id, "could not delete a discarded upload");
    }
}

/// Reads an upload form: its text fields, and its `file` stored as an upload. `kind` must come
/// before `file` so the kind's size limit applies while streaming.
async fn read_form(
    engine: &Engine,
    owner: &Owner,
    quota: UploadQuota,
    mut multipart: Multipart,
) -> Result<(String, FormFields, Option<UploadId>), (String, Option<UploadId>, UploadError)> {
    let mut kind = String::new();
    let mut fields = FormFields::new();
    let mut upload = None;
    let fail = |kind: &String, upload, err| Err((kind.clone(), upload, err));
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => return fail(&kind, upload, UploadError::from_multipart(&err)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            if field.file_name().is_none_or(str::is_empty) {
                continue; // no file chosen
            }
            if upload.is_some() {
                // One upload per request: a second file would be stored and never used.
                return fail(&kind, upload, UploadError::file("send one file per upload"));
            }
            // Without a kind (the API's plain upload) the largest limit of any kind applies.
            let max = if kind.is_empty() {
                DEFAULT_MAX_UPLOAD
            } else {
                engine.kinds().max_upload(&kind).unwrap_or(0)
            };
            if max == 0 {
                return fail(
                    &kind,
                    upload,
                    UploadError::file("this kind of job takes no file"),
                );
            }
            match store_file(engine, owner, field, max, quota).await {
                Ok(id) => upload = Some(id),
                Err(err) => return fail(&kind, upload, err),
            }
        } else {
            let text = match field.text().await {
                Ok(text) if text.len() <= MAX_FIELD => text,
                Ok(_) => {
                    return fail(
                        &kind,
                        upload,
                        UploadError::Invalid {
                            field: name,
                            message: "is too long".into(),
                        },
                    );
                }
                Err(err) => return fail(&kind, upload, UploadError::from_multipart(&err)),
            };
            if name == "kind" {
                kind = text;
            } else if fields.len() >= MAX_FIELDS {
                let err = UploadError::Invalid {
                    field: name,
                    message: format!("is one field too many (at most {MAX_FIELDS})"),
                };
                return fail(&kind, upload, err);
            } else {
                fields.insert(name, text);
            }
        }
    }
    Ok((kind, fields, upload))
}

/// `POST /upload`: the multipart job form. Answers 303 to the job page, or back to the form
/// with the error in the query string; a refused upload is deleted.
async fn upload_form(
    State(engine): State<Engine>,
    State(quota): State<UploadQuota>,
    Extension(owner): Extension<Owner>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let back = |kind: &str, err: UploadError| {
        let (field, message) = match err {
            UploadError::Invalid { field, message } => (field, message),
            UploadError::OverQuota(message) => ("file".to_owned(), message),
            UploadError::Storage(err) => {
                tracing::error!(%err, "could not store an upload");
                (
                    String::new(),
                    "the upload could not be stored; please try again".into(),
                )
            }
        };
        let query = [
            ("kind", kind),
            ("field", field.as_str()),
            ("error", message.as_str()),
        ];
        let query = error_query(&query);
        Redirect::to(&format!("/?{query}")).into_response()
    };
    let Ok(multipart) = multipart else {
        return back(
            "",
            UploadError::file("send the form as multipart/form-data"),
        );
    };
    let (kind, mut fields, upload) = match read_form(&engine, &owner, quota, multipart).await {
        Ok(read) => read,
        Err((kind, upload, err)) => {
            discard(&engine, upload);
            return back(&kind, err);
        }
    };
    if let Some(id) = upload {
        fields.insert("upload".into(), id.to_string());
    }
    // The options every form offers beside the kind's fields.
    let delay = form_delay(fields.remove("delay_s").as_deref(), now_ms());
    let priority = form_priority(fields.remove("priority").as_deref());
    let (run_at, priority) = match delay.and_then(|run_at| Ok((run_at, priority?))) {
        Ok(options) => options,
        Err(invalid) => {
            discard(&engine, upload);
            let field = invalid.field.unwrap_or_default();
            return back(
                &kind,
                UploadError::Invalid {
                    field,
                    message: invalid.message,
                },
            );
        }
    };
    let options = SubmitOptions {
        idempotency_key: fields.remove("idempotency_key").filter(|k| !k.is_empty()),
        run_at,
        priority,
        retry_of: None,
    };
    match engine
        .submit(&owner, &kind, Params::Form(fields), options)
        .await
    {
        Ok(submitted) => {
            if submitted.existing {
                // The same form was sent twice: the first job has its own copy of the file.
                discard(&engine, upload);
            }
            Redirect::to(&format!("/jobs/{}", submitted.id)).into_response()
        }
        Err(err) => {
            discard(&engine, upload);
            match err {
                SubmitError::Invalid(invalid) => back(
                    &kind,
                    UploadError::Invalid {
                        field: invalid.field.unwrap_or_default(),
                        message: invalid.message,
                    },
                ),
                over @ SubmitError::OverQuota(_) => back(
                    &kind,
                    UploadError::Invalid {
                        field: String::new(),
                        message: over.to_string(),
                    },
                ),
                SubmitError::Engine(err) => {
                    tracing::error!(%err, "could not submit an upload job");
                    back(
                        &kind,
                        UploadError::Invalid {
                            field: String::new(),
                            message: "something went wrong on the server; please try again".into(),
                        },
                    )
                }
            }
        }
    }
}

/// The query string that brings a person back to the form with an error.
fn error_query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

/// `POST /api/uploads` (multipart: optional `kind`, then `file`) → 201 `{"id","filename","size"}`.
async fn upload_api(
    State(engine): State<Engine>,
    State(quota): State<UploadQuota>,
    Extension(owner): Extension<Owner>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let multipart = multipart.map_err(|e| ApiError::BadRequest {
        message: e.body_text(),
        field: None,
    })?;
    let (_, _, upload) =
        read_form(&engine, &owner, quota, multipart)
            .await
            .map_err(|(_, upload, err)| {
                discard(&engine, upload);
                match err {
                    UploadError::Invalid { field, message } => ApiError::BadRequest {
                        message,
                        field: Some(field),
                    },
                    UploadError::OverQuota(message) => ApiError::TooMany(message),
                    UploadError::Storage(err) => {
                        tracing::error!(%err, "could not store an upload");
                        ApiError::Internal
                    }
                }
            })?;
    let id = upload.ok_or_else(|| ApiError::BadRequest {
        message: "is required".into(),
        field: Some("file".into()),
    })?;
    let stored = engine
        .files()
        .upload(&owner, id)
        .ok_or(ApiError::Internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id.to_string(), "filename": stored.meta.filename, "size": stored.meta.size })),
    )
        .into_response())
}

/// `GET /files/{job}/{name}`: an output file of one of this session's jobs.
async fn job_file(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    Path((job, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = job.parse().map_err(|_| ApiError::NotFound)?;
    engine.job(&owner, id).await?.ok_or(ApiError::NotFound)?;
    let path = engine
        .files()
        .job_file(id, &name)
        .ok_or(ApiError::NotFound)?;
    let mut response = tower_http::services::ServeFile::new(path)
        .oneshot(request)
        .await
        .map_err(|_| ApiError::Internal)?;
    if response.status().is_success() {
        file_headers(response.headers_mut(), &name);
    }
    Ok(response.map(Body::new))
}

/// The types an output file is served as; anything else is served as bytes to save.
const SAFE_TYPES: [&str; 7] = [
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "text/csv",
    "text/plain",
    "application/json",
];

/// Headers that keep an output file from running script as part of the site: a type from
/// [`SAFE_TYPES`], images shown inline and everything else downloaded, and a sandbox policy
/// in case a browser renders it anyway.
fn file_headers(headers: &mut axum::http::HeaderMap, name: &str) {
    use axum::http::{HeaderValue, header};
    let guessed = headers
        .get(header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let content_type = if SAFE_TYPES.contains(&guessed.as_str()) {
        guessed
    } else {
        "application/octet-stream".to_owned()
    };
    let disposition = if content_type.starts_with("image/") {
        "inline"
    } else {
        "attachment"
    };
    // Output names are the engine's own ([A-Za-z0-9._-]); quote them anyway, without quotes.
    let filename: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    let values = [
        (header::CONTENT_TYPE, content_type),
        (
            header::CONTENT_DISPOSITION,
            format!("{disposition}; filename=\"{filename}\""),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".to_owned(),
        ),
    ];
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_cannot_run_script_in_the_site() {
        use axum::http::{HeaderMap, HeaderValue, header};
        let served = |guessed: &'static str, name: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(guessed));
            file_headers(&mut headers, name);
            let get = |h| {
                headers
                    .get(h)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            (
                get(header::CONTENT_TYPE),
                get(header::CONTENT_DISPOSITION),
                get(header::CONTENT_SECURITY_POLICY),
            )
        };
        let (kind, disposition, policy) = served("image/png", "thumb-128.png");
        assert_eq!(kind, "image/png");
        assert_eq!(disposition, "inline; filename=\"thumb-128.png\"");
        assert!(policy.contains("sandbox"));
        let (kind, disposition, _) = served("text/html", "page.html");
        assert_eq!(kind, "application/octet-stream");
        assert!(disposition.starts_with("attachment"));
        let (kind, _, _) = served("image/svg+xml", "x.svg");
        assert_eq!(kind, "application/octet-stream");
        let (kind, disposition, _) = served("text/csv", "export.csv");
        assert_eq!(
            (kind.as_str(), disposition.as_str()),
            ("text/csv", "attachment; filename=\"export.csv\"")
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            error_query(&[
                ("kind", "thumbnail"),
                ("field", ""),
                ("error", "is larger than 20 MB")
            ]),
            "kind=thumbnail&error=is+larger+than+20+MB"
        );
    }
}
