//! sessionql on Apache DataFusion Ballista (cargo feature `distributed`).
//!
//! What runs where:
//! - the client (`query`, `shell`, `serve` with `--cluster df://HOST:PORT`)
//!   parses and optimises SQL with sessionql's session (the `sessions` views
//!   are inlined there, settings folded into `session_start`'s arguments) and
//!   sends the logical plan to the scheduler;
//! - the scheduler ([`scheduler`]) plans it physically with a session that
//!   knows every sessionql function and the `sessionql.*` settings, and cuts
//!   it into stages at each repartition: the hash repartition by
//!   `distinct_id` before `session_start` becomes a shuffle, so all events of
//!   a user meet in one task and sessionization is exact;
//! - executors ([`executor`]) run the stages' tasks with the same functions,
//!   read events from a path every executor sees (or an object store,
//!   [`object_stores`]), and exchange shuffle data over Arrow Flight.
//!
//! Ballista's stock binaries know none of sessionql's functions; these use
//! Ballista's extension points (session builder, config producer, function
//! registry, runtime producer) rather than a fork.

pub mod executor;
pub mod object_stores;
pub mod scheduler;
pub mod window_sort_keys;

use std::sync::Arc;

use ballista_core::extension::{
    SessionConfigExt, SessionStateExt, ballista_aggregate_functions, ballista_scalar_functions,
    ballista_window_functions,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use sessionql_udfs::SessionqlConfig;

use crate::engine::register_sessionql_functions;
use crate::error::{Result, SessionqlError};
use object_stores::SessionqlObjectStores;

/// Ballista's switch for adaptive query planning; see [`connect`].
const ADAPTIVE_PLANNER_SETTING: &str = "ballista.planner.adaptive.enabled";

/// The port of a scheduler address that names none, as in Ballista.
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// A Ballista scheduler address as users write it: `df://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// Host name or IP address of the scheduler.
    pub host: String,
    /// Its gRPC port.
    pub port: u16,
}

impl ClusterUrl {
    /// Parses `df://HOST[:PORT]`; anything else is an error naming the form.
    pub fn parse(text: &str) -> Result<ClusterUrl> {
        let invalid = |why: &str| {
            SessionqlError::Invalid(format!(
                "--cluster {text}: {why}; expected df://HOST:PORT (a Ballista scheduler)"
            ))
        };
        let url = url::Url::parse(text).map_err(|error| invalid(&error.to_string()))?;
        if url.scheme() != "df" {
            return Err(invalid(&format!("unknown scheme '{}'", url.scheme())));
        }
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| invalid("no host"))?
            .to_string();
        if !matches!(url.path(), "" | "/") {
            return Err(invalid("a path is not allowed"));
        }
        Ok(ClusterUrl {
            host,
            port: url.port().unwrap_or(DEFAULT_SCHEDULER_PORT),
        })
    }

    /// The scheduler's gRPC endpoint.
    pub fn scheduler_endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for ClusterUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "df://{}:{}", self.host, self.port)
    }
}

/// The configuration every node starts a session from: Ballista's defaults
/// plus the `sessionql.*` settings, so the settings a client sends with each
/// query are understood rather than dropped.
pub fn node_config() -> SessionConfig {
    crate::engine::with_sessionql_defaults(
        SessionConfig::new_with_ballista()
            .with_information_schema(true)
            .with_option_extension(SessionqlConfig::default()),
    )
}

/// The session the scheduler plans a client's queries in: DataFusion's
/// defaults as Ballista sets them up, every sessionql and JSON function, and
/// the object stores of [`object_stores`], and the physical rule of
/// [`window_sort_keys`] that keeps window plans valid across stages.
pub fn node_session_state(config: SessionConfig) -> datafusion::common::Result<SessionState> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(SessionqlObjectStores::default()))
        .build()?;
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(Arc::new(runtime))
        .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
        .with_scalar_functions(ballista_scalar_functions())
        .with_aggregate_functions(ballista_aggregate_functions())
        .with_window_functions(ballista_window_functions())
        .with_physical_optimizer_rule(Arc::new(window_sort_keys::WindowSortKeys))
        .build();
    register_sessionql_functions(&mut state)?;
    Ok(state)
}

