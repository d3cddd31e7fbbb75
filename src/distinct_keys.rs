//! The last phase of a grouping that only collects distinct keys, done on
//! 24-byte codes of the keys instead of their strings.
//!
//! `count(DISTINCT session_id) … GROUP BY event` is planned by DataFusion as
//! a grouping by (`event`, `session_id`) with no aggregate, shuffled by that
//! pair, then a count per event. Nearly every pair reaching the grouping's
//! second phase is new (at 10M events, 3.80M rows for 3.78M pairs), and
//! DataFusion's grouping copies each new pair's strings into its own
//! columns, hashes and compares them there, and copies them out again when
//! it emits: 0.8 s of CPU for those 3.8M rows, most of query 6.
//!
//! Session ids are UUIDs, both the SDK's `$session_id` (UUIDv7) and the
//! derived sessions' (`session_uuid`), and a UUID written in its canonical
//! form (36 characters, lowercase hex, hyphens at 8, 13, 18 and 23) is a
//! 128-bit number and nothing else. [`DistinctKeysExec`] codes each row's
//! key in 24 bytes: the other key columns as a group number (through
//! DataFusion's own group values, which stay small for a breakdown like
//! `event`; a single other column of string views numbers its strings of
//! up to 12 bytes by the view, which holds them whole), the last column as
//! its UUID's number, or, for a value that is not a canonical UUID, as a
//! number through DataFusion's group values too.
//!
//! Only the codes are kept, spread over buckets as batches come; the batches
//! are dropped, and with them the Parquet pages their string views point
//! into. Once the partition is read, each bucket's distinct codes are
//! written back out as keys: the numbered parts from the values the group
//! values hold, UUIDs from their numbers. Holding the partition's batches
//! instead (the filter this operator was until session 17) held every page
//! of the ids: at 50M events 3.6 GB resident against 1.5 GB, and query 6
//! took 3.9–5.4 s against 3.2–3.3 s, the page faults costing more than
//! writing the ids back.
//!
//! The rule replaces a grouping with no aggregates whose last key is a
//! string, in any phase that sees whole keys (final, or single over
//! partitions that hold whole keys), in hash order (no ordered grouping),
//! and with no limit. Under a memory limit the operator runs the grouping it
//! replaced, which spills. It is a local engine rule (a Ballista cluster
//! plans with its own rules, and this operator has no wire form).

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::NullBufferBuilder;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, LargeStringArray, RecordBatch, StringViewArray, UInt32Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{HashMap, HashSet, exec_err, internal_datafusion_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::InputOrderMode;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{
    ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions, apply_expression_roots,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

use futures::{StreamExt, TryStreamExt, stream};
use sessionql_udfs::session_uuid::uuid_ascii;

use crate::plan_rewrite::rewrite_bottom_up;
use crate::whole_partition::unlimited_reservation;

/// Outputs each distinct key of its input once, each key's rows being in
/// one partition, with the key columns as the replaced grouping outputs
/// them; see the module documentation.
#[derive(Debug)]
pub struct DistinctKeysExec {
    /// The grouping replaced: its output schema is this operator's, and it
    /// runs under a memory limit.
    grouping: Arc<AggregateExec>,
    /// The grouping's keys, as expressions over its input.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DistinctKeysExec {
    /// `None` unless `node` is an [`AggregateExec`] with no aggregates, one
    /// set of keys whose last is a string, no limit, in hash order, in a
    /// phase that sees whole keys.
    pub fn try_replace(node: &Arc<dyn ExecutionPlan>) -> Option<Self> {
        let grouping = node.downcast_ref::<AggregateExec>()?;
        let whole_keys = matches!(
            grouping.mode(),
            AggregateMode::Final
                | AggregateMode::FinalPartitioned
                | AggregateMode::Single
                | AggregateMode::SinglePartitioned
        );
        if !whole_keys
            || !grouping.aggr_expr().is_empty()
            || !grouping.group_expr().is_single()
            || grouping.limit_options().is_some()
            || *grouping.input_order_mode() != InputOrderMode::Linear
        {
            return None;
        }
        let keys = grouping.group_expr().input_exprs();
        let schema = grouping.schema();
        if keys.is_empty() || schema.fields().len() != keys.len() {
            return None;
        }
        let last_type = schema.fields().last()?.data_type();
        if !matches!(
            last_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return None;
        }
        let properties = PlanProperties::new(
            grouping.properties().equivalence_properties().clone(),
            grouping.properties().output_partitioning().clone(),
            EmissionType::Final,
            grouping.input().boundedness(),
        );
        Some(Self {
            grouping: Arc::new(grouping.clone()),
            keys,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DistinctKeysExec {
    /// The grouping's keys, as expressions over its input.
    pub fn keys(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.keys
    }

    /// The grouping's input: the rows whose distinct keys are collected.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        self.grouping.input()
    }
}

impl DisplayAs for DistinctKeysExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|key| key.to_string()).collect();
        write!(f, "DistinctKeysExec: keys=[{}]", keys.join(", "))
    }
}

impl ExecutionPlan for DistinctKeysExec {
    fn name(&self) -> &str {
        "DistinctKeysExec"
    }

    /// The grouping's schema and partitions, emitted once a partition is
    /// read (as the grouping's are).
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// The grouping's: each key's rows in one partition.
    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.grouping.input_distribution_requirements()
    }

    /// Keys come out bucket by bucket, not in input order.
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.grouping.benefits_from_input_partitioning()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.grouping.input()]
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
        let grouping = (Arc::clone(&self.grouping) as Arc<dyn ExecutionPlan>)
            .replace_children(children, options)?;
        match DistinctKeysExec::try_replace(&grouping) {
            Some(replaced) => Ok(Arc::new(replaced)),
            None => Ok(grouping),
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
        let Some(reservation) = unlimited_reservation(&context, "DistinctKeysExec", partition)
        else {
            return self.grouping.execute(partition, context);
        };
        let batch_size = context.session_config().batch_size();
        let input = self.grouping.input().execute(partition, context)?;
        let schema = self.schema();
        let keys = self.keys.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let output_schema = Arc::clone(&schema);
        let output = stream::once(async move {
            let gathered = GatheredCodes::read(
                input,
                &output_schema,
                &keys,
                Gathering::WholeKeys,
                &reservation,
                &baseline,
            )
            .await?;
            let batches = DistinctKeyBatches::new(
                gathered,
                output_schema,
                batch_size,
                reservation,
                baseline,
            )?;
            Ok::<_, DataFusionError>(stream::iter(batches))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Buckets the codes of a partition are spread over as they come, by a
/// hash of their own: at 2M rows a partition, 1K codes (24 KiB) a bucket,
/// whose distinct codes a hash set finds within the processor's caches (one
/// set of all codes, far larger than the caches, cost a cache miss or two
/// for nearly every row).
const CODE_BUCKETS: usize = 2048;

/// Codes a bucket allocates at a time: a bucket grows by chunks (6 KiB),
/// never copying what it holds, and wastes at most one chunk.
const CHUNK_CODES: usize = 256;

/// The codes of a partition's keys, gathered batch by batch into
/// [`CODE_BUCKETS`] buckets; the batches themselves are not kept, so the
/// pages their strings point into are freed as the partition is read.
pub(crate) struct GatheredCodes {
    coder: KeyCoder,
    /// Each bucket's codes, in chunks of [`CHUNK_CODES`].
    buckets: Vec<Vec<Vec<KeyCode>>>,
    chunks: usize,
    /// Scratch: the codes of one batch.
    batch_codes: Vec<KeyCode>,
    /// How the codes are gathered.
    gathering: Gathering,
    /// Codes gathered lately, when repeats are dropped as they come.
    recent: Option<RecentCodes>,
    /// Codes not gathered for repeating a recent one.
    dropped: usize,
}

/// What the gathered codes are for, which decides how they are gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gathering {
    /// A partition that holds all the rows of its keys, already made
    /// mostly distinct by a grouping's first phase: every code is kept,
    /// and buckets are chosen by the whole code.
    WholeKeys,
    /// One of several partitions of rows as read, to be counted with the
    /// others' ([`MergedCodes`]): a code equal to a recent one is dropped
    /// (a session's events come together), keys with a null last column
    /// are not kept (they are never counted), and buckets are chosen by
    /// the last column alone, whose code reads the same in every partition
    /// (the other columns' numbers are the partition's own).
    ToMerge,
}

impl GatheredCodes {
    /// For keys of `schema` (the grouping's output: its key columns).
    fn new(schema: &SchemaRef, gathering: Gathering) -> Result<Self> {
        Ok(Self {
            coder: KeyCoder::new(schema)?,
            buckets: vec![Vec::new(); CODE_BUCKETS],
            chunks: 0,
            batch_codes: Vec::new(),
            gathering,
            recent: (gathering == Gathering::ToMerge).then(RecentCodes::new),
            dropped: 0,
        })
    }

    /// How many rows were not gathered for repeating a recent row's key.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }

    /// The codes of the keys of every batch of `input` (whose keys, as
    /// `schema` gives them, `keys` evaluate), counted in `reservation`,
    /// the time spent as `baseline`'s compute time.
    pub(crate) async fn read(
        mut input: SendableRecordBatchStream,
        schema: &SchemaRef,
        keys: &[Arc<dyn PhysicalExpr>],
        gathering: Gathering,
        reservation: &MemoryReservation,
        baseline: &BaselineMetrics,
    ) -> Result<Self> {
        let mut gathered = Self::new(schema, gathering)?;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            let timer = baseline.elapsed_compute().timer();
            gathered.add(&batch, keys, reservation)?;
            timer.done();
            // Reading the next batch is mostly ready at once, so without a
            // yield a partition would keep its worker thread to the end and
            // starve the tasks that feed other partitions (the half of
            // `session_events` that derives sessions then ran last, alone,
            // and query 6 at 50M events took 3.6 s instead of 2.8 s).
            tokio::task::yield_now().await;
        }
        Ok(gathered)
    }

    /// Codes the keys of `batch`, adds them to their buckets and counts
    /// what is held in `reservation`.
    fn add(
        &mut self,
        batch: &RecordBatch,
        keys: &[Arc<dyn PhysicalExpr>],
        reservation: &MemoryReservation,
    ) -> Result<()> {
        let rows = batch.num_rows();
        let key_columns = keys
            .iter()
            .map(|key| key.evaluate(batch)?.into_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        self.batch_codes.clear();
        self.coder
            .append_codes(&key_columns, &mut self.batch_codes)?;
        let by_last = self.gathering == Gathering::ToMerge;
        for &code in &self.batch_codes {
            if by_last && code.last_kind == LAST_IS_NULL {
                continue;
            }
            if let Some(recent) = &mut self.recent
                && !recent.is_new(code)
            {
                self.dropped += 1;
                continue;
            }
            let chunks = &mut self.buckets[code.bucket(by_last)];
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < CHUNK_CODES => chunk.push(code),
                _ => {
                    let mut chunk = Vec::with_capacity(CHUNK_CODES);
                    chunk.push(code);
                    chunks.push(chunk);
                    self.chunks += 1;
                }
            }
        }
        reservation.try_resize(self.chunks * CHUNK_BYTES + self.coder.size())
    }

    /// For each value of the key columns before the last, how many
    /// distinct keys have a last column that is not null: the values (one
    /// array per column; none for a single key, whose one count is then of
    /// all keys) and the counts, row by row. Each bucket's memory is given
    /// back to `reservation` once it is counted.
    pub(crate) fn count_by_others(
        self,
        reservation: &MemoryReservation,
    ) -> Result<(Vec<ArrayRef>, Vec<i64>)> {
        let values = KeyValues::new(self.coder)?;
        let groups = values.others.first().map_or(1, |column| column.len());
        let mut counts = vec![0_i64; groups];
        let mut seen: HashSet<KeyCode> = HashSet::default();
        for chunks in self.buckets {
            seen.clear();
            for &code in chunks.iter().flatten() {
                if code.last_kind != LAST_IS_NULL && seen.insert(code) {
                    let Some(count) = counts.get_mut(values.other_row(code.others) as usize) else {
                        return exec_err!("distinct counts: a key numbered past its values");
                    };
                    *count += 1;
                }
            }
            reservation.shrink((chunks.len() * CHUNK_BYTES).min(reservation.size()));
        }
        Ok((values.others, counts))
    }
}

/// Bytes of one chunk of codes.
const CHUNK_BYTES: usize = CHUNK_CODES * size_of::<KeyCode>();

/// The distinct keys of a partition, written back from its gathered codes
/// a few buckets at a time (each bucket's memory is given back once its
/// codes are out), in batches of about the session's batch size.
struct DistinctKeyBatches {
    buckets: std::vec::IntoIter<Vec<Vec<KeyCode>>>,
    values: KeyValues,
    seen: HashSet<KeyCode>,
    /// Distinct codes not yet written out.
    distinct: Vec<KeyCode>,
    schema: SchemaRef,
    batch_size: usize,
    reservation: MemoryReservation,
    baseline: BaselineMetrics,
}

impl DistinctKeyBatches {
    fn new(
        gathered: GatheredCodes,
        schema: SchemaRef,
        batch_size: usize,
        reservation: MemoryReservation,
        baseline: BaselineMetrics,
    ) -> Result<Self> {
        let values = KeyValues::new(gathered.coder)?;
        Ok(Self {
            buckets: gathered.buckets.into_iter(),
            values,
            seen: HashSet::default(),
            distinct: Vec::new(),
            schema,
            batch_size: batch_size.max(1),
            reservation,
            baseline,
        })
    }

    /// The keys of the next buckets, at least a batch's worth unless the
    /// buckets run out; `None` once every key is out.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        while self.distinct.len() < self.batch_size {
            let Some(chunks) = self.buckets.next() else {
                break;
            };
            self.seen.clear();
            for &code in chunks.iter().flatten() {
                if self.seen.insert(code) {
                    self.distinct.push(code);
                }
            }
            self.reservation
                .shrink((chunks.len() * CHUNK_BYTES).min(self.reservation.size()));
        }
        if self.distinct.is_empty() {
            return Ok(None);
        }
        let batch = self.values.keys_of(&self.schema, &self.distinct)?;
        self.distinct.clear();
        Ok(Some(batch))
    }
}

