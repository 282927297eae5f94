//! A Langfuse-compatible test server on 127.0.0.1 (ephemeral port): OTLP/HTTP protobuf at
//! `/api/public/otel/v1/traces` and legacy batch JSON at `/api/public/ingestion`, validated
//! against the ingestion OpenAPI schema (`/work/shared/reference/langfuse-openapi-ingestion.yaml`:
//! envelope and body ids, ISO-8601 timestamps, known fields and types). It can be told to be
//! down, slow, or to answer 500, 429 with `Retry-After`, 207 with some errors, 413 and 401;
//! and, like a careless proxy, to echo every request header (`Authorization` among them) in
//! its 401, 429 and 500 bodies.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What the server does with the next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answers normally.
    None,
    /// Waits this long before answering.
    Slow(Duration),
    /// Answers this status (500, 413, 401, ...) to the next `times` requests.
    Status { code: u16, times: u32 },
    /// Answers 429 with `Retry-After: secs` to the next `times` requests.
    RateLimited { retry_after_secs: u32, times: u32 },
    /// Legacy only: 207 in which every `every`-th event fails once with `status`.
    Partial { every: usize, status: u16 },
    /// 413 for any body over this many bytes.
    MaxBody(usize),
}

/// Everything the server received and decided.
#[derive(Debug, Default)]
pub struct Received {
    /// Decoded OTLP spans, in arrival order.
    pub otlp_spans: Vec<Span>,
    /// Resource attributes of OTLP requests.
    pub otlp_resource: Vec<KeyValue>,
    /// Headers of the last OTLP request.
    pub otlp_headers: Vec<(String, String)>,
    /// Legacy events accepted (201), in arrival order.
    pub legacy_events: Vec<Value>,
    /// Schema violations found in legacy events.
    pub invalid: Vec<String>,
    /// Requests answered, by path.
    pub requests: Vec<(String, u16)>,
    /// Envelope ids that already failed once (for `Fault::Partial`).
    failed_once: std::collections::HashSet<String>,
    /// Request bodies' sizes.
    pub body_sizes: Vec<usize>,
    /// Statuses answered with the request headers echoed in the body.
    pub echoed: Vec<u16>,
    /// The most requests that were waiting on a `Fault::Slow` at once.
    pub max_concurrent: usize,
    /// `Content-Encoding` of each request (empty when none), in arrival order.
    pub encodings: Vec<String>,
    waiting: usize,
}

struct Inner {
    fault: Fault,
    keys: (String, String),
    /// Answer 404 on the OTLP path, like a self-hosted v2.
    no_otel: bool,
    /// Echo the request headers in error bodies.
    echo: bool,
    rx: Received,
}

/// The running server; dropping it stops it.
pub struct LangfuseServer {
    addr: SocketAddr,
    state: Arc<Mutex<Inner>>,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for LangfuseServer {
    fn drop(&mut self) {
        if let Some(h) = self.accept.lock().take() {
            h.abort();
        }
        self.conns.lock().abort_all();
    }
}

pub const PK: &str = "pk-lf-test";
pub const SK: &str = "sk-lf-test";

/// Delivery options for tests against this server: short batches, fast retries and probes,
/// three attempts, so faults show within a test's time.
pub fn fast_delivery() -> flowtrace::export::DeliveryOptions {
    flowtrace::export::DeliveryOptions::default()
        .max_batch_age(Duration::from_millis(20))
        .initial_backoff(Duration::from_millis(20))
        .max_attempts(3)
        .request_timeout(Duration::from_secs(5))
        .probe_interval(Duration::from_millis(100))
}

impl LangfuseServer {
    /// Starts on an ephemeral port, accepting keys [`PK`]/[`SK`].
    pub async fn start() -> LangfuseServer {
        Self::start_with_keys(PK, SK).await
    }

