//! Custom channel rules: a user's own channels, tried before the built-in
//! rules of spec §4. First matching rule wins.
//!
//! The format is a JSON list of rules, each
//! `{"items": [{"key": …, "op": …, "value": …}, …], "combiner": "AND" | "OR",
//! "channel_type": "Partners"}`, with keys `utm_source`, `utm_medium`,
//! `utm_campaign`, `url`, `hostname`, `pathname` (of the entry URL) and
//! `referring_domain`, and ops `exact`, `is_not`, `is_set`, `is_not_set`,
//! `icontains`, `not_icontains`, `regex`, `not_regex`. A value is a string or a
//! list of strings (the op holds for any of them; the negated ops for none).
//! Rules see the raw values: not lower-cased, `''` not read as NULL. A NULL value
//! matches only `is_not_set` and the negated ops (`is_not`, `not_icontains`,
//! `not_regex`).

use regex::Regex;
use serde_json::Value;

use crate::url_parts::split_url;

/// Which input a rule item tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKey {
    /// `utm_source`
    UtmSource,
    /// `utm_medium`
    UtmMedium,
    /// `utm_campaign`
    UtmCampaign,
    /// The entry URL
    Url,
    /// Host of the entry URL
    Hostname,
    /// Path of the entry URL
    Pathname,
    /// `referring_domain`
    ReferringDomain,
}

/// How a rule item tests its input.
#[derive(Debug, Clone)]
enum RuleOp {
    Exact(Vec<String>),
    IsNot(Vec<String>),
    IsSet,
    IsNotSet,
    IContains(Vec<String>),
    NotIContains(Vec<String>),
    Regex(Vec<Regex>),
    NotRegex(Vec<Regex>),
}

/// One condition of a rule.
#[derive(Debug, Clone)]
pub struct RuleItem {
    key: RuleKey,
    op: RuleOp,
}

/// One custom rule: its conditions and the channel it gives.
#[derive(Debug, Clone)]
pub struct ChannelRule {
    items: Vec<RuleItem>,
    all_must_match: bool,
    channel_type: String,
}

/// The raw inputs a rule can test.
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleInputs<'a> {
    /// `utm_source`, raw
    pub utm_source: Option<&'a str>,
    /// `utm_medium`, raw
    pub utm_medium: Option<&'a str>,
    /// `utm_campaign`, raw
    pub utm_campaign: Option<&'a str>,
    /// `referring_domain`, raw
    pub referring_domain: Option<&'a str>,
    /// The entry URL
    pub url: Option<&'a str>,
}

impl RuleInputs<'_> {
    fn value(&self, key: RuleKey) -> Option<&str> {
        match key {
            RuleKey::UtmSource => self.utm_source,
            RuleKey::UtmMedium => self.utm_medium,
            RuleKey::UtmCampaign => self.utm_campaign,
            RuleKey::ReferringDomain => self.referring_domain,
            RuleKey::Url => self.url,
            RuleKey::Hostname => self.url.and_then(|url| split_url(url).hostname),
            RuleKey::Pathname => self.url.map(|url| split_url(url).pathname),
        }
    }
}

impl RuleItem {
    fn matches(&self, inputs: &RuleInputs<'_>) -> bool {
        let value = inputs.value(self.key);
        let lower = || value.map(str::to_lowercase);
        match &self.op {
            RuleOp::IsSet => value.is_some(),
            RuleOp::IsNotSet => value.is_none(),
            RuleOp::Exact(values) => value.is_some_and(|value| values.iter().any(|v| v == value)),
            RuleOp::IsNot(values) => value.is_none_or(|value| values.iter().all(|v| v != value)),
            RuleOp::IContains(needles) => {
                lower().is_some_and(|value| needles.iter().any(|needle| value.contains(needle)))
            }
            RuleOp::NotIContains(needles) => {
                lower().is_none_or(|value| needles.iter().all(|needle| !value.contains(needle)))
            }
            RuleOp::Regex(patterns) => {
                value.is_some_and(|value| patterns.iter().any(|pattern| pattern.is_match(value)))
            }
            RuleOp::NotRegex(patterns) => {
                value.is_none_or(|value| patterns.iter().all(|pattern| !pattern.is_match(value)))
            }
        }
    }
}

impl ChannelRule {
    /// The channel this rule gives for `inputs`, if it matches.
    pub fn channel_for(&self, inputs: &RuleInputs<'_>) -> Option<&str> {
        let matched = if self.all_must_match {
            self.items.iter().all(|item| item.matches(inputs))
        } else {
            self.items.iter().any(|item| item.matches(inputs))
        };
        matched.then_some(self.channel_type.as_str())
    }
}

/// The channel of the first matching rule.
pub fn first_matching<'a>(rules: &'a [ChannelRule], inputs: &RuleInputs<'_>) -> Option<&'a str> {
    rules.iter().find_map(|rule| rule.channel_for(inputs))
}

/// Parses a JSON list of rules; errors name the rule and item (1-based).
pub fn parse_rules(text: &str) -> Result<Vec<ChannelRule>, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))?;
    let Value::Array(rules) = value else {
        return Err("expected a JSON array of rules".into());
    };
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            parse_rule(rule).map_err(|error| format!("rule {}: {error}", index + 1))
        })
        .collect()
}

