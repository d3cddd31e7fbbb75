//! `entry_channel_type(utm_source, utm_medium, utm_campaign, referring_domain,
//! gclid, fbclid, gad_source, entry_url, is_priority, timestamp, tiebreak)`:
//! the channel of a group's entry event (spec §2 and §4), the same value as
//! `entry_value(channel_type(…eight inputs…), is_priority, timestamp, tiebreak)`.
//!
//! Written that way, `channel_type` runs on every event and the pick keeps
//! one result per session. This aggregate orders the rows first and works out
//! the channel only for a row that becomes its session's entry row, which on
//! events in time order is about one row per session. Custom rules and channel
//! tables come from the settings, as for `channel_type`: `simplify` appends
//! them as two literal arguments when the query is planned.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BooleanArray, StringArray, StringBuilder};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::cast::as_string_array;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, Expr, GroupsAccumulator,
    Signature, lit,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;

use crate::args::{SESSIONQL_DOC_SECTION, coerce_to_utf8, documented_signature, is_true};
use crate::channel_lookup::ChannelLookup;
use crate::channel_rules::ChannelRule;
use crate::channel_tables::ChannelTables;
use crate::channel_type::{CHANNEL_INPUT_COUNT, channel_inputs_at, classify};
use crate::config::SessionqlConfig;
use crate::entry_exit_value::{
    CandidateValues, HasPicks, PickDirection, PickGroups, PickKeyColumns, SinglePick,
    coerce_pick_keys, pick_state_fields,
};
use crate::timestamp_us_utc;

const NAME: &str = "entry_channel_type";

/// Arguments a query writes: eight channel inputs and the pick's three keys.
const USER_ARGUMENTS: usize = CHANNEL_INPUT_COUNT + 3;

/// Arguments after planning: the user's, then the two channel settings.
const PLANNED_ARGUMENTS: usize = USER_ARGUMENTS + 2;

/// The `entry_channel_type` aggregate function, reading user tables through `tables`.
pub fn entry_channel_type_udaf(tables: Arc<ChannelTables>) -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::from(EntryChannelType {
        tables,
        signature: documented_signature(vec![user_signature()]),
    }))
}

/// The documented argument types (the settings' two literals are not shown).
fn user_signature() -> Vec<DataType> {
    let mut types = vec![DataType::Utf8; CHANNEL_INPUT_COUNT];
    types.extend([DataType::Boolean, timestamp_us_utc(), DataType::Utf8]);
    types
}

/// Implementation of `entry_channel_type`; see the module documentation.
#[derive(Debug)]
pub struct EntryChannelType {
    tables: Arc<ChannelTables>,
    signature: Signature,
}

impl PartialEq for EntryChannelType {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature
    }
}

impl Eq for EntryChannelType {}

impl std::hash::Hash for EntryChannelType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        NAME.hash(state);
    }
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Channel type (as channel_type) of a group's entry event: the earliest row with \
         is_priority true, or the earliest row when none is. Ties on timestamp go to the \
         smallest tiebreak. The channel is worked out only for rows that become the entry row.",
        "entry_channel_type(utm_source, utm_medium, utm_campaign, referring_domain, gclid, fbclid, gad_source, entry_url, is_priority, timestamp, tiebreak)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_id,\n    entry_channel_type(utm_source, utm_medium, utm_campaign, referring_domain,\n      gclid, fbclid, gad_source, current_url,\n      event IN ('$pageview', '$screen'), timestamp, uuid)\n  FROM session_events GROUP BY session_id;\n```",
    )
    .with_argument("utm_source", "utm_source, as for channel_type.")
    .with_argument("utm_medium", "utm_medium, as for channel_type.")
    .with_argument("utm_campaign", "utm_campaign, as for channel_type.")
    .with_argument("referring_domain", "Referring domain, '$direct' when there was no referrer.")
    .with_argument("gclid", "Google click id; only its presence counts.")
    .with_argument("fbclid", "Meta click id; only its presence counts.")
    .with_argument("gad_source", "Google Ads gad_source; '1' means Search.")
    .with_argument("entry_url", "The event's URL, for custom rules on url, hostname and pathname.")
    .with_argument("is_priority", "True for rows preferred over all others ($pageview, $screen).")
    .with_argument("timestamp", "Row time: the earliest row wins.")
    .with_argument("tiebreak", "Decides between rows of equal timestamp (the event uuid).")
    .with_related_udf("channel_type")
    .with_related_udf("entry_value")
    .build()
});