impl Iterator for DistinctKeyBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let elapsed_compute = self.baseline.elapsed_compute().clone();
        let timer = elapsed_compute.timer();
        let batch = self.next_batch().transpose();
        timer.done();
        if let Some(Ok(batch)) = &batch {
            self.baseline.output_rows().add(batch.num_rows());
        }
        batch
    }
}

/// The values behind the numbers in codes, taken from the coder once a
/// partition is read, to write keys back out of their codes.
struct KeyValues {
    /// The other key columns' values; a code's row in them is
    /// [`KeyValues::other_row`].
    others: Vec<ArrayRef>,
    /// For a single other key column of views: how many short strings,
    /// numbered by their views, come first in `others` (the group values'
    /// strings follow).
    short_views: Option<u32>,
    /// The last column's strings that are not canonical UUIDs, by number.
    last_strings: StringViewArray,
}

impl KeyValues {
    fn new(coder: KeyCoder) -> Result<Self> {
        let KeyCoder {
            other_columns,
            mut other_strings,
            short_views,
            others_are_views,
            ..
        } = coder;
        let last_strings = match other_strings.emit(EmitTo::All)?.as_slice() {
            [strings] => cast(strings, &DataType::Utf8View)?.as_string_view().clone(),
            _ => return exec_err!("DistinctKeysExec: the last key's strings are not one column"),
        };
        let Some(mut other_columns) = other_columns else {
            return Ok(Self {
                others: Vec::new(),
                short_views: None,
                last_strings,
            });
        };
        let mut others = other_columns.emit(EmitTo::All)?;
        if !others_are_views {
            return Ok(Self {
                others,
                short_views: None,
                last_strings,
            });
        }
        let mut views_by_number = vec![0_u128; short_views.by_view.len()];
        for (view, number) in short_views.by_view {
            views_by_number[number as usize] = view;
        }
        let short = StringViewArray::try_new(views_by_number.into(), Vec::new(), None)?;
        let Ok(short_count) = u32::try_from(short.len()) else {
            return exec_err!("DistinctKeysExec: too many distinct keys to number");
        };
        let [long] = others.as_mut_slice() else {
            return exec_err!("DistinctKeysExec: the other key is not one column");
        };
        *long = concat(&[&short as &dyn Array, long.as_ref()])?;
        Ok(Self {
            others,
            short_views: Some(short_count),
            last_strings,
        })
    }

