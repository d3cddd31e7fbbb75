//! A physical optimizer rule for the scheduler: the sort under a window
//! operator keeps the window's `PARTITION BY` columns in front.
//!
//! When a filter makes the partition column constant (`sessions WHERE
//! distinct_id = 'u1'`), DataFusion drops it from the sort (`SortExec:
//! [timestamp]`), knowing from the filter below that it cannot vary. On a
//! cluster the filter and the window land in different stages: the executor
//! rebuilds the window over a shuffle reader that knows nothing of the
//! filter, finds its partition column unsorted and refuses to run ("All
//! partition by columns should have an ordering"). Sorting by the constant
//! column as well costs one comparison of equal values per row and keeps the
//! plan valid wherever it is cut.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct WindowSortKeys;

impl PhysicalOptimizerRule for WindowSortKeys {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let partition_by = if let Some(window) = node.downcast_ref::<WindowAggExec>() {
                window
                    .window_expr()
                    .first()
                    .map(|expr| expr.partition_by().to_vec())
            } else if let Some(window) = node.downcast_ref::<BoundedWindowAggExec>() {
                window
                    .window_expr()
                    .first()
                    .map(|expr| expr.partition_by().to_vec())
            } else {
                None
            };
            let Some(partition_by) = partition_by.filter(|columns| !columns.is_empty()) else {
                return Ok(Transformed::no(node));
            };
            let Some(input) = node.children().first().map(|child| Arc::clone(child)) else {
                return Ok(Transformed::no(node));
            };
            let Some(sort) = input.downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let sorted: Vec<_> = sort
                .expr()
                .iter()
                .map(|key| Arc::clone(&key.expr))
                .collect();
            let missing: Vec<PhysicalSortExpr> = partition_by
                .iter()
                .filter(|column| !sorted.iter().any(|key| key.eq(*column)))
                .map(|column| PhysicalSortExpr::new(Arc::clone(column), SortOptions::default()))
                .collect();
            if missing.is_empty() {
                return Ok(Transformed::no(node));
            }
            let Some(keys) =
                LexOrdering::new(missing.into_iter().chain(sort.expr().iter().cloned()))
            else {
                return Ok(Transformed::no(node));
            };
            let new_sort = SortExec::new(keys, Arc::clone(sort.input()))
                .with_preserve_partitioning(sort.preserve_partitioning())
                .with_fetch(sort.fetch());
            let rebuilt =
                replace_children_if_necessary(Arc::clone(&node), vec![Arc::new(new_sort)])?;
            Ok(Transformed::yes(rebuilt))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "sessionql_window_sort_keys"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
