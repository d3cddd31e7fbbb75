//! `count(DISTINCT x) … GROUP BY y` counted from the codes of every input
//! partition at once, with no shuffle of the (y, x) pairs.
//!
//! Below a [`DistinctCountsExec`] DataFusion plans a shuffle by (y, x), so
//! that each pair's rows meet in one partition, fed by the grouping's first
//! phase, itself fed by sessionql's [`DropRepeatedKeysExec`]. For query 6 at
//! 50M events the dropper hashed and compared the two strings of every row
//! (0.8–0.9 s of CPU) and kept 19.4M, which passed through the first phase
//! (it skips grouping them: nearly all are distinct) and were hashed again
//! and copied into the shuffle's batches (0.4 s), before the distinct
//! counts coded them.
//!
//! [`UnshuffledDistinctCountsExec`] codes the keys where the rows are read:
//! one task per input partition turns each row's key into its 24-byte code
//! (see `distinct_keys`), drops a code equal to a recent one (a session's
//! events come together) and spreads the rest over buckets by the code of
//! the last column alone (a UUID's number, or a hash of another string),
//! which reads the same in every partition. Once every partition is read,
//! the partitions' own numberings of their other keys (and of strings that
//! are not UUIDs) are merged into one, and each output partition counts its
//! share of the buckets across all input partitions: a key's codes are in
//! the same bucket whichever partition read them, so each distinct key is
//! counted once. The counts' second phase adds the shares up as it added
//! the shuffled partitions' counts. At 50M events query 6 took 2.5–2.9 s
//! against 2.8–3.4 s.
//!
//! The rule replaces a [`DistinctCountsExec`] over a shuffle over the
//! grouping's first phase without aggregates (and the repeat dropper, if
//! there is one). Under a memory limit the operator runs the operators it
//! replaced, which spill. It is a local engine rule, like the distinct
//! counts'.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_datafusion_err, internal_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{
    ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions, apply_expression_roots,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, TryStreamExt, stream};

use crate::distinct_counts::DistinctCountsExec;
use crate::distinct_keys::{GatheredCodes, Gathering, MergedCodes};
use crate::plan_rewrite::rewrite_bottom_up;
use crate::repeated_keys::DropRepeatedKeysExec;
use crate::whole_partition::{has_memory_limit, unlimited_reservation};

