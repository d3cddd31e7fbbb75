//! `count_distinct_where(value, condition)`: the number of distinct non-null
//! values among the rows where `condition` is true. The session counts of
//! spec §2 (`pageview_count` = distinct uuids of `$pageview` events, …) are
//! this, once per event type.
//!
//! DataFusion can write it as `count(DISTINCT value) FILTER (WHERE …)`, but that
//! form keeps a hash set of `ScalarValue`s per group: on a million events it
//! took gigabytes. Here the 64-bit hashes of the values are kept in one log
//! with their group (`dedup_groups`), deduplicated when counted: 12 bytes per
//! qualifying row, less where a row repeats its session's last value. Two
//! different values of one session colliding in 64 bits is the only way to
//! miscount, which for the few hundred values of a session is negligible.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, ListArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::cast::as_uint64_array;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
};

use crate::args::{SESSIONQL_DOC_SECTION, documented_signature};
use crate::dedup_groups::Taken;
use crate::distinct_where::{
    DistinctGroups, DistinctKind, SingleDistinct, coerce_value_and_condition,
    for_each_qualifying_row,
};
use crate::stable_hash::stable_hash64_words;

const NAME: &str = "count_distinct_where";
/// Seed of the value hashes (any fixed number; partial states must agree).
pub(crate) const HASH_SEED: u64 = 0x5e55_1095;

/// The `count_distinct_where` aggregate function.
pub fn count_distinct_where_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::from(CountDistinctWhere {
        signature: documented_signature(vec![vec![DataType::Utf8, DataType::Boolean]]),
    }))
}

/// Implementation of `count_distinct_where`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CountDistinctWhere {
    signature: Signature,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Number of distinct non-null values among the rows where condition is true; \
         0 when there are none. Memory: 12 bytes per qualifying row.",
        "count_distinct_where(value, condition)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_id, count_distinct_where(uuid, event = '$pageview') AS pageviews\n  FROM session_events GROUP BY session_id;\n```",
    )
    .with_argument("value", "String whose distinct values are counted.")
    .with_argument("condition", "Rows where this is not true are skipped.")
    .build()
});

impl AggregateUDFImpl for CountDistinctWhere {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_value_and_condition(NAME, arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleDistinct::<Hashes>::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Arc::new(Field::new_list_field(DataType::UInt64, false));
        Ok(vec![Arc::new(Field::new(
            format!("{}[hashes]", args.name),
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
        Ok(Box::new(DistinctGroups::<Hashes>::default()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// Keeps each value's 64-bit hash; answers with the number of distinct hashes.
#[derive(Debug)]
struct Hashes;

/// Calls `add` for each hash inside one partial-state list.
pub(crate) fn for_each_hash_in_state(list: &ArrayRef, add: impl FnMut(u64)) -> Result<()> {
    as_uint64_array(list)?
        .values()
        .iter()
        .copied()
        .for_each(add);
    Ok(())
}

/// Partial states of hash-keeping aggregates: one list of hashes per group.
pub(crate) fn hashes_to_list(groups: Taken<Vec<u64>>) -> Result<ArrayRef> {
    let values = UInt64Array::from_iter_values(groups.all_values());
    let item = Arc::new(Field::new_list_field(DataType::UInt64, false));
    let list = ListArray::try_new(item, groups.list_offsets()?, Arc::new(values), None)?;
    Ok(Arc::new(list))
}

impl DistinctKind for Hashes {
    type Log = Vec<u64>;
    const NAME: &'static str = NAME;

    fn for_each_kept(
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
        mut add: impl FnMut(usize, u64),
    ) -> Result<()> {
        for_each_qualifying_row(values, opt_filter, NAME, |row, value| {
            add(row, stable_hash64_words(HASH_SEED, value.as_bytes()))
        })
    }

    fn for_each_in_state(list: &ArrayRef, add: impl FnMut(u64)) -> Result<()> {
        for_each_hash_in_state(list, add)
    }

    fn to_state(groups: Taken<Vec<u64>>) -> Result<ArrayRef> {
        hashes_to_list(groups)
    }

    fn finish(groups: Taken<Vec<u64>>) -> Result<ArrayRef> {
        let counts = (0..groups.num_groups()).map(|group| groups.group_len(group) as i64);
        Ok(Arc::new(Int64Array::from_iter_values(counts)))
    }
}
