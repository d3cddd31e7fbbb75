//! `entry_value` and `exit_value`: the prio-first / prio-last choice of spec §2.
//!
//! `entry_value(value, is_priority, timestamp, tiebreak)` returns, among the
//! group's rows whose `value` is not null, the value of the first row with
//! `is_priority` true (a `$pageview` or `$screen`), or when no such row has a
//! value, of the first other row. "First" is the smallest timestamp, ties broken
//! by the smallest `tiebreak` (the event uuid). `exit_value` is the mirror image:
//! last row, ties broken by the largest `tiebreak`. Each column is chosen on its
//! own, so `entry_utm_source` and `entry_utm_medium` may come from different events.
//!
//! Both keep one candidate per group and work on whole Arrow arrays through a
//! `GroupsAccumulator`, so `GROUP BY session_id` over millions of sessions does
//! not go through per-row `ScalarValue`s.

use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{nullif, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::cast::{as_boolean_array, as_string_array, as_timestamp_microsecond_array};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    Signature,
};

use crate::args::{
    SESSIONQL_DOC_SECTION, coerce_to_timestamp_us, coerce_to_utf8, documented_signature,
};
use crate::timestamp_us_utc;

/// Which end of the session a pick looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PickDirection {
    /// Prio-first: smallest timestamp, smallest tiebreak.
    Entry,
    /// Prio-last: largest timestamp, largest tiebreak.
    Exit,
}

/// The `entry_value` aggregate function.
pub fn entry_value_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::from(PickValue::new(PickDirection::Entry)))
}

/// The `exit_value` aggregate function.
pub fn exit_value_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::from(PickValue::new(PickDirection::Exit)))
}

/// Implementation of `entry_value` and `exit_value`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PickValue {
    direction: PickDirection,
    signature: Signature,
}

impl PickValue {
    fn new(direction: PickDirection) -> Self {
        Self {
            direction,
            signature: documented_signature(vec![vec![
                DataType::Utf8,
                DataType::Boolean,
                timestamp_us_utc(),
                DataType::Utf8,
            ]]),
        }
    }
}

static ENTRY_DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Prio-first value of a group: among rows whose value is not null, the value of \
         the earliest row with is_priority true, or, when no such row has a value, of \
         the earliest other row. Ties on timestamp go to the smallest tiebreak.",
        "entry_value(value, is_priority, timestamp, tiebreak)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_id,\n    entry_value(current_url, event IN ('$pageview', '$screen'), timestamp, uuid)\n  FROM session_events GROUP BY session_id;\n```",
    )
    .with_argument("value", "String to pick; nulls are skipped.")
    .with_argument("is_priority", "True for rows preferred over all others ($pageview, $screen).")
    .with_argument("timestamp", "Row time: the earliest row wins.")
    .with_argument("tiebreak", "Decides between rows of equal timestamp (the event uuid).")
    .with_related_udf("exit_value")
    .build()
});

static EXIT_DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Prio-last value of a group: among rows whose value is not null, the value of \
         the latest row with is_priority true, or, when no such row has a value, of \
         the latest other row. Ties on timestamp go to the largest tiebreak.",
        "exit_value(value, is_priority, timestamp, tiebreak)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_id,\n    exit_value(current_url, event IN ('$pageview', '$screen'), timestamp, uuid)\n  FROM session_events GROUP BY session_id;\n```",
    )
    .with_argument("value", "String to pick; nulls are skipped.")
    .with_argument("is_priority", "True for rows preferred over all others ($pageview, $screen).")
    .with_argument("timestamp", "Row time: the latest row wins.")
    .with_argument("tiebreak", "Decides between rows of equal timestamp (the event uuid).")
    .with_related_udf("entry_value")
    .build()
});

