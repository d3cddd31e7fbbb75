//! One mechanism for the scalar functions that map a string to a string
//! (`url_pathname`, `url_hostname`, `blank_to_null`): each function supplies its
//! name, documentation and a plain `fn(&str) -> Option<&str>`; this module does
//! the Arrow work once, so none of them repeats it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, StringBuilder};
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
        let mut output = StringBuilder::with_capacity(input.len(), input.value_data().len());
        for row in 0..input.len() {
            let mapped = if input.is_null(row) {
                None
            } else {
                (self.map)(input.value(row))
            };
            output.append_option(mapped);
        }
        Ok(ColumnarValue::Array(Arc::new(output.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(self.documentation)
    }
}
