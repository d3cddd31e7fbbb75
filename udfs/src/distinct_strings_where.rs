//! `distinct_strings_where(value, condition)`: the sorted distinct non-null
//! values among the rows where `condition` is true, as a list (empty when
//! none). The `urls` column of spec §2 is this over pageview/screen URLs.
//! DataFusion's `array_agg(DISTINCT …) FILTER (…)` keeps a hash set of
//! `ScalarValue`s per group; this keeps the strings' bytes in one arena per
//! aggregate, each distinct string once (`dedup_groups`), deduplicated when
//! the lists are built.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BooleanArray, ListArray, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::cast::as_string_array;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
};

use crate::args::{SESSIONQL_DOC_SECTION, documented_signature};
use crate::dedup_groups::{InternedStrings, Taken};
use crate::distinct_where::{
    DistinctGroups, DistinctKind, SingleDistinct, coerce_value_and_condition,
    for_each_qualifying_row,
};

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
        coerce_value_and_condition(NAME, arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(list_field()))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::List(Arc::new(strings_to_list(Taken::empty(
            1,
        ))?)))
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleDistinct::<Strings>::default()))
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
        Ok(Box::new(DistinctGroups::<Strings>::default()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// Keeps the strings; answers with the sorted distinct list.
#[derive(Debug)]
struct Strings;

fn strings_to_list(groups: Taken<InternedStrings>) -> Result<ListArray> {
    let mut bytes = Vec::new();
    let mut ends = Vec::with_capacity(groups.num_values() + 1);
    ends.push(0i32);
    for value in groups.all_values() {
        bytes.extend_from_slice(value);
        let Ok(end) = i32::try_from(bytes.len()) else {
            return exec_err!(
                "{NAME}: more than {} bytes of strings in one batch",
                i32::MAX
            );
        };
        ends.push(end);
    }
    // The bytes are whole strings that came from string arrays; `try_new`
    // checks them again.
    let values = StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(ends)),
        Buffer::from_vec(bytes),
        None,
    )?;
    Ok(ListArray::try_new(
        list_field(),
        groups.list_offsets()?,
        Arc::new(values),
        None,
    )?)
}

impl DistinctKind for Strings {
    type Log = InternedStrings;
    const NAME: &'static str = NAME;

    fn for_each_kept(
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
        mut add: impl FnMut(usize, &[u8]),
    ) -> Result<()> {
        for_each_qualifying_row(values, opt_filter, NAME, |row, value| {
            add(row, value.as_bytes())
        })
    }

    fn for_each_in_state(list: &ArrayRef, mut add: impl FnMut(&[u8])) -> Result<()> {
        for value in as_string_array(list)?.iter().flatten() {
            add(value.as_bytes());
        }
        Ok(())
    }

    fn to_state(groups: Taken<InternedStrings>) -> Result<ArrayRef> {
        Ok(Arc::new(strings_to_list(groups)?))
    }

    fn finish(groups: Taken<InternedStrings>) -> Result<ArrayRef> {
        Ok(Arc::new(strings_to_list(groups)?))
    }
}
