//! `webhook`: POSTs a JSON payload to a URL. Retries with backoff on 5xx answers, timeouts and
//! connection errors, never on 4xx. Only http and https; loopback, private, link-local and other
//! internal addresses are refused after DNS resolution (so a hostname cannot smuggle them in),
//! unless the operator's allow-list names them. The request goes to the address that was checked.

use super::{
    FormFields, InvalidInput, JobError, JobKind, RetryPolicy, SubmitContext, check_range,
    form_integer,
};
use crate::worker::JobContext;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

/// How much of the answer the result keeps.
const BODY_KEPT: usize = 4 * 1024;
/// Largest payload accepted.
const MAX_PAYLOAD: usize = 32 * 1024;
/// Tries per job run (the first and two retries).
const ATTEMPTS: u32 = 3;
/// First retry delay; doubled on each retry, plus up to 50% jitter.
const BASE_DELAY: Duration = Duration::from_millis(250);

/// Parameters of a `webhook` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookArgs {
    pub url: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    10_000
}

/// The `webhook` kind, with the addresses the operator allows despite the internal-address rule.
#[derive(Debug, Clone, Default)]
pub struct Webhook {
    pub allow: Arc<Vec<IpAddr>>,
}

impl JobKind for Webhook {
    const NAME: &'static str = "webhook";
    // The request is retried inside one run (with its own backoff); the job is not re-run.
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::DEFAULT
    };
    const KEY: Option<&'static str> = Some("host");
    type Args = WebhookArgs;

    /// The target's host, so a per-key limit spares each receiver.
    fn key(args: &WebhookArgs) -> Option<String> {
        Url::parse(&args.url).ok()?.host_str().map(str::to_owned)
    }

    fn from_form(fields: &FormFields) -> Result<WebhookArgs, InvalidInput> {
        let url = fields
            .get("url")
            .map(|u| u.trim().to_owned())
            .unwrap_or_default();
        let text = fields.get("payload").map(|p| p.trim()).unwrap_or_default();
        let payload = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text)
                .map_err(|e| InvalidInput::field("payload", format!("is not valid JSON: {e}")))?
        };
        let timeout_ms = match fields.get("timeout_ms").map(|t| t.trim()) {
            None | Some("") => default_timeout(),
            Some(_) => form_integer(fields, "timeout_ms", 100..=60_000)?,
        };
        Ok(WebhookArgs {
            url,
            payload,
            timeout_ms,
        })
    }

    fn validate(args: &WebhookArgs, _: &SubmitContext<'_>) -> Result<(), InvalidInput> {
        parse_url(&args.url)?;
        check_range("timeout_ms", args.timeout_ms, 100..=60_000)?;
        if args.payload.to_string().len() > MAX_PAYLOAD {
            return Err(InvalidInput::field("payload", "is larger than 32 KiB"));
        }
        Ok(())
    }

    async fn run(&self, args: WebhookArgs, ctx: &JobContext) -> Result<Value, JobError> {
        let url = parse_url(&args.url).map_err(|e| JobError::Permanent(e.message))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let address = resolve_allowed(&host, port, &self.allow).await?;
        ctx.log(format!("{host} resolved to {}", address.ip()))
            .await;
        // No proxy: a proxy would resolve the name again, past the address checked here.
        let client = reqwest::Client::builder()
            .no_proxy()
            .resolve(&host, address)
            .timeout(Duration::from_millis(args.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| JobError::Permanent(format!("could not build the HTTP client: {e}")))?;

        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            ctx.check_cancelled()?;
            ctx.progress(
                f64::from(attempt - 1) / f64::from(ATTEMPTS),
                Some(format!("attempt {attempt} of {ATTEMPTS}")),
            )
            .await;
            let started = Instant::now();
            let sent = client.post(url.clone()).json(&args.payload).send().await;
            let latency_ms = started.elapsed().as_millis() as u64;
            match sent {
                Ok(response) => {
                    let status = response.status();
                    ctx.log(format!("attempt {attempt}: {status} in {latency_ms} ms"))
                        .await;
                    if status.is_server_error() {
                        last_error = format!("the endpoint answered {status}");
                    } else if status.is_client_error() {
                        return Err(JobError::Permanent(format!(
                            "the endpoint answered {status}"
                        )));
                    } else {
                        let content_type = response
                            .headers()
                            .get(reqwest::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let (body, truncated) = read_start(response).await;
                        return Ok(json!({
                            "status": status.as_u16(),
                            "latency_ms": latency_ms,
                            "attempts": attempt,
                            "content_type": content_type,
                            "body": body,
                            "truncated": truncated,
                        }));
                    }
                }
                Err(err) => {
                    let what = if err.is_timeout() {
                        "timed out"
                    } else {
                        "could not connect"
                    };
                    last_error = format!("{what}: {err}");
                    ctx.log(format!("attempt {attempt}: {last_error}")).await;
                }
            }
            if attempt < ATTEMPTS {
                let delay = backoff(attempt);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = ctx.cancelled() => return Err(JobError::Cancelled),
                }
            }
        }
        Err(JobError::Retryable(format!(
            "gave up after {ATTEMPTS} attempts: {last_error}"
        )))
    }
}

/// Delay before retry number `attempt` (1-based): base × 2^(attempt-1), plus up to 50% jitter.
fn backoff(attempt: u32) -> Duration {
    let base = BASE_DELAY * 2_u32.saturating_pow(attempt.saturating_sub(1));
    let jitter = rand::random_range(0.0..0.5);
    base.mul_f64(1.0 + jitter)
}