impl AggregateUDFImpl for EntryChannelType {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != USER_ARGUMENTS && arg_types.len() != PLANNED_ARGUMENTS {
            return plan_err!(
                "{NAME} takes {USER_ARGUMENTS} arguments (utm_source, utm_medium, utm_campaign, \
                 referring_domain, gclid, fbclid, gad_source, entry_url, is_priority, timestamp, \
                 tiebreak), got {}",
                arg_types.len()
            );
        }
        let (inputs, rest) = arg_types.split_at(CHANNEL_INPUT_COUNT);
        let (keys, settings) = rest.split_at(3);
        let mut types = Vec::with_capacity(arg_types.len());
        for (position, data_type) in inputs.iter().enumerate() {
            types.push(coerce_to_utf8(NAME, position, data_type)?);
        }
        types.extend(coerce_pick_keys(NAME, CHANNEL_INPUT_COUNT, keys)?);
        for (offset, data_type) in settings.iter().enumerate() {
            types.push(coerce_to_utf8(NAME, USER_ARGUMENTS + offset, data_type)?);
        }
        Ok(types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    /// Appends the channel settings of the session planning the query.
    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        Some(Box::new(
            |mut function: AggregateFunction, context: &SimplifyContext| {
                let args = &mut function.params.args;
                if args.len() == USER_ARGUMENTS {
                    let config = SessionqlConfig::from_options(context.config_options());
                    args.push(lit(config.channel_definitions));
                    args.push(lit(config.channel_rules));
                }
                Ok(Expr::AggregateFunction(function))
            },
        ))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SinglePick::new(self.groups_accumulator(&args)?)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(pick_state_fields(args.name))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.groups_accumulator(&args)?))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

impl EntryChannelType {
    /// The accumulator for the tables the planned settings name (the
    /// built-in table and no rules when the query was not simplified).
    fn groups_accumulator(&self, args: &AccumulatorArgs) -> Result<ChannelPicks> {
        let config = SessionqlConfig {
            channel_definitions: setting_literal(args.exprs.get(USER_ARGUMENTS))?,
            channel_rules: setting_literal(args.exprs.get(USER_ARGUMENTS + 1))?,
            ..SessionqlConfig::default()
        };
        let (lookup, rules) = self.tables.resolve(&config)?;
        Ok(ChannelPicks {
            picks: PickGroups::new(PickDirection::Entry),
            lookup,
            rules,
        })
    }
}

/// The text of a setting passed as a literal argument; empty when absent.
fn setting_literal(expr: Option<&Arc<dyn PhysicalExpr>>) -> Result<String> {
    let Some(expr) = expr else {
        return Ok(String::new());
    };
    match expr.downcast_ref::<Literal>().map(Literal::value) {
        Some(
            ScalarValue::Utf8(text) | ScalarValue::Utf8View(text) | ScalarValue::LargeUtf8(text),
        ) => Ok(text.clone().unwrap_or_default()),
        _ => exec_err!("{NAME}: the channel settings must be literal strings, got {expr}"),
    }
}

/// Entry picks whose candidate value is the row's channel.
#[derive(Debug)]
struct ChannelPicks {
    picks: PickGroups,
    lookup: Arc<ChannelLookup>,
    rules: Arc<Vec<ChannelRule>>,
}

impl ChannelPicks {
    /// The channel input columns and the pick's key columns of a batch.
    fn columns<'a>(
        &self,
        values: &'a [ArrayRef],
    ) -> Result<(Vec<StringArray>, PickKeyColumns<'a>)> {
        if values.len() < USER_ARGUMENTS {
            return exec_err!(
                "{NAME}: expected {USER_ARGUMENTS} input columns, got {}",
                values.len()
            );
        }
        let inputs = values[..CHANNEL_INPUT_COUNT]
            .iter()
            .map(|column| Ok(as_string_array(column)?.clone()))
            .collect::<Result<Vec<StringArray>>>()?;
        let keys = PickKeyColumns::new(
            &values[CHANNEL_INPUT_COUNT],
            &values[CHANNEL_INPUT_COUNT + 1],
            &values[CHANNEL_INPUT_COUNT + 2],
        )?;
        Ok((inputs, keys))
    }
}

impl HasPicks for ChannelPicks {
    fn picks(&self) -> &PickGroups {
        &self.picks
    }
}

/// The channel of each row, worked out on demand; the last one is kept, as
/// neighbouring rows often carry the same inputs.
struct ChannelCandidates<'a> {
    inputs: Vec<StringArray>,
    lookup: &'a ChannelLookup,
    rules: &'a [ChannelRule],
    /// The last row classified and its channel.
    last: Option<(usize, String)>,
}

impl CandidateValues for ChannelCandidates<'_> {
    fn is_missing(&self, _row: usize) -> bool {
        false
    }

    fn may_have_value(&self) -> Option<NullBuffer> {
        None
    }

    fn value(&mut self, row: usize) -> &str {
        let url_matters = !self.rules.is_empty();
        let inputs = channel_inputs_at(&self.inputs, row, url_matters);
        let same_as_last = self
            .last
            .as_ref()
            .is_some_and(|(last, _)| channel_inputs_at(&self.inputs, *last, url_matters) == inputs);
        if !same_as_last {
            let channel = classify(self.lookup, self.rules, inputs);
            self.last = Some((row, channel));
        }
        self.last
            .as_ref()
            .map_or("", |(_, channel)| channel.as_str())
    }
}

