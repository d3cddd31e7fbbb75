//! `session_start(timestamp [, idle_timeout_seconds [, max_duration_seconds]])`:
//! the window function that sessionizes events (spec §1, derived sessions).
//!
//! Called as `session_start(timestamp) OVER (PARTITION BY distinct_id ORDER BY
//! timestamp)`, it returns for each event the timestamp of the first event of its
//! session. A new session starts when the gap since the previous event is more
//! than the idle timeout, or the event is more than the maximum length after the
//! session's first event. Together with `session_uuid` it names the session.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, TimestampMicrosecondArray};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::cast::as_timestamp_microsecond_array;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    Documentation, Expr, PartitionEvaluator, Signature, WindowUDF, WindowUDFImpl, lit,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;

use crate::args::{
    SESSIONQL_DOC_SECTION, coerce_to_int64, coerce_to_timestamp_us, documented_signature,
};
use crate::config::{DEFAULT_IDLE_TIMEOUT_SECONDS, DEFAULT_MAX_DURATION_SECONDS, SessionqlConfig};
use crate::{MICROS_PER_SECOND, timestamp_us_utc};

const NAME: &str = "session_start";

/// The `session_start` window function.
pub fn session_start_udwf() -> Arc<WindowUDF> {
    Arc::new(WindowUDF::from(SessionStart::new()))
}

/// Implementation of `session_start`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionStart {
    signature: Signature,
}

impl SessionStart {
    fn new() -> Self {
        Self {
            signature: documented_signature(vec![
                vec![timestamp_us_utc()],
                vec![timestamp_us_utc(), DataType::Int64],
                vec![timestamp_us_utc(), DataType::Int64, DataType::Int64],
            ]),
        }
    }
}

impl Default for SessionStart {
    fn default() -> Self {
        Self::new()
    }
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Sessionizes ordered events: returns the timestamp of the first event of the \
         session each event belongs to. A new session starts when the gap since the \
         previous event is more than the idle timeout, or the event is more than the \
         maximum session length after the session's first event. Without the optional \
         arguments the session's settings `sessionql.session_idle_timeout_seconds` \
         (default 1800) and `sessionql.session_max_duration_seconds` (default 86400) apply.",
        "session_start(timestamp [, idle_timeout_seconds [, max_duration_seconds]]) \
         OVER (PARTITION BY distinct_id ORDER BY timestamp)",
    )
    .with_sql_example(
        "```sql\n> SELECT distinct_id, timestamp,\n    session_start(timestamp) OVER (PARTITION BY distinct_id ORDER BY timestamp) AS started\n  FROM events;\n```",
    )
    .with_argument("timestamp", "Event time; the window must be ordered by it, ascending.")
    .with_argument(
        "idle_timeout_seconds",
        "Optional constant: longest gap, in seconds, inside one session.",
    )
    .with_argument(
        "max_duration_seconds",
        "Optional constant: longest span, in seconds, from a session's first event.",
    )
    .with_related_udf("session_uuid")
    .build()
});

impl WindowUDFImpl for SessionStart {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.is_empty() || arg_types.len() > 3 {
            return plan_err!(
                "{NAME} takes 1 to 3 arguments (timestamp, idle_timeout_seconds, max_duration_seconds), got {}",
                arg_types.len()
            );
        }
        arg_types
            .iter()
            .enumerate()
            .map(|(position, data_type)| match position {
                0 => coerce_to_timestamp_us(NAME, position, data_type),
                _ => coerce_to_int64(NAME, position, data_type),
            })
            .collect()
    }

    /// Fills in the timeouts the query left out from the session's settings, so
    /// `SET sessionql.session_idle_timeout_seconds = …` changes the next query.
    fn simplify(&self) -> Option<datafusion::logical_expr::function::WindowFunctionSimplification> {
        Some(Box::new(
            |mut window_function: WindowFunction, context: &SimplifyContext| {
                let args = &mut window_function.params.args;
                if args.len() < 3 {
                    let config = SessionqlConfig::from_options(context.config_options());
                    if args.len() < 2 {
                        args.push(lit(clamp_to_i64(config.session_idle_timeout_seconds)));
                    }
                    args.push(lit(clamp_to_i64(config.session_max_duration_seconds)));
                }
                Ok(Expr::from(window_function))
            },
        ))
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let (idle_timeout_us, max_duration_us) = session_start_timeouts_us(args.input_exprs())?;
        Ok(Box::new(SessionStartEvaluator {
            idle_timeout_us,
            max_duration_us,
        }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            timestamp_us_utc(),
            true,
        )))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

fn clamp_to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// Reads an optional constant argument; the window machinery evaluates
/// arguments per row, but a timeout that changed from row to row would make
/// sessions meaningless, so only literals are accepted.
fn constant_seconds(
    expr: Option<&Arc<dyn PhysicalExpr>>,
    argument: &str,
    default: u64,
) -> Result<i64> {
    let Some(expr) = expr else {
        return Ok(clamp_to_i64(default));
    };
    match expr.downcast_ref::<Literal>().map(Literal::value) {
        Some(ScalarValue::Int64(Some(seconds))) if *seconds >= 0 => Ok(*seconds),
        Some(ScalarValue::Int64(Some(seconds))) => {
            exec_err!("{NAME}: {argument} must not be negative, got {seconds}")
        }
        _ => exec_err!("{NAME}: {argument} must be a constant number of seconds, got {expr}"),
    }
}

