//! One aggregation phase for `GROUP BY session_id`: events are shuffled to
//! their session's partition and aggregated once, instead of DataFusion's two
//! phases (a partial aggregate per input partition, its states shuffled, then
//! merged).
//!
//! Two phases pay off when the partial one shrinks the rows a lot and its
//! states are small. Neither holds for the sessions table: a session's events
//! mostly sit in one file, so the partial phase already builds nearly every
//! session in full, and its state is wide (each `entry_value` keeps a value,
//! a flag, a timestamp and a uuid, fourteen times per session). Both phases
//! then held every session at once, and the merge redid the picking. With one
//! phase, the shuffle moves the event columns once and each session exists
//! once in memory.
//!
//! The rule rewrites only aggregates that use sessionql's per-session
//! functions (`entry_value`, `exit_value`, `entry_channel_type`,
//! `session_event_counts`); any other `GROUP BY` keeps DataFusion's plan. It
//! is a local engine rule: a Ballista cluster plans with its own rules and
//! keeps two phases, which save network traffic there.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::repartition::RepartitionExec;

use crate::plan_rewrite::rewrite_bottom_up;

/// Aggregate functions whose groups are sessions: an aggregate using one of
/// them is planned in one phase.
const SESSION_AGGREGATES: [&str; 4] = [
    "entry_value",
    "exit_value",
    "entry_channel_type",
    "session_event_counts",
];

/// The physical optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct OnePhaseSessions;

impl PhysicalOptimizerRule for OnePhaseSessions {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_bottom_up(plan, one_phase)
    }

    fn name(&self) -> &str {
        "one_phase_sessions"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `Final(Repartition(Partial(input)))` over session functions, as
/// `SinglePartitioned(Repartition(input))`; `None` for any other node.
fn one_phase(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(merge) = node.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    if *merge.mode() != AggregateMode::FinalPartitioned {
        return Ok(None);
    }
    let Some(shuffle) = merge.input().downcast_ref::<RepartitionExec>() else {
        return Ok(None);
    };
    let Partitioning::Hash(_, partitions) = shuffle.partitioning() else {
        return Ok(None);
    };
    let Some(partial) = shuffle.input().downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    let groups_sessions = partial
        .aggr_expr()
        .iter()
        .any(|aggregate| SESSION_AGGREGATES.contains(&aggregate.fun().name()));
    if *partial.mode() != AggregateMode::Partial
        || !partial.group_expr().is_single()
        || !groups_sessions
    {
        return Ok(None);
    }
    let events_by_session = RepartitionExec::try_new(
        Arc::clone(partial.input()),
        Partitioning::Hash(partial.group_expr().input_exprs(), *partitions),
    )?;
    let once = AggregateExec::try_new(
        AggregateMode::SinglePartitioned,
        partial.group_expr().clone(),
        partial.aggr_expr().to_vec(),
        partial.filter_expr().to_vec(),
        Arc::new(events_by_session),
        partial.input_schema(),
    )?
    .with_limit_options(merge.limit_options());
    Ok(Some(Arc::new(once)))
}
