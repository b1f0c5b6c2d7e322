//! Talking to errand as its users do: the JSON API with a session cookie, and the event stream.

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

/// One server-sent event, with the time it arrived.
pub(crate) struct Received {
    pub(crate) name: String,
    pub(crate) data: Value,
    pub(crate) at: Instant,
    /// Arrival as unix milliseconds, to compare with the server's timestamps.
    pub(crate) unix_ms: f64,
}

impl Api {
    /// A client with its own session (started before its first job, so every request of its
    /// connections shares it).
    pub(crate) async fn new(base: &str, connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .pool_max_idle_per_host(connections)
            .build()?;
        let api = Self {
            base: base.to_owned(),
            http,
        };
        api.http
            .post(format!("{}/api/session", api.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(api)
    }

    /// Submits a no-op job (`sleep`, 0 ms) or any `sleep`; returns its id.
    pub(crate) async fn sleep(
        &self,
        ms: u64,
        steps: u64,
        delay_ms: Option<u64>,
    ) -> anyhow::Result<String> {
        let mut body = json!({ "kind": "sleep", "params": { "ms": ms, "steps": steps } });
        if let Some(delay) = delay_ms {
            body["delay_ms"] = json!(delay);
        }
        self.submit(&body).await
    }

    /// Submits a job (`{"kind", "params", …}` as `POST /api/jobs` takes it); returns its id.
    pub(crate) async fn submit(&self, body: &Value) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/jobs", self.base))
            .json(body)
            .send()
            .await?;
        if response.status() != 202 {
            bail!("submit answered {}", response.status());
        }
        let body: Value = response.json().await?;
        body["id"]
            .as_str()
            .map(str::to_owned)
            .context("no id in the answer")
    }

    pub(crate) async fn job(&self, id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/api/jobs/{id}", self.base))
            .send()
            .await?;
        if response.status() != 200 {
            bail!("GET job answered {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Reads the job's event stream to its end (the stream ends after the terminal state).
    pub(crate) async fn events(&self, id: &str) -> anyhow::Result<Vec<Received>> {
        let response = self
            .http
            .get(format!("{}/api/jobs/{id}/events", self.base))
            .send()
            .await?;
        if response.status() != 200 {
            bail!("events answered {}", response.status());
        }
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        let mut events = Vec::new();
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if let Some(event) = parse_event(&block) {
                    events.push(event);
                }
            }
        }
        Ok(events)
    }

    /// Whether any of this session's jobs is in `state`.
    pub(crate) async fn any_in_state(&self, state: &str) -> anyhow::Result<bool> {
        let url = format!("{}/api/jobs?limit=1&state={state}", self.base);
        let page: Value = self.http.get(url).send().await?.json().await?;
        Ok(page["jobs"].as_array().is_some_and(|jobs| !jobs.is_empty()))
    }

    /// Every job of this session (all pages).
    pub(crate) async fn all_jobs(&self) -> anyhow::Result<Vec<Value>> {
        let mut jobs = Vec::new();
        let mut before = String::new();
        loop {
            let url = format!("{}/api/jobs?limit=200&before={before}", self.base);
            let page: Value = self.http.get(url).send().await?.json().await?;
            jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
            match page["next_before"].as_str() {
                Some(next) => before = next.to_owned(),
                None => return Ok(jobs),
            }
        }
    }
}

fn parse_event(block: &str) -> Option<Received> {
    let mut name = None;
    let mut data = None;
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            data = serde_json::from_str(value.trim()).ok();
        }
    }
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Some(Received {
        name: name?,
        data: data?,
        at: Instant::now(),
        unix_ms,
    })
}

/// Unix milliseconds of an RFC 3339 time in a job's JSON.
pub(crate) fn millis(value: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_from_their_lines() {
        let event = parse_event("event: job\ndata: {\"state\":\"running\"}\n\n").expect("event");
        assert_eq!(event.name, "job");
        assert_eq!(event.data["state"], "running");
        assert!(parse_event(": keep-alive\n\n").is_none());
    }
}
