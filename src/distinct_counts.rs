//! `count(DISTINCT x) … GROUP BY y` counted from the codes of the distinct
//! (y, x) pairs, without writing the pairs out.
//!
//! DataFusion plans a distinct count as a grouping by (y, x), whose last
//! phase sessionql runs as a [`DistinctKeysExec`], then a count of x per y in
//! two phases. For query 6 at 10M events the distinct keys wrote 3.78M
//! (event, session id) pairs back out of their codes (each id as 36
//! characters) and the count's first phase grouped them by event again,
//! about 1.1G of its 9.8G instructions. [`DistinctCountsExec`] takes the
//! place of both: it gathers the pairs' codes as the distinct keys do,
//! counts each bucket's distinct codes whose x is not null by the number of
//! their y, and outputs one row per y with its count, as the count's first
//! phase does (its second phase adds the partitions' counts up as before).
//!
//! The rule replaces a count's first phase whose one aggregate is a plain
//! `count` of the last key (no `DISTINCT`, `FILTER` or order of its own),
//! grouped by the other keys in their order, over a [`DistinctKeysExec`].
//! Under a memory limit the operator runs the two it replaced, which spill.
//! It is a local engine rule, like the distinct keys'. Over a shuffle of
//! the pairs, `unshuffled_distinct_counts` then replaces it (with the
//! shuffle and what feeds it) by counting where the rows are read.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{
    ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions, apply_expression_roots,
};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::{TryStreamExt, stream};

use crate::distinct_keys::{DistinctKeysExec, GatheredCodes, Gathering};
use crate::plan_rewrite::rewrite_bottom_up;
use crate::whole_partition::unlimited_reservation;

/// Counts, per value of the other keys, the distinct keys of its input
/// whose last column is not null, with the schema of the count's first
/// phase it replaced; see the module documentation.
#[derive(Debug)]
pub struct DistinctCountsExec {
    /// The count's first phase replaced, over the distinct keys: its schema
    /// is this operator's, and it runs (with them) under a memory limit.
    counting: Arc<AggregateExec>,
    /// The distinct keys' grouping keys, as expressions over its input.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DistinctCountsExec {
    /// `None` unless `node` is an [`AggregateExec`] in its first phase over
    /// a [`DistinctKeysExec`], grouped by the distinct keys but the last, in
    /// their order, with one plain `count` of the last key.
    pub fn try_replace(node: &Arc<dyn ExecutionPlan>) -> Option<Self> {
        let counting = node.downcast_ref::<AggregateExec>()?;
        let distinct = counting.input().downcast_ref::<DistinctKeysExec>()?;
        let [count] = counting.aggr_expr() else {
            return None;
        };
        let last_key = distinct.keys().len().checked_sub(1)?;
        let counts_last_key = count.fun().name() == "count"
            && !count.is_distinct()
            && count.order_bys().is_empty()
            && counting.filter_expr().iter().all(Option::is_none)
            && matches!(count.expressions().as_slice(), [argument] if is_column(argument, last_key));
        let groups_by_other_keys = counting.group_expr().is_single()
            && counting.group_expr().expr().len() == last_key
            && counting
                .group_expr()
                .expr()
                .iter()
                .enumerate()
                .all(|(index, (expression, _))| is_column(expression, index));
        let schema = counting.schema();
        let counts_are_int64 = schema.fields().len() == last_key + 1
            && schema.fields().last()?.data_type() == &DataType::Int64;
        if *counting.mode() != AggregateMode::Partial
            || counting.limit_options().is_some()
            || !counts_last_key
            || !groups_by_other_keys
            || !counts_are_int64
        {
            return None;
        }
        let properties = PlanProperties::new(
            counting.properties().equivalence_properties().clone(),
            counting.properties().output_partitioning().clone(),
            EmissionType::Final,
            counting.input().boundedness(),
        );
        Some(Self {
            counting: Arc::new(counting.clone()),
            keys: distinct.keys().to_vec(),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The distinct keys below the count.
    fn distinct(&self) -> &Arc<dyn ExecutionPlan> {
        self.counting.input()
    }
}

/// Whether `expression` is the column at `index` of its input.
fn is_column(expression: &Arc<dyn PhysicalExpr>, index: usize) -> bool {
    expression
        .downcast_ref::<Column>()
        .is_some_and(|column| column.index() == index)
}

impl DisplayAs for DistinctCountsExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|key| key.to_string()).collect();
        let counts: Vec<&str> = self
            .counting
            .aggr_expr()
            .iter()
            .map(|count| count.name())
            .collect();
        write!(
            f,
            "DistinctCountsExec: keys=[{}], counts=[{}]",
            keys.join(", "),
            counts.join(", ")
        )
    }
}

impl ExecutionPlan for DistinctCountsExec {
    fn name(&self) -> &str {
        "DistinctCountsExec"
    }

