//! The OTLP wire format: our span tree as `ExportTraceServiceRequest` protobuf, with the
//! attributes Langfuse reads (`langfuse.trace.*`, `langfuse.observation.*`, `session.id`,
//! `user.id`) on top of plain OpenTelemetry fields any OTLP backend understands.
//!
//! Spans are written as protobuf straight from the records, into reused buffers: no
//! intermediate `Span` / `KeyValue` values, no `serde_json::Map` per span. The bytes are the
//! ones prost writes for the same message (fields in the same order, defaults left out), so
//! any OTLP decoder reads them; the trace's shared attributes are encoded once per trace and
//! copied onto each of its spans.

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

use super::observation::{self, Level, Levels};
use crate::trace::{format_timestamp, GenerationRecord, SpanKind, SpanRecord, SpanStatus, TraceRecord};

/// The protobuf wire format, as much of it as OTLP traces need.
mod wire {
    pub(super) const VARINT: u32 = 0;
    pub(super) const FIXED64: u32 = 1;
    pub(super) const LEN: u32 = 2;

    #[inline(always)]
    pub(super) fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    #[inline(always)]
    pub(super) fn varint_len(v: u64) -> usize {
        // Most lengths written are below 16 KiB: a compare or two, not a division.
        if v < 1 << 7 {
            1
        } else if v < 1 << 14 {
            2
        } else {
            // 1 byte per 7 bits.
            (64 - v.leading_zeros() as usize).div_ceil(7)
        }
    }

    /// A field key; every field number used here is below 16, so a key is one byte.
    #[inline(always)]
    pub(super) fn key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
        debug_assert!(field < 16);
        buf.push(((field << 3) | wire_type) as u8);
    }

    /// The bytes a length-delimited field of `n` content bytes takes.
    pub(super) fn field_len(n: usize) -> usize {
        1 + varint_len(n as u64) + n
    }

    #[inline(always)]
    pub(super) fn len_field(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
        key(buf, field, LEN);
        varint(buf, data.len() as u64);
        buf.extend_from_slice(data);
    }

    /// The header of a length-delimited field whose `n` content bytes follow.
    #[inline(always)]
    pub(super) fn len_header(buf: &mut Vec<u8>, field: u32, n: usize) {
        key(buf, field, LEN);
        varint(buf, n as u64);
    }
}

use wire::{field_len, key, len_field, len_header, varint, varint_len};

/// `Span.attributes`.
const SPAN_ATTRIBUTES: u32 = 9;

/// A `KeyValue` with a string value (`value` must be UTF-8: a `&str`'s bytes or JSON text).
/// Inlined, like the writers below it: the keys are literals, so their bytes are copied as
/// constants, not by a call (a span has a dozen attributes).
#[inline(always)]
fn attr_str(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    let any = field_len(value.len());
    let k = key.len();
    if k == 0 || k > SHORT_KEY {
        attr_header(buf, key, any);
        len_field(buf, 1, value);
        return;
    }
    // The attribute's field header, its key, the `AnyValue`'s header and the string's, put
    // together on the stack and copied as one fixed-size block (the spare bytes cut off
    // after): a dozen bytes written to the buffer one at a time, each with its own capacity
    // check, cost more.
    let mut h = [0u8; SHORT_KEY + 40];
    h[0] = ((SPAN_ATTRIBUTES << 3) | wire::LEN) as u8;
    let mut at = put_varint(&mut h, 1, (2 + k + field_len(any)) as u64);
    h[at] = ((1 << 3) | wire::LEN) as u8;
    // Below 128: one byte.
    h[at + 1] = k as u8;
    h[at + 2..at + 2 + k].copy_from_slice(key.as_bytes());
    at += 2 + k;
    h[at] = ((2 << 3) | wire::LEN) as u8;
    at = put_varint(&mut h, at + 1, any as u64);
    h[at] = ((1 << 3) | wire::LEN) as u8;
    at = put_varint(&mut h, at + 1, value.len() as u64);
    buf.reserve(h.len() + value.len());
    let start = buf.len();
    buf.extend_from_slice(&h);
    buf.truncate(start + at);
    buf.extend_from_slice(value);
}

/// Keys up to this long are written by [`attr_str`] with their headers in one copy (every
/// key of ours is).
const SHORT_KEY: usize = 48;

/// `v` as a varint at `h[at..]`; returns where it ends.
#[inline(always)]
fn put_varint(h: &mut [u8], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        h[at] = (v as u8) | 0x80;
        v >>= 7;
        at += 1;
    }
    h[at] = v as u8;
    at + 1
}

/// A `KeyValue` with an integer value.
fn attr_int(buf: &mut Vec<u8>, key: &str, value: i64) {
    let any = 1 + varint_len(value as u64);
    attr_header(buf, key, any);
    wire::key(buf, 3, wire::VARINT);
    varint(buf, value as u64);
}

/// A `KeyValue` with an array of strings.
fn attr_strs(buf: &mut Vec<u8>, key: &str, values: &[String]) {
    let array: usize = values.iter().map(|v| field_len(field_len(v.len()))).sum();
    attr_header(buf, key, field_len(array));
    len_header(buf, 5, array);
    for v in values {
        len_header(buf, 1, field_len(v.len()));
        len_field(buf, 1, v.as_bytes());
    }
}

/// The attribute's field, its key, and the header of an `AnyValue` of `any` bytes.
#[inline(always)]
fn attr_header(buf: &mut Vec<u8>, k: &str, any: usize) {
    // prost leaves an empty key out; ours never are.
    let key_len = if k.is_empty() { 0 } else { field_len(k.len()) };
    len_header(buf, SPAN_ATTRIBUTES, key_len + field_len(any));
    if !k.is_empty() {
        len_field(buf, 1, k.as_bytes());
    }
    len_header(buf, 2, any);
}

/// A number as JSON text, what serde_json writes (`null` for one JSON cannot hold).
pub(super) fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *buf, &v).is_err() {
        buf.extend_from_slice(b"null");
    }
}

/// A JSON value as compact JSON text, the bytes `serde_json::to_writer` gives, written
/// without a serializer in between: inputs and outputs are most of what an exporter writes.
pub(super) fn write_value(buf: &mut Vec<u8>, v: &Value) {
    write_value_with(buf, v, &mut NoWatch, 1);
}

