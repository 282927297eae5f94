//! Langfuse's legacy batch ingestion (`POST /api/public/ingestion`, self-hosted v2): one
//! `trace-create` per trace and one complete `span-create` per span, as JSON.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::observation::{self, Levels};
use super::otlp::{write_f64, write_map, write_object, write_str, write_u64, NoWatch, Texts, Watch};
use crate::trace::{GenerationRecord, SpanId, SpanKind, TraceId, TraceRecord};

/// A fresh envelope id (UUID-shaped, unique within and across processes in practice): the
/// event count mixed (SplitMix64, a bijection) with two halves of a per-process random seed.
pub(super) fn envelope_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    let &(sa, sb) = SEED.get_or_init(|| {
        let seed = std::collections::hash_map::RandomState::new();
        let half = |x: u64| {
            let mut h = seed.build_hasher();
            h.write_u64(x);
            h.finish()
        };
        (half(0), half(1))
    });
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let n = N.fetch_add(1, Ordering::Relaxed);
    let v = ((mix(sa ^ n) as u128) << 64) | mix(sb ^ n) as u128;
    // Mark as a version-4 UUID so strict validators accept it.
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    TraceId(v).to_uuid()
}

/// The observation id Langfuse gets for one of our spans: its 16 hex digits.
#[cfg(test)]
pub(super) fn observation_id(s: &crate::trace::SpanRecord) -> String {
    s.span_id.to_string()
}

/// The events for one trace, serialised, each with its envelope id, appended to `out`;
/// returns how many were added.
pub(super) fn encode_trace_bytes(t: &TraceRecord, out: &mut Vec<(String, Vec<u8>)>) -> usize {
    encode_trace_bytes_in(t, None, out)
}

/// `"key":` after a comma (fields after the first; keys are plain ASCII).
fn key(buf: &mut Vec<u8>, k: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(k.as_bytes());
    buf.extend_from_slice(b"\":");
}

/// A timestamp as `format_timestamp` writes it, quoted, without a `String` in between: its
/// digits put into a fixed array, appended at once (an event has two or three).
fn timestamp(buf: &mut Vec<u8>, unix_nanos: u64) {
    thread_local! {
        /// The last day written on this thread and its date's digits: a trace's timestamps
        /// are all on one day, nearly always.
        static DAY: std::cell::Cell<(u64, [u8; 10])> = const { std::cell::Cell::new((u64::MAX, [0; 10])) };
    }
    let secs = unix_nanos / 1_000_000_000;
    let micros = (unix_nanos % 1_000_000_000) / 1_000;
    let sod = secs % 86_400;
    let day = secs / 86_400;
    let mut t = *b"\"0000-00-00T00:00:00.000000Z\"";
    let two = |t: &mut [u8; 29], at: usize, v: u64| {
        t[at] = b'0' + (v / 10) as u8;
        t[at + 1] = b'0' + (v % 10) as u8;
    };
    let (last, date) = DAY.get();
    if last == day {
        t[1..11].copy_from_slice(&date);
    } else {
        // Days are never negative here: the year is too.
        let (y, m, d) = crate::trace::model::civil_from_days(day as i64);
        let y = y as u64;
        if y >= 10_000 {
            // Past year 9999 (a broken clock, and past what nanoseconds in a u64 reach).
            buf.push(b'"');
            buf.extend_from_slice(crate::trace::format_timestamp(unix_nanos).as_bytes());
            buf.push(b'"');
            return;
        }
        two(&mut t, 1, y / 100);
        two(&mut t, 3, y % 100);
        two(&mut t, 6, m as u64);
        two(&mut t, 9, d as u64);
        let mut date = [0; 10];
        date.copy_from_slice(&t[1..11]);
        DAY.set((day, date));
    }
    two(&mut t, 12, sod / 3_600);
    two(&mut t, 15, (sod % 3_600) / 60);
    two(&mut t, 18, sod % 60);
    two(&mut t, 21, micros / 10_000);
    two(&mut t, 23, (micros / 100) % 100);
    two(&mut t, 25, micros % 100);
    buf.extend_from_slice(&t);
}

