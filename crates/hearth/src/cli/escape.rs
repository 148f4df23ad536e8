//! Making text from workloads and models safe to show on the operator's terminal.
//!
//! A sandboxed process picks its own name (`prctl(PR_SET_NAME)`), the agent's model picks its
//! answers and tool arguments, and a guest writes its own error messages; all of them reach
//! hearth's human-readable output. Printed raw, an `ESC [` or a C1 `CSI` (U+009B) among them is
//! a command to the operator's terminal: recolour or hide lines, move the cursor to forge
//! output, set the window title, and on some terminals worse. So every control character (C0,
//! DEL and C1: Unicode's `Cc`) is shown as a visible escape instead, `\x1b` or `\u{9b}`.
//!
//! Backslashes are left alone, so a literal `\x1b` looks like an escaped ESC: the point is that
//! nothing reaches the terminal as a control, not a reversible encoding (`--json` is that).
//! The terminal is taken to be UTF-8: a byte of a valid multi-byte character is never a control
//! there, even when the same byte would be a C1 control on an 8-bit terminal.

use std::borrow::Cow;

/// `text` for a single-line field (a table cell, a progress line): every control escaped, line
/// feeds and tabs too, so a field can't forge rows or columns.
pub fn field(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

/// `text` for multi-line output (an answer, a diff, a whole printed line): line feeds and tabs
/// kept, every other control escaped (`\r` too, which could overwrite what a line showed).
pub fn text(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !keep(c);
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `\n`, `\t` and `\r` by name; other C0 controls and DEL as `\xNN`; C1 as `\u{NN}` (the
/// character, not its UTF-8 bytes).
fn push_escape(out: &mut String, c: char) {
    let escape = match c {
        '\n' => "\\n".to_owned(),
        '\t' => "\\t".to_owned(),
        '\r' => "\\r".to_owned(),
        '\0'..='\x7f' => format!("\\x{:02x}", u32::from(c)),
        _ => format!("\\u{{{:x}}}", u32::from(c)),
    };
    out.push_str(&escape);
}

/// A command's output on its way to a terminal (`hearth sandbox exec`): whatever could start a
/// control sequence is escaped (ESC, C1 controls such as CSI, the other C0 controls, DEL), while
/// `\n`, `\r`, `\t` and backspace pass, so progress bars and line editing still look right.
/// Invalid UTF-8 passes too, except bytes 0x80..=0x9F: the C1 controls of an 8-bit terminal.
///
/// Chunks split the stream anywhere, so a character cut at the end of one chunk waits for the
/// rest of it in the next.
#[derive(Debug, Default)]
pub struct TerminalFilter {
    /// The start of a UTF-8 sequence the last chunk ended in (at most 3 bytes).
    partial: Vec<u8>,
}

impl TerminalFilter {
    /// The bytes to write for `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.partial);
        input.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(input.len());
        let mut rest = input.as_slice();
        loop {
            let err = match std::str::from_utf8(rest) {
                Ok(valid) => {
                    push_terminal_text(&mut out, valid);
                    return out;
                }
                Err(err) => err,
            };
            let (valid, after) = rest.split_at(err.valid_up_to());
            push_terminal_text(&mut out, std::str::from_utf8(valid).unwrap_or_default());
            match err.error_len() {
                None => {
                    self.partial = after.to_vec();
                    return out;
                }
                Some(len) => {
                    let (invalid, next) = after.split_at(len);
                    push_invalid(&mut out, invalid);
                    rest = next;
                }
            }
        }
    }

    /// The bytes to write when the stream ends: a character cut short is invalid by now.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        push_invalid(&mut out, &std::mem::take(&mut self.partial));
        out
    }
}

fn push_terminal_text(out: &mut Vec<u8>, text: &str) {
    let passes = |c: char| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x08');
    if text.chars().all(passes) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if passes(c) {
            escaped.push(c);
        } else {
            push_escape(&mut escaped, c);
        }
    }
    out.extend_from_slice(escaped.as_bytes());
}

