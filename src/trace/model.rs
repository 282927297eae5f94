//! The span tree handed to exporters: plain data, serialisable, owned.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// A trace id: 128 bits, printed as 32 hex digits (OpenTelemetry's form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub u128);

/// A span id: 64 bits, never zero, printed as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub u64);

impl TraceId {
    /// The id as big-endian bytes (OTLP's encoding).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
    /// The id formatted as a UUID (8-4-4-4-12), as Langfuse's legacy API shows ids.
    pub fn to_uuid(self) -> String {
        // Two hex digits a byte into a fixed buffer: every legacy event carries one or two.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        /// Where each byte's two digits go (dashes between 8-4-4-4-12 digits).
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut out = [b'-'; 36];
        for (at, b) in AT.into_iter().zip(self.0.to_be_bytes()) {
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 0xf)];
        }
        // ASCII throughout.
        std::str::from_utf8(&out).map(str::to_owned).unwrap_or_default()
    }
}

impl SpanId {
    /// The id as big-endian bytes (OTLP's encoding).
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

macro_rules! hex_serde {
    ($t:ty, $inner:ty, $width:expr) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&format!("{:0w$x}", self.0, w = $width))
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$inner>::from_str_radix(&s, 16).map(Self).map_err(serde::de::Error::custom)
            }
        }
    };
}
hex_serde!(TraceId, u128, 32);
hex_serde!(SpanId, u64, 16);

/// What a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SpanKind {
    /// A flow (the run's root flow, or a nested one).
    Flow,
    /// One parameter set of a batch flow.
    BatchRun,
    /// One visit of a node.
    Node,
    /// A node's `prep`.
    Prep,
    /// A node's `exec` (all attempts and items).
    Exec,
    /// One batch item inside `exec`.
    Item,
    /// One `exec` attempt.
    Attempt,
    /// The wait between two attempts.
    Wait,
    /// `exec_fallback`.
    Fallback,
    /// A node's `post`.
    Post,
    /// An LLM call recorded from `exec` ([`ExecContext::generation`](crate::ExecContext::generation)):
    /// its fields are in [`SpanRecord::generation`].
    Generation,
    /// A point in time: a warning such as PocketFlow's `Flow ends: …` (start = end).
    Event,
    /// A durable run continuing from its checkpoint on a worker (the worker is in its input).
    Resume,
}

/// How a span (or trace) ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SpanStatus {
    /// Finished normally.
    #[default]
    Ok,
    /// Failed.
    Error {
        /// A short kind (`node_error`, `panic`, `timeout`, …). Written as `error_kind`: the
        /// status is flattened into spans, whose own `kind` is the span kind. Older files used
        /// `kind` for both, and still read.
        #[serde(rename = "error_kind", alias = "kind")]
        kind: String,
        /// The error message.
        message: String,
        /// The error and its sources, outermost first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chain: Vec<String>,
        /// Where a panic happened, `file:line:col`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<String>,
    },
    /// Did not finish: the run was cancelled or timed out while it was open.
    Cancelled {
        /// Why.
        reason: String,
    },
}

impl SpanStatus {
    /// Whether this is an error or a cancellation.
    pub fn is_error(&self) -> bool {
        !matches!(self, SpanStatus::Ok)
    }
    /// The message of an error or cancellation.
    pub fn message(&self) -> Option<&str> {
        match self {
            SpanStatus::Ok => None,
            SpanStatus::Error { message, .. } => Some(message),
            SpanStatus::Cancelled { reason } => Some(reason),
        }
    }
}

