//! Filters right above a scan hand on the batches they filter, without
//! DataFusion's coalescing.
//!
//! A `FilterExec` gathers small results into batches of the session's batch
//! size. Once it holds a few rows (from a short batch: the last rows of a
//! Parquet row group), each full batch after them is merged in and split
//! again, copying every value of every row, string bytes included, and the
//! state lasts as long as the input does. The halves of `session_events`
//! filter the events scan on `session_id` and keep nearly every row of the
//! row groups they read, so the copy bought nothing: 4% of query 6's
//! instructions at 10M events (and the fresh copies of a session's id no
//! longer share one string view, which lets `DropRepeatedKeysExec` see two
//! ids are equal without reading them). A scan already yields batches of
//! the session's size;
//! the operators that gather rows again (repartitioning, aggregation) do so
//! above.
//!
//! The rule sets the batch size of each filter whose input is a scan
//! (`DataSourceExec`) to one row, which makes its coalescer pass every
//! batch through as it is. A filter elsewhere in a plan keeps DataFusion's
//! behaviour.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;

use crate::plan_rewrite::rewrite_bottom_up;

/// A filter batch size of one row: every batch is larger, so the filter's
/// coalescer passes each through untouched (and keeps none back).
const PASS_THROUGH_BATCH_SIZE: usize = 1;

/// The physical optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct UncoalescedScanFilters;

impl PhysicalOptimizerRule for UncoalescedScanFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_bottom_up(plan, |node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(None);
            };
            if filter.batch_size() == PASS_THROUGH_BATCH_SIZE
                || !filter.input().is::<DataSourceExec>()
            {
                return Ok(None);
            }
            Ok(Some(Arc::new(
                filter.with_batch_size(PASS_THROUGH_BATCH_SIZE)?,
            )))
        })
    }

    fn name(&self) -> &str {
        "uncoalesced_scan_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// One partition of batches of 10, 3 and 10 rows, numbered 0..23, and a
    /// batch size of 16.
    fn context(with_rule: bool) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |from: i64, rows: i64| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from_iter_values(from..from + rows))],
            )
            .unwrap()
        };
        let table = MemTable::try_new(
            Arc::clone(&schema),
            vec![vec![batch(0, 10), batch(10, 3), batch(13, 10)]],
        )
        .unwrap();
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(16);
        let mut state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        if with_rule {
            state = state.with_physical_optimizer_rule(Arc::new(UncoalescedScanFilters));
        }
        let context = SessionContext::new_with_state(state.build());
        context.register_table("t", Arc::new(table)).unwrap();
        context
    }

    /// The sizes of the batches a query returns, and its values in order.
    async fn batches_and_values(context: &SessionContext, sql: &str) -> (Vec<usize>, Vec<i64>) {
        let batches = context.sql(sql).await.unwrap().collect().await.unwrap();
        let sizes = batches.iter().map(RecordBatch::num_rows).collect();
        let values = batches
            .iter()
            .flat_map(|batch| {
                batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        (sizes, values)
    }

    #[tokio::test]
    async fn a_filter_over_a_scan_hands_on_the_batches_it_filters() {
        // Every row but 11 passes: the scan's 10, 3 and 10 rows become 10,
        // 2 and 10, as they come. DataFusion's filter (batch size 16 here)
        // passes the first 10 on, keeps the 2, and merges the last 10 into
        // them: a copy of those rows.
        let sql = "SELECT n FROM t WHERE n <> 11";
        let expected: Vec<i64> = (0..23).filter(|n| *n != 11).collect();
        let (sizes, values) = batches_and_values(&context(true), sql).await;
        assert_eq!(sizes, [10, 2, 10]);
        assert_eq!(values, expected);
        let (sizes, values) = batches_and_values(&context(false), sql).await;
        assert_eq!(sizes, [10, 12]);
        assert_eq!(values, expected);
    }

    #[tokio::test]
    async fn a_filter_above_another_operator_keeps_its_batch_size() {
        let context = context(true);
        let plan = context
            .sql("SELECT n FROM (SELECT n, count(*) AS c FROM t GROUP BY n) WHERE c > 0")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut filters = Vec::new();
        let mut pending = vec![plan];
        while let Some(node) = pending.pop() {
            if let Some(filter) = node.downcast_ref::<FilterExec>() {
                filters.push((filter.batch_size(), filter.input().is::<DataSourceExec>()));
            }
            pending.extend(node.children().into_iter().cloned());
        }
        assert_eq!(filters, [(16, false)]);
    }
}
