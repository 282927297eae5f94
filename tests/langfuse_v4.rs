//! What Langfuse shows, checked against the rules of its v4 direct write path
//! (`/work/shared/reference/langfuse-ingestion.md` §10) on decoded OTLP requests, and the
//! same fields on the legacy batch API: the root observation carries the run's input and
//! output; trace context (name, user, session, tags, release, version, environment, trace
//! metadata) is on every span; levels tell the truth (a recovered failure is WARNING, a
//! cancelled span WARNING with its reason, only what ended the run ERROR); metadata is one
//! JSON object with top-level keys. Scenarios: the seed flow, a retry that succeeds, a failing
//! run, a cancelled run, a run past its deadline and a nested batch flow.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

#[path = "../examples/llm_agent.rs"]
#[allow(dead_code)]
mod llm_agent;

#[path = "../examples/shared/customer_support_flow.rs"]
#[allow(dead_code)]
mod customer_support_flow;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flowtrace::export::{DeliveryOptions, Ingestion, LangfuseExporter};
use flowtrace::prelude::*;
use flowtrace::runtime::Runtime;
use flowtrace::trace::{SpanKind, TraceRecord, TracingConfig};
use flowtrace::{Generation, ObservationType};
use langfuse_server::{attr, attr_str, LangfuseServer, PK, SK};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{json, Value};

const ENV: &str = "staging";

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowtrace-v4-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn exporter(server: &LangfuseServer, mode: Ingestion, name: &str) -> LangfuseExporter {
    LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(mode)
        .environment(ENV)
        .spool_dir(tempdir(name))
        .options(DeliveryOptions::default().max_batch_age(Duration::from_millis(20)))
        .build()
        .expect("exporter")
}

/// One tracer sending every trace over OTLP to one server and as legacy batches to another,
/// and keeping it in memory.
struct Rig {
    otlp: LangfuseServer,
    legacy: LangfuseServer,
    memory: MemoryExporter,
    tracer: Tracer,
}

impl Rig {
    async fn new(name: &str) -> Rig {
        let otlp = LangfuseServer::start().await;
        let legacy = LangfuseServer::start().await;
        let memory = MemoryExporter::new();
        let tracer = Tracer::builder()
            .exporter(exporter(&otlp, Ingestion::Otel, &format!("{name}-otlp")))
            .exporter(exporter(&legacy, Ingestion::Legacy, &format!("{name}-legacy")))
            .exporter(memory.clone())
            .build()
            .unwrap();
        Rig { otlp, legacy, memory, tracer }
    }

    /// Flushes; returns each trace with its OTLP spans and legacy events.
    async fn delivered(&self) -> Vec<(Arc<TraceRecord>, Vec<Span>, Vec<Value>)> {
        let report = self.tracer.flush(Duration::from_secs(10)).await;
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(self.legacy.received(|r| r.invalid.clone()), Vec::<String>::new(), "schema violations");
        let spans = self.otlp.received(|r| r.otlp_spans.clone());
        let events = self.legacy.received(|r| r.legacy_events.clone());
        self.memory
            .traces()
            .into_iter()
            .map(|t| {
                let tid = t.trace_id.to_bytes().to_vec();
                let uuid = t.trace_id.to_uuid();
                let s = spans.iter().filter(|s| s.trace_id == tid).cloned().collect();
                let e = events
                    .iter()
                    .filter(|e| {
                        e["body"]["traceId"] == uuid || (e["type"] == "trace-create" && e["body"]["id"] == uuid)
                    })
                    .cloned()
                    .collect();
                (t, s, e)
            })
            .collect()
    }
}

fn traced(flow: &Flow, tracer: &Tracer) -> flowtrace::TracedFlow {
    flow.traced("V4Trace")
        .session_id("session-9")
        .user_id("user-9")
        .tag("v4")
        .tag("test")
        .release("rel-1")
        .version("ver-2")
        .metadata("team", "support")
        .metadata("limits", json!({ "max": 3 }))
        .tracer(tracer)
}

/// A value as it reads back from JSON text (floats parse back to within one ulp).
fn reparse(v: &Value) -> Value {
    serde_json::from_str(&v.to_string()).unwrap()
}

/// A span's path of names from the root, `Outer/Node/Node.exec/attempt 0`.
fn path_of(spans: &[Span], s: &Span) -> String {
    let mut names = vec![s.name.clone()];
    let mut parent = s.parent_span_id.clone();
    while !parent.is_empty() {
        let Some(p) = spans.iter().find(|x| x.span_id == parent) else { break };
        names.push(p.name.clone());
        parent = p.parent_span_id.clone();
    }
    names.reverse();
    names.join("/")
}

fn json_attr(s: &Span, key: &str) -> Value {
    let raw = attr_str(s, key).unwrap_or_else(|| panic!("{}: no {key}", s.name));
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("{}: {key} is not JSON ({e}): {raw}", s.name))
}

fn level(s: &Span) -> &str {
    attr_str(s, "langfuse.observation.level").unwrap_or("DEFAULT")
}

/// Span id (hex) → (path of names, level).
type Levels = HashMap<String, (String, String)>;