/// What the writer shows a check of the values it writes (the privacy rules' scan, see
/// `Privacy::watch`): the check rides on the writer's walk over a value instead of walking
/// it again.
pub(super) trait Watch {
    /// A string value (not a key) is written.
    fn string(&mut self, s: &str);
    /// An object's entry is written.
    fn key(&mut self, k: &str, v: &Value);
    /// An array or object at `depth` (the value itself is at 1) is about to be written;
    /// `false` to leave out what it holds (the check has its answer: a value too deep to
    /// check is not walked to its bottom).
    fn container(&mut self, depth: usize, nonempty: bool) -> bool;
    /// A whole input or output was written, its JSON text `len` bytes long.
    fn value(&mut self, len: usize);
    /// Whether the check has its answer, and nothing more needs writing for it (what is
    /// written is then not used).
    fn stopped(&self) -> bool;
}

/// No check: what every writer but the OTLP encoder's fused check uses.
pub(super) struct NoWatch;

impl Watch for NoWatch {
    #[inline(always)]
    fn string(&mut self, _: &str) {}
    #[inline(always)]
    fn key(&mut self, _: &str, _: &Value) {}
    #[inline(always)]
    fn container(&mut self, _: usize, _: bool) -> bool {
        true
    }
    #[inline(always)]
    fn value(&mut self, _: usize) {}
    #[inline(always)]
    fn stopped(&self) -> bool {
        false
    }
}

/// [`write_value`], each string, entry and container shown to `w`.
pub(super) fn write_value_with<W: Watch>(buf: &mut Vec<u8>, v: &Value, w: &mut W, depth: usize) {
    match v {
        Value::Null => buf.extend_from_slice(b"null"),
        Value::Bool(true) => buf.extend_from_slice(b"true"),
        Value::Bool(false) => buf.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                write_u64(buf, u);
            } else if serde_json::to_writer(&mut *buf, n).is_err() {
                buf.extend_from_slice(b"null");
            }
        }
        Value::String(s) => {
            w.string(s);
            write_str(buf, s);
        }
        Value::Array(a) => {
            if !w.container(depth, !a.is_empty()) {
                return;
            }
            buf.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_value_with(buf, v, w, depth + 1);
            }
            buf.push(b']');
        }
        Value::Object(m) => {
            if !w.container(depth, !m.is_empty()) {
                return;
            }
            buf.push(b'{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                w.key(k, v);
                write_str(buf, k);
                buf.push(b':');
                write_value_with(buf, v, w, depth + 1);
            }
            buf.push(b'}');
        }
    }
}

/// A JSON object as compact JSON text (see [`write_value`]).
pub(super) fn write_map(buf: &mut Vec<u8>, m: &serde_json::Map<String, Value>) {
    write_object(buf, m, write_value);
}

/// A JSON object of `entries`, each value written by `value`: one writer for the maps of
/// values, token counts and costs.
pub(super) fn write_object<'a, V: 'a>(
    buf: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a String, V)>,
    mut value: impl FnMut(&mut Vec<u8>, V),
) {
    buf.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, k);
        buf.push(b':');
        value(buf, v);
    }
    buf.push(b'}');
}

pub(super) fn write_u64(buf: &mut Vec<u8>, mut u: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Whether any of the eight bytes is a control character, `"` or `\\` (SWAR: a byte
/// below 0x20, or equal to 0x22 or 0x5c, sets its high bit in the result).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | zero_in(w ^ (ONES * b'"' as u64)) | zero_in(w ^ (ONES * b'\\' as u64))) != 0
}

/// Eight bytes of `b` from `at`, as one little-endian word.
fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Bytes of a JSON string, escaped as serde_json escapes them, one at a time.
fn escape_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in b {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            buf.push(c);
            continue;
        }
        match c {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x0c => buf.extend_from_slice(b"\\f"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            _ => buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 0xf) as usize]]),
        }
    }
}

/// Whether any byte of a string shorter than eight bytes needs an escape.
fn short_needs_escape(b: &[u8]) -> bool {
    debug_assert!(b.len() < 8);
    if b.len() >= 4 {
        // Two overlapping four-byte reads cover it: no loop over its bytes.
        let half = |at: usize| u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
        needs_escape(half(0) | half(b.len() - 4) << 32)
    } else {
        b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\')
    }
}

/// Whether any byte of a string of at most sixteen bytes needs an escape: two overlapping
/// words from eight bytes up.
#[inline(always)]
fn short16_needs_escape(b: &[u8]) -> bool {
    debug_assert!(b.len() <= 16);
    if b.len() >= 8 {
        needs_escape(word(b, 0)) || needs_escape(word(b, b.len() - 8))
    } else {
        short_needs_escape(b)
    }
}

/// A JSON string, escaped as serde_json escapes it: checked eight bytes at a time (most text
/// needs no escape) and copied in runs between the words that need one, byte by byte only
/// around those.
#[inline(always)]
pub(super) fn write_str(buf: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len();
    if n <= 16 && !short16_needs_escape(b) {
        // Most keys and many values: quotes and bytes put together on the stack and copied
        // as one fixed-size block (stores, not a call), the spare bytes cut off after.
        let mut t = [0u8; 24];
        t[0] = b'"';
        if n >= 8 {
            t[1..9].copy_from_slice(&word(b, 0).to_le_bytes());
            t[n - 7..n + 1].copy_from_slice(&word(b, n - 8).to_le_bytes());
        } else if n >= 4 {
            t[1..5].copy_from_slice(&[b[0], b[1], b[2], b[3]]);
            t[n - 3..n + 1].copy_from_slice(&[b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        } else {
            for (i, &c) in b.iter().enumerate() {
                t[1 + i] = c;
            }
        }
        t[n + 1] = b'"';
        let at = buf.len();
        buf.extend_from_slice(&t);
        buf.truncate(at + n + 2);
        return;
    }
    write_long_str(buf, b);
}

/// [`write_str`] for a string longer than sixteen bytes or one that needs an escape: out of
/// line, so the short path inlined at every call is small.
#[inline(never)]
fn write_long_str(buf: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    buf.reserve(n + 2);
    buf.push(b'"');
    if n < 8 {
        escape_bytes(buf, b);
        buf.push(b'"');
        return;
    }
    // `b[..done]` is written.
    let mut done = 0;
    let mut i = 0;
    while i + 8 <= b.len() {
        if needs_escape(word(b, i)) {
            buf.extend_from_slice(&b[done..i]);
            escape_bytes(buf, &b[i..i + 8]);
            done = i + 8;
        }
        i += 8;
    }
    // The last bytes, checked as the string's last word (some of it checked already: when
    // that word needs an escape, the tail goes byte by byte, which is right either way).
    if i < b.len() && needs_escape(word(b, b.len() - 8)) {
        buf.extend_from_slice(&b[done..i]);
        escape_bytes(buf, &b[i..]);
    } else {
        buf.extend_from_slice(&b[done..]);
    }
    buf.push(b'"');
}

/// `v` as JSON text in `buf` (replacing what it held).
#[cfg(test)]
fn json_value(buf: &mut Vec<u8>, v: &Value) {
    json_value_with(buf, v, &mut NoWatch);
}

/// [`json_value`], shown to `w`.
#[cfg(test)]
fn json_value_with<W: Watch>(buf: &mut Vec<u8>, v: &Value, w: &mut W) {
    buf.clear();
    write_value_with(buf, v, w, 1);
    w.value(buf.len());
}

/// Values whose JSON text is kept while a trace is written (at most this many).
const MAX_TEXTS: usize = 32;

/// The JSON text of one trace's inputs and outputs, each value written (and shown to the
/// `Watch`) once: a node's prep output is its exec's input, its post's output the node's,
/// the run's input the first node's, and a post's input holds its prep's output and its
/// exec's, so the same value comes back several times in a trace, whole or inside another,
/// and comparing it with one already written costs less than writing and checking it again.
/// Values are compared only when their kind, size and first key agree (see [`signature`]).
pub(super) struct Texts<'t> {
    seen: Vec<Seen<'t>>,
}

/// A value written before in the trace.
struct Seen<'t> {
    sig: u64,
    value: &'t Value,
    /// Its JSON text in the trace's text buffer.
    text: std::ops::Range<usize>,
    /// How far below it (0: the value itself) its deepest non-empty array or object is, if
    /// it holds one: the depth check it was shown, moved to where it comes back.
    reach: Option<usize>,
    /// Its [`end_of`], once a value was compared with more than one of its signature (0
    /// until then).
    end: std::cell::Cell<u64>,
}

