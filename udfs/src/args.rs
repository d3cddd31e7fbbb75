//! Shared plumbing of the scalar functions: turning arguments into typed Arrow
//! arrays, and the documentation section every sessionql function belongs to.

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::as_string_array;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, DocSection, Signature, TypeSignature, Volatility};

/// The section under which `SHOW FUNCTIONS` and the docs list our functions.
pub const SESSIONQL_DOC_SECTION: DocSection = DocSection {
    include: true,
    label: "Session analytics (sessionql)",
    description: Some("Sessionization and session-property functions of sessionql."),
};

/// Whether a row of a condition or filter column is true (NULL is not), as
/// aggregates read them row by row. Reads the bit through the values buffer,
/// which inlines: `BooleanArray::value` is an out-of-line call per row, 1.4%
/// of the full sessions table's instructions.
pub fn is_true(array: &BooleanArray, row: usize) -> bool {
    array.is_valid(row) && array.values().value(row)
}

/// The rows where `array` is true (valid and set), as a bitmap: the values
/// ANDed with the validity, a 64-row word at a time.
pub fn true_rows(array: &BooleanArray) -> BooleanBuffer {
    match array.nulls() {
        Some(nulls) => array.values() & nulls.inner(),
        None => array.values().clone(),
    }
}

/// A signature whose argument types our own `coerce_types` decides (so errors
/// name the function and the argument), and which also lists the canonical
/// argument types, so `SHOW FUNCTIONS` and `information_schema.parameters`
/// can show them (they list nothing for a purely user-defined signature).
pub fn documented_signature(canonical: Vec<Vec<DataType>>) -> Signature {
    let mut variants = vec![TypeSignature::UserDefined];
    variants.extend(canonical.into_iter().map(TypeSignature::Exact));
    Signature::one_of(variants, Volatility::Immutable)
}

/// Every argument as an array of `rows` rows (literals are expanded).
pub fn arrays(args: &[ColumnarValue], rows: usize) -> Result<Vec<ArrayRef>> {
    args.iter().map(|arg| arg.to_array(rows)).collect()
}

/// The argument at `index` as a UTF-8 string array; our signatures coerce every
/// string-like argument to `Utf8`, so anything else is a planning bug.
pub fn string_arg(arrays: &[ArrayRef], index: usize, function: &str) -> Result<StringArray> {
    match arrays.get(index) {
        Some(array) => Ok(as_string_array(array)?.clone()),
        None => exec_err!("{function}: missing argument {}", index + 1),
    }
}

/// Coerces string-like argument types (`Utf8View`, `LargeUtf8`, untyped `NULL`)
/// to `Utf8`, and names the argument when it is not a string at all.
pub fn coerce_to_utf8(function: &str, position: usize, data_type: &DataType) -> Result<DataType> {
    match data_type {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
            Ok(DataType::Utf8)
        }
        DataType::Dictionary(_, value) if value.is_string() => Ok(DataType::Utf8),
        other => plan_err!(
            "{function}: argument {} must be a string, got {other}",
            position + 1
        ),
    }
}

/// Coerces any integer or (for SQL literals like `10.0`) float type to `Int64`.
pub fn coerce_to_int64(function: &str, position: usize, data_type: &DataType) -> Result<DataType> {
    if data_type.is_integer() || data_type.is_floating() || data_type.is_null() {
        Ok(DataType::Int64)
    } else {
        plan_err!(
            "{function}: argument {} must be a number, got {data_type}",
            position + 1
        )
    }
}

/// Coerces any timestamp (or date) to microseconds in UTC, the unit of `events.timestamp`.
pub fn coerce_to_timestamp_us(
    function: &str,
    position: usize,
    data_type: &DataType,
) -> Result<DataType> {
    match data_type {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 | DataType::Null => {
            Ok(crate::timestamp_us_utc())
        }
        other => plan_err!(
            "{function}: argument {} must be a timestamp, got {other}",
            position + 1
        ),
    }
}