    /// Starts on an ephemeral port, accepting these keys.
    pub async fn start_with_keys(pk: &str, sk: &str) -> LangfuseServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let s = LangfuseServer {
            addr,
            state: Arc::new(Mutex::new(Inner {
                fault: Fault::None,
                keys: (pk.into(), sk.into()),
                no_otel: false,
                echo: false,
                rx: Received::default(),
            })),
            conns: Arc::new(Mutex::new(JoinSet::new())),
            accept: Mutex::new(None),
        };
        s.serve(listener);
        s
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .route("/api/public/otel/v1/traces", post(otlp))
            .route("/v1/traces", post(otlp))
            .route("/api/public/ingestion", post(ingestion))
            .with_state(Arc::clone(&self.state));
        let conns = Arc::clone(&self.conns);
        let h = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                conns.lock().spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(sock);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        *self.accept.lock() = Some(h);
    }

    /// The base URL (`LANGFUSE_HOST`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Goes down: the port refuses connections and open connections are cut.
    pub fn down(&self) {
        if let Some(h) = self.accept.lock().take() {
            h.abort();
        }
        self.conns.lock().abort_all();
    }

    /// Comes back up on the same port.
    pub async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::task::yield_now().await;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Sets the fault for the next requests.
    pub fn fault(&self, f: Fault) {
        self.state.lock().fault = f;
    }

    /// Echoes every request header in the bodies of 401, 429 and 500 answers: as JSON (401),
    /// as `Name: value` lines (429) and in an HTML page (500).
    pub fn echo_headers(&self) {
        self.state.lock().echo = true;
    }

    /// Answers 404 on the OTLP path (a self-hosted v2).
    pub fn without_otel(&self) {
        self.state.lock().no_otel = true;
    }

    /// Reads what was received.
    pub fn received<R>(&self, f: impl FnOnce(&Received) -> R) -> R {
        f(&self.state.lock().rx)
    }

    /// The OTLP spans received, deduplicated by span id.
    pub fn otlp_span_ids(&self) -> std::collections::BTreeSet<Vec<u8>> {
        self.received(|r| r.otlp_spans.iter().map(|s| s.span_id.clone()).collect())
    }

    /// Legacy body ids received, deduplicated.
    pub fn legacy_body_ids(&self) -> std::collections::BTreeSet<String> {
        self.received(|r| r.legacy_events.iter().filter_map(|e| e["body"]["id"].as_str().map(str::to_owned)).collect())
    }
}

/// A string attribute of a span.
pub fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    s.attributes.iter().find(|k| k.key == key).and_then(|k| k.value.as_ref()).and_then(|v| v.value.as_ref())
}

/// A string attribute of a span, as `&str`.
pub fn attr_str<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key) {
        Some(any_value::Value::StringValue(v)) => Some(v),
        _ => None,
    }
}