/// A value's kind, length and (for an object) its first key's length and first byte, or 0
/// for a value not worth remembering (a number, a short string, a string inside another
/// value…).
fn signature(v: &Value, depth: usize) -> u64 {
    match v {
        Value::Object(m) => {
            let first = m.keys().next().map_or(0, |k| {
                ((k.len() as u64) << 40) | (u64::from(k.as_bytes().first().copied().unwrap_or(0)) << 32)
            });
            1 | ((m.len() as u64 & 0xff_ffff) << 8) | first
        }
        Value::Array(a) if !a.is_empty() => 2 | ((a.len() as u64) << 8),
        Value::String(s) if s.len() >= 16 && depth == 1 => 3 | ((s.len() as u64) << 8),
        _ => 0,
    }
}

/// What a value holds at its end (see [`end_bits`]), never 0 (0 stands for "not yet
/// computed" in [`Seen::end`]).
fn end_of(v: &Value) -> u64 {
    mix(end_bits(v)) | 1
}

/// A 64-bit mixer (splitmix64's finaliser).
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bits of `v`'s last leaf and of the keys on the way down to it: a few loads, whatever the
/// value's size.
fn end_bits(mut v: &Value) -> u64 {
    let mut acc = 0u64;
    loop {
        acc = acc.rotate_left(7);
        v = match v {
            Value::Object(m) => match m.iter().next_back() {
                Some((k, x)) => {
                    acc ^= str_bits(k);
                    x
                }
                None => return acc ^ 0x11,
            },
            Value::Array(a) => match a.last() {
                Some(x) => x,
                None => return acc ^ 0x12,
            },
            Value::Number(n) => {
                let bits = match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => u,
                    (None, Some(i)) => i as u64,
                    _ => n.as_f64().map_or(0, f64::to_bits) ^ 0x13,
                };
                return acc ^ mix(bits);
            }
            Value::String(s) => return acc ^ str_bits(s) ^ 0x14,
            Value::Bool(b) => return acc ^ (0x15 + u64::from(*b)),
            Value::Null => return acc ^ 0x17,
        };
    }
}

/// A string's length and its first and last (up to) 8 bytes.
#[inline(always)]
fn str_bits(s: &str) -> u64 {
    let b = s.as_bytes();
    let n = b.len();
    let word = |x: &[u8]| {
        let mut w = [0u8; 8];
        w[..x.len()].copy_from_slice(x);
        u64::from_le_bytes(w)
    };
    let (head, tail) = if n >= 8 { (word(&b[..8]), word(&b[n - 8..])) } else { (word(b), 0) };
    mix(head ^ (n as u64).rotate_left(56)) ^ tail
}

impl<'t> Texts<'t> {
    pub(super) fn new() -> Self {
        Texts { seen: Vec::new() }
    }

    /// Where `v`'s JSON text is in `buf`: written there (and shown to `w`) unless an equal
    /// value was. What `w` would be shown for `v` it was shown for that one.
    pub(super) fn of<W: Watch>(&mut self, buf: &mut Vec<u8>, v: &'t Value, w: &mut W) -> std::ops::Range<usize> {
        if w.stopped() {
            return 0..0;
        }
        let sig = signature(v, 1);
        if let Some(r) = self.find(sig, v) {
            // Written before perhaps inside another value, so not measured on its own yet.
            w.value(r.text.len());
            return r.text.clone();
        }
        let start = buf.len();
        self.write(buf, v, w, 1, sig);
        w.value(buf.len() - start);
        start..buf.len()
    }

