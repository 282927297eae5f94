//! The per-run span recorder: the only tracing code on a run's path.
//!
//! A span costs an id from a counter, two clock reads and, when inputs or outputs are recorded,
//! one serialisation to JSON ([`capture`], depth-capped) of each phase result (the only values
//! a run cannot keep by reference). Store entries, post's `{prep, exec}` input and the action
//! are kept as they are ([`Io`]) and made JSON on the tracer's thread: every JSON object built
//! on the run's thread was an allocation freed on another, the allocator's slow path. Finished
//! spans go into the run's buffer, which is cast to the tracer actor in chunks, never one
//! message per span (a ractor cast costs 0.3–0.5 µs here, against a budget of about 1 µs per
//! node for all of tracing).

// Span records travel as boxes on purpose: the boxes are recycled between the run and the
// tracer thread (see `BOX_POOL`), so `Vec<Box<RawSpan>>` is the design, not an accident.
#![allow(clippy::vec_box, clippy::box_collection)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use super::model::{depth_marker, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId, MAX_DEPTH};
use super::TraceSink;
use crate::error::Error;
use crate::flow::{Action, StoreSnapshot};

/// Which parts of a run are recorded (the `FLOWTRACE_TRACE_*` switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Switches {
    pub(crate) inputs: bool,
    pub(crate) outputs: bool,
    pub(crate) prep: bool,
    pub(crate) exec: bool,
    pub(crate) post: bool,
    pub(crate) errors: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches { inputs: true, outputs: true, prep: true, exec: true, post: true, errors: true }
    }
}

/// Spans are sent to the tracer in chunks of this many, and at the end of the run.
const CHUNK: usize = 256;

/// Span buffers travel to the tracer thread and come back empty, so a run does not allocate
/// (and the tracer thread does not free) a buffer per run: glibc's cross-thread frees of
/// large blocks were the biggest single cost of tracing before this pool.
/// A buffer of finished spans, as it travels to the tracer.
pub(crate) type SpanBuf = Vec<Box<RawSpan>>;

static POOL: Mutex<Vec<SpanBuf>> = Mutex::new(Vec::new());
const POOL_MAX: usize = 1024;

fn pooled_buffer() -> Vec<Box<RawSpan>> {
    POOL.lock().pop().unwrap_or_else(|| Vec::with_capacity(64))
}

