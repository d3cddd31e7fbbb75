//! `date_trunc` with arithmetic truncation for UTC timestamps.
//!
//! DataFusion truncates timestamps without a time zone to a day, hour or
//! finer unit with integer arithmetic, but sends every timestamp that has a
//! zone, `UTC` included, through per-value calendar conversion: about ten
//! times slower (10M event timestamps: 1.2 s against 0.13 s of CPU). Every
//! time sessionql shows is UTC (`events.timestamp`, `start_timestamp`), and
//! `date_trunc('day', start_timestamp)` is the first line of most session
//! reports. In UTC a day and an hour have fixed lengths, so this wrapper hands
//! such calls to DataFusion's own fast path (the values without their zone)
//! and puts the zone back; anything else goes to DataFusion's function as is.
//! It replaces `date_trunc` (and its alias `datetrunc`) when registered.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, make_array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// `date_trunc` as DataFusion defines it, faster on UTC timestamps.
pub fn date_trunc_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(DateTruncUtc {
        inner: datafusion::functions::datetime::date_trunc(),
    }))
}

/// Implementation of the wrapper; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateTruncUtc {
    inner: Arc<ScalarUDF>,
}

/// Units that have a fixed length in UTC (DataFusion's arithmetic path).
const FIXED_LENGTH_UNITS: [&str; 6] = [
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
    "microsecond",
];

/// Zone names that mean UTC exactly.
fn is_utc(zone: &str) -> bool {
    matches!(zone, "UTC" | "+00:00" | "Z" | "Etc/UTC")
}

/// The zone and the array argument when the call can take the arithmetic
/// path: a literal unit of fixed length and an array of UTC timestamps.
fn utc_array_call(args: &ScalarFunctionArgs) -> Option<(Arc<str>, &ArrayRef)> {
    let [ColumnarValue::Scalar(unit), ColumnarValue::Array(values)] = args.args.as_slice() else {
        return None;
    };
    let unit = match unit {
        ScalarValue::Utf8(Some(unit))
        | ScalarValue::Utf8View(Some(unit))
        | ScalarValue::LargeUtf8(Some(unit)) => unit.to_lowercase(),
        _ => return None,
    };
    if !FIXED_LENGTH_UNITS.contains(&unit.as_str()) {
        return None;
    }
    match values.data_type() {
        DataType::Timestamp(_, Some(zone)) if is_utc(zone) => Some((Arc::clone(zone), values)),
        _ => None,
    }
}

/// `data_type` with its timestamp zone set to `zone` (`None`: no zone).
fn with_zone_type(data_type: &DataType, zone: Option<Arc<str>>) -> DataType {
    match data_type {
        DataType::Timestamp(unit, _) => DataType::Timestamp(*unit, zone),
        other => other.clone(),
    }
}

/// The same timestamps with the time zone `zone`; the values are untouched,
/// only the type changes.
fn with_zone(array: &ArrayRef, zone: Option<Arc<str>>) -> Result<ArrayRef> {
    let data = array
        .to_data()
        .into_builder()
        .data_type(with_zone_type(array.data_type(), zone))
        .build()?;
    Ok(make_array(data))
}

/// A field like `field` whose timestamp type has the zone `zone`.
fn field_with_zone(field: &FieldRef, zone: Option<Arc<str>>) -> FieldRef {
    Arc::new(Field::clone(field).with_data_type(with_zone_type(field.data_type(), zone)))
}

impl ScalarUDFImpl for DateTruncUtc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some((zone, values)) = utc_array_call(&args) else {
            return self.inner.invoke_with_args(args);
        };
        args.args[1] = ColumnarValue::Array(with_zone(values, None)?);
        args.arg_fields = args
            .arg_fields
            .iter()
            .map(|field| field_with_zone(field, None))
            .collect();
        args.return_field = field_with_zone(&args.return_field, None);
        match self.inner.invoke_with_args(args)? {
            ColumnarValue::Array(truncated) => {
                Ok(ColumnarValue::Array(with_zone(&truncated, Some(zone))?))
            }
            scalar => Ok(scalar),
        }
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::common::config::ConfigOptions;

    use super::*;

    fn call(unit: &str, values: ArrayRef) -> ScalarFunctionArgs {
        let field = |data_type: DataType| Arc::new(Field::new("f", data_type, true));
        ScalarFunctionArgs {
            number_rows: values.len(),
            arg_fields: vec![field(DataType::Utf8), field(values.data_type().clone())],
            return_field: field(values.data_type().clone()),
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(unit.into()))),
                ColumnarValue::Array(values),
            ],
            config_options: Arc::new(ConfigOptions::default()),
        }
    }

    /// Microsecond timestamps spread over ±100 years, some null, in `zone`.
    fn timestamps(zone: Option<&str>) -> ArrayRef {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let values = (0..2000).map(|index| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let century_us = 100 * 365 * 86_400 * 1_000_000_i64;
            (index % 17 != 0).then(|| (state % (2 * century_us as u64)) as i64 - century_us)
        });
        Arc::new(TimestampMicrosecondArray::from_iter(values).with_timezone_opt(zone))
    }

    fn array(value: ColumnarValue) -> ArrayRef {
        match value {
            ColumnarValue::Array(array) => array,
            ColumnarValue::Scalar(scalar) => panic!("expected an array, got {scalar}"),
        }
    }

    #[test]
    fn only_fixed_length_units_of_utc_arrays_take_the_arithmetic_path() {
        assert!(utc_array_call(&call("day", timestamps(Some("UTC")))).is_some());
        assert!(utc_array_call(&call("Hour", timestamps(Some("+00:00")))).is_some());
        assert!(utc_array_call(&call("week", timestamps(Some("UTC")))).is_none());
        assert!(utc_array_call(&call("day", timestamps(None))).is_none());
        assert!(utc_array_call(&call("day", timestamps(Some("Europe/Paris")))).is_none());
    }

    /// The arithmetic path gives what DataFusion's calendar path gives.
    #[test]
    fn agrees_with_the_calendar_path_on_utc_timestamps() {
        let wrapper = date_trunc_udf();
        let calendar = datafusion::functions::datetime::date_trunc();
        for unit in FIXED_LENGTH_UNITS {
            let fast = array(
                wrapper
                    .invoke_with_args(call(unit, timestamps(Some("UTC"))))
                    .expect("truncated"),
            );
            let slow = array(
                calendar
                    .invoke_with_args(call(unit, timestamps(Some("UTC"))))
                    .expect("truncated"),
            );
            assert_eq!(fast.data_type(), slow.data_type(), "{unit}");
            assert_eq!(fast.to_data(), slow.to_data(), "{unit}");
        }
    }
}
