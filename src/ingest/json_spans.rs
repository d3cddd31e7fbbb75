//! The members of a JSON object and the items of a JSON array as slices of
//! the original text, without building values.
//!
//! Ingest reads hundreds of thousands of events a second. Building a
//! `serde_json::Value` for each (a map entry and a string for every property)
//! and writing `properties` back out as text cost most of that time; slicing
//! keeps the text as it came and parses only the fields that become columns.
//!
//! A line is read once with [`checked_object_members`], which also checks
//! that the whole text is JSON as `serde_json` reads it (the same grammar;
//! `tests::agrees_with_serde_json_on_mutated_lines` holds the two side by
//! side). That check used to be a separate `serde_json` pass over every
//! line, some 8% of ingest's time. The values it returns are then known
//! to be valid, and [`object_members`] and [`array_items`] walk them without
//! checking again; on anything else those return `None`.

use std::borrow::Cow;

/// One member of an object: its key (unescaped) and its value's raw text.
pub type Member<'a> = (Cow<'a, str>, &'a str);

/// Why [`checked_object_members`] refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectError {
    /// The text is not JSON at all.
    InvalidJson,
    /// The text is JSON, but not an object.
    NotAnObject,
}

/// The members of the object `text`, in order, after checking that all of
/// `text` is valid JSON.
pub fn checked_object_members(text: &str) -> Result<Vec<Member<'_>>, ObjectError> {
    let bytes = text.as_bytes();
    let start = skip_whitespace(bytes, 0);
    if bytes.get(start) != Some(&b'{') {
        let valid = check_value(bytes, start).is_some_and(|end| at_end(bytes, end));
        return Err(if valid {
            ObjectError::NotAnObject
        } else {
            ObjectError::InvalidJson
        });
    }
    members_of::<true>(text, start).ok_or(ObjectError::InvalidJson)
}

/// The members of the object `text`, in order; `None` if `text` is not an
/// object. `text` must be a value [`checked_object_members`] has checked.
pub fn object_members(text: &str) -> Option<Vec<Member<'_>>> {
    let start = skip_whitespace(text.as_bytes(), 0);
    members_of::<false>(text, start)
}

/// The members of the object opening at `position`; with `CHECK`, every
/// value is checked to be valid JSON on the way.
fn members_of<const CHECK: bool>(text: &str, mut position: usize) -> Option<Vec<Member<'_>>> {
    let bytes = text.as_bytes();
    if bytes.get(position) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    position = skip_whitespace(bytes, position + 1);
    if bytes.get(position) == Some(&b'}') {
        return at_end(bytes, position + 1).then_some(members);
    }
    loop {
        let (key_end, escaped) = string_end::<CHECK>(bytes, position)?;
        let raw_key = &text[position + 1..key_end - 1];
        let key = if escaped {
            Cow::Owned(serde_json::from_str::<String>(&text[position..key_end]).ok()?)
        } else {
            Cow::Borrowed(raw_key)
        };
        position = skip_whitespace(bytes, key_end);
        if bytes.get(position) != Some(&b':') {
            return None;
        }
        let value_start = skip_whitespace(bytes, position + 1);
        let value_end = if CHECK {
            check_value(bytes, value_start)?
        } else {
            skip_value(bytes, value_start)?
        };
        members.push((key, &text[value_start..value_end]));
        position = skip_whitespace(bytes, value_end);
        match bytes.get(position) {
            Some(b',') => position = skip_whitespace(bytes, position + 1),
            Some(b'}') => return at_end(bytes, position + 1).then_some(members),
            _ => return None,
        }
    }
}