impl AggregateUDFImpl for PickValue {
    fn name(&self) -> &str {
        match self.direction {
            PickDirection::Entry => "entry_value",
            PickDirection::Exit => "exit_value",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        match arg_types {
            [value, priority, timestamp, tiebreak] => {
                let priority = match priority {
                    DataType::Boolean | DataType::Null => DataType::Boolean,
                    other => return plan_err!("{name}: argument 2 must be a boolean, got {other}"),
                };
                Ok(vec![
                    coerce_to_utf8(name, 0, value)?,
                    priority,
                    coerce_to_timestamp_us(name, 2, timestamp)?,
                    coerce_to_utf8(name, 3, tiebreak)?,
                ])
            }
            _ => plan_err!(
                "{name} takes 4 arguments (value, is_priority, timestamp, tiebreak), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SinglePick {
            groups: PickGroups::new(self.direction),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let name = args.name;
        Ok(vec![
            Arc::new(Field::new(format!("{name}[value]"), DataType::Utf8, true)),
            Arc::new(Field::new(
                format!("{name}[is_priority]"),
                DataType::Boolean,
                true,
            )),
            Arc::new(Field::new(
                format!("{name}[timestamp]"),
                timestamp_us_utc(),
                true,
            )),
            Arc::new(Field::new(
                format!("{name}[tiebreak]"),
                DataType::Utf8,
                true,
            )),
        ])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PickGroups::new(self.direction)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(match self.direction {
            PickDirection::Entry => &ENTRY_DOCUMENTATION,
            PickDirection::Exit => &EXIT_DOCUMENTATION,
        })
    }
}

/// The best row seen so far for one group.
#[derive(Debug)]
struct Pick {
    is_priority: bool,
    timestamp: i64,
    tiebreak: Option<String>,
    value: String,
}

/// The ordering key of a candidate row, borrowed from the input arrays.
struct Candidate<'a> {
    is_priority: bool,
    timestamp: i64,
    tiebreak: Option<&'a str>,
}

impl Candidate<'_> {
    /// True when this row should replace `current`: priority rows first, then
    /// the earlier (entry) or later (exit) timestamp, then the tiebreak.
    fn beats(&self, current: &Pick, direction: PickDirection) -> bool {
        if self.is_priority != current.is_priority {
            return self.is_priority;
        }
        let by_time = self.timestamp.cmp(&current.timestamp);
        let by_tiebreak = self.tiebreak.cmp(&current.tiebreak.as_deref());
        let order = by_time.then(by_tiebreak);
        match direction {
            PickDirection::Entry => order.is_lt(),
            PickDirection::Exit => order.is_gt(),
        }
    }
}

/// One candidate per group, for `GROUP BY` over many sessions.
#[derive(Debug)]
struct PickGroups {
    direction: PickDirection,
    picks: Vec<Option<Pick>>,
    /// Bytes held by the picks' strings, kept up to date for `size()`.
    heap_bytes: usize,
}

impl PickGroups {
    fn new(direction: PickDirection) -> Self {
        Self {
            direction,
            picks: Vec::new(),
            heap_bytes: 0,
        }
    }

