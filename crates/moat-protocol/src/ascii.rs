//! Word-at-a-time scans of text that is nearly always printable ASCII (topics,
//! client ids, property strings): eight bytes per step instead of one, in safe
//! code. It answers only "is every byte printable ASCII (and not one of these)"
//! and "how many of this byte"; what a character means is `text`'s and `topic`'s.
//! Every mask below is exact per byte (no carry crosses a byte), so a scan never
//! reports a byte it does not hold.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = ONES * 0x80;
const LOWS: u64 = !HIGHS;

/// 0x80 in every byte of `word` that is not printable ASCII (0x20..=0x7e); nonzero
/// exactly when one is not.
fn unprintable_bytes(word: u64) -> u64 {
    // (b | 0x80) - 0x20 keeps its high bit for b & 0x7f >= 0x20 (no borrow leaves a byte).
    let control = !((word | HIGHS).wrapping_sub(ONES * 0x20)) & HIGHS;
    // b + 1 reaches 0x80 only for 0x7f (DEL); a carry out of a byte needs a non-ASCII
    // byte, which `word & HIGHS` reports anyway.
    let delete = word.wrapping_add(ONES) & HIGHS;
    (word & HIGHS) | control | delete
}

/// 0x80 in every byte of `word` that is zero, for a word of ASCII bytes (the only
/// words whose other masks are used): b + 0x7f sets the high bit unless b is zero,
/// and never carries.
fn zero_bytes(word: u64) -> u64 {
    !(word.wrapping_add(LOWS) | word) & HIGHS
}

/// How many bytes a mask of [`zero_bytes`] marks.
fn marked(mask: u64) -> usize {
    // One per marked byte, summed into the top byte (at most 8: no overflow).
    ((mask >> 7).wrapping_mul(ONES) >> 56) as usize
}

fn word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// Runs `scan` over `bytes` eight at a time, with a mask of the bytes it must
/// judge (all of them, but for a last word that overlaps the one before it);
/// `None` for a string too short for one word.
fn words(bytes: &[u8], mut scan: impl FnMut(u64, u64) -> bool) -> Option<bool> {
    if bytes.len() < 8 {
        return None;
    }
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder().len();
    for chunk in chunks {
        if !scan(word(chunk), !0) {
            return Some(false);
        }
    }
    if tail > 0 {
        // The last eight bytes, of which only the last `tail` are new.
        let last = word(&bytes[bytes.len() - 8..]);
        return Some(scan(last, !0 << (8 * (8 - tail))));
    }
    Some(true)
}

/// Whether every byte is printable ASCII (0x20..=0x7e).
pub(crate) fn is_printable(bytes: &[u8]) -> bool {
    words(bytes, |word, judged| unprintable_bytes(word) & judged == 0)
        .unwrap_or_else(|| bytes.iter().all(|b| (0x20..0x7f).contains(b)))
}

/// If every byte is printable ASCII and none is a wildcard (`+`, `#`): how many
/// are `/`, i.e. a topic name's level separators. `None` as soon as one byte is not.
pub(crate) fn topic_name_separators(bytes: &[u8]) -> Option<usize> {
    let mut separators = 0;
    let all = words(bytes, |word, judged| {
        // '#' (0x23) and '+' (0x2b) differ in bit 3 only.
        let wildcards = zero_bytes((word | (ONES * 0x08)) ^ (ONES * u64::from(b'+')));
        if (unprintable_bytes(word) | wildcards) & judged != 0 {
            return false;
        }
        separators += marked(zero_bytes(word ^ (ONES * u64::from(b'/'))) & judged);
        true
    })
    .unwrap_or_else(|| {
        bytes.iter().all(|&b| {
            separators += usize::from(b == b'/');
            (0x20..0x7f).contains(&b) && b != b'+' && b != b'#'
        })
    });
    all.then_some(separators)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printable(byte: u8) -> bool {
        (0x20..0x7f).contains(&byte)
    }

    /// Every byte value, at every position of a word and of the tail, against the
    /// byte-by-byte rule.
    #[test]
    fn every_byte_at_every_position_agrees_with_the_scalar_rule() {
        for len in 1..=19 {
            for position in 0..len {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[position] = byte;
                    assert_eq!(
                        is_printable(&text),
                        printable(byte),
                        "{byte:#x} at {position}/{len}"
                    );
                    let expected = (printable(byte) && byte != b'+' && byte != b'#')
                        .then_some(usize::from(byte == b'/'));
                    assert_eq!(
                        topic_name_separators(&text),
                        expected,
                        "{byte:#x} at {position}/{len}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// Any mix of bytes (mostly printable, with `/`, wildcards and high bytes),
        /// any length: both scans agree with the byte-by-byte rule, and no `/` of an
        /// overlapping last word is counted twice.
        #[test]
        fn scans_agree_with_the_scalar_rule(
            text in proptest::collection::vec(
                proptest::prop_oneof![
                    4 => proptest::sample::select(b"ab/ ~".to_vec()),
                    1 => proptest::num::u8::ANY,
                ],
                0..40,
            ),
        ) {
            let all_printable = text.iter().all(|&b| printable(b));
            proptest::prop_assert_eq!(is_printable(&text), all_printable);
            let expected = (all_printable && !text.contains(&b'+') && !text.contains(&b'#'))
                .then(|| text.iter().filter(|&&b| b == b'/').count());
            proptest::prop_assert_eq!(topic_name_separators(&text), expected);
        }
    }

    #[test]
    fn counts_every_occurrence_in_words_and_tail() {
        let text = b"a/b//c/d/e/f/g/h/i/j/";
        assert_eq!(topic_name_separators(text), Some(11));
        assert_eq!(topic_name_separators(b""), Some(0));
        assert_eq!(topic_name_separators(b"////////"), Some(8));
        assert!(is_printable(b""));
        // A high byte next to a low one: no borrow or carry between bytes.
        assert!(!is_printable(&[
            b'a', 0x80, 0x1f, b'a', b'a', b'a', b'a', b'a'
        ]));
        assert!(!is_printable(&[0xff; 8]));
    }
}
