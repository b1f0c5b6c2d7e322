//! Who may open the operators' console: the `admin` role (reads and acts) and the `viewer` role
//! (reads only), each with a password from configuration, kept in memory only as an argon2
//! hash. A login sets its own cookie (signed, HttpOnly, SameSite=Strict, 12 hours), separate
//! from the anonymous session's. Machine clients (`/api/admin/…`, `/metrics`) may send the
//! password as `Authorization: Bearer …` instead.
//!
//! Logins are rate limited per client address, and at most two password checks run at once
//! (each costs an argon2 hash, tens of milliseconds of CPU): guessing is slow, and a flood of
//! attempts cannot take the CPU.

use crate::throttle::client_address;
use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{Form, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use errand_engine::{Operator, Role};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The console's login cookie.
pub const COOKIE: &str = "errand_admin";

/// How long a console login lasts.
const LOGIN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The console's access settings; `None` when the console is off.
pub struct Console {
    admin: String,
    viewer: Option<String>,
    key: Key,
    secure: bool,
    trust_forwarded: bool,
    /// Password checks per client address: a burst of 10, then one every 6 s.
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    /// Password checks running at once (each is an argon2 hash): more wait their turn, so a
    /// flood of attempts from many addresses cannot take the CPU, nor lock the admin out.
    hashing: tokio::sync::Semaphore,
}

/// How many password checks run at once.
const CHECKS_AT_ONCE: usize = 2;

/// A password as configured: the value itself or a file holding it (for deployments that keep
/// secrets in files).
pub fn read_password(
    value: Option<&str>,
    file: Option<&Path>,
    flag: &str,
) -> anyhow::Result<Option<String>> {
    let password = match (value, file) {
        (Some(_), Some(_)) => anyhow::bail!("give --{flag} or --{flag}-file, not both"),
        (Some(value), None) => value.to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("could not read --{flag}-file {}", file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    anyhow::ensure!(
        password.chars().count() >= 8,
        "the {flag} must be at least 8 characters"
    );
    Ok(Some(password))
}

/// An argon2id hash (PHC string) of `password`, with a random salt.
fn hash(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("could not hash a console password: {err}"))
}

/// True when `password` matches the PHC string `hash` (compared in constant time by argon2).
fn matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

impl Console {
    /// The console's settings, or `None` when no admin password is configured (it is off). A
    /// viewer password alone is refused: there would be no one to act.
    pub fn new(
        admin: Option<String>,
        viewer: Option<String>,
        key: Key,
        secure: bool,
        trust_forwarded: bool,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(admin) = admin else {
            anyhow::ensure!(
                viewer.is_none(),
                "a viewer password needs an admin password too (--admin-password)"
            );
            return Ok(None);
        };
        anyhow::ensure!(
            viewer.as_deref() != Some(admin.as_str()),
            "the viewer password must differ from the admin password"
        );
        let per_address = Quota::with_period(Duration::from_secs(6))
            .map(|quota| quota.allow_burst(NonZeroU32::MIN.saturating_add(9)))
            .context("login quota")?;
        Ok(Some(Arc::new(Self {
            admin: hash(&admin)?,
            viewer: viewer.as_deref().map(hash).transpose()?,
            key,
            secure,
            trust_forwarded,
            per_address: RateLimiter::dashmap(per_address),
            hashing: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
        })))
    }

    /// Forgets the addresses whose login allowance is full again, every minute, so the table
    /// stays as small as the set of recent senders; ends when the console is dropped.
    pub async fn forget_idle_addresses(console: std::sync::Weak<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Some(console) = console.upgrade() else {
                return;
            };
            console.per_address.retain_recent();
            console.per_address.shrink_to_fit();
        }
    }

    /// The role `password` gives, checked against both hashes (so the time taken does not
    /// tell which roles exist), off the async threads, two at a time. `Err` with a wait when
    /// the address tried too often.
    async fn check(&self, address: IpAddr, password: String) -> Result<Option<Role>, Duration> {
        use governor::clock::Clock;
        self.per_address
            .check_key(&address)
            .map_err(|late| late.wait_time_from(self.per_address.clock().now()))?;
        let Ok(_turn) = self.hashing.acquire().await else {
            return Ok(None);
        };
        let (admin, viewer) = (self.admin.clone(), self.viewer.clone());
        let role = tokio::task::spawn_blocking(move || {
            let is_admin = matches(&admin, &password);
            let is_viewer = viewer.is_some_and(|viewer| matches(&viewer, &password));
            if is_admin {
                Some(Role::Admin)
            } else if is_viewer {
                Some(Role::Viewer)
            } else {
                None
            }
        })
        .await
        .unwrap_or(None);
        Ok(role)
    }

    /// The operator a request's login cookie names, if it is valid and not expired.
    fn cookie_login(&self, request: &Request) -> Option<Operator> {
        let jar = SignedCookieJar::from_headers(request.headers(), self.key.clone());
        let cookie = jar.get(COOKIE)?;
        let mut parts = cookie.value().splitn(3, '.');
        let role = match parts.next()? {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            _ => return None,
        };
        let session = parts.next()?.parse::<ulid::Ulid>().ok()?;
        let expires: i64 = parts.next()?.parse().ok()?;
        if expires <= errand_engine::now_ms() {
            return None;
        }
        Some(Operator {
            role,
            session: session.to_string(),
        })
    }

    /// The operator a request's credentials name: its login cookie, else a bearer password
    /// (machine clients); `None` without either, `Err` with the wait when password checks
    /// are rate limited (`Duration::ZERO` for a wrong password).
    pub(crate) async fn operator(
        &self,
        credentials: Credentials,
    ) -> Option<Result<Operator, Duration>> {
        if let Some(operator) = credentials.cookie {
            return Some(Ok(operator));
        }
        let password = credentials.bearer?;
        Some(
            self.check(credentials.address, password)
                .await
                .and_then(|role| {
                    role.map(|role| Operator {
                        role,
                        session: "token".to_owned(),
                    })
                    .ok_or(Duration::ZERO)
                }),
        )
    }

    /// What a request offers to prove who sent it, read before anything waits.
    pub(crate) fn credentials(&self, request: &Request) -> Credentials {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|password| password.trim().to_owned());
        Credentials {
            cookie: self.cookie_login(request),
            bearer,
            address: client_address(request, self.trust_forwarded),
        }
    }
}