    /// The value written before that `v` is written as, if any.
    fn find(&self, sig: u64, v: &Value) -> Option<&Seen<'t>> {
        if sig == 0 {
            return None;
        }
        // Newest first: a value mostly comes back soon (a prep's output as its exec's input).
        let mut rest = self.seen.iter().rev();
        let first = rest.find(|s| s.sig == sig)?;
        if observation::same_json(first.value, v) {
            return Some(first);
        }
        // Values of one shape mostly differ at an end (a counter, an id, a message): past the
        // first candidate, one is compared only when their ends agree, so a value is compared
        // with about one written before it, not with each of its shape (a chain's `{"x": n}`
        // with every other node's).
        let end = end_of(v);
        rest.find(|s| {
            if s.sig != sig {
                return false;
            }
            if s.end.get() == 0 {
                s.end.set(end_of(s.value));
            }
            s.end.get() == end && observation::same_json(s.value, v)
        })
    }

    /// `v` (at `depth`, its signature `sig`) written to `buf` as [`write_value_with`] writes
    /// it, and shown to `w` as it shows it; a value inside it that was written before is
    /// copied, and shown to `w` as the depth check it needs here (the strings and keys it
    /// holds were checked when it was written, and their checks do not depend on where a
    /// value is). Returns how far below `v` its deepest non-empty container is.
    fn write<W: Watch>(&mut self, buf: &mut Vec<u8>, v: &'t Value, w: &mut W, depth: usize, sig: u64) -> Option<usize> {
        let start = buf.len();
        let reach = match v {
            Value::Array(a) if !a.is_empty() => {
                if !w.container(depth, true) {
                    return None;
                }
                buf.push(b'[');
                let mut reach = 0;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    if let Some(r) = self.nested(buf, v, w, depth + 1) {
                        reach = reach.max(r + 1);
                    }
                }
                buf.push(b']');
                Some(reach)
            }
            Value::Object(m) if !m.is_empty() => {
                if !w.container(depth, true) {
                    return None;
                }
                buf.push(b'{');
                let mut reach = 0;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    w.key(k, v);
                    write_str(buf, k);
                    buf.push(b':');
                    if let Some(r) = self.nested(buf, v, w, depth + 1) {
                        reach = reach.max(r + 1);
                    }
                }
                buf.push(b'}');
                Some(reach)
            }
            _ => {
                write_value_with(buf, v, w, depth);
                None
            }
        };
        if sig != 0 && self.seen.len() < MAX_TEXTS && !w.stopped() {
            if self.seen.capacity() == 0 {
                // Half the most it keeps: small enough for the allocator's per-thread cache
                // (a trace of a few nodes remembers fewer), doubled if a trace needs more.
                self.seen.reserve_exact(MAX_TEXTS / 2);
            }
            self.seen.push(Seen { sig, value: v, text: start..buf.len(), reach, end: Default::default() });
        }
        reach
    }

    /// A value inside another (at `depth`): copied when it was written before, else written.
    fn nested<W: Watch>(&mut self, buf: &mut Vec<u8>, v: &'t Value, w: &mut W, depth: usize) -> Option<usize> {
        let sig = signature(v, depth);
        if sig == 0 {
            write_value_with(buf, v, w, depth);
            return None;
        }
        if let Some(s) = self.find(sig, v) {
            let (text, reach) = (s.text.clone(), s.reach);
            // Its deepest container is the one the depth check could refuse here.
            if reach.is_some_and(|r| !w.container(depth + r, true)) {
                return None;
            }
            buf.extend_from_within(text);
            return reach;
        }
        self.write(buf, v, w, depth, sig)
    }
}

/// The span id used for a trace that has no root span of its own.
fn synthetic_root_id(trace: &TraceRecord) -> u64 {
    (trace.trace_id.0 as u64) | 1
}

