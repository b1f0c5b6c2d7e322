//! The fault suite: the real `errand` binary, real SQLite files, real PostgreSQL and Redis, and
//! real faults — SIGKILL while clients submit, requests cut off mid-way, database connections
//! terminated, Redis paused, poison uploads, floods of event-stream requests, a second process on
//! the same data dir. Each scenario prints what was submitted, succeeded, lost, stuck and run
//! twice, and fails if anything was lost or stuck. Counts and times are fixed and bounded; the
//! full-size runs are in BENCHMARKS.md ("Faults survived").
//!
//! The scenarios run one at a time (they pause shared services and measure memory).

mod common;

use common::Client;
use common::process::{Server, browser, shared, spawn, start, start_with, terminate};
use errand_engine::testing::SharedStores;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, MutexGuard};

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The scenario lock, a fresh data dir and `errand serve` on it (restart it on the same dir
/// with `start(dir.path(), server.client.http.clone())`, which keeps the browser session).
async fn serve_fresh() -> (MutexGuard<'static, ()>, tempfile::TempDir, Server) {
    let serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let server = start(dir.path(), browser()).await;
    (serial, dir, server)
}

/// What became of the jobs a scenario submitted.
#[derive(Debug, Default)]
struct Tally {
    submitted: usize,
    succeeded: usize,
    failed: usize,
    lost: usize,
    stuck: usize,
    run_twice: usize,
}

impl Tally {
    fn print(&self, scenario: &str) {
        println!(
            "{scenario}: submitted {} / succeeded {} / failed {} / lost {} / stuck {} / run twice {}",
            self.submitted, self.succeeded, self.failed, self.lost, self.stuck, self.run_twice
        );
    }
}

/// Every job of `client`'s session, by id, read through the paged list.
async fn all_jobs(client: &Client) -> HashMap<String, Value> {
    let mut jobs = HashMap::new();
    let mut before = String::new();
    loop {
        let path = format!("/api/jobs?limit=200{before}");
        let (status, page) = client.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        for job in page["jobs"].as_array().cloned().unwrap_or_default() {
            jobs.insert(job["id"].as_str().unwrap_or_default().to_owned(), job);
        }
        match page["next_before"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => return jobs,
        }
    }
}

/// Waits until every job of the session has ended (or `within` passes), then counts what
/// became of `accepted`, the ids the server answered 2xx for.
async fn settle(client: &Client, accepted: &[String], within: Duration) -> Tally {
    let deadline = Instant::now() + within;
    let jobs = loop {
        let jobs = all_jobs(client).await;
        let open = jobs
            .values()
            .filter(|job| matches!(job["state"].as_str(), Some("queued" | "running")))
            .count();
        if open == 0 || Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut tally = Tally {
        submitted: accepted.len(),
        ..Tally::default()
    };
    for id in accepted {
        let Some(job) = jobs.get(id) else {
            tally.lost += 1;
            continue;
        };
        match job["state"].as_str() {
            Some("succeeded") => tally.succeeded += 1,
            Some("failed" | "cancelled") => tally.failed += 1,
            _ => tally.stuck += 1,
        }
        if job["attempts"].as_u64().unwrap_or(0) > 1 {
            tally.run_twice += 1;
        }
    }
    // A job the server recorded but never acknowledged (its request was cut) must not be
    // stuck either.
    tally.stuck += jobs
        .iter()
        .filter(|(id, job)| {
            !accepted.contains(id) && matches!(job["state"].as_str(), Some("queued" | "running"))
        })
        .count();
    tally
}

/// `clients` concurrent submitters of short sleep jobs until `stop`; the ids answered 202.
fn submitters(
    client: &Client,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let body = json!({ "kind": "sleep", "params": { "ms": 20, "steps": 1 } });
                while !stop.load(Ordering::Relaxed) {
                    let sent = client.http.post(client.url("/api/jobs")).json(&body).send();
                    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(5), sent).await
                    else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    if response.status() == 202
                        && let Ok(body) = response.json::<Value>().await
                        && let Some(id) = body["id"].as_str()
                    {
                        ids.push(id.to_owned());
                    }
                }
                ids
            })
        })
        .collect()
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<String>>>) -> Vec<String> {
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("submitter"));
    }
    ids
}

