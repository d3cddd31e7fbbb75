//! The last phase of a grouping that only collects distinct keys, done as a
//! filter that passes on the first row of each key.
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
//! 128-bit number and nothing else. [`DistinctKeysExec`] holds a
//! partition's rows and codes each row's key in 24 bytes: the other key
//! columns as a group number (through DataFusion's own group values, which
//! stay small for a breakdown like `event`; a single other column of string
//! views numbers its strings of up to 12 bytes by the view, which holds them
//! whole), the last column as its UUID's
//! number, or, for a value that is not a canonical UUID, as a number through
//! DataFusion's group values too. The first row of each code passes on, in
//! input order, once the partition is read; no string is copied but by that
//! filter.
//!
//! The rule replaces a grouping with no aggregates whose last key is a
//! string, in any phase that sees whole keys (final, or single over
//! partitions that hold whole keys), in hash order (no ordered grouping),
//! and with no limit. Under a memory limit the operator runs the grouping it
//! replaced, which spills. It is a local engine rule (a Ballista cluster
//! plans with its own rules, and this operator has no wire form).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, StringViewArray,
    UInt32Array,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{HashMap, HashSet, exec_err};
use datafusion::error::Result;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
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
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

use crate::plan_rewrite::rewrite_bottom_up;
use crate::whole_partition::{transform_whole_partition, unlimited_reservation};

/// Passes on the first row of each distinct key of its input, each key's
/// rows being in one partition, with the key columns as the replaced
/// grouping outputs them; see the module documentation.
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

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
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
        let input = self.grouping.input().execute(partition, context)?;
        let schema = self.schema();
        let keys = self.keys.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let output_schema = Arc::clone(&schema);
        Ok(transform_whole_partition(
            input,
            schema,
            reservation,
            baseline,
            move |batches, reservation| {
                first_rows_of_keys(batches, &keys, &output_schema, reservation)
            },
        ))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// The key columns (`schema`) of the rows of one partition whose keys no
/// earlier row had, in input order.
///
/// Each row's key becomes a [`KeyCode`]. The codes are then spread over
/// [`CODE_BUCKETS`] buckets by a hash of their own (a counting sort of row
/// numbers, which keeps each bucket's rows in order), and each bucket's
/// codes go through a hash set small enough to stay in the processor's
/// caches: one set of all codes, far larger than the caches, cost a cache
/// miss or two for nearly every row.
fn first_rows_of_keys(
    batches: Vec<RecordBatch>,
    keys: &[Arc<dyn PhysicalExpr>],
    schema: &SchemaRef,
    reservation: &MemoryReservation,
) -> Result<Vec<RecordBatch>> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if u32::try_from(total).is_err() {
        return exec_err!(
            "DistinctKeysExec: {total} rows in one partition, more than it can index"
        );
    }
    let mut coder = KeyCoder::new(schema)?;
    let mut codes: Vec<KeyCode> = Vec::with_capacity(total);
    reservation.try_grow(total * size_of::<KeyCode>())?;
    let mut key_batches = Vec::with_capacity(batches.len());
    for batch in batches {
        let rows = batch.num_rows();
        let key_columns = keys
            .iter()
            .map(|key| key.evaluate(&batch)?.into_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        coder.append_codes(&key_columns, &mut codes)?;
        key_batches.push(RecordBatch::try_new(Arc::clone(schema), key_columns)?);
    }
    reservation.try_grow(coder.size())?;
    let first = first_occurrences(codes);
    let mut offset = 0;
    key_batches
        .into_iter()
        .map(|batch| {
            let rows = batch.num_rows();
            let kept = BooleanArray::new(first.slice(offset, rows), None);
            offset += rows;
            Ok(filter_record_batch(&batch, &kept)?)
        })
        .collect()
}

/// Buckets the codes are spread over before each bucket's duplicates are
/// found: at 2M rows a partition, 2K codes (48 KiB) a bucket.
const CODE_BUCKETS: usize = 1024;

/// Which rows' codes appear for the first time, as a bitmap over `codes`.
fn first_occurrences(codes: Vec<KeyCode>) -> BooleanBuffer {
    let rows = codes.len();
    let mut bounds = vec![0_u32; CODE_BUCKETS + 1];
    for code in &codes {
        bounds[code.bucket() + 1] += 1;
    }
    for bucket in 0..CODE_BUCKETS {
        bounds[bucket + 1] += bounds[bucket];
    }
    // Each code with its row, placed in its bucket (a counting sort, so a
    // bucket's rows stay in order): the sets below then read their codes
    // in sequence, not from all over the partition.
    let mut next_slot = bounds.clone();
    let mut codes_by_bucket = vec![(KeyCode::default(), 0_u32); rows];
    for (row, code) in codes.into_iter().enumerate() {
        let slot = &mut next_slot[code.bucket()];
        codes_by_bucket[*slot as usize] = (code, row as u32);
        *slot += 1;
    }
    let mut first = BooleanBufferBuilder::new(rows);
    first.append_n(rows, false);
    let mut seen: HashSet<KeyCode> = HashSet::default();
    for bucket in bounds.windows(2) {
        seen.clear();
        for (code, row) in &codes_by_bucket[bucket[0] as usize..bucket[1] as usize] {
            if seen.insert(*code) {
                first.set_bit(*row as usize, true);
            }
        }
    }
    first.finish()
}

