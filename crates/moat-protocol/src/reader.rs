//! Reading the fields of one packet body whose bytes have all arrived: every read is
//! bounds-checked against the body, so a length a peer declares can never reach past
//! the packet or cause an allocation larger than the packet itself.

use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::error::DecodeError;
use super::text;
use super::varint;

pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless every byte has been consumed (no trailing bytes).
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes(extra)),
        }
    }

    /// The next `len` bytes, without copying.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left, without copying.
    pub(crate) fn rest(&mut self) -> Bytes {
        self.buf.split_to(self.buf.len())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.buf.try_get_u8().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.buf.try_get_u16().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.buf.try_get_u32().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let (value, len) = varint::decode(&self.buf)?.ok_or(DecodeError::Truncated)?;
        self.buf.advance(len);
        Ok(value)
    }

    /// Binary data: a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 string (MQTT-1.5.4-1) free of U+0000 (MQTT-1.5.4-2), control
    /// characters and non-characters (`text`). Rust's UTF-8 check already refuses
    /// surrogates and overlong forms. Every string of every packet is read here.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.binary()?;
        checked_text(&bytes).map(str::to_owned)
    }

    /// A PUBLISH's topic: [`Reader::string`] copied once, straight into the shared
    /// string a broker keeps (the topic becomes its message's); or the connection's
    /// previous topic, shared again, when the bytes are the same (a device publishes
    /// to the same few topics; issue 16: an allocation and a check less per
    /// message), with `true`: that topic passed every check already.
    pub(crate) fn topic(
        &mut self,
        last: Option<&Arc<str>>,
    ) -> Result<(Arc<str>, bool), DecodeError> {
        let bytes = self.binary()?;
        match last {
            Some(last) if last.as_bytes() == &bytes[..] => Ok((Arc::clone(last), true)),
            _ => checked_text(&bytes).map(|text| (Arc::from(text), false)),
        }
    }

    /// A packet identifier, which must not be zero (MQTT-2.2.1-3).
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }
}

/// The string rules of [`Reader::string`] on one field's bytes.
fn checked_text(bytes: &[u8]) -> Result<&str, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    match text::first_disallowed(text) {
        None => Ok(text),
        Some('\0') => Err(DecodeError::NullCharacter),
        Some(c) => Err(DecodeError::DisallowedCharacter(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> Reader {
        Reader::new(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        assert_eq!(reader(&[0, 2, b'h', b'i']).string().unwrap(), "hi");
        assert!(matches!(
            reader(&[0, 2, 0xc3, 0x28]).string(),
            Err(DecodeError::InvalidUtf8)
        ));
        // An encoded surrogate (U+D800) is not UTF-8 either.
        assert!(matches!(
            reader(&[0, 3, 0xed, 0xa0, 0x80]).string(),
            Err(DecodeError::InvalidUtf8)
        ));
        assert!(matches!(
            reader(&[0, 3, b'a', 0, b'b']).string(),
            Err(DecodeError::NullCharacter)
        ));
    }

    #[test]
    fn strings_refuse_control_characters_and_non_characters() {
        for bad in [
            "a\nb",
            "\r",
            "\u{1b}[2J",
            "\u{7f}",
            "x\u{85}",
            "\u{9f}",
            "\u{fdd0}",
            "\u{fffe}",
            "\u{10ffff}",
        ] {
            let mut wire = (bad.len() as u16).to_be_bytes().to_vec();
            wire.extend_from_slice(bad.as_bytes());
            let expected = bad.chars().find(|&c| text::is_disallowed(c)).unwrap();
            assert!(
                matches!(reader(&wire).string(), Err(DecodeError::DisallowedCharacter(c)) if c == expected),
                "{bad:?}"
            );
        }
        let fine = "kitchen light/état €";
        let mut wire = (fine.len() as u16).to_be_bytes().to_vec();
        wire.extend_from_slice(fine.as_bytes());
        assert_eq!(reader(&wire).string().unwrap(), fine);
        let (topic, cached) = reader(&wire).topic(None).unwrap();
        assert_eq!((&*topic, cached), (fine, false));
        let (again, cached) = reader(&wire).topic(Some(&topic)).unwrap();
        assert!(cached && Arc::ptr_eq(&topic, &again));
        let mut wire = vec![0, 3];
        wire.extend_from_slice(b"a\nb");
        assert!(matches!(
            reader(&wire).topic(Some(&Arc::from("a/b"))),
            Err(DecodeError::DisallowedCharacter('\n'))
        ));
    }

    #[test]
    fn lengths_cannot_reach_past_the_body() {
        assert!(matches!(
            reader(&[0xff, 0xff, b'a']).binary(),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(reader(&[0x12]).u16(), Err(DecodeError::Truncated)));
        assert!(matches!(
            reader(&[0x80]).varint(),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn finish_reports_trailing_bytes() {
        let mut r = reader(&[1, 2, 3]);
        r.u8().unwrap();
        assert!(matches!(r.finish(), Err(DecodeError::TrailingBytes(2))));
    }

    #[test]
    fn packet_id_zero_is_refused() {
        assert!(matches!(
            reader(&[0, 0]).packet_id(),
            Err(DecodeError::ZeroPacketId)
        ));
        assert_eq!(reader(&[1, 2]).packet_id().unwrap(), 0x0102);
    }
}
