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
                post(move |body: axum::body::Bytes| async move {
                    use prost::Message;
                    let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)
                        .expect("OTLP protobuf");
                    let n: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                    otlp.fetch_add(n as u64, Ordering::Relaxed);
                    "{}"
                }),
            )
            .route(
                "/api/public/ingestion",
                post(move |axum::Json(body): axum::Json<serde_json::Value>| async move {
                    let batch = body["batch"].as_array().cloned().unwrap_or_default();
                    let ids: Vec<serde_json::Value> = batch.iter().map(|e| e["id"].clone()).collect();
                    let n = batch.iter().filter(|e| e["type"] == "span-create" || e["type"] == "trace-create").count();
                    legacy.fetch_add(n as u64, Ordering::Relaxed);
                    let successes: Vec<_> =
                        ids.iter().map(|id| serde_json::json!({ "id": id, "status": 201 })).collect();
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