/// Counts, per value of the other keys, the distinct keys of all its input
/// partitions whose last column is not null, each output partition a share
/// of them, with the schema of the distinct counts it replaced; see the
/// module documentation.
pub struct UnshuffledDistinctCountsExec {
    /// The distinct counts over the shuffle, with the operators between the
    /// shuffle and `input`: its schema is this operator's, it runs under a
    /// memory limit, and it is rebuilt over a new input.
    replaced: Arc<dyn ExecutionPlan>,
    /// How many operators of `replaced`'s chain lie above `input`.
    depth: usize,
    /// The rows whose distinct keys are counted, in any partitioning.
    input: Arc<dyn ExecutionPlan>,
    /// The keys, as expressions over `input`.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The keys' columns (the grouping's first phase's schema).
    key_schema: SchemaRef,
    /// The counting under way, shared by the output partitions.
    round: Mutex<Option<Round>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// The merged codes of every input partition, once read: what the output
/// partitions count their shares of.
type SharedCodes =
    Shared<BoxFuture<'static, std::result::Result<Arc<MergedCodes>, Arc<DataFusionError>>>>;

/// One execution of the operator: the input is read once for all output
/// partitions. A partition executed again starts a new round, and the
/// operator forgets a round once every partition has joined it (the
/// partitions' streams keep the codes until they are counted).
struct Round {
    codes: SharedCodes,
    joined: Vec<bool>,
}

impl UnshuffledDistinctCountsExec {
    /// `None` unless `node` is a [`DistinctCountsExec`] over a shuffle of a
    /// grouping's first phase without aggregates (over a repeat dropper or
    /// not).
    pub fn try_replace(node: &Arc<dyn ExecutionPlan>) -> Option<Self> {
        let counts = node.downcast_ref::<DistinctCountsExec>()?;
        let children = counts.children();
        let [shuffle] = children.as_slice() else {
            return None;
        };
        let shuffle = shuffle.downcast_ref::<RepartitionExec>()?;
        let first_phase = shuffle.input().downcast_ref::<AggregateExec>()?;
        if *first_phase.mode() != AggregateMode::Partial
            || !first_phase.aggr_expr().is_empty()
            || !first_phase.group_expr().is_single()
            || first_phase.limit_options().is_some()
        {
            return None;
        }
        let keys = first_phase.group_expr().input_exprs();
        let key_schema = first_phase.schema();
        let last_is_string = matches!(
            key_schema.fields().last()?.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        if keys.is_empty() || key_schema.fields().len() != keys.len() || !last_is_string {
            return None;
        }
        let (input, depth) = match first_phase.input().downcast_ref::<DropRepeatedKeysExec>() {
            Some(dropper) => (dropper.input(), 4),
            None => (first_phase.input(), 3),
        };
        let partitions = node.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            node.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            input.boundedness(),
        );
        Some(Self {
            replaced: Arc::clone(node),
            depth,
            input: Arc::clone(input),
            keys,
            key_schema,
            round: Mutex::new(None),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The merged codes of the round `partition` joins: the round under
    /// way, or a new one when there is none or `partition` joined it
    /// already.
    fn join_round(&self, partition: usize, context: &Arc<TaskContext>) -> Result<SharedCodes> {
        let mut round = self
            .round
            .lock()
            .map_err(|_| internal_datafusion_err!("UnshuffledDistinctCountsExec: lock poisoned"))?;
        let partitions = self.properties.output_partitioning().partition_count();
        let joined_already = round
            .as_ref()
            .is_none_or(|round| round.joined.get(partition).is_none_or(|&joined| joined));
        if joined_already {
            *round = Some(Round {
                codes: self.read_all(context),
                joined: vec![false; partitions],
            });
        }
        let Some(current) = round.as_mut() else {
            return internal_err!("UnshuffledDistinctCountsExec: no round");
        };
        if let Some(joined) = current.joined.get_mut(partition) {
            *joined = true;
        }
        let codes = current.codes.clone();
        if current.joined.iter().all(|&joined| joined) {
            *round = None;
        }
        Ok(codes)
    }

    /// Reads every input partition in a task of its own, gathering its
    /// codes, then merges them.
    fn read_all(&self, context: &Arc<TaskContext>) -> SharedCodes {
        let input = Arc::clone(&self.input);
        let keys = self.keys.clone();
        let key_schema = Arc::clone(&self.key_schema);
        let metrics = self.metrics.clone();
        let context = Arc::clone(context);
        async move {
            let partitions = input.output_partitioning().partition_count();
            let mut tasks = Vec::with_capacity(partitions);
            for partition in 0..partitions {
                let stream = input.execute(partition, Arc::clone(&context))?;
                let reservation =
                    unlimited_reservation(&context, "UnshuffledDistinctCountsExec", partition)
                        .ok_or_else(|| {
                            internal_datafusion_err!("UnshuffledDistinctCountsExec: a memory limit")
                        })?;
                let keys = keys.clone();
                let key_schema = Arc::clone(&key_schema);
                let baseline = BaselineMetrics::new(&metrics, partition);
                let dropped_rows = MetricBuilder::new(&metrics).counter("dropped_rows", partition);
                tasks.push(SpawnedTask::spawn(async move {
                    let gathered = GatheredCodes::read(
                        stream,
                        &key_schema,
                        &keys,
                        Gathering::ToMerge,
                        &reservation,
                        &baseline,
                    )
                    .await?;
                    dropped_rows.add(gathered.dropped());
                    Ok::<_, DataFusionError>((gathered, reservation))
                }));
            }
            let mut gathered = Vec::with_capacity(partitions);
            let mut reservations = Vec::with_capacity(partitions);
            for task in tasks {
                let (codes, reservation) = task
                    .join_unwind()
                    .await
                    .map_err(|error| DataFusionError::ExecutionJoin(Box::new(error)))??;
                gathered.push(codes);
                reservations.push(reservation);
            }
            Ok(Arc::new(MergedCodes::new(
                &key_schema,
                gathered,
                reservations,
            )?))
        }
        .map(|merged: Result<Arc<MergedCodes>>| merged.map_err(Arc::new))
        .boxed()
        .shared()
    }
}

/// `node` rebuilt over `input` in place of what lies `depth` operators
/// below it, along a chain of single children.
fn rebuild_over(
    node: &Arc<dyn ExecutionPlan>,
    depth: usize,
    input: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if depth == 0 {
        return Ok(input);
    }
    let children = node.children();
    let [child] = children.as_slice() else {
        return internal_err!("UnshuffledDistinctCountsExec: a replaced operator with siblings");
    };
    let child = rebuild_over(child, depth - 1, input)?;
    Arc::clone(node).replace_children(
        vec![child],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}

impl fmt::Debug for UnshuffledDistinctCountsExec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("UnshuffledDistinctCountsExec")
            .field("keys", &self.keys)
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for UnshuffledDistinctCountsExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|key| key.to_string()).collect();
        write!(
            f,
            "UnshuffledDistinctCountsExec: keys=[{}], input_partitions={}",
            keys.join(", "),
            self.input.output_partitioning().partition_count()
        )
    }
}

impl ExecutionPlan for UnshuffledDistinctCountsExec {
    fn name(&self) -> &str {
        "UnshuffledDistinctCountsExec"
    }

