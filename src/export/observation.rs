//! What both Langfuse encoders (OTLP and legacy batch) agree on: an observation's level and
//! its metadata, so the two protocols show the same trace.

use std::collections::HashMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::trace::{SpanId, SpanKind, SpanRecord, SpanStatus, TraceRecord};

/// Langfuse's observation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Default,
    Warning,
    Error,
}

impl Level {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::Default => "DEFAULT",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

/// The levels of a trace's spans.
///
/// A failure is `ERROR` only when it ended the run: the span failed and so did every span
/// above it, up to a failed run. A failure something above it survived (an attempt a later
/// attempt or the fallback recovered, a failure inside a run that still succeeded) is
/// `WARNING`, because Langfuse marks a whole trace ERROR as soon as one observation is (§10,
/// `aggregated_level`); so is an attempt that was retried. A cancelled span (the run
/// stopped, or its deadline passed, while it was open) is `WARNING`; its status message says
/// why. The root of a failed run is `ERROR` even when it was cut short (a run timeout), so a
/// failed run always shows as failed.
pub(crate) struct Levels<'a> {
    trace: &'a TraceRecord,
    by_id: HashMap<SpanId, &'a SpanRecord>,
    /// The highest attempt number under each parent (exec or item span).
    last_attempt: HashMap<SpanId, u64>,
}

fn attempt_of(s: &SpanRecord) -> Option<u64> {
    if s.kind == SpanKind::Attempt {
        s.attributes.get("attempt").and_then(Value::as_u64)
    } else {
        None
    }
}

impl<'a> Levels<'a> {
    pub(crate) fn new(trace: &'a TraceRecord) -> Self {
        let mut last_attempt: HashMap<SpanId, u64> = HashMap::new();
        // Only a failed span looks up its parents and retries: most traces have none, and
        // need neither map.
        if !trace.spans.iter().any(|s| matches!(s.status, SpanStatus::Error { .. })) {
            return Levels { trace, by_id: HashMap::new(), last_attempt };
        }
        for s in &trace.spans {
            if let (Some(p), Some(n)) = (s.parent_id, attempt_of(s)) {
                let e = last_attempt.entry(p).or_default();
                *e = (*e).max(n);
            }
        }
        Levels { trace, by_id: trace.spans.iter().map(|s| (s.span_id, s)).collect(), last_attempt }
    }

    fn retried(&self, s: &SpanRecord) -> bool {
        match (s.parent_id, attempt_of(s)) {
            (Some(p), Some(n)) => self.last_attempt.get(&p).is_some_and(|last| *last > n),
            _ => false,
        }
    }

    pub(crate) fn of(&self, s: &SpanRecord) -> Level {
        // The root of a failed run is ERROR whatever its own status (it may have been cut
        // short by the run's deadline).
        if s.parent_id.is_none() && matches!(self.trace.status, SpanStatus::Error { .. }) {
            return Level::Error;
        }
        match &s.status {
            SpanStatus::Ok => match s.attributes.get("level").and_then(Value::as_str) {
                Some("WARNING") => Level::Warning,
                Some("ERROR") => Level::Error,
                _ => Level::Default,
            },
            SpanStatus::Cancelled { .. } => Level::Warning,
            SpanStatus::Error { .. } => {
                // Up the chain of failed spans: an attempt on the way that was retried, or a
                // span that survived the failure, means this failure did not end the run.
                let mut cur = s;
                // Bounded by the span count, in case a broken record has a cycle.
                for _ in 0..=self.by_id.len() {
                    if self.retried(cur) {
                        return Level::Warning;
                    }
                    match cur.parent_id.and_then(|p| self.by_id.get(&p)) {
                        Some(p) if matches!(p.status, SpanStatus::Error { .. }) => cur = p,
                        Some(_) => return Level::Warning,
                        // The top (or a parent that was not recorded): the run decides.
                        None => break,
                    }
                }
                if matches!(self.trace.status, SpanStatus::Error { .. }) {
                    Level::Error
                } else {
                    Level::Warning
                }
            }
        }
    }
}