/// Returns an emptied buffer to the pool (called by the tracer after converting its spans).
pub(crate) fn recycle(mut buf: Vec<Box<RawSpan>>) {
    buf.clear();
    if buf.capacity() > 0 && buf.capacity() <= 4 * CHUNK {
        let mut pool = POOL.lock();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn seed() -> u64 {
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let addr = &NEXT_ID as *const AtomicU64 as u64;
        splitmix(t ^ (std::process::id() as u64).rotate_left(32) ^ addr)
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A process-unique, non-zero span id (splitmix of a seeded counter: a bijection, so no
/// repeats). Each thread takes counter values in blocks, so concurrent runs do not contend on
/// one atomic for every span.
pub(crate) fn new_span_id() -> SpanId {
    const BLOCK: u64 = 1024;
    thread_local! {
        static IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    loop {
        let n = IDS.with(|c| {
            let (next, end) = c.get();
            if next < end {
                c.set((next + 1, end));
                next
            } else {
                let start = NEXT_ID.fetch_add(BLOCK, Ordering::Relaxed);
                c.set((start + 1, start + BLOCK));
                start
            }
        });
        let id = splitmix(seed().wrapping_add(n));
        if id != 0 {
            return SpanId(id);
        }
    }
}

/// A fresh random-looking trace id.
pub(crate) fn new_trace_id() -> TraceId {
    let hi = new_span_id().0 as u128;
    let lo = splitmix(hi as u64 ^ 0xA5A5_A5A5_A5A5_A5A5) as u128;
    TraceId((hi << 64) | lo)
}

/// Serialises a value for a span; a failure becomes a visible marker, never a failed run.
///
/// Nesting deeper than [`MAX_DEPTH`] levels is replaced by a marker *while* serialising: the
/// serialiser never descends past it, so a value nested 100,000 deep (which
/// `serde_json::to_value` would follow until the thread's stack overflows) costs 64 levels of
/// stack, and the recorded copy is small enough for every reader (serde_json reads 128 levels).
pub(crate) fn capture<T: Serialize + ?Sized>(v: &T) -> Value {
    capture_as(v, std::any::type_name::<T>())
}

/// [`capture`] of a value whose type is erased, named `type_name` in the marker of a value
/// that cannot be serialised.
pub(crate) fn capture_as<T: Serialize + ?Sized>(v: &T, type_name: &str) -> Value {
    v.serialize(Capture { depth: 1 }).unwrap_or_else(|e| Value::String(format!("<unserialisable {type_name}: {e}>")))
}

/// A `serde_json::Value` serialiser that stops at [`MAX_DEPTH`]; `depth` is the nesting
/// level of the value it is given (the top value is level 1).
struct Capture {
    depth: usize,
}

type CaptureResult = Result<Value, serde_json::Error>;

/// A sequence, map or struct being captured; `items: None` once past the depth limit, where
/// its elements are counted but never serialised.
struct Compound {
    depth: usize,
    variant: Option<&'static str>,
    items: Option<Vec<Value>>,
    map: Option<serde_json::Map<String, Value>>,
    key: Option<String>,
    skipped: usize,
}

impl Compound {
    fn new(depth: usize, variant: Option<&'static str>, map: bool) -> Self {
        let deep = depth > MAX_DEPTH;
        Compound {
            depth,
            variant,
            items: (!deep && !map).then(Vec::new),
            map: (!deep && map).then(serde_json::Map::new),
            key: None,
            skipped: 0,
        }
    }

    fn child(&self) -> Capture {
        Capture { depth: self.depth + 1 }
    }

    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), serde_json::Error> {
        match &mut self.items {
            Some(items) => items.push(v.serialize(Capture { depth: self.depth + 1 })?),
            None => self.skipped += 1,
        }
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) -> Result<(), serde_json::Error> {
        let child = self.child();
        match &mut self.map {
            Some(map) => {
                map.insert(k.to_owned(), v.serialize(child)?);
            }
            None => self.skipped += 1,
        }
        Ok(())
    }

    fn finish(self) -> CaptureResult {
        let value = match (self.items, self.map) {
            (Some(items), _) => Value::Array(items),
            (_, Some(map)) => Value::Object(map),
            (None, None) if self.skipped == 0 => {
                if self.variant.is_some() {
                    Value::Object(serde_json::Map::new())
                } else {
                    Value::Array(Vec::new())
                }
            }
            (None, None) => depth_marker(MAX_DEPTH),
        };
        Ok(match self.variant {
            Some(v) => {
                let mut m = serde_json::Map::new();
                m.insert(v.to_owned(), value);
                Value::Object(m)
            }
            None => value,
        })
    }
}

/// A map key as serde_json writes it: strings as they are, numbers and booleans as text.
fn key_string<T: Serialize + ?Sized>(k: &T) -> Result<String, serde_json::Error> {
    match k.serialize(Capture { depth: MAX_DEPTH })? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(serde::ser::Error::custom("key must be a string")),
    }
}

impl serde::Serializer for Capture {
    type Ok = Value;
    type Error = serde_json::Error;
    type SerializeSeq = Compound;
    type SerializeTuple = Compound;
    type SerializeTupleStruct = Compound;
    type SerializeTupleVariant = Compound;
    type SerializeMap = Compound;
    type SerializeStruct = Compound;
    type SerializeStructVariant = Compound;

    fn serialize_bool(self, v: bool) -> CaptureResult {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_i16(self, v: i16) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_i32(self, v: i32) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_i64(self, v: i64) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_i128(self, v: i128) -> CaptureResult {
        serde_json::to_value(v)
    }
    fn serialize_u8(self, v: u8) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_u16(self, v: u16) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_u32(self, v: u32) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_u64(self, v: u64) -> CaptureResult {
        Ok(v.into())
    }
    fn serialize_u128(self, v: u128) -> CaptureResult {
        serde_json::to_value(v)
    }
    fn serialize_f32(self, v: f32) -> CaptureResult {
        Ok(Value::from(v as f64))
    }
    fn serialize_f64(self, v: f64) -> CaptureResult {
        Ok(Value::from(v))
    }
    fn serialize_char(self, v: char) -> CaptureResult {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> CaptureResult {
        Ok(Value::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> CaptureResult {
        Ok(Value::Array(v.iter().map(|&b| b.into()).collect()))
    }
    fn serialize_none(self) -> CaptureResult {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> CaptureResult {
        v.serialize(self)
    }
    fn serialize_unit(self) -> CaptureResult {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> CaptureResult {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> CaptureResult {
        Ok(Value::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, v: &T) -> CaptureResult {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        v: &T,
    ) -> CaptureResult {
        let mut c = Compound::new(self.depth, None, true);
        c.field(variant, v)?;
        c.finish()
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound, serde_json::Error> {
        Ok(Compound::new(self.depth, None, false))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Compound, serde_json::Error> {
        Ok(Compound::new(self.depth, None, false))
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Compound, serde_json::Error> {
        Ok(Compound::new(self.depth, None, false))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound, serde_json::Error> {
        // The variant's wrapper object is one level, its contents the next.
        Ok(Compound::new(self.depth + 1, Some(variant), false))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound, serde_json::Error> {
        Ok(Compound::new(self.depth, None, true))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Compound, serde_json::Error> {
        Ok(Compound::new(self.depth, None, true))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound, serde_json::Error> {
        Ok(Compound::new(self.depth + 1, Some(variant), true))
    }
}

impl serde::ser::SerializeSeq for Compound {
    type Ok = Value;
    type Error = serde_json::Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), serde_json::Error> {
        self.push(v)
    }
    fn end(self) -> CaptureResult {
        self.finish()
    }
}

impl serde::ser::SerializeTuple for Compound {
    type Ok = Value;
    type Error = serde_json::Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), serde_json::Error> {
        self.push(v)
    }
    fn end(self) -> CaptureResult {
        self.finish()
    }
}

impl serde::ser::SerializeTupleStruct for Compound {
    type Ok = Value;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), serde_json::Error> {
        self.push(v)
    }
    fn end(self) -> CaptureResult {
        self.finish()
    }
}

impl serde::ser::SerializeTupleVariant for Compound {
    type Ok = Value;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), serde_json::Error> {
        self.push(v)
    }
    fn end(self) -> CaptureResult {
        self.finish()
    }
}

impl serde::ser::SerializeMap for Compound {
    type Ok = Value;
    type Error = serde_json::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), serde_json::Error> {
        if self.map.is_some() {
            self.key = Some(key_string(k)?);
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), serde_json::Error> {
        match self.key.take() {
            Some(k) => self.field(&k, v),
            None => {
                self.skipped += 1;
                Ok(())
            }
        }
    }
    fn end(self) -> CaptureResult {
        self.finish()
    }
}

impl serde::ser::SerializeStruct for Compound {
    type Ok = Value;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> Result<(), serde_json::Error> {
        self.field(k, v)
    }
    fn end(self) -> CaptureResult {
        self.finish()
    }
}

impl serde::ser::SerializeStructVariant for Compound {
    type Ok = Value;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> Result<(), serde_json::Error> {
        self.field(k, v)
    }
    fn end(self) -> CaptureResult {
        self.finish()
    }
}

/// An attribute value of a span in flight: no allocation for the common kinds.
#[derive(Debug, Clone)]
pub(crate) enum AttrVal {
    None,
    U64(u64),
    F64(f64),
    Str(&'static str),
    Keys(Box<Vec<String>>),
    /// The keys of the span's output entries ([`Io::Changes`]): post's changed keys, when
    /// its output holds every one of them (no copy of the list travels with the span).
    ChangedKeys,
}

impl From<u32> for AttrVal {
    fn from(v: u32) -> Self {
        AttrVal::U64(v as u64)
    }
}
impl From<u64> for AttrVal {
    fn from(v: u64) -> Self {
        AttrVal::U64(v)
    }
}
impl From<usize> for AttrVal {
    fn from(v: usize) -> Self {
        AttrVal::U64(v as u64)
    }
}
impl From<f64> for AttrVal {
    fn from(v: f64) -> Self {
        AttrVal::F64(v)
    }
}
impl From<&'static str> for AttrVal {
    fn from(v: &'static str) -> Self {
        AttrVal::Str(v)
    }
}
impl From<Vec<String>> for AttrVal {
    fn from(v: Vec<String>) -> Self {
        AttrVal::Keys(Box::new(v))
    }
}

impl AttrVal {
    fn into_json(self, output: Option<&Io>) -> Option<Value> {
        match self {
            AttrVal::None => None,
            AttrVal::ChangedKeys => match output {
                Some(Io::Changes(_, changed)) => {
                    Some(Value::Array(changed.entries().map(|(k, _, _)| Value::String(k.to_owned())).collect()))
                }
                _ => None,
            },
            AttrVal::U64(v) => Some(v.into()),
            AttrVal::F64(v) => Some(v.into()),
            AttrVal::Str(v) => Some(v.into()),
            AttrVal::Keys(v) => Some((*v).into()),
        }
    }
}

const MAX_ATTRS: usize = 3;
const EMPTY_ATTRS: [(&str, AttrVal); MAX_ATTRS] = [("", AttrVal::None), ("", AttrVal::None), ("", AttrVal::None)];

/// Span boxes are allocated by runs and emptied by the tracer on another thread; freeing them
/// there made the two threads contend on glibc's arena lock (a fifth of a traced run's time).
/// So emptied boxes come back here, and runs take them in batches.
static BOX_POOL: Mutex<Vec<Box<RawSpan>>> = Mutex::new(Vec::new());
const BOX_POOL_MAX: usize = 1 << 16;
const BOX_BATCH: usize = 64;

/// Pooled boxes that may still hold their span's store entries ([`Io::Reads`],
/// [`Io::Changes`]): the run that takes the box drops them. The entries were allocated on a
/// run's thread; dropped on the tracer's, each of their blocks went back through glibc's slow
/// path (the arena's lock, against the run threads), and the run threads' next allocations of
/// those sizes found their caches empty. Bounded, as entries hold store values: only the top
/// this many boxes of the pool (runs take boxes from the top) hold entries; a box pushed
/// below them gives its entries up, and so do all once the tracer is idle
/// ([`drop_pooled_entries`]).
const BOX_POOL_ENTRIES: usize = 16_384;

/// Returns emptied span boxes (and their buffer) for reuse.
pub(crate) fn recycle_spans(mut spans: Vec<Box<RawSpan>>) {
    // A run reuses a box by writing only the span's own facts (and dropping the store
    // entries a box may still hold), so what a shed span (never made a record) still holds
    // goes now; a box emptied by `take_record` has nothing left but those entries.
    for s in spans.iter_mut() {
        s.empty(true);
    }
    let mut fallen = Vec::new();
    {
        let mut pool = BOX_POOL.lock();
        let room = BOX_POOL_MAX.saturating_sub(pool.len());
        let keep = spans.len().min(room);
        pool.extend(spans.drain(..keep));
        // The boxes these pushed out of the top `BOX_POOL_ENTRIES` give their entries up
        // (dropped once the lock is let go).
        let len = pool.len();
        let below = len.saturating_sub(BOX_POOL_ENTRIES);
        for b in &mut pool[below.saturating_sub(keep)..below] {
            fallen.extend([b.input.take(), b.output.take()].into_iter().flatten());
        }
    }
    drop(fallen);
    spans.clear();
    recycle(spans);
}

/// Drops the store entries the pooled boxes still hold (the tracer is idle: no run may take
/// those boxes soon).
pub(crate) fn drop_pooled_entries() {
    let mut pool = BOX_POOL.lock();
    for s in pool.iter_mut() {
        s.input = None;
        s.output = None;
    }
}

/// A finished span as the run records it: ids, static keys and inline attributes, so that
/// recording allocates nothing beyond the captured values. The tracer turns it into a
/// [`SpanRecord`] off the run's path.
#[derive(Debug)]
pub(crate) struct RawSpan {
    span_id: SpanId,
    parent_id: Option<SpanId>,
    kind: SpanKind,
    name: Option<Arc<str>>,
    // Raw clock readings: turned into Unix time on the tracer thread.
    start: Instant,
    end: Instant,
    status: Option<Box<SpanStatus>>,
    input: Option<Io>,
    output: Option<Io>,
    attrs: [(&'static str, AttrVal); MAX_ATTRS],
    extra: Vec<(&'static str, AttrVal)>,
    /// The LLM call of a generation span (its clock readings are converted with the rest).
    generation: Option<Box<crate::flow::Generation>>,
}

/// A span's input or output as the run records it: held inline (no allocation of its own)
/// and made the JSON the record shows on the tracer's thread, off the run's path.
#[derive(Debug)]
pub(crate) enum Io {
    /// A value already captured.
    Value(Value),
    /// The store entries a phase read.
    Reads(Arc<StoreSnapshot>),
    /// post's input: prep's and exec's results, shown as `{"prep": …, "exec": …}`.
    Post(Value, Value),
    /// The action and the entries changed, with their new values: `{"action": …, "changed": …}`.
    Changes(Action, Arc<StoreSnapshot>),
}

impl Io {
    fn into_json(self) -> Value {
        // Maps by hand, not `json!`: the macro serialises its values again (a copy of each).
        match self {
            Io::Value(v) => v,
            Io::Reads(r) => r.to_json(),
            Io::Post(prep, exec) => {
                let mut m = serde_json::Map::new();
                m.insert("prep".to_owned(), prep);
                m.insert("exec".to_owned(), exec);
                Value::Object(m)
            }
            Io::Changes(action, changed) => changes_json(&action, &changed),
        }
    }

    /// [`into_json`](Self::into_json) into `slot`, reusing the memory of the value it holds
    /// when that has the same keys (as the same span of the run before, whose record was let
    /// go, mostly has).
    fn into_json_into(self, slot: &mut Option<Value>) {
        match self {
            Io::Value(v) => *slot = Some(v),
            Io::Post(prep, exec) => match slot.as_mut() {
                Some(Value::Object(m)) => match two(m, "prep", "exec") {
                    Some((p, e)) => {
                        *p = prep;
                        *e = exec;
                    }
                    None => *slot = Some(Io::Post(prep, exec).into_json()),
                },
                _ => *slot = Some(Io::Post(prep, exec).into_json()),
            },
            // Store entries are read where they are (see `io_json_into`).
            store => io_json_into(&mut Some(store), slot),
        }
    }

    fn is_store(&self) -> bool {
        matches!(self, Io::Reads(_) | Io::Changes(..))
    }
}

/// A span's input or output as JSON. Store entries are read where they are and stay in
/// the box, for the run that reuses it to drop (see [`BOX_POOL_ENTRIES`]); a value is moved.
fn io_json(io: &mut Option<Io>) -> Option<Value> {
    match io {
        Some(Io::Reads(r)) => Some(r.to_json()),
        Some(Io::Changes(action, changed)) => Some(changes_json(action, changed)),
        _ => io.take().map(Io::into_json),
    }
}

/// [`io_json`] into `slot`, as [`Io::into_json_into`] does.
fn io_json_into(io: &mut Option<Io>, slot: &mut Option<Value>) {
    match io {
        Some(Io::Reads(r)) => {
            let kept = match slot.as_mut() {
                Some(Value::Object(m)) => r.json_into(m),
                _ => false,
            };
            if !kept {
                *slot = Some(r.to_json());
            }
        }
        Some(Io::Changes(action, changed)) => {
            if !changes_json_into(action, changed, slot) {
                *slot = Some(changes_json(action, changed));
            }
        }
        Some(_) => {
            if let Some(io) = io.take() {
                io.into_json_into(slot);
            }
        }
        None => *slot = None,
    }
}

/// post's output, `{"action": …, "changed": …}`.
fn changes_json(action: &Action, changed: &StoreSnapshot) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("action".to_owned(), capture(action));
    m.insert("changed".to_owned(), changed.to_json());
    Value::Object(m)
}

/// [`changes_json`] into the object `slot` holds, when it has the same keys; false when not
/// (the changed entries' map may then be cleared).
fn changes_json_into(action: &Action, changed: &StoreSnapshot, slot: &mut Option<Value>) -> bool {
    let Some(Value::Object(m)) = slot.as_mut() else { return false };
    let Some((a, Value::Object(c))) = two(m, "action", "changed") else { return false };
    if !changed.json_into(c) {
        return false;
    }
    // The action as `capture` shows it (a string, or null), in the string's memory when
    // there is one.
    match (action.as_str(), &mut *a) {
        (Some(name), Value::String(old)) => {
            old.clear();
            old.push_str(name);
        }
        _ => *a = capture(action),
    }
    true
}

/// The values of a map that holds exactly the keys `a` and `b`.
fn two<'m>(m: &'m mut serde_json::Map<String, Value>, a: &str, b: &str) -> Option<(&'m mut Value, &'m mut Value)> {
    if m.len() != 2 {
        return None;
    }
    let mut it = m.iter_mut();
    let (k1, v1) = it.next()?;
    let (k2, v2) = it.next()?;
    match (k1.as_str(), k2.as_str()) {
        (x, y) if x == a && y == b => Some((v1, v2)),
        (x, y) if x == b && y == a => Some((v2, v1)),
        _ => None,
    }
}

impl AttrVal {
    /// Whether [`into_json`](Self::into_json) gives a value.
    fn is_some(&self, output: Option<&Io>) -> bool {
        match self {
            AttrVal::None => false,
            AttrVal::ChangedKeys => matches!(output, Some(Io::Changes(..))),
            _ => true,
        }
    }

    /// [`into_json`](Self::into_json) into `slot` (which it is known to give a value for),
    /// reusing the memory of a string or list `slot` holds.
    fn json_into(self, slot: &mut Value, output: Option<&Io>) {
        match (self, slot) {
            (AttrVal::Str(v), Value::String(old)) => {
                old.clear();
                old.push_str(v);
            }
            (AttrVal::ChangedKeys, Value::Array(old)) => {
                let Some(Io::Changes(_, changed)) = output else { return };
                old.truncate(changed.len());
                for (i, (k, _, _)) in changed.entries().enumerate() {
                    match old.get_mut(i) {
                        Some(Value::String(s)) => {
                            s.clear();
                            s.push_str(k);
                        }
                        Some(other) => *other = Value::String(k.to_owned()),
                        None => old.push(Value::String(k.to_owned())),
                    }
                }
            }
            (v, slot) => {
                if let Some(v) = v.into_json(output) {
                    *slot = v;
                }
            }
        }
    }
}

impl RawSpan {
    /// Drops what the span holds beyond its ids, kind and times, but for its store entries
    /// when `keep_entries` (see [`BOX_POOL_ENTRIES`]).
    fn empty(&mut self, keep_entries: bool) {
        self.name = None;
        self.status = None;
        if !keep_entries || !self.input.as_ref().is_some_and(Io::is_store) {
            self.input = None;
        }
        if !keep_entries || !self.output.as_ref().is_some_and(Io::is_store) {
            self.output = None;
        }
        self.attrs = EMPTY_ATTRS;
        self.extra.clear();
        self.generation = None;
    }

    /// The public form, built on the tracer's thread; `clock` maps readings to Unix time.
    /// Leaves the box empty, to be recycled rather than freed.
    pub(crate) fn take_record(&mut self, clock: Clock) -> SpanRecord {
        let mut attributes = serde_json::Map::new();
        let attrs = std::mem::replace(&mut self.attrs, EMPTY_ATTRS);
        for (k, v) in attrs.into_iter().chain(std::mem::take(&mut self.extra)) {
            if let Some(v) = v.into_json(self.output.as_ref()) {
                attributes.insert(k.to_owned(), v);
            }
        }
        let generation = self.generation.take().map(|g| generation_record(*g, clock));
        let (input, output) = (io_json(&mut self.input), io_json(&mut self.output));
        SpanRecord {
            generation,
            span_id: self.span_id,
            parent_id: self.parent_id,
            kind: self.kind,
            name: self.name.take().unwrap_or_else(|| Arc::from("")),
            start_unix_nanos: clock.unix_nanos(self.start),
            end_unix_nanos: clock.unix_nanos(self.end),
            status: self.status.take().map(|s| *s).unwrap_or_default(),
            input,
            output,
            attributes,
        }
    }
}

impl RawSpan {
    /// [`take_record`](Self::take_record) into `s`, a record let go by the exporters: maps
    /// with the same keys as the new ones (the same span of an earlier run of the same flow)
    /// are overwritten in place, keys and memory kept, instead of freed on the exporter's
    /// thread and allocated again here. The result is the record `take_record` makes.
    pub(crate) fn take_record_into(&mut self, s: &mut SpanRecord, clock: Clock) {
        if !attrs_in_place(&mut self.attrs, &self.extra, self.output.as_ref(), &mut s.attributes) {
            let attrs = std::mem::replace(&mut self.attrs, EMPTY_ATTRS);
            let extra = std::mem::take(&mut self.extra);
            self.attributes_into(&mut s.attributes, attrs, extra);
        }
        s.generation = self.generation.take().map(|g| generation_record(*g, clock));
        io_json_into(&mut self.input, &mut s.input);
        io_json_into(&mut self.output, &mut s.output);
        s.span_id = self.span_id;
        s.parent_id = self.parent_id;
        s.kind = self.kind;
        s.name = self.name.take().unwrap_or_else(|| Arc::from(""));
        s.start_unix_nanos = clock.unix_nanos(self.start);
        s.end_unix_nanos = clock.unix_nanos(self.end);
        s.status = self.status.take().map(|st| *st).unwrap_or_default();
    }

    /// The attributes into `m`: in place when `m` holds exactly the keys that have values,
    /// afresh otherwise.
    fn attributes_into(
        &self,
        m: &mut serde_json::Map<String, Value>,
        attrs: [(&'static str, AttrVal); MAX_ATTRS],
        extra: Vec<(&'static str, AttrVal)>,
    ) {
        let output = self.output.as_ref();
        let mut keys: [&str; 8] = [""; 8];
        let mut n = 0;
        let mut fits = true;
        for (k, v) in attrs.iter().chain(&extra) {
            if !v.is_some(output) {
                continue;
            }
            if n == keys.len() {
                fits = false;
                break;
            }
            keys[n] = k;
            n += 1;
        }
        let keys = &mut keys[..n];
        keys.sort_unstable();
        let distinct = keys.windows(2).all(|w| w[0] != w[1]);
        let same = fits && distinct && m.len() == n && m.keys().zip(keys.iter()).all(|(a, b)| a == b);
        if !same {
            m.clear();
        }
        for (k, v) in attrs.into_iter().chain(extra) {
            if !v.is_some(output) {
                continue;
            }
            match m.get_mut(k) {
                Some(slot) if same => v.json_into(slot, output),
                _ => {
                    if let Some(v) = v.into_json(output) {
                        m.insert(k.to_owned(), v);
                    }
                }
            }
        }
    }
}

/// The common case of [`RawSpan::attributes_into`], in one pass over `m`: no extra
/// attributes, and `m` holds exactly the keys of those with values (the same span of an
/// earlier run). Their values are overwritten in place and `attrs` left empty; false, and
/// nothing touched, otherwise.
fn attrs_in_place(
    attrs: &mut [(&'static str, AttrVal); MAX_ATTRS],
    extra: &[(&'static str, AttrVal)],
    output: Option<&Io>,
    m: &mut serde_json::Map<String, Value>,
) -> bool {
    if !extra.is_empty() {
        return false;
    }
    let n = attrs.iter().filter(|(_, v)| v.is_some(output)).count();
    if m.len() != n {
        return false;
    }
    // For each of `m`'s keys, in its order, the attribute of that key (each used once).
    let mut order = [0usize; MAX_ATTRS];
    let mut used = [false; MAX_ATTRS];
    for (slot, k) in order.iter_mut().zip(m.keys()) {
        let found = (0..MAX_ATTRS).find(|&i| !used[i] && attrs[i].1.is_some(output) && attrs[i].0 == k);
        match found {
            Some(i) => {
                used[i] = true;
                *slot = i;
            }
            None => return false,
        }
    }
    for ((_, slot), &i) in m.iter_mut().zip(&order[..n]) {
        let v = std::mem::replace(&mut attrs[i].1, AttrVal::None);
        v.json_into(slot, output);
    }
    *attrs = EMPTY_ATTRS;
    true
}

/// A run's clock: one Unix time and one `Instant` read together, to place every span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base_unix_nanos: u64,
    base: Instant,
}

impl Clock {
    /// When the run's clock was read: its start, near enough for a part of its trace.
    pub(crate) fn start_unix_nanos(self) -> u64 {
        self.base_unix_nanos
    }

    pub(crate) fn unix_nanos(self, at: Instant) -> u64 {
        match at.checked_duration_since(self.base) {
            Some(d) => self.base_unix_nanos + d.as_nanos() as u64,
            None => self.base_unix_nanos.saturating_sub(self.base.duration_since(at).as_nanos() as u64),
        }
    }
}

impl RunTrace {
    fn push(&self, rec: Box<RawSpan>) {
        let chunk = {
            let mut buf = self.buf.lock();
            buf.push(rec);
            if buf.len() >= CHUNK {
                Some(std::mem::replace(&mut *buf, pooled_buffer()))
            } else {
                None
            }
        };
        if let Some(chunk) = chunk {
            let shed = self.sink.spans(self, chunk);
            self.shed.fetch_add(shed, Ordering::Relaxed);
        }
    }
}

/// A generation recorded from `exec`: one span, started when the call started, ended now.
impl crate::flow::generation::GenerationSink for RunTrace {
    fn generation(&self, parent: u64, mut g: crate::flow::Generation) {
        let status = g.error.take().map(|message| {
            Box::new(SpanStatus::Error { kind: "llm_error".into(), message, chain: Vec::new(), location: None })
        });
        let input = if self.switches.inputs { g.input.take() } else { None };
        let output = if self.switches.outputs { g.output.take() } else { None };
        let (input, output) = (input, output);
        g.input = None;
        g.output = None;
        let rec = Box::new(RawSpan {
            span_id: new_span_id(),
            parent_id: Some(SpanId(parent)),
            kind: SpanKind::Generation,
            name: Some(Arc::clone(&g.name)),
            start: g.started,
            end: Instant::now(),
            status,
            input: input.map(Io::Value),
            output: output.map(Io::Value),
            attrs: EMPTY_ATTRS,
            extra: Vec::new(),
            generation: Some(Box::new(g)),
        });
        self.push(rec);
    }
}

pub(crate) struct RunTrace {
    pub(crate) trace_id: TraceId,
    clock: Clock,
    pub(crate) switches: Switches,
    buf: Mutex<Vec<Box<RawSpan>>>,
    sink: TraceSink,
    /// The run's trace fields, for the parts of its trace exported before it ends.
    meta: Arc<super::TraceMeta>,
    /// Parts of this run's trace handed to the exporters so far (by the tracer, or by the
    /// sink straight from the run when the tracer is behind): the next part's index.
    parts: Arc<std::sync::atomic::AtomicU32>,
    /// Whether any chunk of this run went to the tracer (which then holds some of its spans,
    /// so the run's end must go there too).
    chunked: std::sync::atomic::AtomicBool,
    /// Spans of this run shed under backlog, for its trace's `spans_dropped`.
    shed: AtomicU64,
}

impl RunTrace {
    /// The run's trace fields.
    pub(crate) fn meta(&self) -> &Arc<super::TraceMeta> {
        &self.meta
    }
    /// The run's clock.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }
    /// The count of this run's parts, shared with whoever makes the next one.
    pub(crate) fn parts(&self) -> &Arc<std::sync::atomic::AtomicU32> {
        &self.parts
    }
    /// Marks that a chunk of this run went to the tracer; says whether one had before.
    pub(crate) fn mark_chunked(&self) -> bool {
        self.chunked.swap(true, Ordering::Relaxed)
    }
    /// Whether a chunk of this run went to the tracer.
    pub(crate) fn chunked(&self) -> bool {
        self.chunked.load(Ordering::Relaxed)
    }
}

/// The handle a run passes down to every node to record spans.
#[derive(Clone)]
pub(crate) struct Recorder(pub(crate) Arc<RunTrace>);

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("trace_id", &self.0.trace_id).finish()
    }
}

impl Recorder {
    pub(crate) fn new(trace_id: TraceId, switches: Switches, sink: TraceSink, meta: Arc<super::TraceMeta>) -> Self {
        let base_unix_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Recorder(Arc::new(RunTrace {
            trace_id,
            clock: Clock { base_unix_nanos, base: Instant::now() },
            switches,
            buf: Mutex::new(pooled_buffer()),
            shed: AtomicU64::new(0),
            sink,
            meta,
            parts: Arc::default(),
            chunked: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub(crate) fn switches(&self) -> Switches {
        self.0.switches
    }

    pub(crate) fn unix_nanos(&self, at: Instant) -> u64 {
        self.0.clock.unix_nanos(at)
    }

    pub(crate) fn clock(&self) -> Clock {
        self.0.clock
    }

    pub(crate) fn now_unix_nanos(&self) -> u64 {
        self.unix_nanos(Instant::now())
    }

    /// Opens a span; it is recorded when ended, or as cancelled if dropped while open.
    pub(crate) fn start(&self, parent: Option<SpanId>, kind: SpanKind, name: impl Into<Arc<str>>) -> OpenSpan {
        self.start_at(parent, kind, name, Instant::now())
    }

    /// Opens a span that started at `at` (one clock read can start several nested spans).
    pub(crate) fn start_at(
        &self,
        parent: Option<SpanId>,
        kind: SpanKind,
        name: impl Into<Arc<str>>,
        at: Instant,
    ) -> OpenSpan {
        let (span_id, name) = (new_span_id(), Some(name.into()));
        let record = match self.spare_box() {
            // A recycled box was emptied when its span became a record (or its spans were
            // shed, which `recycle_spans` empties): only the span's own facts are written, not
            // the whole struct copied in.
            Some(mut b) => {
                let r = &mut *b;
                // Store entries left by the box's last span are dropped here, on a run's
                // thread (see `BOX_POOL_ENTRIES`).
                r.input = None;
                r.output = None;
                r.span_id = span_id;
                r.parent_id = parent;
                r.kind = kind;
                r.name = name;
                r.start = at;
                r.end = at;
                b
            }
            None => Box::new(RawSpan {
                span_id,
                parent_id: parent,
                kind,
                name,
                start: at,
                end: at,
                status: None,
                input: None,
                output: None,
                attrs: EMPTY_ATTRS,
                extra: Vec::new(),
                generation: None,
            }),
        };
        OpenSpan { rec: self.clone(), record: Some(record) }
    }

    fn spare_box(&self) -> Option<Box<RawSpan>> {
        // A per-thread cache, refilled from the shared pool a batch at a time: one lock per
        // `BOX_BATCH` spans rather than one per span.
        thread_local! {
            static SPARE: std::cell::RefCell<Vec<Box<RawSpan>>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.is_empty() {
                let mut pool = BOX_POOL.lock();
                let n = pool.len().min(BOX_BATCH);
                let at = pool.len() - n;
                spare.extend(pool.drain(at..));
            }
            spare.pop()
        })
    }

    fn push(&self, rec: Box<RawSpan>) {
        self.0.push(rec)
    }

    /// Records a point-in-time event (a PocketFlow warning) under `parent`, at `level`.
    pub(crate) fn event(&self, parent: Option<SpanId>, message: impl Into<Arc<str>>, level: &'static str) {
        let now = Instant::now();
        let mut s = self.start_at(parent, SpanKind::Event, message, now);
        s.attr("level", level);
        s.end_at(now);
    }

    /// Takes what is buffered (the run's end sends it with the trace's own record).
    pub(crate) fn drain(&self) -> Vec<Box<RawSpan>> {
        std::mem::take(&mut *self.0.buf.lock())
    }

    /// How many of this run's spans were shed so far.
    pub(crate) fn shed(&self) -> u64 {
        self.0.shed.load(Ordering::Relaxed)
    }

    /// Where an attempt's generations go: this run, under `parent` (one reference count).
    pub(crate) fn generations(&self, parent: SpanId) -> (Arc<dyn crate::flow::generation::GenerationSink>, u64) {
        (Arc::clone(&self.0) as Arc<dyn crate::flow::generation::GenerationSink>, parent.0)
    }

    /// Hands the run's end record (with its last spans) to the sink.
    pub(crate) fn end(&self, end: super::TraceEnd) {
        self.0.sink.end(&self.0, end)
    }

    pub(crate) fn trace_id(&self) -> TraceId {
        self.0.trace_id
    }
}

/// A span in progress. Ending it records it; dropping it open records it as cancelled, so a
/// cancelled or aborted run still leaves a closed span that says why.
pub(crate) struct OpenSpan {
    rec: Recorder,
    // Boxed: an open span lives inside the node's (boxed) visit future, and keeping it small
    // keeps that future within the allocator's fast size classes.
    record: Option<Box<RawSpan>>,
}

impl OpenSpan {
    pub(crate) fn id(&self) -> SpanId {
        self.record.as_ref().map(|r| r.span_id).unwrap_or(SpanId(0))
    }

    pub(crate) fn attr(&mut self, key: &'static str, value: impl Into<AttrVal>) {
        if let Some(r) = self.record.as_mut() {
            let value = value.into();
            match r.attrs.iter_mut().find(|(k, _)| k.is_empty() || *k == key) {
                Some(slot) => *slot = (key, value),
                None => r.extra.push((key, value)),
            }
        }
    }

    pub(crate) fn input(&mut self, v: impl FnOnce() -> Value) {
        if self.rec.0.switches.inputs {
            if let Some(r) = self.record.as_mut() {
                set_io(&mut r.input, Io::Value(v()));
            }
        }
    }

    pub(crate) fn output(&mut self, v: impl FnOnce() -> Value) {
        if self.rec.0.switches.outputs {
            if let Some(r) = self.record.as_mut() {
                set_io(&mut r.output, Io::Value(v()));
            }
        }
    }

    /// post's input: prep's and exec's results (the object around them is built off the
    /// run's path).
    pub(crate) fn input_post(&mut self, prep: Value, exec: Value) {
        if self.rec.0.switches.inputs {
            if let Some(r) = self.record.as_mut() {
                set_io(&mut r.input, Io::Post(prep, exec));
            }
        }
    }

    /// The `changed_keys` attribute: the keys post changed. When the output's entries hold
    /// every one of them, the attribute is read from there on the tracer's thread, and the
    /// list is dropped here (freed on the thread that made it).
    pub(crate) fn changed_keys(&mut self, changed: Vec<String>) {
        let Some(r) = self.record.as_ref() else { return };
        let covered = match &r.output {
            Some(Io::Changes(_, entries)) => {
                entries.len() == changed.len() && entries.entries().zip(&changed).all(|((k, _, _), c)| k == c)
            }
            _ => false,
        };
        if covered {
            self.attr("changed_keys", AttrVal::ChangedKeys);
        } else {
            self.attr("changed_keys", changed);
        }
    }

    /// The input: the store entries the phase read (serialised later, off the run's path).
    pub(crate) fn input_reads(&mut self, reads: &Arc<StoreSnapshot>) {
        if self.rec.0.switches.inputs {
            if let Some(r) = self.record.as_mut() {
                set_io(&mut r.input, Io::Reads(Arc::clone(reads)));
            }
        }
    }

    /// The output: the action and the entries changed, with their new values (both
    /// serialised later, off the run's path).
    pub(crate) fn output_changes(&mut self, action: &Action, changed: &Arc<StoreSnapshot>) {
        if self.rec.0.switches.outputs {
            if let Some(r) = self.record.as_mut() {
                set_io(&mut r.output, Io::Changes(action.clone(), Arc::clone(changed)));
            }
        }
    }

    pub(crate) fn end(mut self) {
        self.finish(SpanStatus::Ok, Instant::now());
    }

    /// Ends the span at `at`, a clock reading shared with the span that starts next.
    pub(crate) fn end_at(mut self, at: Instant) {
        self.finish(SpanStatus::Ok, at);
    }

    pub(crate) fn end_with(mut self, result: Result<(), &Error>) {
        match result {
            Ok(()) => self.finish(SpanStatus::Ok, Instant::now()),
            Err(e) => {
                let status = error_status(e, self.rec.0.switches.errors);
                self.finish(status, Instant::now())
            }
        }
    }

    pub(crate) fn fail(mut self, status: SpanStatus) {
        self.finish(status, Instant::now());
    }

    fn finish(&mut self, status: SpanStatus, at: Instant) {
        if let Some(mut r) = self.record.take() {
            r.end = at;
            r.status = if matches!(status, SpanStatus::Ok) { None } else { Some(Box::new(status)) };
            self.rec.push(r);
        }
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.finish(
                SpanStatus::Cancelled { reason: "the run stopped while this span was open".into() },
                Instant::now(),
            );
        }
    }
}

/// Sets a span's input or output; store entries, once set, are what the span shows (a value
/// set after them does not replace them).
fn set_io(slot: &mut Option<Io>, io: Io) {
    if io.is_store() || !slot.as_ref().is_some_and(Io::is_store) {
        *slot = Some(io);
    }
}

/// The span status for an error; with error recording off, only the kind is kept.
pub(crate) fn error_status(e: &Error, detailed: bool) -> SpanStatus {
    match e {
        Error::Cancelled { reason } => SpanStatus::Cancelled { reason: reason.clone() },
        // A durable run waiting for a person has not failed: its spans end normally (the
        // suspension is an event of its own, and the run's next part continues the trace).
        Error::Suspended { .. } => SpanStatus::Ok,
        _ if !detailed => {
            SpanStatus::Error { kind: e.kind().into(), message: e.kind().into(), chain: Vec::new(), location: None }
        }
        Error::Panic { message, location, .. } => SpanStatus::Error {
            kind: "panic".into(),
            message: message.clone(),
            chain: e.chain(),
            location: location.clone(),
        },
        Error::Node { source, .. } => {
            SpanStatus::Error { kind: e.kind().into(), message: source.to_string(), chain: e.chain(), location: None }
        }
        _ => SpanStatus::Error { kind: e.kind().into(), message: e.to_string(), chain: e.chain(), location: None },
    }
}

impl crate::flow::StoreSnapshot {
    /// The snapshot as a JSON object, as a trace records it. A value that fails to serialise
    /// becomes a visible `<unserialisable …>` marker rather than failing the whole snapshot,
    /// and nesting deeper than [`MAX_DEPTH`](crate::export::MAX_DEPTH) levels a
    /// `<truncated: nested deeper than …>` marker.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::with_capacity(self.len());
        for (k, v, type_name) in self.entries() {
            map.insert(k.to_owned(), capture_as(v, type_name));
        }
        Value::Object(map)
    }

    /// [`to_json`](Self::to_json) into `m` when `m` holds exactly this snapshot's keys (its
    /// values are overwritten, its keys kept); false, `m` untouched, when it does not.
    pub(crate) fn json_into(&self, m: &mut serde_json::Map<String, Value>) -> bool {
        let n = self.len();
        // Few keys, each in `m`, none twice: then `m` holds exactly these.
        if n != m.len() || n > 8 {
            return false;
        }
        // The same keys in the same order (the same phase of an earlier run, mostly): one pass,
        // no look-ups. `m`'s keys are distinct, so these are too.
        if m.keys().zip(self.entries()).all(|(a, (k, _, _))| a == k) {
            for ((_, slot), (_, v, type_name)) in m.iter_mut().zip(self.entries()) {
                *slot = capture_as(v, type_name);
            }
            return true;
        }
        let keys = || self.entries().map(|(k, _, _)| k);
        let distinct = keys().enumerate().all(|(i, k)| keys().take(i).all(|j| j != k));
        if !distinct || !keys().all(|k| m.contains_key(k)) {
            return false;
        }
        for (k, v, type_name) in self.entries() {
            if let Some(slot) = m.get_mut(k) {
                *slot = capture_as(v, type_name);
            }
        }
        true
    }
}

/// The record of an LLM call, its first token's time on the trace's clock.
fn generation_record(g: crate::flow::Generation, clock: Clock) -> Box<super::model::GenerationRecord> {
    Box::new(super::model::GenerationRecord {
        model: g.model,
        model_parameters: g.model_parameters,
        usage: g.usage,
        cost: g.cost,
        completion_start_unix_nanos: g.completion_start.map(|at| clock.unix_nanos(at)),
        prompt_name: g.prompt.as_ref().map(|p| p.0.clone()),
        prompt_version: g.prompt.map(|p| p.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{SpanSink, TraceEnd};

    /// A sink that keeps the chunks it is sent.
    #[derive(Default)]
    struct Chunks(Mutex<Vec<usize>>);

    impl SpanSink for Chunks {
        fn spans(&self, _run: &RunTrace, spans: SpanBuf) -> u64 {
            self.0.lock().push(spans.len());
            0
        }
        fn end(&self, _run: &RunTrace, _end: TraceEnd) {}
    }

    fn recorder(switches: Switches) -> (Recorder, Arc<Chunks>) {
        let sink = Arc::new(Chunks::default());
        (Recorder::new(new_trace_id(), switches, Arc::clone(&sink) as Arc<dyn SpanSink>, Default::default()), sink)
    }

    fn records(rec: &Recorder) -> Vec<SpanRecord> {
        let clock = rec.clock();
        rec.drain().into_iter().map(|mut s| s.take_record(clock)).collect()
    }

    #[test]
    fn spans_leave_in_chunks_and_the_rest_stays_for_the_runs_end() {
        let (rec, sink) = recorder(Switches::default());
        for _ in 0..CHUNK + 10 {
            rec.start(None, SpanKind::Node, "n").end();
        }
        assert_eq!(*sink.0.lock(), vec![CHUNK], "one full chunk was sent as soon as it filled");
        assert_eq!(rec.drain().len(), 10, "the remainder waits for the run's end record");
    }

    #[test]
    fn children_name_their_parent_and_ids_are_unique_and_never_zero() {
        let (rec, _) = recorder(Switches::default());
        let parent = rec.start(None, SpanKind::Flow, "flow");
        let pid = parent.id();
        let ids: Vec<SpanId> = (0..100)
            .map(|_| {
                let s = rec.start(Some(pid), SpanKind::Node, "node");
                let id = s.id();
                s.end();
                id
            })
            .collect();
        parent.end();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|id| id.0 != 0));
        let spans = records(&rec);
        assert_eq!(spans.iter().filter(|s| s.parent_id == Some(pid)).count(), 100);
        assert!(spans.iter().all(|s| s.end_unix_nanos >= s.start_unix_nanos));
    }

    #[test]
    fn a_span_dropped_open_ends_cancelled() {
        let (rec, _) = recorder(Switches::default());
        drop(rec.start(None, SpanKind::Exec, "x.exec"));
        let spans = records(&rec);
        assert!(matches!(&spans[0].status, SpanStatus::Cancelled { .. }), "{:?}", spans[0].status);
    }

    #[test]
    fn switched_off_inputs_and_outputs_are_never_computed() {
        let (rec, _) = recorder(Switches { inputs: false, outputs: false, ..Switches::default() });
        let mut s = rec.start(None, SpanKind::Prep, "x.prep");
        s.input(|| unreachable!("inputs are off"));
        s.output(|| unreachable!("outputs are off"));
        s.end();
        let spans = records(&rec);
        assert_eq!((spans[0].input.as_ref(), spans[0].output.as_ref()), (None, None));
    }

    #[test]
    fn changed_keys_are_shown_with_outputs_on_or_off() {
        let store = crate::flow::SharedStore::new();
        store.insert("b", 2_i64);
        store.insert("a", 1_i64);
        let changed = vec!["b".to_owned(), "a".to_owned(), "gone".to_owned()];
        let entries = Arc::new(store.entries(&changed));
        for outputs in [true, false] {
            let (rec, _) = recorder(Switches { outputs, ..Switches::default() });
            let mut s = rec.start(None, SpanKind::Post, "x.post");
            s.input_post(Value::from(1), Value::from("two"));
            s.output_changes(&Action::new("next"), &entries);
            s.changed_keys(changed.clone());
            s.end();
            let span = records(&rec).remove(0);
            assert_eq!(span.attributes["changed_keys"], serde_json::json!(["b", "a", "gone"]), "outputs {outputs}");
            assert_eq!(span.input, Some(serde_json::json!({ "prep": 1, "exec": "two" })));
            let shown = serde_json::json!({ "action": "next", "changed": { "a": 1, "b": 2, "gone": null } });
            assert_eq!(span.output, outputs.then_some(shown));
        }
    }

    /// Spans of several shapes, in an order turned by `turn`.
    fn shapes(rec: &Recorder, turn: usize) {
        let store = crate::flow::SharedStore::new();
        store.insert("b", 2_i64);
        store.insert("a", "one");
        store.insert("x", serde_json::json!({ "deep": [1, 2] }));
        let ab = Arc::new(store.entries(&["a", "b"]));
        let changed = vec!["b".to_owned(), "a".to_owned(), "gone".to_owned()];
        let bag = Arc::new(store.entries(&changed));
        let x = Arc::new(store.entries(&["x"]));
        let twice = Arc::new(store.entries(&["a", "a"]));
        for i in 0..5 {
            let mut s = rec.start(None, SpanKind::Node, format!("shape {}", (i + turn) % 5));
            match (i + turn) % 5 {
                0 => {
                    s.input_reads(&ab);
                    s.output_changes(&Action::new("next"), &bag);
                    s.changed_keys(changed.clone());
                    s.attr("node_type", "Step");
                    s.attr("max_retries", 3_u32);
                }
                1 => {
                    s.input_reads(&x);
                    s.output_changes(&Action::new("other"), &x);
                    s.changed_keys(vec!["y".into()]);
                    for (k, v) in [("a", 1.5), ("b", 2.0), ("c", 3.0), ("d", 4.0), ("a", 5.0)] {
                        s.attr(k, v);
                    }
                }
                2 => {
                    s.input(|| serde_json::json!({ "prep": 1, "exec": 2 }));
                    s.output(|| serde_json::json!("plain"));
                    s.attr("node_type", "Flow");
                }
                3 => {
                    s.input_post(Value::from(1), serde_json::json!(["two"]));
                    s.output_changes(&Action::new("next"), &twice);
                    s.input_reads(&twice);
                }
                _ => {}
            }
            s.end();
        }
    }

    #[test]
    fn a_span_built_in_a_spare_record_is_the_span_built_afresh() {
        let (rec, _) = recorder(Switches::default());
        let shown = |r: &SpanRecord| {
            let mut v = serde_json::to_value(r).unwrap();
            for k in ["span_id", "start_unix_nanos", "end_unix_nanos"] {
                v.as_object_mut().unwrap().remove(k);
            }
            (v, r.input.is_some(), r.output.is_some())
        };
        for old in 0..5 {
            for new in 0..5 {
                shapes(&rec, old);
                let mut spare = records(&rec);
                shapes(&rec, new);
                let fresh = records(&rec);
                shapes(&rec, new);
                let clock = rec.clock();
                for (raw, s) in rec.drain().iter_mut().zip(spare.iter_mut()) {
                    raw.take_record_into(s, clock);
                }
                for (a, b) in fresh.iter().zip(&spare) {
                    assert_eq!(shown(a), shown(b), "shapes turned by {old} then {new}");
                }
            }
        }
    }

    #[test]
    fn a_recycled_box_keeps_nothing_of_its_last_span() {
        let (rec, _) = recorder(Switches::default());
        let mut s = rec.start(None, SpanKind::Exec, "x.exec");
        s.input(|| Value::from("old"));
        s.attr("max_retries", 3_u32);
        s.fail(SpanStatus::Cancelled { reason: "r".into() });
        // Shed, not made a record: the box goes back to the pool as it is.
        recycle_spans(rec.drain());
        let mut rest = Vec::new();
        for _ in 0..4 * BOX_BATCH {
            rest.push(rec.start(None, SpanKind::Node, "n"));
        }
        rest.into_iter().for_each(OpenSpan::end);
        for span in records(&rec) {
            assert_eq!((span.input, span.status, span.attributes.len()), (None, SpanStatus::Ok, 0));
        }
    }

    #[test]
    fn errors_without_detail_keep_only_their_kind() {
        let e = Error::Node { node: "N".into(), phase: crate::Phase::Exec, source: "secret detail".into() };
        match error_status(&e, false) {
            SpanStatus::Error { kind, message, chain, .. } => {
                assert_eq!((kind.as_str(), message.as_str()), ("node_error", "node_error"));
                assert!(chain.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match error_status(&e, true) {
            SpanStatus::Error { message, chain, .. } => {
                assert_eq!(message, "secret detail");
                assert_eq!(chain.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let cancelled = Error::Cancelled { reason: "client left".into() };
        assert_eq!(error_status(&cancelled, false), SpanStatus::Cancelled { reason: "client left".into() });
    }

    #[test]
    fn capture_stops_at_the_depth_limit_and_names_what_it_cannot_serialise() {
        let mut v = Value::from(1);
        for _ in 0..100 {
            v = Value::Array(vec![v]);
        }
        let mut got = &capture(&v);
        let mut depth = 1;
        while let Value::Array(a) = got {
            got = &a[0];
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH + 1);
        assert_eq!(got, &depth_marker(MAX_DEPTH));
        let map: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let marker = capture_as(&map, "MyMap");
        assert!(marker.as_str().is_some_and(|m| m.starts_with("<unserialisable MyMap")), "{marker}");
    }
}