    /// The replaced counts' schema, in as many partitions, emitted once the
    /// input is read.
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    /// Each input partition is read by a task of its own.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_expression_roots(&self.keys, f)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return internal_err!("UnshuffledDistinctCountsExec takes one child");
        };
        let replaced = rebuild_over(&self.replaced, self.depth, input)?;
        Ok(match Self::try_replace(&replaced) {
            Some(unshuffled) => Arc::new(unshuffled),
            None => replaced,
        })
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if has_memory_limit(&context) {
            return self.replaced.execute(partition, context);
        }
        let shares = self.properties.output_partitioning().partition_count();
        if partition >= shares {
            return internal_err!(
                "UnshuffledDistinctCountsExec: partition {partition} of {shares}"
            );
        }
        let codes = self.join_round(partition, &context)?;
        let batch_size = context.session_config().batch_size().max(1);
        let schema = self.schema();
        let output_schema = Arc::clone(&schema);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let output = stream::once(async move {
            let merged = codes.await.map_err(DataFusionError::Shared)?;
            let counts = merged
                .count_share(partition, shares, baseline.elapsed_compute())
                .await?;
            let timer = baseline.elapsed_compute().timer();
            let counted = share_batch(&output_schema, merged.others(), counts, partition == 0)?;
            drop(merged);
            let rows = counted.num_rows();
            let batches: Vec<RecordBatch> = (0..rows)
                .step_by(batch_size)
                .map(|offset| counted.slice(offset, batch_size.min(rows - offset)))
                .collect();
            baseline.output_rows().add(rows);
            timer.done();
            Ok::<_, DataFusionError>(stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One share's counts as a batch of `schema` (the other keys' values, then
/// the count). The first share has a row for every value of the other keys
/// (so that a value whose keys are all null is counted 0); the others only
/// rows they counted keys for, which the counts' second phase adds up.
fn share_batch(
    schema: &SchemaRef,
    others: &[ArrayRef],
    counts: Vec<i64>,
    every_value: bool,
) -> Result<RecordBatch> {
    let counted: Option<BooleanArray> =
        (!every_value).then(|| counts.iter().map(|&count| Some(count > 0)).collect());
    let mut columns = others.to_vec();
    columns.push(Arc::new(Int64Array::from(counts)) as ArrayRef);
    let batch = RecordBatch::try_new(Arc::clone(schema), columns)?;
    match counted {
        Some(counted) => Ok(filter_record_batch(&batch, &counted)?),
        None => Ok(batch),
    }
}

/// The physical optimizer rule: each distinct counts over a shuffle that
/// [`UnshuffledDistinctCountsExec::try_replace`] accepts becomes one.
#[derive(Debug, Default)]
pub struct UnshuffledDistinctCounts;

impl PhysicalOptimizerRule for UnshuffledDistinctCounts {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_bottom_up(plan, |node| {
            Ok(UnshuffledDistinctCountsExec::try_replace(node)
                .map(|replaced| Arc::new(replaced) as Arc<dyn ExecutionPlan>))
        })
    }

    fn name(&self) -> &str {
        "unshuffled_distinct_counts"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::distinct_counts::DistinctCountsByCode;
    use crate::distinct_counts::tests::DISTINCT_COUNT_QUERIES;
    use crate::distinct_keys::DistinctKeysByCode;
    use crate::distinct_keys::tests::{mixed_keys, plan_and_rows, session_with_rules};
    use crate::repeated_keys::DropRepeatedKeys;
    use sessionql_udfs::session_uuid::uuid_text;

    /// A session over `partitions` as table `t`: DataFusion's own, or with
    /// the repeat dropper's, distinct keys', distinct counts' and this
    /// rule, with or without a memory limit.
    fn context(partitions: &[Vec<RecordBatch>], with_rules: bool, limited: bool) -> SessionContext {
        let rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> = if with_rules {
            vec![
                Arc::new(DropRepeatedKeys),
                Arc::new(DistinctKeysByCode),
                Arc::new(DistinctCountsByCode),
                Arc::new(UnshuffledDistinctCounts),
            ]
        } else {
            Vec::new()
        };
        session_with_rules(partitions, rules, limited)
    }

    /// The mixed keys of two seeds as three partitions (more than the
    /// session's two), so that a key's rows are spread over partitions.
    fn three_partitions() -> Vec<Vec<RecordBatch>> {
        let mut partitions = mixed_keys(13);
        let more = mixed_keys(17);
        partitions.push(more.into_iter().flatten().collect());
        partitions
    }

    #[tokio::test]
    async fn unshuffled_counts_are_datafusions_with_or_without_a_memory_limit() {
        let partitions = three_partitions();
        for sql in DISTINCT_COUNT_QUERIES {
            let (_, expected) = plan_and_rows(&context(&partitions, false, false), sql).await;
            let (plan, rows) = plan_and_rows(&context(&partitions, true, false), sql).await;
            assert!(
                plan.contains("UnshuffledDistinctCountsExec"),
                "{sql}\n{plan}"
            );
            assert!(
                !plan
                    .lines()
                    .any(|line| line.trim_start().starts_with("DistinctCountsExec")),
                "{sql}\n{plan}"
            );
            assert_eq!(rows, expected, "{sql}");
            // Under a memory limit the replaced operators run.
            let (_, rows) = plan_and_rows(&context(&partitions, true, true), sql).await;
            assert_eq!(rows, expected, "{sql}, memory limited");
        }
    }

    /// The first node named `name` in `plan`, looking from the root down.
    fn find(plan: &Arc<dyn ExecutionPlan>, name: &str) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.name() == name {
            return Some(Arc::clone(plan));
        }
        plan.children()
            .into_iter()
            .find_map(|child| find(child, name))
    }

    /// The rows of every partition of `plan`, sorted, as text.
    async fn all_rows(plan: &Arc<dyn ExecutionPlan>, context: &SessionContext) -> Vec<String> {
        let batches = collect(Arc::clone(plan), context.task_ctx()).await.unwrap();
        let mut rows: Vec<String> = pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .filter(|line| line.starts_with("| "))
            .skip(1)
            .map(str::to_owned)
            .collect();
        rows.sort();
        rows
    }

    #[tokio::test]
    async fn the_operator_executed_again_reads_its_input_again() {
        let partitions = three_partitions();
        let context = context(&partitions, true, false);
        let plan = context
            .sql("SELECT page, count(DISTINCT id) FROM t GROUP BY 1")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let unshuffled = find(&plan, "UnshuffledDistinctCountsExec").unwrap();
        let first = all_rows(&unshuffled, &context).await;
        assert!(!first.is_empty());
        for _ in 0..2 {
            assert_eq!(all_rows(&unshuffled, &context).await, first);
        }
    }

    #[tokio::test]
    async fn keys_repeated_in_runs_are_dropped_as_they_are_read() {
        // Two partitions of 3,000 rows: 1,000 session ids (UUIDs), each on
        // three rows in a row, all of event "e"; the second partition has
        // the same ids again, so each is counted once across partitions.
        let schema = Arc::new(Schema::new(vec![
            Field::new("page", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
        ]));
        let ids: Vec<String> = (0..3000_u128)
            .map(|row| uuid_text((row / 3) * 0x9e37_79b9_7f4a_7c15))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["e"; 3000])),
                Arc::new(StringArray::from(ids)),
            ],
        )
        .unwrap();
        // Batches of 500 rows: runs cross batch boundaries too.
        let batches: Vec<RecordBatch> = (0..6).map(|part| batch.slice(part * 500, 500)).collect();
        let context = context(&[batches.clone(), batches], true, false);
        let plan = context
            .sql("SELECT page, count(DISTINCT id) AS ids FROM t GROUP BY 1")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = collect(Arc::clone(&plan), context.task_ctx())
            .await
            .unwrap();
        let rows = pretty_format_batches(&batches).unwrap().to_string();
        assert!(rows.contains("| e    | 1000 |"), "{rows}");
        let unshuffled = find(&plan, "UnshuffledDistinctCountsExec").unwrap();
        let dropped = unshuffled
            .metrics()
            .unwrap()
            .sum_by_name("dropped_rows")
            .unwrap()
            .as_usize();
        // The second and third row of every run, in both partitions.
        assert_eq!(dropped, 2 * 2000);
    }

    #[tokio::test]
    async fn distinct_keys_without_a_count_keep_their_shuffle() {
        let context = context(&three_partitions(), true, false);
        let sql = "SELECT DISTINCT page, id FROM t ORDER BY 1 NULLS LAST, 2 NULLS LAST";
        let (plan, _) = plan_and_rows(&context, sql).await;
        assert!(!plan.contains("UnshuffledDistinctCountsExec"), "{plan}");
        assert!(plan.contains("DistinctKeysExec"), "{plan}");
    }
}