/// Langfuse's observation type of a span: `generation` for a recorded LLM call, `event` for
/// a warning, the type a node was declared as, else `span`.
pub(crate) fn observation_type(s: &SpanRecord) -> &str {
    match s.kind {
        SpanKind::Generation => "generation",
        SpanKind::Event => "event",
        _ => s.attributes.get("observation_type").and_then(Value::as_str).unwrap_or("span"),
    }
}

/// A node declared [`ObservationType::Generation`](crate::ObservationType) *is* the LLM call:
/// the generations its exec recorded are folded into it (model, parameters and prompt of the
/// last call, usage and cost summed, the first completion start, the last call's messages
/// and output), so Langfuse shows one generation and counts its tokens once. Failed calls
/// stay as their own (usage-less) generations under their attempts. `None` when the trace
/// has no such node (the usual case: nothing is copied).
pub(crate) fn fold_generation_nodes(trace: &TraceRecord) -> Option<TraceRecord> {
    if !has_generation_nodes(trace) {
        return None;
    }
    let by_id: HashMap<SpanId, &SpanRecord> = trace.spans.iter().map(|s| (s.span_id, s)).collect();
    let is_gen_node = is_generation_node;
    let node_of = |s: &SpanRecord| {
        let mut cur = s.parent_id;
        for _ in 0..=by_id.len() {
            let p = by_id.get(&cur?)?;
            if p.kind == SpanKind::Node {
                return Some(p.span_id);
            }
            cur = p.parent_id;
        }
        None
    };
    let mut folded: HashMap<SpanId, (crate::trace::GenerationRecord, Option<Value>, Option<Value>)> = HashMap::new();
    let mut gone = std::collections::HashSet::new();
    // Spans are in the order they ended, so "last" is the last call to finish.
    for s in &trace.spans {
        let (Some(g), SpanStatus::Ok) = (&s.generation, &s.status) else { continue };
        let Some(node) = node_of(s).filter(|n| by_id.get(n).is_some_and(|n| is_gen_node(n))) else { continue };
        let e = folded.entry(node).or_default();
        let m = &mut e.0;
        if g.model.is_some() {
            m.model = g.model.clone();
        }
        if !g.model_parameters.is_empty() {
            m.model_parameters = g.model_parameters.clone();
        }
        if g.prompt_name.is_some() {
            m.prompt_name = g.prompt_name.clone();
            m.prompt_version = g.prompt_version;
        }
        for (k, v) in &g.usage {
            *m.usage.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &g.cost {
            *m.cost.entry(k.clone()).or_default() += v;
        }
        m.completion_start_unix_nanos = match (m.completion_start_unix_nanos, g.completion_start_unix_nanos) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if s.input.is_some() {
            e.1 = s.input.clone();
        }
        if s.output.is_some() {
            e.2 = s.output.clone();
        }
        gone.insert(s.span_id);
    }
    let mut t = trace.clone();
    t.spans.retain(|s| !gone.contains(&s.span_id));
    for s in &mut t.spans {
        if let Some((g, input, output)) = folded.remove(&s.span_id) {
            s.generation = Some(Box::new(g));
            if input.is_some() {
                s.input = input;
            }
            if output.is_some() {
                s.output = output;
            }
        }
    }
    Some(t)
}

/// A node declared a generation (see [`fold_generation_nodes`]).
fn is_generation_node(s: &SpanRecord) -> bool {
    s.kind == SpanKind::Node && s.attributes.get("observation_type").and_then(Value::as_str) == Some("generation")
}

/// Whether [`fold_generation_nodes`] changes the trace.
pub(crate) fn has_generation_nodes(trace: &TraceRecord) -> bool {
    trace.spans.iter().any(is_generation_node)
}

/// Whether `a` and `b` are written as the same JSON text: equal, floats equal to the bit
/// (`0.0 == -0.0`, but the two are written differently), entries in the same order.
pub(crate) fn same_json(a: &Value, b: &Value) -> bool {
    if std::ptr::eq(a, b) {
        return true;
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_nested(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, va), (kb, vb))| same_str(ka, kb) && same_nested(va, vb))
        }
        _ => same_leaf(a, b),
    }
}

