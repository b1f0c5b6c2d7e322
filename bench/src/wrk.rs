//! Scenario 1 with a C load generator: `wrk` posts no-op jobs on 256 connections, so the
//! enqueue figure does not depend on this tool's own speed (its Rust client takes about one of
//! the machine's two cores at c=256). The Rust client's rows stay: they time every request and
//! check every answer; wrk checks that none was refused and reports its latency distribution.

use crate::{Context, Row};
use anyhow::{Context as _, ensure};
use serde_json::json;
use std::time::Duration;

/// Posts `{"kind":"sleep","params":{"ms":0}}` for `duration` on `connections` connections,
/// all in one session, as the Rust client's enqueue rows do.
pub(crate) async fn enqueue(
    cx: &Context,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let session = reqwest::Client::new()
        .post(format!("{}/api/session", server.base))
        .send()
        .await?
        .error_for_status()?;
    let cookie = session
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .context("POST /api/session set no cookie")?
        .to_owned();
    let script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    std::fs::write(
        script.path(),
        format!(
            "wrk.method = \"POST\"\n\
             wrk.body = '{{\"kind\":\"sleep\",\"params\":{{\"ms\":0,\"steps\":1}}}}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Cookie\"] = \"{cookie}\"\n"
        ),
    )?;
    let output = tokio::process::Command::new("wrk")
        .arg("-t2")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs()))
        // A slow answer is a latency to report, not a socket error (wrk's own limit is 2 s).
        .arg("--timeout=10s")
        .arg("--latency")
        .arg("-s")
        .arg(script.path())
        .arg(format!("{}/api/jobs", server.base))
        .output()
        .await
        .context("could not run wrk (Debian: apt install wrk; ./scripts/test installs it)")?;
    let peak = server.peak_rss_mb();
    server.stop().await;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "wrk failed: {report}");
    let figures = read_report(&report)?;
    Ok(Row::new(
        format!("enqueue c={connections} (wrk)"),
        json!({
            "requests": figures.requests, "requests_per_s": figures.per_second,
            "p50_ms": figures.p50_ms, "p99_ms": figures.p99_ms, "peak_rss_mb": peak,
        }),
    )
    .headline(format!(
        "{:.0} req/s, p50 {:.1} ms, p99 {:.1} ms ({} requests in {} s, wrk)",
        figures.per_second,
        figures.p50_ms,
        figures.p99_ms,
        figures.requests,
        duration.as_secs()
    )))
}

#[derive(Debug, PartialEq)]
struct Figures {
    requests: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The figures of wrk's report, after checking that every request was answered 2xx.
fn read_report(report: &str) -> anyhow::Result<Figures> {
    let field = |label: &str| {
        report
            .lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(label).map(str::trim))
    };
    ensure!(
        field("Non-2xx or 3xx responses:").is_none(),
        "some requests were refused: {report}"
    );
    ensure!(
        field("Socket errors:").is_none(),
        "wrk saw socket errors: {report}"
    );
    let per_second = field("Requests/sec:")
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's report: {report}"))?;
    let requests = report
        .lines()
        .find_map(|line| line.trim().split_once(" requests in ")?.0.parse().ok())
        .with_context(|| format!("no request count in wrk's report: {report}"))?;
    let percentile = |label: &str| {
        field(label)
            .and_then(milliseconds)
            .with_context(|| format!("no {label} latency in wrk's report: {report}"))
    };
    Ok(Figures {
        requests,
        per_second,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// wrk's durations: `812.00us`, `4.51ms`, `1.02s`, `2.00m`.
fn milliseconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:4000/api/jobs
  2 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    24.46ms    8.12ms 103.84ms   80.10%
    Req/Sec     5.26k   520.11     6.37k    73.00%
  Latency Distribution
     50%   23.11ms
     75%   27.90ms
     90%   33.72ms
     99%   52.65ms
  104712 requests in 10.01s, 24.27MB read
Requests/sec:  10461.24
Transfer/sec:      2.42MB
";

    #[test]
    fn a_report_gives_its_rate_count_and_percentiles() {
        let figures = read_report(REPORT).expect("figures");
        assert_eq!(
            figures,
            Figures {
                requests: 104_712,
                per_second: 10_461.24,
                p50_ms: 23.11,
                p99_ms: 52.65
            }
        );
        assert_eq!(milliseconds("812.00us"), Some(0.812));
        assert_eq!(milliseconds("1.50s"), Some(1_500.0));
        assert_eq!(milliseconds("fast"), None);
    }

    #[test]
    fn a_report_with_refused_requests_or_socket_errors_is_an_error() {
        let refused = REPORT.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 12\nRequests/sec:",
        );
        assert!(read_report(&refused).is_err());
        let broken = REPORT.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec:",
        );
        assert!(read_report(&broken).is_err());
    }
}
