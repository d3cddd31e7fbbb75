//! Repeats of a grouping key dropped before a `GROUP BY` that only collects
//! distinct keys.
//!
//! `count(DISTINCT session_id) … GROUP BY event` is planned by DataFusion as
//! a grouping by (`event`, `session_id`) with no aggregate, then a count per
//! event. Over `session_events` the grouping's first phase would keep 39% of
//! its rows, above the share at which a local session skips that phase
//! (`engine::LOCAL_PARTIAL_AGGREGATION_SKIP_RATIO`), so nearly every event
//! reached the final hash table: at 10M events, 8.7M rows for 3.8M distinct
//! pairs, each one hashed, shuffled and looked up in a table far larger than
//! the processor's caches. Yet a session's events arrive together (events
//! are read in user and time order), so a pair's repeats are mostly a few
//! rows apart.
//!
//! [`DropRepeatedKeysExec`] drops a row whose key equals that of a recent row
//! of the same batch, found through a small table of recent keys that stays
//! in the first-level cache. Dropping repeats cannot change a grouping
//! without aggregates (it only collects the distinct keys); a repeat the
//! small table misses is kept and removed by the grouping, as before. On
//! input in no useful order the operator notices within its first rows that
//! it drops little and passes batches through untouched.
//!
//! The rule places it below the first phase of each grouping without
//! aggregates and without a limit (which ends the grouping early). Where
//! such a grouping only feeds a distinct count over a shuffle (query 6),
//! `unshuffled_distinct_counts` later takes its place, dropping repeats of
//! the keys' codes as it reads them. It is a local engine rule: a Ballista
//! cluster plans with its own rules, and this operator has no wire form.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DynComparator, GenericByteArray, make_comparator,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use datafusion::arrow::compute::{SortOptions, filter_record_batch};
use datafusion::arrow::datatypes::{ByteArrayType, DataType, GenericStringType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{
    ChildrenPropertiesMode, ReplaceChildrenOptions, apply_expression_roots,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use crate::plan_rewrite::rewrite_bottom_up;

/// Slots of the table of recent keys: each holds the row of the last key
/// that hashed to it. 1024 slots (12 KiB) stay in the first-level cache and
/// span far more than a session's few distinct pairs.
const RECENT_KEY_SLOTS: usize = 1024;

/// Rows a stream looks at before it judges whether dropping pays.
const PROBE_ROWS: usize = 100_000;

/// Below this share of dropped rows after [`PROBE_ROWS`], a stream stops
/// looking for repeats: hashing every key would cost more than the few rows
/// it saves the grouping.
const MIN_DROPPED_SHARE: f64 = 0.1;

/// Passes its input through without rows whose `keys` repeat those of a
/// recent row of the same batch; see the module documentation.
#[derive(Debug)]
pub struct DropRepeatedKeysExec {
    input: Arc<dyn ExecutionPlan>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    metrics: ExecutionPlanMetricsSet,
}

impl DropRepeatedKeysExec {
    /// Drops repeats of `keys` (expressions over `input`'s schema).
    pub fn new(input: Arc<dyn ExecutionPlan>, keys: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        Self {
            input,
            keys,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DropRepeatedKeysExec {
    /// The rows whose repeats are dropped.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for DropRepeatedKeysExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|key| key.to_string()).collect();
        write!(f, "DropRepeatedKeysExec: keys=[{}]", keys.join(", "))
    }
}

impl ExecutionPlan for DropRepeatedKeysExec {
    fn name(&self) -> &str {
        "DropRepeatedKeysExec"
    }

    /// The input's: rows are only removed, never moved between partitions or
    /// reordered.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
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
        let input = children.swap_remove(0);
        Ok(Arc::new(Self::new(input, self.keys.clone())))
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
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let mut dropper = RepeatDropper {
            keys: self.keys.clone(),
            recent: RecentKeys::new(),
            rows_seen: 0,
            rows_dropped: 0,
            passing_through: false,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            dropped_rows: MetricBuilder::new(&self.metrics).counter("dropped_rows", partition),
        };
        let output = input.map(move |batch| dropper.drop_repeats(batch?));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's state: the table of recent keys and what it has dropped.
struct RepeatDropper {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    recent: RecentKeys,
    rows_seen: usize,
    rows_dropped: usize,
    /// Set once the probe found too few repeats: batches go through as they
    /// are.
    passing_through: bool,
    baseline: BaselineMetrics,
    dropped_rows: Count,
}

impl RepeatDropper {
    fn drop_repeats(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        if self.passing_through || batch.num_rows() == 0 {
            return Ok(batch);
        }
        let timer = self.baseline.elapsed_compute().timer();
        let keys = self
            .keys
            .iter()
            .map(|key| key.evaluate(&batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        self.rows_seen += batch.num_rows();
        let kept = match self.recent.kept_rows(&keys)? {
            Some((kept, dropped)) => {
                self.rows_dropped += dropped;
                self.dropped_rows.add(dropped);
                filter_record_batch(&batch, &kept)?
            }
            None => batch,
        };
        if self.rows_seen >= PROBE_ROWS
            && (self.rows_dropped as f64) < MIN_DROPPED_SHARE * self.rows_seen as f64
        {
            self.passing_through = true;
        }
        timer.done();
        self.baseline.record_output(kept.num_rows());
        Ok(kept)
    }
}

/// A direct-mapped table from a key's hash to the last row of the batch with
/// that hash; reset for each batch, as rows are indexes into it.
struct RecentKeys {
    hashes: Vec<u64>,
    /// Row + 1 of the key last stored in each slot; 0 for an empty slot.
    slot_rows: Vec<u32>,
    slot_hashes: Vec<u64>,
    random_state: RandomState,
}

impl RecentKeys {
    fn new() -> Self {
        Self {
            hashes: Vec::new(),
            slot_rows: vec![0; RECENT_KEY_SLOTS],
            slot_hashes: vec![0; RECENT_KEY_SLOTS],
            random_state: RandomState::default(),
        }
    }

    /// The mask of rows to keep and how many are dropped, or `None` when no
    /// row repeats a recent one (or the key types cannot be compared).
    fn kept_rows(&mut self, keys: &[ArrayRef]) -> Result<Option<(BooleanArray, usize)>> {
        // Slots hold row + 1 as a `u32`.
        let Some(rows) = keys
            .first()
            .map(|key| key.len())
            .filter(|rows| *rows < u32::MAX as usize)
        else {
            return Ok(None);
        };
        self.slot_rows.fill(0);
        // Bit `row` of the mask, 64 rows a word; dropped rows are cleared.
        let mut kept_words = vec![u64::MAX; rows.div_ceil(64)];
        let views: Option<Vec<ViewKey>> = keys.iter().map(ViewKey::of).collect();
        let dropped = match views {
            Some(views) => self.drop_view_repeats(&views, rows, &mut kept_words),
            None => {
                let Some(comparators) = keys
                    .iter()
                    .map(KeyEquality::of)
                    .collect::<Option<Vec<KeyEquality>>>()
                else {
                    return Ok(None);
                };
                let mut hashes = std::mem::take(&mut self.hashes);
                hashes.clear();
                hashes.resize(rows, 0);
                create_hashes(keys, &self.random_state, &mut hashes)?;
                let mut dropped = 0;
                for (row, &hash) in hashes.iter().enumerate() {
                    let repeats = self.repeats(hash, row, |earlier| {
                        comparators.iter().all(|key| key.equal(earlier, row))
                    });
                    if repeats {
                        dropped += 1;
                        kept_words[row / 64] &= !(1 << (row % 64));
                    }
                }
                self.hashes = hashes;
                dropped
            }
        };
        if dropped == 0 {
            return Ok(None);
        }
        let kept = BooleanBuffer::new(Buffer::from_vec(kept_words), 0, rows);
        Ok(Some((BooleanArray::new(kept, None), dropped)))
    }

    /// Whether the row with `hash` repeats the last row stored in its slot
    /// (`equal` tells, given that row); if not, the row takes the slot.
    fn repeats(&mut self, hash: u64, row: usize, equal: impl Fn(usize) -> bool) -> bool {
        let slot = hash as usize % RECENT_KEY_SLOTS;
        let earlier = self.slot_rows[slot];
        if earlier != 0 && self.slot_hashes[slot] == hash && equal(earlier as usize - 1) {
            return true;
        }
        self.slot_rows[slot] = row as u32 + 1;
        self.slot_hashes[slot] = hash;
        false
    }

    /// [`RecentKeys::kept_rows`] for keys that are all string views (the
    /// usual: `event` and `session_id` are read as views): each row hashed,
    /// looked up and compared straight from its views, in one pass. Clears
    /// the bits of dropped rows and returns how many.
    fn drop_view_repeats(
        &mut self,
        keys: &[ViewKey],
        rows: usize,
        kept_words: &mut [u64],
    ) -> usize {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut dropped = 0;
        for row in 0..rows {
            let mut hash = 0_u64;
            for key in keys {
                let sample = key.sample(row);
                let folded = (sample as u64) ^ ((sample >> 64) as u64).rotate_left(31);
                hash = (hash.rotate_left(23) ^ folded).wrapping_mul(GOLDEN);
            }
            // The slot is taken from the low bits, which a multiplication
            // leaves weakest: fold the high half in.
            hash ^= hash >> 32;
            if self.repeats(hash, row, |earlier| {
                keys.iter().all(|key| key.equal(earlier, row))
            }) {
                dropped += 1;
                kept_words[row / 64] &= !(1 << (row % 64));
            }
        }
        dropped
    }
}

/// A key column of string views, read straight from its views, buffers
/// and nulls.
struct ViewKey<'a> {
    views: &'a [u128],
    buffers: &'a [Buffer],
    nulls: Option<&'a NullBuffer>,
}

impl<'a> ViewKey<'a> {
    /// `None` unless `key` holds string views.
    fn of(key: &'a ArrayRef) -> Option<Self> {
        let strings = key.as_string_view_opt()?;
        Some(Self {
            views: strings.views(),
            buffers: strings.data_buffers(),
            // Without nulls, no row needs its validity bit read.
            nulls: strings.nulls().filter(|nulls| nulls.null_count() > 0),
        })
    }

    #[inline]
    fn is_null(&self, row: usize) -> bool {
        self.nulls.is_some_and(|nulls| nulls.is_null(row))
    }

    /// The bytes of a string longer than a view holds.
    #[inline]
    fn long_bytes(&self, view: u128) -> &'a [u8] {
        // A long string's view: length, prefix, buffer index, offset.
        let length = view as u32 as usize;
        let buffer = (view >> 64) as u32 as usize;
        let offset = (view >> 96) as u32 as usize;
        &self.buffers[buffer].as_slice()[offset..offset + length]
    }

    /// What a row is hashed from. A string of up to 12 bytes lies whole in
    /// its view; a longer one is sampled by its length, its first 4 bytes
    /// (both in the view) and its last 8. Equal strings hash alike, so no
    /// repeat is missed, and a session id (UUIDv7: time first, random bits
    /// last) is told apart by its sample; at 1M events the operator ran 17%
    /// fewer instructions than with DataFusion's hash of every byte of the
    /// 36-byte ids.
    #[inline]
    fn sample(&self, row: usize) -> u128 {
        let view = self.views[row];
        if self.is_null(row) {
            // A null's view may hold anything: all nulls hash alike.
            0
        } else if view as u32 <= 12 {
            view
        } else {
            let text = self.long_bytes(view);
            let mut last = [0_u8; 8];
            last.copy_from_slice(&text[text.len() - 8..]);
            // The low 64 bits of a long string's view: length and prefix.
            (view & u128::from(u64::MAX)) | (u128::from(u64::from_le_bytes(last)) << 64)
        }
    }

    /// Equality of two rows as a grouping sees it (nulls equal nulls).
    /// Equal views are equal strings (the same inline bytes, or the same
    /// length, prefix and place in the same buffer): values read from one
    /// Parquet dictionary page compare so, without touching their bytes.
    /// Long strings of equal length and prefix compare their bytes.
    #[inline]
    fn equal(&self, left: usize, right: usize) -> bool {
        match (self.is_null(left), self.is_null(right)) {
            (false, false) => {
                let (left_view, right_view) = (self.views[left], self.views[right]);
                left_view == right_view
                    || (left_view as u64 == right_view as u64
                        && left_view as u32 > 12
                        && self.long_bytes(left_view) == self.long_bytes(right_view))
            }
            (true, true) => true,
            _ => false,
        }
    }
}

/// Whether two rows of one key column are equal, as a grouping sees them:
/// nulls equal nulls. Strings, the usual keys, are compared directly; other
/// types through arrow's comparator (a dynamic call per row).
enum KeyEquality<'a> {
    Utf8(&'a GenericByteArray<GenericStringType<i32>>),
    LargeUtf8(&'a GenericByteArray<GenericStringType<i64>>),
    Utf8View(ViewKey<'a>),
    Other(DynComparator),
}

impl<'a> KeyEquality<'a> {
    /// `None` when arrow cannot compare the column's type.
    fn of(key: &'a ArrayRef) -> Option<Self> {
        Some(match key.data_type() {
            DataType::Utf8 => Self::Utf8(key.as_string::<i32>()),
            DataType::LargeUtf8 => Self::LargeUtf8(key.as_string::<i64>()),
            DataType::Utf8View => Self::Utf8View(ViewKey::of(key)?),
            _ => Self::Other(
                make_comparator(key.as_ref(), key.as_ref(), SortOptions::default()).ok()?,
            ),
        })
    }

    fn equal(&self, left: usize, right: usize) -> bool {
        match self {
            Self::Utf8(strings) => same_bytes(strings, left, right),
            Self::LargeUtf8(strings) => same_bytes(strings, left, right),
            Self::Utf8View(strings) => strings.equal(left, right),
            Self::Other(compare) => compare(left, right).is_eq(),
        }
    }
}

fn same_bytes<T: ByteArrayType>(array: &GenericByteArray<T>, left: usize, right: usize) -> bool {
    match (array.is_null(left), array.is_null(right)) {
        (false, false) => {
            let left: &[u8] = array.value(left).as_ref();
            let right: &[u8] = array.value(right).as_ref();
            left == right
        }
        (true, true) => true,
        _ => false,
    }
}

/// The physical optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct DropRepeatedKeys;

impl PhysicalOptimizerRule for DropRepeatedKeys {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_bottom_up(plan, with_repeats_dropped)
    }

    fn name(&self) -> &str {
        "drop_repeated_keys"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A first-phase grouping with no aggregates and no limit, over its input
/// with repeats of its keys dropped; `None` for any other node.
fn with_repeats_dropped(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(grouping) = node.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    let first_phase = matches!(
        grouping.mode(),
        AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
    );
    // A grouping with a limit stops after a few groups: hashing every row
    // ahead of it would cost more than it saves.
    if !first_phase
        || grouping.limit_options().is_some()
        || !grouping.aggr_expr().is_empty()
        || !grouping.group_expr().is_single()
        || grouping.group_expr().is_empty()
        || grouping.input().is::<DropRepeatedKeysExec>()
    {
        return Ok(None);
    }
    let dropper = DropRepeatedKeysExec::new(
        Arc::clone(grouping.input()),
        grouping.group_expr().input_exprs(),
    );
    let rewritten = Arc::clone(node).replace_children(
        vec![Arc::new(dropper)],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )?;
    Ok(Some(rewritten))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::arrow::array::{Int64Array, StringArray, StringViewBuilder};

    use super::*;

    fn kept(keys: Vec<ArrayRef>) -> Vec<bool> {
        let rows = keys[0].len();
        match RecentKeys::new().kept_rows(&keys).unwrap() {
            Some((mask, dropped)) => {
                let kept: Vec<bool> = (0..rows).map(|row| mask.value(row)).collect();
                assert_eq!(dropped, kept.iter().filter(|keep| !**keep).count());
                kept
            }
            None => vec![true; rows],
        }
    }

    #[test]
    fn a_row_whose_key_came_before_in_the_batch_is_dropped() {
        // (event, session): rows 2, 4 and 6 repeat rows 0, 3 and 0; a null
        // event equals a null event; (a, s2) differs from (a, s1) in its
        // second column only.
        let events: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            Some("b"),
            Some("a"),
            None,
            None,
            Some("a"),
            Some("a"),
        ]));
        let sessions: ArrayRef = Arc::new(StringArray::from(vec![
            "s1", "s1", "s1", "s1", "s1", "s2", "s1",
        ]));
        assert_eq!(
            kept(vec![events, sessions]),
            [true, true, false, true, false, true, false]
        );
    }

    #[test]
    fn string_views_are_compared_by_their_text() {
        // A text longer than 12 bytes (each copy at its own place of small
        // buffers, so equal texts have unequal views), a short one (held in
        // the view), nulls, and a long text differing in its last byte:
        // rows 1, 3, 4 and 6 repeat rows 0, 2, 0 and 5.
        let long = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let mut builder = StringViewBuilder::new().with_fixed_block_size(64);
        for text in [Some(long), Some(long), Some("pageview"), Some("pageview")] {
            builder.append_option(text);
        }
        builder.append_value(long);
        builder.append_null();
        builder.append_null();
        builder.append_value("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c");
        // Same length, first four and last eight bytes as `long` (so the
        // same hash), another middle: not a repeat.
        builder.append_value("0193a1b2-c3d4-7e5f-ffff-0c1d2e3f4a5b");
        let views: ArrayRef = Arc::new(builder.finish());
        assert_eq!(
            kept(vec![views]),
            [true, false, true, false, false, true, false, true, true]
        );
    }

    #[test]
    fn keys_of_other_types_are_compared_by_value() {
        // 7, 7, null, 8, null, 7: the second 7, the second null and the
        // last 7 repeat.
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(7),
            Some(7),
            None,
            Some(8),
            None,
            Some(7),
        ]));
        assert_eq!(kept(vec![numbers]), [true, false, true, true, false, false]);
    }

    #[test]
    fn views_beside_keys_of_other_types_are_compared_by_their_text() {
        // (long, 1), (long, 1) at another place, (long, 2), (short, 1),
        // (short, 1): rows 1 and 4 repeat rows 0 and 3.
        let long = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let mut builder = StringViewBuilder::new().with_fixed_block_size(64);
        for text in [long, long, long, "pageview", "pageview"] {
            builder.append_value(text);
        }
        let views: ArrayRef = Arc::new(builder.finish());
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 2, 1, 1]));
        assert_eq!(kept(vec![views, numbers]), [true, false, true, true, false]);
    }

    #[test]
    fn a_batch_without_repeats_is_passed_as_it_is() {
        let words: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "z"]));
        assert!(RecentKeys::new().kept_rows(&[words]).unwrap().is_none());
    }
}
