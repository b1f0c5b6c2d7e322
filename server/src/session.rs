//! Anonymous sessions: a browser gets a signed, HttpOnly, SameSite=Lax cookie naming its owner
//! id with the first request that changes something (a job or an upload made); pages, assets,
//! event streams and error answers never set one. Every request carries an [`Owner`] in its
//! extensions: the cookie's, or a fresh one that owns nothing yet. A cookie that fails
//! verification is treated as none (a fresh session, not an error).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use errand_engine::Owner;
use std::path::Path;

/// The session cookie's name.
pub const COOKIE: &str = "errand_session";

/// How session cookies are signed and sent.
#[derive(Clone)]
pub struct Sessions {
    pub key: Key,
    /// Sends the cookie only over TLS (when the public URL is https).
    pub secure: bool,
}

/// Reads the session from the cookie, or starts one; sets the cookie on the response of a
/// request that changed something and succeeded.
pub async fn session(
    State(sessions): State<Sessions>,
    mut request: Request,
    next: Next,
) -> Response {
    let jar = SignedCookieJar::from_headers(request.headers(), sessions.key);
    let existing = jar
        .get(COOKIE)
        .map(|cookie| cookie.value().to_owned())
        .filter(|value| value.parse::<ulid::Ulid>().is_ok());
    let (owner, is_new) = match existing {
        Some(owner) => (owner, false),
        None => (ulid::Ulid::generate().to_string(), true),
    };
    // The console's requests act for an operator, never for an anonymous session.
    let changes_state =
        !request.method().is_safe() && !crate::operators::is_console(request.uri().path());
    request.extensions_mut().insert(Owner(owner.clone()));
    let response = next.run(request).await;
    let done = response.status().is_success() || response.status().is_redirection();
    if !is_new || !changes_state || !done {
        return response;
    }
    let cookie = Cookie::build((COOKIE, owner))
        .path("/")
        .http_only(true)
        .secure(sessions.secure)
        .same_site(SameSite::Lax)
        .permanent()
        .build();
    (jar.add(cookie), response).into_response()
}

/// The signing key: from configuration (hex), else from `session.key` in the data dir, else a new
/// random key written there.
pub fn load_key(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Key> {
    use anyhow::Context;
    if let Some(hex) = configured {
        let bytes = hex::decode(hex.trim()).context("ERRAND_SESSION_KEY is not hex")?;
        anyhow::ensure!(
            bytes.len() >= 64,
            "ERRAND_SESSION_KEY must be at least 64 bytes"
        );
        return Ok(Key::from(&bytes));
    }
    let path = data_dir.join("session.key");
    if let Ok(bytes) = std::fs::read(&path) {
        anyhow::ensure!(bytes.len() >= 64, "{} is too short", path.display());
        return Ok(Key::from(&bytes));
    }
    let key = Key::generate();
    std::fs::write(&path, key.master())
        .with_context(|| format!("could not write {}", path.display()))?;
    restrict_permissions(&path)?;
    Ok(key)
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_in_the_data_dir() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = load_key(None, dir.path())?;
        let second = load_key(None, dir.path())?;
        assert_eq!(first.master(), second.master());
        assert!(load_key(Some("abcd"), dir.path()).is_err(), "too short");
        assert!(load_key(Some("zz"), dir.path()).is_err(), "not hex");
        let configured = load_key(Some(&"ab".repeat(64)), dir.path())?;
        assert_eq!(configured.master().len(), 64);
        Ok(())
    }
}