/// Buffers reused from span to span (and trace to trace on one thread).
#[derive(Default)]
struct Scratch {
    /// The trace's context attributes, encoded.
    ctx: Vec<u8>,
    /// JSON text of the trace's inputs and outputs (see [`Texts`]).
    texts: Vec<u8>,
    /// JSON text of one more value.
    other: Vec<u8>,
    /// The trace's spans, one after another, and where each ends.
    spans: Vec<u8>,
    ends: Vec<usize>,
    /// The bytes of the last trace written into a buffer of its own.
    last_len: usize,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The trace's context, encoded once per trace and copied onto every span: on Langfuse's
/// v4 path observations are queried on their own, so a field only the root carries cannot
/// be filtered on anywhere else (§10).
fn trace_context(buf: &mut Vec<u8>, tmp: &mut Vec<u8>, t: &TraceRecord, environment: Option<&str>) {
    buf.clear();
    attr_str(buf, "langfuse.trace.name", t.name.as_bytes());
    if let Some(s) = &t.session_id {
        attr_str(buf, "session.id", s.as_bytes());
    }
    if let Some(u) = &t.user_id {
        attr_str(buf, "user.id", u.as_bytes());
    }
    if !t.tags.is_empty() {
        attr_strs(buf, "langfuse.trace.tags", &t.tags);
    }
    if let Some(r) = &t.release {
        attr_str(buf, "langfuse.release", r.as_bytes());
    }
    if let Some(v) = &t.version {
        attr_str(buf, "langfuse.version", v.as_bytes());
    }
    if let Some(e) = environment {
        attr_str(buf, "langfuse.environment", e.as_bytes());
    }
    // One JSON object: Langfuse parses it into structured metadata, where a value under
    // `langfuse.trace.metadata.<key>` would stay a string (§10).
    tmp.clear();
    observation::trace_metadata(t).write_json(tmp);
    attr_str(buf, "langfuse.trace.metadata", tmp);
}

/// Writes one `Span` message (its content, without a field header) to `out`.
#[allow(clippy::too_many_arguments)]
fn write_span<'t, W: Watch>(
    out: &mut Vec<u8>,
    sc: &mut Scratch,
    texts: &mut Texts<'t>,
    w: &mut W,
    trace: &'t TraceRecord,
    levels: &Levels<'_>,
    s: &'t SpanRecord,
    is_root: bool,
) {
    let Scratch { ctx, texts: text, other, .. } = sc;
    len_field(out, 1, &trace.trace_id.to_bytes());
    len_field(out, 2, &s.span_id.to_bytes());
    if let Some(p) = s.parent_id {
        len_field(out, 4, &p.to_bytes());
    }
    if !s.name.is_empty() {
        len_field(out, 5, s.name.as_bytes());
    }
    // SPAN_KIND_INTERNAL.
    key(out, 6, wire::VARINT);
    varint(out, 1);
    for (field, t) in [(7, s.start_unix_nanos), (8, s.end_unix_nanos)] {
        if t != 0 {
            key(out, field, wire::FIXED64);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }

    attr_str(out, "flowtrace.span.kind", observation::kind_name(s.kind).as_bytes());
    // The root observation carries the run's input and output (the store at start and end):
    // the v4 trace view shows the root's, and ignores `langfuse.trace.input/output` (§10).
    let (input, output) =
        if is_root { (Some(&trace.input), Some(&trace.output)) } else { (s.input.as_ref(), s.output.as_ref()) };
    // Every input and output the span carries is written (and so checked, see `Watch`),
    // even a root's null that is not sent.
    let jin = input.map(|v| texts.of(text, v, w)).unwrap_or_default();
    let jout = output.map(|v| texts.of(text, v, w)).unwrap_or_default();
    // Langfuse reads `langfuse.observation.*`; OpenInference backends (Phoenix) `*.value`.
    if input.is_some_and(|v| !v.is_null() || !is_root) {
        attr_str(out, "input.value", &text[jin.clone()]);
        attr_str(out, "langfuse.observation.input", &text[jin.clone()]);
    }
    if output.is_some_and(|v| !v.is_null() || !is_root) {
        attr_str(out, "output.value", &text[jout.clone()]);
        attr_str(out, "langfuse.observation.output", &text[jout.clone()]);
    }
    let level = levels.of(s);
    if level != Level::Default {
        attr_str(out, "langfuse.observation.level", level.as_str().as_bytes());
        let msg = if is_root && trace.status.is_error() { trace.status.message() } else { s.status.message() };
        // An event (a PocketFlow warning) is its own message.
        let msg = msg.or_else(|| (s.kind == SpanKind::Event).then_some(&*s.name));
        attr_str(out, "langfuse.observation.status_message", msg.unwrap_or("").as_bytes());
    }
    if let SpanStatus::Error { kind, location, .. } = &s.status {
        attr_str(out, "error.type", kind.as_bytes());
        if let Some(l) = location {
            attr_str(out, "code.location", l.as_bytes());
        }
    }
    let ty = observation::observation_type(s);
    if ty != "span" {
        attr_str(out, "langfuse.observation.type", ty.as_bytes());
    }
    if let Some(g) = &s.generation {
        generation_attributes(out, other, g);
    }
    other.clear();
    observation::metadata(s).write_json(other);
    attr_str(out, "langfuse.observation.metadata", other);
    out.extend_from_slice(ctx);
    if is_root {
        // `jin` / `jout` are the trace's input and output here.
        attr_str(out, "langfuse.trace.input", &text[jin]);
        attr_str(out, "langfuse.trace.output", &text[jout]);
    }

    let (code, msg) = match &s.status {
        SpanStatus::Ok => (1, ""),
        other => (2, other.message().unwrap_or("")),
    };
    let msg_len = if msg.is_empty() { 0 } else { field_len(msg.len()) };
    len_header(out, 15, msg_len + 2);
    if !msg.is_empty() {
        len_field(out, 2, msg.as_bytes());
    }
    key(out, 3, wire::VARINT);
    varint(out, code);
}

/// An LLM call's fields, as Langfuse reads them (§10), plus OpenTelemetry's `gen_ai.*` for
/// other backends.
fn generation_attributes(out: &mut Vec<u8>, tmp: &mut Vec<u8>, g: &GenerationRecord) {
    if let Some(m) = &g.model {
        attr_str(out, "langfuse.observation.model.name", m.as_bytes());
        attr_str(out, "gen_ai.request.model", m.as_bytes());
    }
    if !g.model_parameters.is_empty() {
        tmp.clear();
        write_map(tmp, &g.model_parameters);
        attr_str(out, "langfuse.observation.model.parameters", tmp);
    }
    if !g.usage.is_empty() {
        tmp.clear();
        write_object(tmp, &g.usage, |b, v| write_u64(b, *v));
        attr_str(out, "langfuse.observation.usage_details", tmp);
        for (k, otel) in [("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens")] {
            if let Some(n) = g.usage.get(k) {
                attr_int(out, otel, *n as i64);
            }
        }
    }
    if !g.cost.is_empty() {
        tmp.clear();
        write_object(tmp, &g.cost, |b, v| write_f64(b, *v));
        attr_str(out, "langfuse.observation.cost_details", tmp);
    }
    if let Some(t) = g.completion_start_unix_nanos {
        attr_str(out, "langfuse.observation.completion_start_time", format_timestamp(t).as_bytes());
    }
    if let (Some(n), Some(v)) = (&g.prompt_name, g.prompt_version) {
        attr_str(out, "langfuse.observation.prompt.name", n.as_bytes());
        attr_int(out, "langfuse.observation.prompt.version", v as i64);
    }
}

/// Appends the OTLP spans of `trace` to `out`, each an encoded `Span` message (a root span
/// is made up when the trace has none, so the trace's own fields always travel); returns
/// how many were added.
pub fn encode_trace(trace: &TraceRecord, out: &mut Vec<Vec<u8>>) -> usize {
    encode_trace_in(trace, None, out)
}

/// Like [`encode_trace`], with the Langfuse environment (`langfuse.environment`) on every span.
pub(super) fn encode_trace_in(trace: &TraceRecord, environment: Option<&str>, out: &mut Vec<Vec<u8>>) -> usize {
    with_scratch(|sc| {
        let (mut spans, mut ends) = (std::mem::take(&mut sc.spans), std::mem::take(&mut sc.ends));
        encode_with(sc, &mut NoWatch, trace, environment, &mut spans, &mut ends);
        let mut at = 0;
        for &end in &ends {
            // An exact-size copy: queued spans hold no spare capacity.
            out.push(spans[at..end].to_vec());
            at = end;
        }
        let n = ends.len();
        (sc.spans, sc.ends) = (spans, ends);
        n
    })
}

/// One encoded `Span` message: a range of its trace's buffer, which all the trace's spans share
/// (one allocation per trace, not one per span).
#[derive(Debug, Clone)]
pub(super) struct SpanBytes {
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
}

impl SpanBytes {
    /// The message's bytes.
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    /// Its length in bytes.
    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Like [`encode_trace_in`], each span handed to `each` as a range of one buffer per trace.
pub(super) fn encode_trace_shared(trace: &TraceRecord, environment: Option<&str>, each: impl FnMut(SpanBytes)) {
    encode_trace_watched(trace, environment, &mut NoWatch, each);
}

/// [`encode_trace_shared`], every input and output the spans carry shown to `w` as it is
/// written (see [`watched_values`] for which those are).
pub(super) fn encode_trace_watched<W: Watch>(
    trace: &TraceRecord,
    environment: Option<&str>,
    w: &mut W,
    mut each: impl FnMut(SpanBytes),
) {
    with_scratch(|sc| {
        // Written straight into the buffer the spans keep (not copied into it), sized like
        // the last trace's with an eighth to spare: traces of one exporter are much alike.
        let mut spans = Vec::with_capacity(sc.last_len + sc.last_len / 8);
        let mut ends = std::mem::take(&mut sc.ends);
        encode_with(sc, w, trace, environment, &mut spans, &mut ends);
        sc.last_len = spans.len();
        // Queued spans hold little spare room: after a large trace (a long run's part) or a
        // buffer that grew, the buffer is cut down to size.
        if spans.capacity() > spans.len() + spans.len() / 4 + 256 {
            spans.shrink_to_fit();
        }
        let buf = Arc::new(spans);
        let mut start = 0;
        for &end in &ends {
            each(SpanBytes { buf: Arc::clone(&buf), start, end });
            start = end;
        }
        sc.ends = ends;
    })
}

/// The thread's scratch buffers (fresh ones if they are in use, which they are not in practice).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|sc| match sc.try_borrow_mut() {
        Ok(mut sc) => f(&mut sc),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Writes the trace's spans one after another into `spans` (cleared first), the end of each in
/// `ends`.
fn encode_with<W: Watch>(
    sc: &mut Scratch,
    w: &mut W,
    trace: &TraceRecord,
    environment: Option<&str>,
    spans: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) {
    spans.clear();
    ends.clear();
    let folded = observation::fold_generation_nodes(trace);
    let trace = folded.as_ref().unwrap_or(trace);
    trace_context(&mut sc.ctx, &mut sc.other, trace, environment);
    let levels = Levels::new(trace);
    let root = trace.root().map(|r| r.span_id);
    // A part of a run in progress has no root yet: the record that ends the run brings it.
    let synthetic = (root.is_none() && !trace.is_part()).then(|| SpanRecord {
        span_id: crate::trace::SpanId(synthetic_root_id(trace)),
        parent_id: None,
        kind: SpanKind::Flow,
        name: trace.name.as_str().into(),
        start_unix_nanos: trace.start_unix_nanos,
        end_unix_nanos: trace.end_unix_nanos,
        status: trace.status.clone(),
        input: None,
        output: None,
        attributes: Default::default(),
        generation: None,
    });
    sc.texts.clear();
    let mut texts = Texts::new();
    let mut emit = |sc: &mut Scratch, s, is_root: bool| {
        write_span(spans, sc, &mut texts, w, trace, &levels, s, is_root);
        ends.push(spans.len());
    };
    if let Some(s) = &synthetic {
        emit(sc, s, true);
    }
    for s in &trace.spans {
        emit(sc, s, Some(s.span_id) == root);
    }
    // A long run's part may have needed a large buffer: it is not kept for the next trace.
    if sc.texts.capacity() > 1 << 20 {
        sc.texts = Vec::new();
    }
}

/// The inputs and outputs [`encode_trace_watched`] writes (and shows its `Watch`), as
/// (whether the trace's own input and output are among them, whether a span's are): a root
/// span carries the trace's instead of its own, a part of a run in progress has no root
/// and does not carry the trace's; `None` when the spans are changed before they are written
/// (a generation node's calls folded into it), so what is written is not what is recorded.
pub(super) fn watched_values(trace: &TraceRecord) -> Option<(bool, impl Fn(&SpanRecord) -> bool)> {
    if observation::has_generation_nodes(trace) {
        return None;
    }
    let root = trace.root().map(|r| r.span_id);
    let trace_values = root.is_some() || !trace.is_part();
    Some((trace_values, move |s: &SpanRecord| Some(s.span_id) != root))
}

fn kv_str(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

/// The resource every request carries: `service.name` and the SDK's name and version.
pub fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            kv_str("service.name", service_name),
            kv_str("telemetry.sdk.name", "flowtrace"),
            kv_str("telemetry.sdk.language", "rust"),
            kv_str("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

/// Adds (or replaces) resource attributes.
pub(super) fn add_resource_attributes(resource: &mut Resource, attrs: &[(String, String)]) {
    for (k, v) in attrs {
        resource.attributes.retain(|a| &a.key != k);
        resource.attributes.push(kv_str(k, v.clone()));
    }
}

/// The parts of a request that are the same for every request of an exporter: the
/// resource and the instrumentation scope, encoded.
#[derive(Debug, Clone)]
pub(super) struct RequestHead {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl RequestHead {
    pub(super) fn new(resource: &Resource) -> Self {
        let scope = InstrumentationScope {
            name: "flowtrace".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        RequestHead { resource: resource.encode_to_vec(), scope: scope.encode_to_vec() }
    }

    /// One `ExportTraceServiceRequest` holding `spans` (encoded `Span` messages): one
    /// resource, one scope. The body is sized exactly and written once.
    pub(super) fn body<'a, I>(&self, spans: I) -> Vec<u8>
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        let spans = spans.into_iter();
        let spans_len: usize = spans.clone().map(|s| field_len(s.len())).sum();
        let scope_spans = field_len(self.scope.len()) + spans_len;
        let resource_spans = field_len(self.resource.len()) + field_len(scope_spans);
        let mut b = Vec::with_capacity(field_len(resource_spans));
        len_header(&mut b, 1, resource_spans);
        len_field(&mut b, 1, &self.resource);
        len_header(&mut b, 2, scope_spans);
        len_field(&mut b, 1, &self.scope);
        for s in spans {
            len_field(&mut b, 2, s);
        }
        debug_assert_eq!(b.len(), b.capacity());
        b
    }
}

/// One `ExportTraceServiceRequest` holding `spans` (encoded `Span` messages), protobuf-encoded.
pub fn encode_request(resource: &Resource, spans: &[Vec<u8>]) -> Vec<u8> {
    RequestHead::new(resource).body(spans.iter().map(Vec::as_slice))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use serde_json::Value;

    fn span(id: u64, parent: Option<u64>, kind: SpanKind, name: &str) -> SpanRecord {
        SpanRecord {
            span_id: crate::trace::SpanId(id),
            parent_id: parent.map(crate::trace::SpanId),
            kind,
            name: name.into(),
            start_unix_nanos: 1_795_892_413_638_615_123 + id,
            end_unix_nanos: 1_795_892_413_738_615_123 + id,
            status: SpanStatus::Ok,
            input: None,
            output: None,
            attributes: Default::default(),
            generation: None,
        }
    }

    pub(crate) fn traces() -> Vec<TraceRecord> {
        use serde_json::json;
        let obj = |v: Value| v.as_object().cloned().unwrap();
        let mut root = span(1, None, SpanKind::Flow, "Flow");
        root.attributes = obj(json!({"span_kind": "shadowed", "a": 1, "zz": [1, {"b": null}]}));
        let mut node = span(2, Some(1), SpanKind::Node, "Node");
        node.attributes = obj(json!({"node_type": "N", "observation_type": "agent", "error_kind": "x"}));
        node.input = Some(json!("text with \"quotes\" and ünïcode"));
        node.output = Some(Value::Null);
        let mut a0 = span(3, Some(2), SpanKind::Attempt, "attempt 0");
        a0.attributes = obj(json!({"attempt": 0}));
        a0.status = SpanStatus::Error {
            kind: "node_failed".into(),
            message: "boom".into(),
            chain: vec!["boom".into(), "cause".into()],
            location: Some("src/x.rs:1:2".into()),
        };
        let mut a1 = span(4, Some(2), SpanKind::Attempt, "attempt 1");
        a1.attributes = obj(json!({"attempt": 1, "level": "WARNING"}));
        let mut ev = span(5, Some(1), SpanKind::Event, "Flow ends: x");
        ev.end_unix_nanos = ev.start_unix_nanos;
        let mut gen = span(6, Some(2), SpanKind::Generation, "llm");
        gen.input = Some(json!([{"role": "user", "content": "hi"}]));
        gen.output = Some(json!({"content": "yo"}));
        gen.generation = Some(Box::new(GenerationRecord {
            model: Some("gpt-4o-mini".into()),
            model_parameters: obj(json!({"temperature": 0.2})),
            usage: [("input".to_string(), 3u64), ("output".into(), 5)].into_iter().collect(),
            cost: [("input".to_string(), 0.000_012)].into_iter().collect(),
            completion_start_unix_nanos: Some(1_795_892_413_700_000_000),
            prompt_name: Some("p".into()),
            prompt_version: Some(2),
        }));
        let mut cancelled = span(7, Some(1), SpanKind::Node, "");
        cancelled.status = SpanStatus::Cancelled { reason: "operator stop".into() };
        let mut gen_node = span(8, Some(1), SpanKind::Node, "GenNode");
        gen_node.attributes = obj(json!({"observation_type": "generation"}));
        let mut gen_exec = span(9, Some(8), SpanKind::Exec, "GenNode.exec");
        gen_exec.start_unix_nanos = 0;
        let mut gen2 = gen.clone();
        gen2.span_id = crate::trace::SpanId(10);
        gen2.parent_id = Some(crate::trace::SpanId(9));
        let full = TraceRecord {
            trace_id: crate::trace::TraceId(0x0123456789abcdef0123456789abcdef),
            name: "T".into(),
            session_id: Some("s".into()),
            user_id: Some("u".into()),
            tags: vec!["a".into(), "b".into()],
            release: Some("r".into()),
            version: Some("v".into()),
            metadata: obj(json!({"framework": "mine", "k": "v", "status": 3})),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            input: json!({"x": 1}),
            output: json!({"x": 2, "deep": [[[]]]}),
            status: SpanStatus::Error {
                kind: "flow_failed".into(),
                message: "disk full".into(),
                chain: vec![],
                location: None,
            },
            action: Some("done".into()),
            spans_dropped: 3,
            part: None,
            parts: 0,
            spans: vec![a0, a1, gen, node, ev, cancelled, gen2, gen_exec, gen_node, root],
        };
        let mut ok = full.clone();
        ok.status = SpanStatus::Ok;
        ok.input = Value::Null;
        ok.output = Value::Null;
        ok.tags.clear();
        ok.session_id = None;
        ok.metadata.clear();
        ok.spans_dropped = 0;
        let mut rootless = full.clone();
        rootless.spans.retain(|s| s.parent_id.is_some());
        rootless.status = SpanStatus::Cancelled { reason: "stop".into() };
        let mut empty = ok.clone();
        empty.spans.clear();
        vec![full, ok, rootless, empty]
    }

    /// The metadata as it was built before: a copy of the recorded map with entries added.
    fn metadata_maps(s: &SpanRecord, t: &TraceRecord) -> (Value, Value) {
        let mut m = s.attributes.clone();
        m.insert("span_kind".into(), observation::kind_name(s.kind).into());
        match &s.status {
            SpanStatus::Error { kind, chain, location, .. } => {
                m.insert("error_kind".into(), kind.clone().into());
                if !chain.is_empty() {
                    m.insert("error_chain".into(), chain.clone().into());
                }
                if let Some(l) = location {
                    m.insert("panic_location".into(), l.clone().into());
                }
            }
            SpanStatus::Cancelled { .. } => {
                m.insert("error_kind".into(), "cancelled".into());
            }
            SpanStatus::Ok => {}
        }
        let mut tm = t.metadata.clone();
        tm.insert("framework".into(), "flowtrace".into());
        if let Some(a) = &t.action {
            tm.insert("action".into(), a.clone().into());
        }
        match &t.status {
            SpanStatus::Ok => {}
            SpanStatus::Error { kind, message, .. } => {
                tm.insert("status".into(), "error".into());
                tm.insert("error_kind".into(), kind.clone().into());
                tm.insert("error".into(), message.clone().into());
            }
            SpanStatus::Cancelled { reason } => {
                tm.insert("status".into(), "cancelled".into());
                tm.insert("error".into(), reason.clone().into());
            }
        }
        if t.spans_dropped > 0 {
            tm.insert("spans_dropped".into(), t.spans_dropped.into());
        }
        (Value::Object(m), Value::Object(tm))
    }

    #[test]
    fn metadata_as_the_map_was() {
        for t in traces() {
            for s in &t.spans {
                let (m, tm) = metadata_maps(s, &t);
                assert_eq!(serde_json::to_string(&observation::metadata(s)).unwrap(), m.to_string());
                assert_eq!(serde_json::to_string(&observation::trace_metadata(&t)).unwrap(), tm.to_string());
                let (mut got, mut got_t) = (Vec::new(), Vec::new());
                observation::metadata(s).write_json(&mut got);
                observation::trace_metadata(&t).write_json(&mut got_t);
                assert_eq!(String::from_utf8(got).unwrap(), m.to_string(), "written by hand");
                assert_eq!(String::from_utf8(got_t).unwrap(), tm.to_string(), "written by hand");
            }
        }
    }

    #[test]
    fn spans_decode_with_their_fields_and_attributes() {
        for t in traces() {
            // What the encoder sends: a generation node's calls folded into it.
            let t = observation::fold_generation_nodes(&t).unwrap_or(t);
            let mut spans = Vec::new();
            let n = encode_trace_in(&t, Some("production"), &mut spans);
            assert_eq!(n, t.spans.len() + usize::from(t.root().is_none()));
            let body = encode_request(&resource("svc"), &spans);
            let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            let got = &req.resource_spans[0].scope_spans[0].spans;
            assert_eq!(got.len(), n);
            for g in got {
                assert_eq!(g.trace_id, t.trace_id.to_bytes());
                let attr = |k: &str| {
                    g.attributes.iter().find(|a| a.key == k).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                };
                assert_eq!(attr("langfuse.environment").as_deref(), Some("production"));
                assert_eq!(attr("langfuse.trace.name").as_deref(), Some("T"));
                let meta: Value = serde_json::from_str(&attr("langfuse.observation.metadata").unwrap()).unwrap();
                assert!(meta["span_kind"].is_string());
                let Some(rec) = t.spans.iter().find(|s| s.span_id.to_bytes().as_slice() == g.span_id.as_slice()) else {
                    // The made-up root of a trace without one.
                    assert!(t.root().is_none() && g.parent_span_id.is_empty());
                    continue;
                };
                assert_eq!(g.name, &*rec.name);
                assert_eq!((g.start_time_unix_nano, g.end_time_unix_nano), (rec.start_unix_nanos, rec.end_unix_nanos));
                let is_root = rec.parent_id.is_none();
                if let (Some(v), false) = (&rec.input, is_root) {
                    assert_eq!(attr("langfuse.observation.input"), Some(serde_json::to_string(v).unwrap()));
                }
                if is_root {
                    assert_eq!(attr("langfuse.trace.input"), Some(t.input.to_string()));
                }
            }
        }
    }

    #[test]
    fn shared_buffers_hold_the_same_spans() {
        for t in traces() {
            let mut spans = Vec::new();
            encode_trace_in(&t, Some("production"), &mut spans);
            let mut shared = Vec::new();
            encode_trace_shared(&t, Some("production"), |s| shared.push(s));
            assert_eq!(shared.iter().map(SpanBytes::as_slice).collect::<Vec<_>>(), spans);
            assert!(shared.iter().zip(&spans).all(|(s, v)| s.len() == v.len()));
            let buf = shared.first().map(|s| Arc::clone(&s.buf));
            assert!(buf.is_none_or(|b| b.capacity() <= b.len() + b.len() / 4 + 256), "little spare room");
        }
    }

    #[test]
    fn json_text_is_what_serde_json_writes() {
        use serde_json::json;
        let controls: String = (0u8..0x20).map(char::from).chain("\"\\/\u{7f}é✓𝄞".chars()).collect();
        let values = [
            json!(null),
            json!(true),
            json!([false, 0, 1, u64::MAX, -1, i64::MIN, 1.5, -0.0, 1e300, 123456789.123]),
            json!({"": "", "a b": {"nested": [[], {}, [[1]]]}, "z": controls}),
            json!(controls),
            json!("plain"),
            json!("0123456789abcdef\n0123456789\"0123456789\\0123456789\u{1f}xyz0123456789ü"),
        ];
        let mut values = values.to_vec();
        for len in 0..26 {
            for at in 0..len {
                for c in ['"', '\\', '\n', '\u{1}', 'é'] {
                    let mut s: Vec<char> = "abcdefghijklmnopqrstuvwxyz"[..len].chars().collect();
                    s[at] = c;
                    values.push(json!(s.into_iter().collect::<String>()));
                }
            }
            values.push(json!("abcdefghijklmnopqrstuvwxyz"[..len]));
        }
        for v in values {
            let mut b = Vec::new();
            json_value(&mut b, &v);
            assert_eq!(String::from_utf8(b).unwrap(), serde_json::to_string(&v).unwrap());
        }
    }

    #[test]
    fn a_value_seen_before_in_the_trace_is_written_as_it_would_be() {
        use serde_json::json;
        let values = [
            json!({"a": 0.0}),
            json!({"a": -0.0}),
            json!({"a": 0}),
            json!({"a": 0.0}),
            json!({"b": [1, 2]}),
            json!({"a": [1, 2]}),
            json!([1, 2]),
            json!([1, 2.0]),
            json!("a string of sixteen bytes or more"),
            json!("a string of sixteen bytes or more"),
            json!({"": 1}),
            json!({"": 1}),
            json!({"x": {"y": "z"}, "w": null}),
            json!({"x": {"y": "z"}, "w": false}),
        ];
        let mut buf = Vec::new();
        let mut texts = Texts::new();
        for v in &values {
            let r = texts.of(&mut buf, v, &mut NoWatch);
            assert_eq!(std::str::from_utf8(&buf[r]).unwrap(), serde_json::to_string(v).unwrap());
        }
        assert!(texts.seen.len() < values.len(), "equal values are remembered once");
    }

    #[test]
    fn values_of_one_shape_are_told_apart_by_their_ends_and_found_again() {
        use serde_json::json;
        // A chain's store: the same key, a counter's value; a post's output nests it. Values
        // that differ only in the middle share their ends, and must still not be taken for
        // one another.
        let mut values: Vec<Value> = Vec::new();
        for n in 0..12 {
            values.push(json!({ "x": n }));
            values.push(json!({"action": "default", "changed": {"x": n}}));
            values.push(json!([n, "same", 0]));
            values.push(json!([0, n, 0]));
        }
        let again: Vec<Value> = values.iter().rev().cloned().collect();
        let mut buf = Vec::new();
        let mut texts = Texts::new();
        for v in values.iter().chain(&again) {
            let r = texts.of(&mut buf, v, &mut NoWatch);
            assert_eq!(std::str::from_utf8(&buf[r]).unwrap(), serde_json::to_string(v).unwrap());
        }
        // The trace remembers as many values as it may; those it remembers are found again.
        assert_eq!(texts.seen.len(), MAX_TEXTS.min(values.len()));
        let written = buf.len();
        for v in &values[..8] {
            texts.of(&mut buf, v, &mut NoWatch);
        }
        assert_eq!(buf.len(), written, "values seen before are not written again");
    }

    #[test]
    fn varints_take_their_length() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(prost::encoding::encoded_len_varint(v), b.len(), "{v}");
        }
    }

    #[test]
    fn attributes_decode_as_prost_writes_them() {
        let mut b = Vec::new();
        attr_str(&mut b, "k", b"v");
        attr_int(&mut b, "n", -3);
        attr_strs(&mut b, "tags", &["a".into(), String::new()]);
        let span = opentelemetry_proto::tonic::trace::v1::Span::decode(b.as_slice()).unwrap();
        let want = opentelemetry_proto::tonic::trace::v1::Span {
            attributes: vec![
                kv_str("k", "v"),
                KeyValue {
                    key: "n".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::IntValue(-3)) }),
                    ..Default::default()
                },
                KeyValue {
                    key: "tags".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: ["a", ""]
                                .iter()
                                .map(|s| AnyValue { value: Some(any_value::Value::StringValue((*s).into())) })
                                .collect(),
                        })),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(span, want);
        assert_eq!(b, want.encode_to_vec(), "the same bytes as prost");
    }

    #[test]
    fn a_request_holds_its_spans_under_one_resource_and_scope() {
        let r = resource("svc");
        let spans = vec![vec![0x2a, 0x01, b'a'], vec![0x2a, 0x01, b'b']];
        let body = encode_request(&r, &spans);
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        assert_eq!(rs.resource.as_ref(), Some(&r));
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("flowtrace"));
        assert_eq!(ss.spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }
}