/// [`same_json`] for a value inside an array or object: most are strings or numbers, and
/// are compared here rather than by a call per entry.
#[inline(always)]
fn same_nested(a: &Value, b: &Value) -> bool {
    match a {
        Value::Array(_) | Value::Object(_) => same_json(a, b),
        _ => same_leaf(a, b),
    }
}

/// [`same_json`] for `a` not an array or object.
#[inline(always)]
fn same_leaf(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => {
            x == y && x.is_f64() == y.is_f64() && x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits)
        }
        (Value::String(x), Value::String(y)) => same_str(x, y),
        _ => false,
    }
}

/// `a == b`, the short strings most keys and values are compared in a few word loads, not
/// a call to `memcmp`.
#[inline(always)]
fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    fn word(x: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&x[at..at + 8]);
        u64::from_le_bytes(w)
    }
    fn half(x: &[u8], at: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&x[at..at + 4]);
        u32::from_le_bytes(w)
    }
    if (8..=16).contains(&n) {
        // Two overlapping reads cover the string.
        word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8)
    } else if (17..=32).contains(&n) {
        // Four: two from the front, two from the back.
        word(a, 0) == word(b, 0)
            && word(a, 8) == word(b, 8)
            && word(a, n - 16) == word(b, n - 16)
            && word(a, n - 8) == word(b, n - 8)
    } else if (4..8).contains(&n) {
        half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4)
    } else {
        a == b
    }
}

/// `kind_name` and `kind_entry` from one list of names, so the two cannot disagree.
macro_rules! kind_names {
    ($($kind:ident => $name:literal),* $(,)?) => {
        /// The name a span kind has in metadata (`span_kind`).
        pub(crate) fn kind_name(k: SpanKind) -> &'static str {
            match k {
                $(SpanKind::$kind => $name,)*
                #[allow(unreachable_patterns)]
                _ => "span",
            }
        }

        /// A span's `span_kind` metadata entry as JSON text with its trailing comma, written
        /// in one copy (every span's metadata has one).
        fn kind_entry(k: SpanKind) -> &'static str {
            match k {
                $(SpanKind::$kind => concat!("\"span_kind\":\"", $name, "\","),)*
                #[allow(unreachable_patterns)]
                _ => "\"span_kind\":\"span\",",
            }
        }
    };
}

kind_names! {
    Flow => "flow",
    BatchRun => "batch_run",
    Node => "node",
    Prep => "prep",
    Exec => "exec",
    Item => "item",
    Attempt => "attempt",
    Wait => "wait",
    Fallback => "fallback",
    Post => "post",
    Generation => "generation",
    Event => "event",
}

/// A value added to a span's or trace's attributes in its metadata.
#[derive(Clone, Copy)]
enum Extra<'a> {
    Str(&'a str),
    /// A name of ours, which JSON writes as it is (no byte of it needs an escape).
    Name(&'static str),
    Strs(&'a [String]),
    U64(u64),
    /// A span's kind, under `span_kind` (see [`kind_entry`]).
    Kind(SpanKind),
}

impl Serialize for Extra<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Extra::Str(v) => s.serialize_str(v),
            Extra::Name(v) => s.serialize_str(v),
            Extra::Strs(v) => v.serialize(s),
            Extra::U64(v) => s.serialize_u64(*v),
            Extra::Kind(k) => s.serialize_str(kind_name(*k)),
        }
    }
}

