//! `session_length_bucket(duration)` and `session_length_bucket_order(label)`:
//! spec §5's distribution of session lengths, with labels as PostHog shows them
//! and right-inclusive ranges, plus the position of each label so a breakdown
//! can be ordered shortest first.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, Int32Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::as_int64_array;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{
    SESSIONQL_DOC_SECTION, arrays, coerce_to_int64, coerce_to_utf8, documented_signature,
    string_arg,
};

/// Buckets in order: (label, largest duration in seconds it holds).
pub const SESSION_LENGTH_BUCKETS: [(&str, i64); 10] = [
    ("0 seconds (1 event)", 0),
    ("0-3 seconds", 3),
    ("3-10 seconds", 10),
    ("10-30 seconds", 30),
    ("30-60 seconds", 60),
    ("1-3 minutes", 180),
    ("3-10 minutes", 600),
    ("10-30 minutes", 1800),
    ("30-60 minutes", 3600),
    ("1+ hours", i64::MAX),
];

/// Index into [`SESSION_LENGTH_BUCKETS`] of a duration: the first bucket whose
/// upper bound is at least the duration (ranges are right-inclusive).
pub fn bucket_index(duration_seconds: i64) -> usize {
    SESSION_LENGTH_BUCKETS
        .iter()
        .position(|(_, upper)| duration_seconds <= *upper)
        .unwrap_or(SESSION_LENGTH_BUCKETS.len() - 1)
}

/// The `session_length_bucket` scalar function.
pub fn session_length_bucket_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(SessionLengthBucket {
        signature: documented_signature(vec![vec![DataType::Int64]]),
    }))
}

/// The `session_length_bucket_order` scalar function.
pub fn session_length_bucket_order_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(SessionLengthBucketOrder {
        signature: documented_signature(vec![vec![DataType::Utf8]]),
    }))
}

/// Implementation of `session_length_bucket`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionLengthBucket {
    signature: Signature,
}

/// Implementation of `session_length_bucket_order`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionLengthBucketOrder {
    signature: Signature,
}

static BUCKET_DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Label of the session-length bucket of a duration in seconds: '0 seconds (1 event)' \
         (0), '0-3 seconds' (0, 3], '3-10 seconds', '10-30 seconds', '30-60 seconds', \
         '1-3 minutes', '3-10 minutes', '10-30 minutes', '30-60 minutes', '1+ hours' (> 3600).",
        "session_length_bucket(duration_seconds)",
    )
    .with_sql_example(
        "```sql\n> SELECT session_length_bucket(session_duration) AS bucket, count(*)\n  FROM sessions GROUP BY 1 ORDER BY session_length_bucket_order(bucket);\n```",
    )
    .with_argument("duration_seconds", "A session_duration.")
    .with_related_udf("session_length_bucket_order")
    .build()
});

static ORDER_DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Position (0 to 9) of a session_length_bucket label, to order buckets from \
         shortest to longest; NULL for any other string.",
        "session_length_bucket_order(label)",
    )
    .with_sql_example("```sql\n> SELECT session_length_bucket_order('1-3 minutes'); -- 5\n```")
    .with_argument("label", "A label returned by session_length_bucket.")
    .with_related_udf("session_length_bucket")
    .build()
});

impl ScalarUDFImpl for SessionLengthBucket {
    fn name(&self) -> &str {
        "session_length_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [duration] => Ok(vec![coerce_to_int64(self.name(), 0, duration)?]),
            _ => plan_err!("{} takes 1 argument, got {}", self.name(), arg_types.len()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args.args, args.number_rows)?;
        let durations = as_int64_array(&arrays[0])?;
        let labels: StringArray = durations
            .iter()
            .map(|duration| duration.map(|seconds| SESSION_LENGTH_BUCKETS[bucket_index(seconds)].0))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(labels)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&BUCKET_DOCUMENTATION)
    }
}

impl ScalarUDFImpl for SessionLengthBucketOrder {
    fn name(&self) -> &str {
        "session_length_bucket_order"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [label] => Ok(vec![coerce_to_utf8(self.name(), 0, label)?]),
            _ => plan_err!("{} takes 1 argument, got {}", self.name(), arg_types.len()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args.args, args.number_rows)?;
        let labels = string_arg(&arrays, 0, self.name())?;
        let positions: Int32Array = (0..labels.len())
            .map(|row| {
                if labels.is_null(row) {
                    return None;
                }
                let label = labels.value(row);
                SESSION_LENGTH_BUCKETS
                    .iter()
                    .position(|(bucket, _)| *bucket == label)
                    .and_then(|position| i32::try_from(position).ok())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(positions)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&ORDER_DOCUMENTATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_inclusive_boundaries() {
        let label = |seconds| SESSION_LENGTH_BUCKETS[bucket_index(seconds)].0;
        assert_eq!(label(0), "0 seconds (1 event)");
        assert_eq!(label(1), "0-3 seconds");
        assert_eq!(label(3), "0-3 seconds");
        assert_eq!(label(4), "3-10 seconds");
        assert_eq!(label(180), "1-3 minutes");
        assert_eq!(label(3600), "30-60 minutes");
        assert_eq!(label(3601), "1+ hours");
    }
}