    /// The count's schema and partitions, emitted once a partition is read.
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// The distinct keys': each key's rows in one partition.
    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.distinct().input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.distinct().benefits_from_input_partitioning()
    }

    /// The distinct keys' input.
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.distinct().children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_expression_roots(&self.keys, f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let distinct = Arc::clone(self.distinct()).replace_children(children, options)?;
        let counting = (Arc::clone(&self.counting) as Arc<dyn ExecutionPlan>)
            .replace_children(vec![distinct], options)?;
        match DistinctCountsExec::try_replace(&counting) {
            Some(replaced) => Ok(Arc::new(replaced)),
            None => Ok(counting),
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
        let Some(reservation) = unlimited_reservation(&context, "DistinctCountsExec", partition)
        else {
            return self.counting.execute(partition, context);
        };
        let batch_size = context.session_config().batch_size().max(1);
        let key_schema = self.distinct().schema();
        let Some(input) = self
            .distinct()
            .children()
            .first()
            .map(|input| Arc::clone(input))
        else {
            return self.counting.execute(partition, context);
        };
        let input = input.execute(partition, context)?;
        let schema = self.schema();
        let keys = self.keys.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let output_schema = Arc::clone(&schema);
        let output = stream::once(async move {
            let gathered = GatheredCodes::read(
                input,
                &key_schema,
                &keys,
                Gathering::WholeKeys,
                &reservation,
                &baseline,
            )
            .await?;
            let timer = baseline.elapsed_compute().timer();
            let (mut columns, counts) = gathered.count_by_others(&reservation)?;
            let rows = counts.len();
            columns.push(Arc::new(Int64Array::from(counts)) as ArrayRef);
            let counted = RecordBatch::try_new(output_schema, columns)?;
            let batches: Vec<RecordBatch> = (0..rows)
                .step_by(batch_size)
                .map(|offset| counted.slice(offset, batch_size.min(rows - offset)))
                .collect();
            baseline.output_rows().add(rows);
            timer.done();
            drop(reservation);
            Ok::<_, DataFusionError>(stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// The physical optimizer rule: each count's first phase over distinct
/// keys that [`DistinctCountsExec::try_replace`] accepts becomes one.
#[derive(Debug, Default)]
pub struct DistinctCountsByCode;

impl PhysicalOptimizerRule for DistinctCountsByCode {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_bottom_up(plan, |node| {
            Ok(DistinctCountsExec::try_replace(node)
                .map(|replaced| Arc::new(replaced) as Arc<dyn ExecutionPlan>))
        })
    }

    fn name(&self) -> &str {
        "distinct_counts_by_code"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::distinct_keys::DistinctKeysByCode;
    use crate::distinct_keys::tests::{mixed_keys, plan_and_rows, session_with_rules};

    /// A session over `partitions` as table `t`: DataFusion's own, or with
    /// the distinct keys' and counts' rules, with or without a memory limit.
    fn context(partitions: &[Vec<RecordBatch>], with_rules: bool, limited: bool) -> SessionContext {
        let rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> = if with_rules {
            vec![Arc::new(DistinctKeysByCode), Arc::new(DistinctCountsByCode)]
        } else {
            Vec::new()
        };
        session_with_rules(partitions, rules, limited)
    }

    /// Distinct counts of every shape the operators code: other keys as
    /// strings, as several columns, as views (short names, long ones and
    /// nulls), and none at all; groups whose ids are all null (counted 0);
    /// no rows (no groups, or one count of 0).
    pub(crate) const DISTINCT_COUNT_QUERIES: [&str; 8] = [
        "SELECT page, count(DISTINCT id) AS ids FROM t GROUP BY page ORDER BY page NULLS LAST",
        "SELECT n, page, count(DISTINCT id) FROM t GROUP BY 1, 2 ORDER BY 1, 2 NULLS LAST",
        "SELECT arrow_cast(page, 'Utf8View') AS page, count(DISTINCT id) FROM t \
         GROUP BY 1 ORDER BY 1 NULLS LAST",
        "SELECT page, count(DISTINCT id) \
         FROM (SELECT page, arrow_cast(id, 'Utf8View') AS id FROM t) \
         GROUP BY 1 ORDER BY 1 NULLS LAST",
        "SELECT count(DISTINCT id) FROM t",
        "SELECT page, count(DISTINCT CASE WHEN n = 0 THEN id END) FROM t \
         GROUP BY 1 ORDER BY 1 NULLS LAST",
        "SELECT page, count(DISTINCT id) FROM t WHERE n > 100 GROUP BY 1",
        "SELECT count(DISTINCT id) FROM t WHERE n > 100",
    ];

    #[tokio::test]
    async fn distinct_counts_are_datafusions_with_or_without_a_memory_limit() {
        let partitions = mixed_keys(11);
        for sql in DISTINCT_COUNT_QUERIES {
            let (_, expected) = plan_and_rows(&context(&partitions, false, false), sql).await;
            let (plan, rows) = plan_and_rows(&context(&partitions, true, false), sql).await;
            assert!(plan.contains("DistinctCountsExec"), "{sql}\n{plan}");
            assert!(!plan.contains("DistinctKeysExec"), "{sql}\n{plan}");
            assert_eq!(rows, expected, "{sql}");
            // Under a memory limit the replaced operators run.
            let (_, rows) = plan_and_rows(&context(&partitions, true, true), sql).await;
            assert_eq!(rows, expected, "{sql}, memory limited");
        }
    }

    #[tokio::test]
    async fn other_aggregates_over_distinct_keys_are_left_alone() {
        let partitions = mixed_keys(5);
        for sql in [
            // The distinct keys stay; no plain count of the last key.
            "SELECT DISTINCT page, id FROM t ORDER BY 1 NULLS LAST, 2 NULLS LAST",
            "SELECT page, max(id) FROM (SELECT DISTINCT page, id FROM t) GROUP BY 1 \
             ORDER BY 1 NULLS LAST",
            "SELECT id, count(page) FROM (SELECT DISTINCT page, id FROM t) GROUP BY 1 \
             ORDER BY 1 NULLS LAST",
        ] {
            let (_, expected) = plan_and_rows(&context(&partitions, false, false), sql).await;
            let (plan, rows) = plan_and_rows(&context(&partitions, true, false), sql).await;
            assert!(!plan.contains("DistinctCountsExec"), "{sql}\n{plan}");
            assert_eq!(rows, expected, "{sql}");
        }
    }
}