impl GroupsAccumulator for ChannelPicks {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let (inputs, keys) = self.columns(values)?;
        let mut candidates = ChannelCandidates {
            inputs,
            lookup: &self.lookup,
            rules: &self.rules,
            last: None,
        };
        self.picks.fold_candidates(
            &mut candidates,
            &keys,
            group_indices,
            opt_filter,
            total_num_groups,
        )
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.picks.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.picks.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.picks
            .merge_batch(values, group_indices, total_num_groups)
    }

    /// Each row as a state of one candidate: its channel (null where the
    /// filter drops the row), flag, time and tiebreak.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let (inputs, keys) = self.columns(values)?;
        let mut candidates = ChannelCandidates {
            inputs,
            lookup: &self.lookup,
            rules: &self.rules,
            last: None,
        };
        let rows = keys.timestamps.len();
        let mut channels = StringBuilder::with_capacity(rows, rows * 12);
        for row in 0..rows {
            let kept = opt_filter.is_none_or(|filter| is_true(filter, row));
            channels.append_option(kept.then(|| candidates.value(row)));
        }
        Ok(vec![
            Arc::new(channels.finish()),
            Arc::clone(&values[CHANNEL_INPUT_COUNT]),
            Arc::clone(&values[CHANNEL_INPUT_COUNT + 1]),
            Arc::clone(&values[CHANNEL_INPUT_COUNT + 2]),
        ])
    }

    fn size(&self) -> usize {
        self.picks.size()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::TimestampMicrosecondArray;

    use super::*;

    fn accumulator() -> ChannelPicks {
        let tables = ChannelTables::new(None);
        let (lookup, rules) = tables
            .resolve(&SessionqlConfig::default())
            .expect("built-in tables");
        ChannelPicks {
            picks: PickGroups::new(PickDirection::Entry),
            lookup,
            rules,
        }
    }

    /// Rows of three sessions (group = row % 3) as the aggregate's arguments:
    /// referrers vary by row, every fifth row has a utm source and medium,
    /// every fourth row is a pageview.
    fn arguments(rows: std::ops::Range<usize>) -> Vec<ArrayRef> {
        let sources = ["google", "newsletter", "facebook", "bing"];
        let mediums = [Some("cpc"), Some("email"), None, None];
        let referrers = ["www.google.com", "$direct", "t.co", "duckduckgo.com"];
        let text =
            |values: Vec<Option<String>>| -> ArrayRef { Arc::new(StringArray::from(values)) };
        let mut columns: Vec<ArrayRef> = vec![
            text(
                rows.clone()
                    .map(|row| (row % 5 == 0).then(|| sources[row % 4].to_owned()))
                    .collect(),
            ),
            text(
                rows.clone()
                    .map(|row| {
                        mediums[(row / 2) % 4]
                            .filter(|_| row % 5 == 0)
                            .map(str::to_owned)
                    })
                    .collect(),
            ),
            text(rows.clone().map(|_| None).collect()),
            text(
                rows.clone()
                    .map(|row| Some(referrers[(row / 3) % 4].to_owned()))
                    .collect(),
            ),
        ];
        columns.extend((0..4).map(|_| text(rows.clone().map(|_| None).collect())));
        columns.push(Arc::new(BooleanArray::from(
            rows.clone().map(|row| row % 4 == 1).collect::<Vec<_>>(),
        )));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(
                rows.clone()
                    .map(|row| 1_000_000 * ((row * 7919) % 97) as i64)
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ));
        columns.push(text(
            rows.map(|row| Some(format!("uuid-{row:04}"))).collect(),
        ));
        columns
    }

    fn groups(rows: std::ops::Range<usize>) -> Vec<usize> {
        rows.map(|row| row % 3).collect()
    }

    fn channels(accumulator: &mut ChannelPicks) -> Vec<Option<String>> {
        let array = accumulator.evaluate(EmitTo::All).expect("evaluated");
        as_string_array(&array)
            .expect("strings")
            .iter()
            .map(|channel| channel.map(str::to_owned))
            .collect()
    }

    /// Partial states merged, and rows turned into states, give the channels
    /// one accumulator gives over all rows.
    #[test]
    fn merged_states_and_converted_rows_agree_with_one_pass() {
        let mut whole = accumulator();
        whole
            .update_batch(&arguments(0..60), &groups(0..60), None, 3)
            .expect("updated");
        let expected = channels(&mut whole);
        // Not one channel for all: the sessions' entry rows differ.
        assert!(expected.iter().all(Option::is_some));
        assert!(expected.windows(2).any(|pair| pair[0] != pair[1]));

        let (mut first, mut second) = (accumulator(), accumulator());
        first
            .update_batch(&arguments(0..25), &groups(0..25), None, 3)
            .expect("updated");
        second
            .update_batch(&arguments(25..60), &groups(25..60), None, 3)
            .expect("updated");
        let state = second.state(EmitTo::All).expect("state");
        first.merge_batch(&state, &[0, 1, 2], 3).expect("merged");
        assert_eq!(channels(&mut first), expected);

        let mut converted = accumulator();
        let states = converted
            .convert_to_state(&arguments(0..60), None)
            .expect("converted");
        converted
            .merge_batch(&states, &groups(0..60), 3)
            .expect("merged");
        assert_eq!(channels(&mut converted), expected);
    }
}