fn authorised(h: &HeaderMap, keys: &(String, String)) -> bool {
    let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) else { return false };
    let Some(b64) = v.strip_prefix("Basic ") else { return false };
    decode_b64(b64).is_some_and(|d| d == format!("{}:{}", keys.0, keys.1).into_bytes())
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = A.iter().position(|&a| a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// The body of an error answer: `plain`, or with `echo` every request header in it, in the
/// form such pages take (JSON for 401, text lines for 429, HTML for 500).
fn error_body(code: u16, plain: Value, echo: bool, h: &HeaderMap) -> Response {
    let st = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !echo {
        return (st, axum::Json(plain)).into_response();
    }
    let pairs: Vec<(String, String)> =
        h.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    match code {
        429 => {
            let lines: String = pairs.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
            (st, format!("Too Many Requests\r\nYour request:\r\n{lines}")).into_response()
        }
        500..=599 => {
            let lines: String = pairs.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            (st, format!("<html><body><h1>Internal Server Error</h1><pre>{lines}</pre></body></html>")).into_response()
        }
        _ => {
            let headers: serde_json::Map<String, Value> =
                pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let mut body = plain;
            body["request"] = json!({ "headers": headers });
            (st, axum::Json(body)).into_response()
        }
    }
}

/// Applies the fault common to both paths; `Some(response)` ends the request there.
async fn common(state: &Arc<Mutex<Inner>>, path: &str, h: &HeaderMap, body: &Bytes) -> Option<Response> {
    let (fault, keys, echo) = {
        let s = state.lock();
        (s.fault.clone(), s.keys.clone(), s.echo)
    };
    let answer = |code: u16, resp: Response| {
        let mut s = state.lock();
        s.rx.requests.push((path.to_owned(), code));
        if echo && matches!(code, 401 | 429 | 500..=599) {
            s.rx.echoed.push(code);
        }
        Some(resp)
    };
    let unauthorised = || json!({"error":"UnauthorizedError","message":"Invalid credentials. Confirm that you've configured the correct host."});
    state.lock().rx.encodings.push(h.get("content-encoding").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned());
    match fault {
        Fault::Slow(d) => {
            {
                let mut s = state.lock();
                s.rx.waiting += 1;
                s.rx.max_concurrent = s.rx.max_concurrent.max(s.rx.waiting);
            }
            tokio::time::sleep(d).await;
            state.lock().rx.waiting -= 1;
        }
        Fault::Status { code, times } if times > 0 => {
            if let Fault::Status { times, .. } = &mut state.lock().fault {
                *times -= 1;
            }
            let msg = match code {
                401 => unauthorised(),
                413 => json!({"message": "Body exceeded 4.5mb limit"}),
                _ => json!({"message": "Internal Server Error"}),
            };
            return answer(code, error_body(code, msg, echo && code != 413, h));
        }
        Fault::RateLimited { retry_after_secs, times } if times > 0 => {
            if let Fault::RateLimited { times, .. } = &mut state.lock().fault {
                *times -= 1;
            }
            let mut r = if echo {
                error_body(429, json!("rate limited"), true, h)
            } else {
                (StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response()
            };
            r.headers_mut().insert("retry-after", retry_after_secs.to_string().parse().expect("header"));
            return answer(429, r);
        }
        Fault::MaxBody(max) if body.len() > max => {
            return answer(413, (StatusCode::PAYLOAD_TOO_LARGE, "Body exceeded 4.5mb limit").into_response());
        }
        _ => {}
    }
    state.lock().rx.body_sizes.push(body.len());
    if !authorised(h, &keys) {
        return answer(401, error_body(401, unauthorised(), echo, h));
    }
    None
}

async fn otlp(State(state): State<Arc<Mutex<Inner>>>, h: HeaderMap, body: Bytes) -> Response {
    let path = "/api/public/otel/v1/traces";
    if state.lock().no_otel {
        state.lock().rx.requests.push((path.into(), 404));
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    if let Some(r) = common(&state, path, &h, &body).await {
        return r;
    }
    let ct = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct != "application/x-protobuf" {
        state.lock().rx.requests.push((path.into(), 400));
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": format!("unsupported content type {ct}")})))
            .into_response();
    }
    // Content-Encoding: gzip is accepted, as Langfuse's OTLP route does.
    let gzipped = h.get("content-encoding").and_then(|v| v.to_str().ok()) == Some("gzip");
    let body = if gzipped {
        let mut plain = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain).is_err() {
            state.lock().rx.requests.push((path.into(), 400));
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "bad gzip body"}))).into_response();
        }
        Bytes::from(plain)
    } else {
        body
    };
    let req = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            state.lock().rx.requests.push((path.into(), 400));
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": e.to_string()}))).into_response();
        }
    };
    let mut s = state.lock();
    for rs in req.resource_spans {
        if let Some(r) = rs.resource {
            s.rx.otlp_resource = r.attributes;
        }
        for ss in rs.scope_spans {
            for sp in ss.spans {
                if sp.trace_id.len() != 16 || sp.span_id.len() != 8 {
                    drop(s);
                    return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid traceId/spanId"})))
                        .into_response();
                }
                s.rx.otlp_spans.push(sp);
            }
        }
    }
    s.rx.otlp_headers = h.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    s.rx.requests.push((path.into(), 200));
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

