//! Protobuf wire-format pieces for answers written without building a message (`forward`,
//! `encoded`): lengths first, then the bytes, with prost's own varint and key encoders.

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

pub(super) fn key_len(tag: u32) -> usize {
    prost::encoding::key_len(tag)
}

/// A length-delimited field of `len` bytes, its key and length included.
pub(super) fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

pub(super) fn string_len(tag: u32, s: &str) -> usize {
    delimited_len(tag, s.len())
}

pub(super) fn varint_len(tag: u32, value: u64) -> usize {
    key_len(tag) + encoded_len_varint(value)
}

/// The key and length of a length-delimited field whose `len` bytes follow.
pub(super) fn put_delimited_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

pub(super) fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    put_bytes(tag, s.as_bytes(), buf);
}

pub(super) fn put_bytes(tag: u32, b: &[u8], buf: &mut impl BufMut) {
    put_delimited_head(tag, b.len(), buf);
    buf.put_slice(b);
}

pub(super) fn put_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

/// `HeaderValue { key, value }` (envoy/config/core/v3/base.proto), the inside of every header an
/// answer sets.
const HEADER_VALUE_KEY: u32 = 1;
const HEADER_VALUE_VALUE: u32 = 2;

pub(super) fn header_value_len(key: &str, value: &str) -> usize {
    string_len(HEADER_VALUE_KEY, key) + string_len(HEADER_VALUE_VALUE, value)
}

pub(super) fn put_header_value(tag: u32, key: &str, value: &str, buf: &mut impl BufMut) {
    put_delimited_head(tag, header_value_len(key, value), buf);
    put_string(HEADER_VALUE_KEY, key, buf);
    put_string(HEADER_VALUE_VALUE, value, buf);
}
