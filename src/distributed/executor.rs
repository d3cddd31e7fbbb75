//! `sessionql executor`: Ballista's executor with every sessionql function in
//! its function registry (added to Ballista's default registry, so DataFusion's
//! built-ins stay), the `sessionql.*` settings in the configuration each task
//! gets, and sessionql's object stores.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;

use super::object_stores::SessionqlObjectStores;
use super::{node_config, node_session_state};
use crate::error::{Result, SessionqlError};

/// Options of an executor process.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's host.
    pub scheduler_host: String,
    /// The scheduler's port.
    pub scheduler_port: u16,
    /// Address the executor's services bind to (and advertise, unless it is
    /// the unspecified address).
    pub bind_host: IpAddr,
    /// Port of the Arrow Flight service that serves shuffle data (0: a free one).
    pub flight_port: u16,
    /// Port of the gRPC service the scheduler pushes tasks to (0: a free one).
    pub grpc_port: u16,
    /// Tasks run at once (0: one per core).
    pub concurrency: usize,
    /// Where shuffle files are written (default: a new directory under the
    /// system's temporary directory, removed when the executor stops).
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_seconds: u64,
}

/// The ports an executor listens on, once chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorPorts {
    /// Arrow Flight (shuffle reads).
    pub flight: u16,
    /// gRPC (task launches).
    pub grpc: u16,
}

/// Picks the executor's ports (free ones where 0 was asked for), so they can
/// be announced before the executor starts.
pub fn choose_ports(options: &ExecutorOptions) -> Result<ExecutorPorts> {
    Ok(ExecutorPorts {
        flight: free_port_if_zero(options.bind_host, options.flight_port)?,
        grpc: free_port_if_zero(options.bind_host, options.grpc_port)?,
    })
}

fn free_port_if_zero(host: IpAddr, port: u16) -> Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    // Ballista binds the ports itself; a port the kernel just handed out and
    // released is free for it (a race only with other processes binding 0).
    let listener = TcpListener::bind(SocketAddr::new(host, 0))
        .map_err(|error| SessionqlError::Invalid(format!("no free port on {host}: {error}")))?;
    let port = listener
        .local_addr()
        .map_err(|error| SessionqlError::Invalid(format!("no free port on {host}: {error}")))?
        .port();
    Ok(port)
}

/// Runs an executor on `ports` until the process is stopped (Ctrl-C, SIGTERM)
/// or the scheduler asks it to stop.
pub async fn run_executor(options: &ExecutorOptions, ports: ExecutorPorts) -> Result<()> {
    let (work_dir, remove_work_dir) = match &options.work_dir {
        Some(directory) => (directory.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "sessionql-executor-{}-{}",
                std::process::id(),
                ports.flight
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&work_dir).map_err(|source| SessionqlError::Write {
        path: work_dir.clone(),
        source,
    })?;
    let temp_files = work_dir.clone();
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host.to_string(),
        external_host: (!options.bind_host.is_unspecified()).then(|| options.bind_host.to_string()),
        port: ports.flight,
        grpc_port: ports.grpc,
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        vcores: options.concurrency,
        work_dir: Some(work_dir.to_string_lossy().into_owned()),
        executor_heartbeat_interval_seconds: options.heartbeat_seconds.max(1),
        print_thread_info: false,
        override_function_registry: Some(Arc::new(function_registry()?)),
        override_config_producer: Some(Arc::new(node_config)),
        override_runtime_producer: Some(Arc::new(move |_config| {
            RuntimeEnvBuilder::new()
                .with_temp_file_path(temp_files.clone())
                .with_object_store_registry(Arc::new(SessionqlObjectStores::default()))
                .build_arc()
        })),
        ..ExecutorProcessConfig::default()
    };
    let result = start_executor_process(Arc::new(config))
        .await
        .map_err(|error| SessionqlError::Invalid(format!("executor: {error}")));
    if remove_work_dir {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    result
}

/// Ballista's default function registry plus every function of a sessionql
/// node session.
fn function_registry() -> Result<BallistaFunctionRegistry> {
    let state = node_session_state(node_config())?;
    let mut registry = BallistaFunctionRegistry::default();
    for (name, function) in state.scalar_functions() {
        registry
            .scalar_functions
            .insert(name.clone(), Arc::clone(function));
    }
    for (name, function) in state.aggregate_functions() {
        registry
            .aggregate_functions
            .insert(name.clone(), Arc::clone(function));
    }
    for (name, function) in state.window_functions() {
        registry
            .window_functions
            .insert(name.clone(), Arc::clone(function));
    }
    Ok(registry)
}
