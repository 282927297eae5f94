//! The spool's binary record: a hand-written, versioned codec of [`TraceRecord`].
//!
//! JSON cost the export thread most of its time (escaping, hex ids, parsing, a `String` per
//! key) and about 130 bytes a span on disk. This codec writes what the record holds and no
//! more, and decodes with one allocation per value that owns memory (a `String`, a `Vec`, a
//! map entry); span names repeated within a record share one `Arc<str>`. Read back into a
//! delivered record ([`decode_into`]), it allocates next to nothing: one exporter's records
//! are much alike, and a map with the same keys is overwritten in place.
//!
//! Layout (every integer a LEB128 varint unless said otherwise; `zz` = zigzag):
//!
//! ```text
//! payload  = VERSION:u8 (1) trace
//! trace    = trace_id:16 bytes LE, name:str, flags:u8 (bit 0 session, 1 user, 2 release,
//!            3 version, 4 action, 5 part), [session:str] [user:str], tags:n str*,
//!            [release:str] [version:str], metadata:map, start, zz(end - start),
//!            input:value, output:value, status, [action:str], spans_dropped, [part], parts,
//!            spans:n span*
//! span     = span_id:8 bytes LE, flags:u8 (bit 0 parent as an index into this record's
//!            spans, 1 parent as an id, 2 input, 3 output, 4 attributes, 5 generation),
//!            kind:u8, name:str, zz(start - trace start), zz(end - start), status,
//!            [parent index | parent_id:8 bytes LE], [input] [output] [attributes:map]
//!            [generation]
//! status   = 0 ok | 1 error kind:str message:str chain:n str* has_location:u8 [str]
//!          | 2 cancelled reason:str
//! generation = flags:u8 (bit 0 model, 1 completion start, 2 prompt name, 3 prompt version),
//!            [model:str], model_parameters:map, usage:n (str u64)*, cost:n (str f64:8 bytes LE)*,
//!            [completion_start] [prompt_name:str] [prompt_version]
//! str      = 2·len (a new string: its UTF-8 bytes follow; one of at most 64 bytes joins the
//!            record's table) | 2·index + 1 (the table's string `index`)
//! value    = 0 null | 1 false | 2 true | 3 u64 | 4 negative i64 as !n | 5 f64:8 bytes LE
//!          | 6 str | 7 n value* (array) | 8 n (str value)* (object) | 16 + k (the integer k,
//!            0 ≤ k < 240)
//! ```
//!
//! Decoding checks everything it reads (lengths against what is left, UTF-8, tags, depth,
//! finite floats, trailing bytes) and returns an error, never panics. A new layout takes a
//! new version byte; the spool reads every version it ever wrote (and JSON payloads, which
//! start with `{`).

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::trace::{GenerationRecord, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId, TraceRecord};

/// The first byte of a binary payload. JSON payloads start with `{` (0x7b).
pub(crate) const VERSION: u8 = 1;
/// Values nested deeper than this are not decoded (the tracer keeps 64 levels): an encoder
/// writes a marker instead, so what it writes always reads back.
const MAX_DEPTH: usize = 128;
/// Strings at most this long join the record's table (names, keys, short values repeat).
const MAX_INTERNED: usize = 64;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The payload ended inside a field.
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    /// A version this build does not know.
    #[error("unknown record version {0}")]
    Version(u8),
    /// A field held what it cannot hold.
    #[error("malformed record at byte {at}: {what}")]
    Malformed {
        /// Where.
        at: usize,
        /// What was wrong.
        what: &'static str,
    },
}

/// The span kinds, by their byte. The order is the format: append only.
const KINDS: [SpanKind; 13] = [
    SpanKind::Flow,
    SpanKind::BatchRun,
    SpanKind::Node,
    SpanKind::Prep,
    SpanKind::Exec,
    SpanKind::Item,
    SpanKind::Attempt,
    SpanKind::Wait,
    SpanKind::Fallback,
    SpanKind::Post,
    SpanKind::Generation,
    SpanKind::Event,
    SpanKind::Resume,
];

/// The byte of a kind: its index in [`KINDS`] (a match, so a new kind cannot be forgotten).
fn kind_byte(k: SpanKind) -> u8 {
    match k {
        SpanKind::Flow => 0,
        SpanKind::BatchRun => 1,
        SpanKind::Node => 2,
        SpanKind::Prep => 3,
        SpanKind::Exec => 4,
        SpanKind::Item => 5,
        SpanKind::Attempt => 6,
        SpanKind::Wait => 7,
        SpanKind::Fallback => 8,
        SpanKind::Post => 9,
        SpanKind::Generation => 10,
        SpanKind::Event => 11,
        SpanKind::Resume => 12,
    }
}

