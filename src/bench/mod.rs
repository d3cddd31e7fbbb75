//! `sessionql bench`: speed, measured and printed, never asserted in tests.
//! Each benchmark prints its own figures with peak memory.

pub mod channel_type;
pub mod ingest;
pub mod sessions_suite;

use std::time::Duration;

pub use channel_type::bench_channel_type;
pub use ingest::bench_ingest;
pub use sessions_suite::bench_sessions;

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The middle of the measured times.
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}