/// Checks the §10 rules on one trace's OTLP spans; returns each span's level.
fn check_otlp(t: &TraceRecord, spans: &[Span]) -> Levels {
    assert_eq!(spans.len(), t.spans.len(), "every span arrives once");
    // The root observation: the run's input and output (§10: the v4 trace shows the root's).
    let roots: Vec<_> = spans.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root");
    let root = roots[0];
    assert_eq!(json_attr(root, "langfuse.observation.input"), reparse(&t.input), "root input = store at start");
    assert_eq!(json_attr(root, "langfuse.observation.output"), reparse(&t.output), "root output = store at end");
    // Kept for the legacy/dual path.
    assert_eq!(json_attr(root, "langfuse.trace.input"), reparse(&t.input));
    assert_eq!(json_attr(root, "langfuse.trace.output"), reparse(&t.output));
    let mut levels = HashMap::new();
    for s in spans {
        // Trace context on every span.
        assert_eq!(attr_str(s, "langfuse.trace.name"), Some(t.name.as_str()), "{}", s.name);
        assert_eq!(attr_str(s, "session.id"), t.session_id.as_deref(), "{}", s.name);
        assert_eq!(attr_str(s, "user.id"), t.user_id.as_deref(), "{}", s.name);
        assert_eq!(attr_str(s, "langfuse.release"), t.release.as_deref(), "{}", s.name);
        assert_eq!(attr_str(s, "langfuse.version"), t.version.as_deref(), "{}", s.name);
        assert_eq!(attr_str(s, "langfuse.environment"), Some(ENV), "{}", s.name);
        match attr(s, "langfuse.trace.tags") {
            Some(any_value::Value::ArrayValue(a)) => {
                let tags: Vec<_> = a
                    .values
                    .iter()
                    .map(|v| match &v.value {
                        Some(any_value::Value::StringValue(s)) => s.clone(),
                        other => panic!("tag {other:?}"),
                    })
                    .collect();
                assert_eq!(tags, t.tags);
            }
            other => assert!(t.tags.is_empty(), "{}: tags {other:?}", s.name),
        }
        let tmeta = json_attr(s, "langfuse.trace.metadata");
        for (k, v) in &t.metadata {
            assert_eq!(&tmeta[k], v, "{}: trace metadata {k} stays structured", s.name);
        }
        // Observation metadata: one JSON object (parsed by Langfuse), flat keys.
        let meta = json_attr(s, "langfuse.observation.metadata");
        let meta = meta.as_object().unwrap_or_else(|| panic!("{}: metadata is not an object", s.name));
        assert!(meta.contains_key("span_kind"), "{}", s.name);
        let rec = t.spans.iter().find(|r| r.span_id.to_bytes().as_slice() == s.span_id.as_slice()).unwrap();
        for (k, v) in &rec.attributes {
            assert_eq!(&meta[k], v, "{}: metadata {k}", s.name);
        }
        // No other `langfuse.observation.metadata.*` key, whose values would stay strings.
        assert!(
            !s.attributes.iter().any(|a| a.key.starts_with("langfuse.observation.metadata.")),
            "{}: dotted metadata keys",
            s.name
        );
        let lv = level(s).to_owned();
        if lv != "DEFAULT" {
            let msg = attr_str(s, "langfuse.observation.status_message").unwrap_or("");
            assert!(!msg.is_empty(), "{}: a {lv} says why", s.name);
        }
        let id: String = s.span_id.iter().map(|b| format!("{b:02x}")).collect();
        levels.insert(id, (path_of(spans, s), lv));
    }
    if t.status == flowtrace::trace::SpanStatus::Ok {
        assert!(levels.values().all(|(_, l)| l != "ERROR"), "a successful run shows no ERROR: {levels:?}");
    }
    levels
}

/// The same on the legacy events: trace-create fields, environment and version on every
/// observation, the root's input and output, structured metadata, and the same levels.
fn check_legacy(t: &TraceRecord, events: &[Value], otlp_levels: &Levels) {
    let creates: Vec<_> = events.iter().filter(|e| e["type"] == "trace-create").collect();
    assert_eq!(creates.len(), 1);
    let tb = &creates[0]["body"];
    assert_eq!(tb["name"], t.name.as_str());
    assert_eq!(tb["environment"], ENV);
    assert_eq!(tb["userId"].as_str(), t.user_id.as_deref());
    assert_eq!(tb["sessionId"].as_str(), t.session_id.as_deref());
    assert_eq!(tb["release"].as_str(), t.release.as_deref());
    assert_eq!(tb["version"].as_str(), t.version.as_deref());
    assert_eq!(tb["input"], reparse(&t.input));
    assert_eq!(tb["output"], reparse(&t.output));
    for (k, v) in &t.metadata {
        assert_eq!(&tb["metadata"][k], v);
    }
    let observation =
        |e: &&Value| matches!(e["type"].as_str(), Some("span-create" | "generation-create" | "event-create"));
    let spans: Vec<_> = events.iter().filter(observation).map(|e| &e["body"]).collect();
    assert_eq!(spans.len(), t.spans.len());
    for b in spans.iter() {
        assert_eq!(b["environment"], ENV, "{b}");
        assert_eq!(b["version"].as_str(), t.version.as_deref(), "{b}");
        assert!(b["metadata"]["span_kind"].is_string(), "{b}");
        if b.get("parentObservationId").is_none() {
            assert_eq!(b["input"], reparse(&t.input));
            assert_eq!(b["output"], reparse(&t.output));
        }
        let name = b["name"].as_str().unwrap().to_owned();
        let rec = t.spans.iter().find(|r| r.span_id.to_string() == b["id"].as_str().unwrap()).unwrap();
        for (k, v) in &rec.attributes {
            assert_eq!(&b["metadata"][k], v, "{name}: metadata {k}");
        }
    }
    // Same levels as over OTLP, span by span.
    for b in spans {
        let id = b["id"].as_str().unwrap();
        assert_eq!(Some(b["level"].as_str().unwrap()), otlp_levels.get(id).map(|(_, l)| l.as_str()), "{b}");
    }
}