    /// The row of `others` that holds the other key columns' values a code
    /// numbered `number`.
    fn other_row(&self, number: u32) -> u32 {
        other_row(self.short_views, number)
    }

    /// The last key column of `codes`: UUIDs written from their numbers,
    /// other strings from the coder's. Written into one buffer, which is
    /// checked as UTF-8 once (not string by string, as a builder of views
    /// would need).
    fn last_strings_of(&self, codes: &[KeyCode]) -> Result<LargeStringArray> {
        let mut offsets: Vec<i64> = Vec::with_capacity(codes.len() + 1);
        let mut text: Vec<u8> = Vec::with_capacity(codes.len() * 36);
        let mut nulls = NullBufferBuilder::new(codes.len());
        offsets.push(0);
        // The last UUID written and where its text starts.
        let mut previous: Option<(u128, usize)> = None;
        for code in codes {
            match code.last_kind {
                LAST_IS_UUID => {
                    let uuid = (u128::from(code.uuid_high) << 64) | u128::from(code.uuid_low);
                    let start = text.len();
                    match previous {
                        Some((previous_uuid, at)) if previous_uuid == uuid => {
                            text.extend_from_within(at..at + 36);
                        }
                        _ => text.extend_from_slice(&uuid_ascii(uuid)),
                    }
                    previous = Some((uuid, start));
                    nulls.append_non_null();
                }
                LAST_IS_NULL => nulls.append_null(),
                number => {
                    let index = (number - FIRST_STRING_NUMBER) as usize;
                    text.extend_from_slice(self.last_strings.value(index).as_bytes());
                    nulls.append_non_null();
                }
            }
            offsets.push(text.len() as i64);
        }
        Ok(LargeStringArray::try_new(
            OffsetBuffer::new(offsets.into()),
            text.into(),
            nulls.finish(),
        )?)
    }

