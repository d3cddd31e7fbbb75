//! Time filters on sessions reach the events scan.
//!
//! `SELECT … FROM sessions WHERE start_timestamp >= X` filters sessions, which
//! are aggregates of events; DataFusion cannot move a filter on an aggregate's
//! output below it, so every event of every day would be read and sessionized
//! to keep the last week. This analyzer rule adds, below the aggregation of the
//! `sessions` view, a filter on the events' own `timestamp`, widened by the
//! margin `W` = longest session + idle timeout (24 h 30 min by default):
//!
//! - `start_timestamp >= X` (or `>`, `=`, `BETWEEN X AND …`) keeps events with
//!   `timestamp >= X - W`;
//! - `start_timestamp <= Y` (or `<`, `=`, `BETWEEN … AND Y`) keeps events with
//!   `timestamp <= Y + W`;
//! - the same with `start_timestamp` cast to a date or a coarser timestamp, or
//!   under `date_trunc(unit, …)`, widened further by one such unit.
//!
//! The filter on `start_timestamp` itself stays where the user wrote it, so
//! sessions are kept or dropped by their real start. Widening keeps every
//! event of a kept session, and the events a derived session's start depends
//! on, in all but two cases, both far outside normal traffic: a user active
//! with no idle gap for longer than `W` right up to `X` (the 24-hour splits of
//! that run are then counted from the first kept event), and a session whose
//! SDK-given id spans a gap longer than `W` around `X`. For such data, `SET
//! sessionql.session_time_filter_pushdown = false` turns the rule off.
//!
//! It is an analyzer rule, run once per query on the session that plans it
//! (the client, on a cluster), after the views are inlined and types coerced
//! and before DataFusion's optimizer pushes the new filter into the Parquet
//! scan, where row groups outside the range are skipped.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Cast, Expr, Filter, LogicalPlan, Operator, and, lit,
};
use datafusion::optimizer::AnalyzerRule;
use sessionql_udfs::SessionqlConfig;

/// The alias under which the `session_events` view is inlined; the rule only
/// rewrites aggregations over it, that is the `sessions` view.
const SESSION_EVENTS: &str = "session_events";

/// The analyzer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct SessionTimeFilter;

/// Which side of the range a filter on `start_timestamp` bounds.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// Sessions starting at or after the value.
    From,
    /// Sessions starting at or before the value.
    Until,
}

/// One side of the range a filter on `start_timestamp` allows.
#[derive(Debug, Clone)]
struct Bound {
    side: Side,
    value: Expr,
    /// How far, in seconds, the start may lie from what the filter compared:
    /// `CAST(start_timestamp AS DATE)` is up to a day below the start.
    slack_seconds: u64,
}

impl AnalyzerRule for SessionTimeFilter {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let settings = SessionqlConfig::from_options(config);
        if !settings.session_time_filter_pushdown {
            return Ok(plan);
        }
        let default_margin_seconds = settings
            .session_max_duration_seconds
            .saturating_add(settings.session_idle_timeout_seconds);
        plan.transform_down_with_subqueries(|node| {
            let LogicalPlan::Filter(filter) = &node else {
                return Ok(Transformed::no(node));
            };
            let bounds = start_timestamp_bounds(filter);
            if bounds.is_empty() {
                return Ok(Transformed::no(node));
            }
            match with_scan_bounds(&filter.input, &bounds, default_margin_seconds)? {
                Some(input) => Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                    filter.predicate.clone(),
                    Arc::new(input),
                )?))),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "sessionql_session_time_filter"
    }
}

/// The bounds that `filter`'s conjuncts put on a column that is the
/// `min(timestamp)` of the `sessions` aggregation below it.
fn start_timestamp_bounds(filter: &Filter) -> Vec<Bound> {
    let mut bounds = Vec::new();
    for conjunct in split_conjunction(&filter.predicate) {
        let mut push = |compared: &Expr, side: Side, value: &Expr| {
            if let Some((column, slack_seconds)) = rounded_column(compared)
                && is_session_start(&filter.input, &column)
            {
                bounds.push(Bound {
                    side,
                    value: value.clone(),
                    slack_seconds,
                });
            }
        };
        match conjunct {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, op, value) = if is_constant(right) {
                    (left.as_ref(), *op, right.as_ref())
                } else if is_constant(left) {
                    match op.swap() {
                        Some(swapped) => (right.as_ref(), swapped, left.as_ref()),
                        None => continue,
                    }
                } else {
                    continue;
                };
                match op {
                    Operator::GtEq | Operator::Gt => push(column, Side::From, value),
                    Operator::LtEq | Operator::Lt => push(column, Side::Until, value),
                    Operator::Eq => {
                        push(column, Side::From, value);
                        push(column, Side::Until, value);
                    }
                    _ => {}
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_constant(low) && is_constant(high) => {
                push(expr, Side::From, low);
                push(expr, Side::Until, high);
            }
            _ => {}
        }
    }
    bounds
}