/// The idle timeout and maximum length, in microseconds, of a
/// `session_start` call's physical arguments (`timestamp`, then the two
/// constants `simplify` fills in when the query leaves them out).
///
/// Public so that an operator computing the same window by other means
/// (the local engine's in-place sessionizer) reads them as this function does.
pub fn session_start_timeouts_us(args: &[Arc<dyn PhysicalExpr>]) -> Result<(i64, i64)> {
    let idle_timeout_seconds = constant_seconds(
        args.get(1),
        "idle_timeout_seconds",
        DEFAULT_IDLE_TIMEOUT_SECONDS,
    )?;
    let max_duration_seconds = constant_seconds(
        args.get(2),
        "max_duration_seconds",
        DEFAULT_MAX_DURATION_SECONDS,
    )?;
    Ok((
        idle_timeout_seconds.saturating_mul(MICROS_PER_SECOND),
        max_duration_seconds.saturating_mul(MICROS_PER_SECOND),
    ))
}

/// The rule of spec §1 for derived sessions, applied to one user's events
/// in timestamp order: each event's session start.
///
/// The one place the rule is written; `session_start`'s evaluator walks a
/// window partition with it, and the local engine's in-place sessionizer
/// walks each user's events in sorted order with it.
#[derive(Debug, Clone, Copy)]
pub struct SessionWalk {
    idle_timeout_us: i64,
    max_duration_us: i64,
    /// The running session: (its start, the previous event's timestamp).
    current: Option<(i64, i64)>,
}

impl SessionWalk {
    /// A walk with these limits, before any user's first event.
    pub fn new(idle_timeout_us: i64, max_duration_us: i64) -> Self {
        Self {
            idle_timeout_us,
            max_duration_us,
            current: None,
        }
    }

    /// Forgets the running session: the next event is a new user's first.
    pub fn next_user(&mut self) {
        self.current = None;
    }

    /// The start of the session of an event at `timestamp` (the user's
    /// non-null timestamps must come in ascending order); `None` if it is
    /// earlier than the previous event's, which means the input was not
    /// sorted.
    pub fn start_of(&mut self, timestamp: i64) -> Option<i64> {
        let start = match self.current {
            Some((start, previous)) => {
                if timestamp < previous {
                    return None;
                }
                let idle = timestamp - previous > self.idle_timeout_us;
                let too_long = timestamp - start > self.max_duration_us;
                if idle || too_long { timestamp } else { start }
            }
            None => timestamp,
        };
        self.current = Some((start, timestamp));
        Some(start)
    }
}

/// Walks one `distinct_id`'s events in timestamp order.
#[derive(Debug)]
struct SessionStartEvaluator {
    idle_timeout_us: i64,
    max_duration_us: i64,
}

impl PartitionEvaluator for SessionStartEvaluator {
    /// Assumes the partition is sorted by timestamp ascending (checked: a
    /// decreasing timestamp is an error, as the ORDER BY was missing or wrong).
    /// Null timestamps get a null start and do not touch the running session.
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let Some(timestamps) = values.first() else {
            return exec_err!("{NAME}: missing timestamp argument");
        };
        let timestamps = as_timestamp_microsecond_array(timestamps)?;
        let mut walk = SessionWalk::new(self.idle_timeout_us, self.max_duration_us);
        let mut starts = Vec::with_capacity(num_rows);
        for index in 0..num_rows {
            if timestamps.is_null(index) {
                starts.push(0);
                continue;
            }
            let Some(start) = walk.start_of(timestamps.value(index)) else {
                return exec_err!("{UNORDERED_WINDOW}");
            };
            starts.push(start);
        }
        let starts =
            TimestampMicrosecondArray::new(ScalarBuffer::from(starts), timestamps.nulls().cloned())
                .with_timezone("UTC");
        Ok(Arc::new(starts))
    }
}

/// The error for a window whose timestamps decrease.
const UNORDERED_WINDOW: &str = "session_start needs its window ordered by timestamp \
    ascending: use OVER (PARTITION BY distinct_id ORDER BY timestamp)";

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_US: i64 = 60 * MICROS_PER_SECOND;
    const HOUR_US: i64 = 60 * MINUTE_US;

    #[test]
    fn a_walk_starts_sessions_after_the_idle_timeout_or_the_longest_span() {
        // Spec §1's defaults: 30 minutes idle, 24 hours at most.
        let mut walk = SessionWalk::new(30 * MINUTE_US, 24 * HOUR_US);
        // Exactly 30 minutes idle stays in the session; a microsecond more
        // starts one.
        assert_eq!(walk.start_of(0), Some(0));
        assert_eq!(walk.start_of(30 * MINUTE_US), Some(0));
        assert_eq!(walk.start_of(60 * MINUTE_US + 1), Some(60 * MINUTE_US + 1));
        // Events every 20 minutes from 01:00:00.000001 stay in that session
        // until more than 24 hours after its start.
        let session = 60 * MINUTE_US + 1;
        let mut at = session;
        while at + 20 * MINUTE_US - session <= 24 * HOUR_US {
            at += 20 * MINUTE_US;
            assert_eq!(walk.start_of(at), Some(session));
        }
        at += 20 * MINUTE_US;
        assert_eq!(walk.start_of(at), Some(at));
        // An earlier event than the previous one: the input was not sorted.
        assert_eq!(walk.start_of(at - 1), None);
        // A new user starts afresh, whatever came before.
        walk.next_user();
        assert_eq!(walk.start_of(5), Some(5));
    }
}