    /// The keys of `codes`, as a batch of `schema` (the key columns).
    fn keys_of(&self, schema: &SchemaRef, codes: &[KeyCode]) -> Result<RecordBatch> {
        let Some(last_field) = schema.fields().last() else {
            return exec_err!("DistinctKeysExec: a grouping without keys");
        };
        let mut columns = Vec::with_capacity(schema.fields().len());
        if !self.others.is_empty() {
            let rows =
                UInt32Array::from_iter_values(codes.iter().map(|code| self.other_row(code.others)));
            for values in &self.others {
                columns.push(take(values.as_ref(), &rows, None)?);
            }
        }
        let last = self.last_strings_of(codes)?;
        columns.push(match last_field.data_type() {
            // Views of the strings just written, which were checked once.
            DataType::Utf8View => Arc::new(StringViewArray::from(&last)),
            other => cast(&last, other)?,
        });
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

/// The row of a partition's other key values ([`KeyValues::others`]) that
/// holds the values a code numbered `number`, given how many short views
/// come first in them.
fn other_row(short_views: Option<u32>, number: u32) -> u32 {
    match short_views {
        Some(short_count) if number & LONG_VIEW_NUMBER != 0 => {
            short_count + (number & !LONG_VIEW_NUMBER)
        }
        _ => number,
    }
}

/// The codes several input partitions gathered, renumbered to count their
/// distinct keys together, bucket by bucket, with no shuffle: each
/// partition numbered its other keys and non-UUID strings on its own, so
/// their values are numbered again, once, in one numbering shared by all.
pub(crate) struct MergedCodes {
    /// Each bucket's codes, by partition; taken out when counted.
    buckets: Vec<Mutex<Vec<Vec<Vec<KeyCode>>>>>,
    /// Each partition's numbers in the shared numbering.
    renumberings: Vec<Renumbering>,
    /// The other key columns' values, by shared number (none for a single
    /// key).
    others: Vec<ArrayRef>,
    /// Each partition's memory; a bucket's share is given back once the
    /// bucket is counted.
    reservations: Vec<MemoryReservation>,
}

/// One partition's numbers of its other keys and non-UUID strings, in the
/// numbering [`MergedCodes`] shares.
struct Renumbering {
    /// How many short views come first in the partition's other values.
    short_views: Option<u32>,
    /// The shared number of each row of the partition's other values.
    others: Vec<u32>,
    /// The shared number of each of the partition's numbered strings.
    strings: Vec<u32>,
}

impl Renumbering {
    /// `code` (of the partition) in the shared numbering.
    fn shared(&self, code: KeyCode) -> Result<KeyCode> {
        let others = if self.others.is_empty() {
            code.others
        } else {
            match self
                .others
                .get(other_row(self.short_views, code.others) as usize)
            {
                Some(&number) => number,
                None => return exec_err!("distinct counts: a key numbered past its values"),
            }
        };
        let last_kind = match code.last_kind.checked_sub(FIRST_STRING_NUMBER) {
            None => code.last_kind,
            Some(index) => match self.strings.get(index as usize) {
                Some(&number) => number,
                None => return exec_err!("distinct counts: a string numbered past its values"),
            },
        };
        Ok(KeyCode {
            others,
            last_kind,
            ..code
        })
    }
}

impl MergedCodes {
    /// The codes of `partitions` (gathered for keys of `schema`, each
    /// counted in the reservation of the same place in `reservations`),
    /// renumbered.
    pub(crate) fn new(
        schema: &SchemaRef,
        partitions: Vec<GatheredCodes>,
        reservations: Vec<MemoryReservation>,
    ) -> Result<Self> {
        let Some((last, others)) = schema.fields().split_last() else {
            return exec_err!("distinct counts: a grouping without keys");
        };
        let mut shared_others = match others {
            [] => None,
            others => Some(new_group_values(
                Arc::new(Schema::new(others.to_vec())),
                &GroupOrdering::None,
            )?),
        };
        let mut shared_strings = new_group_values(
            Arc::new(Schema::new(vec![
                last.as_ref().clone().with_data_type(DataType::Utf8View),
            ])),
            &GroupOrdering::None,
        )?;
        let mut buckets: Vec<Vec<Vec<Vec<KeyCode>>>> = (0..CODE_BUCKETS)
            .map(|_| Vec::with_capacity(partitions.len()))
            .collect();
        let mut renumberings = Vec::with_capacity(partitions.len());
        let mut groups = Vec::new();
        for partition in partitions {
            let values = KeyValues::new(partition.coder)?;
            let others = match &mut shared_others {
                Some(shared) => {
                    shared.intern(&values.others, &mut groups)?;
                    groups
                        .iter()
                        .map(|&group| group_number(group))
                        .collect::<Result<_>>()?
                }
                None => Vec::new(),
            };
            let strings: ArrayRef = Arc::new(values.last_strings);
            shared_strings.intern(&[strings], &mut groups)?;
            let strings = groups
                .iter()
                .map(
                    |&group| match group_number(group)?.checked_add(FIRST_STRING_NUMBER) {
                        Some(kind) if kind != NO_KEY => Ok(kind),
                        _ => exec_err!("distinct counts: too many distinct keys to number"),
                    },
                )
                .collect::<Result<_>>()?;
            renumberings.push(Renumbering {
                short_views: values.short_views,
                others,
                strings,
            });
            for (bucket, chunks) in buckets.iter_mut().zip(partition.buckets) {
                bucket.push(chunks);
            }
        }
        let others = match shared_others {
            Some(mut shared) => shared.emit(EmitTo::All)?,
            None => Vec::new(),
        };
        Ok(Self {
            buckets: buckets.into_iter().map(Mutex::new).collect(),
            renumberings,
            others,
            reservations,
        })
    }

    /// The other key columns' values, one row per shared number (none for
    /// a single key).
    pub(crate) fn others(&self) -> &[ArrayRef] {
        &self.others
    }

    /// For each shared number of the other keys (one count for a single
    /// key), how many distinct keys with a last column that is not null the
    /// buckets of `share` hold: every `shares`-th bucket from the
    /// `share`-th. Each bucket is taken out and its memory given back as it
    /// is counted, so a share is counted once.
    ///
    /// The task yields between groups of buckets: the shares' tasks all
    /// wake when the codes are merged, and a task woken by another waits
    /// on that one's worker thread until it yields.
    pub(crate) async fn count_share(
        &self,
        share: usize,
        shares: usize,
        elapsed_compute: &Time,
    ) -> Result<Vec<i64>> {
        /// Buckets counted between yields (about 1M codes at 50M events).
        const BUCKETS_BETWEEN_YIELDS: usize = 64;
        let groups = self.others.first().map_or(1, |column| column.len());
        let mut counts = vec![0_i64; groups];
        let mut seen: HashSet<KeyCode> = HashSet::default();
        let buckets: Vec<usize> = (share..CODE_BUCKETS).step_by(shares.max(1)).collect();
        for some in buckets.chunks(BUCKETS_BETWEEN_YIELDS) {
            let timer = elapsed_compute.timer();
            for &bucket in some {
                self.count_bucket(bucket, &mut counts, &mut seen)?;
            }
            timer.done();
            tokio::task::yield_now().await;
        }
        Ok(counts)
    }

    /// Adds the distinct keys of `bucket` to `counts`, taking the bucket
    /// out; `seen` is scratch.
    fn count_bucket(
        &self,
        bucket: usize,
        counts: &mut [i64],
        seen: &mut HashSet<KeyCode>,
    ) -> Result<()> {
        let Some(bucket) = self.buckets.get(bucket) else {
            return Ok(());
        };
        let partitions = std::mem::take(&mut *bucket.lock().map_err(|_| {
            internal_datafusion_err!("distinct counts: a bucket's lock was poisoned")
        })?);
        seen.clear();
        for (renumbering, chunks) in self.renumberings.iter().zip(&partitions) {
            for &code in chunks.iter().flatten() {
                if code.last_kind == LAST_IS_NULL {
                    continue;
                }
                let code = renumbering.shared(code)?;
                if seen.insert(code) {
                    let Some(count) = counts.get_mut(code.others as usize) else {
                        return exec_err!("distinct counts: a key numbered past its values");
                    };
                    *count += 1;
                }
            }
        }
        for (reservation, chunks) in self.reservations.iter().zip(&partitions) {
            reservation.shrink((chunks.len() * CHUNK_BYTES).min(reservation.size()));
        }
        Ok(())
    }
}

/// A row's key as 24 bytes, whatever its strings: two keys are equal
/// exactly when their codes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyCode {
    /// The group number of the key's other columns (0 when there are none).
    others: u32,
    /// What the last column holds: [`LAST_IS_UUID`], [`LAST_IS_NULL`], or
    /// [`FIRST_STRING_NUMBER`] plus the group number of a string that is not
    /// a canonical UUID.
    last_kind: u32,
    /// The UUID's 128 bits, when the last column holds one; a hash of the
    /// string that is not a UUID ([`string_hash`]), the same in every
    /// partition; 0 for a null.
    uuid_high: u64,
    uuid_low: u64,
}

/// A hash of `bytes` that is the same in every partition and process
/// (64-bit FNV-1a): what places a key whose last column is not a UUID in
/// its bucket when partitions number their strings on their own.
fn string_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

impl KeyCode {
    /// Which of [`CODE_BUCKETS`] the code goes to: the top bits of a
    /// multiplicative hash, independent of the hash set's own hash (codes of
    /// one bucket must not crowd its set's slots). A UUID's keys all go to
    /// the bucket of the UUID, so that a session's keys, which come
    /// together, stay together and its id is written once for them (see
    /// [`KeyValues::last_strings_of`]); other keys by all their parts (a
    /// null id must not send every key to one bucket), or, `by_last`, by
    /// the hash of their last column's string alone.
    fn bucket(&self, by_last: bool) -> usize {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let uuid = self.uuid_low ^ self.uuid_high.rotate_left(29);
        let mixed = if self.last_kind == LAST_IS_UUID || by_last {
            uuid
        } else {
            uuid.wrapping_add((u64::from(self.others) << 32) | u64::from(self.last_kind))
        }
        .wrapping_mul(GOLDEN);
        (mixed >> (64 - CODE_BUCKETS.trailing_zeros())) as usize
    }

