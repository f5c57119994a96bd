//! MQTT variable byte integers (§1.5.5): at most 4 bytes, value at most 268 435 455,
//! minimal encoding required on input (MQTT-1.5.5-1). Used for the remaining length,
//! property lengths, property identifiers and subscription identifiers.

use super::error::DecodeError;
use super::sink::Sink;

/// The largest value a variable byte integer can carry (256 MiB - 1).
pub const MAX_VARINT: u32 = 268_435_455;

/// Decodes a variable byte integer at the start of `buf`. `Ok(None)` means `buf`
/// ends before the integer does; otherwise returns the value and its length in bytes.
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for index in 0..4 {
        let Some(&byte) = buf.get(index) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            // A zero final byte after a continuation byte adds nothing: the same
            // value has a shorter encoding.
            if index > 0 && byte == 0 {
                return Err(DecodeError::NonMinimalVarInt);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    Err(DecodeError::VarIntTooLong)
}

/// How many bytes `value` takes on the wire (values above [`MAX_VARINT`] count as 4;
/// [`put`] refuses them).
pub(crate) fn len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value`; `None` when it exceeds [`MAX_VARINT`].
pub(crate) fn put<S: Sink>(sink: &mut S, value: u32) -> Option<()> {
    if value > MAX_VARINT {
        return None;
    }
    let mut rest = value;
    loop {
        let mut byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        sink.put_u8(byte);
        if rest == 0 {
            return Some(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn encoded(value: u32) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put(&mut buf, value).unwrap();
        buf.to_vec()
    }

    #[test]
    fn boundaries_round_trip_with_their_lengths() {
        for (value, bytes) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_VARINT, 4),
        ] {
            let wire = encoded(value);
            assert_eq!(wire.len(), bytes, "{value}");
            assert_eq!(len(value), bytes, "{value}");
            assert_eq!(decode(&wire).unwrap(), Some((value, bytes)));
        }
    }

    #[test]
    fn refuses_values_above_the_maximum() {
        let mut buf = BytesMut::new();
        assert_eq!(put(&mut buf, MAX_VARINT + 1), None);
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        assert_eq!(decode(&[]).unwrap(), None);
        assert_eq!(decode(&[0x80]).unwrap(), None);
        assert_eq!(decode(&[0xff, 0xff, 0xff]).unwrap(), None);
    }

    #[test]
    fn five_bytes_are_refused() {
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::VarIntTooLong)
        ));
        assert!(matches!(
            decode(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::VarIntTooLong)
        ));
    }

    #[test]
    fn non_minimal_encodings_are_refused() {
        for wire in [
            &[0x80, 0x00][..],
            &[0xc0, 0x80, 0x00],
            &[0xff, 0x80, 0x80, 0x00],
        ] {
            assert!(
                matches!(decode(wire), Err(DecodeError::NonMinimalVarInt)),
                "{wire:?}"
            );
        }
    }
}