/// Metadata as one JSON object: the recorded entries with a few added under their own keys
/// (an added key replaces a recorded one of the same name). Serialised straight from the
/// record, in the order a `serde_json::Map` keeps (sorted keys), so nothing is copied.
pub(crate) struct Metadata<'a> {
    base: &'a Map<String, Value>,
    /// Sorted by key, unique: the first `n`. Keys are names of ours (no byte needs an escape).
    extras: [(&'static str, Extra<'a>); 6],
    n: usize,
}

impl<'a> Metadata<'a> {
    fn new(base: &'a Map<String, Value>) -> Self {
        Metadata { base, extras: [("", Extra::U64(0)); 6], n: 0 }
    }

    /// Adds an entry; entries are added in key order.
    fn push(&mut self, k: &'static str, v: Extra<'a>) {
        debug_assert!(self.n == 0 || self.extras[self.n - 1].0 < k, "extras in key order");
        self.extras[self.n] = (k, v);
        self.n += 1;
    }

    fn extras(&self) -> impl Iterator<Item = (&'static str, Extra<'a>)> + '_ {
        self.extras[..self.n].iter().copied()
    }
}

impl Metadata<'_> {
    /// The object as compact JSON text appended to `buf`: the bytes `serde_json` writes for
    /// it (tested), without a serializer or a map in between.
    pub(crate) fn write_json(&self, buf: &mut Vec<u8>) {
        use super::otlp::{write_str, write_value};
        /// An added entry: its key (a name of ours) and value.
        fn extra(buf: &mut Vec<u8>, k: &str, v: Extra<'_>) {
            if let Extra::Kind(kind) = v {
                debug_assert_eq!(k, "span_kind");
                buf.extend_from_slice(kind_entry(kind).as_bytes());
                return;
            }
            buf.push(b'"');
            buf.extend_from_slice(k.as_bytes());
            buf.extend_from_slice(b"\":");
            match v {
                Extra::Str(s) => write_str(buf, s),
                Extra::Name(s) => {
                    buf.push(b'"');
                    buf.extend_from_slice(s.as_bytes());
                    buf.push(b'"');
                }
                Extra::Strs(a) => {
                    buf.push(b'[');
                    for (i, s) in a.iter().enumerate() {
                        if i > 0 {
                            buf.push(b',');
                        }
                        write_str(buf, s);
                    }
                    buf.push(b']');
                }
                Extra::U64(n) => super::otlp::write_u64(buf, n),
                Extra::Kind(_) => {}
            }
            buf.push(b',');
        }
        buf.push(b'{');
        let extras = &self.extras[..self.n];
        let mut e = 0;
        for (k, v) in self.base {
            while e < extras.len() && extras[e].0 < k.as_str() {
                extra(buf, extras[e].0, extras[e].1);
                e += 1;
            }
            // An added value replaces the recorded one of the same name.
            if e < extras.len() && extras[e].0 == k.as_str() {
                extra(buf, extras[e].0, extras[e].1);
                e += 1;
                continue;
            }
            write_str(buf, k);
            buf.push(b':');
            write_value(buf, v);
            buf.push(b',');
        }
        for &(k, v) in &extras[e..] {
            extra(buf, k, v);
        }
        // Every entry ends in a comma; the last one's is the object's end.
        match buf.last_mut() {
            Some(c @ b',') => *c = b'}',
            _ => buf.push(b'}'),
        }
    }
}

impl Serialize for Metadata<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let shadowed = self.extras().filter(|(k, _)| self.base.contains_key(*k)).count();
        let mut m = s.serialize_map(Some(self.base.len() + self.extras().count() - shadowed))?;
        let mut extras = self.extras().peekable();
        for (k, v) in self.base {
            while let Some((ek, ev)) = extras.next_if(|(ek, _)| *ek < k.as_str()) {
                m.serialize_entry(ek, &ev)?;
            }
            // An added value replaces the recorded one of the same name.
            if let Some((ek, ev)) = extras.next_if(|(ek, _)| *ek == k.as_str()) {
                m.serialize_entry(ek, &ev)?;
                continue;
            }
            m.serialize_entry(k, v)?;
        }
        for (ek, ev) in extras {
            m.serialize_entry(ek, &ev)?;
        }
        m.end()
    }
}

