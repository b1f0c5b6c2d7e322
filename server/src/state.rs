//! The state every handler shares.

use axum::extract::FromRef;
use axum_extra::extract::cookie::Key;
use errand_engine::Engine;
use leptos::config::LeptosOptions;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub engine: Engine,
    pub session_key: Key,
}
