//! The span tree a traced run produces: names, nesting, parent links, statuses, inputs and
//! outputs, attempts, waits, fallbacks, items, nested and batch flows, switches.

mod support;

use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use flowtrace::trace::{SpanKind, SpanRecord, SpanStatus};
use serde_json::{json, Value};
use support::*;

async fn traced(
    flow: &Flow,
    shared: &SharedStore,
    tracer: &Tracer,
    memory: &MemoryExporter,
) -> (Result<Action, Error>, TraceRecord) {
    let r = flow.traced("T").tracer(tracer).run(shared).await;
    let report = tracer.flush(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    (r, (*memory.traces().pop().expect("a trace")).clone())
}

fn names(t: &TraceRecord, parent: &SpanRecord) -> Vec<String> {
    t.children(parent.span_id).iter().map(|s| s.name.to_string()).collect()
}

#[tokio::test]
async fn two_node_flow_tree_is_exact() {
    let (tracer, memory) = memory_tracer();
    let a = FnNode::new("Classify")
        .prep(|ctx| Ok(ctx.shared().require::<Value>("ticket")?))
        .exec(|t, _| async move { Ok(json!({ "priority": if t["urgent"] == json!(true) { "high" } else { "low" } })) })
        .post(|ctx, _, c| {
            ctx.shared().insert("classification", c);
            Ok("route".into())
        })
        .into_node();
    let b = FnNode::new("Route")
        .post(|ctx, _, _| {
            ctx.shared().insert("routing", "escalation");
            Ok(Action::none())
        })
        .into_node();
    let _ = a.on("route") >> &b;
    let flow = Flow::named("Support", &a);
    let shared = SharedStore::from_json(json!({ "ticket": { "urgent": true } }));
    let (r, t) = traced(&flow, &shared, &tracer, &memory).await;
    assert_eq!(r.unwrap(), Action::none());

    assert_eq!(t.name, "T");
    assert_eq!(t.status, SpanStatus::Ok);
    assert_eq!(t.input, json!({ "ticket": { "urgent": true } }), "the input is the store at start");
    assert_eq!(t.output["routing"], json!("escalation"));
    assert_eq!(t.spans.len(), 11);

    let root = t.root().unwrap();
    assert_eq!((&*root.name, root.kind), ("Support", SpanKind::Flow));
    assert_eq!(names(&t, root), ["Classify", "Route"]);
    let classify = t.span("Classify").unwrap();
    assert_eq!(classify.kind, SpanKind::Node);
    // What the node saw (the entries its prep read) and what it did (the action, and the
    // entries its post changed with their new values).
    let changed = json!({ "action": "route", "changed": { "classification": { "priority": "high" } } });
    assert_eq!(classify.input, Some(json!({ "ticket": { "urgent": true } })));
    assert_eq!(classify.output, Some(changed.clone()));
    assert_eq!(names(&t, classify), ["Classify.prep", "Classify.exec", "Classify.post"]);
    let prep = t.span("Classify.prep").unwrap();
    let exec = t.span("Classify.exec").unwrap();
    let post = t.span("Classify.post").unwrap();
    assert_eq!(prep.output, Some(json!({ "urgent": true })));
    assert_eq!(exec.input, prep.output, "exec gets what prep returned");
    assert_eq!(exec.output, Some(json!({ "priority": "high" })));
    assert_eq!(prep.input, classify.input, "prep's input is the entries it read");
    assert_eq!(post.input, Some(json!({ "prep": prep.output, "exec": exec.output })));
    assert_eq!(post.output, Some(changed));
    assert_eq!(post.attributes["changed_keys"], json!(["classification"]));
    assert_eq!(names(&t, exec), ["attempt 0"]);
    // Phases are ordered in time and nested within their node and the trace.
    assert!(prep.end_unix_nanos <= exec.start_unix_nanos && exec.end_unix_nanos <= post.start_unix_nanos);
    for s in &t.spans {
        assert!(s.start_unix_nanos <= s.end_unix_nanos, "{}", s.name);
        assert!(s.start_unix_nanos >= t.start_unix_nanos && s.end_unix_nanos <= t.end_unix_nanos, "{}", s.name);
        if let Some(p) = s.parent_id {
            let parent = t.spans.iter().find(|x| x.span_id == p).expect("parent exists");
            assert!(parent.start_unix_nanos <= s.start_unix_nanos && s.end_unix_nanos <= parent.end_unix_nanos);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retries_waits_and_fallback_are_spans() {
    let (tracer, memory) = memory_tracer();
    let node = FnNode::new("Flaky")
        .exec(|_, cx| async move { Err(value_error(&format!("failure {}", cx.attempt() + 1))) })
        .fallback(|_, _, _| async { Ok(json!("recovered")) })
        .into_node()
        .max_retries(3)
        .wait(Duration::from_millis(20));
    let (r, t) = traced(&Flow::new(&node), &SharedStore::new(), &tracer, &memory).await;
    r.unwrap();
    let exec = t.span("Flaky.exec").unwrap();
    assert_eq!(names(&t, exec), ["attempt 0", "wait", "attempt 1", "wait", "attempt 2", "Flaky.exec_fallback"]);
    let children = t.children(exec.span_id);
    for (i, n) in [(0usize, 1), (2, 2), (4, 3)] {
        assert_eq!(children[i].attributes["attempt"], json!(n - 1), "attempts count from 0");
        assert!(matches!(&children[i].status, SpanStatus::Error { message, .. } if message == &format!("failure {n}")));
    }
    assert_eq!(children[1].attributes["wait_ms"], json!(20.0));
    // (Its duration is wall-clock time; this test runs on tokio's paused clock.)
    assert_eq!(children[5].input, Some(json!({ "error": "failure 3" })));
    assert_eq!(exec.output, Some(json!("recovered")));
    assert_eq!(t.span("Flaky").unwrap().status, SpanStatus::Ok, "a recovered node succeeds");
}

#[tokio::test]
async fn errors_carry_level_message_and_chain() {
    let (tracer, memory) = memory_tracer();
    let node = FnNode::new("Charge").exec(|_, _| async { Err(value_error("card declined")) }).into_node();
    let (r, t) = traced(&Flow::new(&node), &SharedStore::new(), &tracer, &memory).await;
    assert!(r.is_err());
    let exec = t.span("Charge.exec").unwrap();
    match &exec.status {
        SpanStatus::Error { kind, message, chain, .. } => {
            assert_eq!(kind, "node_error");
            assert_eq!(message, "card declined");
            assert_eq!(
                chain,
                &vec!["node 'Charge' failed in exec: card declined".to_owned(), "card declined".to_owned()]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(t.span("Charge").unwrap().status.is_error());
    assert!(t.span("Charge.post").is_none(), "post never ran");
    assert!(t.status.is_error());
    assert!(t.root().unwrap().status.is_error());
}

#[tokio::test]
async fn a_panic_records_message_and_location() {
    let (tracer, memory) = memory_tracer();
    let node = FnNode::new("Boom").prep(|_| panic!("bad input")).into_node();
    let (r, t) = traced(&Flow::new(&node), &SharedStore::new(), &tracer, &memory).await;
    assert!(matches!(r, Err(Error::Panic { .. })));
    match &t.span("Boom.prep").unwrap().status {
        SpanStatus::Error { kind, message, location, .. } => {
            assert_eq!(kind, "panic");
            assert_eq!(message, "bad input");
            assert!(location.as_deref().is_some_and(|l| l.contains("trace_tree.rs")), "{location:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn batch_items_nested_flows_and_batch_runs_nest() {
    let (tracer, memory) = memory_tracer();
    let items = FnBatchNode::new("Items").items(|_| Ok(json!([1, 2]))).exec(|v, _| async move { Ok(v) }).into_node();
    let inner = Flow::named("Inner", &items);
    let probe = FnNode::new("Probe").into_node();
    let batch = BatchFlow::named("PerKey", &probe)
        .params(|_| Ok(vec![params(json!({ "k": "a" })), params(json!({ "k": "b" }))]));
    let _ = inner.as_node() >> batch.as_node();
    let (r, t) = traced(&Flow::named("Outer", inner.as_node()), &SharedStore::new(), &tracer, &memory).await;
    r.unwrap();
    let outer = t.root().unwrap();
    assert_eq!(names(&t, outer), ["Inner", "PerKey"]);
    let exec = t.span("Items.exec").unwrap();
    assert_eq!(names(&t, exec), ["item 0", "item 1"]);
    assert_eq!(t.children(exec.span_id)[1].input, Some(json!(2)));
    let per_key = t.span("PerKey").unwrap();
    assert_eq!(names(&t, per_key), ["batch 0", "batch 1"]);
    let run1 = t.children(per_key.span_id)[1];
    assert_eq!(run1.input, Some(json!({ "params": { "k": "b" } })));
    assert_eq!(names(&t, run1), ["Probe"]);
}

#[tokio::test]
async fn switches_turn_off_phases_and_values() {
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).trace_prep(false).trace_inputs(false).build().unwrap();
    let node = FnNode::new("N").prep(|_| Ok(json!(1))).exec(|v, _| async move { Ok(v) }).into_node();
    let (_, t) = traced(&Flow::new(&node), &SharedStore::new(), &tracer, &memory).await;
    assert!(t.span("N.prep").is_none());
    assert!(t.spans.iter().all(|s| s.input.is_none()));
    assert_eq!(t.span("N.exec").unwrap().output, Some(json!(1)));
}

#[tokio::test]
async fn the_trace_input_is_a_snapshot_taken_at_start() {
    let (tracer, memory) = memory_tracer();
    let node = FnNode::new("Writer")
        .post(|ctx, _, _| {
            ctx.shared().insert("later", true);
            Ok(Action::none())
        })
        .into_node();
    let (_, t) = traced(&Flow::new(&node), &SharedStore::from_json(json!({ "early": 1 })), &tracer, &memory).await;
    assert_eq!(t.input, json!({ "early": 1 }));
    assert_eq!(t.output, json!({ "early": 1, "later": true }));
}

#[tokio::test]
async fn phases_are_also_tracing_spans() {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;
    #[derive(Clone, Default)]
    struct Names(Arc<Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Names {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if attrs.metadata().target().starts_with("flowtrace") {
                self.0.lock().unwrap().push(attrs.metadata().name().to_owned());
            }
        }
    }
    let seen = Names::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
    let node = FnNode::new("N").into_node();
    Flow::new(&node).run(&SharedStore::new()).await.unwrap();
    let names = seen.0.lock().unwrap().clone();
    assert_eq!(names, ["flow", "node", "phase", "phase", "phase"], "flow, node, then prep/exec/post");
}

#[test]
fn a_flow_prints_as_mermaid() {
    let review = FnNode::new("Review").into_node();
    let approve = FnNode::new("Approve").into_node();
    let _ = review.on("approve") >> &approve;
    let _ = review.on("revise") >> &review;
    review.on("reject").end();
    let inner = Flow::named("Inner", &review);
    let start = FnNode::new("Start").into_node();
    let _ = &start >> inner.as_node();
    let chart = Flow::named("Outer", &start).to_mermaid();
    assert!(chart.starts_with("flowchart TD\n"), "{chart}");
    assert!(chart.contains("subgraph n0[\"Outer\"]"), "{chart}");
    assert!(chart.contains("subgraph n2[\"Inner\"]"), "{chart}");
    assert!(chart.contains("n3 -->|approve| n4"), "{chart}");
    assert!(chart.contains("n3 -->|revise| n3"), "{chart}");
    assert!(chart.contains("n1 --> n2"), "{chart}");
    assert!(chart.contains("-->|reject| n3_end_reject"), "{chart}");
}

/// The `tracing` spans on flows, nodes and phases cost next to nothing with no subscriber.
/// A quick check, not a benchmark: run with
/// `cargo test --release --test trace_tree -- --ignored --nocapture tracing_spans_cost`.
#[tokio::test]
#[ignore = "timing figure; run by hand"]
async fn tracing_spans_cost_nothing_without_a_subscriber() {
    use tracing::Instrument;
    const N: u32 = 200_000;
    let start = std::time::Instant::now();
    for i in 0..N {
        let span = tracing::info_span!(target: "flowtrace::node", "phase", phase = "exec", attempt = i);
        async {}.instrument(span).await;
    }
    let per_span = start.elapsed().as_nanos() as f64 / f64::from(N);
    let node = FnNode::new("N").into_node();
    let flow = Flow::new(&node);
    let runs = 2_000u32;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        flow.run(&SharedStore::new()).await.unwrap();
    }
    let per_run = start.elapsed().as_nanos() as f64 / f64::from(runs);
    // A one-node flow run has 5 such spans (flow, node, prep, exec, post).
    let share = 5.0 * per_span / per_run * 100.0;
    println!("tracing span, no subscriber: {per_span:.1} ns; one-node flow run: {per_run:.0} ns; spans are {share:.2}% of it");
    assert!(share < 5.0, "the spans should be a small fraction of a run: {share:.2}%");
}