    /// Folds rows (input rows or partial states, which have the same shape)
    /// into their groups. Rows with a null value or timestamp are skipped.
    fn fold(
        &mut self,
        columns: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [values, priorities, timestamps, tiebreaks] = columns else {
            return exec_err!(
                "entry_value/exit_value: expected 4 input columns, got {}",
                columns.len()
            );
        };
        let values = as_string_array(values)?;
        let priorities = as_boolean_array(priorities)?;
        let timestamps = as_timestamp_microsecond_array(timestamps)?;
        let tiebreaks = as_string_array(tiebreaks)?;
        if self.picks.len() < total_num_groups {
            self.picks.resize_with(total_num_groups, || None);
        }
        for (row, &group) in group_indices.iter().enumerate() {
            if let Some(filter) = opt_filter
                && !(filter.is_valid(row) && filter.value(row))
            {
                continue;
            }
            if values.is_null(row) || timestamps.is_null(row) {
                continue;
            }
            let candidate = Candidate {
                is_priority: priorities.is_valid(row) && priorities.value(row),
                timestamp: timestamps.value(row),
                tiebreak: tiebreaks.is_valid(row).then(|| tiebreaks.value(row)),
            };
            let value = values.value(row);
            match &mut self.picks[group] {
                Some(current) if !candidate.beats(current, self.direction) => {}
                Some(current) => {
                    let before = heap_size(current);
                    current.is_priority = candidate.is_priority;
                    current.timestamp = candidate.timestamp;
                    current.value.clear();
                    current.value.push_str(value);
                    match (&mut current.tiebreak, candidate.tiebreak) {
                        (Some(kept), Some(new)) => {
                            kept.clear();
                            kept.push_str(new);
                        }
                        (slot, new) => *slot = new.map(str::to_owned),
                    }
                    self.heap_bytes = self.heap_bytes + heap_size(current) - before;
                }
                empty => {
                    let pick = Pick {
                        is_priority: candidate.is_priority,
                        timestamp: candidate.timestamp,
                        tiebreak: candidate.tiebreak.map(str::to_owned),
                        value: value.to_owned(),
                    };
                    self.heap_bytes += heap_size(&pick);
                    *empty = Some(pick);
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<Option<Pick>> {
        let taken = emit_to.take_needed(&mut self.picks);
        let released: usize = taken.iter().flatten().map(heap_size).sum();
        self.heap_bytes = self.heap_bytes.saturating_sub(released);
        taken
    }
}

fn heap_size(pick: &Pick) -> usize {
    pick.value.capacity() + pick.tiebreak.as_ref().map_or(0, String::capacity)
}

fn values_array(picks: &[Option<Pick>]) -> ArrayRef {
    Arc::new(StringArray::from_iter(
        picks
            .iter()
            .map(|pick| pick.as_ref().map(|pick| pick.value.as_str())),
    ))
}

fn state_arrays(picks: &[Option<Pick>]) -> Vec<ArrayRef> {
    let priorities = BooleanArray::from_iter(
        picks
            .iter()
            .map(|pick| pick.as_ref().map(|pick| pick.is_priority)),
    );
    let timestamps = TimestampMicrosecondArray::from_iter(
        picks
            .iter()
            .map(|pick| pick.as_ref().map(|pick| pick.timestamp)),
    )
    .with_timezone("UTC");
    let tiebreaks = StringArray::from_iter(
        picks
            .iter()
            .map(|pick| pick.as_ref().and_then(|pick| pick.tiebreak.as_deref())),
    );
    vec![
        values_array(picks),
        Arc::new(priorities),
        Arc::new(timestamps),
        Arc::new(tiebreaks),
    ]
}

impl GroupsAccumulator for PickGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(values_array(&self.take(emit_to)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(state_arrays(&self.take(emit_to)))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold(values, group_indices, None, total_num_groups)
    }

    /// Input rows already have the state's shape; rows the filter drops get a
    /// null value, which every pick skips.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut state = values.to_vec();
        if let (Some(filter), Some(value)) = (opt_filter, state.first_mut()) {
            let dropped = not(&prep_null_mask_filter(filter))?;
            *value = nullif(value.as_ref(), &dropped)?;
        }
        Ok(state)
    }

    fn size(&self) -> usize {
        self.picks.capacity() * size_of::<Option<Pick>>() + self.heap_bytes
    }
}

/// The same pick for an aggregate without `GROUP BY` (one group).
#[derive(Debug)]
struct SinglePick {
    groups: PickGroups,
}

impl SinglePick {
    fn fold(&mut self, columns: &[ArrayRef]) -> Result<()> {
        let rows = columns.first().map_or(0, |column| column.len());
        self.groups.fold(columns, &vec![0; rows], None, 1)
    }

    fn current(&self) -> Option<&Pick> {
        self.groups.picks.first().and_then(Option::as_ref)
    }
}

impl Accumulator for SinglePick {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.fold(values)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.fold(states)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Utf8(
            self.current().map(|pick| pick.value.clone()),
        ))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let pick = self.current();
        Ok(vec![
            ScalarValue::Utf8(pick.map(|pick| pick.value.clone())),
            ScalarValue::Boolean(pick.map(|pick| pick.is_priority)),
            ScalarValue::TimestampMicrosecond(pick.map(|pick| pick.timestamp), Some("UTC".into())),
            ScalarValue::Utf8(pick.and_then(|pick| pick.tiebreak.clone())),
        ])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.size()
    }
}
