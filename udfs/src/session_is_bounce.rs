//! `session_is_bounce(page_count, autocapture_count, duration [, threshold])`:
//! spec §3. NULL for a session without `$pageview` or `$screen`; otherwise true
//! unless it had two or more pageviews/screens, any autocapture, or lasted at
//! least the threshold (default: the session's `sessionql.bounce_duration_seconds`).

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::as_int64_array;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{SESSIONQL_DOC_SECTION, arrays, coerce_to_int64, documented_signature};
use crate::config::SessionqlConfig;

const NAME: &str = "session_is_bounce";

/// The `session_is_bounce` scalar function.
pub fn session_is_bounce_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(SessionIsBounce {
        signature: documented_signature(vec![vec![DataType::Int64; 3], vec![DataType::Int64; 4]]),
    }))
}

/// The bounce rule for one session.
pub fn is_bounce(
    page_count: i64,
    autocapture_count: i64,
    duration: i64,
    threshold: i64,
) -> Option<bool> {
    (page_count > 0).then_some(page_count < 2 && autocapture_count == 0 && duration < threshold)
}

/// Implementation of `session_is_bounce`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionIsBounce {
    signature: Signature,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Whether a session bounced: NULL without pageviews/screens; otherwise true unless \
         it had two or more pageviews/screens, any autocapture, or a duration of at least \
         the threshold (default sessionql.bounce_duration_seconds, 10).",
        "session_is_bounce(pageview_and_screen_count, autocapture_count, duration_seconds [, threshold_seconds])",
    )
    .with_sql_example("```sql\n> SELECT session_is_bounce(1, 0, 9), session_is_bounce(1, 0, 10); -- true, false\n```")
    .with_argument("pageview_and_screen_count", "Distinct $pageview plus $screen events.")
    .with_argument("autocapture_count", "Distinct $autocapture events.")
    .with_argument("duration_seconds", "session_duration of the session.")
    .with_argument("threshold_seconds", "Optional: sessions at least this long never bounce.")
    .build()
});

impl ScalarUDFImpl for SessionIsBounce {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(3..=4).contains(&arg_types.len()) {
            return plan_err!(
                "{NAME} takes 3 or 4 arguments (pageview_and_screen_count, autocapture_count, duration_seconds [, threshold_seconds]), got {}",
                arg_types.len()
            );
        }
        arg_types
            .iter()
            .enumerate()
            .map(|(position, data_type)| coerce_to_int64(NAME, position, data_type))
            .collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args.args, args.number_rows)?;
        let page_counts = as_int64_array(&arrays[0])?;
        let autocapture_counts = as_int64_array(&arrays[1])?;
        let durations = as_int64_array(&arrays[2])?;
        let thresholds = arrays
            .get(3)
            .map(|array| as_int64_array(array))
            .transpose()?;
        let default_threshold = i64::try_from(
            SessionqlConfig::from_options(&args.config_options).bounce_duration_seconds,
        )
        .unwrap_or(i64::MAX);
        let bounces: BooleanArray = (0..args.number_rows)
            .map(|row| {
                if page_counts.is_null(row) {
                    return None;
                }
                let threshold = match thresholds {
                    Some(thresholds) if thresholds.is_null(row) => return None,
                    Some(thresholds) => thresholds.value(row),
                    None => default_threshold,
                };
                let autocaptures = autocapture_counts
                    .is_valid(row)
                    .then(|| autocapture_counts.value(row));
                let duration = durations.is_valid(row).then(|| durations.value(row));
                is_bounce(
                    page_counts.value(row),
                    autocaptures.unwrap_or(0),
                    duration?,
                    threshold,
                )
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(bounces)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[cfg(test)]
mod tests {
    use super::is_bounce;

    #[test]
    fn bounce_boundaries() {
        assert_eq!(is_bounce(0, 0, 0, 10), None);
        assert_eq!(is_bounce(1, 0, 9, 10), Some(true));
        assert_eq!(is_bounce(1, 0, 10, 10), Some(false));
        assert_eq!(is_bounce(2, 0, 0, 10), Some(false));
        assert_eq!(is_bounce(1, 1, 0, 10), Some(false));
    }
}
