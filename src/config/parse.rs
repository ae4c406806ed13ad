//! TOML text to the raw config types, reporting every type error and unknown
//! key, not only the first.
//!
//! serde stops at the first error. To find the next one the text is repaired
//! and read again: a value of the wrong type is replaced by a placeholder of
//! the expected type (padded with spaces, so later positions do not move), an
//! unknown `key = value` is blanked out. A syntax error or a missing key
//! cannot be repaired without guessing, so it ends the list. A file with
//! errors here is not validated further: the placeholders would make errors
//! of their own (an empty name, a zero port).

use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::raw::RawConfig;

/// More than this many errors in one file: the rest can wait.
const MAX_ERRORS: usize = 50;

/// One error, with its byte span in the text as given.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ParseError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

/// Parses `text`, or returns every error found on the way.
pub(super) fn raw(text: &str) -> Result<RawConfig, Vec<ParseError>> {
    let mut errors: Vec<ParseError> = Vec::new();
    let mut text = text.to_string();
    // Edits that changed a length: (end of the placeholder, bytes added).
    let mut shifts: Vec<(usize, usize)> = Vec::new();
    loop {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) if errors.is_empty() => return Ok(raw),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let error = ParseError {
            span: e
                .span()
                .map(|s| original(&shifts, s.start)..original(&shifts, s.end)),
            message: plain(e.message()),
        };
        // A repair that did not take would report the same error again.
        if errors.last() == Some(&error) {
            return Err(errors);
        }
        errors.push(error);
        if errors.len() >= MAX_ERRORS {
            return Err(errors);
        }
        match e.span().and_then(|s| repair(&text, s, e.message())) {
            Some((repaired, shift)) => {
                text = repaired;
                shifts.extend(shift);
            }
            None => return Err(errors),
        }
    }
}

/// A position in the repaired text, in the text as given.
fn original(shifts: &[(usize, usize)], mut pos: usize) -> usize {
    for &(end, added) in shifts.iter().rev() {
        if pos >= end {
            pos -= added;
        } else if pos + added > end {
            // Inside the placeholder: its start.
            pos = end - added;
        }
    }
    pos
}

/// The text with the error at `span` repaired, and the length it gained, if
/// any; None when it cannot be repaired without guessing.
fn repair(
    text: &str,
    span: Range<usize>,
    message: &str,
) -> Option<(String, Option<(usize, usize)>)> {
    // A syntax error: nothing after it can be read reliably.
    ImDocument::parse(text).ok()?;
    let (repaired, shift) = if message.starts_with("unknown field") {
        let doc = ImDocument::parse(text).ok()?;
        let (range, inline) = entry_at(doc.as_table(), span.start, false)?;
        (blank(text, range, inline), None)
    } else {
        let placeholder = placeholder(message, text.get(span.clone())?)?;
        let old = span.end.checked_sub(span.start)?;
        let mut s = String::with_capacity(text.len() + 2);
        s.push_str(text.get(..span.start)?);
        s.push_str(placeholder);
        for _ in placeholder.len()..old {
            s.push(' ');
        }
        s.push_str(text.get(span.end..)?);
        let added = placeholder.len().saturating_sub(old);
        let shift = (added > 0).then_some((span.start + placeholder.len(), added));
        (s, shift)
    };
    // A repair must leave valid TOML, or the next error would be its own.
    ImDocument::parse(repaired.as_str()).ok()?;
    Some((repaired, shift))
}

/// A value of the type serde expected, from its message
/// ("invalid type: string \"two\", expected i64").
fn placeholder(message: &str, text_at: &str) -> Option<&'static str> {
    if message.starts_with("number too large") || message.starts_with("number too small") {
        return Some("0");
    }
    if message.starts_with("data did not match any variant of untagged enum") {
        // An endpoint or a port: each also takes a string.
        return Some(if text_at.starts_with('[') {
            "[]"
        } else {
            "\"\""
        });
    }
    let expected = message.rsplit_once(", expected ")?.1;
    Some(match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "0",
        "f32" | "f64" => "0.0",
        "a boolean" => "false",
        "a string" => "\"\"",
        "a sequence" => "[]",
        e if e == "a map" || e.starts_with("struct ") => "{}",
        _ => return None,
    })
}

/// Serde's wording with Rust's type names in the user's terms:
/// "expected an integer, found string \"two\"" rather than
/// "invalid type: string \"two\", expected i64".
fn plain(message: &str) -> String {
    let message = message.trim_end();
    if let Some(name) = message.strip_prefix("data did not match any variant of untagged enum ") {
        return match name {
            "RawEndpoint" => "an endpoint is \"IP:port\" or a table { address, weight, locality } \
                              with nothing else in it"
                .into(),
            "RawPort" => "a port is a number or a string of digits".into(),
            other => format!("not one of the forms {other} takes"),
        };
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((found, expected)) = rest.rsplit_once(", expected ") else {
            continue;
        };
        let expected = match expected {
            "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "an integer",
            "f32" | "f64" => "a number",
            "a boolean" => "true or false",
            "a sequence" => "an array",
            e if e == "a map" || e.starts_with("struct ") => "a table",
            e => e,
        };
        return format!("expected {expected}, found {}", found.replace('`', ""));
    }
    message.to_string()
}

