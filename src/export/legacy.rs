//! Langfuse's legacy batch ingestion (`POST /api/public/ingestion`, self-hosted v2): one
//! `trace-create` per trace and one complete `span-create` per span, as JSON.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use super::observation::{self, Levels};
use crate::trace::{format_timestamp, SpanKind, SpanRecord, TraceRecord};

/// A fresh envelope id (UUID-shaped, unique within and across processes in practice).
pub(super) fn envelope_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let seed = SEED.get_or_init(Default::default);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut a = seed.build_hasher();
    a.write_u64(n);
    let mut b = seed.build_hasher();
    b.write_u64(!n);
    let v = ((a.finish() as u128) << 64) | b.finish() as u128;
    // Mark as a version-4 UUID so strict validators accept it.
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    crate::trace::TraceId(v).to_uuid()
}

/// The observation id Langfuse gets for one of our spans: its 16 hex digits.
pub(super) fn observation_id(s: &SpanRecord) -> String {
    s.span_id.to_string()
}

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

/// The events for one trace, serialised, each with its envelope id, appended to `out`;
/// returns how many were added.
pub(super) fn encode_trace_bytes(t: &TraceRecord, out: &mut Vec<(String, Vec<u8>)>) -> usize {
    encode_trace_bytes_in(t, None, out)
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

/// The errors listed in a 207 answer (an unreadable answer lists none).
pub(super) fn parse_multi_status(body: &[u8]) -> Vec<EventError> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let Some(errors) = v.get("errors").and_then(Value::as_array) else { return Vec::new() };
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