    /// Which of [`RECENT_CODE_SLOTS`] the code goes to: a multiplicative
    /// hash of all its parts, so that a session's keys (one UUID, several
    /// events) spread over the slots.
    fn recent_slot(&self) -> usize {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let parts = self.uuid_low
            ^ self.uuid_high.rotate_left(29)
            ^ ((u64::from(self.others) << 32) | u64::from(self.last_kind));
        (parts.wrapping_mul(GOLDEN) >> (64 - RECENT_CODE_SLOTS.trailing_zeros())) as usize
    }

    /// The code of a last column's value, before the other columns are
    /// numbered.
    fn of_last(last_kind: u32, uuid: u128) -> Self {
        Self {
            others: 0,
            last_kind,
            uuid_high: (uuid >> 64) as u64,
            uuid_low: uuid as u64,
        }
    }
}

/// Numbers of other keys held by the group values have this bit set; those
/// of short strings numbered by their views ([`number_short_views`])
/// do not.
const LONG_VIEW_NUMBER: u32 = 1 << 31;

const LAST_IS_UUID: u32 = 0;
const LAST_IS_NULL: u32 = 1;
const FIRST_STRING_NUMBER: u32 = 2;
/// A `last_kind` no key has (strings are numbered below it): marks an
/// empty slot of [`RecentCodes`].
const NO_KEY: u32 = u32::MAX;

/// Slots of [`RecentCodes`]: 1024 codes (24 KiB) stay in the first-level
/// cache and span far more than a session's few distinct keys.
const RECENT_CODE_SLOTS: usize = 1024;

/// The codes gathered lately, one per slot by [`KeyCode::recent_slot`]: a
/// code found in its slot repeats a recent key and need not be gathered
/// again. A repeat the table misses is gathered and removed when the
/// buckets are counted, as every code's repeats are.
struct RecentCodes {
    slots: Box<[KeyCode]>,
}

impl RecentCodes {
    fn new() -> Self {
        Self {
            slots: vec![KeyCode::of_last(NO_KEY, 0); RECENT_CODE_SLOTS].into_boxed_slice(),
        }
    }

    /// Whether `code` is not in its slot; it is there from now on.
    fn is_new(&mut self, code: KeyCode) -> bool {
        let slot = &mut self.slots[code.recent_slot()];
        if *slot == code {
            return false;
        }
        *slot = code;
        true
    }
}

/// Turns keys into [`KeyCode`]s: numbers, through DataFusion's group
/// values (or, for short strings of a single other column of views, a map
/// by view), the parts of keys that are not UUIDs.
struct KeyCoder {
    /// Numbers the key's columns before the last; `None` for a single key.
    other_columns: Option<Box<dyn GroupValues>>,
    /// Numbers the last column's strings that are not canonical UUIDs.
    other_strings: Box<dyn GroupValues>,
    /// Whether the key has a single other column, of string views.
    others_are_views: bool,
    /// Numbers of the short strings of a single other key column of views,
    /// by view (see [`number_short_views`]).
    short_views: ShortViewNumbers,
    /// Scratch, reused between batches.
    other_groups: Vec<usize>,
    other_rows: Vec<u32>,
    string_groups: Vec<usize>,
    string_rows: Vec<u32>,
}

impl KeyCoder {
    /// For keys of `schema` (the grouping's output: its key columns).
    fn new(schema: &SchemaRef) -> Result<Self> {
        let fields = schema.fields();
        let Some((last, others)) = fields.split_last() else {
            return exec_err!("DistinctKeysExec: a grouping without keys");
        };
        let other_columns = if others.is_empty() {
            None
        } else {
            Some(new_group_values(
                Arc::new(Schema::new(others.to_vec())),
                &GroupOrdering::None,
            )?)
        };
        let other_strings = new_group_values(
            Arc::new(Schema::new(vec![Arc::clone(last)])),
            &GroupOrdering::None,
        )?;
        Ok(Self {
            other_columns,
            other_strings,
            others_are_views: matches!(others, [other] if other.data_type() == &DataType::Utf8View),
            short_views: ShortViewNumbers::default(),
            other_groups: Vec::new(),
            other_rows: Vec::new(),
            string_groups: Vec::new(),
            string_rows: Vec::new(),
        })
    }

    /// Bytes held by the group values, for the memory pool.
    fn size(&self) -> usize {
        self.other_columns
            .as_ref()
            .map_or(0, |values| values.size())
            + self.other_strings.size()
            + self.short_views.size()
    }

    /// Appends to `codes` the code of each row of `keys` (one array per key
    /// column).
    fn append_codes(&mut self, keys: &[ArrayRef], codes: &mut Vec<KeyCode>) -> Result<()> {
        let Some((last, others)) = keys.split_last() else {
            return exec_err!("DistinctKeysExec: a grouping without keys");
        };
        let first = codes.len();
        self.string_rows.clear();
        match last.data_type() {
            DataType::Utf8 => self.code_strings(
                last.as_string::<i32>().iter().map(|text| (text, None)),
                codes,
            )?,
            DataType::LargeUtf8 => self.code_strings(
                last.as_string::<i64>().iter().map(|text| (text, None)),
                codes,
            )?,
            DataType::Utf8View => {
                let strings = last.as_string_view();
                self.code_strings(strings.iter().zip(strings.views().iter().map(Some)), codes)?
            }
            other => return exec_err!("DistinctKeysExec: last key of type {other}"),
        }
        let batch_codes = &mut codes[first..];
        if !self.string_rows.is_empty() {
            let rows_taken = UInt32Array::from_iter_values(self.string_rows.iter().copied());
            let strings = take(last.as_ref(), &rows_taken, None)?;
            self.other_strings
                .intern(&[strings], &mut self.string_groups)?;
            for (&row, &group) in self.string_rows.iter().zip(&self.string_groups) {
                let Some(last_kind) = group_number(group)?
                    .checked_add(FIRST_STRING_NUMBER)
                    .filter(|&kind| kind != NO_KEY)
                else {
                    return exec_err!("DistinctKeysExec: too many distinct keys to number");
                };
                batch_codes[row as usize].last_kind = last_kind;
            }
        }
        let Some(other_columns) = &mut self.other_columns else {
            return Ok(());
        };
        match others {
            [strings] if self.others_are_views => {
                number_short_views(
                    &mut self.short_views,
                    &mut self.other_rows,
                    strings.as_string_view(),
                    batch_codes,
                )?;
                if self.other_rows.is_empty() {
                    return Ok(());
                }
                let rows_taken = UInt32Array::from_iter_values(self.other_rows.iter().copied());
                let rest = take(strings.as_ref(), &rows_taken, None)?;
                other_columns.intern(&[rest], &mut self.other_groups)?;
                for (&row, &group) in self.other_rows.iter().zip(&self.other_groups) {
                    let number = group_number(group)?;
                    if number >= LONG_VIEW_NUMBER {
                        return exec_err!("DistinctKeysExec: too many distinct keys to number");
                    }
                    batch_codes[row as usize].others = number | LONG_VIEW_NUMBER;
                }
            }
            _ => {
                other_columns.intern(others, &mut self.other_groups)?;
                for (code, &group) in batch_codes.iter_mut().zip(&self.other_groups) {
                    code.others = group_number(group)?;
                }
            }
        }
        Ok(())
    }