/// The resident memory of process `pid` now and at its peak, in MB.
fn memory_mb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_64_clients_submit_loses_nothing() {
    let (_serial, dir, mut server) = serve_fresh().await;
    let http = server.client.http.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = submitters(&server.client, 64, &stop);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    stop.store(true, Ordering::Relaxed);
    let accepted = collect(tasks).await;
    assert!(
        accepted.len() > 100,
        "only {} submits got through",
        accepted.len()
    );

    let server = start(dir.path(), http).await;
    let tally = settle(&server.client, &accepted, Duration::from_secs(60)).await;
    tally.print("kill -9 during 64 submitters (SQLite)");
    assert_eq!((tally.lost, tally.stuck), (0, 0), "{tally:?}");
    // Only the jobs running at the kill may run again, and at most the concurrency were.
    assert!(tally.run_twice <= 64, "{tally:?}");
    terminate(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_submits_cut_off_at_random_points_strand_no_job() {
    let (_serial, _dir, server) = serve_fresh().await;
    // One session for all: its cookie, as a browser would have it after its first job.
    let first = reqwest::Client::new()
        .post(server.client.url("/api/jobs"))
        .json(&serde_json::json!({"kind": "sleep", "params": {"ms": 0}}))
        .send()
        .await
        .expect("POST");
    let cookie = first
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let client = Client {
        base: server.client.base.clone(),
        http: cookie_client(&cookie),
    };
    let addr = server.client.base.trim_start_matches("http://").to_owned();
    let body = r#"{"kind":"sleep","params":{"ms":0}}"#;
    let request = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut random = 0x2545_F491_4F6C_DD1D_u64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let cuts: Vec<(usize, u64)> = (0..1_000)
        .map(|_| {
            // Half cut inside the request, half after all of it was sent, a little later.
            let at = if next() % 2 == 0 {
                (next() % request.len() as u64) as usize
            } else {
                request.len()
            };
            (at, next() % 3_000)
        })
        .collect();
    let mut sent = Vec::new();
    for chunk in cuts.chunks(50) {
        let batch = chunk.iter().map(|&(at, wait_us)| {
            let (addr, bytes) = (addr.clone(), request.as_bytes()[..at].to_vec());
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect");
                let _ = stream.write_all(&bytes).await;
                tokio::time::sleep(Duration::from_micros(wait_us)).await;
                drop(stream);
            })
        });
        sent.extend(batch);
        for task in sent.drain(..) {
            task.await.expect("cut request");
        }
    }
    let tally = settle(&client, &[], Duration::from_secs(20)).await;
    let made = all_jobs(&client).await.len();
    println!(
        "1,000 cut-off submits: {made} jobs recorded, {} stuck",
        tally.stuck
    );
    assert_eq!(tally.stuck, 0, "{tally:?}");
    terminate(server).await;
}

