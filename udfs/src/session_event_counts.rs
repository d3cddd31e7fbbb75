//! `session_event_counts(uuid, event)`: the four event counts of spec §2 in one
//! aggregate: distinct uuids of `$pageview`, `$autocapture` and `$screen`
//! events, and of all events, as a struct with the fields `pageview_count`,
//! `autocapture_count`, `screen_count` and `event_count`.
//!
//! The same as four `count_distinct_where(uuid, …)` calls, for a quarter of the
//! work: each row's uuid is hashed once and kept once per group, with its event
//! kind in the hash's two lowest bits. A uuid seen under two event names counts
//! once in `event_count` and once in each kind, as the four calls would count
//! it. Two uuids of one session colliding in the other 62 bits is the only way
//! to miscount.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::cast::as_string_array;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
};

use crate::args::{SESSIONQL_DOC_SECTION, coerce_to_utf8, documented_signature, is_true};
use crate::count_distinct_where::{HASH_SEED, for_each_hash_in_state, hashes_to_list};
use crate::dedup_groups::Taken;
use crate::distinct_where::{DistinctGroups, DistinctKind, SingleDistinct};
use crate::stable_hash::stable_hash64_words;

const NAME: &str = "session_event_counts";

/// The struct's fields: one per counted [`EventKind`], at its number, then
/// the count of all events.
const COUNT_FIELDS: [&str; 4] = [
    "pageview_count",
    "autocapture_count",
    "screen_count",
    "event_count",
];

/// The two low bits of a kept hash: which event name the row had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum EventKind {
    Pageview = 0,
    Autocapture = 1,
    Screen = 2,
    Other = 3,
}

impl EventKind {
    fn of(event: Option<&str>) -> Self {
        match event {
            Some("$pageview") => Self::Pageview,
            Some("$autocapture") => Self::Autocapture,
            Some("$screen") => Self::Screen,
            _ => Self::Other,
        }
    }
}

/// The bits of a kept value that hold its [`EventKind`].
const KIND_BITS: u64 = 0b11;

/// Position of `event_count` in [`COUNT_FIELDS`].
const EVENT_COUNT: usize = 3;

/// The kept form of one row: its uuid's hash with the event kind in the low bits.
fn keep(uuid: &str, event: Option<&str>) -> u64 {
    (stable_hash64_words(HASH_SEED, uuid.as_bytes()) & !KIND_BITS) | EventKind::of(event) as u64
}

/// The `session_event_counts` aggregate function.
pub fn session_event_counts_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::from(SessionEventCounts {
        signature: documented_signature(vec![vec![DataType::Utf8, DataType::Utf8]]),
    }))
}

/// Implementation of `session_event_counts`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionEventCounts {
    signature: Signature,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "The event counts of a session in one pass: a struct of pageview_count, \
         autocapture_count, screen_count (distinct uuids of $pageview, $autocapture, \
         $screen events) and event_count (distinct uuids of all events). Rows with a \
         null uuid are skipped. Memory: 12 bytes per row.",
        "session_event_counts(uuid, event)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_id, session_event_counts(uuid, event)['pageview_count'] AS pageviews\n  FROM session_events GROUP BY session_id;\n```",
    )
    .with_argument("uuid", "Event id: each is counted once.")
    .with_argument("event", "Event name, which decides the kind counted.")
    .build()
});

fn counts_fields() -> Fields {
    COUNT_FIELDS
        .iter()
        .map(|name| Field::new(*name, DataType::Int64, false))
        .collect()
}

impl AggregateUDFImpl for SessionEventCounts {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [uuid, event] => Ok(vec![
                coerce_to_utf8(NAME, 0, uuid)?,
                coerce_to_utf8(NAME, 1, event)?,
            ]),
            _ => plan_err!(
                "{NAME} takes 2 arguments (uuid, event), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(counts_fields()))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        ScalarValue::try_from_array(&counts_array(Taken::empty(1))?, 0)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleDistinct::<KindedHashes>::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Arc::new(Field::new_list_field(DataType::UInt64, false));
        Ok(vec![Arc::new(Field::new(
            format!("{}[kinded_hashes]", args.name),
            DataType::List(item),
            true,
        ))])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(DistinctGroups::<KindedHashes>::default()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// The struct answer, one row per group, from its sorted distinct kept values.
fn counts_array(groups: Taken<Vec<u64>>) -> Result<ArrayRef> {
    let mut columns: [Vec<i64>; 4] = Default::default();
    for group in 0..groups.num_groups() {
        let mut counts = [0i64; 4];
        let mut previous_uuid = None;
        for value in groups.group(group) {
            let kind = value & KIND_BITS;
            if kind != EventKind::Other as u64 {
                counts[kind as usize] += 1;
            }
            // Sorted, so one uuid's kinds are adjacent.
            let uuid = value >> 2;
            if previous_uuid != Some(uuid) {
                counts[EVENT_COUNT] += 1;
                previous_uuid = Some(uuid);
            }
        }
        for (column, count) in columns.iter_mut().zip(counts) {
            column.push(count);
        }
    }
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|column| Arc::new(Int64Array::from(column)) as ArrayRef)
        .collect();
    Ok(Arc::new(StructArray::try_new(
        counts_fields(),
        arrays,
        None,
    )?))
}

/// Keeps each row's uuid hash with its event kind; answers with the counts.
#[derive(Debug)]
struct KindedHashes;

impl DistinctKind for KindedHashes {
    type Log = Vec<u64>;
    const NAME: &'static str = NAME;

    /// Every row with a uuid counts (its event, null or not, only picks the kind).
    fn for_each_kept(
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
        mut add: impl FnMut(usize, u64),
    ) -> Result<()> {
        let [uuids, events] = values else {
            return exec_err!("{NAME}: expected 2 input columns, got {}", values.len());
        };
        let uuids = as_string_array(uuids)?;
        let events = as_string_array(events)?;
        for row in 0..uuids.len() {
            let filtered_out = opt_filter.is_some_and(|filter| !is_true(filter, row));
            if filtered_out || uuids.is_null(row) {
                continue;
            }
            let event = events.is_valid(row).then(|| events.value(row));
            add(row, keep(uuids.value(row), event));
        }
        Ok(())
    }

    fn for_each_in_state(list: &ArrayRef, add: impl FnMut(u64)) -> Result<()> {
        for_each_hash_in_state(list, add)
    }

    fn to_state(groups: Taken<Vec<u64>>) -> Result<ArrayRef> {
        hashes_to_list(groups)
    }

    fn finish(groups: Taken<Vec<u64>>) -> Result<ArrayRef> {
        counts_array(groups)
    }
}
