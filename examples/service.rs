//! The customer-support flow as an HTTP service, run through a [`flowtrace::runtime::Runtime`].
//!
//! `PORT=3000 cargo run --example service`, then
//! `curl -s localhost:3000/tickets -H 'content-type: application/json' -d '{"id":"T-1","subject":"URGENT: down","description":"error 500","customer_tier":"premium"}'`
//!
//! - `POST /tickets`: a ticket as JSON (`id`, `subject`, `description`, `customer_tier`); runs the
//!   flow traced and answers `{"run_id", "ticket_id", "classification", "routing"}` as the flow wrote them
//!   to the store. Malformed JSON gets 400 with a message; a full or stopping runtime 503.
//! - `GET /stats`: runs in flight and the runtime's counters, and the exporter's counters.
//!
//! Listens on 127.0.0.1 at `PORT` (default 3000; `0` picks a free port) and prints
//! `listening on 127.0.0.1:<port>`. Traces go to a counting exporter, to a JSON Lines file
//! when `TRACE_FILE` is set, and to Langfuse when `LANGFUSE_PUBLIC_KEY` is set (with
//! `LANGFUSE_SECRET_KEY`, `LANGFUSE_HOST`, `LANGFUSE_INGESTION`, and `FLOWTRACE_SPOOL_DIR` for
//! its spool). On SIGTERM or Ctrl-C it stops taking connections, lets runs in
//! flight finish for up to `SHUTDOWN_SECS` (default 10) seconds, cancels the rest, flushes the
//! traces and prints the shutdown report, then exits 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowtrace::export::{ExportReport, Exporter};
use flowtrace::export::{JsonlFileExporter, LangfuseExporter};
use flowtrace::prelude::*;
use flowtrace::runtime::{Admission, Runtime};
use flowtrace::trace::TraceRecord;
use futures::future::BoxFuture;
use serde_json::json;

// ---- The flow: the one examples/customer_support.rs runs ----

#[path = "shared/customer_support_flow.rs"]
mod customer_support_flow;
use customer_support_flow::{customer_support_flow, Ticket};

// ---- Exporter counters ----

/// Counts traces and spans handed to it, and passes them on to the inner exporters.
#[derive(Clone, Default)]
struct CountingExporter {
    traces: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
    inner: Vec<Arc<dyn Exporter>>,
}

impl Exporter for CountingExporter {
    fn name(&self) -> &str {
        "counting"
    }

    fn export(&self, trace: Arc<TraceRecord>) {
        self.traces.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(trace.spans.len() as u64 + 1, Ordering::Relaxed);
        for inner in &self.inner {
            inner.export(Arc::clone(&trace));
        }
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        Box::pin(async move {
            if self.inner.is_empty() {
                let mut r = ExportReport::default();
                r.delivered = self.spans.load(Ordering::Relaxed);
                return r;
            }
            let mut r = ExportReport::default();
            for inner in &self.inner {
                r.merge(inner.flush(timeout).await);
            }
            r
        })
    }

    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        Box::pin(async move {
            let mut r = ExportReport::default();
            for inner in &self.inner {
                r.merge(inner.shutdown(timeout).await);
            }
            r
        })
    }
}

// ---- The service ----

#[derive(Clone)]
struct App {
    runtime: Runtime,
    flow: Flow,
    counters: CountingExporter,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn create_ticket(State(app): State<App>, body: Bytes) -> Response {
    let ticket: Ticket = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid ticket JSON: {e}")),
    };
    let shared = SharedStore::new();
    shared.insert("ticket", ticket.clone());
    let traced = app.flow.traced("CustomerSupportTicketAnalysis").session_id(ticket.id.clone()).tag("service");
    let handle = match app.runtime.spawn_traced(&traced, &shared).await {
        Ok(h) => h,
        Err(e @ flowtrace::Error::Refused(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let run_id = handle.id();
    if let Err(e) = handle.await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    Json(json!({
        "run_id": run_id,
        "ticket_id": ticket.id,
        "classification": shared.get_json("classification"),
        "routing": shared.get_json("routing"),
    }))
    .into_response()
}

async fn stats(State(app): State<App>) -> Response {
    Json(json!({
        "runs": app.runtime.stats(),
        "runs_in_flight": app.runtime.stats().in_flight,
        "exporter": {
            "traces": app.counters.traces.load(Ordering::Relaxed),
            "spans": app.counters.spans.load(Ordering::Relaxed),
        },
    }))
    .into_response()
}

/// Registers the SIGTERM and Ctrl-C handlers now, and returns a future that completes on
/// either. Registering before the service announces its port matters: a SIGTERM that arrives
/// before registration would take the default action and kill the process unflushed.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        let term = async move {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    eprintln!("cannot listen for SIGTERM: {e}");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        println!("shutting down: no new connections, waiting for runs in flight");
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name} must be a number, got {v:?}")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = env_number("PORT", 3000)?;
    let max_in_flight: usize = env_number("MAX_IN_FLIGHT", 2048)?;
    let shutdown_secs: u64 = env_number("SHUTDOWN_SECS", 10)?;

    let mut inner: Vec<Arc<dyn Exporter>> = Vec::new();
    if let Ok(path) = std::env::var("TRACE_FILE") {
        inner.push(Arc::new(JsonlFileExporter::new(&path).map_err(|e| format!("TRACE_FILE {path}: {e}"))?));
    }
    if std::env::var("LANGFUSE_PUBLIC_KEY").is_ok_and(|k| !k.trim().is_empty()) {
        inner.push(Arc::new(LangfuseExporter::from_env().map_err(|e| format!("Langfuse exporter: {e}"))?));
    }
    let counters = CountingExporter { inner, ..Default::default() };
    let tracer = Tracer::builder().exporter(counters.clone()).build()?;
    let runtime = Runtime::builder()
        .max_in_flight(max_in_flight)
        .admission(Admission::Wait)
        .run_timeout(Duration::from_secs(30))
        .tracer(&tracer)
        .build()?;
    let app = App { runtime: runtime.clone(), flow: customer_support_flow(), counters };
    let router = Router::new().route("/tickets", post(create_ticket)).route("/stats", get(stats)).with_state(app);

    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;

    let report = runtime.shutdown(Duration::from_secs(shutdown_secs)).await;
    println!("{report}");
    println!("shutdown report: {}", serde_json::to_string(&report)?);
    Ok(())
}
