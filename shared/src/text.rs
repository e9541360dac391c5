//! Strings a peer chose (Disconnect and RoleTransition reasons, ControlError
//! messages, QUIC close reasons) before they reach a log, an event or a
//! terminal: control characters escaped, length bounded.

/// Longest peer string kept anywhere (bytes, before escaping).
pub const MAX_PEER_STRING: usize = 256;

/// `s` cut to at most `max` bytes (on a character boundary, with `…` when
/// cut) and with every control character (C0, DEL, C1, and the Unicode
/// bidirectional overrides) written as `\u{..}`, so nothing a peer sends can
/// move a cursor, end a log line or reorder what an operator reads.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 8);
    for c in s[..end].chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if end < s.len() {
        out.push('…');
    }
    out
}

/// Bytes from the wire that may not even be UTF-8.
pub fn sanitize_bytes(b: &[u8], max: usize) -> String {
    sanitize(&String::from_utf8_lossy(&b[..b.len().min(max)]), max)
        + if b.len() > max { "…" } else { "" }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_truncates_on_a_boundary() {
        assert_eq!(sanitize("ok reason", 64), "ok reason");
        assert_eq!(
            sanitize("a\nb\x1b[31mc\u{202e}", 64),
            "a\\u{a}b\\u{1b}[31mc\\u{202e}"
        );
        assert_eq!(sanitize("ééé", 3), "é…");
        assert_eq!(sanitize(&"x".repeat(1000), 10).len(), 10 + '…'.len_utf8());
        assert_eq!(sanitize_bytes(b"a\xffb", 10), "a\u{fffd}b");
    }
}