/// An observation's metadata, flat and structured: the span's attributes (`node_type`,
/// `attempt`, `item_index`, `batch_index`, `changed_keys` …) as top-level keys, plus
/// `span_kind`, and for a failure `error_kind`, `error_chain` (an array) and `panic_location`.
/// Top-level keys are what Langfuse lets users filter on.
pub(crate) fn metadata(s: &SpanRecord) -> Metadata<'_> {
    // In key order (see `Metadata::push`).
    let mut m = Metadata::new(&s.attributes);
    match &s.status {
        SpanStatus::Error { kind, chain, location, .. } => {
            if !chain.is_empty() {
                m.push("error_chain", Extra::Strs(chain));
            }
            m.push("error_kind", Extra::Str(kind));
            if let Some(l) = location {
                m.push("panic_location", Extra::Str(l));
            }
        }
        SpanStatus::Cancelled { .. } => m.push("error_kind", Extra::Name("cancelled")),
        SpanStatus::Ok => {}
    }
    m.push("span_kind", Extra::Kind(s.kind));
    m
}

/// The trace's own metadata, as both encoders send it: the user's entries plus
/// `framework`, the run's `action`, its error, and `spans_dropped` when spans were lost.
pub(crate) fn trace_metadata(t: &TraceRecord) -> Metadata<'_> {
    // In key order (see `Metadata::push`): action, error, error_kind, framework,
    // spans_dropped, status.
    let mut m = Metadata::new(&t.metadata);
    if let Some(a) = &t.action {
        m.push("action", Extra::Str(a));
    }
    match &t.status {
        SpanStatus::Ok => {}
        SpanStatus::Error { kind, message, .. } => {
            m.push("error", Extra::Str(message));
            m.push("error_kind", Extra::Str(kind));
        }
        SpanStatus::Cancelled { reason } => m.push("error", Extra::Str(reason)),
    }
    m.push("framework", Extra::Name("flowtrace"));
    if t.spans_dropped > 0 {
        m.push("spans_dropped", Extra::U64(t.spans_dropped));
    }
    match &t.status {
        SpanStatus::Ok => {}
        SpanStatus::Error { .. } => m.push("status", Extra::Name("error")),
        SpanStatus::Cancelled { .. } => m.push("status", Extra::Name("cancelled")),
    }
    m
}

/// Checks an environment name the way Langfuse's SDKs do (`^(?!langfuse)[a-z0-9-_]+$`, at
/// most 40 characters): the server silently turns anything else into `default`, so a wrong
/// name is refused here, loudly, instead.
pub(crate) fn check_environment(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = !v.is_empty()
        && v.len() <= 40
        && !v.starts_with("langfuse")
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?}: expected lower-case letters, digits, '-' or '_' (at most 40, not starting with \"langfuse\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_same_when_their_bytes_are() {
        let base: String = ('a'..='z').chain('A'..='Z').collect();
        for n in 0..base.len() {
            let a = &base[..n];
            // The same bytes elsewhere in memory.
            let copy = String::from(a);
            assert!(same_str(a, a) && same_str(a, &copy));
            assert!(n == 0 || !same_str(a, &base[..n - 1]), "{n}: lengths differ");
            for at in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[at] = b'_';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_str(a, &b) && !same_str(&b, a), "{a} {b}");
                assert!(!same_json(&Value::from(a), &Value::from(b.as_str())));
            }
        }
    }

    #[test]
    fn environment_names_follow_langfuse() {
        assert_eq!(check_environment("production").unwrap(), "production");
        assert_eq!(check_environment("staging-eu_1").unwrap(), "staging-eu_1");
        for bad in ["", "Prod", "langfuse-x", "a b", &"x".repeat(41)] {
            assert!(check_environment(bad).is_err(), "{bad}");
        }
    }
}
