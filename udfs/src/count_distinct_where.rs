//! `count_distinct_where(value, condition)`: the number of distinct non-null
//! values among the rows where `condition` is true. The session counts of
//! spec §2 (`pageview_count` = distinct uuids of `$pageview` events, …) are
//! this, once per event type.
//!
//! DataFusion can write it as `count(DISTINCT value) FILTER (WHERE …)`, but that
//! form keeps a hash set of `ScalarValue`s per group: on a million events it
//! took gigabytes. Here each group keeps the 64-bit hashes of its values in a
//! plain vector, deduplicated when counted: 8 bytes per qualifying row. Two
//! different values of one session colliding in 64 bits is the only way to
//! miscount, which for the few hundred values of a session is negligible.

use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, ListArray, UInt64Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::cast::{as_boolean_array, as_list_array, as_string_array, as_uint64_array};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    Signature,
};

use crate::args::{SESSIONQL_DOC_SECTION, coerce_to_utf8, documented_signature};
use crate::dedup_groups::DedupGroups;
use crate::stable_hash::stable_hash64;

const NAME: &str = "count_distinct_where";
const HASH_SEED: u64 = 0x5e55_1095;

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
         0 when there are none. Memory: 8 bytes per qualifying row.",
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
        match arg_types {
            [value, condition] => {
                let condition = match condition {
                    DataType::Boolean | DataType::Null => DataType::Boolean,
                    other => return plan_err!("{NAME}: argument 2 must be a boolean, got {other}"),
                };
                Ok(vec![coerce_to_utf8(NAME, 0, value)?, condition])
            }
            _ => plan_err!(
                "{NAME} takes 2 arguments (value, condition), got {}",
                arg_types.len()
            ),
        }
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
        Ok(Box::new(SingleCount {
            groups: HashGroups::default(),
        }))
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
        Ok(Box::new(HashGroups::default()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// Calls `add(group, value)` for each input row whose condition is true, whose
/// value is not null and which `opt_filter` keeps: the rows both distinct
/// aggregates count.
pub fn for_each_qualifying_row(
    values: &[ArrayRef],
    group_indices: &[usize],
    opt_filter: Option<&BooleanArray>,
    function: &str,
    mut add: impl FnMut(usize, &str),
) -> Result<()> {
    let [strings, conditions] = values else {
        return exec_err!("{function}: expected 2 input columns, got {}", values.len());
    };
    let strings = as_string_array(strings)?;
    let conditions = as_boolean_array(conditions)?;
    for (row, &group) in group_indices.iter().enumerate() {
        let filtered_out =
            opt_filter.is_some_and(|filter| !(filter.is_valid(row) && filter.value(row)));
        let qualifies = conditions.is_valid(row) && conditions.value(row) && strings.is_valid(row);
        if qualifies && !filtered_out {
            add(group, strings.value(row));
        }
    }
    Ok(())
}

/// Per group, the hashes of its qualifying values.
#[derive(Debug)]
struct HashGroups {
    hashes: DedupGroups<u64>,
}

impl Default for HashGroups {
    fn default() -> Self {
        Self {
            hashes: DedupGroups::new(|_| 0),
        }
    }
}

impl HashGroups {
    fn fold_rows(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.hashes.grow(total_num_groups);
        let hashes = &mut self.hashes;
        for_each_qualifying_row(values, group_indices, opt_filter, NAME, |group, value| {
            hashes.add(group, stable_hash64(HASH_SEED, value.as_bytes()));
        })
    }

    /// Folds partial states: one list of hashes per row.
    fn fold_states(
        &mut self,
        states: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let Some(lists) = states.first() else {
            return exec_err!("{NAME}: missing state column");
        };
        let lists = as_list_array(lists)?;
        self.hashes.grow(total_num_groups);
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let list = lists.value(row);
            for hash in as_uint64_array(&list)?.values() {
                self.hashes.add(group, *hash);
            }
        }
        Ok(())
    }
}

fn distinct_count(hashes: &[u64]) -> i64 {
    i64::try_from(hashes.len()).unwrap_or(i64::MAX)
}

fn hashes_to_list(groups: Vec<Vec<u64>>) -> Result<ArrayRef> {
    let lengths: Vec<usize> = groups.iter().map(Vec::len).collect();
    let values = UInt64Array::from(groups.into_iter().flatten().collect::<Vec<u64>>());
    let item = Arc::new(Field::new_list_field(DataType::UInt64, false));
    let list = ListArray::try_new(
        item,
        OffsetBuffer::from_lengths(lengths),
        Arc::new(values),
        None,
    )?;
    Ok(Arc::new(list))
}

impl GroupsAccumulator for HashGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold_rows(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let counts: Int64Array = self
            .hashes
            .take(emit_to)
            .iter()
            .map(|hashes| Some(distinct_count(hashes)))
            .collect();
        Ok(Arc::new(counts))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![hashes_to_list(self.hashes.take(emit_to))?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold_states(values, group_indices, total_num_groups)
    }

    fn size(&self) -> usize {
        self.hashes.size()
    }

    /// Each input row as a state row: a list of its one hash, or an empty list.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows = values.first().map_or(0, |column| column.len());
        let mut single = HashGroups::default();
        single.fold_rows(values, &(0..rows).collect::<Vec<_>>(), opt_filter, rows)?;
        Ok(vec![hashes_to_list(single.hashes.take(EmitTo::All))?])
    }
}

/// The same count without `GROUP BY` (one group).
#[derive(Debug)]
struct SingleCount {
    groups: HashGroups,
}

impl SingleCount {
    /// The group's distinct hashes, kept for later batches.
    fn single_group(&mut self) -> Vec<u64> {
        let hashes = self
            .groups
            .hashes
            .take(EmitTo::All)
            .pop()
            .unwrap_or_default();
        self.groups.hashes.grow(1);
        for hash in &hashes {
            self.groups.hashes.add(0, *hash);
        }
        hashes
    }
}

impl Accumulator for SingleCount {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |column| column.len());
        self.groups.fold_rows(values, &vec![0; rows], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |column| column.len());
        self.groups.fold_states(states, &vec![0; rows], 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(distinct_count(
            &self.single_group(),
        ))))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let list = hashes_to_list(vec![self.single_group()])?;
        Ok(vec![ScalarValue::try_from_array(&list, 0)?])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.hashes.size()
    }
}