/// A span id as its 16 hex digits, quoted (what `SpanId`'s `Display` writes).
fn span_id(buf: &mut Vec<u8>, id: SpanId) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut d = [0u8; 18];
    d[0] = b'"';
    d[17] = b'"';
    for (i, c) in d[1..17].iter_mut().enumerate() {
        *c = HEX[((id.0 >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf.extend_from_slice(&d);
}

/// The envelope of one event up to its body: `{"id":…,"type":…,"timestamp":…,"body":`.
fn envelope(buf: &mut Vec<u8>, id: &str, ty: &str, at: u64) {
    buf.extend_from_slice(b"{\"id\":");
    write_str(buf, id);
    key(buf, "type");
    write_str(buf, ty);
    key(buf, "timestamp");
    timestamp(buf, at);
    key(buf, "body");
}

/// The fields `generation-create` adds to a span's, in the order v2 servers have always got
/// them.
fn generation_fields(buf: &mut Vec<u8>, g: &GenerationRecord) {
    if let Some(m) = &g.model {
        key(buf, "model");
        write_str(buf, m);
    }
    if !g.model_parameters.is_empty() {
        key(buf, "modelParameters");
        write_map(buf, &g.model_parameters);
    }
    // v2's form (`input`, `output`, `total`, `unit`, `*Cost`, in key order); v2 ignores
    // `usageDetails`.
    if !g.usage.is_empty() || !g.cost.is_empty() {
        key(buf, "usage");
        buf.push(b'{');
        let mut first = true;
        let mut sep = |buf: &mut Vec<u8>, k: &str| {
            if !std::mem::take(&mut first) {
                buf.push(b',');
            }
            buf.push(b'"');
            buf.extend_from_slice(k.as_bytes());
            buf.extend_from_slice(b"\":");
        };
        for (k, cost) in [("input", "inputCost"), ("output", "outputCost"), ("total", "totalCost")] {
            if let Some(n) = g.usage.get(k) {
                sep(buf, k);
                write_u64(buf, *n);
            }
            if let Some(c) = g.cost.get(k) {
                sep(buf, cost);
                write_f64(buf, *c);
            }
        }
        if !g.usage.is_empty() {
            sep(buf, "unit");
            buf.extend_from_slice(b"\"TOKENS\"");
        }
        buf.push(b'}');
    }
    if !g.usage.is_empty() {
        key(buf, "usageDetails");
        write_object(buf, &g.usage, |b, v| write_u64(b, *v));
    }
    if !g.cost.is_empty() {
        key(buf, "costDetails");
        write_object(buf, &g.cost, |b, v| write_f64(b, *v));
    }
    if let Some(t) = g.completion_start_unix_nanos {
        key(buf, "completionStartTime");
        timestamp(buf, t);
    }
    // Langfuse takes both or neither.
    if let (Some(n), Some(v)) = (&g.prompt_name, g.prompt_version) {
        key(buf, "promptName");
        write_str(buf, n);
        key(buf, "promptVersion");
        write_u64(buf, u64::from(v));
    }
}

/// Like [`encode_trace_bytes`], with the Langfuse environment on the trace and on every
/// observation. Each event is written as JSON text straight into its buffer: no body
/// structs, maps or timestamp strings in between.
pub(super) fn encode_trace_bytes_in(
    t: &TraceRecord,
    environment: Option<&str>,
    out: &mut Vec<(String, Vec<u8>)>,
) -> usize {
    encode_trace_bytes_watched(t, environment, &mut NoWatch, out)
}

/// An input or output written (and shown to `w`, with the length of its text), its JSON
/// text written once per trace (see `otlp::Texts`: the same values come back in a trace's
/// events); a null one is left out of the event, and shown to `w` as the four bytes it
/// would take.
fn watched_value<'t, W: Watch>(
    buf: &mut Vec<u8>,
    k: &str,
    v: &'t Value,
    w: &mut W,
    texts: &mut Texts<'t>,
    text: &mut Vec<u8>,
) {
    if v.is_null() {
        w.value(4);
        return;
    }
    key(buf, k);
    let r = texts.of(text, v, w);
    buf.extend_from_slice(&text[r]);
}

/// The inputs and outputs [`encode_trace_bytes_watched`] writes (and shows its `Watch`), as
/// for OTLP (see `otlp::watched_values`): the trace's own always (its `trace-create` carries
/// them), a span's unless it is the root (which carries the trace's); `None` when a
/// generation node's calls are folded into it, so what is written is not what is recorded.
pub(super) fn watched_values(trace: &TraceRecord) -> Option<(bool, impl Fn(&crate::trace::SpanRecord) -> bool)> {
    if observation::has_generation_nodes(trace) {
        return None;
    }
    let root = trace.root().map(|r| r.span_id);
    Some((true, move |s: &crate::trace::SpanRecord| Some(s.span_id) != root))
}

/// [`encode_trace_bytes_in`], every input and output the events carry shown to `w` as it
/// is written (see [`watched_values`] for which those are).
pub(super) fn encode_trace_bytes_watched<W: Watch>(
    t: &TraceRecord,
    environment: Option<&str>,
    w: &mut W,
    out: &mut Vec<(String, Vec<u8>)>,
) -> usize {
    let before = out.len();
    let folded = observation::fold_generation_nodes(t);
    let t = folded.as_ref().unwrap_or(t);
    let trace_id = t.trace_id.to_uuid();
    let levels = Levels::new(t);
    let root = t.root().map(|r| r.span_id);

    let id = envelope_id();
    let mut buf = Vec::with_capacity(512);
    envelope(&mut buf, &id, "trace-create", t.end_unix_nanos);
    buf.extend_from_slice(b"{\"id\":");
    write_str(&mut buf, &trace_id);
    key(&mut buf, "timestamp");
    timestamp(&mut buf, t.start_unix_nanos);
    key(&mut buf, "name");
    write_str(&mut buf, &t.name);
    let (mut texts, mut text) = (Texts::new(), Vec::new());
    for (k, v) in [("input", &t.input), ("output", &t.output)] {
        watched_value(&mut buf, k, v, w, &mut texts, &mut text);
    }
    for (k, v) in [("sessionId", &t.session_id), ("userId", &t.user_id)] {
        if let Some(v) = v {
            key(&mut buf, k);
            write_str(&mut buf, v);
        }
    }
    if !t.tags.is_empty() {
        key(&mut buf, "tags");
        buf.push(b'[');
        for (i, tag) in t.tags.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            write_str(&mut buf, tag);
        }
        buf.push(b']');
    }
    for (k, v) in [("release", t.release.as_deref()), ("version", t.version.as_deref()), ("environment", environment)] {
        if let Some(v) = v {
            key(&mut buf, k);
            write_str(&mut buf, v);
        }
    }
    key(&mut buf, "metadata");
    observation::trace_metadata(t).write_json(&mut buf);
    buf.extend_from_slice(b"}}");
    let mut size = buf.len();
    out.push((id, buf));

    for s in &t.spans {
        // The root observation shows the run's input and output (the store at start and end),
        // like the trace itself, so both protocols display the same root.
        let is_root = Some(s.span_id) == root;
        let (input, output) =
            if is_root { (Some(&t.input), Some(&t.output)) } else { (s.input.as_ref(), s.output.as_ref()) };
        // Observation types beyond these (agent, tool, …) are refused by v2 servers: they
        // travel as `metadata.observation_type` on a span.
        let ty = match s.kind {
            SpanKind::Event => "event-create",
            _ if s.generation.is_some() => "generation-create",
            _ => "span-create",
        };
        let id = envelope_id();
        // Events of one trace are much alike in size.
        let mut buf = Vec::with_capacity(size + 64);
        envelope(&mut buf, &id, ty, s.end_unix_nanos);
        buf.extend_from_slice(b"{\"id\":");
        span_id(&mut buf, s.span_id);
        key(&mut buf, "traceId");
        write_str(&mut buf, &trace_id);
        key(&mut buf, "name");
        write_str(&mut buf, &s.name);
        key(&mut buf, "startTime");
        timestamp(&mut buf, s.start_unix_nanos);
        if s.kind != SpanKind::Event {
            key(&mut buf, "endTime");
            timestamp(&mut buf, s.end_unix_nanos);
        }
        if let Some(p) = s.parent_id {
            key(&mut buf, "parentObservationId");
            span_id(&mut buf, p);
        }
        for (k, v) in [("input", input), ("output", output)] {
            if let Some(v) = v {
                watched_value(&mut buf, k, v, w, &mut texts, &mut text);
            }
        }
        key(&mut buf, "level");
        write_str(&mut buf, levels.of(s).as_str());
        let status = if is_root && t.status.is_error() { t.status.message() } else { s.status.message() };
        if let Some(m) = status.or_else(|| (s.kind == SpanKind::Event).then_some(&*s.name)) {
            key(&mut buf, "statusMessage");
            write_str(&mut buf, m);
        }
        for (k, v) in [("version", t.version.as_deref()), ("environment", environment)] {
            if let Some(v) = v {
                key(&mut buf, k);
                write_str(&mut buf, v);
            }
        }
        key(&mut buf, "metadata");
        observation::metadata(s).write_json(&mut buf);
        if let Some(g) = &s.generation {
            generation_fields(&mut buf, g);
        }
        buf.extend_from_slice(b"}}");
        size = buf.len();
        out.push((id, buf));
    }
    out.len() - before
}

/// The encoder as it was (serde, a struct per body), kept as the oracle the hand-written one
/// is checked against byte for byte.
#[cfg(test)]
pub(super) mod oracle {
    use super::*;
    use crate::trace::format_timestamp;
    use serde_json::{Map, Value};

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct TraceBody<'a> {
        id: &'a str,
        timestamp: String,
        name: &'a str,
        #[serde(skip_serializing_if = "Value::is_null")]
        input: &'a Value,
        #[serde(skip_serializing_if = "Value::is_null")]
        output: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        tags: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        release: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        environment: Option<&'a str>,
        metadata: observation::Metadata<'a>,
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct SpanBody<'a> {
        id: String,
        trace_id: &'a str,
        name: &'a str,
        start_time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        end_time: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        parent_observation_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<&'a Value>,
        level: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        status_message: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        environment: Option<&'a str>,
        metadata: observation::Metadata<'a>,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        generation: Option<GenerationFields<'a>>,
    }

    /// The fields `generation-create` adds to a span's.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct GenerationFields<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        #[serde(skip_serializing_if = "Map::is_empty")]
        model_parameters: &'a Map<String, Value>,
        /// v2's form (`input`, `output`, `total`, `unit`, `*Cost`); v2 ignores `usageDetails`.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Map<String, Value>>,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        usage_details: &'a std::collections::BTreeMap<String, u64>,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        cost_details: &'a std::collections::BTreeMap<String, f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        completion_start_time: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        prompt_name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        prompt_version: Option<u32>,
    }

    /// Usage in the form v2 servers read: tokens, and the cost when given.
    fn v2_usage(g: &crate::trace::GenerationRecord) -> Option<Map<String, Value>> {
        if g.usage.is_empty() && g.cost.is_empty() {
            return None;
        }
        let mut m = Map::new();
        for (k, v2) in [("input", "input"), ("output", "output"), ("total", "total")] {
            if let Some(n) = g.usage.get(k) {
                m.insert(v2.into(), (*n).into());
            }
        }
        if !g.usage.is_empty() {
            m.insert("unit".into(), "TOKENS".into());
        }
        for (k, v2) in [("input", "inputCost"), ("output", "outputCost"), ("total", "totalCost")] {
            if let Some(c) = g.cost.get(k) {
                m.insert(v2.into(), (*c).into());
            }
        }
        Some(m)
    }

    /// Like [`encode_trace_bytes`], with the Langfuse environment on the trace and on every
    /// observation.
    pub(super) fn encode_trace_bytes_in(
        t: &TraceRecord,
        environment: Option<&str>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> usize {
        let before = out.len();
        let folded = observation::fold_generation_nodes(t);
        let t = folded.as_ref().unwrap_or(t);
        let trace_id = t.trace_id.to_uuid();
        let metadata = observation::trace_metadata(t);
        let levels = Levels::new(t);
        let root = t.root().map(|r| r.span_id);
        let mut push = |ty: &'static str, timestamp: String, body: &dyn erased::Ser| {
            let id = envelope_id();
            let mut buf = Vec::with_capacity(256);
            buf.extend_from_slice(b"{\"id\":");
            let _ = serde_json::to_writer(&mut buf, &id);
            buf.extend_from_slice(b",\"type\":");
            let _ = serde_json::to_writer(&mut buf, ty);
            buf.extend_from_slice(b",\"timestamp\":");
            let _ = serde_json::to_writer(&mut buf, &timestamp);
            buf.extend_from_slice(b",\"body\":");
            body.write(&mut buf);
            buf.push(b'}');
            out.push((id, buf));
        };
        let body = TraceBody {
            id: &trace_id,
            timestamp: format_timestamp(t.start_unix_nanos),
            name: &t.name,
            input: &t.input,
            output: &t.output,
            session_id: t.session_id.as_deref(),
            user_id: t.user_id.as_deref(),
            tags: &t.tags,
            release: t.release.as_deref(),
            version: t.version.as_deref(),
            environment,
            metadata,
        };
        push("trace-create", format_timestamp(t.end_unix_nanos), &body);
        for s in &t.spans {
            let level = levels.of(s);
            // The root observation shows the run's input and output (the store at start and end),
            // like the trace itself, so both protocols display the same root.
            let is_root = Some(s.span_id) == root;
            let (input, output) =
                if is_root { (Some(&t.input), Some(&t.output)) } else { (s.input.as_ref(), s.output.as_ref()) };
            let body = SpanBody {
                id: observation_id(s),
                trace_id: &trace_id,
                name: &s.name,
                start_time: format_timestamp(s.start_unix_nanos),
                end_time: (s.kind != SpanKind::Event).then(|| format_timestamp(s.end_unix_nanos)),
                parent_observation_id: s.parent_id.map(|p| p.to_string()),
                input: input.filter(|v| !v.is_null()),
                output: output.filter(|v| !v.is_null()),
                level: level.as_str(),
                status_message: if is_root && t.status.is_error() { t.status.message() } else { s.status.message() }
                    .or_else(|| (s.kind == SpanKind::Event).then_some(&*s.name)),
                version: t.version.as_deref(),
                environment,
                metadata: observation::metadata(s),
                generation: s.generation.as_deref().map(|g| GenerationFields {
                    model: g.model.as_deref(),
                    model_parameters: &g.model_parameters,
                    usage: v2_usage(g),
                    usage_details: &g.usage,
                    cost_details: &g.cost,
                    completion_start_time: g.completion_start_unix_nanos.map(format_timestamp),
                    // Langfuse takes both or neither.
                    prompt_name: g.prompt_version.and(g.prompt_name.as_deref()),
                    prompt_version: g.prompt_name.as_ref().and(g.prompt_version),
                }),
            };
            // Observation types beyond these (agent, tool, …) are refused by v2 servers: they
            // travel as `metadata.observation_type` on a span.
            let ty = match s.kind {
                SpanKind::Event => "event-create",
                _ if s.generation.is_some() => "generation-create",
                _ => "span-create",
            };
            push(ty, format_timestamp(s.end_unix_nanos), &body);
        }
        out.len() - before
    }

    mod erased {
        /// Serialises a body into a buffer (object-safe).
        pub(super) trait Ser {
            fn write(&self, buf: &mut Vec<u8>);
        }
        impl<T: serde::Serialize> Ser for T {
            fn write(&self, buf: &mut Vec<u8>) {
                if serde_json::to_writer(&mut *buf, self).is_err() {
                    buf.extend_from_slice(b"null");
                }
            }
        }
    }
}

