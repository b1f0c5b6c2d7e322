//! What the kinds that work on an uploaded file share: the `upload` argument, and checking at
//! submit time that the upload exists, belongs to the submitter and is not too large.

use super::JobError;
use super::{FormFields, InvalidInput, SubmitContext};
use crate::files::{StoredUpload, UploadId};
use crate::worker::JobContext;

/// Reads the `upload` form field (set by the server after it stored the file).
pub(super) fn from_form(fields: &FormFields) -> Result<UploadId, InvalidInput> {
    fields
        .get("upload")
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| InvalidInput::field("file", "choose a file to upload"))
}

/// The submitter's upload `id`, if it exists and is at most `max_bytes` long.
pub(super) fn check(
    id: UploadId,
    max_bytes: u64,
    cx: &SubmitContext<'_>,
) -> Result<StoredUpload, InvalidInput> {
    let upload = cx
        .files
        .upload(cx.owner, id)
        .ok_or_else(|| InvalidInput::field("file", "no such upload"))?;
    if upload.meta.size > max_bytes {
        return Err(InvalidInput::field(
            "file",
            format!("is larger than {} MB", max_bytes / 1_000_000),
        ));
    }
    Ok(upload)
}

/// The running job's upload, which must still be there.
pub(super) fn open(id: UploadId, ctx: &JobContext) -> Result<StoredUpload, JobError> {
    ctx.files()
        .upload(&ctx.owner(), id)
        .ok_or_else(|| JobError::Permanent("the uploaded file is gone".into()))
}