/// One finished span.
///
/// Read by hand rather than derived: files from before `error_kind` hold the key `kind`
/// twice in error spans (the span kind, then the error kind), which a derived reader rejects.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SpanRecord {
    /// The span's id.
    pub span_id: SpanId,
    /// The parent span, `None` for the run's root span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<SpanId>,
    /// What the span stands for.
    pub kind: SpanKind,
    /// Its name: the flow or node name, `<Node>.prep`, `attempt 0` (every count is 0-based), `item 3`, …
    pub name: std::sync::Arc<str>,
    /// Start, in nanoseconds since the Unix epoch (UTC).
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the Unix epoch (UTC).
    pub end_unix_nanos: u64,
    /// How it ended.
    #[serde(flatten)]
    pub status: SpanStatus,
    /// What went in (prep result for exec, exec result for post, params for a batch run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// What came out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Extra facts: `node_type`, `attempt`, `item_index`, `changed_keys`, `wait_ms`, …
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attributes: serde_json::Map<String, Value>,
    /// The LLM call of a [`SpanKind::Generation`] span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Box<GenerationRecord>>,
}

/// What an LLM call recorded as a generation: model, parameters, token usage, cost, prompt.
/// Its input (the messages) and output are the span's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerationRecord {
    /// The model, as the provider names it (`gpt-4o-mini`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Temperature, max tokens, … as given to the model.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub model_parameters: serde_json::Map<String, Value>,
    /// Token counts by kind: `input`, `output`, `total`, and any other (`input_cached_tokens`,
    /// `output_reasoning_tokens`, …).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub usage: std::collections::BTreeMap<String, u64>,
    /// Cost in USD by kind (`input`, `output`, `total`); without it Langfuse computes the cost
    /// from the model and the usage.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cost: std::collections::BTreeMap<String, f64>,
    /// When the first token arrived, in nanoseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_start_unix_nanos: Option<u64>,
    /// The prompt's name in Langfuse prompt management.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_name: Option<String>,
    /// The prompt's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<u32>,
}

impl GenerationRecord {
    /// The total tokens: `total` when given, else the sum of `input` and `output`.
    pub fn total_tokens(&self) -> u64 {
        match self.usage.get("total") {
            Some(t) => *t,
            None => self.usage.get("input").copied().unwrap_or(0) + self.usage.get("output").copied().unwrap_or(0),
        }
    }
    /// The total cost in USD, when any was given: `total`, else the sum of the others.
    pub fn total_cost(&self) -> Option<f64> {
        if self.cost.is_empty() {
            return None;
        }
        Some(self.cost.get("total").copied().unwrap_or_else(|| self.cost.values().sum()))
    }
}

/// Tokens and cost summed over a trace's generations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct UsageTotals {
    /// How many generations.
    pub generations: usize,
    /// Token counts by kind, summed.
    pub tokens: std::collections::BTreeMap<String, u64>,
    /// Total tokens, summed.
    pub total_tokens: u64,
    /// Cost in USD, summed over the generations that gave one.
    pub cost: Option<f64>,
}

impl<'de> Deserialize<'de> for SpanRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SpanVisitor)
    }
}

struct SpanVisitor;

