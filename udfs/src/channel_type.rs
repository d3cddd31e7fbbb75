//! `channel_type(utm_source, utm_medium, utm_campaign, referring_domain, gclid,
//! fbclid, gad_source [, entry_url])`: the marketing channel of spec §4, rules
//! in order, after the user's custom rules when the session names a rules file
//! (`entry_url` feeds the rules' `url`, `hostname` and `pathname` keys).

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::args::{
    SESSIONQL_DOC_SECTION, arrays, coerce_to_utf8, documented_signature, string_arg,
};
use crate::blank_to_null::blank_to_null;
use crate::channel_lookup::{ChannelLookup, ChannelTypes};
use crate::channel_rules::{ChannelRule, RuleInputs, first_matching};
use crate::channel_tables::ChannelTables;
use crate::config::SessionqlConfig;

const NAME: &str = "channel_type";
const DIRECT_REFERRER: &str = "$direct";
const PAID_MEDIUMS: [&str; 6] = ["cpc", "cpm", "cpv", "cpa", "ppc", "retargeting"];
const DIRECT_SOURCES: [&str; 3] = ["(direct)", "direct", "$direct"];

/// The `channel_type` scalar function, reading user tables through `tables`.
pub fn channel_type_udf(tables: Arc<ChannelTables>) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(ChannelType {
        tables,
        signature: documented_signature(vec![vec![DataType::Utf8; 7], vec![DataType::Utf8; 8]]),
    }))
}

/// Implementation of `channel_type`; see the module documentation.
#[derive(Debug)]
pub struct ChannelType {
    tables: Arc<ChannelTables>,
    signature: Signature,
}

impl PartialEq for ChannelType {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.tables, &other.tables)
    }
}

impl Eq for ChannelType {}

impl Hash for ChannelType {
    fn hash<H: Hasher>(&self, state: &mut H) {
        NAME.hash(state);
    }
}

/// The inputs of one event, as the SDK sent them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInputs<'a> {
    /// `utm_source`
    pub utm_source: Option<&'a str>,
    /// `utm_medium`
    pub utm_medium: Option<&'a str>,
    /// `utm_campaign`
    pub utm_campaign: Option<&'a str>,
    /// `referring_domain`, `$direct` when the browser had no referrer
    pub referring_domain: Option<&'a str>,
    /// Google Ads click id
    pub gclid: Option<&'a str>,
    /// Meta click id
    pub fbclid: Option<&'a str>,
    /// Google Ads `gad_source`
    pub gad_source: Option<&'a str>,
    /// The entry URL, for custom rules
    pub entry_url: Option<&'a str>,
}

/// How many inputs `channel_type` reads: seven event properties and the URL.
pub const CHANNEL_INPUT_COUNT: usize = 8;

/// The inputs of `row` from the argument columns, in `channel_type`'s order
/// (a missing eighth column reads as no URL). The URL is left out unless it
/// matters (only custom rules read it), so rows differing only in their URL
/// compare equal and can share a channel.
pub fn channel_inputs_at(
    columns: &[StringArray],
    row: usize,
    url_matters: bool,
) -> ChannelInputs<'_> {
    let value = |column: usize| {
        let array = columns.get(column)?;
        array.is_valid(row).then(|| array.value(row))
    };
    ChannelInputs {
        utm_source: value(0),
        utm_medium: value(1),
        utm_campaign: value(2),
        referring_domain: value(3),
        gclid: value(4),
        fbclid: value(5),
        gad_source: value(6),
        entry_url: if url_matters { value(7) } else { None },
    }
}

/// Lower-cases a utm field and reads `''`/`'null'` as missing.
fn normalised(value: Option<&str>) -> Option<String> {
    value.and_then(blank_to_null).map(str::to_lowercase)
}

/// "Mentions shopping": contains `shopping`, or `shop` at the start of a word.
fn mentions_shopping(campaign: &str) -> bool {
    campaign.contains("shopping")
        || campaign.match_indices("shop").any(|(index, _)| {
            campaign[..index]
                .chars()
                .next_back()
                .is_none_or(|before| !before.is_alphanumeric())
        })
}

