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

/// CPU time this process has used so far, all threads, user and system
/// (`/proc/self/stat`); `None` where there is no such file. "Per core"
/// figures divide by this, not by wall time, so a writer thread running
/// beside the parsers is counted too.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields are counted after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: f64 = fields.next()?.parse().ok()?;
    let system_ticks: f64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ, 100 a second on every architecture it
    // exposes to user space.
    Some((user_ticks + system_ticks) / 100.0)
}

/// The middle of the measured times.
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}
