//! The lookup tables behind `channel_type` (spec §4): for a utm source or a
//! referring domain, and for a utm medium, the channel it means when the
//! session is paid and when it is organic.
//!
//! The built-in table is `udfs/data/channel_lookup.tsv`, the project's own list
//! written from common knowledge, compiled into the binary.

use std::collections::HashMap;

const BUILT_IN_TABLE: &str = include_str!("../data/channel_lookup.tsv");

/// The channels one key stands for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelTypes {
    /// Channel when the session is paid (`Paid Search`, `Display`, …).
    pub paid: Option<String>,
    /// Channel when the session is organic (`Organic Search`, `Email`, …).
    pub organic: Option<String>,
}

/// Source and medium lookups, built once and shared by every call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelLookup {
    sources: HashMap<String, ChannelTypes>,
    mediums: HashMap<String, ChannelTypes>,
}

impl ChannelLookup {
    /// The built-in table shipped with sessionql.
    pub fn built_in() -> Result<Self, String> {
        Self::parse_tsv(BUILT_IN_TABLE)
    }

    /// Parses the `kind<TAB>key<TAB>type_if_paid<TAB>type_if_organic` format
    /// (`-` for none; `#` starts a comment line). Errors name the line.
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
            let types = ChannelTypes {
                paid: (*paid != "-").then(|| paid.to_string()),
                organic: (*organic != "-").then(|| organic.to_string()),
            };
            let table = match *kind {
                "source" => &mut lookup.sources,
                "medium" => &mut lookup.mediums,
                other => {
                    return Err(format!(
                        "channel table line {}: kind must be 'source' or 'medium', got '{other}'",
                        index + 1
                    ));
                }
            };
            table.insert(key.to_string(), types);
        }
        Ok(lookup)
    }

    /// A source lookup (utm_source or referring domain): the value as given,
    /// then each shorter domain suffix of it down to two labels, so
    /// `www.google.co.uk` finds `google.co.uk` and `l.facebook.com` finds
    /// `facebook.com`.
    pub fn source(&self, value: &str) -> Option<&ChannelTypes> {
        if let Some(types) = self.sources.get(value) {
            return Some(types);
        }
        let mut rest = value;
        while let Some((_, parent)) = rest.split_once('.') {
            if !parent.contains('.') {
                break;
            }
            if let Some(types) = self.sources.get(parent) {
                return Some(types);
            }
            rest = parent;
        }
        None
    }

    /// A medium lookup: exact.
    pub fn medium(&self, value: &str) -> Option<&ChannelTypes> {
        self.mediums.get(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_table_parses_and_walks_domains() {
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
        assert_eq!(
            lookup.medium("cpm").and_then(|t| t.paid.clone()).as_deref(),
            Some("Display")
        );
    }

    #[test]
    fn malformed_rows_are_named() {
        let error = ChannelLookup::parse_tsv("source\tgoogle.com\n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
    }
}