/// The items of the array `text`, as raw texts; `None` if it is not an array.
pub fn array_items(text: &str) -> Option<Vec<&str>> {
    let bytes = text.as_bytes();
    let mut position = skip_whitespace(bytes, 0);
    if bytes.get(position) != Some(&b'[') {
        return None;
    }
    let mut items = Vec::new();
    position = skip_whitespace(bytes, position + 1);
    if bytes.get(position) == Some(&b']') {
        return at_end(bytes, position + 1).then_some(items);
    }
    loop {
        let end = skip_value(bytes, position)?;
        items.push(&text[position..end]);
        position = skip_whitespace(bytes, end);
        match bytes.get(position) {
            Some(b',') => position = skip_whitespace(bytes, position + 1),
            Some(b']') => return at_end(bytes, position + 1).then_some(items),
            _ => return None,
        }
    }
}

/// The value of the last member named `key` (JSON's last-one-wins).
pub fn member<'a>(members: &[Member<'a>], key: &str) -> Option<&'a str> {
    members
        .iter()
        .rev()
        .find(|(name, _)| name == key)
        .map(|(_, value)| *value)
}

fn at_end(bytes: &[u8], position: usize) -> bool {
    skip_whitespace(bytes, position) == bytes.len()
}

fn skip_whitespace(bytes: &[u8], mut position: usize) -> usize {
    while bytes
        .get(position)
        .is_some_and(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
    {
        position += 1;
    }
    position
}

/// From an opening quote, the position just past the closing one, and
/// whether the string has escapes. With `CHECK`, refuses what JSON does not
/// allow in a string (unknown escapes, bad `\u` digits, control characters);
/// without, the text must already be checked.
fn string_end<const CHECK: bool>(bytes: &[u8], start: usize) -> Option<(usize, bool)> {
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let mut position = start + 1;
    let mut escaped = false;
    loop {
        position = next_string_stop(bytes, position)?;
        match bytes[position] {
            b'"' => return Some((position + 1, escaped)),
            b'\\' => {
                escaped = true;
                if !CHECK {
                    position += 2;
                    continue;
                }
                position += match bytes.get(position + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' => {
                        let digits = bytes.get(position + 2..position + 6)?;
                        if !digits.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        6
                    }
                    _ => return None,
                };
            }
            // A control character.
            _ if CHECK => return None,
            _ => position += 1,
        }
    }
}

/// From the start of a value, the position just past its end.
fn skip_value(bytes: &[u8], start: usize) -> Option<usize> {
    match bytes.get(start)? {
        b'"' => string_end::<false>(bytes, start).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut position = start;
            loop {
                match bytes.get(position)? {
                    b'"' => {
                        position = string_end::<false>(bytes, position)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(position + 1);
                        }
                    }
                    _ => {}
                }
                position += 1;
            }
        }
        _ => {
            let mut position = start;
            while bytes.get(position).is_some_and(|byte| {
                !matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            }) {
                position += 1;
            }
            (position > start).then_some(position)
        }
    }
}

/// Bytes a JSON string cannot hold as they are: the closing quote, the
/// escape, and control characters.
const STRING_STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        stops[byte] = true;
        byte += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// The position of the first of [`STRING_STOPS`] at or after `position`.
///
/// Strings are most of an event's bytes, so they are scanned eight bytes at
/// a time: in a word, a byte equal to `"` or `\\` or below 0x20 sets its top
/// bit in `found` (the usual "has zero byte" arithmetic, on the word xor'ed
/// with each stop). Borrows may also set bits *above* a real stop, never
/// below one, so the lowest set bit is the first stop.
fn next_string_stop(bytes: &[u8], mut position: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const TOP_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(word) = bytes.get(position..position + 8) {
        let mut word_bytes = [0u8; 8];
        word_bytes.copy_from_slice(word);
        let word = u64::from_le_bytes(word_bytes);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & TOP_BITS;
        if found != 0 {
            return Some(position + (found.trailing_zeros() / 8) as usize);
        }
        position += 8;
    }
    while !STRING_STOPS[usize::from(*bytes.get(position)?)] {
        position += 1;
    }
    Some(position)
}

