//! PocketFlow conformance, flows (spec §13 cases 1–12, 57–64, 72–75, 78, 90): wiring,
//! branching, cycles, the "Flow ends" warning, nesting, params and per-visit state.
//! Every flow case also runs traced (`run_both`), which must not change its result.

mod support;

use flowtrace::prelude::*;
use serde_json::{json, Value};
use support::*;

/// `Check`: post returns "positive" when current ≥ 0, else "negative".
fn check() -> NodeRef {
    FnNode::new("Check")
        .post(|ctx, _, _| Ok(if ctx.shared().require::<i64>("current")? >= 0 { "positive" } else { "negative" }.into()))
        .into_node()
}

#[tokio::test]
async fn case_001_start_method_initialization() {
    let f = Flow::empty();
    f.start(&number(5));
    let (ret, shared, _) = run_both(&f, json!({})).await;
    assert_eq!(current(&shared), 5);
    assert_eq!(ret.unwrap(), Action::none());
}

#[tokio::test]
async fn case_002_start_method_chaining() {
    let f = Flow::empty();
    f.start(&number(5)).next(&add(3)).next(&mul(2));
    let (ret, shared, _) = run_both(&f, json!({})).await;
    assert_eq!(current(&shared), 16);
    assert_eq!(ret.unwrap(), Action::none());
}

#[tokio::test]
async fn case_003_sequence_with_rshift() {
    let f = Flow::empty();
    let _ = f.start(&number(5)) >> add(3) >> mul(2);
    let (ret, shared, _) = run_both(&f, json!({})).await;
    assert_eq!(current(&shared), 16);
    assert_eq!(ret.unwrap(), Action::none());
}

fn branching(start: i64) -> Flow {
    let n = number(start);
    let c = check();
    let _ = &n >> &c;
    let _ = c.on("positive") >> add(10);
    let _ = c.on("negative") >> add(-20);
    Flow::new(&n)
}

#[tokio::test]
async fn case_004_branching_positive() {
    let (ret, shared, _) = run_both(&branching(5), json!({})).await;
    assert_eq!(current(&shared), 15);
    assert_eq!(ret.unwrap(), Action::none());
}

#[tokio::test]
async fn case_005_branching_negative() {
    let (ret, shared, _) = run_both(&branching(-5), json!({})).await;
    assert_eq!(current(&shared), -25);
    assert_eq!(ret.unwrap(), Action::none());
}

#[tokio::test]
async fn case_006_cycle_until_negative_ends_with_signal() {
    let n = number(10);
    let c = check();
    let minus = add(-3);
    let end = signal("End", Some("cycle_done"));
    let _ = &n >> &c;
    let _ = c.on("positive") >> &minus;
    let _ = c.on("negative") >> &end;
    let _ = &minus >> &c;
    let (ret, shared, trace) = run_both(&Flow::new(&n), json!({})).await;
    assert_eq!(current(&shared), -2); // 10 → 7 → 4 → 1 → −2
    assert_eq!(ret.unwrap(), "cycle_done");
    // Every visit of the loop is a node span of its own: Check runs 5 times.
    assert_eq!(trace.spans.iter().filter(|s| &*s.name == "Check").count(), 5);
}

#[tokio::test]
async fn case_007_flow_ends_warning_default_missing() {
    let start = signal("Start", None);
    let _ = start.on("specific_action") >> add(1);
    let (ret, shared, warnings) = run_both_warned(&Flow::new(&start), json!({})).await;
    assert_eq!(ret.unwrap(), Action::none());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Flow ends: 'None' not found in ['specific_action']"), "{warnings:?}");
    assert_eq!(shared.get_json("current"), None, "the successor must not run");
}

