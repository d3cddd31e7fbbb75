//! `distinct_strings_where(value, condition)`: the sorted distinct non-null
//! values among the rows where `condition` is true, as a list (empty when
//! none). The `urls` column of spec §2 is this over pageview/screen URLs.
//! DataFusion's `array_agg(DISTINCT …) FILTER (…)` keeps a hash set of
//! `ScalarValue`s per group; this keeps plain strings, deduplicated lazily.

use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, ListArray, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::cast::{as_list_array, as_string_array};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    Signature,
};

use crate::args::{SESSIONQL_DOC_SECTION, coerce_to_utf8, documented_signature};
use crate::count_distinct_where::for_each_qualifying_row;
use crate::dedup_groups::DedupGroups;

const NAME: &str = "distinct_strings_where";

/// The `distinct_strings_where` aggregate function.
pub fn distinct_strings_where_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::from(DistinctStringsWhere {
        signature: documented_signature(vec![vec![DataType::Utf8, DataType::Boolean]]),
    }))
}

/// Implementation of `distinct_strings_where`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DistinctStringsWhere {
    signature: Signature,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Sorted distinct non-null values among the rows where condition is true, as a \
         list; an empty list when there are none.",
        "distinct_strings_where(value, condition)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_id, distinct_strings_where(current_url, event IN ('$pageview', '$screen'))\n  FROM session_events GROUP BY session_id;\n```",
    )
    .with_argument("value", "String to collect.")
    .with_argument("condition", "Rows where this is not true are skipped.")
    .with_related_udf("count_distinct_where")
    .build()
});

fn list_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Utf8, true))
}

impl AggregateUDFImpl for DistinctStringsWhere {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [value, DataType::Boolean | DataType::Null] => {
                Ok(vec![coerce_to_utf8(NAME, 0, value)?, DataType::Boolean])
            }
            [_, other] => plan_err!("{NAME}: argument 2 must be a boolean, got {other}"),
            _ => plan_err!(
                "{NAME} takes 2 arguments (value, condition), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(list_field()))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::List(Arc::new(strings_to_list(vec![
            Vec::new(),
        ])?)))
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleList {
            groups: StringGroups::default(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[values]", args.name),
            DataType::List(list_field()),
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
        Ok(Box::new(StringGroups::default()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct StringGroups {
    values: DedupGroups<String>,
}

impl Default for StringGroups {
    fn default() -> Self {
        Self {
            values: DedupGroups::new(String::capacity),
        }
    }
}

impl StringGroups {
    fn fold_rows(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.values.grow(total_num_groups);
        let groups = &mut self.values;
        for_each_qualifying_row(values, group_indices, opt_filter, NAME, |group, value| {
            groups.add(group, value.to_string());
        })
    }

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
        self.values.grow(total_num_groups);
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let list = lists.value(row);
            let strings = as_string_array(&list)?;
            for value in strings.iter().flatten() {
                self.values.add(group, value.to_string());
            }
        }
        Ok(())
    }
}

fn strings_to_list(groups: Vec<Vec<String>>) -> Result<ListArray> {
    let lengths: Vec<usize> = groups.iter().map(Vec::len).collect();
    let values = StringArray::from(groups.into_iter().flatten().collect::<Vec<String>>());
    Ok(ListArray::try_new(
        list_field(),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(values),
        None,
    )?)
}

impl GroupsAccumulator for StringGroups {
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
        Ok(Arc::new(strings_to_list(self.values.take(emit_to))?))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![Arc::new(strings_to_list(self.values.take(emit_to))?)])
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
        self.values.size()
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows = values.first().map_or(0, |column| column.len());
        let mut single = StringGroups::default();
        single.fold_rows(values, &(0..rows).collect::<Vec<_>>(), opt_filter, rows)?;
        Ok(vec![Arc::new(strings_to_list(
            single.values.take(EmitTo::All),
        )?)])
    }
}

/// The same list without `GROUP BY` (one group).
#[derive(Debug)]
struct SingleList {
    groups: StringGroups,
}

impl SingleList {
    fn single_group(&mut self) -> Vec<String> {
        let values = self
            .groups
            .values
            .take(EmitTo::All)
            .pop()
            .unwrap_or_default();
        self.groups.values.grow(1);
        for value in &values {
            self.groups.values.add(0, value.clone());
        }
        values
    }
}

impl Accumulator for SingleList {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |column| column.len());
        self.groups.fold_rows(values, &vec![0; rows], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |column| column.len());
        self.groups.fold_states(states, &vec![0; rows], 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::List(Arc::new(strings_to_list(vec![
            self.single_group(),
        ])?)))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::List(Arc::new(strings_to_list(vec![
            self.single_group(),
        ])?))])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.values.size()
    }
}