/// ISO-8601 date-time with `Z` or an offset: `2026-11-28T19:00:13.638615Z`.
pub fn is_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if b.len() < 20 || !digits(0..4) || b[4] != b'-' || !digits(5..7) || b[7] != b'-' || !digits(8..10) {
        return false;
    }
    if b[10] != b'T' || !digits(11..13) || b[13] != b':' || !digits(14..16) || b[16] != b':' || !digits(17..19) {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &s[i..] {
        "Z" => true,
        off => off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) && off.as_bytes()[3] == b':',
    }
}

const TRACE_FIELDS: &[(&str, &str)] = &[
    ("id", "string"),
    ("timestamp", "date-time"),
    ("name", "string"),
    ("userId", "string"),
    ("input", "any"),
    ("output", "any"),
    ("sessionId", "string"),
    ("release", "string"),
    ("version", "string"),
    ("metadata", "any"),
    ("tags", "string[]"),
    ("environment", "string"),
    ("public", "boolean"),
];
const OBSERVATION_FIELDS: &[(&str, &str)] = &[
    ("id", "string"),
    ("traceId", "string"),
    ("name", "string"),
    ("startTime", "date-time"),
    ("endTime", "date-time"),
    ("metadata", "any"),
    ("input", "any"),
    ("output", "any"),
    ("level", "level"),
    ("statusMessage", "string"),
    ("parentObservationId", "string"),
    ("version", "string"),
    ("environment", "string"),
];

/// A body's known fields and their kinds.
type Fields = &'static [(&'static str, &'static str)];

const GENERATION_FIELDS: Fields = &[
    ("completionStartTime", "date-time"),
    ("model", "string"),
    ("modelParameters", "object"),
    ("usage", "object"),
    ("usageDetails", "int-map"),
    ("costDetails", "number-map"),
    ("promptName", "string"),
    ("promptVersion", "integer"),
];

/// Checks one event against the schema; `Err` says what is wrong (zod-like).
pub fn validate_event(e: &Value) -> Result<(), String> {
    let id = e.get("id").and_then(Value::as_str).ok_or("envelope: id is required (string)")?;
    if id.is_empty() || id.len() > 800 {
        return Err("envelope: id must be 1..800 chars".into());
    }
    let ts = e.get("timestamp").and_then(Value::as_str).ok_or("envelope: timestamp is required")?;
    if !is_iso8601(ts) {
        return Err(format!("envelope: timestamp {ts:?} is not ISO-8601 with Z or an offset"));
    }
    let ty = e.get("type").and_then(Value::as_str).ok_or("envelope: type is required")?;
    let (fields, extra): (Fields, Fields) = match ty {
        "trace-create" => (TRACE_FIELDS, &[]),
        "span-create" | "span-update" | "event-create" => (OBSERVATION_FIELDS, &[]),
        "generation-create" | "generation-update" => (OBSERVATION_FIELDS, GENERATION_FIELDS),
        other => return Err(format!("type {other:?} is not accepted by this server")),
    };
    let body = e.get("body").and_then(Value::as_object).ok_or("body is required (object)")?;
    match body.get("id") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(format!("{ty}: body.id is required")),
    }
    for (k, v) in body {
        let Some((_, kind)) = fields.iter().chain(extra).find(|(f, _)| f == k) else {
            return Err(format!("{ty}: unknown field body.{k}"));
        };
        if v.is_null() {
            continue;
        }
        let ok = match *kind {
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "date-time" => v.as_str().is_some_and(is_iso8601),
            "string[]" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            "level" => matches!(v.as_str(), Some("DEBUG" | "DEFAULT" | "WARNING" | "ERROR")),
            "object" => v.is_object(),
            "integer" => v.is_u64() || v.is_i64(),
            "int-map" => v.as_object().is_some_and(|m| m.values().all(|x| x.is_u64() || x.is_i64())),
            "number-map" => v.as_object().is_some_and(|m| m.values().all(Value::is_number)),
            _ => true,
        };
        if !ok {
            return Err(format!("{ty}: body.{k} = {v} is not a valid {kind}"));
        }
    }
    Ok(())
}