fn parse_rule(rule: &Value) -> Result<ChannelRule, String> {
    let channel_type = rule
        .get("channel_type")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or("needs a non-empty \"channel_type\"")?
        .to_string();
    let all_must_match = match rule
        .get("combiner")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
    {
        None => true,
        Some(combiner) if combiner == "AND" => true,
        Some(combiner) if combiner == "OR" => false,
        Some(other) => return Err(format!("combiner must be AND or OR, got {other}")),
    };
    let items = rule
        .get("items")
        .and_then(Value::as_array)
        .filter(|items| !items.is_empty())
        .ok_or("needs a non-empty \"items\" list")?;
    let items = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_item(item).map_err(|error| format!("item {}: {error}", index + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChannelRule {
        items,
        all_must_match,
        channel_type,
    })
}

fn parse_item(item: &Value) -> Result<RuleItem, String> {
    let key = match item.get("key").and_then(Value::as_str) {
        Some("utm_source") => RuleKey::UtmSource,
        Some("utm_medium") => RuleKey::UtmMedium,
        Some("utm_campaign") => RuleKey::UtmCampaign,
        Some("url") => RuleKey::Url,
        Some("hostname") => RuleKey::Hostname,
        Some("pathname") => RuleKey::Pathname,
        Some("referring_domain") => RuleKey::ReferringDomain,
        other => {
            return Err(format!(
                "key must be one of utm_source, utm_medium, utm_campaign, url, hostname, pathname, referring_domain; got {}",
                other.unwrap_or("nothing")
            ));
        }
    };
    let values = || -> Result<Vec<String>, String> {
        match item.get("value") {
            Some(Value::String(text)) => Ok(vec![text.clone()]),
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .map(|value| {
                    value
                        .as_str()
                        .map(str::to_string)
                        .ok_or("value list must hold strings".to_string())
                })
                .collect(),
            _ => Err("needs a \"value\": a string or a non-empty list of strings".into()),
        }
    };
    let lowercase = |values: Vec<String>| {
        values
            .into_iter()
            .map(|value| value.to_lowercase())
            .collect()
    };
    let regexes = |values: Vec<String>| {
        values
            .iter()
            .map(|pattern| {
                Regex::new(pattern).map_err(|error| format!("invalid regex {pattern:?}: {error}"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let op = match item.get("op").and_then(Value::as_str) {
        Some("exact") => RuleOp::Exact(values()?),
        Some("is_not") => RuleOp::IsNot(values()?),
        Some("is_set") => RuleOp::IsSet,
        Some("is_not_set") => RuleOp::IsNotSet,
        Some("icontains") => RuleOp::IContains(lowercase(values()?)),
        Some("not_icontains") => RuleOp::NotIContains(lowercase(values()?)),
        Some("regex") => RuleOp::Regex(regexes(values()?)?),
        Some("not_regex") => RuleOp::NotRegex(regexes(values()?)?),
        other => {
            return Err(format!(
                "op must be one of exact, is_not, is_set, is_not_set, icontains, not_icontains, regex, not_regex; got {}",
                other.unwrap_or("nothing")
            ));
        }
    };
    Ok(RuleItem { key, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_and_sees_raw_values() {
        let rules = parse_rules(
            r#"[
              {"items": [{"key": "utm_source", "op": "exact", "value": ["Partner-A", "partner-b"]}], "channel_type": "Partners"},
              {"items": [{"key": "pathname", "op": "regex", "value": "^/docs"}, {"key": "hostname", "op": "icontains", "value": "EXAMPLE"}],
               "combiner": "AND", "channel_type": "Docs"},
              {"items": [{"key": "utm_medium", "op": "is_not_set"}, {"key": "referring_domain", "op": "exact", "value": "news.ycombinator.com"}],
               "combiner": "OR", "channel_type": "HN or no medium"}
            ]"#,
        )
        .unwrap();
        let inputs = |source, medium, url| RuleInputs {
            utm_source: source,
            utm_medium: medium,
            url,
            ..Default::default()
        };
        assert_eq!(
            first_matching(&rules, &inputs(Some("Partner-A"), None, None)),
            Some("Partners")
        );
        // Raw: 'partner-a' is not 'Partner-A'; falls through to the OR rule (no medium).
        assert_eq!(
            first_matching(&rules, &inputs(Some("partner-a"), None, None)),
            Some("HN or no medium")
        );
        assert_eq!(
            first_matching(
                &rules,
                &inputs(None, Some("cpc"), Some("https://www.example.com/docs/sql"))
            ),
            Some("Docs")
        );
        assert_eq!(
            first_matching(
                &rules,
                &inputs(None, Some("cpc"), Some("https://other.com/docs"))
            ),
            None
        );
    }

    #[test]
    fn errors_name_rule_and_item() {
        let error = parse_rules(r#"[{"items": [{"key": "utm_source", "op": "exact", "value": "a"}], "channel_type": "A"},
                                   {"items": [{"key": "country", "op": "exact", "value": "a"}], "channel_type": "B"}]"#)
            .unwrap_err();
        assert!(error.starts_with("rule 2: item 1: key must be"), "{error}");
        let error = parse_rules(
            r#"[{"items": [{"key": "url", "op": "regex", "value": "("}], "channel_type": "A"}]"#,
        )
        .unwrap_err();
        assert!(
            error.starts_with("rule 1: item 1: invalid regex"),
            "{error}"
        );
    }
}
