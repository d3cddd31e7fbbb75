//! `session_duration(start_timestamp, end_timestamp)`: whole seconds between two
//! times as spec §2 defines `session_duration`: `floor(end) − floor(start)` in
//! epoch seconds, i.e. the number of second boundaries crossed (ClickHouse's
//! `dateDiff('second')`), so 00:00:00.900 → 00:00:01.100 is 1, not 0.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::as_timestamp_microsecond_array;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{SESSIONQL_DOC_SECTION, arrays, coerce_to_timestamp_us, documented_signature};
use crate::{MICROS_PER_SECOND, timestamp_us_utc};

const NAME: &str = "session_duration";

/// The `session_duration` scalar function.
pub fn session_duration_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(SessionDuration {
        signature: documented_signature(vec![vec![timestamp_us_utc(), timestamp_us_utc()]]),
    }))
}

/// Seconds boundaries crossed between two microsecond timestamps.
pub fn seconds_between(start_us: i64, end_us: i64) -> i64 {
    end_us.div_euclid(MICROS_PER_SECOND) - start_us.div_euclid(MICROS_PER_SECOND)
}

/// Implementation of `session_duration`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionDuration {
    signature: Signature,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Session duration in whole seconds: floor(end) - floor(start) in epoch seconds.",
        "session_duration(start_timestamp, end_timestamp)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_duration(TIMESTAMP '2024-01-01T00:00:00.900Z', TIMESTAMP '2024-01-01T00:00:01.100Z'); -- 1\n```",
    )
    .with_argument("start_timestamp", "The session's first event time.")
    .with_argument("end_timestamp", "The session's last event time.")
    .build()
});

impl ScalarUDFImpl for SessionDuration {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [start, end] => Ok(vec![
                coerce_to_timestamp_us(NAME, 0, start)?,
                coerce_to_timestamp_us(NAME, 1, end)?,
            ]),
            _ => plan_err!(
                "{NAME} takes 2 arguments (start_timestamp, end_timestamp), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args.args, args.number_rows)?;
        let starts = as_timestamp_microsecond_array(&arrays[0])?;
        let ends = as_timestamp_microsecond_array(&arrays[1])?;
        let durations: Int64Array = (0..args.number_rows)
            .map(|row| {
                (starts.is_valid(row) && ends.is_valid(row))
                    .then(|| seconds_between(starts.value(row), ends.value(row)))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(durations)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_second_boundaries() {
        assert_eq!(seconds_between(900_000, 1_100_000), 1);
        assert_eq!(seconds_between(0, 999_999), 0);
        assert_eq!(seconds_between(-1, 0), 1);
    }
}