    /// Appends the codes of the last column's values, with `others` 0: a canonical UUID
    /// as its number, a null as [`LAST_IS_NULL`], any other string marked
    /// [`FIRST_STRING_NUMBER`] with its row listed for numbering.
    ///
    /// Each value comes with its view when the column holds views: equal
    /// views are equal strings (a view holds a short string whole, a long
    /// one's length, prefix and place), so a row whose view is the last
    /// UUID's (Parquet's dictionary pages decode a session's repeated id
    /// to one place) skips comparing the text.
    fn code_strings<'a>(
        &mut self,
        values: impl Iterator<Item = (Option<&'a str>, Option<&'a u128>)>,
        codes: &mut Vec<KeyCode>,
    ) -> Result<()> {
        // The last UUID read, with its view and text: a session's keys
        // mostly come one after another, its id read once for them all.
        let mut previous: Option<(Option<&u128>, &str, u128)> = None;
        for (row, (value, view)) in values.enumerate() {
            let code = match value {
                None => KeyCode::of_last(LAST_IS_NULL, 0),
                Some(text) => match previous
                    .filter(|&(previous_view, previous_text, _)| {
                        (view.is_some() && previous_view == view) || previous_text == text
                    })
                    .map(|(_, _, uuid)| uuid)
                    .or_else(|| canonical_uuid(text.as_bytes()))
                {
                    Some(uuid) => {
                        previous = Some((view, text, uuid));
                        KeyCode::of_last(LAST_IS_UUID, uuid)
                    }
                    None => {
                        let Ok(row) = u32::try_from(row) else {
                            return exec_err!("DistinctKeysExec: a batch of over 2^32 rows");
                        };
                        self.string_rows.push(row);
                        KeyCode::of_last(
                            FIRST_STRING_NUMBER,
                            u128::from(string_hash(text.as_bytes())),
                        )
                    }
                },
            };
            codes.push(code);
        }
        Ok(())
    }
}

/// Numbers the strings of at most 12 bytes of a single other key column
/// held as views (an event name, usually) by their views, which hold
/// them whole: a lookup of 16 bytes where DataFusion's group values
/// (hashing and comparing the strings) took 15% of the operator's
/// instructions. Lists the other rows (nulls, longer strings) in
/// `other_rows`, for the group values to number.
fn number_short_views(
    short_views: &mut ShortViewNumbers,
    other_rows: &mut Vec<u32>,
    strings: &StringViewArray,
    codes: &mut [KeyCode],
) -> Result<()> {
    other_rows.clear();
    for (row, (code, &view)) in codes.iter_mut().zip(strings.views()).enumerate() {
        // The low 32 bits of a view are its string's length.
        if strings.is_valid(row) && view as u32 <= 12 {
            code.others = short_views.number(view)?;
        } else {
            let Ok(row) = u32::try_from(row) else {
                return exec_err!("DistinctKeysExec: a batch of over 2^32 rows");
            };
            other_rows.push(row);
        }
    }
    Ok(())
}

/// Numbers of short strings by their views ([`number_short_views`]): a map,
/// behind a direct-mapped table of recent views that a breakdown's few
/// values (event names) never leave, found there by one comparison where
/// the map hashes.
struct ShortViewNumbers {
    by_view: HashMap<u128, u32>,
    /// Views with their number + 1 (0: an empty slot).
    recent: [(u128, u32); RECENT_VIEW_SLOTS],
}

impl Default for ShortViewNumbers {
    fn default() -> Self {
        Self {
            by_view: HashMap::default(),
            recent: [(0, 0); RECENT_VIEW_SLOTS],
        }
    }
}

/// Slots of [`ShortViewNumbers::recent`].
const RECENT_VIEW_SLOTS: usize = 64;

impl ShortViewNumbers {
    fn number(&mut self, view: u128) -> Result<u32> {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let folded = (view as u64) ^ ((view >> 64) as u64).rotate_left(17);
        let slot =
            (folded.wrapping_mul(GOLDEN) >> (64 - RECENT_VIEW_SLOTS.trailing_zeros())) as usize;
        let (recent_view, number_plus_one) = self.recent[slot];
        if number_plus_one != 0 && recent_view == view {
            return Ok(number_plus_one - 1);
        }
        let next = self.by_view.len() as u32;
        let number = *self.by_view.entry(view).or_insert(next);
        if number >= LONG_VIEW_NUMBER {
            return exec_err!("DistinctKeysExec: too many distinct keys to number");
        }
        self.recent[slot] = (view, number + 1);
        Ok(number)
    }

    /// Bytes held, for the memory pool.
    fn size(&self) -> usize {
        self.by_view.capacity() * (size_of::<u128>() + size_of::<u32>() + 1)
            + size_of_val(&self.recent)
    }
}

fn group_number(group: usize) -> Result<u32> {
    match u32::try_from(group) {
        Ok(number) => Ok(number),
        Err(_) => exec_err!("DistinctKeysExec: too many distinct keys to number"),
    }
}

/// Where a canonical UUID (36 characters) has its hyphens.
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// The number a UUID in canonical form (`8-4-4-4-12` lowercase hex digits)
/// writes; `None` for any other text, so that two texts have the same
/// number only when they are the same text.
fn canonical_uuid(text: &[u8]) -> Option<u128> {
    let text: &[u8; 36] = text.try_into().ok()?;
    let four = |at: usize| {
        u64::from(u32::from_le_bytes([
            text[at],
            text[at + 1],
            text[at + 2],
            text[at + 3],
        ]))
    };
    // The 32 digits as four words of eight characters, the first character
    // in the lowest byte; every word decoded before one test of them all.
    let (first, first_errors) = eight_hex_digits(four(0) | (four(4) << 32));
    let (second, second_errors) = eight_hex_digits(four(9) | (four(14) << 32));
    let (third, third_errors) = eight_hex_digits(four(19) | (four(24) << 32));
    let (fourth, fourth_errors) = eight_hex_digits(four(28) | (four(32) << 32));
    let hyphens = UUID_HYPHENS.iter().all(|&at| text[at] == b'-');
    if !hyphens || (first_errors | second_errors | third_errors | fourth_errors) != 0 {
        return None;
    }
    let high = (u64::from(first) << 32) | u64::from(second);
    let low = (u64::from(third) << 32) | u64::from(fourth);
    Some((u128::from(high) << 64) | u128::from(low))
}