/// A request's login cookie (checked), bearer password (not yet checked) and client address.
pub(crate) struct Credentials {
    cookie: Option<Operator>,
    bearer: Option<String>,
    address: IpAddr,
}

/// The login form's fields.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// Where a login or a refusal sends the browser: a console page, never elsewhere.
fn console_path(next: Option<&str>) -> &str {
    next.filter(|next| {
        (*next == "/admin" || next.starts_with("/admin/"))
            && !next.starts_with("/admin/login")
            && !next.contains("//")
            && !next.contains('\\')
            && !next.chars().any(char::is_control)
    })
    .unwrap_or("/admin")
}

/// `POST /admin/login`: a right password sets the login cookie and goes to the console page
/// asked for; a wrong one goes back to the form with a message.
pub async fn login(State(console): State<Option<Arc<Console>>>, request: Request) -> Response {
    let Some(console) = console else {
        return console_off();
    };
    let address = client_address(&request, console.trust_forwarded);
    let Ok(Form(form)) = Form::<LoginForm>::from_request(request, &()).await else {
        return (StatusCode::BAD_REQUEST, "the login form needs a password").into_response();
    };
    let next = console_path(form.next.as_deref()).to_owned();
    let again = |message: &str| {
        let query = serde_urlencoded::to_string([("error", message), ("next", next.as_str())])
            .unwrap_or_default();
        Redirect::to(&format!("/admin/login?{query}")).into_response()
    };
    match console.check(address, form.password).await {
        Err(wait) => again(&format!(
            "too many login attempts; try again in {} s",
            wait.as_secs().max(1)
        )),
        Ok(None) => {
            tracing::warn!(%address, "a console login failed");
            again("wrong password")
        }
        Ok(Some(role)) => {
            let session = ulid::Ulid::generate();
            let expires = errand_engine::now_ms() + LOGIN_LIFETIME.as_millis() as i64;
            tracing::info!(role = role.as_str(), %session, %address, "console login");
            // No Max-Age: the cookie also ends with the browser; the signed expiry bounds it.
            let cookie = Cookie::build((COOKIE, format!("{}.{session}.{expires}", role.as_str())))
                .path("/")
                .http_only(true)
                .secure(console.secure)
                .same_site(SameSite::Strict)
                .build();
            let jar = SignedCookieJar::new(console.key.clone()).add(cookie);
            (jar, Redirect::to(&next)).into_response()
        }
    }
}

/// `POST /admin/logout`: forgets the login cookie.
pub async fn logout(
    State(console): State<Option<Arc<Console>>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(console) = console else {
        return console_off();
    };
    // A jar holding the request's cookie, so removing it sends the browser an expired one.
    let removal = Cookie::build((COOKIE, "")).path("/").build();
    let jar = SignedCookieJar::from_headers(&headers, console.key.clone()).remove(removal);
    (jar, Redirect::to("/admin/login")).into_response()
}