/// The byte range of the `key = value` entry whose key starts at `pos`, and
/// whether it is inside an inline table.
fn entry_at(table: &dyn TableLike, pos: usize, inline: bool) -> Option<(Range<usize>, bool)> {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        if let (Some(k), Some(v)) = (key.span(), item.span()) {
            if k.start == pos && matches!(item, Item::Value(_)) {
                return Some((k.start..v.end, inline));
            }
        }
        let found = match item {
            Item::Table(t) => entry_at(t, pos, false),
            Item::ArrayOfTables(a) => a.iter().find_map(|t| entry_at(t, pos, false)),
            Item::Value(v) => entry_in(v, pos),
            Item::None => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn entry_in(v: &Value, pos: usize) -> Option<(Range<usize>, bool)> {
    match v {
        Value::InlineTable(t) => entry_at(t, pos, true),
        Value::Array(a) => a.iter().find_map(|v| entry_in(v, pos)),
        _ => None,
    }
}

/// `text` with `range` turned into spaces (newlines kept, so lines do not
/// move); in an inline table, one neighbouring comma too.
fn blank(text: &str, range: Range<usize>, inline: bool) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut gone = range.clone();
    if inline {
        let after = bytes[range.end..]
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .map(|i| range.end + i);
        let before = bytes[..range.start]
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t'));
        match (after, before) {
            (Some(i), _) if bytes[i] == b',' => gone.end = i + 1,
            (_, Some(i)) if bytes[i] == b',' => gone.start = i,
            _ => {}
        }
    }
    for b in &mut bytes[gone] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
    // Only whole UTF-8 sequences were replaced (the range starts at a key
    // and ends after a value or a comma), each byte by an ASCII space.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<(usize, String)> {
        raw(text).map(|_| Vec::new()).unwrap_or_else(|errors| {
            errors
                .into_iter()
                .map(|e| {
                    let line = text[..e.span.unwrap().start].matches('\n').count() + 1;
                    (line, e.message)
                })
                .collect()
        })
    }

    #[test]
    fn every_type_error_and_unknown_key_is_reported() {
        let text = "[runtime]\ncores = \"two\"\nbogus = [\n  1,\n]\n\n[capture]\nforwarding = 5\nipv4 = \"yes\"\nhttp_ports = [\"80\", 81]\n\n[[cluster]]\nname = \"a\"\nendpoints = [{ address = \"127.0.0.1:1\", nope = 1 }]\n";
        let got = errors(text);
        let want = [
            (2, "expected an integer, found string \"two\""),
            (3, "unknown field `bogus`, expected one of `cores`, `max_connections_per_core`, `drain_timeout`, `locality`, `batch_wait`, `sleep_batch_wait`"),
            (8, "expected a string, found integer 5"),
            (9, "expected true or false, found string \"yes\""),
            (10, "expected an integer, found string \"80\""),
        ];
        for (line, message) in want {
            assert!(
                got.iter().any(|(l, m)| *l == line && m == message),
                "{line}: {message} not in {got:#?}"
            );
        }
        assert!(
            got.iter()
                .any(|(l, m)| *l == 14 && m.starts_with("an endpoint is \"IP:port\" or a table")),
            "{got:#?}"
        );
        assert_eq!(got.len(), 6, "{got:#?}");
    }

    #[test]
    fn a_longer_placeholder_keeps_later_columns() {
        // `5` -> `""` gains a byte; the next error's span is still the file's.
        let text = "[[cluster]]\nname = 5\nendpoints = \"x\"\nconnect_timeout = 7\n";
        let e = raw(text).unwrap_err();
        let at: Vec<&str> = e.iter().map(|e| &text[e.span.clone().unwrap()]).collect();
        assert_eq!(at, ["5", "\"x\"", "7"], "{e:#?}");
        let text = "[capture]\nhttp_ports = [\"a\", 2, \"b\"]\nipv4 = 1\n";
        let e = raw(text).unwrap_err();
        let at: Vec<&str> = e.iter().map(|e| &text[e.span.clone().unwrap()]).collect();
        assert_eq!(at, ["\"a\"", "\"b\"", "1"], "{e:#?}");
    }

    #[test]
    fn syntax_and_missing_keys_end_the_list() {
        let e = errors("[runtime]\ncores = \"two\"\n[capture\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, 3, "{e:?}");
        // A missing key is reported; guessing a value for it would invent errors.
        let e = errors("[runtime]\ncores = \"x\"\n[[listener]]\nname = \"l\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[1].1.contains("missing field `address`"), "{e:?}");
    }

    #[test]
    fn a_good_file_parses() {
        assert!(raw("[runtime]\ncores = 2\n").is_ok());
        assert!(raw("").is_ok());
    }
}