/// A column, possibly under functions that round it to a coarser unit (casts
/// that type coercion or the user added, `date_trunc`), with how far in
/// seconds the rounded value can lie from the column's: the bound on the
/// events is widened by that much more. Other functions are refused.
fn rounded_column(expr: &Expr) -> Option<(Column, u64)> {
    let (inner, unit_seconds) = match expr {
        Expr::Column(column) => return Some((column.clone(), 0)),
        Expr::Cast(Cast { expr, field })
        | Expr::TryCast(datafusion::logical_expr::TryCast { expr, field }) => {
            let unit_seconds = match field.data_type() {
                DataType::Timestamp(..) => 1,
                DataType::Date32 | DataType::Date64 => SECONDS_PER_DAY,
                _ => return None,
            };
            (expr.as_ref(), unit_seconds)
        }
        Expr::ScalarFunction(call) if call.name() == "date_trunc" => {
            let [Expr::Literal(ScalarValue::Utf8(Some(unit)), _), inner] = call.args.as_slice()
            else {
                return None;
            };
            (inner, date_trunc_unit_seconds(unit)?)
        }
        _ => return None,
    };
    let (column, inner_seconds) = rounded_column(inner)?;
    Some((column, inner_seconds.saturating_add(unit_seconds)))
}

const SECONDS_PER_DAY: u64 = 86_400;

/// The longest span of one `date_trunc` unit, in seconds.
fn date_trunc_unit_seconds(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => SECONDS_PER_DAY,
        "week" => 7 * SECONDS_PER_DAY,
        "month" => 31 * SECONDS_PER_DAY,
        "quarter" => 92 * SECONDS_PER_DAY,
        "year" => 366 * SECONDS_PER_DAY,
        _ => return None,
    })
}

/// An expression without columns or subqueries (a literal, `now() - INTERVAL
/// …`, a parameter), the same for every row.
fn is_constant(expr: &Expr) -> bool {
    let has_subquery = expr
        .exists(|node| {
            Ok(matches!(
                node,
                Expr::ScalarSubquery(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::OuterReferenceColumn(..)
            ))
        })
        .unwrap_or(true);
    expr.column_refs().is_empty() && !expr.is_volatile() && !has_subquery
}

/// Whether `column` of `plan` is, through aliases and projections, the
/// `min(timestamp)` of an aggregation by `session_id` over `session_events`.
fn is_session_start(plan: &LogicalPlan, column: &Column) -> bool {
    match plan {
        LogicalPlan::Filter(filter) => is_session_start(&filter.input, column),
        LogicalPlan::SubqueryAlias(alias) => match alias.schema.index_of_column(column) {
            Ok(index) => {
                let (qualifier, field) = alias.input.schema().qualified_field(index);
                is_session_start(&alias.input, &Column::new(qualifier.cloned(), field.name()))
            }
            Err(_) => false,
        },
        LogicalPlan::Projection(projection) => match projection.schema.index_of_column(column) {
            Ok(index) => match projection.expr[index].clone().unalias() {
                Expr::Column(inner) => is_session_start(&projection.input, &inner),
                _ => false,
            },
            Err(_) => false,
        },
        LogicalPlan::Aggregate(aggregate) => {
            let Ok(index) = aggregate.schema.index_of_column(column) else {
                return false;
            };
            let groups = aggregate.group_expr.len();
            let by_session_id = groups == 1
                && matches!(&aggregate.group_expr[0], Expr::Column(group) if group.name == "session_id");
            by_session_id
                && index >= groups
                && is_min_of_timestamp(&aggregate.aggr_expr[index - groups])
                && reads_session_events(&aggregate.input)
        }
        _ => false,
    }
}

/// `min(timestamp)`, plain.
fn is_min_of_timestamp(expr: &Expr) -> bool {
    match expr {
        Expr::Alias(alias) => is_min_of_timestamp(&alias.expr),
        Expr::AggregateFunction(AggregateFunction { func, params }) => {
            func.name() == "min"
                && !params.distinct
                && params.filter.is_none()
                && matches!(params.args.as_slice(), [Expr::Column(column)] if column.name == "timestamp")
        }
        _ => false,
    }
}

/// Whether `plan` reaches the `session_events` view through projections.
fn reads_session_events(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::SubqueryAlias(alias) => alias.alias.table() == SESSION_EVENTS,
        LogicalPlan::Projection(projection) => reads_session_events(&projection.input),
        LogicalPlan::Filter(filter) => reads_session_events(&filter.input),
        _ => false,
    }
}

