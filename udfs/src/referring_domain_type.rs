//! `referring_domain_type(domain)`: the category of a referring domain (or utm
//! source, or app id) in the channel table: Search, Social, Video, Shopping or
//! Email, NULL when unknown, and `$direct` passed through. The same source
//! lookup as `channel_type`, so the two always agree.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{
    SESSIONQL_DOC_SECTION, arrays, coerce_to_utf8, documented_signature, string_arg,
};
use crate::channel_tables::ChannelTables;
use crate::config::SessionqlConfig;

const NAME: &str = "referring_domain_type";
const DIRECT_REFERRER: &str = "$direct";

/// The `referring_domain_type` scalar function, reading user tables through `tables`.
pub fn referring_domain_type_udf(tables: Arc<ChannelTables>) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(ReferringDomainType {
        tables,
        signature: documented_signature(vec![vec![DataType::Utf8]]),
    }))
}

/// Implementation of `referring_domain_type`; see the module documentation.
#[derive(Debug)]
pub struct ReferringDomainType {
    tables: Arc<ChannelTables>,
    signature: Signature,
}

impl PartialEq for ReferringDomainType {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.tables, &other.tables)
    }
}

impl Eq for ReferringDomainType {}

impl Hash for ReferringDomainType {
    fn hash<H: Hasher>(&self, state: &mut H) {
        NAME.hash(state);
    }
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Category of a referring domain in the channel table (Search, Social, Video, \
         Shopping, Email), NULL when unknown, '$direct' passed through. Subdomains \
         are looked up by their registrable domain.",
        "referring_domain_type(domain)",
    )
    .with_sql_example(
        "```sql\n> SELECT referring_domain_type('www.google.co.uk'); -- 'Search'\n```",
    )
    .with_argument("domain", "A referring domain, utm_source or app id.")
    .with_related_udf("channel_type")
    .build()
});

impl ScalarUDFImpl for ReferringDomainType {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [domain] => Ok(vec![coerce_to_utf8(NAME, 0, domain)?]),
            _ => plan_err!("{NAME} takes 1 argument, got {}", arg_types.len()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let config = SessionqlConfig::from_options(&args.config_options);
        let (lookup, _) = self.tables.resolve(&config)?;
        let arrays = arrays(&args.args, args.number_rows)?;
        let domains = string_arg(&arrays, 0, NAME)?;
        let mut types = StringBuilder::with_capacity(domains.len(), domains.len() * 6);
        for row in 0..domains.len() {
            let domain = domains.is_valid(row).then(|| domains.value(row));
            let category = match domain {
                Some(DIRECT_REFERRER) => Some(DIRECT_REFERRER),
                Some(domain) => lookup
                    .source(domain)
                    .and_then(|types| types.domain_type.as_deref()),
                None => None,
            };
            types.append_option(category);
        }
        Ok(ColumnarValue::Array(Arc::new(types.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}
