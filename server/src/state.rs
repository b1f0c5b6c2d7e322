//! The state every handler shares.

use crate::operators::Console;
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
    /// The operators' console's access; `None` when it is off.
    pub console: Option<std::sync::Arc<Console>>,
}