/// From the start of a value, the position just past its end, checking that
/// it is valid JSON. Containers are tracked on a stack of their closing
/// brackets, not by recursion, so no depth of nesting overflows the thread's
/// stack (`serde_json` has no depth limit for values it skips either).
fn check_value(bytes: &[u8], start: usize) -> Option<usize> {
    let mut closers: Vec<u8> = Vec::new();
    let mut position = start;
    loop {
        position = match bytes.get(position)? {
            b'"' => string_end::<true>(bytes, position)?.0,
            opening @ (b'{' | b'[') => {
                let closer = if *opening == b'{' { b'}' } else { b']' };
                position = skip_whitespace(bytes, position + 1);
                if bytes.get(position) == Some(&closer) {
                    position + 1
                } else {
                    closers.push(closer);
                    if closer == b'}' {
                        position = member_value_start(bytes, position)?;
                    }
                    continue;
                }
            }
            b't' => literal(bytes, position, b"true")?,
            b'f' => literal(bytes, position, b"false")?,
            b'n' => literal(bytes, position, b"null")?,
            _ => check_number(bytes, position)?,
        };
        // A value ended: close what it ends, or move to the next item.
        loop {
            let Some(&closer) = closers.last() else {
                return Some(position);
            };
            position = skip_whitespace(bytes, position);
            match bytes.get(position)? {
                b',' => {
                    position = skip_whitespace(bytes, position + 1);
                    if closer == b'}' {
                        position = member_value_start(bytes, position)?;
                    }
                    break;
                }
                byte if *byte == closer => {
                    closers.pop();
                    position += 1;
                }
                _ => return None,
            }
        }
    }
}

/// From a member's key, the start of its value.
fn member_value_start(bytes: &[u8], key_start: usize) -> Option<usize> {
    let key_end = string_end::<true>(bytes, key_start)?.0;
    let colon = skip_whitespace(bytes, key_end);
    (bytes.get(colon) == Some(&b':')).then(|| skip_whitespace(bytes, colon + 1))
}

fn literal(bytes: &[u8], start: usize, word: &[u8]) -> Option<usize> {
    let end = start + word.len();
    (bytes.get(start..end)? == word).then_some(end)
}