#[tokio::test]
async fn case_008_flow_ends_warning_specific_missing() {
    let start = signal("Start", Some("specific_action"));
    let _ = &start >> &add(1);
    let (ret, shared, warnings) = run_both_warned(&Flow::new(&start), json!({})).await;
    assert_eq!(ret.unwrap(), "specific_action");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Flow ends: 'specific_action' not found in ['default']"), "{warnings:?}");
    assert_eq!(shared.get_json("current"), None, "the successor must not run");
}

#[tokio::test]
async fn case_009_flow_as_node() {
    let f1 = Flow::new(&number(5));
    let _ = &f1 >> add(10) >> mul(2);
    let f3 = Flow::new(Flow::new(f1.as_node()).as_node());
    let (_, shared, _) = run_both(&f3, json!({})).await;
    assert_eq!(current(&shared), 30);
}

#[tokio::test]
async fn case_010_nested_flow() {
    let inner = Flow::new(&number(5));
    let _ = &inner >> add(3);
    let middle = Flow::new(inner.as_node());
    let _ = &middle >> mul(4);
    let (_, shared, trace) = run_both(&Flow::new(middle.as_node()), json!({})).await;
    assert_eq!(current(&shared), 32);
    // Nested flows nest in the trace: three flow spans, each inside the one before.
    let flows: Vec<_> = trace.spans.iter().filter(|s| s.kind == flowtrace::trace::SpanKind::Flow).collect();
    assert_eq!(flows.len(), 3);
}

#[tokio::test]
async fn case_011_flow_chaining_flows() {
    let n = number(10);
    let _ = &n >> add(10);
    let flow1 = Flow::new(&n);
    let flow2 = Flow::new(&mul(2));
    let _ = &flow1 >> &flow2;
    let (_, shared, _) = run_both(&Flow::new(flow1.as_node()), json!({})).await;
    assert_eq!(current(&shared), 40);
}

/// `Signal(s)`: post writes `last_signal_emitted` and returns `s`.
fn emit(key: &'static str, s: &'static str) -> NodeRef {
    FnNode::new(format!("Signal({s})"))
        .post(move |ctx, _, _| {
            ctx.shared().insert(key, s);
            Ok(Action::from(s))
        })
        .into_node()
}

/// `Path(p)`: post writes `path_taken = p`.
fn path(key: &'static str, p: &'static str) -> NodeRef {
    FnNode::new(format!("Path({p})"))
        .post(move |ctx, _, _| {
            ctx.shared().insert(key, p);
            Ok(Action::none())
        })
        .into_node()
}

#[tokio::test]
async fn case_012_composition_with_action_propagation() {
    let s = number(100);
    let _ = &s >> emit("last_signal_emitted", "inner_done");
    let inner = Flow::new(&s);
    let outer = Flow::empty();
    outer.start(inner.as_node());
    let _ = inner.as_node().on("inner_done") >> path("path_taken", "B");
    let _ = inner.as_node().on("other_action") >> path("path_taken", "A");
    let (ret, shared, _) = run_both(&outer, json!({})).await;
    assert_eq!(current(&shared), 100);
    assert_eq!(shared.get::<String>("last_signal_emitted").unwrap().as_deref(), Some("inner_done"));
    assert_eq!(shared.get::<String>("path_taken").unwrap().as_deref(), Some("B"));
    assert_eq!(ret.unwrap(), Action::none());
}

#[tokio::test]
async fn case_057_node_run_with_successor_warns_and_does_not_follow() {
    let warnings = Warnings::capture();
    let a = number(1);
    let _ = &a >> add(100);
    let shared = SharedStore::new();
    a.run(&shared).await.unwrap();
    assert_eq!(current(&shared), 1, "the successor must not run");
    assert_eq!(warnings.all().len(), 1, "{:?}", warnings.all());
    assert_eq!(warnings.containing("Node won't run successors. Use Flow."), 1);
}