/// Bytes of a word, each set to `byte`.
const fn each_byte(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The number eight lowercase hex digits write (the first, most
/// significant, in the word's lowest byte), with a word of errors that is
/// 0 exactly when every character is such a digit: all eight bytes checked
/// and decoded at once within the word.
fn eight_hex_digits(word: u64) -> (u32, u64) {
    const HIGH_BITS: u64 = each_byte(0x80);
    // Characters from 0x80 up are errors; the tests below look at the low
    // seven bits, so that no byte carries into the next.
    let ascii = word & each_byte(0x7f);
    // Adding 0x80 - lo to a byte below 0x80 sets its high bit exactly when
    // the byte is at least lo.
    let at_least = |lo: u8| ascii + each_byte(0x80 - lo);
    let digit = at_least(b'0') & !at_least(b'9' + 1) & HIGH_BITS;
    let letter = at_least(b'a') & !at_least(b'f' + 1) & HIGH_BITS;
    let errors = (word & HIGH_BITS) | ((digit | letter) ^ HIGH_BITS);
    // '0'–'9' end in their value; 'a'–'f' end in 1–6, nine short.
    let nibbles = (word & each_byte(0x0f)) + (letter >> 7) * 9;
    // Pairs of nibbles into bytes, pairs of bytes into 16 bits, then the
    // two halves: the first character ends up most significant.
    let bytes = ((nibbles & 0x000f_000f_000f_000f) << 4) | ((nibbles >> 8) & 0x000f_000f_000f_000f);
    let halves = ((bytes & 0x0000_00ff_0000_00ff) << 8) | ((bytes >> 16) & 0x0000_00ff_0000_00ff);
    let value = (((halves & 0xffff) << 16) | ((halves >> 32) & 0xffff)) as u32;
    (value, errors)
}

/// The physical optimizer rule: each grouping that only collects distinct
/// keys, whose last key is a string, becomes a [`DistinctKeysExec`] where it
/// sees whole keys.
#[derive(Debug, Default)]
pub struct DistinctKeysByCode;

impl PhysicalOptimizerRule for DistinctKeysByCode {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_bottom_up(plan, |node| {
            Ok(DistinctKeysExec::try_replace(node)
                .map(|replaced| Arc::new(replaced) as Arc<dyn ExecutionPlan>))
        })
    }

    fn name(&self) -> &str {
        "distinct_keys_by_code"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::memory_pool::{
        FairSpillPool, MemoryConsumer, MemoryPool, UnboundedMemoryPool,
    };
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    use sessionql_udfs::session_uuid::uuid_text;

    const LOWER: &str = "018cc527-e260-784e-8d07-b1e5af18a018";
    const UPPER: &str = "018CC527-E260-784E-8D07-B1E5AF18A018";

    #[test]
    fn canonical_uuids_are_numbers_and_other_texts_are_not() {
        assert_eq!(
            canonical_uuid(LOWER.as_bytes()),
            Some(0x018c_c527_e260_784e_8d07_b1e5_af18_a018)
        );
        assert_eq!(
            canonical_uuid(b"00000000-0000-0000-0000-000000000000"),
            Some(0)
        );
        assert_eq!(
            canonical_uuid(b"ffffffff-ffff-ffff-ffff-ffffffffffff"),
            Some(u128::MAX)
        );
        for other in [
            UPPER,
            "018cc527e260784e8d07b1e5af18a018",
            "018cc527-e260-784e-8d07-b1e5af18a01",
            "018cc527-e260-784e-8d07-b1e5af18a0188",
            "018cc527-e260-784e-8d07-b1e5af18a01g",
            "018cc527-e260-784e-8d07b-1e5af18a018",
            "018cc527-e260-784e-8d07-b1e5af18a0-8",
            "",
        ] {
            assert_eq!(canonical_uuid(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn a_uuid_written_as_session_ids_are_reads_back_as_its_number() {
        let mut bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        for _ in 0..1000 {
            assert_eq!(canonical_uuid(uuid_text(bits).as_bytes()), Some(bits));
            bits = bits
                .wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15)
                .wrapping_add(1);
        }
    }

    #[test]
    fn every_character_at_every_digit_is_checked() {
        // Each of the 256 byte values at each of the 32 digit places of a
        // canonical UUID: a number only for 0-9 and a-f, with that digit's
        // value at that place.
        let digit_places: Vec<usize> = (0..36).filter(|at| !UUID_HYPHENS.contains(at)).collect();
        for (index, &at) in digit_places.iter().enumerate() {
            for byte in 0..=255_u8 {
                let mut text = *b"00000000-0000-0000-0000-000000000000";
                text[at] = byte;
                let expected = match byte {
                    b'0'..=b'9' => Some(u128::from(byte - b'0')),
                    b'a'..=b'f' => Some(u128::from(byte - b'a' + 10)),
                    _ => None,
                }
                .map(|digit| digit << (4 * (31 - index)));
                assert_eq!(canonical_uuid(&text), expected, "byte {byte} at {at}");
            }
        }
    }

    fn key_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("page", DataType::Utf8, true),
            Field::new("id", DataType::Utf8, true),
        ]))
    }

    fn keys(rows: &[(Option<&str>, Option<&str>)]) -> RecordBatch {
        RecordBatch::try_new(
            key_schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|row| row.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|row| row.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// The (page, id) rows of `batches`, sorted.
    fn sorted_rows(batches: &[RecordBatch]) -> Vec<(Option<String>, Option<String>)> {
        let mut rows: Vec<_> = batches
            .iter()
            .flat_map(|batch| {
                let pages = batch.column(0).as_string::<i32>().clone();
                let ids = batch.column(1).as_string::<i32>().clone();
                (0..batch.num_rows()).map(move |row| {
                    let text = |strings: &datafusion::arrow::array::StringArray| {
                        strings.is_valid(row).then(|| strings.value(row).to_owned())
                    };
                    (text(&pages), text(&ids))
                })
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn each_key_comes_out_once() {
        // Batch 1: (a, lower), its repeat; (a, upper), another key; (null,
        // lower) another; (a, s-1) another. Batch 2: (a, s-1) repeats batch
        // 1's; (a, null) twice; (b, lower) new; (null, lower) and (a, lower)
        // repeat batch 1's.
        let input = vec![
            keys(&[
                (Some("a"), Some(LOWER)),
                (Some("a"), Some(LOWER)),
                (Some("a"), Some(UPPER)),
                (None, Some(LOWER)),
                (Some("a"), Some("s-1")),
            ]),
            keys(&[
                (Some("a"), Some("s-1")),
                (Some("a"), None),
                (Some("a"), None),
                (Some("b"), Some(LOWER)),
                (None, Some(LOWER)),
                (Some("a"), Some(LOWER)),
            ]),
        ];
        let key_exprs: Vec<Arc<dyn PhysicalExpr>> = vec![
            datafusion::physical_expr::expressions::col("page", &key_schema()).unwrap(),
            datafusion::physical_expr::expressions::col("id", &key_schema()).unwrap(),
        ];
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let reservation = MemoryConsumer::new("test").register(&pool);
        let mut gathered = GatheredCodes::new(&key_schema(), Gathering::WholeKeys).unwrap();
        for batch in &input {
            gathered.add(batch, &key_exprs, &reservation).unwrap();
        }
        assert!(reservation.size() >= CHUNK_BYTES, "{}", reservation.size());
        // Batches of two keys or more (a bucket's keys stay together).
        let baseline = BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0);
        let output: Vec<RecordBatch> =
            DistinctKeyBatches::new(gathered, key_schema(), 2, reservation, baseline)
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
        let (_, all_but_last) = output.split_last().unwrap();
        assert!(all_but_last.iter().all(|batch| batch.num_rows() >= 2));
        let text = |value: &str| Some(value.to_owned());
        assert_eq!(
            sorted_rows(&output),
            [
                (None, text(LOWER)),
                (text("a"), None),
                (text("a"), text(UPPER)),
                (text("a"), text(LOWER)),
                (text("a"), text("s-1")),
                (text("b"), text(LOWER)),
            ]
        );
    }

    /// 2,000 rows of (page, id, n) in two partitions of batches of 100:
    /// pages p0–p4 or null; ids among 50 UUIDs in lowercase, the same in
    /// capitals, 20 other strings, or null.
    pub(crate) fn mixed_keys(seed: u64) -> Vec<Vec<RecordBatch>> {
        let mut state = seed;
        let mut next = move |modulo: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % modulo
        };
        let uuids: Vec<String> = (0..50_u64)
            .map(|index| uuid_text(u128::from(index) * 0x0123_4567_89ab_cdef_0123_4567))
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("page", DataType::Utf8, true),
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        (0..2)
            .map(|_| {
                (0..10)
                    .map(|_| {
                        let mut pages = Vec::new();
                        let mut ids = Vec::new();
                        let mut numbers = Vec::new();
                        for _ in 0..100 {
                            // Short names, names longer than the 12 bytes a
                            // string view holds itself, and nulls.
                            let page = next(6);
                            pages.push(match page {
                                0..=2 => Some(format!("p{page}")),
                                3 | 4 => Some(format!("a-page-longer-than-a-view-{page}")),
                                _ => None,
                            });
                            let id = next(10);
                            let which = next(50) as usize;
                            ids.push(match id {
                                0..=4 => Some(uuids[which].clone()),
                                5 | 6 => Some(uuids[which].to_uppercase()),
                                7 | 8 => Some(format!("s-{}", which % 20)),
                                _ => None,
                            });
                            numbers.push(next(7) as i64);
                        }
                        RecordBatch::try_new(
                            Arc::clone(&schema),
                            vec![
                                Arc::new(StringArray::from(pages)),
                                Arc::new(StringArray::from(ids)),
                                Arc::new(Int64Array::from(numbers)),
                            ],
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    /// A session of two target partitions over `partitions` as table `t`,
    /// with `rules` after DataFusion's own physical optimizer rules, under
    /// a 64 MiB memory limit when `limited`: what the tests of sessionql's
    /// distinct-key operators compare DataFusion's own rows against.
    pub(crate) fn session_with_rules(
        partitions: &[Vec<RecordBatch>],
        rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
        limited: bool,
    ) -> SessionContext {
        let mut runtime = RuntimeEnvBuilder::new();
        if limited {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(64 * 1024 * 1024)));
        }
        let mut state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_runtime_env(runtime.build_arc().unwrap())
            .with_default_features();
        for rule in rules {
            state = state.with_physical_optimizer_rule(rule);
        }
        let context = SessionContext::new_with_state(state.build());
        let schema = partitions[0][0].schema();
        let table = MemTable::try_new(schema, partitions.to_vec()).unwrap();
        context.register_table("t", Arc::new(table)).unwrap();
        context
    }

    /// A session over `partitions` as table `t`: DataFusion's own, or with
    /// the rule, with or without a memory limit.
    fn context(partitions: &[Vec<RecordBatch>], with_rule: bool, limited: bool) -> SessionContext {
        let rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> = if with_rule {
            vec![Arc::new(DistinctKeysByCode)]
        } else {
            Vec::new()
        };
        session_with_rules(partitions, rules, limited)
    }

    pub(crate) async fn plan_and_rows(context: &SessionContext, sql: &str) -> (String, String) {
        let frame = context.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let plan = displayable(plan.as_ref()).indent(false).to_string();
        let rows = pretty_format_batches(&frame.collect().await.unwrap())
            .unwrap()
            .to_string();
        (plan, rows)
    }

    #[tokio::test]
    async fn distinct_keys_are_datafusions_with_or_without_a_memory_limit() {
        let partitions = mixed_keys(7);
        for sql in [
            "SELECT page, count(DISTINCT id) AS ids FROM t GROUP BY page ORDER BY page NULLS LAST",
            "SELECT DISTINCT page, id FROM t ORDER BY 1 NULLS LAST, 2 NULLS LAST",
            "SELECT count(DISTINCT id) FROM t",
            "SELECT n, page, count(DISTINCT id) FROM t GROUP BY 1, 2 ORDER BY 1, 2 NULLS LAST",
            "SELECT DISTINCT arrow_cast(id, 'Utf8View') AS id FROM t ORDER BY 1 NULLS LAST",
            "SELECT DISTINCT arrow_cast(id, 'LargeUtf8') AS id FROM t ORDER BY 1 NULLS LAST",
            // The other key as views: short names numbered by their views,
            // long ones and nulls by the group values.
            "SELECT arrow_cast(page, 'Utf8View') AS page, count(DISTINCT id) FROM t \
             GROUP BY 1 ORDER BY 1 NULLS LAST",
            "SELECT DISTINCT arrow_cast(page, 'Utf8View') AS page, arrow_cast(id, 'Utf8View') AS id \
             FROM t ORDER BY 1 NULLS LAST, 2 NULLS LAST",
            // Only short names: the group values number nothing.
            "SELECT arrow_cast(coalesce(substr(page, 1, 2), 'none'), 'Utf8View') AS page, \
             count(DISTINCT id) FROM t GROUP BY 1 ORDER BY 1",
        ] {
            let (_, expected) = plan_and_rows(&context(&partitions, false, false), sql).await;
            let (plan, rows) = plan_and_rows(&context(&partitions, true, false), sql).await;
            assert!(plan.contains("DistinctKeysExec"), "{sql}\n{plan}");
            assert_eq!(rows, expected, "{sql}");
            // Under a memory limit the replaced grouping runs.
            let (_, rows) = plan_and_rows(&context(&partitions, true, true), sql).await;
            assert_eq!(rows, expected, "{sql}, memory limited");
        }
    }

    #[tokio::test]
    async fn groupings_with_aggregates_limits_or_other_last_keys_are_left_alone() {
        let context = context(&mixed_keys(3), true, false);
        for sql in [
            "SELECT page, id, count(*) FROM t GROUP BY 1, 2",
            "SELECT DISTINCT id, n FROM t",
            "SELECT DISTINCT id FROM t LIMIT 3",
        ] {
            let (plan, _) = plan_and_rows(&context, sql).await;
            assert!(!plan.contains("DistinctKeysExec"), "{sql}\n{plan}");
        }
    }
}
