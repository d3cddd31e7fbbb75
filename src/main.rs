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

/// mimalloc 3's `mi_option_purge_delay` (its `mimalloc.h`); libmimalloc-sys
/// names only mimalloc 2's options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory freed by a one-shot command stays committed for reuse
/// before mimalloc hands it back to the kernel (its default is one second).
const ONE_SHOT_PURGE_DELAY_MS: std::os::raw::c_long = 10_000;

/// Keeps memory that one operator frees committed for the next for ten
/// seconds instead of one, for commands whose process ends with their work
/// (a query, a benchmark, an ingest) unless a query sets a memory limit
/// (where resident memory matters more). A query frees and allocates batches all
/// along, and every page handed back was touched again as a fresh page
/// fault. Full sessions table at 10M events (four alternating runs each):
/// page faults 0.85M → 0.61M, system time 2.3 → 1.6 s, wall 5.68 → 5.49 s
/// (medians), peak resident memory 2.0 → 2.3 GiB. Never purging did as
/// well at 10M but not at 50M (the same time, 11.5–11.8 against 8.0–8.3
/// GiB) and under a 4 GiB memory limit it was slower (68 s against 57 s);
/// ten seconds there: 49 s, but 8.5 against 7.3 GiB resident, so a query
/// under a limit keeps the default (README, speed). Servers and the shell
/// keep mimalloc's default and give memory back between queries.
/// `MIMALLOC_PURGE_DELAY`, when set, wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: two calls into mimalloc with plain integers, no pointers; the
    // option's number is mimalloc 3's, checked by its version.
    unsafe {
        if libmimalloc_sys::mi_version() / 10_000 == 3 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ONE_SHOT_PURGE_DELAY_MS);
        }
    }
}

/// Warnings, sessionql's own progress, and not Ballista's client-side log of
/// a failed job, nor its client's warnings while it retries fetching results
/// from an executor that is gone: the CLI prints the error itself, as one
/// `error:` line.
const DEFAULT_LOG_FILTER: &str = "warn,sessionql=info,\
    ballista_core::execution_plans::distributed_query=off,ballista_core::client=error";

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
    let cli = sessionql::cli::Cli::parse();
    if cli.command.may_keep_freed_memory() {
        keep_freed_memory();
    }
    sessionql::cli::run(cli).await
}