/// The user's custom rules (on raw values), then spec §4's rules 1 to 4 in order.
pub fn classify(
    lookup: &ChannelLookup,
    rules: &[ChannelRule],
    inputs: ChannelInputs<'_>,
) -> String {
    if !rules.is_empty() {
        let raw = RuleInputs {
            utm_source: inputs.utm_source,
            utm_medium: inputs.utm_medium,
            utm_campaign: inputs.utm_campaign,
            referring_domain: inputs.referring_domain,
            url: inputs.entry_url,
        };
        if let Some(channel) = first_matching(rules, &raw) {
            return channel.to_string();
        }
    }
    let source = normalised(inputs.utm_source);
    let medium = normalised(inputs.utm_medium);
    let campaign = normalised(inputs.utm_campaign);
    let gad_source = inputs.gad_source.and_then(blank_to_null);
    let has_gclid = inputs.gclid.and_then(blank_to_null).is_some();
    let has_fbclid = inputs.fbclid.and_then(blank_to_null).is_some();
    let referring_domain = inputs.referring_domain;
    let campaign = campaign.as_deref();
    let medium = medium.as_deref();
    let source = source.as_deref();

    if campaign.is_some_and(|campaign| campaign.contains("cross-network")) {
        return "Cross Network".into();
    }

    let source_types = source.and_then(|source| lookup.source(source));
    let medium_types = medium.and_then(|medium| lookup.medium(medium));
    let domain_types = referring_domain.and_then(|domain| lookup.source(domain));
    let shopping = campaign.is_some_and(mentions_shopping);
    let video = campaign.is_some_and(|campaign| campaign.contains("video"));
    let pick = |types: Option<&ChannelTypes>, paid: bool| {
        types.and_then(|types| {
            if paid {
                types.paid.clone()
            } else {
                types.organic.clone()
            }
        })
    };

    let paid_medium =
        medium.is_some_and(|medium| PAID_MEDIUMS.contains(&medium) || medium.starts_with("paid"));
    if paid_medium || has_gclid || gad_source.is_some() {
        return pick(source_types, true)
            .or_else(|| shopping.then(|| "Paid Shopping".into()))
            .or_else(|| pick(medium_types, true))
            .or_else(|| pick(domain_types, true))
            .or_else(|| (gad_source == Some("1")).then(|| "Paid Search".into()))
            .or_else(|| video.then(|| "Paid Video".into()))
            .or_else(|| has_fbclid.then(|| "Paid Social".into()))
            .unwrap_or_else(|| "Paid Unknown".into());
    }

    let direct_source = source.is_none_or(|source| DIRECT_SOURCES.contains(&source));
    if referring_domain == Some(DIRECT_REFERRER) && medium.is_none() && direct_source && !has_fbclid
    {
        return "Direct".into();
    }

    pick(source_types, false)
        .or_else(|| shopping.then(|| "Organic Shopping".into()))
        .or_else(|| pick(medium_types, false))
        .or_else(|| pick(domain_types, false))
        .or_else(|| video.then(|| "Organic Video".into()))
        .or_else(|| {
            medium
                .is_some_and(|medium| medium.ends_with("push"))
                .then(|| "Push".into())
        })
        .or_else(|| has_fbclid.then(|| "Organic Social".into()))
        .or_else(|| (referring_domain == Some(DIRECT_REFERRER)).then(|| "Direct".into()))
        .or_else(|| referring_domain.is_some().then(|| "Referral".into()))
        .unwrap_or_else(|| "Unknown".into())
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Marketing channel of a session's entry event (PostHog's rules): Cross Network, \
         Paid Search/Social/Video/Shopping/Unknown, Direct, Organic Search/Social/Video/\
         Shopping, Push, SMS, Audio, Email, Referral, Affiliate, Display or Unknown.",
        "channel_type(utm_source, utm_medium, utm_campaign, referring_domain, gclid, fbclid, gad_source [, entry_url])",
    )
    .with_sql_example(
        "```sql\n> SELECT channel_type('google', 'cpc', NULL, 'www.google.com', NULL, NULL, NULL); -- 'Paid Search'\n```",
    )
    .with_argument("utm_source", "utm_source (case-insensitive; '' and 'null' read as missing).")
    .with_argument("utm_medium", "utm_medium (likewise).")
    .with_argument("utm_campaign", "utm_campaign (likewise).")
    .with_argument("referring_domain", "Referring domain, '$direct' when there was no referrer.")
    .with_argument("gclid", "Google click id; only its presence counts.")
    .with_argument("fbclid", "Meta click id; only its presence counts.")
    .with_argument("gad_source", "Google Ads gad_source; '1' means Search.")
    .with_argument("entry_url", "Optional: the entry URL, for custom rules on url, hostname and pathname.")
    .build()
});

impl ScalarUDFImpl for ChannelType {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(7..=8).contains(&arg_types.len()) {
            return plan_err!(
                "{NAME} takes 7 or 8 arguments (utm_source, utm_medium, utm_campaign, referring_domain, gclid, fbclid, gad_source [, entry_url]), got {}",
                arg_types.len()
            );
        }
        arg_types
            .iter()
            .enumerate()
            .map(|(position, data_type)| coerce_to_utf8(NAME, position, data_type))
            .collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let config = SessionqlConfig::from_options(&args.config_options);
        let (lookup, rules) = self.tables.resolve(&config)?;
        let arrays = arrays(&args.args, args.number_rows)?;
        let columns = (0..arrays.len())
            .map(|index| string_arg(&arrays, index, NAME))
            .collect::<Result<Vec<StringArray>>>()?;
        let mut channels = StringBuilder::with_capacity(args.number_rows, args.number_rows * 12);
        // Neighbouring rows often carry the same inputs (a visit's events
        // repeat its referrer and campaign), so a row equal to the one before
        // reuses its channel. The URL only matters to custom rules.
        let url_matters = !rules.is_empty();
        let mut previous: Option<(ChannelInputs<'_>, String)> = None;
        for row in 0..args.number_rows {
            let inputs = channel_inputs_at(&columns, row, url_matters);
            match &previous {
                Some((previous_inputs, channel)) if *previous_inputs == inputs => {
                    channels.append_value(channel)
                }
                _ => {
                    let channel = classify(&lookup, &rules, inputs);
                    channels.append_value(&channel);
                    previous = Some((inputs, channel));
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(channels.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shop_at_word_start() {
        assert!(mentions_shopping("summer_shop"));
        assert!(mentions_shopping("shop-now"));
        assert!(mentions_shopping("bigshopping"));
        assert!(!mentions_shopping("workshop"));
    }
}