fn cookie_client(cookie: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::COOKIE,
        cookie.parse().expect("cookie header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_terminated_during_a_run_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let stores = SharedStores::postgres().await;
    let database = stores
        .database_url()
        .rsplit('/')
        .next()
        .and_then(|name| name.split('?').next())
        .expect("database name")
        .to_owned();
    shared_run(&stores, "Postgres backends terminated", || {
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        );
        let status = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qAtc",
                &sql,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("psql");
        assert!(status.success(), "psql could not terminate the connections");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_during_a_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let stores = SharedStores::redis().await;
    shared_run(&stores, "Redis paused", || {
        let status = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "6379",
                "CLIENT",
                "PAUSE",
                "1500",
                "ALL",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(status.success(), "redis-cli could not pause Redis");
    })
    .await;
}

/// A web and a worker process on `stores`; 32 clients submit while `fault` strikes three
/// times; every job the web process accepted must end, none lost or stuck.
async fn shared_run(stores: &SharedStores, scenario: &str, fault: impl Fn()) {
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    let web = start_with(&shared(stores, "web"), dirs[0].path(), browser()).await;
    let mut worker = spawn(&shared(stores, "worker"), dirs[1].path(), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = submitters(&web.client, 32, &stop);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        fault();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let accepted = collect(tasks).await;
    assert!(
        accepted.len() > 100,
        "only {} submits got through",
        accepted.len()
    );
    // Jobs stranded by a fault are pushed again by the reconciler after 30 s.
    let tally = settle(&web.client, &accepted, Duration::from_secs(90)).await;
    tally.print(scenario);
    assert_eq!((tally.lost, tally.stuck), (0, 0), "{tally:?}");
    assert_eq!(tally.failed, 0, "{tally:?}");
    let _ = worker.kill();
    let _ = worker.wait();
    terminate(web).await;
}

/// Uploads `bytes` as a file for `kind` and returns the upload id.
async fn upload(client: &Client, kind: &str, name: &str, bytes: Vec<u8>) -> String {
    let form = reqwest::multipart::Form::new()
        .text("kind", kind.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
    let response = client
        .http
        .post(client.url("/api/uploads"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("upload id").to_owned()
}

/// A PNG header for a 7,000 × 7,000 image with 16-bit RGBA pixels (49 megapixels, inside the
/// pixel limit, but 392 MB to decode) and no pixel data.
fn png_bomb() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0_u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (!(crc & 1)).wrapping_add(1));
            }
        }
        !crc
    }
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        png.extend((data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend(kind);
        png.extend(data);
        let crc = crc32(&png[start..]);
        png.extend(crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend(7_000_u32.to_be_bytes());
    header.extend(7_000_u32.to_be_bytes());
    header.extend([16, 6, 0, 0, 0]); // 16 bits, RGBA, deflate, adaptive, no interlace
    chunk(&mut png, b"IHDR", &header);
    // A valid zlib stream that holds nothing, then the end.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_inputs_fail_their_jobs_and_the_server_stays_small() {
    let (_serial, dir, server) = serve_fresh().await;
    let http = server.client.http.clone();
    let client = server.client.clone();

    let mut poisons = Vec::new();
    // A 100 MB header line: 100 million empty columns.
    let mut header = vec![b','; 99_999_999];
    header.push(b'\n');
    poisons.push(("csv_import", "header.csv", header, "longer than 1024 KiB"));
    // A million one-byte columns.
    poisons.push((
        "csv_import",
        "wide.csv",
        b"a,".repeat(1_000_000),
        "longer than 1024 KiB",
    ));
    // Half a megabyte of header: under the record limit, over the column limit.
    poisons.push((
        "csv_import",
        "cols.csv",
        b"a,".repeat(250_000),
        "at most 500 are supported",
    ));
    poisons.push(("thumbnail", "bomb.png", png_bomb(), "to decode"));
    let mut jobs = Vec::new();
    for (kind, name, bytes, expected) in poisons {
        let upload = upload(&client, kind, name, bytes).await;
        let response = client
            .submit(json!({ "kind": kind, "params": { "upload": upload } }))
            .await;
        assert_eq!(response.status(), 202, "{name}");
        let body: Value = response.json().await.expect("json");
        jobs.push((name, body["id"].as_str().expect("id").to_owned(), expected));
    }
    let check = |job: &Value, name: &str, expected: &str| {
        assert_eq!(job["state"], "failed", "{name}: {job}");
        let error = job["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error}");
        assert_eq!(
            job["attempts"], 1,
            "{name}: a poison input is not retried: {job}"
        );
    };
    for (name, id, expected) in &jobs {
        let job = client
            .wait_for_state(id, &["succeeded", "failed"], Duration::from_secs(60))
            .await;
        check(&job, name, expected);
    }
    let (rss, peak) = memory_mb(server.child.id());
    println!(
        "poison inputs: {} jobs failed; server RSS {rss} MB, peak {peak} MB",
        jobs.len()
    );
    assert!(peak < 300, "the server's memory peaked at {peak} MB");
    terminate(server).await;

    let server = start(dir.path(), http).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, id, expected) in &jobs {
        check(&server.client.job(id).await, name, expected);
    }
    terminate(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_event_stream_requests_leaves_no_memory_behind() {
    let (_serial, _dir, server) = serve_fresh().await;
    let pid = server.child.id();
    let flood = |count: usize| {
        let base = server.client.base.clone();
        let session = server.client.http.clone();
        async move {
            let anonymous = reqwest::Client::new();
            let mut tasks = Vec::new();
            for n in 0..count {
                // Half for jobs that do not exist, half the session stream without a cookie.
                let (http, path) = if n % 2 == 0 {
                    (
                        session.clone(),
                        format!("/api/jobs/{}/events", ulid::Ulid::generate()),
                    )
                } else {
                    (anonymous.clone(), "/api/jobs/events".to_owned())
                };
                let url = format!("{base}{path}");
                tasks.push(tokio::spawn(async move {
                    // Headers only: the client goes away, as a closed tab does.
                    if let Ok(response) = http.get(url).send().await {
                        drop(response);
                    }
                }));
                if tasks.len() == 64 {
                    for task in tasks.drain(..) {
                        let _ = task.await;
                    }
                }
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    };
    flood(2_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = memory_mb(pid);
    flood(20_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, _) = memory_mb(pid);
    println!("20,000 event-stream requests: RSS {before} MB before, {after} MB after");
    assert!(
        after <= before + 10,
        "RSS grew from {before} MB to {after} MB"
    );
    terminate(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let (_serial, dir, server) = serve_fresh().await;
    let port = common::process::free_port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_errand"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .output()
        .expect("errand runs");
    assert!(!output.status.success(), "the second process must exit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let holder = format!("pid {}", server.child.id());
    assert!(
        stderr.contains("in use by another errand process") && stderr.contains(&holder),
        "{stderr}"
    );
    std::io::stdout().flush().ok();
    terminate(server).await;
}
