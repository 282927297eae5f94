//! A Langfuse-compatible sink for benchmarks: counts what it receives, on its own thread.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A Langfuse-compatible sink on 127.0.0.1 that counts the spans it receives: OTLP spans, or
/// legacy `span-create` and `trace-create` events.
pub struct Sink {
    pub addr: std::net::SocketAddr,
    pub spans: Arc<AtomicU64>,
}

impl Sink {
    pub fn start() -> Sink {
        use axum::routing::post;
        let spans = Arc::new(AtomicU64::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("sink address");
        let (otlp, legacy) = (spans.clone(), spans.clone());
        let app = axum::Router::new()
            .route(
                "/api/public/otel/v1/traces",
                post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let n = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                        let mut plain = Vec::new();
                        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
                            .expect("gzip body");
                        count_otlp_spans(&plain)
                    } else {
                        count_otlp_spans(&body)
                    }
                    .expect("OTLP protobuf");
                    otlp.fetch_add(n as u64, Ordering::Relaxed);
                    "{}"
                }),
            )
            .route(
                "/api/public/ingestion",
                post(move |body: axum::body::Bytes| async move {
                    // The whole body is parsed (every event must be valid JSON), borrowing
                    // its strings: no tree of values, no copies.
                    let batch: LegacyBatch<'_> = serde_json::from_slice(&body).expect("legacy batch JSON");
                    let n = batch.batch.iter().filter(|e| e.ty == "span-create" || e.ty == "trace-create").count();
                    legacy.fetch_add(n as u64, Ordering::Relaxed);
                    let successes: Vec<_> =
                        batch.batch.iter().map(|e| serde_json::json!({ "id": e.id, "status": 201 })).collect();
                    (
                        axum::http::StatusCode::MULTI_STATUS,
                        axum::Json(serde_json::json!({ "successes": successes, "errors": [] })),
                    )
                }),
            );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("sink runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("sink listener");
                axum::serve(listener, app).await.expect("sink");
            });
        });
        Sink { addr, spans }
    }
}

/// A legacy ingestion request as the sink reads it.
#[derive(serde::Deserialize)]
struct LegacyBatch<'a> {
    #[serde(borrow)]
    batch: Vec<LegacyEvent<'a>>,
    #[allow(dead_code)]
    metadata: serde::de::IgnoredAny,
}

/// One event: its id and type read, its body parsed (and checked to be JSON) but not kept.
#[derive(serde::Deserialize)]
struct LegacyEvent<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[allow(dead_code)]
    timestamp: serde::de::IgnoredAny,
    #[allow(dead_code)]
    body: serde::de::IgnoredAny,
}

/// Counts the spans of an `ExportTraceServiceRequest` by walking the protobuf wire format
/// (resource_spans = 1 → scope_spans = 2 → spans = 2) without decoding them: a sink should
/// not take the CPU the runs being measured need.
pub fn count_otlp_spans(buf: &[u8]) -> Option<usize> {
    fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    /// Calls `f` with each length-delimited field `want` of `buf`.
    fn fields<'a>(buf: &'a [u8], want: u64, mut f: impl FnMut(&'a [u8]) -> Option<()>) -> Option<()> {
        let mut at = 0;
        while at < buf.len() {
            let key = varint(buf, &mut at)?;
            match key & 7 {
                0 => {
                    varint(buf, &mut at)?;
                }
                1 => at += 8,
                5 => at += 4,
                2 => {
                    let len = varint(buf, &mut at)? as usize;
                    let body = buf.get(at..at + len)?;
                    at += len;
                    if key >> 3 == want {
                        f(body)?;
                    }
                }
                _ => return None,
            }
        }
        Some(())
    }
    let mut n = 0;
    fields(buf, 1, |rs| {
        fields(rs, 2, |ss| {
            fields(ss, 2, |_| {
                n += 1;
                Some(())
            })
        })
    })?;
    Some(n)
}