fn params(v: Value) -> Params {
    v.as_object().cloned().unwrap_or_default()
}

/// The levels of the spans whose path ends with `suffix` (whole names, `/`-separated).
fn levels_named<'a>(levels: &'a Levels, suffix: &str) -> Vec<&'a str> {
    let mut v: Vec<(&String, &String)> = levels
        .values()
        .filter(|(p, _)| p == suffix || p.ends_with(&format!("/{suffix}")))
        .map(|(p, l)| (p, l))
        .collect();
    v.sort();
    v.into_iter().map(|(_, l)| l.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow_as_langfuse_v4_shows_it() {
    let rig = Rig::new("seed").await;
    let flow = customer_support_flow::customer_support_flow();
    let shared = SharedStore::new();
    shared.insert(
        "ticket",
        json!({"id": "TICKET-001", "subject": "URGENT: Payment processing error",
               "description": "Customer cannot complete payment, getting error 500", "customer_tier": "premium"}),
    );
    traced(&flow, &rig.tracer).run(&shared).await.unwrap();
    let got = rig.delivered().await;
    assert_eq!(got.len(), 1);
    let (t, spans, events) = &got[0];
    assert_eq!(t.output["routing"]["assigned_team"], "escalation");
    let levels = check_otlp(t, spans);
    assert!(levels.values().all(|(_, l)| l == "DEFAULT"), "{levels:?}");
    check_legacy(t, events, &levels);
    // Node type is a top-level, filterable metadata key.
    let node = spans.iter().find(|s| s.name == "TicketClassificationNode").unwrap();
    assert_eq!(json_attr(node, "langfuse.observation.metadata")["node_type"], "TicketClassificationNode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_succeeds_is_a_warning_not_an_error() {
    let rig = Rig::new("retry").await;
    let flaky = FnNode::new("Flaky")
        .exec(|_, cx| async move {
            if cx.attempt() < 2 {
                Err(format!("transient failure {}", cx.attempt()).into())
            } else {
                Ok(json!("ok"))
            }
        })
        .into_node()
        .max_retries(3);
    let flow = Flow::named("RetryFlow", &flaky);
    traced(&flow, &rig.tracer).run(&SharedStore::new()).await.unwrap();
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    assert_eq!(levels_named(&levels, "attempt 0"), ["WARNING"]);
    assert_eq!(levels_named(&levels, "attempt 1"), ["WARNING"]);
    assert_eq!(levels_named(&levels, "attempt 2"), ["DEFAULT"]);
    let a1 = spans.iter().find(|s| s.name == "attempt 0").unwrap();
    assert_eq!(attr_str(a1, "langfuse.observation.status_message"), Some("transient failure 0"));
    let meta = json_attr(a1, "langfuse.observation.metadata");
    assert_eq!((meta["attempt"].as_u64(), meta["error_kind"].as_str()), (Some(0), Some("node_error")));
    check_legacy(t, events, &levels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_is_error_only_where_the_failure_ended_it() {
    let rig = Rig::new("fail").await;
    let ok = FnNode::new("Fine").into_node();
    let broken = FnNode::new("Broken")
        .exec(|_, _| async move { Err::<Value, _>("disk full".into()) })
        .into_node()
        .max_retries(2);
    let _ = &ok >> &broken;
    let flow = Flow::named("FailFlow", &ok);
    let err = traced(&flow, &rig.tracer).run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(err.kind(), "node_error");
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    // The first attempt was retried: WARNING. The last one, the fallback that re-raised it,
    // the exec, the node and the flow ended the run: ERROR. The node that worked: DEFAULT.
    assert_eq!(levels_named(&levels, "Broken.exec/attempt 0"), ["WARNING"]);
    for name in ["Broken.exec/attempt 1", "Broken.exec/Broken.exec_fallback", "Broken.exec", "Broken", "FailFlow"] {
        assert_eq!(levels_named(&levels, name), ["ERROR"], "{name}");
    }
    assert_eq!(levels_named(&levels, "Fine"), ["DEFAULT"]);
    let root = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert!(attr_str(root, "langfuse.observation.status_message").unwrap().contains("disk full"));
    let meta = json_attr(spans.iter().find(|s| s.name == "Broken").unwrap(), "langfuse.observation.metadata");
    assert_eq!(meta["error_kind"], "node_error");
    assert!(meta["error_chain"].is_array(), "the chain is an array, not a string: {meta}");
    check_legacy(t, events, &levels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_names_its_location_in_metadata() {
    let rig = Rig::new("panic").await;
    let bad = FnNode::new("Bad")
        .exec(|_, _| async move {
            if true {
                panic!("boom");
            }
            Ok(Value::Null)
        })
        .into_node();
    let flow = Flow::named("PanicFlow", &bad);
    let _ = traced(&flow, &rig.tracer).run(&SharedStore::new()).await.unwrap_err();
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    let attempt = spans.iter().find(|s| s.name == "attempt 0").unwrap();
    let meta = json_attr(attempt, "langfuse.observation.metadata");
    assert_eq!(meta["error_kind"], "panic");
    assert!(meta["panic_location"].as_str().is_some_and(|l| l.contains("langfuse_v4.rs")), "{meta}");
    check_legacy(t, events, &levels);
}

/// A node that waits forever (until the run is stopped).
fn stuck(name: &str, started: Arc<tokio::sync::Semaphore>) -> NodeRef {
    FnNode::new(name.to_owned())
        .exec(move |_, _| {
            let started = started.clone();
            async move {
                started.add_permits(1);
                std::future::pending::<()>().await;
                Ok(Value::Null)
            }
        })
        .into_node()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_is_warning_with_the_reason() {
    let rig = Rig::new("cancel").await;
    let rt = Runtime::builder().tracer(&rig.tracer).build().unwrap();
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let node = stuck("Stuck", started.clone());
    let flow = Flow::named("CancelFlow", &node);
    let h = rt.spawn(&traced(&flow, &rig.tracer), &SharedStore::new()).await.unwrap();
    started.acquire().await.unwrap().forget();
    h.cancel("operator stop");
    assert_eq!(h.await.unwrap_err().kind(), "cancelled");
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    for name in ["CancelFlow", "Stuck", "Stuck.exec", "attempt 0"] {
        assert_eq!(levels_named(&levels, name), ["WARNING"], "{name}");
    }
    assert!(levels.values().all(|(_, l)| l != "ERROR"), "{levels:?}");
    let root = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert!(attr_str(root, "langfuse.observation.status_message").unwrap().contains("operator stop"));
    check_legacy(t, events, &levels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_deadline_warns_on_cut_spans_and_fails_at_the_root() {
    let rig = Rig::new("deadline").await;
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let node = stuck("Slow", started);
    let flow = Flow::named("DeadlineFlow", &node);
    let err = traced(&flow, &rig.tracer)
        .options(RunOptions::new().timeout(Duration::from_millis(50)))
        .run(&SharedStore::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "timeout");
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    // The spans the deadline cut short: WARNING with the reason. The run failed: its root is
    // ERROR with the run's error, so Langfuse shows the trace as failed.
    for name in ["Slow", "Slow.exec", "attempt 0"] {
        assert_eq!(levels_named(&levels, name), ["WARNING"], "{name}");
    }
    assert_eq!(levels_named(&levels, "DeadlineFlow"), ["ERROR"]);
    let root = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert!(attr_str(root, "langfuse.observation.status_message").unwrap().contains("timed out"));
    check_legacy(t, events, &levels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_batch_flow_carries_batch_and_item_indexes() {
    let rig = Rig::new("batch").await;
    let items = FnBatchNode::new("Items")
        .items(|ctx| {
            let k: i64 = ctx.param("k").ok_or("no k")?;
            Ok(json!([k, k + 1]))
        })
        .exec(|item, cx| async move {
            if cx.attempt() == 0 && item.as_i64() == Some(2) {
                Err("flaky item".into())
            } else {
                Ok(item)
            }
        })
        .post(|ctx, _, out| {
            ctx.shared().update("seen", Vec::<Value>::new, |v| v.push(out.clone()))?;
            Ok(Action::none())
        })
        .into_node()
        .max_retries(2);
    let inner = Flow::named("Inner", &items);
    let batch = BatchFlow::new(inner.as_node()).params(|_| Ok(vec![params(json!({"k": 1})), params(json!({"k": 10}))]));
    let flow = Flow::named("Outer", batch.as_node());
    traced(&flow, &rig.tracer).run(&SharedStore::new()).await.unwrap();
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    assert_eq!(levels.values().filter(|(_, l)| l == "WARNING").count(), 1, "the recovered item attempt: {levels:?}");
    let meta = |s: &Span| json_attr(s, "langfuse.observation.metadata");
    let batches: Vec<_> = spans.iter().filter(|s| meta(s)["span_kind"] == "batch_run").collect();
    let mut idx: Vec<_> = batches.iter().map(|s| meta(s)["batch_index"].as_u64().unwrap()).collect();
    idx.sort();
    assert_eq!(idx, [0, 1]);
    let items: Vec<_> = spans.iter().filter(|s| meta(s)["span_kind"] == "item").collect();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|s| meta(s)["item_index"].is_u64()));
    assert!(t.spans.iter().any(|s| s.kind == SpanKind::Item));
    check_legacy(t, events, &levels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_comes_from_langfuse_and_otel_variables() {
    let server = LangfuseServer::start().await;
    let spool = tempdir("env");
    let vars = |extra: Vec<(&str, &str)>| -> Vec<(String, String)> {
        let mut v = vec![
            ("LANGFUSE_PUBLIC_KEY", PK),
            ("LANGFUSE_SECRET_KEY", SK),
            ("LANGFUSE_INGESTION", "otel"),
            ("FLOWTRACE_SPOOL_DIR", spool.to_str().unwrap()),
        ];
        v.extend(extra);
        v.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    };
    let url = server.url();
    // LANGFUSE_TRACING_ENVIRONMENT wins over the resource's deployment.environment.
    let cfg = TracingConfig::from_vars(
        vars(vec![
            ("LANGFUSE_HOST", url.as_str()),
            ("LANGFUSE_TRACING_ENVIRONMENT", "production"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=qa,team=support"),
        ])
        .into_iter(),
    )
    .unwrap();
    let tracer = Tracer::builder().exporter(LangfuseExporter::from_config(&cfg).unwrap()).build().unwrap();
    let flow = Flow::named("EnvFlow", &FnNode::new("N").into_node());
    flow.traced("EnvTrace").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    assert!(tracer.flush(Duration::from_secs(10)).await.is_complete());
    let spans = server.received(|r| r.otlp_spans.clone());
    assert!(!spans.is_empty());
    assert!(spans.iter().all(|s| attr_str(s, "langfuse.environment") == Some("production")));
    let resource = server.received(|r| r.otlp_resource.clone());
    let res = |k: &str| {
        resource.iter().find(|a| a.key == k).and_then(|a| a.value.clone()).and_then(|v| v.value).map(|v| match v {
            any_value::Value::StringValue(s) => s,
            other => format!("{other:?}"),
        })
    };
    assert_eq!(res("team").as_deref(), Some("support"), "the Langfuse exporter reads OTEL_RESOURCE_ATTRIBUTES");
    assert_eq!(res("deployment.environment").as_deref(), Some("qa"));

    // Without LANGFUSE_TRACING_ENVIRONMENT, deployment.environment is the environment.
    let server = LangfuseServer::start().await;
    let url = server.url();
    let cfg = TracingConfig::from_vars(
        vars(vec![("LANGFUSE_HOST", url.as_str()), ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=qa")])
            .into_iter(),
    )
    .unwrap();
    let tracer = Tracer::builder().exporter(LangfuseExporter::from_config(&cfg).unwrap()).build().unwrap();
    flow.traced("EnvTrace").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    assert!(tracer.flush(Duration::from_secs(10)).await.is_complete());
    let spans = server.received(|r| r.otlp_spans.clone());
    assert!(!spans.is_empty() && spans.iter().all(|s| attr_str(s, "langfuse.environment") == Some("qa")));

    // A name Langfuse would silently turn into `default` is refused, naming the variable.
    let cfg = TracingConfig::from_vars(vars(vec![("LANGFUSE_TRACING_ENVIRONMENT", "Prod Env")]).into_iter()).unwrap();
    let err = LangfuseExporter::from_config(&cfg).unwrap_err();
    assert!(err.to_string().contains("LANGFUSE_TRACING_ENVIRONMENT"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_calls_are_generations_on_both_protocols() {
    let rig = Rig::new("gen").await;
    let agent = FnNode::new("Agent")
        .prep(|ctx| Ok(ctx.shared().get_json("question").unwrap_or(Value::Null)))
        .exec(|q, cx| async move {
            let messages = json!([{"role": "user", "content": q}]);
            cx.generation(
                Generation::new("plan")
                    .model("gpt-4o-mini")
                    .model_parameter("temperature", 0.2)
                    .input(&messages)
                    .completion_started()
                    .output(json!({"role": "assistant", "content": "search"}))
                    .usage(12, 3)
                    .usage_detail("input_cached_tokens", 4)
                    .cost(0.000_012, 0.000_006)
                    .prompt("plan-prompt", 3),
            );
            cx.generation(Generation::new("answer").model("gpt-4o-mini").input(&messages).output("42").usage(20, 5));
            Ok(json!("42"))
        })
        .post(|ctx, _, e| {
            ctx.shared().insert("answer", e);
            Ok(Action::none())
        })
        .into_node()
        .observation_type(ObservationType::Agent);
    let flow = Flow::named("GenFlow", &agent);
    let shared = SharedStore::new();
    shared.insert("question", "what is 6*7?");
    traced(&flow, &rig.tracer).run(&shared).await.unwrap();
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    check_legacy(t, events, &levels);
    // The trace record sums them (the local file and `flowtrace show` carry the same).
    let totals = t.usage_totals();
    assert_eq!((totals.generations, totals.total_tokens), (2, 40));
    assert_eq!(totals.tokens.get("input_cached_tokens"), Some(&4));
    assert!((totals.cost.unwrap() - 0.000_018).abs() < 1e-12);
    let tree = t.render_tree();
    assert!(tree.contains("2 generations, 40 tokens, $0.000018"), "{tree}");
    assert!(tree.contains("plan  ") && tree.contains("[gpt-4o-mini 12+3 tokens $0.000018]"), "{tree}");

    // OTLP: two generation observations under the attempt, with Langfuse's fields.
    let attempt = spans.iter().find(|s| s.name == "attempt 0").unwrap();
    let gens: Vec<_> =
        spans.iter().filter(|s| attr_str(s, "langfuse.observation.type") == Some("generation")).collect();
    assert_eq!(gens.len(), 2);
    assert!(gens.iter().all(|g| g.parent_span_id == attempt.span_id), "under the attempt");
    let plan = gens.iter().find(|s| s.name == "plan").unwrap();
    assert_eq!(attr_str(plan, "langfuse.observation.model.name"), Some("gpt-4o-mini"));
    assert_eq!(json_attr(plan, "langfuse.observation.model.parameters"), json!({"temperature": 0.2}));
    assert_eq!(
        json_attr(plan, "langfuse.observation.usage_details"),
        json!({"input": 12, "output": 3, "total": 15, "input_cached_tokens": 4})
    );
    assert_eq!(json_attr(plan, "langfuse.observation.cost_details")["input"], json!(0.000_012));
    assert_eq!(json_attr(plan, "langfuse.observation.input"), json!([{"role": "user", "content": "what is 6*7?"}]));
    assert_eq!(json_attr(plan, "langfuse.observation.output")["content"], "search");
    let cst = attr_str(plan, "langfuse.observation.completion_start_time").unwrap();
    assert!(langfuse_server::is_iso8601(cst), "{cst}");
    assert_eq!(attr_str(plan, "langfuse.observation.prompt.name"), Some("plan-prompt"));
    assert!(matches!(attr(plan, "langfuse.observation.prompt.version"), Some(any_value::Value::IntValue(3))));
    assert!(matches!(attr(plan, "gen_ai.usage.input_tokens"), Some(any_value::Value::IntValue(12))));
    // The node declared as an agent.
    let node = spans.iter().find(|s| s.name == "Agent").unwrap();
    assert_eq!(attr_str(node, "langfuse.observation.type"), Some("agent"));

    // Legacy: generation-create events with the same fields, valid for the schema.
    let gens: Vec<_> = events.iter().filter(|e| e["type"] == "generation-create").map(|e| &e["body"]).collect();
    assert_eq!(gens.len(), 2);
    let plan = gens.iter().find(|b| b["name"] == "plan").unwrap();
    assert_eq!(plan["model"], "gpt-4o-mini");
    assert_eq!(plan["modelParameters"], json!({"temperature": 0.2}));
    assert_eq!(plan["usageDetails"]["input_cached_tokens"], 4);
    assert_eq!(
        plan["usage"],
        json!({"input": 12, "output": 3, "total": 15, "unit": "TOKENS",
        "inputCost": 0.000_012, "outputCost": 0.000_006, "totalCost": 0.000_018})
    );
    assert_eq!(plan["costDetails"]["total"], json!(0.000_018));
    assert_eq!((plan["promptName"].as_str(), plan["promptVersion"].as_u64()), (Some("plan-prompt"), Some(3)));
    assert!(plan["completionStartTime"].is_string());
    assert_eq!(plan["parentObservationId"], t.span("attempt 0").unwrap().span_id.to_string());
    let agent_ev = events.iter().find(|e| e["body"]["name"] == "Agent").unwrap();
    assert_eq!(agent_ev["body"]["metadata"]["observation_type"], "agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pocketflow_warnings_are_warning_events_where_they_happen() {
    let rig = Rig::new("warn").await;
    let first = FnNode::new("First").post(|_, _, _| Ok(Action::new("unwired"))).into_node();
    let a = FnNode::new("A").into_node();
    let b = FnNode::new("B").into_node();
    let _ = first.on("go") >> &a;
    let _ = first.on("go") >> &b; // overwrites: PocketFlow warns
    let flow = Flow::named("WarnFlow", &first);
    traced(&flow, &rig.tracer).run(&SharedStore::new()).await.unwrap();
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    check_legacy(t, events, &levels);
    let evs: Vec<_> = spans.iter().filter(|s| attr_str(s, "langfuse.observation.type") == Some("event")).collect();
    assert_eq!(evs.len(), 2, "{:?}", evs.iter().map(|s| &s.name).collect::<Vec<_>>());
    let ends = evs.iter().find(|s| s.name.starts_with("Flow ends")).unwrap();
    assert_eq!(ends.name, "Flow ends: 'unwired' not found in ['go']");
    assert_eq!(level(ends), "WARNING");
    assert_eq!(attr_str(ends, "langfuse.observation.status_message"), Some(ends.name.as_str()));
    let flow_span = spans.iter().find(|s| s.name == "WarnFlow").unwrap();
    assert_eq!(ends.parent_span_id, flow_span.span_id, "on the flow that ended");
    let over = evs.iter().find(|s| s.name.starts_with("Overwriting")).unwrap();
    assert_eq!(over.name, "Overwriting successor for action 'go'");
    let node = spans.iter().find(|s| s.name == "First").unwrap();
    assert_eq!(over.parent_span_id, node.span_id, "on the node whose wiring was overwritten");
    assert_eq!(ends.start_time_unix_nano, ends.end_time_unix_nano, "a point in time");
    // Legacy: event-create, without an end time.
    let e: Vec<_> = events.iter().filter(|e| e["type"] == "event-create").collect();
    assert_eq!(e.len(), 2);
    assert!(e.iter().all(|e| e["body"]["level"] == "WARNING" && e["body"].get("endTime").is_none()));
    // A warning does not make the run fail.
    assert!(levels.values().all(|(_, l)| l != "ERROR"));
}

/// A scripted OpenAI-compatible chat-completions server on 127.0.0.1: a 429 with
/// `Retry-After: 1`, a decision to search, a 500, a decision to answer, the answer.
struct LlmStub {
    addr: std::net::SocketAddr,
    seen: Arc<parking_lot::Mutex<Vec<(std::time::Instant, String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LlmStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn completion(content: &str, prompt: u64, completion: u64, extra: Value) -> Value {
    let mut usage =
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    if let (Some(u), Some(e)) = (usage.as_object_mut(), extra.as_object()) {
        u.extend(e.clone());
    }
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "test-model-2026",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": usage,
    })
}

impl LlmStub {
    async fn start() -> LlmStub {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let seen: Arc<parking_lot::Mutex<Vec<(std::time::Instant, String, Value)>>> = Arc::default();
        let state = Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |h: HeaderMap, axum::Json(body): axum::Json<Value>| {
                let state = Arc::clone(&state);
                async move {
                    let auth = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let n = {
                        let mut s = state.lock();
                        s.push((std::time::Instant::now(), auth, body));
                        s.len()
                    };
                    match n {
                        1 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
                        2 => axum::Json(completion(
                            r#"Sure: {"action": "search", "query": "nobel physics 2024", "reason": "need facts"}"#,
                            50,
                            10,
                            json!({"prompt_tokens_details": {"cached_tokens": 8}}),
                        ))
                        .into_response(),
                        3 => (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(),
                        4 => axum::Json(completion(
                            r#"{"action": "answer", "reason": "the context names the winners"}"#,
                            80,
                            8,
                            json!({}),
                        ))
                        .into_response(),
                        _ => axum::Json(completion(
                            "John Hopfield and Geoffrey Hinton, for neural-network machine learning.",
                            120,
                            12,
                            json!({"completion_tokens_details": {"reasoning_tokens": 3}}),
                        ))
                        .into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LlmStub { addr, seen, task }
    }
}

/// The LLM example's agent against the stub, traced to the fake Langfuse over both
/// protocols: five calls, five generations under their attempts (the 429 and the 500 as
/// failed ones, which the node's retries absorbed, so WARNING), the responses' usage, the
/// node types, and no ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_agent_records_each_call_as_a_generation() {
    let llm = LlmStub::start().await;
    let rig = Rig::new("llm").await;
    let client =
        llm_agent::Llm::new(&format!("http://{}/v1", llm.addr), Some("sk-test-llm".into()), "test-model".into())
            .unwrap();
    let flow = llm_agent::build_flow(Arc::new(client));
    let shared = SharedStore::new();
    shared.insert("question", "Who won the 2024 Nobel Prize in Physics?");
    traced(&flow, &rig.tracer).run(&shared).await.unwrap();
    assert!(shared.get::<String>("answer").unwrap().unwrap().starts_with("John Hopfield and Geoffrey Hinton"));
    // The stub saw five calls, with the key and model; the 429's Retry-After was honoured.
    let seen = llm.seen.lock().clone();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|(_, auth, body)| auth == "Bearer sk-test-llm" && body["model"] == "test-model"));
    assert!(seen[1].0.duration_since(seen[0].0) >= Duration::from_secs(1), "waited for Retry-After");

    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    check_legacy(t, events, &levels);
    assert!(levels.values().all(|(_, l)| l != "ERROR"), "{levels:?}");
    let totals = t.usage_totals();
    assert_eq!((totals.generations, totals.total_tokens), (5, 60 + 88 + 132));
    assert_eq!(totals.tokens.get("input_cached_tokens"), Some(&8));
    assert_eq!(totals.tokens.get("output_reasoning_tokens"), Some(&3));
    assert!(t.render_tree().contains("5 generations, 280 tokens"), "{}", t.render_tree());

    // OTLP.
    let gens: Vec<_> =
        spans.iter().filter(|s| attr_str(s, "langfuse.observation.type") == Some("generation")).collect();
    assert_eq!(gens.len(), 5);
    let failed: Vec<_> = gens.iter().filter(|g| level(g) == "WARNING").collect();
    assert_eq!(failed.len(), 2, "failed calls the retries absorbed are warnings");
    let msg = |g: &Span| attr_str(g, "langfuse.observation.status_message").unwrap_or("").to_owned();
    assert!(failed.iter().any(|g| msg(g).contains("HTTP 429")) && failed.iter().any(|g| msg(g).contains("HTTP 500")));
    let first = gens
        .iter()
        .find(|g| attr_str(g, "langfuse.observation.usage_details").is_some_and(|u| u.contains("\"input\":50")))
        .expect("the first decision");
    assert_eq!(
        json_attr(first, "langfuse.observation.usage_details"),
        json!({"input": 50, "output": 10, "total": 60, "input_cached_tokens": 8})
    );
    assert_eq!(attr_str(first, "langfuse.observation.model.name"), Some("test-model-2026"));
    assert_eq!(json_attr(first, "langfuse.observation.model.parameters"), json!({"temperature": 0.0}));
    assert_eq!(json_attr(first, "langfuse.observation.input")[0]["role"], "system");
    for g in &gens {
        let parent = spans.iter().find(|s| s.span_id == g.parent_span_id).unwrap();
        assert!(parent.name.starts_with("attempt "), "{}", parent.name);
    }
    for (node, ty) in [("DecideAction", "agent"), ("SearchWeb", "tool"), ("AnswerQuestion", "chain")] {
        let of: Vec<_> = spans.iter().filter(|s| s.name == node).collect();
        assert!(!of.is_empty() && of.iter().all(|s| attr_str(s, "langfuse.observation.type") == Some(ty)), "{node}");
    }
    // Legacy.
    let lgens: Vec<_> = events.iter().filter(|e| e["type"] == "generation-create").map(|e| &e["body"]).collect();
    assert_eq!(lgens.len(), 5);
    assert_eq!(lgens.iter().filter(|g| g["level"] == "WARNING").count(), 2);
    assert_eq!(lgens.iter().filter_map(|g| g["usage"]["total"].as_u64()).sum::<u64>(), 280);
    assert_eq!(lgens.iter().filter_map(|g| g["usageDetails"]["input"].as_u64()).sum::<u64>(), 250);
}

/// The example program itself, against the stub, tracing to a local file: it prints the
/// answer, sends the key only to the LLM, and the file carries the generations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_agent_example_runs_against_a_local_stub() {
    let example = langfuse_server::example_binary_named("llm_agent");
    let llm = LlmStub::start().await;
    let dir = tempdir("llm-example");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("traces.jsonl");
    let out = tokio::process::Command::new(&example)
        .current_dir(&dir)
        .env("OPENAI_BASE_URL", format!("http://{}/v1", llm.addr))
        .env("OPENAI_API_KEY", "sk-test-llm")
        .env("OPENAI_MODEL", "test-model")
        .env("FLOWTRACE_TRACE_FILE", &file)
        .env_remove("LANGFUSE_PUBLIC_KEY")
        .env_remove("LANGFUSE_SECRET_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("🔎 searches: 1"), "{stdout}");
    assert!(stdout.contains("💬 John Hopfield and Geoffrey Hinton"), "{stdout}");
    assert_eq!(llm.seen.lock().len(), 5);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("sk-test-llm"), "the API key never reaches the trace");
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let gens: Vec<_> = line["spans"].as_array().unwrap().iter().filter(|s| s.get("generation").is_some()).collect();
    assert_eq!(gens.len(), 5);
    let tokens: u64 = gens.iter().filter_map(|g| g["generation"]["usage"]["total"].as_u64()).sum();
    assert_eq!(tokens, 280);
}

/// What each phase saw and changed, as Langfuse shows it: prep's input is the store entries
/// it read, post's input prep's and exec's results, post's output the action and the entries
/// it changed with their new values; the node shows the same summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_phase_shows_what_it_saw_and_changed() {
    let rig = Rig::new("phases").await;
    let node = FnNode::new("Bump")
        .prep(|ctx| {
            let n: i64 = ctx.shared().require("count")?;
            let _ = ctx.shared().get_json("label");
            Ok(json!(n))
        })
        .exec(|n, _| async move { Ok(json!(n.as_i64().unwrap_or(0) + 1)) })
        .post(|ctx, _, e| {
            ctx.shared().insert("count", e);
            ctx.shared().insert("bumped", true);
            Ok(Action::new("done"))
        })
        .into_node();
    let flow = Flow::named("PhaseFlow", &node);
    let shared = SharedStore::from_json(json!({"count": 41, "label": "x", "untouched": [1, 2, 3]}));
    traced(&flow, &rig.tracer).run(&shared).await.unwrap();
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    let levels = check_otlp(t, spans);
    check_legacy(t, events, &levels);
    let io = |name: &str| {
        let s = spans.iter().find(|s| s.name == name).unwrap();
        (json_attr(s, "langfuse.observation.input"), json_attr(s, "langfuse.observation.output"))
    };
    let saw = json!({"count": 41, "label": "x"});
    let did = json!({"action": "done", "changed": {"count": 42, "bumped": true}});
    assert_eq!(io("Bump.prep"), (saw.clone(), json!(41)));
    assert_eq!(io("Bump.exec"), (json!(41), json!(42)));
    assert_eq!(io("Bump.post"), (json!({"prep": 41, "exec": 42}), did.clone()));
    assert_eq!(io("Bump"), (saw, did));
}

/// A node declared a generation is the LLM call: the call its exec recorded is folded into
/// it, so Langfuse shows one generation with the model and usage, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_declared_a_generation_carries_its_call() {
    let rig = Rig::new("gen-node").await;
    let node = FnNode::new("Summarise")
        .exec(|_, cx| async move {
            if cx.attempt() == 0 {
                cx.generation(Generation::new("call").model("m-1").failed("HTTP 503"));
                return Err("HTTP 503".into());
            }
            cx.generation(
                Generation::new("call")
                    .model("m-1")
                    .input(json!([{"role": "user", "content": "sum up"}]))
                    .output("short")
                    .usage(7, 2)
                    .cost(0.001, 0.002),
            );
            Ok(json!("short"))
        })
        .into_node()
        .max_retries(2)
        .observation_type(ObservationType::Generation);
    let flow = Flow::named("GenNodeFlow", &node);
    traced(&flow, &rig.tracer).run(&SharedStore::new()).await.unwrap();
    let got = rig.delivered().await;
    let (t, spans, events) = &got[0];
    // The record keeps the call as it happened; what Langfuse gets has it folded into the node.
    assert_eq!(t.spans.iter().filter(|s| s.kind == SpanKind::Generation).count(), 2);
    assert_eq!(spans.len(), t.spans.len() - 1, "the successful call is the node itself");
    let gens: Vec<_> =
        spans.iter().filter(|s| attr_str(s, "langfuse.observation.type") == Some("generation")).collect();
    assert_eq!(gens.len(), 2, "the node, and the failed call under attempt 0");
    let n = gens.iter().find(|s| s.name == "Summarise").unwrap();
    assert_eq!(attr_str(n, "langfuse.observation.model.name"), Some("m-1"));
    assert_eq!(json_attr(n, "langfuse.observation.usage_details"), json!({"input": 7, "output": 2, "total": 9}));
    assert_eq!(json_attr(n, "langfuse.observation.input"), json!([{"role": "user", "content": "sum up"}]));
    assert_eq!(json_attr(n, "langfuse.observation.output"), json!("short"));
    let failed = gens.iter().find(|s| s.name == "call").unwrap();
    assert_eq!(level(failed), "WARNING");
    assert!(attr_str(failed, "langfuse.observation.usage_details").is_none());
    let lg: Vec<_> = events.iter().filter(|e| e["type"] == "generation-create").collect();
    assert_eq!(lg.len(), 2);
    let ln = lg.iter().find(|e| e["body"]["name"] == "Summarise").unwrap();
    assert_eq!(ln["body"]["usageDetails"]["total"], 9);
    assert_eq!(ln["body"]["costDetails"]["total"], json!(0.003));
    assert_eq!(server_invalid(&rig), Vec::<String>::new());
}

fn server_invalid(rig: &Rig) -> Vec<String> {
    rig.legacy.received(|r| r.invalid.clone())
}
