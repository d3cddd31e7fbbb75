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

use std::cmp::Ordering;
use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::NullBuffer;
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
    SESSIONQL_DOC_SECTION, coerce_to_timestamp_us, coerce_to_utf8, documented_signature, is_true,
};
use crate::pick_slots::{KeptPick, PickKey, PickSlots};
use crate::timestamp_us_utc;

/// Which end of the session a pick looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PickDirection {
    /// Prio-first: smallest timestamp, smallest tiebreak.
    Entry,
    /// Prio-last: largest timestamp, largest tiebreak.
    Exit,
}

impl PickDirection {
    /// How a row's (time, tiebreak) must compare to the kept row's to win:
    /// an entry pick keeps the earlier row, an exit pick the later one
    /// (priority rows win either way).
    pub fn wins(self) -> Ordering {
        match self {
            PickDirection::Entry => Ordering::Less,
            PickDirection::Exit => Ordering::Greater,
        }
    }
}

/// The partial state of a pick: the kept value and its ordering key.
pub(crate) fn pick_state_fields(name: &str) -> Vec<FieldRef> {
    vec![
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
    ]
}

/// The types of a pick's key arguments (`is_priority`, `timestamp`,
/// `tiebreak`), which start at argument `first` (0-based) of `function`.
pub(crate) fn coerce_pick_keys(
    function: &str,
    first: usize,
    keys: &[DataType],
) -> Result<[DataType; 3]> {
    let [priority, timestamp, tiebreak] = keys else {
        return plan_err!("{function}: expected is_priority, timestamp and tiebreak arguments");
    };
    let priority = match priority {
        DataType::Boolean | DataType::Null => DataType::Boolean,
        other => {
            return plan_err!(
                "{function}: argument {} (is_priority) must be a boolean, got {other}",
                first + 1
            );
        }
    };
    Ok([
        priority,
        coerce_to_timestamp_us(function, first + 1, timestamp)?,
        coerce_to_utf8(function, first + 2, tiebreak)?,
    ])
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
            [value, keys @ ..] if keys.len() == 3 => {
                let mut types = vec![coerce_to_utf8(name, 0, value)?];
                types.extend(coerce_pick_keys(name, 1, keys)?);
                Ok(types)
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
        Ok(Box::new(SinglePick::new(PickGroups::new(self.direction))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(pick_state_fields(args.name))
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

/// The candidate values a pick chooses among, row by row.
pub(crate) trait CandidateValues {
    /// True when the row has no value: it never competes.
    fn is_missing(&self, row: usize) -> bool;
    /// The row's value. Asked only for rows that beat their group's pick, so
    /// a value that is costly to work out is worked out for few rows.
    fn value(&mut self, row: usize) -> &str;
    /// A mask of the rows that may have a value (the others are missing),
    /// or `None` when any row may: a fold walks only the mask's set bits.
    fn may_have_value(&self) -> Option<NullBuffer>;
}

impl CandidateValues for StringArray {
    fn is_missing(&self, row: usize) -> bool {
        self.is_null(row)
    }

    fn may_have_value(&self) -> Option<NullBuffer> {
        self.nulls().cloned()
    }

    fn value(&mut self, row: usize) -> &str {
        StringArray::value(self, row)
    }
}

/// The columns that order a pick's rows: priority, time and tiebreak.
pub(crate) struct PickKeyColumns<'a> {
    /// `is_priority`
    pub priorities: &'a BooleanArray,
    /// `timestamp`
    pub timestamps: &'a TimestampMicrosecondArray,
    /// `tiebreak`
    pub tiebreaks: &'a StringArray,
}

impl<'a> PickKeyColumns<'a> {
    /// Reads the three key columns, of the types `coerce_types` gives them.
    pub fn new(
        priorities: &'a ArrayRef,
        timestamps: &'a ArrayRef,
        tiebreaks: &'a ArrayRef,
    ) -> Result<Self> {
        Ok(Self {
            priorities: as_boolean_array(priorities)?,
            timestamps: as_timestamp_microsecond_array(timestamps)?,
            tiebreaks: as_string_array(tiebreaks)?,
        })
    }
}

/// Neighbouring rows of one group, while a fold walks a batch.
struct Run<'a> {
    group: usize,
    /// The run's best row so far and its key (none until a row has a value).
    best: Option<(usize, PickKey<'a>)>,
}

/// One candidate per group, for `GROUP BY` over many sessions.
#[derive(Debug)]
pub(crate) struct PickGroups {
    direction: PickDirection,
    picks: PickSlots,
}

impl PickGroups {
    /// No groups yet; `direction` says which end of the group wins.
    pub fn new(direction: PickDirection) -> Self {
        Self {
            direction,
            picks: PickSlots::default(),
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
        let mut values = as_string_array(values)?.clone();
        let keys = PickKeyColumns::new(priorities, timestamps, tiebreaks)?;
        self.fold_candidates(
            &mut values,
            &keys,
            group_indices,
            opt_filter,
            total_num_groups,
        )
    }

    /// Folds rows into their groups: a row with a value and a timestamp
    /// replaces its group's pick when it beats it.
    pub fn fold_candidates(
        &mut self,
        values: &mut impl CandidateValues,
        keys: &PickKeyColumns<'_>,
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.picks.grow(total_num_groups);
        // Only rows that may have a value are walked, a 64-row word of the
        // null mask at a time: nine of the fourteen picks of a session read
        // columns (utm fields, click ids, gad_source, the external click URL)
        // that are NULL on all but a few percent of events.
        match values.may_have_value() {
            Some(mask) => self.fold_rows(
                values,
                keys,
                group_indices,
                opt_filter,
                mask.valid_indices(),
            ),
            None => self.fold_rows(
                values,
                keys,
                group_indices,
                opt_filter,
                0..group_indices.len(),
            ),
        }
    }

    /// [`Self::fold_candidates`] over the rows `rows` names, in order.
    fn fold_rows(
        &mut self,
        values: &mut impl CandidateValues,
        keys: &PickKeyColumns<'_>,
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        rows: impl Iterator<Item = usize>,
    ) -> Result<()> {
        let PickKeyColumns {
            priorities,
            timestamps,
            tiebreaks,
        } = keys;
        let wins = self.direction.wins();
        // Rows of one group often come in runs (events sorted by user and
        // time, as `ingest` writes them): the run's best row is found by
        // comparing rows, and only that row is compared with the group's
        // kept pick and stored. Equal keys keep the earlier row either way.
        // A run may span rows `rows` skips, which changes nothing: rows
        // without a value never compete, and a group's best row is the same
        // whether its rows are compared in one run or in several.
        let mut run: Option<Run<'_>> = None;
        for row in rows {
            let Some(&group) = group_indices.get(row) else {
                return exec_err!("entry_value/exit_value: row {row} has no group index");
            };
            if run.as_ref().is_some_and(|run| run.group != group) {
                self.keep_best_of_run(values, run.take(), wins)?;
            }
            let Run { best, .. } = run.get_or_insert(Run { group, best: None });
            if let Some(filter) = opt_filter
                && !is_true(filter, row)
            {
                continue;
            }
            if values.is_missing(row) || timestamps.is_null(row) {
                continue;
            }
            let candidate = PickKey {
                is_priority: is_true(priorities, row),
                timestamp: timestamps.value(row),
                tiebreak: tiebreaks.is_valid(row).then(|| tiebreaks.value(row)),
            };
            if best
                .as_ref()
                .is_none_or(|(_, kept)| candidate.beats(kept, wins))
            {
                *best = Some((row, candidate));
            }
        }
        self.keep_best_of_run(values, run, wins)
    }

    /// Stores a run's best row in its group when it beats the kept pick.
    fn keep_best_of_run(
        &mut self,
        values: &mut impl CandidateValues,
        run: Option<Run<'_>>,
        wins: Ordering,
    ) -> Result<()> {
        if let Some(Run {
            group,
            best: Some((row, candidate)),
        }) = run
            && self.picks.beats(group, &candidate, wins)
        {
            self.picks.store(group, values.value(row), &candidate)?;
        }
        Ok(())
    }

    /// The values of the groups `emit_to` names, removed from the state.
    fn take_values(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(Arc::new(self.picks.drain_values(emit_to)?))
    }

    /// The partial states of the groups `emit_to` names, removed.
    fn take_states(&mut self, emit_to: EmitTo) -> Vec<ArrayRef> {
        let mut values = StringBuilder::new();
        let mut priorities = BooleanBuilder::new();
        let mut timestamps = TimestampMicrosecondBuilder::new();
        let mut tiebreaks = StringBuilder::new();
        self.picks.drain(emit_to, |pick| {
            values.append_option(pick.map(|pick| pick.value));
            priorities.append_option(pick.map(|pick| pick.is_priority));
            timestamps.append_option(pick.map(|pick| pick.timestamp));
            tiebreaks.append_option(pick.and_then(|pick| pick.tiebreak));
        });
        vec![
            Arc::new(values.finish()),
            Arc::new(priorities.finish()),
            Arc::new(timestamps.finish().with_timezone("UTC")),
            Arc::new(tiebreaks.finish()),
        ]
    }
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
        self.take_values(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(self.take_states(emit_to))
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
        self.picks.size()
    }
}

/// Gives the pick state inside a groups accumulator, so [`SinglePick`] can
/// read the one group's pick without draining it.
pub(crate) trait HasPicks: GroupsAccumulator {
    /// The groups' picks.
    fn picks(&self) -> &PickGroups;
}

impl HasPicks for PickGroups {
    fn picks(&self) -> &PickGroups {
        self
    }
}

/// A pick for an aggregate without `GROUP BY` (one group), or over a window
/// frame, where `evaluate` may be called more than once.
#[derive(Debug)]
pub(crate) struct SinglePick<G> {
    groups: G,
}

impl<G: HasPicks> SinglePick<G> {
    /// The one-group pick over `groups`.
    pub fn new(groups: G) -> Self {
        Self { groups }
    }

    fn current(&self) -> Option<KeptPick<'_>> {
        self.groups.picks().picks.get(0)
    }
}

impl<G: HasPicks + std::fmt::Debug + Sync> Accumulator for SinglePick<G> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |column| column.len());
        self.groups.update_batch(values, &vec![0; rows], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |column| column.len());
        self.groups.merge_batch(states, &vec![0; rows], 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Utf8(
            self.current().map(|pick| pick.value.to_owned()),
        ))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let pick = self.current();
        Ok(vec![
            ScalarValue::Utf8(pick.map(|pick| pick.value.to_owned())),
            ScalarValue::Boolean(pick.map(|pick| pick.is_priority)),
            ScalarValue::TimestampMicrosecond(pick.map(|pick| pick.timestamp), Some("UTC".into())),
            ScalarValue::Utf8(pick.and_then(|pick| pick.tiebreak.map(str::to_owned))),
        ])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One input row: group, value, is_priority, time, tiebreak.
    type Row = (usize, Option<String>, bool, i64, Option<String>);

    /// The pick by definition: the best row with a value, the first of
    /// equal rows kept.
    fn model(rows: &[Row], groups: usize, direction: PickDirection) -> Vec<Option<String>> {
        let wins = direction.wins();
        let mut best: Vec<Option<&Row>> = vec![None; groups];
        for row in rows.iter().filter(|row| row.1.is_some()) {
            let replace = match best[row.0] {
                None => true,
                Some(kept) if kept.2 != row.2 => row.2,
                Some(kept) => (row.3, &row.4).cmp(&(kept.3, &kept.4)) == wins,
            };
            if replace {
                best[row.0] = Some(row);
            }
        }
        best.into_iter()
            .map(|row| row.and_then(|row| row.1.clone()))
            .collect()
    }

    /// Runs of one group, single rows, repeated keys and nulls, values
    /// present on most rows or on few (as marketing fields are): folding in
    /// slices of one batch gives the pick of the definition, for entry and
    /// exit.
    #[test]
    fn runs_of_a_group_pick_as_row_by_row() {
        let mut state = 0x853c_49e6_748f_ea9b_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let groups = 7;
        for present_in_20 in [16, 1] {
            let mut rows: Vec<Row> = Vec::new();
            while rows.len() < 3000 {
                let group = next(groups as u64) as usize;
                for _ in 0..1 + next(6) {
                    rows.push((
                        group,
                        (next(20) < present_in_20).then(|| format!("v{}", rows.len())),
                        next(3) == 0,
                        next(20) as i64,
                        (next(9) != 0).then(|| format!("t{}", next(4))),
                    ));
                }
            }
            // One batch of every row, folded in slices: the slices' null
            // masks start inside a 64-bit word.
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|row| row.1.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(BooleanArray::from(
                    rows.iter().map(|row| row.2).collect::<Vec<_>>(),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter().map(|row| row.3).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    rows.iter().map(|row| row.4.clone()).collect::<Vec<_>>(),
                )),
            ];
            for direction in [PickDirection::Entry, PickDirection::Exit] {
                let mut picks = PickGroups::new(direction);
                for start in (0..rows.len()).step_by(257) {
                    let len = 257.min(rows.len() - start);
                    let batch: Vec<ArrayRef> = columns
                        .iter()
                        .map(|column| column.slice(start, len))
                        .collect();
                    let group_indices: Vec<usize> =
                        rows[start..start + len].iter().map(|row| row.0).collect();
                    picks
                        .update_batch(&batch, &group_indices, None, groups)
                        .expect("folded");
                }
                let values = picks.evaluate(EmitTo::All).expect("evaluated");
                let values: Vec<Option<String>> = as_string_array(&values)
                    .expect("strings")
                    .iter()
                    .map(|value| value.map(str::to_owned))
                    .collect();
                assert_eq!(
                    values,
                    model(&rows, groups, direction),
                    "{direction:?}, values on {present_in_20} rows in 20"
                );
            }
        }
    }
}
