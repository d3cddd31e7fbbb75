//! One mechanism for the scalar functions that map a string to a string
//! (`url_pathname`, `url_hostname`, `blank_to_null`): each function supplies its
//! name, documentation and a plain function saying what it does to one value
//! ([`StringMap`]); this module does the Arrow work once, so none of them
//! repeats it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, BooleanBufferBuilder, StringArray, StringBuilder,
};
use datafusion::arrow::compute::nullif;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{arrays, coerce_to_utf8, documented_signature, string_arg};

/// What a string function does to each value.
#[derive(Debug, Clone, Copy)]
pub enum StringMap {
    /// Keeps a value whole when the function says so, NULL otherwise
    /// (`blank_to_null`, on eight columns of every event): the output is the
    /// input's text with a new null mask, no byte copied.
    KeepOrNull(fn(&str) -> bool),
    /// Cuts a part out of each value (`url_pathname`); `None` gives NULL.
    Cut(fn(&str) -> Option<&str>),
}

/// A string → string scalar function.
#[derive(Debug)]
pub struct StringMapUdf {
    name: &'static str,
    map: StringMap,
    documentation: &'static Documentation,
    signature: Signature,
}

impl StringMapUdf {
    /// Wraps `map` as the SQL function `name`.
    pub fn new_udf(
        name: &'static str,
        map: StringMap,
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

/// The values `keep` accepts, the others NULL: the input's buffers with a
/// combined null mask (arrow's `nullif` neither copies nor re-checks the text).
///
/// Only non-null rows are asked, found a 64-row word of the null mask at a
/// time: the marketing fields are NULL on all but a few percent of events,
/// and asking every row was 2.5% of the full sessions table's instructions.
fn keep_or_null(input: &StringArray, keep: fn(&str) -> bool) -> Result<StringArray> {
    let mut dropped = BooleanBufferBuilder::new(input.len());
    dropped.append_n(input.len(), false);
    let mut ask = |row| {
        if !keep(input.value(row)) {
            dropped.set_bit(row, true);
        }
    };
    match input.nulls() {
        Some(nulls) => nulls.valid_indices().for_each(&mut ask),
        None => (0..input.len()).for_each(&mut ask),
    }
    let dropped = BooleanArray::new(dropped.finish(), None);
    Ok(nullif(input, &dropped)?.as_string::<i32>().clone())
}

/// The part `cut` takes out of each value, copied into a new array.
fn cut(input: &StringArray, cut: fn(&str) -> Option<&str>) -> StringArray {
    let mut output = StringBuilder::with_capacity(input.len(), input.value_data().len());
    for row in 0..input.len() {
        let part = if input.is_null(row) {
            None
        } else {
            cut(input.value(row))
        };
        output.append_option(part);
    }
    output.finish()
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
        let output = match self.map {
            StringMap::KeepOrNull(keep) => keep_or_null(&input, keep)?,
            StringMap::Cut(part) => cut(&input, part),
        };
        Ok(ColumnarValue::Array(Arc::new(output)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(self.documentation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blank_to_null::{blank_to_null, is_present};
    use crate::url_parts::split_url;

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
        let output = keep_or_null(&input, is_present).expect("kept");
        assert_eq!(
            rows(&output),
            vec![Some("google"), None, None, None, Some("cpc")]
        );
        assert_eq!(output.values().as_ptr(), input.values().as_ptr());
        assert_eq!(rows(&cut(&input, blank_to_null)), rows(&output));
    }

    #[test]
    fn no_null_output_has_no_null_mask() {
        let input = StringArray::from(vec!["a", "b"]);
        let output = keep_or_null(&input, is_present).expect("kept");
        assert_eq!(output.nulls().cloned(), None);
    }

    #[test]
    fn cutting_maps_are_copied_row_by_row() {
        let input = StringArray::from(vec![
            Some("https://a.com"),
            Some("https://a.com/x?q=1"),
            None,
        ]);
        assert_eq!(
            rows(&cut(&input, |url| Some(split_url(url).pathname))),
            vec![Some(""), Some("/x"), None]
        );
    }
}
