//! The characters an MQTT UTF-8 string may hold (MQTT 5 §1.5.4, MQTT 3.1.1 §1.5.3):
//! the one check that every string the decoder reads goes through (topics, filters,
//! will topics, client ids, user names, string properties, user properties). It owns
//! only the character rule; framing and lengths live in `reader`, topic shape in
//! `topic`.
//!
//! U+0000 is always malformed (MQTT-1.5.4-2). The spec lets a receiver treat the
//! other "disallowed code points" as a Malformed Packet too: the C0 and C1 control
//! characters (U+0001-U+001F, U+007F-U+009F) and the Unicode non-characters
//! (U+FDD0-U+FDEF and the last two code points of every plane). moat does, as
//! Mosquitto does for control characters: no smart-home client sends them, and a
//! newline in a topic is a forged log line waiting to happen.

use super::ascii;

/// Whether `c` may not appear in an MQTT string.
pub fn is_disallowed(c: char) -> bool {
    let code = u32::from(c);
    c.is_control() // U+0000-U+001F and U+007F-U+009F (Unicode category Cc)
        || (0xFDD0..=0xFDEF).contains(&code)
        || code & 0xFFFE == 0xFFFE // U+xFFFE and U+xFFFF of every plane
}

/// The first character of `text` that an MQTT string may not hold, if any.
pub fn first_disallowed(text: &str) -> Option<char> {
    // Fast path: printable ASCII, which nearly every topic is.
    if ascii::is_printable(text.as_bytes()) {
        return None;
    }
    text.chars().find(|&c| is_disallowed(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_non_characters_are_disallowed() {
        for c in [
            '\0',
            '\u{1}',
            '\t',
            '\n',
            '\r',
            '\u{1b}',
            '\u{1f}',
            '\u{7f}',
            '\u{80}',
            '\u{85}',
            '\u{9f}',
            '\u{fdd0}',
            '\u{fdef}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1fffe}',
            '\u{10ffff}',
        ] {
            assert!(is_disallowed(c), "{c:?}");
            assert_eq!(first_disallowed(&format!("ok/{c}/x")), Some(c), "{c:?}");
        }
        for c in [
            ' ',
            '~',
            '\u{a0}',
            'é',
            '€',
            '\u{fdcf}',
            '\u{fdf0}',
            '\u{fffd}',
            '\u{1f600}',
            '\u{2028}',
        ] {
            assert!(!is_disallowed(c), "{c:?}");
        }
        assert_eq!(first_disallowed("home/kitchen light/état"), None);
        assert_eq!(first_disallowed(""), None);
    }

    #[test]
    fn every_code_point_agrees_with_the_spec_list() {
        for code in 0..=0x10FFFFu32 {
            let Some(c) = char::from_u32(code) else {
                continue; // surrogates are not chars; str can never hold them
            };
            let listed = code <= 0x1F
                || (0x7F..=0x9F).contains(&code)
                || (0xFDD0..=0xFDEF).contains(&code)
                || code % 0x10000 >= 0xFFFE;
            assert_eq!(is_disallowed(c), listed, "U+{code:04X}");
        }
    }
}
