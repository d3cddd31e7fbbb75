//! `blank_to_null(value)`: spec §2's reading of marketing fields, where SDKs
//! send `''` or the string `'null'` for "no value". Applied to the utm fields,
//! `gad_source` and the click ids before sessions are built.

use std::sync::{Arc, LazyLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::args::SESSIONQL_DOC_SECTION;
use crate::string_map::{StringMap, StringMapUdf};

/// The `blank_to_null` scalar function.
pub fn blank_to_null_udf() -> Arc<ScalarUDF> {
    StringMapUdf::new_udf(
        "blank_to_null",
        StringMap::KeepOrNull(is_present),
        &DOCUMENTATION,
    )
}

/// `None` for `''` and `'null'`, the value otherwise.
pub fn blank_to_null(value: &str) -> Option<&str> {
    is_present(value).then_some(value)
}

/// False for `''` and `'null'`: whether a marketing field carries a value.
pub fn is_present(value: &str) -> bool {
    !value.is_empty() && value != "null"
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "NULL for the empty string and the string 'null' (how SDKs send a missing \
         utm field or click id), the value otherwise.",
        "blank_to_null(value)",
    )
    .with_sql_example("```sql\n> SELECT blank_to_null('null'); -- NULL\n```")
    .with_argument("value", "A string.")
    .build()
});