impl<'de> serde::de::Visitor<'de> for SpanVisitor {
    type Value = SpanRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a span object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<SpanRecord, A::Error> {
        use serde::de::{Error as _, IntoDeserializer};
        let mut span_id = None;
        let mut parent_id = None;
        let mut kind: Option<SpanKind> = None;
        let mut name: Option<String> = None;
        let (mut start, mut end) = (None, None);
        let mut status: Option<String> = None;
        let mut error_kind: Option<String> = None;
        let mut message: Option<String> = None;
        let mut chain: Vec<String> = Vec::new();
        let mut location: Option<String> = None;
        let mut reason: Option<String> = None;
        let (mut input, mut output) = (None, None);
        let mut attributes = serde_json::Map::new();
        let mut generation = None;
        while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "span_id" => span_id = Some(m.next_value()?),
                "parent_id" => parent_id = m.next_value()?,
                "kind" => {
                    // Old files: the first `kind` is the span's, a second one the error's.
                    let k: String = m.next_value()?;
                    let as_span = SpanKind::deserialize(k.as_str().into_deserializer())
                        .map_err(|e: serde::de::value::Error| e.to_string());
                    match as_span {
                        Ok(sk) if kind.is_none() => kind = Some(sk),
                        _ => error_kind = Some(k),
                    }
                }
                "error_kind" => error_kind = Some(m.next_value()?),
                "name" => name = Some(m.next_value()?),
                "start_unix_nanos" => start = Some(m.next_value()?),
                "end_unix_nanos" => end = Some(m.next_value()?),
                "status" => status = Some(m.next_value()?),
                "message" => message = Some(m.next_value()?),
                "chain" => chain = m.next_value::<Option<Vec<String>>>()?.unwrap_or_default(),
                "location" => location = m.next_value()?,
                "reason" => reason = Some(m.next_value()?),
                // `null` is a recorded value (a node that returned nothing), not an absent one.
                "input" => input = Some(m.next_value::<Value>()?),
                "output" => output = Some(m.next_value::<Value>()?),
                "attributes" => attributes = m.next_value::<Option<_>>()?.unwrap_or_default(),
                "generation" => generation = m.next_value()?,
                _ => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let status = match status.as_deref().unwrap_or("ok") {
            "ok" => SpanStatus::Ok,
            "error" => SpanStatus::Error {
                kind: error_kind.unwrap_or_else(|| "error".into()),
                message: message.ok_or_else(|| A::Error::missing_field("message"))?,
                chain,
                location,
            },
            "cancelled" => SpanStatus::Cancelled { reason: reason.ok_or_else(|| A::Error::missing_field("reason"))? },
            other => return Err(A::Error::unknown_variant(other, &["ok", "error", "cancelled"])),
        };
        Ok(SpanRecord {
            span_id: span_id.ok_or_else(|| A::Error::missing_field("span_id"))?,
            parent_id,
            kind: kind.ok_or_else(|| A::Error::missing_field("kind"))?,
            name: name.ok_or_else(|| A::Error::missing_field("name"))?.into(),
            start_unix_nanos: start.ok_or_else(|| A::Error::missing_field("start_unix_nanos"))?,
            end_unix_nanos: end.ok_or_else(|| A::Error::missing_field("end_unix_nanos"))?,
            status,
            input,
            output,
            attributes,
            generation,
        })
    }
}

impl SpanRecord {
    /// The span's duration in microseconds.
    pub fn duration_micros(&self) -> u64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos) / 1_000
    }
}

