//! `sessionql scheduler`: Ballista's scheduler, with sessions that know every
//! sessionql function and setting, so the plans clients send can be read and
//! planned here.

use std::sync::Arc;

use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::net::TcpListener;

use super::{node_config, node_session_state};
use crate::error::{Result, SessionqlError};

/// Options of a scheduler process.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Seconds without a heartbeat after which an executor is taken for dead
    /// and its tasks are run elsewhere.
    pub executor_timeout_seconds: u64,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            executor_timeout_seconds: 30,
        }
    }
}

/// Serves Ballista's scheduler on `listener` until the process ends.
pub async fn run_scheduler(listener: TcpListener, options: &SchedulerOptions) -> Result<()> {
    let address = listener
        .local_addr()
        .map_err(|error| SessionqlError::Invalid(format!("scheduler socket: {error}")))?;
    let mut config = SchedulerConfig::default()
        .with_hostname(address.ip().to_string())
        .with_port(address.port())
        .with_override_config_producer(Arc::new(node_config))
        .with_override_session_builder(Arc::new(node_session_state));
    config.bind_host = address.ip().to_string();
    config.executor_timeout_seconds = options.executor_timeout_seconds;
    // Check for dead executors a few times per timeout.
    config.expire_dead_executor_interval_seconds = (options.executor_timeout_seconds / 3).max(1);
    let config = Arc::new(config);
    let scheduler_failed = |error: ballista_core::error::BallistaError| {
        SessionqlError::Invalid(format!("scheduler: {error}"))
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(scheduler_failed)?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config)
        .await
        .map_err(scheduler_failed)?;
    start_grpc_service_with_listener(listener, scheduler)
        .await
        .map_err(scheduler_failed)
}
