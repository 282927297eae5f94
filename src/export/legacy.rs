//! Langfuse's legacy batch ingestion (`POST /api/public/ingestion`, self-hosted v2): one
//! `trace-create` per trace and one complete `span-create` per span, as JSON.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use crate::trace::{format_timestamp, SpanRecord, TraceRecord};

/// A fresh envelope id (UUID-shaped, unique within and across processes in practice).
pub fn envelope_id() -> String {
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

fn put(body: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        if !v.is_null() {
            body.insert(k.to_owned(), v);
        }
    }
}

fn level(s: &SpanRecord) -> &'static str {
    if s.status.is_error() {
        "ERROR"
    } else {
        "DEFAULT"
    }
}

/// The observation id Langfuse gets for one of our spans: its 16 hex digits.
pub fn observation_id(s: &SpanRecord) -> String {
    s.span_id.to_string()
}

/// The events for one trace, appended to `out`; returns how many were added.
pub fn encode_trace(t: &TraceRecord, out: &mut Vec<Value>) -> usize {
    let before = out.len();
    let trace_id = t.trace_id.to_uuid();
    let now = format_timestamp(t.end_unix_nanos);
    let mut metadata = t.metadata.clone();
    metadata.insert("framework".into(), "flowtrace".into());
    if let Some(a) = &t.action {
        metadata.insert("action".into(), a.clone().into());
    }
    if t.status.is_error() {
        metadata.insert("status".into(), "error".into());
        metadata.insert("error".into(), t.status.message().unwrap_or("").into());
    }
    if t.spans_dropped > 0 {
        metadata.insert("spans_dropped".into(), t.spans_dropped.into());
    }
    let mut body = Map::new();
    body.insert("id".into(), trace_id.clone().into());
    body.insert("timestamp".into(), format_timestamp(t.start_unix_nanos).into());
    body.insert("name".into(), t.name.clone().into());
    put(&mut body, "input", Some(t.input.clone()));
    put(&mut body, "output", Some(t.output.clone()));
    put(&mut body, "sessionId", t.session_id.clone().map(Value::from));
    put(&mut body, "userId", t.user_id.clone().map(Value::from));
    if !t.tags.is_empty() {
        body.insert("tags".into(), t.tags.clone().into());
    }
    put(&mut body, "release", t.release.clone().map(Value::from));
    put(&mut body, "version", t.version.clone().map(Value::from));
    body.insert("metadata".into(), Value::Object(metadata));
    out.push(json!({"id": envelope_id(), "type": "trace-create", "timestamp": now, "body": body}));

    for s in &t.spans {
        let mut b = Map::new();
        b.insert("id".into(), observation_id(s).into());
        b.insert("traceId".into(), trace_id.clone().into());
        b.insert("name".into(), s.name.to_string().into());
        b.insert("startTime".into(), format_timestamp(s.start_unix_nanos).into());
        b.insert("endTime".into(), format_timestamp(s.end_unix_nanos).into());
        put(&mut b, "parentObservationId", s.parent_id.map(|p| Value::from(p.to_string())));
        put(&mut b, "input", s.input.clone());
        put(&mut b, "output", s.output.clone());
        b.insert("level".into(), level(s).into());
        put(&mut b, "statusMessage", s.status.message().map(Value::from));
        let mut md = s.attributes.clone();
        md.insert("kind".into(), format!("{:?}", s.kind).to_ascii_lowercase().into());
        if let crate::trace::SpanStatus::Error { kind, chain, location, .. } = &s.status {
            md.insert("error_kind".into(), kind.clone().into());
            if !chain.is_empty() {
                md.insert("error_chain".into(), chain.clone().into());
            }
            if let Some(l) = location {
                md.insert("location".into(), l.clone().into());
            }
        }
        b.insert("metadata".into(), Value::Object(md));
        out.push(json!({
            "id": envelope_id(),
            "type": "span-create",
            "timestamp": format_timestamp(s.end_unix_nanos),
            "body": b,
        }));
    }
    out.len() - before
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
pub struct EventError {
    /// The envelope id.
    pub id: String,
    /// The event's status.
    pub status: u16,
    /// The server's message (and detail).
    pub message: String,
}

/// The errors listed in a 207 answer (an unreadable answer lists none).
pub fn parse_multi_status(body: &[u8]) -> Vec<EventError> {
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