async fn ingestion(State(state): State<Arc<Mutex<Inner>>>, h: HeaderMap, body: Bytes) -> Response {
    let path = "/api/public/ingestion";
    if let Some(r) = common(&state, path, &h, &body).await {
        return r;
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            state.lock().rx.requests.push((path.into(), 400));
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"message":"Invalid request data","errors":["Invalid JSON"]})),
            )
                .into_response();
        }
    };
    let Some(batch) = parsed.get("batch").and_then(Value::as_array) else {
        state.lock().rx.requests.push((path.into(), 400));
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"message":"Invalid request data","errors":["Required"]})))
            .into_response();
    };
    let mut s = state.lock();
    let partial = match s.fault {
        Fault::Partial { every, status } => Some((every.max(1), status)),
        _ => None,
    };
    let mut successes = Vec::new();
    let mut errors = Vec::new();
    for (i, e) in batch.iter().enumerate() {
        let id = e.get("id").and_then(Value::as_str).unwrap_or("unknown").to_owned();
        if let Err(why) = validate_event(e) {
            s.rx.invalid.push(format!("{id}: {why}"));
            errors.push(json!({"id": id, "status": 400, "message": "Invalid request data", "error": why}));
            continue;
        }
        if let Some((every, status)) = partial {
            if i % every == every - 1 && (status < 500 || !s.rx.failed_once.contains(&id)) {
                s.rx.failed_once.insert(id.clone());
                let msg = if status >= 500 { "Internal Server Error" } else { "Invalid request data" };
                errors.push(json!({"id": id, "status": status, "message": msg, "error": format!("injected {status}")}));
                continue;
            }
        }
        s.rx.legacy_events.push(e.clone());
        successes.push(json!({"id": id, "status": 201}));
    }
    s.rx.requests.push((path.into(), 207));
    (StatusCode::MULTI_STATUS, axum::Json(json!({"successes": successes, "errors": errors}))).into_response()
}

/// A small traced flow used by the export tests: `Load` -> `Shout`, with a secret in the
/// store (for redaction). Returns the run's result and the final `shout` value.
pub async fn run_sample(
    tracer: &flowtrace::Tracer,
    n: usize,
) -> (Result<flowtrace::Action, flowtrace::Error>, Option<String>) {
    use flowtrace::prelude::*;
    let load = FnNode::new("Load")
        .prep(|ctx| Ok(ctx.shared().get_json("name").unwrap_or(Value::Null)))
        .exec(|v, _| async move { Ok(json!(format!("hello {}", v.as_str().unwrap_or("?")))) })
        .post(|ctx, _, e| {
            ctx.shared().insert("greeting", e);
            Ok(Action::none())
        })
        .into_node();
    let shout = FnNode::new("Shout")
        .prep(|ctx| Ok(ctx.shared().get_json("greeting").unwrap_or(Value::Null)))
        .exec(|v, _| async move { Ok(json!(v.as_str().unwrap_or("").to_uppercase())) })
        .post(|ctx, _, e| {
            ctx.shared().insert("shout", e);
            Ok(Action::none())
        })
        .into_node();
    let _ = &load >> &shout;
    let flow = Flow::named("Greet", &load);
    let shared = SharedStore::new();
    shared.insert("name", format!("user{n}"));
    shared.insert("api_key", "sk-very-secret");
    let r = flow
        .traced("GreetTrace")
        .session_id("session-1")
        .user_id("user-1")
        .tag("test")
        .release("r1")
        .metadata("env", "test")
        .tracer(tracer)
        .run(&shared)
        .await;
    let shout = shared.get::<String>("shout").ok().flatten();
    (r, shout)
}

/// The `customer_support` example binary next to this test binary, built first if needed
/// (`cargo test` builds examples; `cargo test --test x` does not).
pub fn example_binary() -> std::path::PathBuf {
    example_binary_named("customer_support")
}

/// An example's binary next to this test binary, built first if needed.
pub fn example_binary_named(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>").to_path_buf();
    let bin = profile_dir.join("examples").join(name);
    if !bin.exists() {
        let target_dir = profile_dir.parent().expect("target dir");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name, "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
        assert!(status.success(), "cargo build --example {name} failed");
    }
    bin
}