/// Reads at most [`BODY_KEPT`] bytes of the answer, as text.
async fn read_start(response: reqwest::Response) -> (String, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = BODY_KEPT - kept.len();
        if chunk.len() > room {
            kept.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        kept.extend_from_slice(&chunk);
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

fn parse_url(text: &str) -> Result<Url, InvalidInput> {
    let url = Url::parse(text).map_err(|_| InvalidInput::field("url", "is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(InvalidInput::field(
            "url",
            "must start with http:// or https://",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidInput::field("url", "has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidInput::field("url", "must not contain credentials"));
    }
    Ok(url)
}

/// Resolves `host` and returns an address to connect to, refusing internal addresses that are not
/// allowed. Every resolved address must pass, so a name that also points inside is refused.
async fn resolve_allowed(host: &str, port: u16, allow: &[IpAddr]) -> Result<SocketAddr, JobError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| JobError::Retryable(format!("could not resolve {host}: {e}")))?
        .collect();
    let first = *addresses
        .first()
        .ok_or_else(|| JobError::Retryable(format!("{host} has no address")))?;
    if let Some(refused) = addresses.iter().find(|a| !is_allowed(a.ip(), allow)) {
        return Err(JobError::Permanent(format!(
            "{host} resolves to {}, an internal address; webhooks may only call public addresses",
            refused.ip()
        )));
    }
    Ok(first)
}

/// True when `ip` is public or on the operator's allow-list.
pub fn is_allowed(ip: IpAddr, allow: &[IpAddr]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    allow.contains(&ip) || !is_internal(ip)
}

/// True for every address a webhook must not reach: loopback, private, link-local, shared,
/// reserved, documentation, benchmarking, multicast and broadcast ranges, and IPv6 forms that
/// carry an IPv4 address (mapped, NAT64, 6to4) when that address is one of these. Forms whose
/// target cannot be told from the address (IPv4-compatible, local-use NAT64, Teredo, ORCHID,
/// other special-purpose ranges) count as internal too.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0 // "this network"
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let first = segments[0];
            let embedded = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                std::net::Ipv4Addr::new(a, b, c, d)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            // NAT64 (64:ff9b::/96): the IPv4 address in the last 32 bits.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_internal(IpAddr::V4(embedded(segments[6], segments[7])));
            }
            // 6to4 (2002::/16): the IPv4 address in bits 16..48.
            if first == 0x2002 {
                return is_internal(IpAddr::V4(embedded(segments[1], segments[2])));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || segments[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (::/96, deprecated)
                || segments[..3] == [0x64, 0xff9b, 1] // local-use NAT64 (64:ff9b:1::/48)
                || segments[..4] == [0x100, 0, 0, 0] // discard-only (100::/64)
                || (first == 0x2001 && segments[1] < 0x200) // IETF protocol assignments, Teredo, ORCHID (2001::/23)
                || (first == 0x2001 && segments[1] == 0xdb8) // documentation (2001:db8::/32)
                || (first == 0x3fff && segments[1] < 0x1000) // documentation (3fff::/20)
                || (first & 0xfe00) == 0xfc00 // unique local (fc00::/7)
                || (first & 0xffc0) == 0xfe80 // link-local (fe80::/10)
                || (first & 0xffc0) == 0xfec0 // site-local (fec0::/10, deprecated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("http://example.com:8080/x?y=1").is_ok());
        for bad in [
            "ftp://example.com/x",
            "example.com",
            "file:///etc/passwd",
            "http://user:pw@example.com/",
            "",
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert_eq!(err.field.as_deref(), Some("url"), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let parse = |s: &str| s.parse::<IpAddr>().expect("ip");
        for internal in [
            // IPv4
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::1",
            "::",
            "fe80::1",
            "fec0::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "2001::1",          // Teredo
            "2001:10::1",       // ORCHID
            "::ffff:127.0.0.1", // IPv4-mapped
            "::ffff:10.0.0.1",
            "::127.0.0.1",        // IPv4-compatible
            "::8.8.8.8",          // IPv4-compatible, deprecated whatever it carries
            "64:ff9b::7f00:1",    // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "64:ff9b:1::1",       // local-use NAT64
            "2002:7f00:1::1",     // 6to4 of 127.0.0.1
            "2002:c0a8:101::1",   // 6to4 of 192.168.1.1
        ] {
            assert!(
                !is_allowed(parse(internal), &[]),
                "{internal} must be refused"
            );
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
            "::ffff:1.1.1.1",
        ] {
            assert!(is_allowed(parse(public), &[]), "{public} must be allowed");
        }
        assert!(is_allowed(parse("127.0.0.1"), &[parse("127.0.0.1")]));
        assert!(is_allowed(parse("::ffff:127.0.0.1"), &[parse("127.0.0.1")]));
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused() {
        let err = resolve_allowed("localhost", 80, &[])
            .await
            .expect_err("localhost");
        assert!(
            matches!(err, JobError::Permanent(ref m) if m.contains("internal")),
            "{err}"
        );
        let allowed = resolve_allowed("127.0.0.1", 80, &["127.0.0.1".parse().expect("ip")]).await;
        assert!(allowed.is_ok());
    }

    #[test]
    fn form_payload_must_be_json_and_backoff_grows() {
        let fields: FormFields = [
            ("url".to_owned(), "https://example.com".to_owned()),
            ("payload".to_owned(), "{oops".to_owned()),
        ]
        .into();
        let err = Webhook::from_form(&fields).expect_err("bad json");
        assert_eq!(err.field.as_deref(), Some("payload"));
        assert!(backoff(1) >= BASE_DELAY && backoff(1) <= BASE_DELAY * 3 / 2);
        assert!(backoff(3) >= BASE_DELAY * 4);
    }
}