/// One finished run: the trace's own fields and every span of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TraceRecord {
    /// The trace's id (also the run id).
    pub trace_id: TraceId,
    /// The name given with `traced(...)`.
    pub name: String,
    /// Session, for grouping traces in Langfuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// User, for grouping traces in Langfuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Release of the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Version of the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Free metadata.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, Value>,
    /// Start, in nanoseconds since the Unix epoch (UTC).
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the Unix epoch (UTC).
    pub end_unix_nanos: u64,
    /// The shared store when the run started.
    pub input: Value,
    /// The shared store when the run ended.
    pub output: Value,
    /// How the run ended.
    #[serde(flatten)]
    pub status: SpanStatus,
    /// The run's result action, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Spans that could not be recorded (and why), so an incomplete trace says so.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spans_dropped: u64,
    /// Every span, in the order they ended (of a streamed run: those not in an earlier part).
    pub spans: Vec<SpanRecord>,
    /// Set on a *part* of a run still in progress: its index (0, 1, …). A part carries the
    /// trace's id and fields (name, session, user, tags, release, version, metadata), its
    /// start and the spans that ended since the previous part; its `input`, `output` and
    /// status are not known yet (null and ok). See [`TraceRecord::merge_parts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    /// On the record that ends a run: how many parts came before it (0, and left out of the
    /// JSON, for a trace delivered whole). Its `spans` are then only the run's last ones.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub parts: u32,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl TraceRecord {
    /// Whether this is a part of a run still in progress (see [`part`](Self::part)).
    pub fn is_part(&self) -> bool {
        self.part.is_some()
    }

    /// Spans this record stands for in export reports: its spans, plus one for the trace
    /// itself on the record that ends a run (a part has no trace of its own to count).
    pub fn weight(&self) -> u64 {
        self.spans.len() as u64 + u64::from(!self.is_part())
    }

    /// Puts streamed runs back together: every part is merged, in order, into the record that
    /// ends its run (parts first, so spans stay in the order they ended). Records of whole
    /// traces pass through unchanged; the order of runs is the order of their ending records.
    /// Parts whose run has no ending record (the process stopped mid-run) come last, merged
    /// into one record per run that keeps `part` set, so a reader can tell it is incomplete.
    pub fn merge_parts(records: impl IntoIterator<Item = TraceRecord>) -> Vec<TraceRecord> {
        use std::collections::HashMap;
        let mut open: HashMap<TraceId, TraceRecord> = HashMap::new();
        let mut order: Vec<TraceId> = Vec::new();
        let mut out = Vec::new();
        for r in records {
            if r.is_part() {
                match open.get_mut(&r.trace_id) {
                    Some(acc) => {
                        acc.spans.extend(r.spans);
                        acc.part = r.part;
                        acc.end_unix_nanos = acc.end_unix_nanos.max(r.end_unix_nanos);
                    }
                    None => {
                        order.push(r.trace_id);
                        open.insert(r.trace_id, r);
                    }
                }
                continue;
            }
            let mut r = r;
            if let Some(mut acc) = open.remove(&r.trace_id) {
                acc.spans.append(&mut r.spans);
                r.spans = acc.spans;
            }
            out.push(r);
        }
        out.extend(order.into_iter().filter_map(|id| open.remove(&id)));
        out
    }

    /// The root span (the run's flow), if any.
    pub fn root(&self) -> Option<&SpanRecord> {
        self.spans.iter().find(|s| s.parent_id.is_none())
    }

    /// The children of `parent`, ordered by start time.
    pub fn children(&self, parent: SpanId) -> Vec<&SpanRecord> {
        let mut v: Vec<&SpanRecord> = self.spans.iter().filter(|s| s.parent_id == Some(parent)).collect();
        v.sort_by_key(|s| (s.start_unix_nanos, s.span_id.0));
        v
    }

    /// The first span with this name.
    pub fn span(&self, name: &str) -> Option<&SpanRecord> {
        self.spans.iter().find(|s| &*s.name == name)
    }

    /// Tokens and cost summed over the trace's generations.
    pub fn usage_totals(&self) -> UsageTotals {
        let mut t = UsageTotals::default();
        for g in self.spans.iter().filter_map(|s| s.generation.as_deref()) {
            t.generations += 1;
            for (k, v) in &g.usage {
                *t.tokens.entry(k.clone()).or_default() += v;
            }
            t.total_tokens += g.total_tokens();
            if let Some(c) = g.total_cost() {
                *t.cost.get_or_insert(0.0) += c;
            }
        }
        t
    }
}

/// The deepest nesting recorded; deeper values are replaced by a `<truncated: nested deeper
/// than 64 levels>` marker.
pub const MAX_DEPTH: usize = 64;

pub(crate) use crate::flow::store::drop_deep;

/// The marker that replaces a value nested deeper than `max` levels.
pub(crate) fn depth_marker(max: usize) -> Value {
    Value::String(format!("<truncated: nested deeper than {max} levels>"))
}

/// The calendar date (year, month, day) of a count of days since 1970-01-01: Howard Hinnant's
/// civil-from-days.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats Unix nanoseconds as ISO-8601 UTC with microseconds: `2026-11-28T19:00:13.638615Z`.
pub fn format_timestamp(unix_nanos: u64) -> String {
    let secs = (unix_nanos / 1_000_000_000) as i64;
    let micros = (unix_nanos % 1_000_000_000) / 1_000;
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", sod / 3_600, (sod % 3_600) / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-28T19:00:13.638615Z
        assert_eq!(format_timestamp(1_795_892_413_638_615_123), "2026-11-28T19:00:13.638615Z");
        assert_eq!(format_timestamp(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn ids_print_as_hex_and_uuid() {
        let t = TraceId(0x0123456789abcdef0123456789abcdef);
        assert_eq!(t.to_string(), "0123456789abcdef0123456789abcdef");
        assert_eq!(t.to_uuid(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(serde_json::to_string(&SpanId(255)).unwrap(), "\"00000000000000ff\"");
    }
}
