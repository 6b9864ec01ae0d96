//! The one escaping rule for text that came from outside (a git ref, a
//! delivery id, a release's output, a health check's answer) wherever
//! cutover shows it: terminal output, its log, `status`, `history`, errors.
//!
//! Control characters (C0 but newline and tab, DEL, C1) and the Unicode
//! characters that reorder or hide text (bidi embeddings, overrides and
//! isolates, the marks, zero-width joiners, the BOM, line and paragraph
//! separators) are shown as `\u{…}` (text) or `\u….` (inside JSON
//! strings), so what a reader sees is what the bytes say: no `U+202E` can
//! turn `cicd-tag` into something else, no escape sequence reaches a
//! terminal.

use std::borrow::Cow;

/// Whether `c` must never reach a reader as is.
pub fn is_hidden(c: char) -> bool {
    match c {
        '\n' | '\t' => false,
        c if c.is_control() => true,
        // Zero-width space/joiners, LRM, RLM, ALM.
        '\u{200B}'..='\u{200F}' | '\u{061C}' => true,
        // Line and paragraph separators, LRE/RLE/PDF/LRO/RLO.
        '\u{2028}'..='\u{202E}' => true,
        // Word joiner, invisible operators, LRI/RLI/FSI/PDI, deprecated format chars.
        '\u{2060}'..='\u{206F}' => true,
        '\u{FEFF}' => true,
        _ => false,
    }
}

/// `text` with every hidden character written as `\u{…}`. Borrowed when
/// there is none (the common case costs a scan).
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, |c, out| {
        out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
    })
}

/// For JSON text already encoded (`serde_json` output): hidden characters
/// that JSON allows raw (bidi, separators) become `\uXXXX` escapes, which
/// decode to the same string. Control characters are escaped by JSON itself.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    escape_with(json, |c, out| {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            out.push_str(&format!("\\u{unit:04x}"));
        }
    })
}

fn escape_with(text: &str, write: impl Fn(char, &mut String)) -> Cow<'_, str> {
    if !text.chars().any(is_hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_hidden(c) {
            write(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(escape("web v2 is live\n\tok"), Cow::Borrowed(_)));
    }

    #[test]
    fn bidi_overrides_and_control_characters_are_shown_escaped() {
        assert_eq!(escape("v1\u{202E}dcic"), "v1\\u{202e}dcic");
        assert_eq!(escape("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(escape("cr\rlf"), "cr\\u{d}lf");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(escape("\u{85}"), "\\u{85}");
    }

    #[test]
    fn json_stays_json_and_decodes_to_the_same_text() {
        let original = "ref\u{202E}gat";
        let encoded = serde_json_like(original);
        let escaped = escape_json(&encoded);
        assert_eq!(escaped, "\"ref\\u202egat\"");
        assert!(!escaped.contains('\u{202E}'));
    }

    /// What serde_json writes for a string: the raw character inside quotes.
    fn serde_json_like(text: &str) -> String {
        format!("\"{text}\"")
    }
}
