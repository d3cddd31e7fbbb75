//! The lookup tables behind `channel_type` and `referring_domain_type` (spec
//! §4): for a utm source or a referring domain, and for a utm medium, the
//! channel it means when the session is paid and when it is organic.
//!
//! The built-in table is `udfs/data/channel_lookup.tsv`, the project's own list
//! written from common knowledge and compiled into the binary. A table in
//! PostHog's format (rows `[key, kind, domain_type, type_if_paid,
//! type_if_organic, is_app_id]`) can replace it: this module parses the text;
//! reading the file is the engine's business (this crate does no I/O).

use datafusion::common::HashMap;

use serde_json::Value;

const BUILT_IN_TABLE: &str = include_str!("../data/channel_lookup.tsv");

/// The channels one key stands for, and its domain category.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelTypes {
    /// Channel when the session is paid (`Paid Search`, `Display`, …).
    pub paid: Option<String>,
    /// Channel when the session is organic (`Organic Search`, `Email`, …).
    pub organic: Option<String>,
    /// For sources: Search, Social, Video, Shopping or Email.
    pub domain_type: Option<String>,
}

/// Source and medium lookups, built once and shared by every call. The maps
/// hash with DataFusion's default (foldhash), not the standard library's
/// SipHash: every event's referring domain and medium are looked up here,
/// and SipHash was 2.5% of a channel breakdown's time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelLookup {
    sources: HashMap<String, ChannelTypes>,
    mediums: HashMap<String, ChannelTypes>,
}

/// The category of a built-in source row, from its channel names.
fn category_of(paid: Option<&str>, organic: Option<&str>) -> Option<String> {
    match (paid, organic) {
        (Some("Email"), Some("Email")) => Some("Email".into()),
        (_, Some(organic)) => organic.strip_prefix("Organic ").map(str::to_string),
        _ => None,
    }
}

impl ChannelLookup {
    /// The built-in table shipped with sessionql.
    pub fn built_in() -> Result<Self, String> {
        Self::parse_tsv(BUILT_IN_TABLE)
    }