/// A row's key as 24 bytes, whatever its strings: two keys are equal
/// exactly when their codes are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyCode {
    /// The group number of the key's other columns (0 when there are none).
    others: u32,
    /// What the last column holds: [`LAST_IS_UUID`], [`LAST_IS_NULL`], or
    /// [`FIRST_STRING_NUMBER`] plus the group number of a string that is not
    /// a canonical UUID.
    last_kind: u32,
    /// The UUID's 128 bits, when the last column holds one (else 0).
    uuid_high: u64,
    uuid_low: u64,
}

impl KeyCode {
    /// Which of [`CODE_BUCKETS`] the code goes to: the top bits of a
    /// multiplicative hash, independent of the hash set's own hash (codes of
    /// one bucket must not crowd its set's slots).
    fn bucket(&self) -> usize {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let mixed = (self.uuid_low ^ self.uuid_high.rotate_left(29))
            .wrapping_add((u64::from(self.others) << 32) | u64::from(self.last_kind))
            .wrapping_mul(GOLDEN);
        (mixed >> (64 - CODE_BUCKETS.trailing_zeros())) as usize
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

/// Turns keys into [`KeyCode`]s: numbers, through DataFusion's group
/// values (or, for short strings of a single other column of views, a map
/// by view), the parts of keys that are not UUIDs.
struct KeyCoder {
    /// Numbers the key's columns before the last; `None` for a single key.
    other_columns: Option<Box<dyn GroupValues>>,
    /// Numbers the last column's strings that are not canonical UUIDs.
    other_strings: Box<dyn GroupValues>,
    /// Numbers of the short strings of a single other key column of views,
    /// by view (see [`number_short_views`]).
    short_views: HashMap<u128, u32>,
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
            short_views: HashMap::default(),
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
            + self.short_views.capacity() * (size_of::<u128>() + size_of::<u32>() + 1)
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
            DataType::Utf8 => self.code_strings(last.as_string::<i32>().iter(), codes)?,
            DataType::LargeUtf8 => self.code_strings(last.as_string::<i64>().iter(), codes)?,
            DataType::Utf8View => self.code_strings(last.as_string_view().iter(), codes)?,
            other => return exec_err!("DistinctKeysExec: last key of type {other}"),
        }
        let batch_codes = &mut codes[first..];
        if !self.string_rows.is_empty() {
            let rows_taken = UInt32Array::from_iter_values(self.string_rows.iter().copied());
            let strings = take(last.as_ref(), &rows_taken, None)?;
            self.other_strings
                .intern(&[strings], &mut self.string_groups)?;
            for (&row, &group) in self.string_rows.iter().zip(&self.string_groups) {
                let Some(last_kind) = group_number(group)?.checked_add(FIRST_STRING_NUMBER) else {
                    return exec_err!("DistinctKeysExec: too many distinct keys to number");
                };
                batch_codes[row as usize].last_kind = last_kind;
            }
        }
        let Some(other_columns) = &mut self.other_columns else {
            return Ok(());
        };
        match others {
            [strings] if strings.data_type() == &DataType::Utf8View => {
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
    fn code_strings<'a>(
        &mut self,
        values: impl Iterator<Item = Option<&'a str>>,
        codes: &mut Vec<KeyCode>,
    ) -> Result<()> {
        for (row, value) in values.enumerate() {
            let code = match value {
                None => KeyCode::of_last(LAST_IS_NULL, 0),
                Some(text) => match canonical_uuid(text.as_bytes()) {
                    Some(uuid) => KeyCode::of_last(LAST_IS_UUID, uuid),
                    None => {
                        let Ok(row) = u32::try_from(row) else {
                            return exec_err!("DistinctKeysExec: a batch of over 2^32 rows");
                        };
                        self.string_rows.push(row);
                        KeyCode::of_last(FIRST_STRING_NUMBER, 0)
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
    short_views: &mut HashMap<u128, u32>,
    other_rows: &mut Vec<u32>,
    strings: &StringViewArray,
    codes: &mut [KeyCode],
) -> Result<()> {
    other_rows.clear();
    for (row, (code, &view)) in codes.iter_mut().zip(strings.views()).enumerate() {
        // The low 32 bits of a view are its string's length.
        if strings.is_valid(row) && view as u32 <= 12 {
            let next = short_views.len();
            let number = *short_views.entry(view).or_insert(next as u32);
            if number >= LONG_VIEW_NUMBER {
                return exec_err!("DistinctKeysExec: too many distinct keys to number");
            }
            code.others = number;
        } else {
            let Ok(row) = u32::try_from(row) else {
                return exec_err!("DistinctKeysExec: a batch of over 2^32 rows");
            };
            other_rows.push(row);
        }
    }
    Ok(())
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
    if UUID_HYPHENS.iter().any(|&at| text[at] != b'-') {
        return None;
    }
    let four = |at: usize| {
        u64::from(u32::from_le_bytes([
            text[at],
            text[at + 1],
            text[at + 2],
            text[at + 3],
        ]))
    };
    // The 32 digits as four words of eight characters, the first character
    // in the lowest byte.
    let words = [
        four(0) | (four(4) << 32),
        four(9) | (four(14) << 32),
        four(19) | (four(24) << 32),
        four(28) | (four(32) << 32),
    ];
    let [first, second, third, fourth] = words.map(eight_hex_digits);
    let high = (u64::from(first?) << 32) | u64::from(second?);
    let low = (u64::from(third?) << 32) | u64::from(fourth?);
    Some((u128::from(high) << 64) | u128::from(low))
}

/// Bytes of a word, each set to `byte`.
const fn each_byte(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The number eight lowercase hex digits write (the first, most
/// significant, in the word's lowest byte), or `None` if any character is
/// not one: all eight bytes checked and decoded at once within the word.
fn eight_hex_digits(word: u64) -> Option<u32> {
    const HIGH_BITS: u64 = each_byte(0x80);
    if word & HIGH_BITS != 0 {
        return None;
    }
    // Adding 0x80 - lo to a byte below 0x80 sets its high bit exactly when
    // the byte is at least lo, and carries into no other byte.
    let at_least = |lo: u8| word + each_byte(0x80 - lo);
    let digit = at_least(b'0') & !at_least(b'9' + 1) & HIGH_BITS;
    let letter = at_least(b'a') & !at_least(b'f' + 1) & HIGH_BITS;
    if (digit | letter) != HIGH_BITS {
        return None;
    }
    // '0'–'9' end in their value; 'a'–'f' end in 1–6, nine short.
    let nibbles = (word & each_byte(0x0f)) + (letter >> 7) * 9;
    // Pairs of nibbles into bytes, pairs of bytes into 16 bits, then the
    // two halves: the first character ends up most significant.
    let bytes = ((nibbles & 0x000f_000f_000f_000f) << 4) | ((nibbles >> 8) & 0x000f_000f_000f_000f);
    let halves = ((bytes & 0x0000_00ff_0000_00ff) << 8) | ((bytes >> 16) & 0x0000_00ff_0000_00ff);
    Some((((halves & 0xffff) << 16) | ((halves >> 32) & 0xffff)) as u32)
}

/// The physical optimizer rule: each grouping that only collects distinct
/// keys, whose last key is a string, becomes a [`DistinctKeysExec`] where it
/// sees whole keys.
#[derive(Debug, Default)]
pub struct DistinctKeysAsFilter;

impl PhysicalOptimizerRule for DistinctKeysAsFilter {
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
        "distinct_keys_as_filter"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn the_first_row_of_each_key_passes_in_input_order() {
        // Batch 1: (a, lower) passes, its repeat does not; (a, upper) is
        // another key; (null, lower) another; (a, s-1) another. Batch 2:
        // (a, s-1) repeats batch 1's; (a, null) passes once; (b, lower)
        // passes; (null, lower) and (a, lower) repeat batch 1's.
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
        let output = first_rows_of_keys(input, &key_exprs, &key_schema(), &reservation).unwrap();
        assert_eq!(
            output,
            [
                keys(&[
                    (Some("a"), Some(LOWER)),
                    (Some("a"), Some(UPPER)),
                    (None, Some(LOWER)),
                    (Some("a"), Some("s-1")),
                ]),
                keys(&[(Some("a"), None), (Some("b"), Some(LOWER))]),
            ]
        );
        assert!(reservation.size() > 0);
    }

    /// 2,000 rows of (page, id, n) in two partitions of batches of 100:
    /// pages p0–p4 or null; ids among 50 UUIDs in lowercase, the same in
    /// capitals, 20 other strings, or null.
    fn mixed_keys(seed: u64) -> Vec<Vec<RecordBatch>> {
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

    /// A session over `partitions` as table `t`: DataFusion's own, or with
    /// the rule, with or without a memory limit.
    fn context(partitions: &[Vec<RecordBatch>], with_rule: bool, limited: bool) -> SessionContext {
        let mut runtime = RuntimeEnvBuilder::new();
        if limited {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(64 * 1024 * 1024)));
        }
        let mut state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_runtime_env(runtime.build_arc().unwrap())
            .with_default_features();
        if with_rule {
            state = state.with_physical_optimizer_rule(Arc::new(DistinctKeysAsFilter));
        }
        let context = SessionContext::new_with_state(state.build());
        let schema = partitions[0][0].schema();
        let table = MemTable::try_new(schema, partitions.to_vec()).unwrap();
        context.register_table("t", Arc::new(table)).unwrap();
        context
    }

    async fn plan_and_rows(context: &SessionContext, sql: &str) -> (String, String) {
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