#[tokio::test]
async fn case_058_wiring_twice_warns_and_second_wins() {
    let warnings = Warnings::capture();
    let a = number(1);
    let _ = &a >> add(10);
    let _ = &a >> add(20);
    assert_eq!(warnings.all().len(), 1, "{:?}", warnings.all());
    assert_eq!(warnings.containing("Overwriting successor for action 'default'"), 1);
    drop(warnings);
    let (_, shared, warnings) = run_both_warned(&Flow::new(&a), json!({})).await;
    assert_eq!(current(&shared), 21);
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// Rust cannot subtract a number from a node (`node - 1` does not compile). The behaviour the
/// case protects — an action must be a string — is checked where actions arrive dynamically.
#[test]
fn case_059_action_must_be_a_string() {
    let err = Action::from_json(&json!(1)).unwrap_err();
    assert_eq!(err.to_string(), "Action must be a string");
    assert!(Action::from_json(&json!("x")).is_ok());
}

/// `""` selects the default edge with no warning. (Python's `0` is not an action in Rust:
/// actions are strings; `Action::from_json(0)` is rejected, see case 59.)
#[tokio::test]
async fn case_060_empty_action_follows_default() {
    let a = signal("A", Some(""));
    let _ = &a >> add(5);
    let (ret, shared, warnings) = run_both_warned(&Flow::new(&a), json!({ "current": 0 })).await;
    assert_eq!(current(&shared), 5);
    assert_eq!(ret.unwrap(), Action::none());
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test]
async fn case_061_action_without_successors_ends_silently() {
    let (ret, _, warnings) = run_both_warned(&Flow::new(&signal("A", Some("x"))), json!({})).await;
    assert_eq!(ret.unwrap(), "x");
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test]
async fn case_062_explicit_default_with_only_named_edge_warns() {
    let a = signal("A", Some("default"));
    let _ = a.on("x") >> add(1);
    let (ret, _, warnings) = run_both_warned(&Flow::new(&a), json!({})).await;
    assert_eq!(ret.unwrap(), "default");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Flow ends: 'default' not found in ['x']"), "{warnings:?}");
}

#[tokio::test]
async fn case_063_unknown_action_lists_keys_in_wiring_order() {
    let a = signal("A", Some("nope"));
    let _ = a.on("a") >> add(1);
    let _ = a.on("b") >> add(2);
    let (ret, _, warnings) = run_both_warned(&Flow::new(&a), json!({})).await;
    assert_eq!(ret.unwrap(), "nope");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Flow ends: 'nope' not found in ['a', 'b']"), "{warnings:?}");
}

#[tokio::test]
async fn case_064_action_wired_to_nothing_ends_with_warning() {
    let a = signal("A", Some("complete"));
    a.on("complete").end();
    let (ret, _, warnings) = run_both_warned(&Flow::new(&a), json!({})).await;
    assert_eq!(ret.unwrap(), "complete");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Flow ends: 'complete' not found in ['complete']"), "{warnings:?}");
}

#[tokio::test]
async fn case_072_flow_custom_prep_and_post() {
    let flow = Flow::new(&signal("Last", Some("inner_action")))
        .prep(|ctx| {
            ctx.shared().insert("flow_prep_ran", true);
            Ok(json!("prep-result"))
        })
        .post(|ctx, prep, last| {
            ctx.shared().insert("post_saw", json!({ "prep": prep, "last": last.as_str() }));
            Ok("flow_result".into())
        });
    let (ret, shared, _) = run_both(&flow, json!({})).await;
    assert_eq!(ret.unwrap(), "flow_result");
    assert_eq!(shared.get_json("post_saw").unwrap(), json!({ "prep": "prep-result", "last": "inner_action" }));
}

#[tokio::test]
async fn case_073_flow_without_start_returns_none_silently() {
    let (ret, shared, warnings) = run_both_warned(&Flow::empty(), json!({})).await;
    assert_eq!(ret.unwrap(), Action::none());
    assert_eq!(shared.to_json(), json!({}));
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// A node that records the params it sees under `seen`.
fn params_probe() -> NodeRef {
    FnNode::new("Probe")
        .prep(|ctx| {
            ctx.shared().insert("seen", Value::Object(ctx.params().clone()));
            Ok(Value::Null)
        })
        .into_node()
}

#[tokio::test]
async fn case_074_flow_params_replace_node_params() {
    let probe = params_probe();
    let flow = Flow::new(&probe);
    flow.set_params(params(json!({ "a": 1 })));
    let (_, shared, _) = run_both(&flow, json!({})).await;
    assert_eq!(shared.get_json("seen").unwrap(), json!({ "a": 1 }));

    // A node's own params are replaced by the flow's (here empty) params inside the flow,
    // and the node keeps its own.
    let probe = params_probe();
    probe.set_params(params(json!({ "own": true })));
    let (_, shared, _) = run_both(&Flow::new(&probe), json!({})).await;
    assert_eq!(shared.get_json("seen").unwrap(), json!({}));
    assert_eq!(probe.params(), params(json!({ "own": true })));
}

/// Python copies a node per visit so that state a node writes on itself never reaches the
/// original. In Rust a node is never mutated by a run (hooks take `&self`); per-visit state
/// (attempt counter, params) lives in the visit. This checks what the copying protects: a
/// self-loop starts each visit with fresh state, and a flow run twice gives the same result.
#[tokio::test]
async fn case_075_per_visit_state_and_repeatable_runs() {
    let looping = FnNode::new("Loop")
        .exec(|_, cx| async move {
            // Fails on its first attempt of every visit: each visit starts at attempt 0.
            if cx.attempt() == 0 {
                Err("first attempt of this visit".into())
            } else {
                Ok(json!(cx.attempt()))
            }
        })
        .post(|ctx, _, attempt| {
            let visits = ctx.shared().update("visits", Vec::<Value>::new, |v| {
                v.push(attempt.clone());
                v.len()
            })?;
            Ok(if visits < 3 { "again".into() } else { Action::none() })
        })
        .into_node()
        .max_retries(2);
    let _ = looping.on("again") >> &looping;
    let flow = Flow::new(&looping);
    let (_, first, _) = run_both(&flow, json!({})).await;
    assert_eq!(first.get_json("visits").unwrap(), json!([1, 1, 1]));
    let (_, second, _) = run_both(&flow, json!({})).await;
    assert_eq!(first.to_json(), second.to_json());
}

#[tokio::test]
async fn case_078_nested_flows_get_outer_params() {
    let probe = params_probe();
    let inner = Flow::new(&probe);
    inner.set_params(params(json!({ "inner": true })));
    let outer = Flow::new(inner.as_node());
    outer.set_params(params(json!({ "outer": 1 })));
    let (_, shared, _) = run_both(&outer, json!({})).await;
    assert_eq!(shared.get_json("seen").unwrap(), json!({ "outer": 1 }));
}

#[tokio::test]
async fn case_090_post_errors_propagate_store_is_callers_successors_shared() {
    // A post error propagates out of the run, naming node and phase.
    let bad = FnNode::new("Bad").post(|_, _, _| Err(value_error("post failed"))).into_node();
    let err = Flow::new(&bad).run(&SharedStore::new()).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "Bad", flowtrace::Phase::Post);
    // Traced, the run fails the same way (run_both compares the error texts).
    let (ret, _, _) = run_both(&Flow::new(&bad), json!({})).await;
    assert!(ret.unwrap_err().contains("post failed"));

    // The store is the caller's own: writes made before a failure stay.
    let shared = SharedStore::new();
    let first = number(7);
    let _ = &first >> &bad;
    assert!(Flow::new(&first).run(&shared).await.is_err());
    assert_eq!(current(&shared), 7);

    // A handle's clone shares the successors of the original.
    let a = number(1);
    let alias = a.clone();
    let _ = &alias >> add(1);
    assert_eq!(a.successor_actions(), vec!["default"]);
}
