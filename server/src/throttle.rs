//! Rate limits on the requests that make work (submits, retries, uploads): per session and per
//! client address, each a GCRA limiter (the `governor` crate: a steady rate with a burst
//! allowance). A refused request gets 429 with `Retry-After`, in the form its sender reads:
//! the API's JSON error, the server functions' error (the hydrated form shows it), or a
//! redirect back to the form with the message (a form sent without JavaScript).

use crate::api::ApiError;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use errand_app::error::AppError;
use errand_engine::Owner;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use leptos::server_fn::error::FromServerFnError;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// How often the limiters forget keys whose allowance is full again.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The limits of one deployment; `None` where a limit is off.
pub(crate) struct Throttle {
    per_session: Option<DefaultKeyedRateLimiter<String>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Read the client's address from `X-Forwarded-For` (behind a proxy).
    trust_forwarded: bool,
}

/// A rate (requests per second) and burst; a zero rate turns the limit off.
fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl Throttle {
    pub(crate) fn new(
        session: (u32, u32),
        address: (u32, u32),
        trust_forwarded: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            per_session: quota(session.0, session.1).map(RateLimiter::dashmap),
            per_address: quota(address.0, address.1).map(RateLimiter::dashmap),
            trust_forwarded,
        })
    }

    /// Takes one request of `owner` from `address` off their allowances, or says how long to
    /// wait. The address is checked first, so a flood of fresh sessions from one address uses
    /// up only the address's allowance.
    ///
    /// A refused request's wait is read from the limiter's own clock: making a clock reads the
    /// CPU's features and calibrates its counter, which, once per request, was 16 % of the
    /// server's CPU under an enqueue load.
    fn check(&self, owner: &Owner, address: IpAddr) -> Result<(), Duration> {
        if let Some(limiter) = &self.per_address {
            limiter
                .check_key(&address)
                .map_err(|late| late.wait_time_from(limiter.clock().now()))?;
        }
        if let Some(limiter) = &self.per_session {
            limiter
                .check_key(&owner.0)
                .map_err(|late| late.wait_time_from(limiter.clock().now()))?;
        }
        Ok(())
    }

    /// Forgets every key whose allowance is full again, so the tables stay as small as the
    /// set of recent senders; ends when the routes holding the limits are gone.
    pub(crate) async fn forget_idle_keys(throttle: std::sync::Weak<Self>) {
        let mut every = tokio::time::interval(FORGET_EVERY);
        loop {
            every.tick().await;
            let Some(throttle) = throttle.upgrade() else {
                return;
            };
            for limiter in throttle.per_session.iter() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            for limiter in throttle.per_address.iter() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
    }
}

/// The client's address: the connection's peer, or behind a trusted proxy the address it
/// appended last to `X-Forwarded-For`.
pub(crate) fn client_address(request: &Request, trust_forwarded: bool) -> IpAddr {
    let forwarded = trust_forwarded
        .then(|| request.headers().get("x-forwarded-for")?.to_str().ok())
        .flatten()
        .and_then(|list| list.rsplit(',').next()?.trim().parse().ok());
    forwarded
        .or_else(|| {
            let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
            Some(peer.ip())
        })
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// True for the requests that make work: the ones the limits apply to.
fn makes_work(method: &Method, path: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    matches!(
        path,
        "/api/jobs" | "/api/uploads" | "/upload" | "/fn/start_job" | "/fn/retry_job"
    ) || path
        .strip_prefix("/api/jobs/")
        .is_some_and(|rest| rest.ends_with("/retry"))
}

/// Middleware (inside the session layer, which puts the [`Owner`] in the request).
pub(crate) async fn limit(
    State(throttle): State<Arc<Throttle>>,
    request: Request,
    next: Next,
) -> Response {
    if !makes_work(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let owner = request
        .extensions()
        .get::<Owner>()
        .cloned()
        .unwrap_or_else(|| Owner(String::new()));
    let address = client_address(&request, throttle.trust_forwarded);
    match throttle.check(&owner, address) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            tracing::info!(%address, path = %request.uri().path(), "rate limited a request");
            too_many(&request, wait)
        }
    }
}

/// The 429 answer, in the form the sender reads.
fn too_many(request: &Request, wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let message =
        format!("too many jobs started from this browser or address; try again in {seconds} s");
    let path = request.uri().path();
    let plain_form = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let mut response = if plain_form {
        // A form sent without JavaScript: back to the form, which shows the message.
        let query = serde_urlencoded::to_string([("error", message.as_str())]).unwrap_or_default();
        Redirect::to(&format!("/?{query}")).into_response()
    } else if path.starts_with("/fn/") {
        let body = AppError::Limited(message).ser();
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    } else {
        ApiError::TooMany(message).into_response()
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_make_work_are_limited() {
        let post = Method::POST;
        for path in [
            "/api/jobs",
            "/api/uploads",
            "/upload",
            "/fn/start_job",
            "/fn/retry_job",
            "/api/jobs/01H/retry",
        ] {
            assert!(makes_work(&post, path), "{path}");
        }
        for path in [
            "/api/jobs/01H/cancel",
            "/fn/get_job",
            "/fn/cancel_job",
            "/jobs",
        ] {
            assert!(!makes_work(&post, path), "{path}");
        }
        assert!(!makes_work(&Method::GET, "/api/jobs"));
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies_per_session_and_per_address() {
        let throttle = Throttle::new((1, 3), (1, 5), false);
        let (a, b) = (Owner("a".into()), Owner("b".into()));
        let (one, two) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert!(throttle.check(&a, one).is_ok());
        }
        let wait = throttle
            .check(&a, one)
            .expect_err("session a's burst is used up");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another session from the same address has its own allowance, but the address's
        // (5, of which a used 4) runs out.
        assert!(throttle.check(&b, one).is_ok());
        assert!(throttle.check(&b, one).is_err());
        // Another address is not affected.
        assert!(throttle.check(&b, two).is_ok());
        let off = Throttle::new((0, 0), (0, 0), false);
        for _ in 0..1_000 {
            assert!(off.check(&a, one).is_ok());
        }
    }
}
