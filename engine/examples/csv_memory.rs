//! Measures the CSV analysis on a large generated file: time, throughput and the process's peak
//! resident memory. Run with
//! `cargo run --release -p errand-engine --example csv_memory -- [megabytes]` (default 1024).

use errand_engine::kinds::csv_import::analysis::analyze;
use std::io::{BufWriter, Write};
use std::time::Instant;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> std::io::Result<()> {
    let megabytes: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.csv");
    let mut out = BufWriter::new(std::fs::File::create(&path)?);
    writeln!(out, "id,price,active,day,city,note")?;
    let target = megabytes * 1_000_000;
    let (mut written, mut row) = (0_u64, 0_u64);
    while written < target {
        let line = format!(
            "{row},{}.{:02},{},2026-{:02}-{:02},city{},\"note, number {}\"\n",
            row % 997,
            row % 100,
            row % 2 == 0,
            row % 12 + 1,
            row % 28 + 1,
            row % 5_000,
            row
        );
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        row += 1;
    }
    out.flush()?;
    drop(out);
    let before = peak_rss_mb();

    let started = Instant::now();
    let file = std::io::BufReader::new(std::fs::File::open(&path)?);
    let analysis = analyze(file, |_| true).map_err(std::io::Error::other)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "csv_import analysis of {megabytes} MB ({} rows, {} columns)",
        analysis.rows,
        analysis.columns.len()
    );
    println!(
        "time {seconds:.1} s, {:.0} MB/s",
        megabytes as f64 / seconds
    );
    println!(
        "peak RSS before analysis {before:.1} MB, after {:.1} MB",
        peak_rss_mb()
    );
    Ok(())
}