/// Bytes that are not UTF-8: raw (an 8-bit terminal shows them as text), except the 8-bit C1
/// controls. A raw byte passed here can't combine with what follows into a C1 control: what
/// follows starts with ASCII or a UTF-8 lead byte, never a continuation byte 0x80..=0x9F.
fn push_invalid(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if (0x80..=0x9f).contains(&b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible() {
        assert_eq!(field("a\x1b[31mred"), "a\\x1b[31mred");
        assert_eq!(text("\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        // C1 CSI, and the rest of C1, as the character.
        assert_eq!(field("x\u{9b}2J"), "x\\u{9b}2J");
        assert_eq!(text("\u{80}\u{9f}"), "\\u{80}\\u{9f}");
        assert_eq!(field("nul\0del\x7f"), "nul\\x00del\\x7f");
        assert_eq!(text("bs\x08cr\r"), "bs\\x08cr\\r");
    }

    #[test]
    fn fields_escape_line_feeds_and_tabs_but_text_keeps_them() {
        assert_eq!(field("one\ntwo\tcell"), "one\\ntwo\\tcell");
        assert_eq!(text("one\ntwo\tcell"), "one\ntwo\tcell");
    }

    #[test]
    fn printable_text_is_borrowed_unchanged() {
        for s in [
            "",
            "plain",
            "héllo → 世界 🦀",
            "\u{a0}non-breaking",
            "a\\x1b literal",
        ] {
            assert!(matches!(field(s), Cow::Borrowed(b) if b == s), "{s:?}");
            assert!(matches!(text(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
        assert_eq!(field("é\x1bü"), "é\\x1bü");
    }

    fn filter_all(chunks: &[&[u8]]) -> Vec<u8> {
        let mut filter = TerminalFilter::default();
        let mut out: Vec<u8> = chunks.iter().flat_map(|c| filter.push(c)).collect();
        out.extend(filter.finish());
        out
    }

    #[test]
    fn the_terminal_filter_escapes_introducers_and_keeps_layout() {
        assert_eq!(
            filter_all(&[b"\x1b[2J\x1b]52;c;x\x07ok\r\n\tdone\x08!"]),
            b"\\x1b[2J\\x1b]52;c;x\\x07ok\r\n\tdone\x08!"
        );
        assert_eq!(filter_all(&["a\u{9b}b".as_bytes()]), b"a\\u{9b}b");
        assert_eq!(filter_all(&[b"\0\x7f"]), b"\\x00\\x7f");
    }

    #[test]
    fn the_terminal_filter_keeps_utf8_across_chunks() {
        let crab = "🦀".as_bytes();
        assert_eq!(filter_all(&[&crab[..1], &crab[1..3], &crab[3..]]), crab);
        // A C1 control cut between chunks is still caught.
        let csi = "\u{9b}".as_bytes();
        assert_eq!(filter_all(&[&csi[..1], &csi[1..], b"31m"]), b"\\u{9b}31m");
    }

    #[test]
    fn the_terminal_filter_passes_invalid_utf8_but_not_8bit_c1() {
        // Latin-1 text passes; a raw 8-bit CSI does not.
        assert_eq!(filter_all(&[b"caf\xe9 \x9b2J"]), b"caf\xe9 \\x9b2J");
        // A stream ending inside a character: the cut bytes once it is over, a continuation
        // byte among them being an 8-bit C1 control by then.
        assert_eq!(filter_all(&[b"x\xf0\x9f"]), b"x\xf0\\x9f");
        assert_eq!(filter_all(&[b"x\xf0\xa0"]), b"x\xf0\xa0");
        assert_eq!(filter_all(&[b"\xc2"]), b"\xc2");
        let mut filter = TerminalFilter::default();
        assert_eq!(filter.push(b"\xc2"), b"");
        assert_eq!(filter.finish(), b"\xc2");
    }
}
