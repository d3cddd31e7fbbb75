//! The `sessionql` binary: parses arguments and hands over to [`sessionql::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: ingest and queries allocate on
/// many threads at once, where glibc's arenas spend much of their time on
/// locks (measured on ingest; see the README). Built with `no_thp`: mimalloc
/// otherwise asks the kernel for transparent huge pages, and where the kernel
/// compacts memory to find them (`defrag` = `madvise`, the common default)
/// a query spent as much system time as user time; at 10M events queries 2–6
/// took 30–50% less wall time without (README, speed).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Warnings, sessionql's own progress, and not Ballista's client-side log of
/// a failed job: the CLI prints that error itself, as one `error:` line.
const DEFAULT_LOG_FILTER: &str =
    "warn,sessionql=info,ballista_core::execution_plans::distributed_query=off";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    sessionql::cli::run(sessionql::cli::Cli::parse()).await
}