    /// Parses the built-in `kind<TAB>key<TAB>type_if_paid<TAB>type_if_organic`
    /// format (`-` for none; `#` starts a comment line). Errors name the line.
    pub fn parse_tsv(text: &str) -> Result<Self, String> {
        let mut lookup = Self::default();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [kind, key, paid, organic] = fields.as_slice() else {
                return Err(format!(
                    "channel table line {}: expected 4 tab-separated fields",
                    index + 1
                ));
            };
            let paid = (*paid != "-").then_some(*paid);
            let organic = (*organic != "-").then_some(*organic);
            let types = ChannelTypes {
                paid: paid.map(str::to_string),
                organic: organic.map(str::to_string),
                domain_type: if *kind == "source" {
                    category_of(paid, organic)
                } else {
                    None
                },
            };
            lookup
                .insert(kind, key, types)
                .map_err(|error| format!("channel table line {}: {error}", index + 1))?;
        }
        Ok(lookup)
    }

    /// Parses a table in PostHog's JSON format: an array of rows
    /// `[key, kind, domain_type, type_if_paid, type_if_organic, is_app_id]`,
    /// kind `source` or `medium`. Errors name the row (1-based) and the problem.
    pub fn parse_posthog_json(text: &str) -> Result<Self, String> {
        let rows: Value =
            serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))?;
        let Value::Array(rows) = rows else {
            return Err("expected a JSON array of rows".into());
        };
        let mut lookup = Self::default();
        for (index, row) in rows.iter().enumerate() {
            let row_error = |problem: &str| format!("row {}: {problem}: {row}", index + 1);
            let Some(fields) = row.as_array().filter(|fields| fields.len() == 6) else {
                return Err(row_error(
                    "expected [key, kind, domain_type, type_if_paid, type_if_organic, is_app_id]",
                ));
            };
            let text_or_null = |position: usize, name: &str| match &fields[position] {
                Value::Null => Ok(None),
                Value::String(text) => Ok(Some(text.clone())),
                _ => Err(row_error(&format!("{name} must be a string or null"))),
            };
            let Some(key) = text_or_null(0, "key")?.filter(|key| !key.is_empty()) else {
                return Err(row_error("key must be a non-empty string"));
            };
            let kind = text_or_null(1, "kind")?.unwrap_or_default();
            if !fields[5].is_boolean() {
                return Err(row_error("is_app_id must be true or false"));
            }
            let types = ChannelTypes {
                domain_type: text_or_null(2, "domain_type")?,
                paid: text_or_null(3, "type_if_paid")?,
                organic: text_or_null(4, "type_if_organic")?,
            };
            lookup
                .insert(&kind, &key, types)
                .map_err(|error| row_error(&error))?;
        }
        Ok(lookup)
    }

    fn insert(&mut self, kind: &str, key: &str, types: ChannelTypes) -> Result<(), String> {
        let table = match kind {
            "source" => &mut self.sources,
            "medium" => &mut self.mediums,
            other => return Err(format!("kind must be 'source' or 'medium', got '{other}'")),
        };
        table.insert(key.to_string(), types);
        Ok(())
    }

    /// A source lookup (utm_source or referring domain): the value as given,
    /// then its registrable domain by the public suffix list, so
    /// `www.google.co.uk` finds `google.co.uk` and `l.facebook.com` finds
    /// `facebook.com`.
    pub fn source(&self, value: &str) -> Option<&ChannelTypes> {
        self.sources.get(value).or_else(|| {
            psl::domain_str(value)
                .filter(|registrable| *registrable != value)
                .and_then(|registrable| self.sources.get(registrable))
        })
    }

    /// A medium lookup: exact.
    pub fn medium(&self, value: &str) -> Option<&ChannelTypes> {
        self.mediums.get(value)
    }

    /// How many source and medium keys the table holds.
    pub fn len(&self) -> (usize, usize) {
        (self.sources.len(), self.mediums.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_table_parses_and_cuts_registrable_domains() {
        let lookup = ChannelLookup::built_in().unwrap();
        let organic = |value: &str| lookup.source(value).and_then(|types| types.organic.clone());
        assert_eq!(
            organic("www.google.co.uk").as_deref(),
            Some("Organic Search")
        );
        assert_eq!(organic("l.facebook.com").as_deref(), Some("Organic Social"));
        assert_eq!(
            organic("a.b.c.youtube.com").as_deref(),
            Some("Organic Video")
        );
        assert_eq!(organic("com"), None);
        let medium = lookup.medium("cpm").and_then(|types| types.paid.clone());
        assert_eq!(medium.as_deref(), Some("Display"));
        let gmail = lookup
            .source("com.google.android.gm")
            .and_then(|types| types.domain_type.clone());
        assert_eq!(gmail.as_deref(), Some("Email"));
        assert!(lookup.len().0 > 500);
    }

    #[test]
    fn malformed_rows_are_named() {
        let error = ChannelLookup::parse_tsv("source\tgoogle.com\n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        let error = ChannelLookup::parse_posthog_json(
            r#"[["google.com", "source", "Search", "Paid Search", "Organic Search", false], ["x", "domain", null, null, null, false]]"#,
        )
        .unwrap_err();
        assert!(error.starts_with("row 2: kind must be"), "{error}");
        let error = ChannelLookup::parse_posthog_json(r#"[["a", "source"]]"#).unwrap_err();
        assert!(error.starts_with("row 1: expected [key"), "{error}");
    }

    #[test]
    fn posthog_rows_give_types_and_domain_type() {
        let lookup = ChannelLookup::parse_posthog_json(
            r#"[["google.com", "source", "Search", "Paid Search", "Organic Search", false]]"#,
        )
        .unwrap();
        let types = lookup.source("www.google.com").unwrap();
        assert_eq!(types.domain_type.as_deref(), Some("Search"));
        assert_eq!(types.paid.as_deref(), Some("Paid Search"));
    }
}
