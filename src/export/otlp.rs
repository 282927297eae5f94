//! The OTLP wire format: our span tree as `ExportTraceServiceRequest` protobuf, with the
//! attributes Langfuse reads (`langfuse.trace.*`, `langfuse.observation.*`, `session.id`,
//! `user.id`) on top of plain OpenTelemetry fields any OTLP backend understands.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::Value;

use super::observation::{self, Level, Levels};
use crate::trace::{format_timestamp, GenerationRecord, SpanRecord, SpanStatus, TraceRecord};

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn kv_str(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn json_string(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn otlp_status(s: &SpanStatus) -> Status {
    match s {
        SpanStatus::Ok => Status { code: status::StatusCode::Ok as i32, message: String::new() },
        other => Status { code: status::StatusCode::Error as i32, message: other.message().unwrap_or("").to_owned() },
    }
}

/// The span id used for a trace that has no root span of its own.
fn synthetic_root_id(trace: &TraceRecord) -> u64 {
    (trace.trace_id.0 as u64) | 1
}

/// The trace's context, built once per trace and copied onto every span: on Langfuse's v4
/// path observations are queried on their own, so a field only the root carries cannot be
/// filtered on anywhere else (§10).
struct TraceContext {
    attrs: Vec<KeyValue>,
}

impl TraceContext {
    fn new(t: &TraceRecord, environment: Option<&str>) -> Self {
        let mut attrs = Vec::with_capacity(10);
        attrs.push(kv_str("langfuse.trace.name", t.name.clone()));
        if let Some(s) = &t.session_id {
            attrs.push(kv_str("session.id", s.clone()));
        }
        if let Some(u) = &t.user_id {
            attrs.push(kv_str("user.id", u.clone()));
        }
        if !t.tags.is_empty() {
            let values =
                t.tags.iter().map(|t| AnyValue { value: Some(any_value::Value::StringValue(t.clone())) }).collect();
            attrs.push(kv("langfuse.trace.tags", any_value::Value::ArrayValue(ArrayValue { values })));
        }
        if let Some(r) = &t.release {
            attrs.push(kv_str("langfuse.release", r.clone()));
        }
        if let Some(v) = &t.version {
            attrs.push(kv_str("langfuse.version", v.clone()));
        }
        if let Some(e) = environment {
            attrs.push(kv_str("langfuse.environment", e));
        }
        // One JSON object: Langfuse parses it into structured metadata, where a value under
        // `langfuse.trace.metadata.<key>` would stay a string (§10).
        let meta = observation::trace_metadata(t);
        attrs.push(kv_str("langfuse.trace.metadata", Value::Object(meta).to_string()));
        TraceContext { attrs }
    }
}

fn span_of(trace: &TraceRecord, ctx: &TraceContext, levels: &Levels<'_>, s: &SpanRecord, is_root: bool) -> Span {
    let mut attrs = Vec::with_capacity(8 + ctx.attrs.len());
    attrs.push(kv_str("flowtrace.span.kind", observation::kind_name(s.kind)));
    // The root observation carries the run's input and output (the store at start and end):
    // the v4 trace view shows the root's, and ignores `langfuse.trace.input/output` (§10).
    let (input, output) =
        if is_root { (Some(&trace.input), Some(&trace.output)) } else { (s.input.as_ref(), s.output.as_ref()) };
    // Langfuse reads `langfuse.observation.*`; OpenInference backends (Phoenix) `*.value`.
    if let Some(v) = input.filter(|v| !v.is_null() || !is_root) {
        let j = json_string(v);
        attrs.push(kv_str("input.value", j.clone()));
        attrs.push(kv_str("langfuse.observation.input", j));
    }
    if let Some(v) = output.filter(|v| !v.is_null() || !is_root) {
        let j = json_string(v);
        attrs.push(kv_str("output.value", j.clone()));
        attrs.push(kv_str("langfuse.observation.output", j));
    }
    let level = levels.of(s);
    if level != Level::Default {
        attrs.push(kv_str("langfuse.observation.level", level.as_str()));
        let msg = if is_root && trace.status.is_error() { trace.status.message() } else { s.status.message() };
        // An event (a PocketFlow warning) is its own message.
        let msg = msg.or_else(|| (s.kind == crate::trace::SpanKind::Event).then_some(&*s.name));
        attrs.push(kv_str("langfuse.observation.status_message", msg.unwrap_or("")));
    }
    if let SpanStatus::Error { kind, location, .. } = &s.status {
        attrs.push(kv_str("error.type", kind.clone()));
        if let Some(l) = location {
            attrs.push(kv_str("code.location", l.clone()));
        }
    }
    let ty = observation::observation_type(s);
    if ty != "span" {
        attrs.push(kv_str("langfuse.observation.type", ty));
    }
    if let Some(g) = &s.generation {
        generation_attributes(g, &mut attrs);
    }
    let meta = observation::metadata(s);
    attrs.push(kv_str("langfuse.observation.metadata", Value::Object(meta).to_string()));
    attrs.extend(ctx.attrs.iter().cloned());
    if is_root {
        attrs.push(kv_str("langfuse.trace.input", json_string(&trace.input)));
        attrs.push(kv_str("langfuse.trace.output", json_string(&trace.output)));
    }
    Span {
        trace_id: trace.trace_id.to_bytes().to_vec(),
        span_id: s.span_id.to_bytes().to_vec(),
        parent_span_id: s.parent_id.map(|p| p.to_bytes().to_vec()).unwrap_or_default(),
        name: s.name.to_string(),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: attrs,
        status: Some(otlp_status(&s.status)),
        ..Default::default()
    }
}

/// An LLM call's fields, as Langfuse reads them (§10), plus OpenTelemetry's `gen_ai.*` for
/// other backends.
fn generation_attributes(g: &GenerationRecord, attrs: &mut Vec<KeyValue>) {
    if let Some(m) = &g.model {
        attrs.push(kv_str("langfuse.observation.model.name", m.clone()));
        attrs.push(kv_str("gen_ai.request.model", m.clone()));
    }
    if !g.model_parameters.is_empty() {
        attrs.push(kv_str(
            "langfuse.observation.model.parameters",
            Value::Object(g.model_parameters.clone()).to_string(),
        ));
    }
    if !g.usage.is_empty() {
        let usage = serde_json::to_string(&g.usage).unwrap_or_default();
        attrs.push(kv_str("langfuse.observation.usage_details", usage));
        for (k, otel) in [("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens")] {
            if let Some(n) = g.usage.get(k) {
                attrs.push(kv(otel, any_value::Value::IntValue(*n as i64)));
            }
        }
    }
    if !g.cost.is_empty() {
        attrs.push(kv_str("langfuse.observation.cost_details", serde_json::to_string(&g.cost).unwrap_or_default()));
    }
    if let Some(t) = g.completion_start_unix_nanos {
        attrs.push(kv_str("langfuse.observation.completion_start_time", format_timestamp(t)));
    }
    if let (Some(n), Some(v)) = (&g.prompt_name, g.prompt_version) {
        attrs.push(kv_str("langfuse.observation.prompt.name", n.clone()));
        attrs.push(kv("langfuse.observation.prompt.version", any_value::Value::IntValue(v as i64)));
    }
}

/// Appends the OTLP spans of `trace` to `out` (a root span is made up when the trace has none,
/// so the trace's own fields always travel); returns how many were added.
pub fn encode_trace(trace: &TraceRecord, out: &mut Vec<Span>) -> usize {
    encode_trace_in(trace, None, out)
}

/// Like [`encode_trace`], with the Langfuse environment (`langfuse.environment`) on every span.
pub(super) fn encode_trace_in(trace: &TraceRecord, environment: Option<&str>, out: &mut Vec<Span>) -> usize {
    let before = out.len();
    let folded = observation::fold_generation_nodes(trace);
    let trace = folded.as_ref().unwrap_or(trace);
    let ctx = TraceContext::new(trace, environment);
    let levels = Levels::new(trace);
    let root = trace.root().map(|r| r.span_id);
    // A part of a run in progress has no root yet: the record that ends the run brings it.
    if root.is_none() && !trace.is_part() {
        let synthetic = SpanRecord {
            span_id: crate::trace::SpanId(synthetic_root_id(trace)),
            parent_id: None,
            kind: crate::trace::SpanKind::Flow,
            name: trace.name.as_str().into(),
            start_unix_nanos: trace.start_unix_nanos,
            end_unix_nanos: trace.end_unix_nanos,
            status: trace.status.clone(),
            input: None,
            output: None,
            attributes: Default::default(),
            generation: None,
        };
        out.push(span_of(trace, &ctx, &levels, &synthetic, true));
    }
    for s in &trace.spans {
        out.push(span_of(trace, &ctx, &levels, s, Some(s.span_id) == root));
    }
    out.len() - before
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

/// One `ExportTraceServiceRequest` holding `spans`, protobuf-encoded.
pub fn encode_request(resource: &Resource, spans: Vec<Span>) -> Vec<u8> {
    encode_request_reusing(resource, spans).0
}

/// Like [`encode_request`], handing the spans back (for a retry) instead of dropping them.
pub(super) fn encode_request_reusing(resource: &Resource, spans: Vec<Span>) -> (Vec<u8>, Vec<Span>) {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "flowtrace".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let body = req.encode_to_vec();
    let spans = req.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans).collect();
    (body, spans)
}
