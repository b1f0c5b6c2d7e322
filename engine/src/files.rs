//! Files that belong to jobs: uploads a person sends with a job (an image, a CSV) and the outputs
//! a job writes (thumbnails, reports, exports). Everything lives under `<data dir>/files`; each
//! upload and each job has its own folder, and every read names the owner, so one session can
//! never reach another's files.

use crate::model::{JobId, Owner};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// An uploaded file's identity (a ULID).
pub type UploadId = ulid::Ulid;

/// What is known about an upload besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMeta {
    pub owner: Owner,
    /// The name the browser gave, for display only; never used as a path.
    pub filename: String,
    pub content_type: Option<String>,
    pub size: u64,
}

/// An upload found for its owner.
#[derive(Debug, Clone)]
pub struct StoredUpload {
    pub id: UploadId,
    pub path: PathBuf,
    pub meta: UploadMeta,
}

/// The files folder of a data dir.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

const DATA: &str = "data";
const META: &str = "meta.json";

impl Files {
    /// Opens (creating if needed) `<root>/uploads` and `<root>/jobs`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("uploads"))?;
        std::fs::create_dir_all(root.join("jobs"))?;
        Ok(Self { root })
    }

    fn upload_dir(&self, id: UploadId) -> PathBuf {
        self.root.join("uploads").join(id.to_string())
    }

    /// Makes a folder for a new upload and returns its id and the path to write the bytes to.
    /// Call [`Files::finish_upload`] once they are written, or [`Files::delete_upload`].
    pub fn begin_upload(&self) -> io::Result<(UploadId, PathBuf)> {
        let id = UploadId::generate();
        let dir = self.upload_dir(id);
        std::fs::create_dir_all(&dir)?;
        Ok((id, dir.join(DATA)))
    }

    /// Records who owns a written upload; until then it cannot be found.
    pub fn finish_upload(&self, id: UploadId, meta: &UploadMeta) -> io::Result<()> {
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        std::fs::write(self.upload_dir(id).join(META), json)
    }

    /// `owner`'s upload `id`, or `None` if it does not exist or is someone else's.
    pub fn upload(&self, owner: &Owner, id: UploadId) -> Option<StoredUpload> {
        let dir = self.upload_dir(id);
        let meta: UploadMeta = serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
        (&meta.owner == owner).then(|| StoredUpload {
            id,
            path: dir.join(DATA),
            meta,
        })
    }

    /// The uploads made before `before` (unix ms; an upload id is a ULID, which carries its
    /// time), whether finished or not.
    pub fn uploads_before(&self, before: i64) -> io::Result<Vec<UploadId>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.root.join("uploads"))? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.parse::<UploadId>().ok())
                && (id.timestamp_ms() as i64) < before
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The bytes of all of `owner`'s finished uploads. Reads every upload's record: uploads are
    /// few (rate-limited, swept when unused) and this runs once per upload request.
    pub fn bytes_of(&self, owner: &Owner) -> io::Result<u64> {
        let mut total = 0_u64;
        for entry in std::fs::read_dir(self.root.join("uploads"))? {
            let Ok(bytes) = std::fs::read(entry?.path().join(META)) else {
                continue; // unfinished, or deleted meanwhile
            };
            if let Ok(meta) = serde_json::from_slice::<UploadMeta>(&bytes)
                && &meta.owner == owner
            {
                total = total.saturating_add(meta.size);
            }
        }
        Ok(total)
    }

    /// Removes an upload and its folder; a missing one is not an error.
    pub fn delete_upload(&self, id: UploadId) -> io::Result<()> {
        remove_dir_if_present(&self.upload_dir(id))
    }

    /// The folder a job writes its outputs to (created on demand).
    pub fn job_dir(&self, job: JobId) -> io::Result<PathBuf> {
        let dir = self.root.join("jobs").join(job.to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The path of an output file of a job, if `name` is a plain file name that exists there.
    pub fn job_file(&self, job: JobId, name: &str) -> Option<PathBuf> {
        if !is_plain_file_name(name) {
            return None;
        }
        let path = self.root.join("jobs").join(job.to_string()).join(name);
        path.is_file().then_some(path)
    }

    /// Removes a job's output folder; a missing one is not an error.
    pub fn delete_job(&self, job: JobId) -> io::Result<()> {
        remove_dir_if_present(&self.root.join("jobs").join(job.to_string()))
    }
}

/// True for names like `thumb-128.webp`: no separators, no leading dot, nothing odd.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_found_only_by_their_owner() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::open(dir.path())?;
        let alice = Owner("alice".into());
        let (id, path) = files.begin_upload()?;
        std::fs::write(&path, b"hello")?;
        assert!(
            files.upload(&alice, id).is_none(),
            "not visible before it is finished"
        );
        let meta = UploadMeta {
            owner: alice.clone(),
            filename: "hello.txt".into(),
            content_type: None,
            size: 5,
        };
        files.finish_upload(id, &meta)?;
        assert_eq!(files.upload(&alice, id).map(|u| u.meta), Some(meta));
        assert!(files.upload(&Owner("bob".into()), id).is_none());
        files.delete_upload(id)?;
        assert!(files.upload(&alice, id).is_none());
        files.delete_upload(id)?;
        Ok(())
    }

    #[test]
    fn an_owners_stored_bytes_count_only_its_finished_uploads() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::open(dir.path())?;
        let (alice, bob) = (Owner("alice".into()), Owner("bob".into()));
        let store = |owner: &Owner, size: u64| -> io::Result<UploadId> {
            let (id, path) = files.begin_upload()?;
            std::fs::write(path, vec![0; size as usize])?;
            let meta = UploadMeta {
                owner: owner.clone(),
                filename: "f".into(),
                content_type: None,
                size,
            };
            files.finish_upload(id, &meta)?;
            Ok(id)
        };
        let first = store(&alice, 10)?;
        store(&alice, 5)?;
        store(&bob, 7)?;
        files.begin_upload()?; // not finished: not counted
        assert_eq!(files.bytes_of(&alice)?, 15);
        assert_eq!(files.bytes_of(&bob)?, 7);
        files.delete_upload(first)?;
        assert_eq!(files.bytes_of(&alice)?, 5);
        Ok(())
    }

    #[test]
    fn only_plain_names_reach_job_files() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::open(dir.path())?;
        let job = JobId::generate();
        std::fs::write(files.job_dir(job)?.join("out.csv"), b"a,b")?;
        assert!(files.job_file(job, "out.csv").is_some());
        for bad in [
            "../out.csv",
            "a/b",
            ".hidden",
            "",
            "out.csv\0",
            "missing.csv",
        ] {
            assert!(files.job_file(job, bad).is_none(), "{bad:?}");
        }
        files.delete_job(job)?;
        assert!(files.job_file(job, "out.csv").is_none());
        Ok(())
    }
}