/// The encoder's tables (FxHash): the keys are short strings' hashes and span ids, hashed
/// once per record; SipHash's defence against chosen keys buys nothing here.
type FxMap<K, V> = rustc_hash::FxHashMap<K, V>;

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Encodes records; keep one and reuse it (its tables keep their memory, so encoding
/// allocates nothing once they have grown).
#[derive(Default)]
pub(crate) struct Encoder {
    strings: Strings,
    spans: FxMap<u64, u32>,
}

/// The record's string table as the encoder keeps it: where each indexed string's bytes are
/// in the output (no copies), and a direct-mapped cache from a string's hash to the index of
/// the last string in its slot (a cache, not a map: a string whose slot another took is
/// written anew and indexed again, which the format allows; a lookup is a load and a compare,
/// where a hash map's probe cost a tenth of the encoding).
#[derive(Default)]
struct Strings {
    /// By the hash's top bits: the record (`generation`) that filled the slot, and the index.
    slots: Vec<(u32, u32)>,
    generation: u32,
    at: Vec<(usize, usize)>,
}

/// Slots of [`Strings`]: a record holds a few dozen distinct short strings.
const STRING_SLOTS_BITS: u32 = 10;

impl Strings {
    /// Empties the table for a new record (the slots of the last one go stale at once).
    fn begin(&mut self) {
        self.at.clear();
        if self.slots.is_empty() {
            self.slots = vec![(0, 0); 1 << STRING_SLOTS_BITS];
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.slots.fill((0, 0));
            self.generation = 1;
        }
    }

    fn slot(h: u64) -> usize {
        (h >> (64 - STRING_SLOTS_BITS)) as usize
    }

    fn get(&self, h: u64) -> Option<u32> {
        match self.slots.get(Self::slot(h)) {
            Some(&(g, i)) if g == self.generation => Some(i),
            _ => None,
        }
    }

    fn set(&mut self, h: u64, i: u32) {
        let g = self.generation;
        if let Some(slot) = self.slots.get_mut(Self::slot(h)) {
            *slot = (g, i);
        }
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

struct Enc<'e> {
    out: &'e mut Vec<u8>,
    strings: &'e mut Strings,
}

impl Encoder {
    /// Appends `t`'s payload (version byte first) to `out`.
    pub(crate) fn encode(&mut self, t: &TraceRecord, out: &mut Vec<u8>) {
        self.strings.begin();
        self.spans.clear();
        for (i, s) in t.spans.iter().enumerate() {
            self.spans.entry(s.span_id.0).or_insert(i as u32);
        }
        let spans = &self.spans;
        let mut e = Enc { out, strings: &mut self.strings };
        e.out.push(VERSION);
        e.out.extend_from_slice(&t.trace_id.0.to_le_bytes());
        e.str(&t.name);
        let flags = u8::from(t.session_id.is_some())
            | u8::from(t.user_id.is_some()) << 1
            | u8::from(t.release.is_some()) << 2
            | u8::from(t.version.is_some()) << 3
            | u8::from(t.action.is_some()) << 4
            | u8::from(t.part.is_some()) << 5;
        e.out.push(flags);
        e.opt_str(t.session_id.as_deref());
        e.opt_str(t.user_id.as_deref());
        e.uint(t.tags.len() as u64);
        for tag in &t.tags {
            e.str(tag);
        }
        e.opt_str(t.release.as_deref());
        e.opt_str(t.version.as_deref());
        e.map(&t.metadata, 0);
        e.uint(t.start_unix_nanos);
        e.uint(zigzag(t.end_unix_nanos.wrapping_sub(t.start_unix_nanos) as i64));
        e.value(&t.input, 0);
        e.value(&t.output, 0);
        e.status(&t.status);
        e.opt_str(t.action.as_deref());
        e.uint(t.spans_dropped);
        if let Some(p) = t.part {
            e.uint(p as u64);
        }
        e.uint(t.parts as u64);
        e.uint(t.spans.len() as u64);
        for s in &t.spans {
            let parent_index = s.parent_id.and_then(|p| spans.get(&p.0));
            let flags = u8::from(parent_index.is_some())
                | u8::from(s.parent_id.is_some() && parent_index.is_none()) << 1
                | u8::from(s.input.is_some()) << 2
                | u8::from(s.output.is_some()) << 3
                | u8::from(!s.attributes.is_empty()) << 4
                | u8::from(s.generation.is_some()) << 5;
            e.out.extend_from_slice(&s.span_id.0.to_le_bytes());
            e.out.push(flags);
            e.out.push(kind_byte(s.kind));
            e.str(&s.name);
            e.uint(zigzag(s.start_unix_nanos.wrapping_sub(t.start_unix_nanos) as i64));
            e.uint(zigzag(s.end_unix_nanos.wrapping_sub(s.start_unix_nanos) as i64));
            e.status(&s.status);
            match (parent_index, s.parent_id) {
                (Some(i), _) => e.uint(*i as u64),
                (None, Some(p)) => e.out.extend_from_slice(&p.0.to_le_bytes()),
                (None, None) => {}
            }
            if let Some(v) = &s.input {
                e.value(v, 0);
            }
            if let Some(v) = &s.output {
                e.value(v, 0);
            }
            if !s.attributes.is_empty() {
                e.map(&s.attributes, 0);
            }
            if let Some(g) = &s.generation {
                e.generation(g);
            }
        }
    }
}

impl Enc<'_> {
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    fn str(&mut self, s: &str) {
        if s.len() <= MAX_INTERNED {
            let mut h = rustc_hash::FxHasher::default();
            h.write_u64(s.len() as u64);
            h.write(s.as_bytes());
            let h = h.finish();
            if let Some(i) = self.strings.get(h) {
                let (pos, len) = self.strings.at[i as usize];
                if self.out.get(pos..pos + len) == Some(s.as_bytes()) {
                    self.uint((i as u64) << 1 | 1);
                    return;
                }
            }
            // New (or its hash's slot held another string: both keep their indexes, and
            // the slot now names this one).
            self.uint((s.len() as u64) << 1);
            let i = self.strings.at.len() as u32;
            self.strings.at.push((self.out.len(), s.len()));
            self.strings.set(h, i);
        } else {
            self.uint((s.len() as u64) << 1);
        }
        self.out.extend_from_slice(s.as_bytes());
    }

    fn opt_str(&mut self, s: Option<&str>) {
        if let Some(s) = s {
            self.str(s);
        }
    }

    fn status(&mut self, s: &SpanStatus) {
        match s {
            SpanStatus::Ok => self.out.push(0),
            SpanStatus::Error { kind, message, chain, location } => {
                self.out.push(1);
                self.str(kind);
                self.str(message);
                self.uint(chain.len() as u64);
                for c in chain {
                    self.str(c);
                }
                self.out.push(u8::from(location.is_some()));
                self.opt_str(location.as_deref());
            }
            SpanStatus::Cancelled { reason } => {
                self.out.push(2);
                self.str(reason);
            }
        }
    }

    fn map(&mut self, m: &Map<String, Value>, depth: usize) {
        self.uint(m.len() as u64);
        for (k, v) in m {
            self.str(k);
            self.value(v, depth + 1);
        }
    }

    fn value(&mut self, v: &Value, depth: usize) {
        if depth >= MAX_DEPTH && matches!(v, Value::Array(_) | Value::Object(_)) {
            self.out.push(6);
            let marker = crate::trace::model::depth_marker(MAX_DEPTH);
            self.str(marker.as_str().unwrap_or_default());
            return;
        }
        match v {
            Value::Null => self.out.push(0),
            Value::Bool(b) => self.out.push(1 + u8::from(*b)),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    if u < 240 {
                        self.out.push(16 + u as u8);
                    } else {
                        self.out.push(3);
                        self.uint(u);
                    }
                } else if let Some(i) = n.as_i64() {
                    self.out.push(4);
                    self.uint(!(i as u64));
                } else {
                    self.out.push(5);
                    self.out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
                }
            }
            Value::String(s) => {
                self.out.push(6);
                self.str(s);
            }
            Value::Array(a) => {
                self.out.push(7);
                self.uint(a.len() as u64);
                for x in a {
                    self.value(x, depth + 1);
                }
            }
            Value::Object(m) => {
                self.out.push(8);
                self.map(m, depth);
            }
        }
    }

    fn generation(&mut self, g: &GenerationRecord) {
        let flags = u8::from(g.model.is_some())
            | u8::from(g.completion_start_unix_nanos.is_some()) << 1
            | u8::from(g.prompt_name.is_some()) << 2
            | u8::from(g.prompt_version.is_some()) << 3;
        self.out.push(flags);
        self.opt_str(g.model.as_deref());
        self.map(&g.model_parameters, 0);
        self.uint(g.usage.len() as u64);
        for (k, v) in &g.usage {
            self.str(k);
            self.uint(*v);
        }
        self.uint(g.cost.len() as u64);
        for (k, v) in &g.cost {
            self.str(k);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(c) = g.completion_start_unix_nanos {
            self.uint(c);
        }
        self.opt_str(g.prompt_name.as_deref());
        if let Some(v) = g.prompt_version {
            self.uint(v as u64);
        }
    }
}

