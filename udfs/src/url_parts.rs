//! `url_pathname(url)` and `url_hostname(url)`: the parts of `entry_current_url`
//! and `exit_current_url` that the `entry_pathname`, `entry_hostname`, … columns
//! hold (spec §2): the path without scheme, host, query or fragment, and the host
//! without user info or port, `www.` kept.

use std::sync::{Arc, LazyLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::args::SESSIONQL_DOC_SECTION;
use crate::string_map::{StringMap, StringMapUdf};

/// The `url_pathname` scalar function.
pub fn url_pathname_udf() -> Arc<ScalarUDF> {
    StringMapUdf::new_udf(
        "url_pathname",
        StringMap::Cut(|url| Some(split_url(url).pathname)),
        &PATHNAME_DOCUMENTATION,
    )
}

/// The `url_hostname` scalar function.
pub fn url_hostname_udf() -> Arc<ScalarUDF> {
    StringMapUdf::new_udf(
        "url_hostname",
        StringMap::Cut(|url| split_url(url).hostname),
        &HOSTNAME_DOCUMENTATION,
    )
}

static PATHNAME_DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Path of a URL: no scheme, host, query or fragment. A URL with no path gives ''.",
        "url_pathname(url)",
    )
    .with_sql_example("```sql\n> SELECT url_pathname('https://a.com/x/y?q=1#f'); -- '/x/y'\n```")
    .with_argument("url", "An absolute or relative URL.")
    .with_related_udf("url_hostname")
    .build()
});

static HOSTNAME_DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        SESSIONQL_DOC_SECTION,
        "Host of a URL, without user info or port, `www.` kept; null when the URL has no host.",
        "url_hostname(url)",
    )
    .with_sql_example(
        "```sql\n> SELECT url_hostname('https://www.a.com:8080/x'); -- 'www.a.com'\n```",
    )
    .with_argument("url", "An absolute URL.")
    .with_related_udf("url_pathname")
    .build()
});

/// The host and path of a URL, borrowed from it.
#[derive(Debug, PartialEq, Eq)]
pub struct UrlParts<'a> {
    /// Host without user info and port; `None` when the URL has no authority.
    pub hostname: Option<&'a str>,
    /// Path up to the query or fragment; may be empty.
    pub pathname: &'a str,
}

/// Splits a URL by RFC 3986's generic syntax, without validating it: event
/// URLs come from browsers and apps, and a lenient split beats a NULL.
///
/// Scans bytes, not chars: every delimiter is ASCII, so each index found is a
/// char boundary (this runs four times per session row).
pub fn split_url(url: &str) -> UrlParts<'_> {
    let after_scheme = match scheme_len(url) {
        Some(len) if url[len..].starts_with("://") => Some(&url[len + 3..]),
        _ => url.strip_prefix("//"),
    };
    let (hostname, rest) = match after_scheme {
        Some(rest) => {
            let authority_end = authority_end(rest);
            (
                host_of_authority(&rest[..authority_end]),
                &rest[authority_end..],
            )
        }
        None => (None, url),
    };
    UrlParts {
        hostname,
        pathname: &rest[..path_end(rest)],
    }
}

