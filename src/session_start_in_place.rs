//! `session_start`'s window computed without reordering the rows it reads.
//!
//! The half of `session_events` that derives sessions is planned by
//! DataFusion as a sort of each partition by (`distinct_id`, `timestamp`),
//! then a window operator that cuts the sorted rows into users and calls
//! `session_start`'s evaluator once per user. The sort moves every column
//! of every row into the new order (at 10M events, 15 columns of 2M rows),
//! and the window walks 200K users one slice at a time. Yet no operator
//! above needs the order: the events go on to a shuffle by session id.
//!
//! [`SessionStartInPlaceExec`] moves only row numbers: it groups them by
//! user (a hash table numbers the users, a counting sort places the rows),
//! sorts each user's few rows by timestamp, walks them with
//! `session_start`'s own rule ([`SessionWalk`]), and writes each start at
//! its row's place. Each input batch then goes on as it came, with the
//! start as one more column: no other column is copied.
//!
//! The rule replaces such a window only where no operator above relies on
//! its output order: it looks from the plan's root down, and the order stops
//! mattering below a shuffle that does not keep it (or a grouping that
//! reads rows in any order) unless an operator below requires an order
//! again. Under a memory limit the operator runs the window and sort it
//! replaced, which spill. It is a local engine rule (a Ballista cluster
//! plans with its own rules, and this operator has no wire form).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBufferBuilder, PrimitiveArray, RecordBatch, StringArray,
};
use datafusion::arrow::buffer::{NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{HashMap, exec_err, internal_err};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::window::{StandardWindowExpr, WindowExpr};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::InputOrderMode;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
    apply_expression_roots,
};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::windows::{WindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

use sessionql_udfs::session_start::{SessionStart, SessionWalk, session_start_timeouts_us};

use crate::repeated_keys::DropRepeatedKeysExec;
use crate::whole_partition::{transform_whole_partition, unlimited_reservation};

/// Computes `session_start(timestamp) OVER (PARTITION BY user ORDER BY
/// timestamp)` for each partition of its input, whose partitions must hold
/// whole users (as the replaced window required); see the module
/// documentation. Rows come out in input order.
#[derive(Debug)]
pub struct SessionStartInPlaceExec {
    /// The window replaced, over its sort over [`Self::input`]: its output
    /// schema is this operator's, and it runs under a memory limit.
    window: Arc<WindowAggExec>,
    /// The events, each user's in one partition.
    input: Arc<dyn ExecutionPlan>,
    /// The window's `PARTITION BY` expression: whose events these are.
    user: Arc<dyn PhysicalExpr>,
    /// The window's `ORDER BY` expression and `session_start`'s argument.
    timestamp: Arc<dyn PhysicalExpr>,
    idle_timeout_us: i64,
    max_duration_us: i64,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SessionStartInPlaceExec {
    /// `None` unless `node` is a [`WindowAggExec`] computing only
    /// `session_start(timestamp …)` partitioned by one expression and ordered
    /// by that timestamp ascending, over a [`SortExec`] that sorts each
    /// partition on its own with no limit.
    pub fn try_replace(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Self>> {
        let Some(window) = node.downcast_ref::<WindowAggExec>() else {
            return Ok(None);
        };
        let [window_expr] = window.window_expr() else {
            return Ok(None);
        };
        let Some(args) = session_start_args(window_expr.as_ref()) else {
            return Ok(None);
        };
        let ([user], [order], Some(timestamp)) = (
            window_expr.partition_by(),
            window_expr.order_by(),
            args.first(),
        ) else {
            return Ok(None);
        };
        if order.options.descending || order.expr.as_ref() != timestamp.as_ref() {
            return Ok(None);
        }
        let Some(sort) = window.input().downcast_ref::<SortExec>() else {
            return Ok(None);
        };
        let per_partition = sort.preserve_partitioning()
            || sort.input().output_partitioning().partition_count() == 1;
        if !per_partition || sort.fetch().is_some() {
            return Ok(None);
        }
        // Timeouts that are not constants are the window's error to report
        // when it runs, not the planner's.
        let Ok((idle_timeout_us, max_duration_us)) = session_start_timeouts_us(args) else {
            return Ok(None);
        };
        let input = Arc::clone(sort.input());
        let properties = PlanProperties::new(
            EquivalenceProperties::new(window.schema()),
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Some(Self {
            window: Arc::new(window.clone()),
            input,
            user: Arc::clone(user),
            timestamp: Arc::clone(timestamp),
            idle_timeout_us,
            max_duration_us,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

/// The arguments of `window_expr` if it calls sessionql's `session_start`.
fn session_start_args(window_expr: &dyn WindowExpr) -> Option<&[Arc<dyn PhysicalExpr>]> {
    let function = window_expr
        .as_any()
        .downcast_ref::<StandardWindowExpr>()?
        .get_standard_func_expr()
        .as_any()
        .downcast_ref::<WindowUDFExpr>()?;
    function
        .fun()
        .inner()
        .downcast_ref::<SessionStart>()
        .map(|_| function.args())
}

impl DisplayAs for SessionStartInPlaceExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SessionStartInPlaceExec: user={}, timestamp={}",
            self.user, self.timestamp
        )
    }
}

impl ExecutionPlan for SessionStartInPlaceExec {
    fn name(&self) -> &str {
        "SessionStartInPlaceExec"
    }

    /// The window's schema and the input's partitions, in no declared order.
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// The window's: each user's events in one partition.
    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.window.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.window.benefits_from_input_partitioning()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_expression_roots([&self.user, &self.timestamp], f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let sort = Arc::clone(self.window.input()).replace_children(children, options)?;
        let window = (Arc::clone(&self.window) as Arc<dyn ExecutionPlan>)
            .replace_children(vec![sort], options)?;
        match SessionStartInPlaceExec::try_replace(&window)? {
            Some(replaced) => Ok(Arc::new(replaced)),
            None => Ok(window),
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
        let Some(reservation) =
            unlimited_reservation(&context, "SessionStartInPlaceExec", partition)
        else {
            return self.window.execute(partition, context);
        };
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let schema = self.schema();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let walk = SessionWalk::new(self.idle_timeout_us, self.max_duration_us);
        let user = Arc::clone(&self.user);
        let timestamp = Arc::clone(&self.timestamp);
        let output_schema = Arc::clone(&schema);
        Ok(transform_whole_partition(
            input,
            schema,
            reservation,
            baseline,
            move |batches, _reservation| {
                with_session_starts(batches, &user, &timestamp, walk, &output_schema)
            },
        ))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Every batch of one partition with its rows' session starts appended as
/// the last column of `schema`.
///
/// Assumes each user's events are all in `batches`. Users are numbered
/// through a hash table (a null user is one user, as in the window's
/// partitions), row numbers grouped by user with a counting sort, and each
/// user's rows sorted by timestamp (nulls last; they mostly come in order
/// already). A null timestamp gets a null start and does not touch the
/// running session, as in `session_start`'s evaluator.
fn with_session_starts(
    batches: Vec<RecordBatch>,
    user: &Arc<dyn PhysicalExpr>,
    timestamp: &Arc<dyn PhysicalExpr>,
    mut walk: SessionWalk,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if u32::try_from(total).is_err() {
        return exec_err!(
            "SessionStartInPlaceExec: {total} rows in one partition, more than it can index"
        );
    }
    let Some(start_field) = schema.fields().last() else {
        return internal_err!("SessionStartInPlaceExec: output schema without columns");
    };
    let mut user_columns = Vec::with_capacity(batches.len());
    let mut times: Vec<i64> = Vec::with_capacity(total);
    let mut time_present = BooleanBufferBuilder::new(total);
    let mut time_nulls: Vec<Option<NullBuffer>> = Vec::with_capacity(batches.len());
    for batch in &batches {
        user_columns.push(user.evaluate(batch)?.into_array(batch.num_rows())?);
        let time_column: ArrayRef = timestamp.evaluate(batch)?.into_array(batch.num_rows())?;
        let Some(time_column) = time_column.as_primitive_opt::<TimestampMicrosecondType>() else {
            return exec_err!(
                "SessionStartInPlaceExec: timestamps of type {}, expected microseconds",
                time_column.data_type()
            );
        };
        times.extend_from_slice(time_column.values());
        match time_column.nulls() {
            Some(nulls) => time_present.append_buffer(nulls.inner()),
            None => time_present.append_n(batch.num_rows(), true),
        }
        time_nulls.push(time_column.nulls().cloned());
    }
    let time_present = time_present.finish();
    let encoded = UserKeys::new(&user_columns)?;
    let (mut rows_by_user, user_bounds) = encoded.rows_grouped_by_user(total);
    // Each row's start, at the row's place; null timestamps keep 0 under a
    // null mask.
    let mut starts = vec![0_i64; total];
    for bounds in user_bounds.windows(2) {
        let rows = &mut rows_by_user[bounds[0] as usize..bounds[1] as usize];
        rows.sort_by_key(|&row| (!time_present.value(row as usize), times[row as usize]));
        walk.next_user();
        for row in rows.iter().map(|&row| row as usize) {
            if !time_present.value(row) {
                // Nulls sort last: the user's other events are done.
                break;
            }
            let Some(start) = walk.start_of(times[row]) else {
                return internal_err!(
                    "SessionStartInPlaceExec: timestamps out of order after its sort"
                );
            };
            starts[row] = start;
        }
    }
    drop(encoded);
    let starts = ScalarBuffer::from(starts);
    let mut offset = 0;
    batches
        .into_iter()
        .zip(time_nulls)
        .map(|(batch, nulls)| {
            let rows = batch.num_rows();
            let batch_starts =
                PrimitiveArray::<TimestampMicrosecondType>::new(starts.slice(offset, rows), nulls)
                    .with_data_type(start_field.data_type().clone());
            offset += rows;
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(batch_starts));
            Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
        })
        .collect()
}

/// The users of one partition's rows as bytes that are equal exactly when
/// the users are: a string column's own bytes, any other type in arrow's
/// row format.
enum UserKeys<'a> {
    Strings(Vec<&'a StringArray>),
    Encoded(Rows),
}

impl<'a> UserKeys<'a> {
    fn new(columns: &'a [ArrayRef]) -> Result<Self> {
        if let Some(strings) = columns
            .iter()
            .map(|column| column.as_string_opt::<i32>())
            .collect::<Option<Vec<_>>>()
        {
            return Ok(Self::Strings(strings));
        }
        let Some(first) = columns.first() else {
            return Ok(Self::Strings(Vec::new()));
        };
        let converter = RowConverter::new(vec![SortField::new(first.data_type().clone())])?;
        let total = columns.iter().map(|column| column.len()).sum();
        let mut rows = converter.empty_rows(total, 0);
        for column in columns {
            converter.append(&mut rows, &[Arc::clone(column)])?;
        }
        Ok(Self::Encoded(rows))
    }

    /// The rows grouped by user ([`rows_grouped_by_user`]), the keys read
    /// in row order (`None` for a null string) as they are numbered, not
    /// gathered first (16 bytes a row: 80 MB a partition of query 6 at
    /// 50M events).
    fn rows_grouped_by_user(&self, total: usize) -> (Vec<u32>, Vec<u32>) {
        match self {
            Self::Strings(columns) => rows_grouped_by_user(
                columns
                    .iter()
                    .flat_map(|column| column.iter().map(|user| user.map(str::as_bytes))),
                total,
            ),
            Self::Encoded(rows) => {
                rows_grouped_by_user(rows.iter().map(|row| Some(row.data())), total)
            }
        }
    }
}

/// Row numbers grouped by user, each user's in row order, and where each
/// user's group starts (with the total at the end): users are numbered in
/// order of first appearance through a hash table, then the rows placed
/// with a counting sort.
fn rows_grouped_by_user<'a>(
    keys: impl Iterator<Item = Option<&'a [u8]>>,
    total: usize,
) -> (Vec<u32>, Vec<u32>) {
    let mut numbers: HashMap<Option<&[u8]>, u32> = HashMap::new();
    let mut user_of_row: Vec<u32> = Vec::with_capacity(total);
    user_of_row.extend(keys.map(|key| {
        let next = numbers.len() as u32;
        *numbers.entry(key).or_insert(next)
    }));
    let users = numbers.len();
    drop(numbers);
    let mut bounds = vec![0_u32; users + 1];
    for &user in &user_of_row {
        bounds[user as usize + 1] += 1;
    }
    for user in 0..users {
        bounds[user + 1] += bounds[user];
    }
    let mut next_slot = bounds.clone();
    let mut grouped = vec![0_u32; total];
    for (row, &user) in user_of_row.iter().enumerate() {
        let slot = &mut next_slot[user as usize];
        grouped[*slot as usize] = row as u32;
        *slot += 1;
    }
    (grouped, bounds)
}

/// The physical optimizer rule: each `session_start` window whose output
/// order nothing above relies on becomes a [`SessionStartInPlaceExec`].
#[derive(Debug, Default)]
pub struct SessionStartInPlace;

impl PhysicalOptimizerRule for SessionStartInPlace {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The root's order may be the query's ORDER BY, met by the window's
        // order with no sort left in the plan.
        in_place_where_order_is_free(plan, true)
    }

    fn name(&self) -> &str {
        "session_start_in_place"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` with each `session_start` window below it replaced where the
/// window's output order is not relied on; `order_relied_on` says whether
/// something above relies on `node`'s output order.
fn in_place_where_order_is_free(
    node: Arc<dyn ExecutionPlan>,
    order_relied_on: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    if !order_relied_on && let Some(replaced) = SessionStartInPlaceExec::try_replace(&node)? {
        return Ok(Arc::new(replaced));
    }
    let children = node.children();
    if children.is_empty() {
        return Ok(node);
    }
    let required = node.required_input_ordering();
    let mut changed = false;
    let mut new_children = Vec::with_capacity(children.len());
    for (index, child) in children.into_iter().enumerate() {
        let child_relied_on = required.get(index).is_some_and(Option::is_some)
            || match order_use(&node) {
                OrderUse::Passes => order_relied_on,
                OrderUse::Ends => false,
                OrderUse::Unknown => true,
            };
        let new_child = in_place_where_order_is_free(Arc::clone(child), child_relied_on)?;
        changed |= !Arc::ptr_eq(&new_child, child);
        new_children.push(new_child);
    }
    if changed {
        node.replace_children(
            new_children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    } else {
        Ok(node)
    }
}

/// What an operator does with the order of its input rows, beyond the
/// orders it declares it requires.
enum OrderUse {
    /// It does not use the order, and keeps it where it can: whether its
    /// input's order matters is whether its own output's does.
    Passes,
    /// Its output order does not follow its input's and it does not use it
    /// (a shuffle that does not keep order, a hash grouping).
    Ends,
    /// Any other operator, or one with a limit: it may use its input's
    /// order without declaring it (a sort with a limit stops early on a
    /// sorted prefix; a limit keeps the first rows), so the order is taken
    /// to matter.
    Unknown,
}

fn order_use(node: &Arc<dyn ExecutionPlan>) -> OrderUse {
    if node.fetch().is_some() {
        // Which rows a limit keeps depends on the order they come in.
        OrderUse::Unknown
    } else if node.downcast_ref::<RepartitionExec>().is_some() {
        // A shuffle keeps each input partition's order when asked to, or
        // when it has a single input partition (DataFusion then declares
        // the order kept, and operators above may use it).
        if node.maintains_input_order().first() == Some(&true) {
            OrderUse::Passes
        } else {
            OrderUse::Ends
        }
    } else if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
        if *aggregate.input_order_mode() == InputOrderMode::Linear {
            OrderUse::Ends
        } else {
            OrderUse::Unknown
        }
    } else if node.downcast_ref::<ProjectionExec>().is_some()
        || node.downcast_ref::<FilterExec>().is_some()
        || node.downcast_ref::<UnionExec>().is_some()
        || node.downcast_ref::<CoalescePartitionsExec>().is_some()
        || node.downcast_ref::<DropRepeatedKeysExec>().is_some()
    {
        OrderUse::Passes
    } else {
        OrderUse::Unknown
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::collect_partitioned;
    use datafusion::physical_plan::windows::BoundedWindowAggExec;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use sessionql_udfs::session_start::session_start_udwf;
    use sessionql_udfs::{MICROS_PER_SECOND, timestamp_us_utc};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, true),
            Field::new("t", timestamp_us_utc(), true),
            Field::new("tag", DataType::Int64, false),
        ]))
    }

    /// Events as (user, seconds, tag).
    fn batch(rows: &[(Option<&str>, Option<i64>, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|row| row.0).collect::<Vec<_>>(),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter()
                            .map(|row| row.1.map(|seconds| seconds * MICROS_PER_SECOND))
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from(
                    rows.iter().map(|row| row.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn context(limited: bool) -> SessionContext {
        let config = SessionConfig::new().with_target_partitions(2);
        let context = if limited {
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_pool(Arc::new(FairSpillPool::new(64 * 1024 * 1024)))
                .build_arc()
                .unwrap();
            SessionContext::new_with_config_rt(config, runtime)
        } else {
            SessionContext::new_with_config(config)
        };
        context.register_udwf(session_start_udwf().as_ref().clone());
        context
    }

    fn register_events(context: &SessionContext, partitions: Vec<Vec<RecordBatch>>) {
        let table = MemTable::try_new(schema(), partitions).unwrap();
        context.register_table("events", Arc::new(table)).unwrap();
    }

    /// The window operator of DataFusion's plan of `session_start` with a
    /// 10 s idle timeout and a 20 s longest session over the events
    /// registered; a new plan at each call (a plan runs once).
    async fn window_plan(context: &SessionContext) -> Arc<dyn ExecutionPlan> {
        window_plan_by(context, "user").await
    }

    /// [`window_plan`] with users told apart by the SQL expression `user`.
    async fn window_plan_by(context: &SessionContext, user: &str) -> Arc<dyn ExecutionPlan> {
        let plan = context
            .sql(&format!(
                "SELECT user, t, tag, session_start(t, 10, 20) \
                 OVER (PARTITION BY {user} ORDER BY t) AS started FROM events"
            ))
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        find_window(&plan).unwrap()
    }

    fn find_window(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.downcast_ref::<WindowAggExec>().is_some()
            || plan.downcast_ref::<BoundedWindowAggExec>().is_some()
        {
            return Some(Arc::clone(plan));
        }
        plan.children().into_iter().find_map(find_window)
    }

    /// Each output row's start in seconds (None for a null start), by tag.
    fn starts_by_tag(partitions: &[Vec<RecordBatch>]) -> BTreeMap<i64, Option<i64>> {
        partitions
            .iter()
            .flatten()
            .flat_map(|batch| {
                let tags = batch.column(2).as_primitive::<Int64Type>().clone();
                let starts = batch
                    .column(3)
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone();
                (0..batch.num_rows())
                    .map(|row| {
                        let start = starts
                            .is_valid(row)
                            .then(|| starts.value(row) / MICROS_PER_SECOND);
                        (tags.value(row), start)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn tags_in_output_order(batches: &[RecordBatch]) -> Vec<i64> {
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
    async fn each_row_gets_its_session_start_and_keeps_its_place() {
        // Idle timeout 10 s, longest session 20 s. User a at 0, 8, 16 (gaps
        // of 8 s: one session from 0), 24 (24 s after 0: a new session),
        // 30 (in 24's), 45 (15 s idle: new). User b at 5, 16 (11 s idle:
        // new) and a null time (null start). The null user's events form a
        // user of their own: 3, then 20 (17 s idle: new).
        let partition = vec![
            batch(&[
                (Some("b"), Some(16), 0),
                (Some("a"), Some(24), 1),
                (Some("a"), Some(0), 2),
                (None, Some(20), 3),
                (Some("a"), Some(30), 4),
            ]),
            batch(&[
                (Some("a"), Some(16), 5),
                (Some("b"), None, 6),
                (Some("a"), Some(8), 7),
                (Some("b"), Some(5), 8),
                (None, Some(3), 9),
                (Some("a"), Some(45), 10),
            ]),
        ];
        let context = context(false);
        register_events(&context, vec![partition.clone()]);
        let window = window_plan(&context).await;
        let in_place = Arc::new(
            SessionStartInPlaceExec::try_replace(&window)
                .unwrap()
                .unwrap(),
        );
        // Run over the input as it is, not DataFusion's shuffle of it, so the
        // rows' order can be checked.
        let exec = Arc::clone(&in_place)
            .replace_children(
                vec![MemorySourceConfig::try_new_exec(&[partition], schema(), None).unwrap()],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )
            .unwrap();
        assert!(exec.downcast_ref::<SessionStartInPlaceExec>().is_some());
        let output = collect_partitioned(Arc::clone(&exec), context.task_ctx())
            .await
            .unwrap();
        let expected = BTreeMap::from([
            (0, Some(16)),
            (1, Some(24)),
            (2, Some(0)),
            (3, Some(20)),
            (4, Some(24)),
            (5, Some(0)),
            (6, None),
            (7, Some(0)),
            (8, Some(5)),
            (9, Some(3)),
            (10, Some(45)),
        ]);
        assert_eq!(starts_by_tag(&output), expected);
        // The input's batches, in the input's order.
        assert_eq!(
            tags_in_output_order(&output[0]),
            (0..=10).collect::<Vec<_>>()
        );
        let sizes: Vec<usize> = output[0].iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [5, 6]);
        assert_eq!(exec.schema(), window.schema());
    }

    /// Events of 40 users in two partitions of batches of 64 rows, in no
    /// order, some with null users or times.
    fn scrambled_events(seed: u64) -> Vec<Vec<RecordBatch>> {
        let mut state = seed;
        let mut next = move |modulo: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % modulo
        };
        let users: Vec<String> = (0..40).map(|user| format!("user-{user:02}")).collect();
        let rows: Vec<(Option<&str>, Option<i64>, i64)> = (0..3000)
            .map(|tag| {
                let user = match next(25) {
                    0 => None,
                    _ => Some(users[next(40) as usize].as_str()),
                };
                let seconds = match next(40) {
                    0 => None,
                    _ => Some(next(2000) as i64),
                };
                (user, seconds, tag)
            })
            .collect();
        let (first, second) = rows.split_at(1700);
        vec![
            first.chunks(64).map(batch).collect(),
            second.chunks(64).map(batch).collect(),
        ]
    }

    #[tokio::test]
    async fn starts_equal_datafusions_window_and_under_a_limit_it_runs_that_window() {
        // Users as strings, and as numbers (compared in arrow's row format).
        for (limited, user) in [(false, "user"), (false, "tag % 7"), (true, "user")] {
            let context = context(limited);
            register_events(&context, scrambled_events(7));
            let theirs =
                collect_partitioned(window_plan_by(&context, user).await, context.task_ctx())
                    .await
                    .unwrap();
            let window = window_plan_by(&context, user).await;
            let in_place = Arc::new(
                SessionStartInPlaceExec::try_replace(&window)
                    .unwrap()
                    .unwrap(),
            );
            let ours = collect_partitioned(
                Arc::clone(&in_place) as Arc<dyn ExecutionPlan>,
                context.task_ctx(),
            )
            .await
            .unwrap();
            let expected = starts_by_tag(&theirs);
            assert_eq!(expected.len(), 3000);
            assert_eq!(starts_by_tag(&ours), expected);
            // Unlimited it computed the starts itself; limited it ran the window.
            let computed_itself = in_place
                .metrics()
                .and_then(|metrics| metrics.output_rows())
                .unwrap_or(0)
                > 0;
            assert_eq!(computed_itself, !limited);
        }
    }

    #[tokio::test]
    async fn an_empty_partition_gives_no_rows() {
        let context = context(false);
        register_events(&context, vec![vec![batch(&[(Some("a"), Some(1), 0)])]]);
        let window = window_plan(&context).await;
        let in_place = Arc::new(
            SessionStartInPlaceExec::try_replace(&window)
                .unwrap()
                .unwrap(),
        );
        // No batch, and one batch of no rows.
        for partition in [vec![], vec![batch(&[])]] {
            let empty = MemorySourceConfig::try_new_exec(&[partition], schema(), None).unwrap();
            let exec = Arc::clone(&in_place)
                .replace_children(
                    vec![empty],
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
                )
                .unwrap();
            assert!(exec.downcast_ref::<SessionStartInPlaceExec>().is_some());
            let output = collect_partitioned(exec, context.task_ctx()).await.unwrap();
            assert_eq!(output.len(), 1);
            assert!(output[0].is_empty());
        }
    }

    #[test]
    fn a_shuffle_ends_the_order_unless_it_keeps_it_and_a_limit_needs_it() {
        let one = MemorySourceConfig::try_new_exec(&[vec![]], schema(), None).unwrap();
        let two = MemorySourceConfig::try_new_exec(&[vec![], vec![]], schema(), None).unwrap();
        let shuffle = |input: Arc<dyn ExecutionPlan>| -> Arc<dyn ExecutionPlan> {
            Arc::new(
                RepartitionExec::try_new(
                    input,
                    datafusion::physical_plan::Partitioning::RoundRobinBatch(3),
                )
                .unwrap(),
            )
        };
        // Two partitions shuffled: rows of both interleave.
        assert!(matches!(order_use(&shuffle(two)), OrderUse::Ends));
        // One partition dealt out: each output keeps the input's order.
        assert!(matches!(order_use(&shuffle(one)), OrderUse::Passes));
        // Which rows a limit keeps depends on their order.
        let limited: Arc<dyn ExecutionPlan> = Arc::new(
            CoalescePartitionsExec::new(
                MemorySourceConfig::try_new_exec(&[vec![]], schema(), None).unwrap(),
            )
            .with_fetch(Some(3)),
        );
        assert!(matches!(order_use(&limited), OrderUse::Unknown));
    }

    #[tokio::test]
    async fn other_windows_are_not_replaced() {
        let context = context(false);
        register_events(&context, vec![vec![batch(&[(Some("a"), Some(1), 0)])]]);
        for sql in [
            "SELECT row_number() OVER (PARTITION BY user ORDER BY t) FROM events",
            "SELECT session_start(t) OVER (PARTITION BY user ORDER BY t DESC) FROM events",
            "SELECT session_start(t) OVER (ORDER BY t) FROM events",
        ] {
            let plan = context
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let window = find_window(&plan).unwrap();
            assert!(
                SessionStartInPlaceExec::try_replace(&window)
                    .unwrap()
                    .is_none(),
                "{sql}"
            );
        }
    }
}