/// The events for one trace as JSON values, appended to `out`; returns how many were added.
pub fn encode_trace(t: &TraceRecord, out: &mut Vec<Value>) -> usize {
    let mut raw = Vec::new();
    encode_trace_bytes(t, &mut raw);
    let n = raw.len();
    out.extend(raw.into_iter().filter_map(|(_, b)| serde_json::from_slice(&b).ok()));
    n
}

/// The request body for a batch of events.
pub fn batch_body(events: &[Value], public_key: &str) -> Vec<u8> {
    let body = json!({
        "batch": events,
        "metadata": {
            "batch_size": events.len(),
            "sdk_name": "flowtrace",
            "sdk_version": env!("CARGO_PKG_VERSION"),
            "public_key": public_key,
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// One per-event error of a 207 answer.
#[derive(Debug, Clone)]
pub(super) struct EventError {
    /// The envelope id.
    pub id: String,
    /// The event's status.
    pub status: u16,
    /// The server's message (and detail).
    pub message: String,
}

/// The errors listed in a 207 answer (an unreadable answer lists none). Only `errors` is
/// read into values: the `successes`, one per event, are skipped as they are parsed.
pub(super) fn parse_multi_status(body: &[u8]) -> Vec<EventError> {
    #[derive(serde::Deserialize)]
    struct MultiStatus {
        #[serde(default)]
        errors: Option<Vec<Value>>,
    }
    let Ok(MultiStatus { errors: Some(errors) }) = serde_json::from_slice::<MultiStatus>(body) else {
        return Vec::new();
    };
    errors
        .iter()
        .map(|e| {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            let detail = match e.get("error") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            EventError {
                id: e.get("id").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
                status: e.get("status").and_then(Value::as_u64).unwrap_or(500) as u16,
                message: if detail.is_empty() { msg.to_owned() } else { format!("{msg}: {detail}") },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceId;

    /// The events without their envelope ids (fresh for every event).
    fn without_ids(events: Vec<(String, Vec<u8>)>) -> Vec<String> {
        events
            .into_iter()
            .map(|(id, json)| String::from_utf8(json).unwrap().replacen(&format!("{{\"id\":\"{id}\""), "{\"id\":_", 1))
            .collect()
    }

    #[test]
    fn events_are_the_bytes_the_serde_encoder_wrote() {
        let mut traces = crate::export::otlp::tests::traces();
        // A generation without a prompt version, and one with neither usage nor cost.
        let mut t = traces[0].clone();
        for s in &mut t.spans {
            if let Some(g) = s.generation.as_mut() {
                g.prompt_version = None;
                g.usage.clear();
                g.cost.insert("total".into(), f64::NAN);
            }
        }
        traces.push(t);
        for t in traces {
            for env in [None, Some("production")] {
                let (mut new, mut old) = (Vec::new(), Vec::new());
                let n = encode_trace_bytes_in(&t, env, &mut new);
                assert_eq!(n, oracle::encode_trace_bytes_in(&t, env, &mut old));
                for e in &new {
                    serde_json::from_slice::<Value>(&e.1).expect("valid JSON");
                }
                assert_eq!(without_ids(new), without_ids(old));
            }
        }
    }

    #[test]
    fn ids_are_uuids() {
        for v in [0u128, 1, u128::MAX, 0x0123456789abcdef0123456789abcdef] {
            let h = format!("{v:032x}");
            let text = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            assert_eq!(TraceId(v).to_uuid(), text);
        }
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| envelope_id()).collect();
        assert_eq!(ids.len(), 10_000, "distinct");
        assert!(ids.iter().all(|id| id.len() == 36 && id.as_bytes()[14] == b'4'), "version 4");
    }

    #[test]
    fn a_multi_status_answer_lists_its_errors_only() {
        let body = br#"{"successes":[{"id":"a","status":201},{"id":"b","status":201}],"errors":[{"id":"c","status":400,"message":"bad","error":{"k":1}},{"id":"d","status":503,"message":"later","error":null},{"status":"x"}]}"#;
        let got: Vec<_> = parse_multi_status(body).into_iter().map(|e| (e.id, e.status, e.message)).collect();
        assert_eq!(
            got,
            [
                ("c".to_string(), 400, r#"bad: {"k":1}"#.to_string()),
                ("d".into(), 503, "later".into()),
                ("unknown".into(), 500, String::new())
            ]
        );
        for unreadable in
            [&b""[..], b"[]", b"{\"errors\":null}", b"{\"errors\":\"x\"}", b"{\"successes\":[]}", b"{\"errors\":["]
        {
            assert!(parse_multi_status(unreadable).is_empty());
        }
    }

    #[test]
    fn timestamps_are_written_as_format_timestamp_writes_them() {
        for t in
            // Days in turn, and times on the day written last (its date remembered).
            [
                0,
                1,
                999,
                1_000,
                1_795_892_413_638_615_123,
                1_795_892_413_638_615_123 + 3_600_000_000_000,
                1_795_852_800_000_000_000,
                951_782_400_000_000_000,
                253_402_300_799_999_999,
                u64::MAX,
                u64::MAX - 1_000_000_000,
            ]
        {
            let mut b = Vec::new();
            timestamp(&mut b, t);
            assert_eq!(String::from_utf8(b).unwrap(), format!("\"{}\"", crate::trace::format_timestamp(t)), "{t}");
            let mut b = Vec::new();
            span_id(&mut b, SpanId(t));
            assert_eq!(String::from_utf8(b).unwrap(), format!("\"{}\"", SpanId(t)));
        }
    }
}
