//! `sessionql bench ingest`: `ingest` on the generator's PostHog NDJSON.
//!
//! The input is generated once (by a child `sessionql generate`, so this
//! process's peak memory is the ingest's alone) and kept in the data
//! directory; each run ingests it into a fresh output directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{median, peak_memory_mib, process_cpu_seconds};
use crate::error::{Result, SessionqlError};
use crate::ingest::{IngestOptions, IngestSummary, ingest};

/// Where a benchmark keeps its generated data unless told otherwise.
pub fn default_data_directory() -> PathBuf {
    std::env::temp_dir().join("sessionql-bench")
}

/// Version of the generator's output layout, part of the cache directory's
/// name so that data an older `sessionql` generated is not measured as if
/// it were today's. 2: Parquet row groups split by whether events carry a
/// session id. 3: rows inside each row group sorted by (`distinct_id`,
/// `timestamp`).
const GENERATED_LAYOUT: u32 = 3;

/// Generates `events` events of `format` with seed 1 into `directory`, unless
/// a finished earlier run left them there.
pub fn generated_data(directory: &Path, events: u64, format: &str) -> Result<PathBuf> {
    let target = directory.join(format!("{format}-{events}-layout{GENERATED_LAYOUT}"));
    let done_marker = target.join("_complete");
    if done_marker.exists() {
        return Ok(target);
    }
    let _ = std::fs::remove_dir_all(&target);
    eprintln!(
        "generating {events} events ({format}) into {}",
        target.display()
    );
    let executable = std::env::current_exe().map_err(|error| {
        SessionqlError::Invalid(format!("cannot find the sessionql binary: {error}"))
    })?;
    let status = Command::new(executable)
        .args([
            "generate", "--seed", "1", "--days", "90", "--format", format,
        ])
        .arg("--events")
        .arg(events.to_string())
        .arg("--out")
        .arg(&target)
        .stdout(Stdio::null())
        .status()
        .map_err(|source| SessionqlError::Write {
            path: target.clone(),
            source,
        })?;
    if !status.success() {
        return Err(SessionqlError::Invalid(format!(
            "generating the benchmark data failed ({status})"
        )));
    }
    std::fs::write(&done_marker, b"").map_err(|source| SessionqlError::Write {
        path: done_marker,
        source,
    })?;
    Ok(target)
}

/// Ingests `events` generated events `runs` times with `threads` parsing
/// threads and prints the median time, events per second (in all, per
/// thread and per CPU second) and peak memory.
pub fn bench_ingest(events: u64, runs: usize, threads: usize, data: &Path) -> Result<()> {
    let input = generated_data(data, events, "ndjson")?;
    let input_bytes: u64 = std::fs::read_dir(&input)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0);
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |count| count.get()),
        threads => threads,
    };
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    let mut last = IngestSummary::default();
    for _ in 0..runs.max(1) {
        let output = data.join("ingest-output");
        let _ = std::fs::remove_dir_all(&output);
        let options = IngestOptions {
            threads,
            ..IngestOptions::new(vec![input.clone()], output.clone())
        };
        let started = Instant::now();
        let cpu_before = process_cpu_seconds();
        last = ingest(&options)?;
        times.push(started.elapsed());
        if let (Some(before), Some(after)) = (cpu_before, process_cpu_seconds()) {
            cpu_times.push(Duration::from_secs_f64(after - before));
        }
        let _ = std::fs::remove_dir_all(&output);
    }
    let min = times.iter().min().copied().unwrap_or_default();
    let max = times.iter().max().copied().unwrap_or_default();
    let median_time: Duration = median(times);
    let read = (last.ingested + last.duplicates) as f64;
    let per_second = read / median_time.as_secs_f64().max(f64::EPSILON);
    println!(
        "ingest of {events} generated PostHog events ({:.0} MiB NDJSON, {threads} threads, {runs} runs)",
        input_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  wall time        {:>8.2} s median ({:.2}–{:.2})",
        median_time.as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64()
    );
    println!(
        "  events/s         {per_second:>10.0}  ({:.0} per thread)",
        per_second / threads as f64
    );
    if !cpu_times.is_empty() {
        let cpu_seconds = median(cpu_times).as_secs_f64();
        println!(
            "  per CPU second   {:>10.0}  ({cpu_seconds:.2} s of CPU, all threads, median)",
            read / cpu_seconds.max(f64::EPSILON)
        );
    }
    println!(
        "  result           {} ingested, {} duplicates, {} quarantined, {} files",
        last.ingested,
        last.duplicates,
        last.quarantined,
        last.files.len()
    );
    match peak_memory_mib() {
        Some(mib) => println!("  peak memory      {mib:>8.0} MiB"),
        None => println!("  peak memory      unknown (no /proc/self/status)"),
    }
    Ok(())
}
