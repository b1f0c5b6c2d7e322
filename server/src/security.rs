//! What protects a visitor's session from other sites: the cross-site check on every
//! state-changing request, and the security headers every response carries. The pages' own
//! Content-Security-Policy (with the hydration script's nonce) is set where the page is rendered
//! (`errand_app::server::page_policy`); every other response gets [`STRICT_POLICY`].

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower_http::set_header::SetResponseHeaderLayer;

/// The policy of every response that is not a page (JSON, event streams, files, assets): it
/// may run nothing and load nothing, and nothing may frame it.
pub const STRICT_POLICY: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The origin (`scheme://host[:port]`) the site is served at, when configured
/// (`--public-url`); without it, a request's own `Host` names the site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteOrigin(Option<String>);

impl SiteOrigin {
    /// The origin of a public URL such as `https://jobs.example.com/` (path ignored).
    pub fn from_public_url(url: Option<&str>) -> anyhow::Result<Self> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Self(None));
        };
        let uri: axum::http::Uri = url
            .parse()
            .map_err(|_| anyhow::anyhow!("--public-url {url:?} is not a URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            anyhow::bail!("--public-url {url:?} must be an absolute URL such as https://host");
        };
        anyhow::ensure!(
            scheme == "http" || scheme == "https",
            "--public-url {url:?} must start with http:// or https://"
        );
        anyhow::ensure!(
            !authority.as_str().contains('@'),
            "--public-url {url:?} must not carry a user name"
        );
        Ok(Self(Some(
            format!("{scheme}://{authority}").to_ascii_lowercase(),
        )))
    }

    /// True when the site is served over TLS, so its cookies are `Secure`.
    pub fn is_https(&self) -> bool {
        self.0.as_deref().is_some_and(|o| o.starts_with("https://"))
    }

    /// Whether a browser's `Origin` header names this site.
    fn matches(&self, origin: &str, headers: &HeaderMap) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        match &self.0 {
            Some(configured) => origin == *configured,
            None => {
                // Only the host and port can be compared: behind a proxy the scheme the
                // browser used is unknown here.
                let authority = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_ascii_lowercase);
                authority.is_some_and(|authority| host.as_deref() == Some(authority))
            }
        }
    }
}

/// Why a request was refused as cross-site, or `None` when it may go on.
///
/// Safe methods always pass (no GET route changes anything). A browser says where a request
/// comes from with `Sec-Fetch-Site` (every current browser) or `Origin`; only the site itself
/// (`same-origin`, or a navigation the person started: `none`) may change state. A request with
/// neither header has no browser context (curl, a server, a script) and no session of a
/// visitor's to abuse unless it was handed the cookie, so it passes.
pub fn cross_site_refusal(
    method: &Method,
    headers: &HeaderMap,
    site: &SiteOrigin,
) -> Option<String> {
    if method.is_safe() {
        return None;
    }
    if let Some(fetch_site) = headers.get("sec-fetch-site") {
        return match fetch_site.to_str().unwrap_or_default() {
            "same-origin" | "none" => None,
            other => Some(format!(
                "cross-site request refused: this request came from another site \
                 (Sec-Fetch-Site: {other}); open Errand at its own address and send it from there"
            )),
        };
    }
    let origin = headers.get(header::ORIGIN)?.to_str().ok();
    match origin {
        Some(origin) if site.matches(origin, headers) => None,
        origin => Some(format!(
            "cross-site request refused: this request came from another site (Origin: {}); \
             open Errand at its own address and send it from there",
            origin.unwrap_or("unreadable")
        )),
    }
}

/// Middleware: refuses cross-site state-changing requests with 403 before anything runs.
pub async fn cross_site_guard(
    State(site): State<Arc<SiteOrigin>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(message) = cross_site_refusal(request.method(), request.headers(), &site) else {
        return next.run(request).await;
    };
    tracing::info!(path = %request.uri().path(), "refused a cross-site request");
    let mut response = if request.uri().path().starts_with("/api/") {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": message, "field": null })),
        )
            .into_response()
    } else {
        (StatusCode::FORBIDDEN, message).into_response()
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Adds the headers every response carries unless its handler set its own: no MIME sniffing,
/// no framing, the referrer only within the site, and [`STRICT_POLICY`].
pub fn with_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    router
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "same-origin"))
        .layer(set(header::CONTENT_SECURITY_POLICY, STRICT_POLICY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_the_site_itself_and_clients_without_a_browser_may_post() {
        let site = SiteOrigin::default();
        let post = Method::POST;
        let host = ("host", "127.0.0.1:3000");
        let allowed = [
            headers(&[host]),
            headers(&[host, ("sec-fetch-site", "same-origin")]),
            headers(&[host, ("sec-fetch-site", "none")]),
            headers(&[host, ("origin", "http://127.0.0.1:3000")]),
            headers(&[host, ("origin", "HTTPS://127.0.0.1:3000")]),
        ];
        for h in &allowed {
            assert_eq!(cross_site_refusal(&post, h, &site), None, "{h:?}");
        }
        let refused = [
            headers(&[host, ("sec-fetch-site", "cross-site")]),
            headers(&[host, ("sec-fetch-site", "same-site")]),
            headers(&[host, ("origin", "http://evil.example")]),
            headers(&[host, ("origin", "null")]),
            headers(&[host, ("origin", "http://127.0.0.1:3001")]),
            headers(&[("origin", "http://127.0.0.1:3000")]),
            // The fetch metadata wins over an Origin that looks right.
            headers(&[
                host,
                ("origin", "http://127.0.0.1:3000"),
                ("sec-fetch-site", "cross-site"),
            ]),
        ];
        for h in &refused {
            let message = cross_site_refusal(&post, h, &site).expect("refused");
            assert!(message.starts_with("cross-site request refused"), "{h:?}");
        }
        let evil = headers(&[host, ("sec-fetch-site", "cross-site")]);
        assert_eq!(cross_site_refusal(&Method::GET, &evil, &site), None);
        assert!(cross_site_refusal(&Method::DELETE, &evil, &site).is_some());
    }

    #[test]
    fn a_public_url_names_the_one_origin_allowed() -> anyhow::Result<()> {
        let site = SiteOrigin::from_public_url(Some("https://Jobs.Example.com/app/"))?;
        assert!(site.is_https());
        let post = Method::POST;
        let proxied =
            |origin: &'static str| headers(&[("host", "127.0.0.1:3000"), ("origin", origin)]);
        assert_eq!(
            cross_site_refusal(&post, &proxied("https://jobs.example.com"), &site),
            None
        );
        assert!(cross_site_refusal(&post, &proxied("http://jobs.example.com"), &site).is_some());
        assert!(cross_site_refusal(&post, &proxied("http://127.0.0.1:3000"), &site).is_some());
        assert!(!SiteOrigin::from_public_url(Some("http://x:8080"))?.is_https());
        assert_eq!(SiteOrigin::from_public_url(None)?, SiteOrigin::default());
        for bad in ["jobs.example.com", "ftp://x", "https://user@x", "/path"] {
            assert!(SiteOrigin::from_public_url(Some(bad)).is_err(), "{bad}");
        }
        Ok(())
    }
}
