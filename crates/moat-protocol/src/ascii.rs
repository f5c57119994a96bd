//! Word-at-a-time scans of text that is nearly always printable ASCII (topics,
//! client ids, property strings): eight bytes per step instead of one, in safe
//! code. It answers only "is every byte printable ASCII (and not one of these)"
//! and "how many of this byte"; what a character means is `text`'s and `topic`'s.
//! Every mask below is exact per byte (no carry crosses a byte), so a scan never
//! reports a byte it does not hold.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = ONES * 0x80;
const LOWS: u64 = !HIGHS;

/// 0x80 in every byte of `word` that is zero, 0 elsewhere.
fn zero_bytes(word: u64) -> u64 {
    // (b & 0x7f) + 0x7f sets the high bit unless the low seven bits are zero; `| b`
    // adds it back for 0x80. The sum never exceeds 0xfe: no carry into the next byte.
    !(((word & LOWS).wrapping_add(LOWS)) | word) & HIGHS
}

/// 0x80 in every byte of `word` that is not printable ASCII (0x20..=0x7e).
fn unprintable_bytes(word: u64) -> u64 {
    let non_ascii = word & HIGHS;
    // (b | 0x80) - 0x20 keeps its high bit for b & 0x7f >= 0x20 (no borrow leaves the byte).
    let control = !((word | HIGHS).wrapping_sub(ONES * 0x20)) & HIGHS;
    // (b & 0x7f) + 1 reaches 0x80 only for 0x7f (DEL).
    let delete = (word & LOWS).wrapping_add(ONES) & HIGHS;
    non_ascii | control | delete
}

fn words(bytes: &[u8]) -> (impl Iterator<Item = u64> + '_, &[u8]) {
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder();
    let words = chunks.map(|chunk| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        u64::from_le_bytes(word)
    });
    (words, tail)
}

/// Whether every byte is printable ASCII (0x20..=0x7e).
pub(crate) fn is_printable(bytes: &[u8]) -> bool {
    let (mut words, tail) = words(bytes);
    words.all(|word| unprintable_bytes(word) == 0) && tail.iter().all(|b| (0x20..0x7f).contains(b))
}

/// If every byte is printable ASCII other than `a` and `b`: how many bytes equal
/// `counted`. `None` as soon as one byte is not.
pub(crate) fn printable_without_counting(bytes: &[u8], a: u8, b: u8, counted: u8) -> Option<usize> {
    let (words, tail) = words(bytes);
    let mut count = 0;
    for word in words {
        let refused = unprintable_bytes(word)
            | zero_bytes(word ^ (ONES * u64::from(a)))
            | zero_bytes(word ^ (ONES * u64::from(b)));
        if refused != 0 {
            return None;
        }
        count += zero_bytes(word ^ (ONES * u64::from(counted))).count_ones() as usize;
    }
    for &byte in tail {
        if !(0x20..0x7f).contains(&byte) || byte == a || byte == b {
            return None;
        }
        count += usize::from(byte == counted);
    }
    Some(count)
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
                        printable_without_counting(&text, b'+', b'#', b'/'),
                        expected,
                        "{byte:#x} at {position}/{len}"
                    );
                }
            }
        }
    }

    #[test]
    fn counts_every_occurrence_in_words_and_tail() {
        let text = b"a/b//c/d/e/f/g/h/i/j/";
        assert_eq!(printable_without_counting(text, b'+', b'#', b'/'), Some(11));
        assert_eq!(printable_without_counting(b"", b'+', b'#', b'/'), Some(0));
        assert_eq!(
            printable_without_counting(b"////////", b'+', b'#', b'/'),
            Some(8)
        );
        assert!(is_printable(b""));
        // A high byte next to a low one: no borrow or carry between bytes.
        assert!(!is_printable(&[
            b'a', 0x80, 0x1f, b'a', b'a', b'a', b'a', b'a'
        ]));
        assert!(!is_printable(&[0xff; 8]));
    }
}
