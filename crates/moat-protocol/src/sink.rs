//! Where the encoder writes: a real buffer, or a counter that only measures. Writing
//! every packet through one code path twice (count, then write) keeps the computed
//! lengths and the written bytes from ever disagreeing.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::varint;

pub(crate) trait Sink {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_slice(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }
    fn put_u16(&mut self, value: u16) {
        BufMut::put_u16(self, value);
    }
    fn put_u32(&mut self, value: u32) {
        BufMut::put_u32(self, value);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the bytes that would be written.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// A variable byte integer.
pub(crate) fn put_varint<S: Sink>(
    sink: &mut S,
    field: &'static str,
    value: usize,
) -> Result<(), EncodeError> {
    let too_long = EncodeError::FieldTooLong { field, len: value };
    let value = u32::try_from(value).map_err(|_| too_long)?;
    varint::put(sink, value).ok_or(EncodeError::FieldTooLong {
        field,
        len: value as usize,
    })
}

/// Binary data: a two-byte length, then the bytes.
pub(crate) fn put_binary<S: Sink>(
    sink: &mut S,
    field: &'static str,
    bytes: &[u8],
) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: bytes.len(),
    })?;
    sink.put_u16(len);
    sink.put_slice(bytes);
    Ok(())
}

/// A UTF-8 string: encoded like binary data.
pub(crate) fn put_str<S: Sink>(
    sink: &mut S,
    field: &'static str,
    text: &str,
) -> Result<(), EncodeError> {
    put_binary(sink, field, text.as_bytes())
}