/// A string of the record's table: where it is in the payload, and its shared copy once a
/// span name needed one.
struct Entry<'a> {
    text: &'a str,
    shared: Option<Arc<str>>,
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    table: Vec<Entry<'a>>,
}

/// Decodes a payload written by [`Encoder::encode`] (version byte first).
pub(crate) fn decode(payload: &[u8]) -> Result<TraceRecord, DecodeError> {
    let mut t = blank();
    decode_into(payload, &mut t)?;
    Ok(t)
}

/// A record with nothing in it, for [`decode_into`] to fill.
fn blank() -> TraceRecord {
    TraceRecord {
        trace_id: TraceId(0),
        name: String::new(),
        session_id: None,
        user_id: None,
        tags: Vec::new(),
        release: None,
        version: None,
        metadata: Map::new(),
        start_unix_nanos: 0,
        end_unix_nanos: 0,
        input: Value::Null,
        output: Value::Null,
        status: SpanStatus::Ok,
        action: None,
        spans_dropped: 0,
        spans: Vec::new(),
        part: None,
        parts: 0,
    }
}

/// A span with nothing in it, for [`Dec::span_into`] to fill.
fn blank_span() -> SpanRecord {
    SpanRecord {
        span_id: SpanId(0),
        parent_id: None,
        kind: SpanKind::Flow,
        name: empty_name(),
        start_unix_nanos: 0,
        end_unix_nanos: 0,
        status: SpanStatus::Ok,
        input: None,
        output: None,
        attributes: Map::new(),
        generation: None,
    }
}

