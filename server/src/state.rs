//! The state every handler shares.

use crate::session::Sessions;
use crate::uploads::UploadQuota;
use axum::extract::FromRef;
use errand_engine::Engine;
use leptos::config::LeptosOptions;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub engine: Engine,
    pub sessions: Sessions,
    pub upload_quota: UploadQuota,
}
