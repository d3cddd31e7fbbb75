//! One mechanism for the scalar functions that map a string to a string
//! (`url_pathname`, `url_hostname`, `blank_to_null`): each function supplies its
//! name, documentation and a plain `fn(&str) -> Option<&str>`; this module does
//! the Arrow work once, so none of them repeats it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, StringArray, StringBuilder};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer};
use datafusion::arrow::compute::nullif;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{arrays, coerce_to_utf8, documented_signature, string_arg};

/// A string → string scalar function; `map` returning `None` gives SQL NULL.
#[derive(Debug)]
pub struct StringMapUdf {
    name: &'static str,
    map: fn(&str) -> Option<&str>,
    documentation: &'static Documentation,
    signature: Signature,
}

impl StringMapUdf {
    /// Wraps `map` as the SQL function `name`.
    pub fn new_udf(
        name: &'static str,
        map: fn(&str) -> Option<&str>,
        documentation: &'static Documentation,
    ) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(Self {
            name,
            map,
            documentation,
            signature: documented_signature(vec![vec![DataType::Utf8]]),
        }))
    }
}

impl PartialEq for StringMapUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for StringMapUdf {}

impl Hash for StringMapUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl StringMapUdf {
    /// The output when `map` gives every row either NULL or its whole value
    /// (`blank_to_null` always does, on eight columns of every event): the
    /// input's text with a new null mask, no byte copied. `None` as soon as
    /// a row maps to anything else.
    fn map_keeping_whole_values(&self, input: &StringArray) -> Option<StringArray> {
        let mut dropped_bits = vec![0u8; input.len().div_ceil(8)];
        for row in 0..input.len() {
            if input.is_null(row) {
                continue;
            }
            let value = input.value(row);
            match (self.map)(value) {
                None => dropped_bits[row / 8] |= 1 << (row % 8),
                Some(mapped) if std::ptr::eq(mapped, value) => {}
                Some(_) => return None,
            }
        }
        let dropped = BooleanArray::new(
            BooleanBuffer::new(Buffer::from_vec(dropped_bits), 0, input.len()),
            None,
        );
        // `nullif` keeps the buffers and only combines null masks: the text
        // was valid UTF-8 and is not checked again.
        let kept = nullif(input, &dropped).ok()?;
        Some(kept.as_string::<i32>().clone())
    }

    /// The output built row by row, for maps that cut values (`url_pathname`).
    fn map_copying(&self, input: &StringArray) -> StringArray {
        let mut output = StringBuilder::with_capacity(input.len(), input.value_data().len());
        for row in 0..input.len() {
            let mapped = if input.is_null(row) {
                None
            } else {
                (self.map)(input.value(row))
            };
            output.append_option(mapped);
        }
        output.finish()
    }
}

impl ScalarUDFImpl for StringMapUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [value] => Ok(vec![coerce_to_utf8(self.name, 0, value)?]),
            _ => plan_err!("{} takes 1 argument, got {}", self.name, arg_types.len()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args.args, args.number_rows)?;
        let input = string_arg(&arrays, 0, self.name)?;
        let output = match self.map_keeping_whole_values(&input) {
            Some(kept) => kept,
            None => self.map_copying(&input),
        };
        Ok(ColumnarValue::Array(Arc::new(output)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(self.documentation)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;
    use crate::blank_to_null::blank_to_null;
    use crate::url_parts::split_url;

    use crate::args::SESSIONQL_DOC_SECTION;

    static TEST_DOCUMENTATION: LazyLock<Documentation> =
        LazyLock::new(|| Documentation::builder(SESSIONQL_DOC_SECTION, "test", "f(x)").build());

    fn udf(map: fn(&str) -> Option<&str>) -> StringMapUdf {
        StringMapUdf {
            name: "test",
            map,
            documentation: &TEST_DOCUMENTATION,
            signature: documented_signature(vec![vec![DataType::Utf8]]),
        }
    }

    fn rows(array: &StringArray) -> Vec<Option<&str>> {
        array.iter().collect()
    }

    #[test]
    fn whole_value_maps_share_the_input_text_and_null_the_rest() {
        let input = StringArray::from(vec![
            Some("skip"),
            Some("google"),
            Some(""),
            None,
            Some("null"),
            Some("cpc"),
        ])
        .slice(1, 5);
        let blank = udf(blank_to_null);
        let Some(output) = blank.map_keeping_whole_values(&input) else {
            panic!("blank_to_null keeps whole values");
        };
        assert_eq!(
            rows(&output),
            vec![Some("google"), None, None, None, Some("cpc")]
        );
        assert_eq!(output.values().as_ptr(), input.values().as_ptr());
        assert_eq!(rows(&blank.map_copying(&input)), rows(&output));
    }

    #[test]
    fn no_null_output_has_no_null_mask() {
        let input = StringArray::from(vec!["a", "b"]);
        let output = udf(blank_to_null).map_keeping_whole_values(&input);
        assert_eq!(output.and_then(|array| array.nulls().cloned()), None);
    }

    #[test]
    fn cutting_maps_are_copied_row_by_row() {
        let input = StringArray::from(vec![
            Some("https://a.com"),
            Some("https://a.com/x?q=1"),
            None,
        ]);
        let pathname = udf(|url| Some(split_url(url).pathname));
        assert!(pathname.map_keeping_whole_values(&input).is_none());
        assert_eq!(
            rows(&pathname.map_copying(&input)),
            vec![Some(""), Some("/x"), None]
        );
    }
}