/// One empty name per thread, so that a blank span allocates nothing for it.
fn empty_name() -> Arc<str> {
    thread_local! {
        static EMPTY: Arc<str> = Arc::from("");
    }
    EMPTY.with(Arc::clone)
}

/// Decodes a payload into `t`, reusing the memory `t` holds (a record read back earlier and
/// delivered): the spool's records of one exporter are much alike, so most maps, strings and
/// arrays are overwritten in place instead of freed and allocated again. The result is the
/// record [`decode`] returns, whatever `t` held. On an error `t` holds part of the record:
/// throw it away.
pub(crate) fn decode_into(payload: &[u8], t: &mut TraceRecord) -> Result<(), DecodeError> {
    let mut d = Dec { buf: payload, pos: 0, table: Vec::new() };
    match d.byte()? {
        VERSION => {}
        v => return Err(DecodeError::Version(v)),
    }
    t.trace_id = TraceId(u128::from_le_bytes(d.fixed::<16>()?));
    d.string_into(&mut t.name)?;
    let flags = d.byte()?;
    if flags >> 6 != 0 {
        return Err(d.bad("unknown trace flags"));
    }
    t.session_id = d.opt_string(flags & 1 != 0)?;
    t.user_id = d.opt_string(flags & 2 != 0)?;
    let n = d.count()?;
    t.tags.clear();
    t.tags.reserve(n);
    for _ in 0..n {
        t.tags.push(d.string()?);
    }
    t.release = d.opt_string(flags & 4 != 0)?;
    t.version = d.opt_string(flags & 8 != 0)?;
    d.map_into(&mut t.metadata, 0)?;
    let start = d.uint()?;
    t.start_unix_nanos = start;
    t.end_unix_nanos = start.wrapping_add(unzigzag(d.uint()?) as u64);
    d.value_into(&mut t.input, 0)?;
    d.value_into(&mut t.output, 0)?;
    t.status = d.status()?;
    t.action = d.opt_string(flags & 16 != 0)?;
    t.spans_dropped = d.uint()?;
    t.part = if flags & 32 != 0 { Some(d.u32()?) } else { None };
    t.parts = d.u32()?;
    let n = d.count()?;
    let spans = &mut t.spans;
    spans.truncate(n);
    spans.reserve(n - spans.len());
    // Parents named by their index: resolved once every span's id is known.
    let mut parents: Vec<(usize, usize)> = Vec::new();
    for i in 0..n {
        if i == spans.len() {
            spans.push(blank_span());
        }
        d.span_into(&mut spans[i], i, n, start, &mut parents)?;
    }
    for (child, parent) in parents {
        let id = spans[parent].span_id;
        spans[child].parent_id = Some(id);
    }
    if d.pos != d.buf.len() {
        return Err(d.bad("bytes after the record"));
    }
    Ok(())
}

impl<'a> Dec<'a> {
    fn bad(&self, what: &'static str) -> DecodeError {
        DecodeError::Malformed { at: self.pos, what }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(DecodeError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn uint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                break;
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed { at: start, what: "varint longer than 64 bits" })
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let at = self.pos;
        u32::try_from(self.uint()?).map_err(|_| DecodeError::Malformed { at, what: "number out of range" })
    }