/// `plan` (the chain above the sessions aggregation) with the events scans
/// under the aggregation filtered to `bounds`; `None` when the plan has a
/// shape the rule does not know, which it then leaves alone.
fn with_scan_bounds(
    plan: &LogicalPlan,
    bounds: &[Bound],
    default_margin_seconds: u64,
) -> Result<Option<LogicalPlan>> {
    let input = match plan {
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Projection(_) => {
            with_scan_bounds(plan.inputs()[0], bounds, default_margin_seconds)?
        }
        LogicalPlan::Aggregate(aggregate) => {
            let margin = session_margin(&aggregate.input, default_margin_seconds);
            filtered_scans(&aggregate.input, bounds, margin)?
        }
        _ => return Ok(None),
    };
    with_input(plan, input)
}

/// `plan` over `input` in place of its only input; `None` stays `None`.
fn with_input(plan: &LogicalPlan, input: Option<LogicalPlan>) -> Result<Option<LogicalPlan>> {
    match input {
        Some(input) => Ok(Some(plan.with_new_exprs(plan.expressions(), vec![input])?)),
        None => Ok(None),
    }
}

/// The margin in seconds: the default, or the largest one of a
/// `session_start` call below that names its idle timeout and cap itself.
fn session_margin(plan: &LogicalPlan, default_margin_seconds: u64) -> u64 {
    let mut margin = default_margin_seconds;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Window(window) = node {
            for expr in &window.window_expr {
                if let Some(seconds) = window_call_margin(expr) {
                    margin = margin.max(seconds);
                }
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    margin
}

/// Idle timeout + cap of a `session_start(ts, idle, cap)` call with literal
/// arguments.
fn window_call_margin(expr: &Expr) -> Option<u64> {
    let Expr::WindowFunction(call) = expr.clone().unalias() else {
        return None;
    };
    let seconds = |arg: Option<&Expr>| match arg {
        Some(Expr::Literal(ScalarValue::Int64(Some(value)), _)) => u64::try_from(*value).ok(),
        _ => None,
    };
    let args = &call.params.args;
    Some(seconds(args.get(1))?.saturating_add(seconds(args.get(2))?))
}

/// The events side of the sessions aggregation with each `events` scan
/// filtered to `bounds` widened by `margin_seconds`.
fn filtered_scans(
    plan: &LogicalPlan,
    bounds: &[Bound],
    margin_seconds: u64,
) -> Result<Option<LogicalPlan>> {
    match plan {
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Projection(_) => {
            with_input(
                plan,
                filtered_scans(plan.inputs()[0], bounds, margin_seconds)?,
            )
        }
        LogicalPlan::Window(window) => {
            if !window.window_expr.iter().all(is_session_start_call) {
                return Ok(None);
            }
            with_input(plan, filtered_scans(&window.input, bounds, margin_seconds)?)
        }
        LogicalPlan::Union(union) => {
            let mut inputs = Vec::with_capacity(union.inputs.len());
            for input in &union.inputs {
                match filtered_scans(input, bounds, margin_seconds)? {
                    Some(input) => inputs.push(input),
                    None => return Ok(None),
                }
            }
            Ok(Some(plan.with_new_exprs(plan.expressions(), inputs)?))
        }
        LogicalPlan::TableScan(scan) if scan.table_name.table() == "events" => {
            let Ok(timestamp) = scan
                .projected_schema
                .qualified_field_with_unqualified_name("timestamp")
            else {
                return Ok(None);
            };
            let (qualifier, field) = timestamp;
            let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
            let predicate = scan_predicate(&column, field.data_type(), bounds, margin_seconds);
            Ok(Some(LogicalPlan::Filter(Filter::try_new(
                predicate,
                Arc::new(plan.clone()),
            )?)))
        }
        _ => Ok(None),
    }
}

/// Whether a window expression is a call of sessionql's `session_start`.
fn is_session_start_call(expr: &Expr) -> bool {
    match expr {
        Expr::Alias(alias) => is_session_start_call(&alias.expr),
        Expr::WindowFunction(call) => {
            let WindowFunction { fun, .. } = call.as_ref();
            fun.name() == "session_start"
        }
        _ => false,
    }
}

/// `timestamp >= from - W AND timestamp <= until + W` for the given bounds,
/// each widened further by its slack.
fn scan_predicate(
    timestamp: &Expr,
    timestamp_type: &DataType,
    bounds: &[Bound],
    margin_seconds: u64,
) -> Expr {
    let interval = |seconds: u64| {
        lit(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano {
                months: 0,
                days: 0,
                nanoseconds: i64::try_from(seconds)
                    .unwrap_or(i64::MAX / 1_000_000_000)
                    .saturating_mul(1_000_000_000),
            },
        )))
    };
    let as_timestamp = |value: Expr| Expr::Cast(Cast::new(Box::new(value), timestamp_type.clone()));
    bounds
        .iter()
        .map(|bound| {
            let widening = interval(margin_seconds.saturating_add(bound.slack_seconds));
            let value = as_timestamp(bound.value.clone());
            match bound.side {
                Side::From => timestamp.clone().gt_eq(value - widening),
                Side::Until => timestamp.clone().lt_eq(value + widening),
            }
        })
        .reduce(and)
        .unwrap_or_else(|| lit(true))
}
