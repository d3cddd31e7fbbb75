//! The `sessionql` binary: parses arguments and hands over to [`sessionql::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: ingest and queries allocate on
/// many threads at once, where glibc's arenas spend much of their time on
/// locks (measured on ingest; see the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sessionql=info")),
        )
        .init();
    sessionql::cli::run(sessionql::cli::Cli::parse()).await
}
