//! Field helpers for the hand-written protobuf encoders: the xDS frames (`xds::wire`), the
//! cache's rendered resources, the load assignment (`translate::cla_wire`). They write what
//! prost writes for the same fields.

use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// The size of a length-delimited field whose contents are `len` bytes.
pub fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A length-delimited field's key and length; its `len` bytes of contents follow.
pub fn put_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A bytes (or string) field.
pub fn put_bytes(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    put_head(tag, value.len(), buf);
    buf.put_slice(value);
}

/// The size of a proto3 string field: nothing when empty.
pub fn opt_str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { field_len(tag, s.len()) }
}

/// A proto3 string field: not written when empty.
pub fn put_opt_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_bytes(tag, s.as_bytes(), buf);
    }
}