/// Length of the scheme `url` starts with (RFC 3986: a letter, then letters,
/// digits, `+`, `-` or `.`), if it starts with one.
fn scheme_len(url: &str) -> Option<usize> {
    let bytes = url.as_bytes();
    if !bytes.first()?.is_ascii_alphabetic() {
        return None;
    }
    let len = bytes
        .iter()
        .position(|&byte| !(byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.')))
        .unwrap_or(bytes.len());
    Some(len)
}

/// Index of the first `/`, `?` or `#` of `text`, or its length.
fn authority_end(text: &str) -> usize {
    memchr::memchr3(b'/', b'?', b'#', text.as_bytes()).unwrap_or(text.len())
}

/// Index of the first `?` or `#` of `text`, or its length.
fn path_end(text: &str) -> usize {
    memchr::memchr2(b'?', b'#', text.as_bytes()).unwrap_or(text.len())
}

/// The host of an authority (`user@host:port`): after the last `@`, up to a
/// port's `:`; an IPv6 literal keeps its brackets. `None` when empty.
///
/// Byte loops, not `rsplit_once`/`split`: authorities are a few dozen bytes,
/// too short for the searchers' setup to pay (their calls were two fifths of
/// `split_url`'s instructions, which runs four times per session row; with
/// the loops `split_url` costs a sixth less).
fn host_of_authority(authority: &str) -> Option<&str> {
    let bytes = authority.as_bytes();
    let start = bytes
        .iter()
        .rposition(|&byte| byte == b'@')
        .map_or(0, |at| at + 1);
    let host_and_port = &bytes[start..];
    let host_len = if host_and_port.first() == Some(&b'[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        host_and_port
            .iter()
            .position(|&byte| byte == b']')
            .map_or(host_and_port.len(), |end| end + 1)
    } else {
        host_and_port
            .iter()
            .position(|&byte| byte == b':')
            .unwrap_or(host_and_port.len())
    };
    // Both ends are at ASCII delimiters or the text's ends: char boundaries.
    let host = authority.get(start..start + host_len)?;
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split as first written, with `str::find`: the byte scan must agree.
    fn split_by_find(url: &str) -> UrlParts<'_> {
        let is_scheme = |candidate: &str| {
            let mut chars = candidate.chars();
            chars
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        };
        let after_scheme = match url.find("://") {
            Some(index) if is_scheme(&url[..index]) => Some(&url[index + 3..]),
            _ => url.strip_prefix("//"),
        };
        let (hostname, rest) = match after_scheme {
            Some(rest) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                (host_by_split(&rest[..end]), &rest[end..])
            }
            None => (None, url),
        };
        let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
        UrlParts {
            hostname,
            pathname: &rest[..path_end],
        }
    }

    /// The host as first written, with `str` searchers.
    fn host_by_split(authority: &str) -> Option<&str> {
        let host_and_port = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let host = if host_and_port.starts_with('[') {
            host_and_port
                .find(']')
                .map_or(host_and_port, |end| &host_and_port[..=end])
        } else {
            host_and_port.split(':').next().unwrap_or(host_and_port)
        };
        (!host.is_empty()).then_some(host)
    }

    #[test]
    fn host_byte_loops_agree_with_the_split_based_host() {
        let authorities = [
            "",
            "a.com",
            "www.a.com:8080",
            "me:pw@www.a.com:8080",
            "a@b@c.com:1",
            "@",
            "u@",
            ":80",
            "u@:80",
            "[::1]",
            "[::1]:80",
            "u@[::1]:8",
            "[::1",
            "[",
            "é.fr:1",
            "ü@é.fr",
            "a:b:c",
        ];
        for authority in authorities {
            assert_eq!(
                host_of_authority(authority),
                host_by_split(authority),
                "{authority:?}"
            );
        }
    }

    #[test]
    fn byte_scan_agrees_with_the_find_based_split() {
        let urls = [
            "",
            "/",
            "//",
            "///x",
            "://a.com/x",
            "a://b",
            "1a://b/c",
            "a:b://x/y",
            "https://a.com",
            "https://a.com?x",
            "https://a.com#f/g",
            "https://é.fr/ü?q#f",
            "HTTP+x-y.z://h:1/p",
            "mailto:me@a.com",
            "h ttps://a.com/x",
            "https:/a.com/x",
            "https://u@[::1]:8/p?q",
            "/pricing?x#y",
            "pricing",
            "?q=1",
            "#only",
            "https://a.com/x://y",
            "ftp://a.com:21",
            "//cdn.a.com/x",
        ];
        for url in urls {
            assert_eq!(split_url(url), split_by_find(url), "{url:?}");
        }
    }

    #[test]
    fn splits_the_spec_example() {
        let parts = split_url("https://a.com/x/y?q=1#f");
        assert_eq!(
            parts,
            UrlParts {
                hostname: Some("a.com"),
                pathname: "/x/y"
            }
        );
    }

    #[test]
    fn drops_port_and_user_keeps_www() {
        let parts = split_url("http://me:pw@www.a.com:8080?x=1");
        assert_eq!(
            parts,
            UrlParts {
                hostname: Some("www.a.com"),
                pathname: ""
            }
        );
        assert_eq!(split_url("http://[::1]:80/p").hostname, Some("[::1]"));
    }

    #[test]
    fn relative_urls_have_a_path_only() {
        assert_eq!(
            split_url("/pricing?x#y"),
            UrlParts {
                hostname: None,
                pathname: "/pricing"
            }
        );
        assert_eq!(split_url("//cdn.a.com/x").hostname, Some("cdn.a.com"));
    }
}