    /// A count of items that take at least a byte each: never more than the bytes left, so
    /// a corrupt count cannot make a huge allocation.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.uint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(DecodeError::Malformed { at, what: "count beyond the record's end" });
        }
        Ok(n as usize)
    }

    /// The next string, as the index of its table entry or as text not in the table.
    fn text(&mut self) -> Result<Result<usize, &'a str>, DecodeError> {
        let at = self.pos;
        let v = self.uint()?;
        if v & 1 == 1 {
            let i = (v >> 1) as usize;
            if i >= self.table.len() {
                return Err(DecodeError::Malformed { at, what: "string reference out of range" });
            }
            return Ok(Ok(i));
        }
        let len = usize::try_from(v >> 1).map_err(|_| DecodeError::Truncated(at))?;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed { at, what: "invalid UTF-8" })?;
        if len <= MAX_INTERNED {
            self.table.push(Entry { text, shared: None });
            return Ok(Ok(self.table.len() - 1));
        }
        Ok(Err(text))
    }

    /// The next string, borrowed from the payload.
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        Ok(match self.text()? {
            Ok(i) => self.table[i].text,
            Err(s) => s,
        })
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    /// The next string into `slot`, in the memory it holds.
    fn string_into(&mut self, slot: &mut String) -> Result<(), DecodeError> {
        let s = self.str()?;
        slot.clear();
        slot.push_str(s);
        Ok(())
    }

    /// The next string as a shared name into `slot`: kept when `slot` already says it,
    /// otherwise the table's shared copy (made once per record).
    fn shared_into(&mut self, slot: &mut Arc<str>) -> Result<(), DecodeError> {
        let t = self.text()?;
        let text = match t {
            Ok(i) => self.table[i].text,
            Err(s) => s,
        };
        if **slot == *text {
            return Ok(());
        }
        *slot = match t {
            Ok(i) => {
                let e = &mut self.table[i];
                Arc::clone(e.shared.get_or_insert_with(|| Arc::from(e.text)))
            }
            Err(s) => Arc::from(s),
        };
        Ok(())
    }

    fn opt_string(&mut self, present: bool) -> Result<Option<String>, DecodeError> {
        if present {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }

    fn status(&mut self) -> Result<SpanStatus, DecodeError> {
        match self.byte()? {
            0 => Ok(SpanStatus::Ok),
            1 => {
                let kind = self.string()?;
                let message = self.string()?;
                let n = self.count()?;
                let mut chain = Vec::with_capacity(n);
                for _ in 0..n {
                    chain.push(self.string()?);
                }
                let location = match self.byte()? {
                    0 => None,
                    1 => Some(self.string()?),
                    _ => return Err(self.bad("bad location flag")),
                };
                Ok(SpanStatus::Error { kind, message, chain, location })
            }
            2 => Ok(SpanStatus::Cancelled { reason: self.string()? }),
            _ => Err(self.bad("unknown status")),
        }
    }

    fn map(&mut self, depth: usize) -> Result<Map<String, Value>, DecodeError> {
        let mut m = Map::new();
        self.map_into(&mut m, depth)?;
        Ok(m)
    }

    /// The next map into `m`: entries whose keys come in the order `m` holds them are
    /// overwritten in place (their keys and memory kept); past the first difference, the rest
    /// is decoded afresh.
    fn map_into(&mut self, m: &mut Map<String, Value>, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.bad("values nested too deep"));
        }
        let n = self.count()?;
        if m.len() != n {
            m.clear();
        }
        let mut done = 0;
        let mut differs = None;
        {
            let mut old = m.iter_mut();
            while done < n {
                let key = self.str()?;
                match old.next() {
                    Some((k, v)) if k == key => self.value_into(v, depth + 1)?,
                    _ => {
                        differs = Some(key);
                        break;
                    }
                }
                done += 1;
            }
        }
        let Some(key) = differs else { return Ok(()) };
        // Keys differ from here: keep the entries overwritten so far, decode the rest.
        if done < m.len() {
            let kept: Map<String, Value> = std::mem::take(m).into_iter().take(done).collect();
            *m = kept;
        }
        let mut key = Some(key.to_owned());
        for _ in done..n {
            let k = match key.take() {
                Some(k) => k,
                None => self.string()?,
            };
            let mut v = Value::Null;
            self.value_into(&mut v, depth + 1)?;
            m.insert(k, v);
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let mut v = Value::Null;
        self.value_into(&mut v, depth)?;
        Ok(v)
    }

    /// The next value into `slot`, reusing its memory where it is of the same kind.
    fn value_into(&mut self, slot: &mut Value, depth: usize) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.byte()? {
            0 => *slot = Value::Null,
            1 => *slot = Value::Bool(false),
            2 => *slot = Value::Bool(true),
            3 => *slot = Value::Number(self.uint()?.into()),
            4 => *slot = Value::Number((!self.uint()? as i64).into()),
            5 => {
                let f = f64::from_le_bytes(self.fixed::<8>()?);
                *slot = Value::Number(
                    Number::from_f64(f).ok_or(DecodeError::Malformed { at, what: "a float that is not finite" })?,
                );
            }
            6 => {
                let s = self.str()?;
                match slot {
                    Value::String(old) => {
                        old.clear();
                        old.push_str(s);
                    }
                    _ => *slot = Value::String(s.to_owned()),
                }
            }
            7 => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad("values nested too deep"));
                }
                let n = self.count()?;
                match slot {
                    Value::Array(a) => {
                        a.truncate(n);
                        a.reserve(n - a.len());
                        for i in 0..n {
                            if i == a.len() {
                                a.push(Value::Null);
                            }
                            self.value_into(&mut a[i], depth + 1)?;
                        }
                    }
                    _ => {
                        let mut a = Vec::with_capacity(n);
                        for _ in 0..n {
                            a.push(self.value(depth + 1)?);
                        }
                        *slot = Value::Array(a);
                    }
                }
            }
            8 => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad("values nested too deep"));
                }
                match slot {
                    Value::Object(m) => self.map_into(m, depth)?,
                    _ => *slot = Value::Object(self.map(depth)?),
                }
            }
            t @ 16.. => *slot = Value::Number(((t - 16) as u64).into()),
            _ => return Err(DecodeError::Malformed { at, what: "unknown value tag" }),
        }
        Ok(())
    }

    /// An optional value into `slot` (`None` unless `present`).
    fn opt_value_into(&mut self, slot: &mut Option<Value>, present: bool) -> Result<(), DecodeError> {
        if !present {
            *slot = None;
            return Ok(());
        }
        self.value_into(slot.get_or_insert(Value::Null), 0)
    }

    /// Span `i` of `n` into `s`; a parent named by its index goes to `parents`.
    fn span_into(
        &mut self,
        s: &mut SpanRecord,
        i: usize,
        n: usize,
        start: u64,
        parents: &mut Vec<(usize, usize)>,
    ) -> Result<(), DecodeError> {
        s.span_id = SpanId(u64::from_le_bytes(self.fixed::<8>()?));
        let flags = self.byte()?;
        if flags >> 6 != 0 || flags & 3 == 3 {
            return Err(self.bad("unknown span flags"));
        }
        s.kind = *KINDS.get(self.byte()? as usize).ok_or_else(|| self.bad("unknown span kind"))?;
        self.shared_into(&mut s.name)?;
        s.start_unix_nanos = start.wrapping_add(unzigzag(self.uint()?) as u64);
        s.end_unix_nanos = s.start_unix_nanos.wrapping_add(unzigzag(self.uint()?) as u64);
        s.status = self.status()?;
        s.parent_id = if flags & 1 != 0 {
            let at = self.pos;
            let p = self.uint()?;
            if p >= n as u64 {
                return Err(DecodeError::Malformed { at, what: "parent index out of range" });
            }
            parents.push((i, p as usize));
            None
        } else if flags & 2 != 0 {
            Some(SpanId(u64::from_le_bytes(self.fixed::<8>()?)))
        } else {
            None
        };
        self.opt_value_into(&mut s.input, flags & 4 != 0)?;
        self.opt_value_into(&mut s.output, flags & 8 != 0)?;
        if flags & 16 != 0 {
            self.map_into(&mut s.attributes, 0)?;
        } else {
            s.attributes.clear();
        }
        s.generation = if flags & 32 != 0 { Some(Box::new(self.generation()?)) } else { None };
        Ok(())
    }

    fn generation(&mut self) -> Result<GenerationRecord, DecodeError> {
        let flags = self.byte()?;
        if flags >> 4 != 0 {
            return Err(self.bad("unknown generation flags"));
        }
        let mut g = GenerationRecord { model: self.opt_string(flags & 1 != 0)?, ..Default::default() };
        g.model_parameters = self.map(0)?;
        let n = self.count()?;
        let mut usage = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?;
            usage.insert(k, self.uint()?);
        }
        g.usage = usage;
        let n = self.count()?;
        let mut cost = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?;
            cost.insert(k, f64::from_le_bytes(self.fixed::<8>()?));
        }
        g.cost = cost;
        if flags & 2 != 0 {
            g.completion_start_unix_nanos = Some(self.uint()?);
        }
        g.prompt_name = self.opt_string(flags & 4 != 0)?;
        if flags & 8 != 0 {
            g.prompt_version = Some(self.u32()?);
        }
        Ok(g)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    fn encode(t: &TraceRecord) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::default().encode(t, &mut out);
        out
    }

    /// Records compare by their JSON (the types have no `PartialEq`): every field is in it.
    fn same(a: &TraceRecord, b: &TraceRecord) {
        assert_eq!(serde_json::to_value(a).unwrap(), serde_json::to_value(b).unwrap());
        // JSON leaves out `parent_id: None`, `part: None` and empty fields alike; check those.
        assert_eq!(a.part, b.part);
        assert_eq!(a.parts, b.parts);
        for (x, y) in a.spans.iter().zip(&b.spans) {
            assert_eq!(x.parent_id, y.parent_id);
            assert_eq!(x.input.is_some(), y.input.is_some());
            assert_eq!(x.output.is_some(), y.output.is_some());
            assert_eq!(x.generation, y.generation);
        }
    }

    fn deep(levels: usize) -> Value {
        let mut v = json!("bottom");
        for i in 0..levels {
            v = if i % 2 == 0 { json!([v]) } else { json!({ "k": v }) };
        }
        v
    }

    fn rich() -> TraceRecord {
        let prep = json!({ "span_id": "0000000000000001", "parent_id": "0000000000000003", "kind": "prep",
            "name": "Step.prep", "start_unix_nanos": 1_796_126_801_184_168_397u64,
            "end_unix_nanos": 1_796_126_801_184_171_526u64, "status": "ok", "input": null, "output": 0 });
        let generation = json!({ "model": "gpt-4o-mini", "model_parameters": { "temperature": 0.2 },
            "usage": { "input": 10, "output": 20, "total": 30 }, "cost": { "total": 0.00125 },
            "completion_start_unix_nanos": 9, "prompt_name": "p", "prompt_version": 4 });
        let llm = json!({ "span_id": "0000000000000002", "parent_id": "ffffffffffffffff", "kind": "generation",
            "name": "Step.prep", "start_unix_nanos": 5, "end_unix_nanos": 2, "status": "cancelled",
            "reason": "timeout", "attributes": { "node_type": "Step", "changed_keys": ["x", "y"] },
            "generation": generation });
        let root = json!({ "span_id": "0000000000000003", "kind": "flow", "name": "ChainFlow",
            "start_unix_nanos": 0, "end_unix_nanos": u64::MAX,
            "status": "error", "error_kind": "node_error", "message": "m" });
        let input = json!({ "x": 0, "big": u64::MAX, "neg": i64::MIN, "f": 1.0e-300,
            "pi": std::f64::consts::PI, "long": "x".repeat(500), "empty": "", "arr": [] });
        let metadata = json!({ "env": "prod", "n": 3, "nested": { "deep": [1, 2.5, -3, null, true, false] } });
        let mut t = json!({
            "trace_id": "fedcba9876543210fedcba9876543210", "name": "Flüße ✓ 🚀",
            "session_id": "s-1", "user_id": "u-2", "tags": ["a", "b", "a"], "release": "r1", "version": "v9",
            "start_unix_nanos": 1_796_126_801_184_166_891u64, "end_unix_nanos": 1_796_126_801_184_242_971u64,
            "status": "error", "error_kind": "panic", "message": "boom \u{0}\n\"",
            "chain": ["outer", "inner"], "location": "src/lib.rs:1:2",
            "action": "default", "spans_dropped": 7, "part": 3, "parts": 2
        });
        t["metadata"] = metadata;
        t["input"] = input;
        t["output"] = deep(60);
        t["spans"] = json!([prep, llm, root]);
        serde_json::from_value(t).expect("a trace record")
    }

    #[test]
    fn every_field_round_trips() {
        let t = rich();
        let bytes = encode(&t);
        assert_eq!(bytes[0], VERSION);
        let back = decode(&bytes).expect("decodes");
        same(&t, &back);
        assert_eq!(back.spans[0].input, Some(Value::Null), "a recorded null is kept apart from none");
        assert_eq!(back.spans[2].input, None);
        assert!(Arc::ptr_eq(&back.spans[0].name, &back.spans[1].name), "repeated names share one Arc");
        // Encoding is deterministic and the encoder is reusable.
        let mut enc = Encoder::default();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        enc.encode(&t, &mut a);
        enc.encode(&t, &mut b);
        assert_eq!(a, b);
        assert_eq!(a, bytes);
    }

    /// Records of other shapes than `t`: more and fewer spans, other keys, other value kinds.
    fn others(t: &TraceRecord) -> Vec<TraceRecord> {
        let mut out = vec![chain(), rich(), TraceRecord { spans: Vec::new(), ..chain() }];
        let mut renamed = chain();
        for (i, s) in renamed.spans.iter_mut().enumerate() {
            s.attributes.insert(format!("k{i}"), json!({ "n": [i, "x", null] }));
            s.input = if i % 3 == 0 { None } else { Some(json!(["a", { "b": i }])) };
            s.output = Some(json!(format!("out {i}")));
            s.name = Arc::from(format!("span {i}"));
        }
        renamed.input = json!([1, 2, 3, 4]);
        out.push(renamed);
        let mut longer = t.clone();
        longer.spans.extend(chain().spans);
        out.push(longer);
        let mut shorter = t.clone();
        shorter.spans.truncate(t.spans.len() / 2);
        out.push(shorter);
        out.push(t.clone());
        out
    }

    #[test]
    fn decoding_into_a_record_of_any_shape_gives_what_decoding_gives() {
        let mut deep_one = rich();
        deep_one.input = deep(MAX_DEPTH + 10);
        for t in [chain(), rich(), deep_one, others(&chain()).swap_remove(3)] {
            let bytes = encode(&t);
            let want = decode(&bytes).expect("decodes");
            for mut old in others(&t) {
                decode_into(&bytes, &mut old).expect("decodes");
                same(&want, &old);
                assert_eq!(old.spans.len(), want.spans.len());
                for (x, y) in want.spans.iter().zip(&old.spans) {
                    assert_eq!(x.name, y.name);
                    assert_eq!(x.attributes, y.attributes);
                }
            }
        }
    }

    #[test]
    fn a_record_decoded_into_fails_as_decoding_does() {
        let bytes = encode(&chain());
        for n in (0..bytes.len()).step_by(7) {
            let mut old = chain();
            assert!(decode_into(&bytes[..n], &mut old).is_err(), "a record cut at {n} bytes decoded");
        }
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(decode_into(&b, &mut rich()), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn every_span_kind_has_its_own_byte() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(kind_byte(*k) as usize, i, "{k:?}");
        }
    }

    #[test]
    fn a_whole_trace_with_no_options_round_trips() {
        let t: TraceRecord = serde_json::from_value(json!({
            "trace_id": "00000000000000000000000000000000", "name": "", "start_unix_nanos": 0, "end_unix_nanos": 0,
            "input": null, "output": null, "status": "ok", "spans": []
        }))
        .unwrap();
        let back = decode(&encode(&t)).unwrap();
        same(&t, &back);
        assert_eq!(back.part, None);
    }

    #[test]
    fn numbers_keep_their_kind_and_value() {
        for v in [
            json!(0),
            json!(239),
            json!(240),
            json!(u64::MAX),
            json!(-1),
            json!(i64::MIN),
            json!(0.5),
            json!(-0.0),
            json!(1e308),
        ] {
            let mut t = rich();
            t.input = v.clone();
            let back = decode(&encode(&t)).unwrap();
            assert_eq!(back.input, v);
            assert_eq!(back.input.is_f64(), v.is_f64(), "{v}");
            assert_eq!(back.input.is_u64(), v.is_u64(), "{v}");
        }
    }

    #[test]
    fn values_deeper_than_the_limit_are_written_as_a_marker_and_read_back() {
        let mut t = rich();
        t.input = deep(MAX_DEPTH + 10);
        let back = decode(&encode(&t)).expect("what the encoder writes always reads back");
        let mut v = &back.input;
        let mut levels = 0;
        while let Some(next) = v.as_array().and_then(|a| a.first()).or_else(|| v.get("k")) {
            v = next;
            levels += 1;
        }
        assert_eq!(levels, MAX_DEPTH);
        assert!(v.as_str().is_some_and(|s| s.contains("truncated")), "{v}");
    }

    #[test]
    fn malformed_bytes_are_an_error_never_a_panic() {
        let bytes = encode(&rich());
        // Every truncation.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "a record cut at {n} of {} bytes decoded", bytes.len());
        }
        // Every single-byte change, with a few values each: an error or some record, no panic.
        let mut decoded = 0;
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xff, 0x7f] {
                let mut b = bytes.clone();
                b[i] ^= x;
                decoded += usize::from(decode(&b).is_ok());
            }
        }
        // Bytes after the record, an unknown version, a huge count, deep nesting.
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(decode(&b), Err(DecodeError::Malformed { .. })));
        assert!(matches!(decode(&[9]), Err(DecodeError::Version(9))));
        assert!(decode(b"{\"trace_id\":1}").is_err());
        let mut b = encode(&rich());
        let name_at = 1 + 16;
        b.truncate(name_at);
        b.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]); // a name of 2^34 bytes
        assert!(matches!(decode(&b), Err(DecodeError::Truncated(_))));
        let mut nest = vec![VERSION];
        nest.extend_from_slice(&[0; 16]);
        nest.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // name "", flags, tags, metadata, start, end
        nest.extend(std::iter::repeat_n(7u8, 100_000).flat_map(|t| [t, 1])); // [[[[…
        assert!(matches!(decode(&nest), Err(DecodeError::Malformed { what: "values nested too deep", .. })));
        eprintln!("{decoded} of {} flipped records still decoded (as other records)", bytes.len() * 4);
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = encode(&rich());
        for round in 0..20_000 {
            let len = (next() % 200) as usize;
            let mut b: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..=(next() % 4) {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                v
            };
            if let Some(first) = b.first_mut() {
                if round % 3 == 0 {
                    *first = VERSION;
                }
            }
            let _ = decode(&b);
        }
    }

    /// A trace like the bench's chain of ten nodes: 50 spans and the trace.
    pub(crate) fn chain() -> TraceRecord {
        let t0 = 1_796_126_801_184_166_891u64;
        let mut spans = Vec::new();
        let id = |n: u64| format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for i in 0..10u64 {
            let at = t0 + i * 7_000;
            let node = 100 + i;
            let span = |n: u64, parent: u64, kind: &str, name: &str, d: u64| {
                json!({ "span_id": id(n), "parent_id": id(parent), "kind": kind, "name": name,
                        "start_unix_nanos": at + d, "end_unix_nanos": at + d + 1_500, "status": "ok" })
            };
            let mut prep = span(node * 10 + 1, node, "prep", "Step.prep", 0);
            prep["input"] = json!({ "x": i });
            prep["output"] = json!(i);
            let mut attempt = span(node * 10 + 2, node * 10 + 3, "attempt", "attempt 0", 1_000);
            attempt["attributes"] = json!({ "attempt": 0 });
            let mut exec = span(node * 10 + 3, node, "exec", "Step.exec", 900);
            exec["input"] = json!(i);
            exec["output"] = json!(i + 1);
            exec["attributes"] = json!({ "max_retries": 1 });
            let mut post = span(node * 10 + 4, node, "post", "Step.post", 2_000);
            post["input"] = json!({ "exec": i + 1, "prep": i });
            post["output"] = json!({ "action": "default", "changed": { "x": i + 1 } });
            post["attributes"] = json!({ "changed_keys": ["x"] });
            let mut n = span(node, 1, "node", "Step", 0);
            n["input"] = json!({ "x": i });
            n["output"] = json!({ "action": "default", "changed": { "x": i + 1 } });
            n["attributes"] = json!({ "node_type": "Step" });
            spans.extend([prep, attempt, exec, post, n]);
        }
        let mut root = json!({ "span_id": id(1), "kind": "flow", "name": "ChainFlow",
            "start_unix_nanos": t0, "end_unix_nanos": t0 + 76_000, "status": "ok",
            "input": { "x": 0 }, "output": { "x": 10 } });
        root["attributes"] = json!({ "node_type": "Flow" });
        spans.push(root);
        let mut t = json!({ "trace_id": "06a602188398edde47951b574f727b0f", "name": "ChainFlow",
            "start_unix_nanos": t0, "end_unix_nanos": t0 + 76_080, "input": { "x": 0 }, "output": { "x": 10 },
            "status": "ok", "action": "default" });
        t["spans"] = Value::Array(spans);
        serde_json::from_value(t).expect("a trace record")
    }

    #[test]
    fn a_chain_trace_round_trips_and_is_several_times_smaller_than_json() {
        let t = chain();
        let bin = encode(&t);
        same(&t, &decode(&bin).unwrap());
        let json = serde_json::to_vec(&t).unwrap().len();
        let per_span = |b: usize| b as f64 / t.weight() as f64;
        eprintln!(
            "chain trace: {} B binary ({:.1} B/span), {json} B JSON ({:.1} B/span)",
            bin.len(),
            per_span(bin.len()),
            per_span(json)
        );
        assert!(bin.len() * 3 < json, "{} bytes binary, {json} bytes JSON", bin.len());
    }
}