/// A number as JSON writes it: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn check_number(bytes: &[u8], start: usize) -> Option<usize> {
    let digits_from = |position: usize| {
        let mut end = position;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        (end > position).then_some(end)
    };
    let mut position = start;
    if bytes.get(position) == Some(&b'-') {
        position += 1;
    }
    position = match bytes.get(position)? {
        b'0' => position + 1,
        b'1'..=b'9' => digits_from(position)?,
        _ => return None,
    };
    if bytes.get(position) == Some(&b'.') {
        position = digits_from(position + 1)?;
    }
    if matches!(bytes.get(position), Some(b'e' | b'E')) {
        position += 1;
        if matches!(bytes.get(position), Some(b'+' | b'-')) {
            position += 1;
        }
        position = digits_from(position)?;
    }
    Some(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_raw_text() {
        let text = r#" {"a": 1, "b\"q": {"x": [1, "]}"]}, "c":"s\"t" , "d": null} "#;
        let members = object_members(text).unwrap();
        let found: Vec<(&str, &str)> = members
            .iter()
            .map(|(key, value)| (key.as_ref(), *value))
            .collect();
        assert_eq!(
            found,
            [
                ("a", "1"),
                ("b\"q", r#"{"x": [1, "]}"]}"#),
                ("c", r#""s\"t""#),
                ("d", "null")
            ]
        );
        assert_eq!(object_members("{}").unwrap().len(), 0);
        assert!(object_members("[1]").is_none());
        assert!(object_members(r#"{"a": 1} x"#).is_none());
    }

    #[test]
    fn array_items_split_at_top_level_commas() {
        assert_eq!(
            array_items(r#"[{"a": [1, 2]}, 3, "x,y"]"#).unwrap(),
            [r#"{"a": [1, 2]}"#, "3", r#""x,y""#]
        );
        assert_eq!(array_items("[ ]").unwrap().len(), 0);
        assert!(array_items("{}").is_none());
    }

    /// What `serde_json` accepts as a whole JSON text.
    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    fn reader_accepts(text: &str) -> bool {
        checked_object_members(text) != Err(ObjectError::InvalidJson)
    }

    #[test]
    fn objects_and_other_values_are_told_apart() {
        assert_eq!(
            checked_object_members(r#" {"a": [1, {"b": null}]} "#)
                .unwrap()
                .len(),
            1
        );
        for value in ["[1, 2]", "\"x\"", "-0.5e+3", "true", " null "] {
            assert_eq!(
                checked_object_members(value),
                Err(ObjectError::NotAnObject),
                "{value}"
            );
        }
        for text in [
            "",
            "{",
            r#"{"a": 01}"#,
            r#"{"a": "\x"}"#,
            "{\"a\": \"\u{1}\"}",
            r#"{"a": 1,}"#,
            r#"{"a": tru}"#,
            r#"{"a": 1} {"#,
            "[1, 2",
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
            r#"{a: 1}"#,
        ] {
            assert_eq!(
                checked_object_members(text),
                Err(ObjectError::InvalidJson),
                "{text}"
            );
        }
    }

    #[test]
    fn string_stops_are_found_a_word_at_a_time() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Any bytes, with quotes, escapes and control characters added.
            let bytes: Vec<u8> = (0..24)
                .map(|index| {
                    let byte = (state.rotate_left(index * 5) & 0xff) as u8;
                    match byte % 11 {
                        0 => [b'"', b'\\', 0x1f, 0x00][usize::from(byte >> 6)],
                        _ => byte,
                    }
                })
                .collect();
            for start in 0..bytes.len() {
                let expected =
                    (start..bytes.len()).find(|at| STRING_STOPS[usize::from(bytes[*at])]);
                assert_eq!(
                    next_string_stop(&bytes, start),
                    expected,
                    "{bytes:?} from {start}"
                );
            }
        }
    }

    #[test]
    fn deep_nesting_is_read_without_recursion() {
        for depth in [1, 127, 128, 129, 100_000] {
            let arrays = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            assert!(
                serde_accepts(&arrays) && reader_accepts(&arrays),
                "arrays {depth} deep"
            );
            assert!(
                serde_accepts(&objects) && reader_accepts(&objects),
                "objects {depth} deep"
            );
            let unclosed = &arrays[..arrays.len() - 2];
            assert!(
                !serde_accepts(unclosed) && !reader_accepts(unclosed),
                "{depth} unclosed"
            );
        }
    }

    /// Thousands of small mutations of event lines (bytes replaced, removed,
    /// inserted from JSON's own alphabet): the reader accepts exactly what
    /// `serde_json` accepts.
    #[test]
    fn agrees_with_serde_json_on_mutated_lines() {
        let seeds = [
            r#"{"event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:00:00Z",
                "properties": {"$current_url": "https://a.com/x?q=\"1\"\n", "n": [1, -2.5e-3, 0, true, false, null],
                "nested": {"a": {"b": []}, "c": {}}, "\u00e9": "\t\\\/"}}"#,
            r#"{"batch": [{"event": "a", "distinct_id": 7}, {"event": "b", "offset": 12.0E+2}], "sent_at": null}"#,
            r#"[{"a": "b"}, "c", 10, {}]"#,
        ];
        let alphabet = br#"{}[]:,"\ 0123456789-+.eEtrufalsn/ubx"#;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let mut disagreements = Vec::new();
        for round in 0..30_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + random(3) {
                let at = random(bytes.len());
                match random(4) {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, alphabet[random(alphabet.len())]),
                    2 => bytes.insert(at, b'\x01' + random(0x1f) as u8),
                    _ => bytes[at] = alphabet[random(alphabet.len())],
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if reader_accepts(&text) != serde_accepts(&text) {
                disagreements.push(text);
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} disagreements, first: {:?}",
            disagreements.len(),
            disagreements.first()
        );
    }
}
