//! The sort below a window function, done by comparing rows in arrow's row
//! format with a stable sort that takes over the runs its input already has.
//!
//! The half of `session_events` that derives sessions sorts its events by
//! (`distinct_id`, `timestamp`) for `session_start`'s window. Those events
//! arrive in long runs already in that order (each row group is sorted so,
//! and the shuffle by user keeps the order of each batch's rows), but
//! DataFusion's in-place sort compares every pair through a comparator per
//! column with an unstable quicksort that does not see the runs: at 10M
//! events the sort was a seventh of sessions per event name (query 6).
//! [`SortRunsExec`] converts the sort keys to the row format once, so a
//! comparison is one byte comparison, and sorts the row indices with the
//! standard library's stable sort, which finds ascending runs and merges
//! them. The rows come out in the order DataFusion's sort gives them; rows
//! whose keys compare equal keep their input order, which DataFusion's sort
//! leaves open.
//!
//! It holds its partition's input in memory, as DataFusion's in-place sort
//! does, but gathers the sorted output from the input batches instead of
//! first copying them into one. Below DataFusion's unbounded window, which
//! concatenates all it reads, it hands over the partition as one batch, so
//! that concatenation copies nothing. Under a memory limit it runs
//! DataFusion's sort instead, which spills.
//!
//! The rule places it only below windows that compute `session_start`,
//! whose input is known to come in runs; any other sort keeps DataFusion's
//! plan. Where nothing above such a window needs its rows in order (the
//! sessions table, a grouping of `session_events`), the window and its sort
//! are replaced before this rule runs, by `session_start_in_place`, which
//! does not reorder the rows at all; this operator serves the queries whose
//! output may be read in the window's order. It is a local engine rule (a
//! Ballista cluster plans with its own rules, and this operator has no wire
//! form).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::exec_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{LexOrdering, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::{StreamExt, TryStreamExt, stream};

use crate::plan_rewrite::rewrite_bottom_up;
use crate::whole_partition::{read_whole_partition, unlimited_reservation};

/// How the name of a window expression calling sessionql's sessionizing
/// window function starts.
const SESSIONIZING_WINDOW: &str = "session_start(";

/// Sorts each partition like the [`SortExec`] it replaces (which must sort
/// partitions one by one and have no limit); see the module documentation.
#[derive(Debug)]
pub struct SortRunsExec {
    /// The sort replaced: its input, keys and plan properties, and what runs
    /// under a memory limit.
    sort: Arc<SortExec>,
    /// Emit each partition as one batch, for a parent that gathers its
    /// whole input into one batch anyway (DataFusion's [`WindowAggExec`]
    /// concatenates what it reads; one batch it takes as it is).
    whole: bool,
    metrics: ExecutionPlanMetricsSet,
}

