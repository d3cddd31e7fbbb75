//! The members of a JSON object and the items of a JSON array as slices of
//! the original text, without building values.
//!
//! Ingest reads hundreds of thousands of events a second. Building a
//! `serde_json::Value` for each (a map entry and a string for every property)
//! and writing `properties` back out as text cost most of that time; slicing
//! keeps the text as it came and parses only the fields that become columns.
//! Callers validate the text with serde_json first, so these functions only
//! ever see well-formed JSON; on anything else they return `None`.

use std::borrow::Cow;

/// One member of an object: its key (unescaped) and its value's raw text.
pub type Member<'a> = (Cow<'a, str>, &'a str);

/// The members of the object `text`, in order; `None` if `text` is not an object.
pub fn object_members(text: &str) -> Option<Vec<Member<'_>>> {
    let bytes = text.as_bytes();
    let mut position = skip_whitespace(bytes, 0);
    if bytes.get(position) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    position = skip_whitespace(bytes, position + 1);
    if bytes.get(position) == Some(&b'}') {
        return at_end(bytes, position + 1).then_some(members);
    }
    loop {
        let key_end = skip_string(bytes, position)?;
        let raw_key = &text[position + 1..key_end - 1];
        let key = if raw_key.contains('\\') {
            Cow::Owned(serde_json::from_str::<String>(&text[position..key_end]).ok()?)
        } else {
            Cow::Borrowed(raw_key)
        };
        position = skip_whitespace(bytes, key_end);
        if bytes.get(position) != Some(&b':') {
            return None;
        }
        let value_start = skip_whitespace(bytes, position + 1);
        let value_end = skip_value(bytes, value_start)?;
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

/// From an opening quote, the position just past the closing one.
fn skip_string(bytes: &[u8], start: usize) -> Option<usize> {
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let mut position = start + 1;
    loop {
        match bytes.get(position)? {
            b'"' => return Some(position + 1),
            b'\\' => position += 2,
            _ => position += 1,
        }
    }
}

/// From the start of a value, the position just past its end.
fn skip_value(bytes: &[u8], start: usize) -> Option<usize> {
    match bytes.get(start)? {
        b'"' => skip_string(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut position = start;
            loop {
                match bytes.get(position)? {
                    b'"' => {
                        position = skip_string(bytes, position)?;
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
}