/// Turns a local sessionql session (functions and settings, no tables yet)
/// into one whose queries run on the cluster at `cluster`. Nothing is sent
/// until the first query; a scheduler that cannot be reached fails that query
/// with an error naming the address.
pub fn connect(context: &SessionContext, cluster: &ClusterUrl) -> Result<SessionContext> {
    // The session's runtime already opens s3:// buckets
    // (`engine::session_context` installs the same stores with this feature).
    let state = context.state();
    // Upgrading replaces the function maps with Ballista's defaults: register
    // sessionql's again on the upgraded state.
    let mut state = state.upgrade_for_ballista(cluster.scheduler_endpoint())?;
    register_sessionql_functions(&mut state)?;
    // Ballista's adaptive planner (on by default in 55.0) hands executors
    // sort stages whose input reports no partitions; DataFusion asserts
    // against that while resetting the sort (a panic in debug builds that
    // takes the executor out of the cluster). The static planner runs every
    // sessionql query; a session may still `SET
    // ballista.planner.adaptive.enabled = true`.
    let options = state.config_mut().options_mut();
    options.set(ADAPTIVE_PLANNER_SETTING, "false")?;
    // The partial phase of an aggregation saves network traffic here: keep
    // DataFusion's own threshold, as the nodes do (the local session lowers
    // it: `engine::LOCAL_PARTIAL_AGGREGATION_SKIP_RATIO`). Sorts, too, keep
    // DataFusion's way on a cluster (`engine::LOCAL_SORT_IN_PLACE_THRESHOLD_BYTES`).
    let datafusion_defaults = datafusion::config::ExecutionOptions::default();
    options
        .execution
        .skip_partial_aggregation_probe_ratio_threshold =
        datafusion_defaults.skip_partial_aggregation_probe_ratio_threshold;
    options.execution.sort_in_place_threshold_bytes =
        datafusion_defaults.sort_in_place_threshold_bytes;
    Ok(SessionContext::new_with_state(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_parse_with_and_without_port() {
        assert_eq!(
            ClusterUrl::parse("df://localhost:50051").ok(),
            Some(ClusterUrl {
                host: "localhost".into(),
                port: 50051
            })
        );
        assert_eq!(
            ClusterUrl::parse("df://10.0.0.7").ok().map(|url| url.port),
            Some(DEFAULT_SCHEDULER_PORT)
        );
        assert_eq!(
            ClusterUrl::parse("df://10.0.0.7:1234")
                .ok()
                .map(|url| url.scheduler_endpoint()),
            Some("http://10.0.0.7:1234".to_string())
        );
    }

    /// The stages the scheduler cuts a sessions query into, as text.
    async fn query_stages(sql: &str) -> Vec<String> {
        use ballista_scheduler::planner::{DefaultDistributedPlanner, DistributedPlanner};
        use datafusion::physical_plan::displayable;

        let context = SessionContext::new_with_state(
            node_session_state(node_config().with_target_partitions(2)).expect("node state"),
        );
        let (events, _) =
            crate::events_table::events_table(&crate::engine::sample_events_path(), 2)
                .expect("the shipped sample");
        context.register_table("events", events).expect("register");
        crate::session_views::register_session_views(&context)
            .await
            .expect("views");
        let plan = context
            .sql(sql)
            .await
            .expect("plans")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let state = context.state();
        DefaultDistributedPlanner::new()
            .plan_query_stages(&"job".into(), plan, state.config().options())
            .expect("stages")
            .iter()
            .map(|stage| displayable(stage.as_ref()).indent(false).to_string())
            .collect()
    }

    #[tokio::test]
    async fn sessionization_reads_a_shuffle_by_distinct_id() {
        for sql in [
            "SELECT count(*) FROM sessions",
            "SELECT * FROM sessions WHERE distinct_id = 'user-000001'",
        ] {
            let stages = query_stages(sql).await;
            println!("{sql}:\n{}", stages.join("\n"));
            let window_stage = stages
                .iter()
                .find(|stage| stage.contains("session_start"))
                .expect("a stage runs session_start");
            // The window's stage reads a shuffle hashed on distinct_id, so
            // each task holds every event of its users, sorted per user…
            let reads = window_stage
                .lines()
                .find(|line| line.contains("UnresolvedShuffleExec"))
                .unwrap_or_default();
            assert!(
                reads.contains("partitioning: Hash([distinct_id@"),
                "{window_stage}"
            );
            assert!(
                window_stage.contains("SortExec: expr=[distinct_id@"),
                "{window_stage}"
            );
            // …that an earlier stage wrote, reading the events themselves.
            assert!(
                stages.iter().any(|stage| stage
                    .starts_with("SortShuffleWriterExec: partitioning=Hash([distinct_id@")
                    && stage.contains("DataSourceExec")),
                "{stages:#?}"
            );
        }
    }

    #[test]
    fn bad_cluster_urls_name_the_expected_form() {
        for bad in ["localhost:50050", "http://host:1", "df://", "df://h:1/x"] {
            let message = ClusterUrl::parse(bad)
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(
                message.contains("expected df://HOST:PORT"),
                "{bad}: {message}"
            );
        }
    }
}