impl SortRunsExec {
    /// `None` unless `sort` sorts each partition on its own (it keeps its
    /// partitions, or there is one) and has no limit (a top-k sort is
    /// DataFusion's business). With `whole`, each partition comes out as one
    /// batch; otherwise in batches of the session's batch size.
    pub fn try_replace(sort: &SortExec, whole: bool) -> Option<Self> {
        let per_partition = sort.preserve_partitioning()
            || sort.input().output_partitioning().partition_count() == 1;
        (per_partition && sort.fetch().is_none()).then(|| Self {
            sort: Arc::new(sort.clone()),
            whole,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for SortRunsExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SortRunsExec: expr=[{}]", self.sort.expr())
    }
}

impl ExecutionPlan for SortRunsExec {
    fn name(&self) -> &str {
        "SortRunsExec"
    }

    /// The replaced sort's: same partitions, same output order.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.sort.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.sort.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.sort.benefits_from_input_partitioning()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.sort.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.sort.apply_expressions(f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let sort = (Arc::clone(&self.sort) as Arc<dyn ExecutionPlan>)
            .replace_children(children, options)?;
        match sort
            .downcast_ref::<SortExec>()
            .and_then(|sort| SortRunsExec::try_replace(sort, self.whole))
        {
            Some(replaced) => Ok(Arc::new(replaced)),
            None => Ok(sort),
        }
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
        let Some(reservation) = unlimited_reservation(&context, "SortRunsExec", partition) else {
            return self.sort.execute(partition, context);
        };
        let input = self.sort.input().execute(partition, Arc::clone(&context))?;
        let schema = self.schema();
        let keys = self.sort.expr().clone();
        let batch_size = context.session_config().batch_size().max(1);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let whole = self.whole;
        let sorted = stream::once(async move {
            let batches = read_whole_partition(input, &reservation).await?;
            let timer = baseline.elapsed_compute().timer();
            let order = sort_rows(&batches, &keys)?;
            timer.done();
            if order.is_empty() {
                return Ok::<_, DataFusionError>(stream::empty().boxed());
            }
            if whole {
                // One batch, and the input freed before it is handed on.
                let timer = baseline.elapsed_compute().timer();
                let sources: Vec<&RecordBatch> = batches.iter().collect();
                let sorted = interleave_record_batch(&sources, &order)?;
                drop(sources);
                drop(batches);
                reservation.try_resize(sorted.get_array_memory_size())?;
                baseline.output_rows().add(sorted.num_rows());
                timer.done();
                let held = stream::iter([Ok(sorted)]).map(move |batch| {
                    // The reservation lives as long as the batch it counts.
                    let _held = &reservation;
                    batch
                });
                return Ok(held.boxed());
            }
            let total = order.len();
            let chunks = (0..total).step_by(batch_size).map(move |start| {
                // The reservation lives as long as the input rows it counts.
                let _held = &reservation;
                let _timer = baseline.elapsed_compute().timer();
                let sources: Vec<&RecordBatch> = batches.iter().collect();
                let chunk = &order[start..total.min(start + batch_size)];
                let sorted = interleave_record_batch(&sources, chunk)?;
                baseline.output_rows().add(sorted.num_rows());
                Ok(sorted)
            });
            Ok(stream::iter(chunks).boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, sorted)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// The rows of `batches` in order of `keys`, each as (batch, row): sorted
/// stably by the keys in arrow's row format. The batches are not copied
/// into one: the sorted output is gathered from them.
fn sort_rows(batches: &[RecordBatch], keys: &LexOrdering) -> Result<Vec<(usize, usize)>> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if u32::try_from(total).is_err() {
        return exec_err!(
            "SortRunsExec: {total} rows in one partition, more than a sort can index"
        );
    }
    let mut converter: Option<RowConverter> = None;
    let mut encoded = None;
    let mut locations: Vec<(u32, u32)> = Vec::with_capacity(total);
    for (batch_index, batch) in batches.iter().enumerate() {
        let columns = keys
            .iter()
            .map(|key| key.expr.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let converter = match &mut converter {
            Some(converter) => converter,
            None => {
                let fields = keys
                    .iter()
                    .zip(&columns)
                    .map(|(key, column)| {
                        SortField::new_with_options(column.data_type().clone(), key.options)
                    })
                    .collect();
                converter.insert(RowConverter::new(fields)?)
            }
        };
        let rows = encoded.get_or_insert_with(|| converter.empty_rows(total, 0));
        converter.append(rows, &columns)?;
        // A row index fits in u32 (the total does); so does a batch index,
        // 2^32 batches in one partition being far beyond any input.
        locations.extend((0..batch.num_rows()).map(|row| (batch_index as u32, row as u32)));
    }
    let Some(encoded) = encoded else {
        return Ok(Vec::new());
    };
    // Each row's bytes looked up once, not at every comparison.
    let row_bytes: Vec<&[u8]> = encoded.iter().map(|row| row.data()).collect();
    let mut order: Vec<u32> = (0..total as u32).collect();
    order.sort_by(|&a, &b| row_bytes[a as usize].cmp(row_bytes[b as usize]));
    Ok(order
        .into_iter()
        .map(|index| {
            let (batch, row) = locations[index as usize];
            (batch as usize, row as usize)
        })
        .collect())
}

/// The physical optimizer rule: the sort under each window operator that
/// computes `session_start` (a [`WindowAggExec`] or [`BoundedWindowAggExec`])
/// becomes a [`SortRunsExec`]. Other windows, whose input has no known
/// runs, keep DataFusion's sort and plan.
#[derive(Debug, Default)]
pub struct SortRuns;

impl PhysicalOptimizerRule for SortRuns {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_bottom_up(plan, sort_below_sessionizing_window)
    }

    fn name(&self) -> &str {
        "sort_runs"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The name of every window expression of `node`, if it is a window
/// operator.
fn window_expression_names(node: &Arc<dyn ExecutionPlan>) -> Option<Vec<&str>> {
    let expressions = if let Some(window) = node.downcast_ref::<WindowAggExec>() {
        window.window_expr()
    } else {
        node.downcast_ref::<BoundedWindowAggExec>()?.window_expr()
    };
    Some(
        expressions
            .iter()
            .map(|expression| expression.name())
            .collect(),
    )
}

/// A window operator computing `session_start` over a [`SortRunsExec`]
/// instead of its [`SortExec`]; `None` for any other node.
fn sort_below_sessionizing_window(
    node: &Arc<dyn ExecutionPlan>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(names) = window_expression_names(node) else {
        return Ok(None);
    };
    if !names
        .iter()
        .any(|name| name.starts_with(SESSIONIZING_WINDOW))
    {
        return Ok(None);
    }
    let [child] = node.children()[..] else {
        return Ok(None);
    };
    // DataFusion's unbounded window gathers its input into one batch.
    let whole = node.downcast_ref::<WindowAggExec>().is_some();
    let Some(replaced) = child
        .downcast_ref::<SortExec>()
        .and_then(|sort| SortRunsExec::try_replace(sort, whole))
    else {
        return Ok(None);
    };
    let window = Arc::clone(node).replace_children(
        vec![Arc::new(replaced)],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )?;
    Ok(Some(window))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::arrow::array::{Array, AsArray, Int64Array, StringArray};
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_expr::PhysicalSortExpr;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_plan::collect_partitioned;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// The window's order: ascending, nulls last (arrow's default puts
    /// nulls first).
    const ASCENDING_NULLS_LAST: SortOptions = SortOptions {
        descending: false,
        nulls_first: false,
    };

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, true),
            Field::new("t", DataType::Int64, true),
            Field::new("tag", DataType::Int64, false),
        ]))
    }

    fn batch(rows: &[(Option<&str>, Option<i64>, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|row| row.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|row| row.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|row| row.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// DataFusion's sort of `partitions` by (`user`, `t`), `user_options`
    /// for the first key, each partition on its own.
    fn datafusion_sort(partitions: &[Vec<RecordBatch>], user_options: SortOptions) -> SortExec {
        let input = MemorySourceConfig::try_new_exec(partitions, schema(), None).unwrap();
        let schema = schema();
        let keys = LexOrdering::new(vec![
            PhysicalSortExpr::new(col("user", &schema).unwrap(), user_options),
            PhysicalSortExpr::new(col("t", &schema).unwrap(), ASCENDING_NULLS_LAST),
        ])
        .unwrap();
        SortExec::new(keys, input).with_preserve_partitioning(true)
    }

    /// `partitions` sorted by (`user`, `t`) with `user_options` for the
    /// first key, by [`SortRunsExec`] (each partition as one batch when
    /// `whole`); also whether it sorted itself (rather than handing over to
    /// DataFusion's sort).
    async fn sorted(
        partitions: Vec<Vec<RecordBatch>>,
        user_options: SortOptions,
        whole: bool,
        context: &SessionContext,
    ) -> (Vec<Vec<RecordBatch>>, bool) {
        let sort = datafusion_sort(&partitions, user_options);
        let exec = Arc::new(SortRunsExec::try_replace(&sort, whole).unwrap());
        let output = collect_partitioned(exec.clone(), context.task_ctx())
            .await
            .unwrap();
        let sorted_itself = exec
            .metrics()
            .and_then(|metrics| metrics.output_rows())
            .unwrap_or(0)
            > 0;
        (output, sorted_itself)
    }

    fn tags(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|batch| {
                batch
                    .column(2)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn rows_come_out_in_key_order_and_equal_keys_in_input_order() {
        // Two batches of one partition. By user then t, nulls last: a at 1
        // (tag 4), a at 3 (tags 2 then 6, as they came in), a at null (7),
        // b at 2 (0 then 5), b at 5 (1), then the null user (3).
        let partition = vec![
            batch(&[
                (Some("b"), Some(2), 0),
                (Some("b"), Some(5), 1),
                (Some("a"), Some(3), 2),
                (None, Some(1), 3),
            ]),
            batch(&[
                (Some("a"), Some(1), 4),
                (Some("b"), Some(2), 5),
                (Some("a"), Some(3), 6),
                (Some("a"), None, 7),
            ]),
        ];
        let context = SessionContext::new_with_config(SessionConfig::new().with_batch_size(3));
        let (output, sorted_itself) = sorted(
            vec![partition.clone()],
            ASCENDING_NULLS_LAST,
            false,
            &context,
        )
        .await;
        assert!(sorted_itself);
        assert_eq!(tags(&output[0]), [4, 2, 6, 7, 0, 5, 1, 3]);
        // Batches of at most the session's batch size, or one batch.
        let sizes: Vec<usize> = output[0].iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [3, 3, 2]);
        let (output, _) = sorted(
            vec![partition.clone()],
            ASCENDING_NULLS_LAST,
            true,
            &context,
        )
        .await;
        assert_eq!(tags(&output[0]), [4, 2, 6, 7, 0, 5, 1, 3]);
        let sizes: Vec<usize> = output[0].iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [8]);
        // Users descending with nulls first: the null user, b's rows, a's.
        let descending = SortOptions {
            descending: true,
            nulls_first: true,
        };
        let (output, _) = sorted(vec![partition], descending, false, &context).await;
        assert_eq!(tags(&output[0]), [3, 0, 5, 1, 4, 2, 6, 7]);
    }

    #[tokio::test]
    async fn an_empty_partition_gives_no_rows_in_either_form() {
        let context = SessionContext::new();
        for whole in [false, true] {
            let partitions = vec![vec![], vec![batch(&[])]];
            let (output, _) = sorted(partitions, ASCENDING_NULLS_LAST, whole, &context).await;
            assert_eq!(output.len(), 2);
            assert!(output.iter().flatten().all(|batch| batch.num_rows() == 0));
        }
    }

    /// Rows in runs sorted by (user, t), as the derived half's shuffle hands
    /// them over: `runs` runs of `run_length` rows, cut into batches of 100.
    fn rows_in_runs(runs: usize, run_length: usize, seed: u64) -> Vec<RecordBatch> {
        let mut state = seed;
        let mut next = move |modulo: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % modulo
        };
        let users: Vec<String> = (0..50).map(|user| format!("user-{user:02}")).collect();
        let mut rows = Vec::new();
        for run in 0..runs {
            let mut run_rows: Vec<(Option<&str>, Option<i64>, i64)> = (0..run_length)
                .map(|index| {
                    let user = match next(20) {
                        0 => None,
                        _ => Some(users[next(50) as usize].as_str()),
                    };
                    let t = match next(30) {
                        0 => None,
                        _ => Some(next(1000) as i64),
                    };
                    (user, t, (run * run_length + index) as i64)
                })
                .collect();
            // Ascending, nulls last: a null sorts after every value.
            run_rows.sort_by_key(|row| (row.0.is_none(), row.0, row.1.is_none(), row.1));
            rows.extend(run_rows);
        }
        rows.chunks(100).map(batch).collect()
    }

    /// (user, t) of every row, in output order.
    fn keys(batches: &[RecordBatch]) -> Vec<(Option<String>, Option<i64>)> {
        batches
            .iter()
            .flat_map(|batch| {
                let users = batch.column(0).as_string::<i32>();
                let times = batch.column(1).as_primitive::<Int64Type>();
                (0..batch.num_rows())
                    .map(|row| {
                        (
                            users.is_valid(row).then(|| users.value(row).to_string()),
                            times.is_valid(row).then(|| times.value(row)),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn runs_sort_as_datafusions_sort_does_and_under_a_limit_it_sorts_instead() {
        let partitions = vec![rows_in_runs(12, 170, 1), rows_in_runs(7, 333, 2)];
        let context = SessionContext::new();
        let theirs = collect_partitioned(
            Arc::new(datafusion_sort(&partitions, ASCENDING_NULLS_LAST)),
            context.task_ctx(),
        )
        .await
        .unwrap();
        for whole in [false, true] {
            let (ours, sorted_itself) =
                sorted(partitions.clone(), ASCENDING_NULLS_LAST, whole, &context).await;
            assert!(sorted_itself);
            for (partition, input) in partitions.iter().enumerate() {
                // The same keys in the same order, and every input row once.
                assert_eq!(keys(&ours[partition]), keys(&theirs[partition]));
                let mut ours_tags = tags(&ours[partition]);
                ours_tags.sort_unstable();
                let mut input_tags = tags(input);
                input_tags.sort_unstable();
                assert_eq!(ours_tags, input_tags);
            }
        }
        // Under a memory limit DataFusion's sort (which can spill) runs.
        let limited = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(64 * 1024 * 1024)))
            .build_arc()
            .unwrap();
        let context = SessionContext::new_with_config_rt(SessionConfig::new(), limited);
        let (handed_over, sorted_itself) =
            sorted(partitions.clone(), ASCENDING_NULLS_LAST, true, &context).await;
        assert!(!sorted_itself);
        for partition in 0..partitions.len() {
            assert_eq!(keys(&handed_over[partition]), keys(&theirs[partition]));
        }
    }
}