fn console_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "the operators' console is off: start errand with --admin-password to turn it on",
    )
        .into_response()
}

/// What a path is, as far as the console's gate is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guarded {
    /// Not the console's.
    No,
    /// The login form and its handlers: open to all (when the console is on).
    Login,
    /// A console page: a browser without a login goes to the login form.
    Page,
    /// A console server function or API route: 401 without a login.
    Call,
}

fn guarded(path: &str) -> Guarded {
    if path == "/admin/login" || path == "/admin/logout" {
        Guarded::Login
    } else if path == "/admin" || path.starts_with("/admin/") {
        Guarded::Page
    } else if path.starts_with("/fn/admin_") || path.starts_with("/api/admin/") {
        Guarded::Call
    } else {
        Guarded::No
    }
}

/// True for the console's paths (its pages, login, server functions and API).
pub fn is_console(path: &str) -> bool {
    guarded(path) != Guarded::No
}

/// The console's gate, in front of every route: a console page or call passes only with a
/// login (the cookie, or a bearer password for machine clients), and carries the [`Operator`]
/// in its extensions; with the console off they are all 404.
pub async fn gate(
    State(console): State<Option<Arc<Console>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let kind = guarded(request.uri().path());
    if kind == Guarded::No {
        return next.run(request).await;
    }
    let Some(console) = console else {
        return console_off();
    };
    if kind == Guarded::Login {
        return next.run(request).await;
    }
    let credentials = console.credentials(&request);
    let operator = console.operator(credentials).await;
    match operator {
        Some(Ok(operator)) => {
            request.extensions_mut().insert(operator);
            let mut response = next.run(request).await;
            // Every owner's jobs: not for the browser's cache (Back after logging out).
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Some(Err(wait)) if !wait.is_zero() => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            "too many password attempts",
        )
            .into_response(),
        _ if kind == Guarded::Page && request.method() == axum::http::Method::GET => {
            let here = request
                .uri()
                .path_and_query()
                .map_or("/admin", |path| path.as_str());
            let query = serde_urlencoded::to_string([("next", here)]).unwrap_or_default();
            Redirect::to(&format!("/admin/login?{query}")).into_response()
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"errand console\"")],
            axum::Json(serde_json::json!({
                "error": "log in to the operators' console first (/admin/login)"
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_only_ever_sends_the_browser_to_a_console_page() {
        assert_eq!(
            console_path(Some("/admin/jobs?state=failed")),
            "/admin/jobs?state=failed"
        );
        assert_eq!(console_path(Some("/admin")), "/admin");
        for elsewhere in [
            "https://evil.test/admin",
            "//evil.test/admin",
            "/admin//evil.test",
            "/admin\\x",
            "/admin/\nx",
            "/jobs",
            "/administrator",
            "/admin/login?next=x",
        ] {
            assert_eq!(console_path(Some(elsewhere)), "/admin", "{elsewhere}");
        }
        assert_eq!(console_path(None), "/admin");
    }

    #[test]
    fn passwords_are_checked_against_their_hash() -> anyhow::Result<()> {
        let hashed = hash("correct horse battery")?;
        assert!(hashed.starts_with("$argon2id$"));
        assert!(!hashed.contains("correct"));
        assert!(matches(&hashed, "correct horse battery"));
        assert!(!matches(&hashed, "correct horse batter"));
        assert!(!matches("not a hash", "correct horse battery"));
        Ok(())
    }

    #[test]
    fn passwords_come_from_a_value_or_a_file_not_both() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("admin");
        std::fs::write(&file, "from the file\n")?;
        assert_eq!(
            read_password(None, Some(&file), "admin-password")?.as_deref(),
            Some("from the file")
        );
        assert!(read_password(Some("x"), Some(&file), "admin-password").is_err());
        assert!(read_password(Some("short"), None, "admin-password").is_err());
        assert_eq!(read_password(None, None, "admin-password")?, None);
        Ok(())
    }

    #[test]
    fn console_paths_are_recognised() {
        assert_eq!(guarded("/admin"), Guarded::Page);
        assert_eq!(guarded("/admin/jobs/01H"), Guarded::Page);
        assert_eq!(guarded("/admin/login"), Guarded::Login);
        assert_eq!(guarded("/fn/admin_retry"), Guarded::Call);
        assert_eq!(guarded("/api/admin/jobs"), Guarded::Call);
        assert_eq!(guarded("/administrator"), Guarded::No);
        assert_eq!(guarded("/jobs"), Guarded::No);
    }
}
