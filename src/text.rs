//! Text that another program wrote, made fit for one line of ours.
//!
//! A server's greeting, BYE, NO, BAD or `[ALERT]` is whatever its author (or an attacker in
//! the middle of a plain connection) chose to send. Shown raw it can clear a terminal, colour
//! it, set its title, reverse the line with bidi controls, or forge a second journal line.
//! Every piece of foreign text that reaches a line of ours goes through [`printable`].

/// At most this many characters of foreign text in one line: enough for any real reason, short
/// enough that a line stays a line.
pub const MAX_CHARS: usize = 200;

/// `bytes` as one clean line: invalid UTF-8 becomes U+FFFD; escape sequences (CSI, OSC, DCS and
/// the rest), control characters and bidi controls are dropped, line breaks and tabs become a
/// space; runs of spaces shrink to one; at most [`MAX_CHARS`] characters, then `…`. A final `.`
/// goes too: ours puts a `;` after it.
pub fn printable(bytes: impl AsRef<[u8]>) -> String {
    let text = String::from_utf8_lossy(bytes.as_ref());
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let mut kept = 0;
    let mut space = false;
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            // C1 CSI, OSC, DCS, SOS, PM, APC: the same sequences in one character.
            '\u{9b}' => skip_csi(&mut chars),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            '\t' | '\n' | '\r' | ' ' => space = true,
            c if c.is_control() || is_bidi(c) => {}
            c => {
                if kept == MAX_CHARS {
                    out.push('…');
                    return out;
                }
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.push(c);
                kept += 1;
            }
        }
    }
    if out.ends_with('.') {
        out.pop();
    }
    out
}

/// The explicit directional formatting characters (Unicode TR 9): they reorder what follows
/// them on the terminal, so a line could show other words than it holds.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// After ESC (ECMA-48): `[` starts a CSI, `]` `P` `X` `^` `_` a string ended by BEL or ST;
/// anything else is a two-character sequence (intermediates first).
fn skip_escape(chars: &mut Chars) {
    match chars.next() {
        Some('[') => skip_csi(chars),
        Some(']' | 'P' | 'X' | '^' | '_') => skip_string(chars),
        Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
            // Intermediate bytes, then one final byte.
            while chars
                .next_if(|c| ('\u{20}'..='\u{2f}').contains(c))
                .is_some()
            {}
            chars.next();
        }
        _ => {}
    }
}

/// Parameters and intermediates, then the final byte (0x40–0x7e).
fn skip_csi(chars: &mut Chars) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) || c.is_control() {
            return;
        }
    }
}

/// Up to BEL or ST (ESC `\` or U+009C), or the end of the text.
fn skip_string(chars: &mut Chars) {
    while let Some(c) = chars.next() {
        match c {
            '\u{07}' | '\u{9c}' => return,
            '\u{1b}' => {
                chars.next_if_eq(&'\\');
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_stays() {
        assert_eq!(printable("Logged in"), "Logged in");
        assert_eq!(
            printable("Invalid credentials (Failure)."),
            "Invalid credentials (Failure)"
        );
        assert_eq!(printable(""), "");
    }

    #[test]
    fn terminal_sequences_go() {
        let hostile =
            "\x1b[2J\x1b[1;31mBye\x07 now\x1b]0;owned\x07 \x1b]8;;http://x\x1b\\link\x1b(B";
        assert_eq!(printable(hostile), "Bye now link");
        assert_eq!(printable("a\u{9b}31mb\u{9d}title\u{9c}c"), "abc");
    }

    #[test]
    fn controls_breaks_and_bidi_go() {
        assert_eq!(printable("one\r\nnet: forged line"), "one net: forged line");
        assert_eq!(printable("a\0b\x7fc\td"), "abc d");
        assert_eq!(printable("abc\u{202e}fed\u{2066}x\u{200f}"), "abcfedx");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(printable(b"caf\xe9 ok"), "caf\u{fffd} ok");
        assert_eq!(printable(b"\xff\xfe"), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn length_is_bounded() {
        let long = "x".repeat(10_000);
        let shown = printable(&long);
        assert_eq!(shown.chars().count(), MAX_CHARS + 1);
        assert!(shown.ends_with('…'));
        // An escape sequence that never ends eats the rest, not the line.
        assert_eq!(
            printable("ok \x1b]0;".to_string() + &"y".repeat(1000)),
            "ok"
        );
    }
}
