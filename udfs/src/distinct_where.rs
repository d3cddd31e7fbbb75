//! The shared machinery of the distinct-value aggregates
//! (`count_distinct_where`, `distinct_strings_where`, `session_event_counts`):
//! one GroupsAccumulator / Accumulator pair generic over which rows count,
//! what is kept per value and what is returned. Each function only says that.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::mem::size_of;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::{as_boolean_array, as_list_array, as_string_array};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};

use crate::args::{coerce_to_utf8, true_rows};
use crate::dedup_groups::{DedupGroups, LogValues, Taken};

/// What a distinct-where aggregate keeps per value and how it answers.
pub trait DistinctKind: Debug + Send + Sync + 'static {
    /// How the kept values are stored (hashes, or the strings themselves).
    type Log: LogValues;
    /// The function's SQL name, for error messages.
    const NAME: &'static str;
    /// Calls `add(row, kept value)` for each input row that contributes a
    /// value and that `opt_filter` keeps.
    fn for_each_kept(
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
        add: impl FnMut(usize, LogItem<'_, Self>),
    ) -> Result<()>;
    /// Calls `add` for each kept value inside one partial-state list.
    fn for_each_in_state(list: &ArrayRef, add: impl FnMut(LogItem<'_, Self>)) -> Result<()>;
    /// Partial states: one list per group.
    fn to_state(groups: Taken<Self::Log>) -> Result<ArrayRef>;
    /// Final answers: one per group, from its sorted distinct values.
    fn finish(groups: Taken<Self::Log>) -> Result<ArrayRef>;
}

/// One kept value of the distinct kind `K`.
pub type LogItem<'a, K> = <<K as DistinctKind>::Log as LogValues>::Item<'a>;

/// The argument types of every distinct-where aggregate: a string value and a
/// boolean condition.
pub fn coerce_value_and_condition(function: &str, arg_types: &[DataType]) -> Result<Vec<DataType>> {
    match arg_types {
        [value, DataType::Boolean | DataType::Null] => {
            Ok(vec![coerce_to_utf8(function, 0, value)?, DataType::Boolean])
        }
        [_, other] => plan_err!("{function}: argument 2 must be a boolean, got {other}"),
        _ => plan_err!(
            "{function} takes 2 arguments (value, condition), got {}",
            arg_types.len()
        ),
    }
}

/// For the (value, condition) aggregates: calls `add(row, value)` for each
/// input row whose condition is true, whose value is not null and which
/// `opt_filter` keeps. The three tests are combined as bitmaps first, so
/// only qualifying rows (the pageviews of the sessions table's URL
/// aggregates, about half) are visited.
pub fn for_each_qualifying_row(
    values: &[ArrayRef],
    opt_filter: Option<&BooleanArray>,
    function: &str,
    mut add: impl FnMut(usize, &str),
) -> Result<()> {
    let [strings, conditions] = values else {
        return exec_err!("{function}: expected 2 input columns, got {}", values.len());
    };
    let strings = as_string_array(strings)?;
    let conditions = as_boolean_array(conditions)?;
    let mut qualifying = true_rows(conditions);
    if let Some(valid) = strings.nulls() {
        qualifying = &qualifying & valid.inner();
    }
    if let Some(filter) = opt_filter {
        qualifying = &qualifying & &true_rows(filter);
    }
    for row in qualifying.set_indices() {
        add(row, strings.value(row));
    }
    Ok(())
}

/// Per-group kept values of a distinct-where aggregate.
#[derive(Debug)]
pub struct DistinctGroups<K: DistinctKind> {
    values: DedupGroups<K::Log>,
    kind: PhantomData<K>,
}

impl<K: DistinctKind> Default for DistinctGroups<K> {
    fn default() -> Self {
        Self {
            values: DedupGroups::default(),
            kind: PhantomData,
        }
    }
}

impl<K: DistinctKind> DistinctGroups<K> {
    fn fold_rows(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.values.grow(total_num_groups)?;
        let groups = &mut self.values;
        K::for_each_kept(values, opt_filter, |row, value| {
            groups.add(group_indices[row], value)
        })
    }

    fn fold_states(
        &mut self,
        states: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let Some(lists) = states.first() else {
            return exec_err!("{}: missing state column", K::NAME);
        };
        let lists = as_list_array(lists)?;
        self.values.grow(total_num_groups)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            K::for_each_in_state(&lists.value(row), |value| self.values.add(group, value))?;
        }
        Ok(())
    }

    /// The one group of an aggregate without `GROUP BY`, kept for later batches.
    fn single_group(&mut self) -> Result<Taken<K::Log>> {
        self.values.grow(1)?;
        let taken = self.values.take(EmitTo::All)?;
        self.values.grow(1)?;
        for value in taken.group(0) {
            self.values.add(0, value);
        }
        Ok(taken)
    }
}

impl<K: DistinctKind> GroupsAccumulator for DistinctGroups<K> {
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
        K::finish(self.values.take(emit_to)?)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![K::to_state(self.values.take(emit_to)?)?])
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

    /// Each input row as a state row: a list of its one value, or an empty list.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows = values.first().map_or(0, |column| column.len());
        let mut single = Self::default();
        single.fold_rows(values, &(0..rows).collect::<Vec<_>>(), opt_filter, rows)?;
        Ok(vec![K::to_state(single.values.take(EmitTo::All)?)?])
    }
}

/// The same aggregate without `GROUP BY` (one group).
#[derive(Debug)]
pub struct SingleDistinct<K: DistinctKind> {
    groups: DistinctGroups<K>,
}

impl<K: DistinctKind> Default for SingleDistinct<K> {
    fn default() -> Self {
        Self {
            groups: DistinctGroups::default(),
        }
    }
}

impl<K: DistinctKind> Accumulator for SingleDistinct<K> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |column| column.len());
        self.groups.fold_rows(values, &vec![0; rows], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |column| column.len());
        self.groups.fold_states(states, &vec![0; rows], 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        ScalarValue::try_from_array(&K::finish(self.groups.single_group()?)?, 0)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::try_from_array(
            &K::to_state(self.groups.single_group()?)?,
            0,
        )?])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.size()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::StringArray;

    use super::*;

    #[test]
    fn only_rows_with_a_value_a_true_condition_and_a_true_filter_qualify() -> Result<()> {
        let values: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some("c"),
                Some("d"),
                Some("e"),
            ])),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(true),
                None,
                Some(false),
                Some(true),
            ])),
        ];
        let mut seen = Vec::new();
        for_each_qualifying_row(&values, None, "test", |row, value| {
            seen.push((row, value.to_string()))
        })?;
        assert_eq!(seen, vec![(0, "a".to_string()), (4, "e".to_string())]);

        let filter = BooleanArray::from(vec![Some(true), Some(true), Some(true), Some(true), None]);
        seen.clear();
        for_each_qualifying_row(&values, Some(&filter), "test", |row, value| {
            seen.push((row, value.to_string()))
        })?;
        assert_eq!(seen, vec![(0, "a".to_string())]);

        // Sliced arrays (as DataFusion hands out parts of batches): rows 1..5.
        let sliced: Vec<ArrayRef> = values.iter().map(|column| column.slice(1, 4)).collect();
        seen.clear();
        for_each_qualifying_row(&sliced, None, "test", |row, value| {
            seen.push((row, value.to_string()))
        })?;
        assert_eq!(seen, vec![(3, "e".to_string())]);
        Ok(())
    }
}
