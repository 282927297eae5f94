//! PocketFlow conformance, batch flows (spec §13 cases 19–25, 42–46, 76, 77).

mod support;

use flowtrace::prelude::*;
use flowtrace::trace::SpanKind;
use flowtrace::Phase;
use serde_json::{json, Value};
use support::*;

/// `[{key: k} for k in input_data]`.
fn keys_of_input(ctx: &Context<'_>) -> NodeResult<Vec<Params>> {
    let data: serde_json::Map<String, Value> = ctx.shared().get("input_data")?.unwrap_or_default();
    Ok(data.keys().map(|k| params(json!({ "key": k }))).collect())
}

/// PocketFlow's `SimpleTestNode`: results[key] = input_data[key] * 2 (in prep).
fn double_key() -> NodeRef {
    FnNode::new("Double")
        .prep(|ctx| {
            let key: String = ctx.param("key").ok_or("no key param")?;
            if key == "error_key" {
                return Err(value_error("error_key is not allowed"));
            }
            let v = ctx.shared().require::<Value>("input_data")?[&key].as_i64().unwrap_or(0);
            ctx.shared().update("results", serde_json::Map::new, |r| r.insert(key.clone(), json!(v * 2)))?;
            Ok(Value::Null)
        })
        .into_node()
}

/// Runs the batch flow of cases 19–22 untraced and traced (both must agree).
async fn basic(input: Value) -> (Result<Action, String>, SharedStore) {
    let flow = BatchFlow::new(&double_key()).params(keys_of_input);
    let (r, shared, _) = run_batch_both(&flow, json!({ "input_data": input })).await;
    (r, shared)
}

#[tokio::test]
async fn case_019_basic_batch_processing() {
    let (r, shared) = basic(json!({ "a": 1, "b": 2, "c": 3 })).await;
    assert_eq!(r.unwrap(), Action::none());
    assert_eq!(shared.get_json("results").unwrap(), json!({ "a": 2, "b": 4, "c": 6 }));
}

#[tokio::test]
async fn case_020_empty_input() {
    let (r, shared) = basic(json!({})).await;
    assert_eq!(r.unwrap(), Action::none());
    // No node ran: the node would have created `results`, and the store is untouched.
    assert_eq!(shared.to_json(), json!({ "input_data": {} }));
}

#[tokio::test]
async fn case_021_single_item() {
    let (_, shared) = basic(json!({ "single": 5 })).await;
    assert_eq!(shared.get_json("results").unwrap(), json!({ "single": 10 }));
}

#[tokio::test]
async fn case_022_error_handling() {
    let flow = BatchFlow::new(&double_key()).params(keys_of_input);
    let input = json!({ "input_data": { "normal_key": 1, "error_key": 2, "another_key": 3 } });
    let shared = SharedStore::from_json(input.clone());
    let err = flow.run(&shared).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "Double", Phase::Prep);
    // The first error aborts the remaining param sets (§8): exactly the keys before
    // `error_key`, in the order the batch flow's prep lists them, were processed.
    let order: Vec<String> =
        shared.require::<serde_json::Map<String, Value>>("input_data").unwrap().keys().cloned().collect();
    let before: Vec<&String> = order.iter().take_while(|k| *k != "error_key").collect();
    let done: serde_json::Map<String, Value> = shared.get("results").unwrap().unwrap_or_default();
    assert_eq!(done.keys().collect::<Vec<_>>(), before, "param sets after the failing one must not run");
    let (r, traced_shared, _) = run_batch_both(&flow, input).await;
    assert_eq!(r.unwrap_err(), err.to_string());
    assert_eq!(traced_shared.to_json(), shared.to_json());
}

/// Inner writes intermediate[key] = input + 1; Outer writes results[key] = intermediate * 2.
fn inner_outer(inner_action: Option<&'static str>) -> NodeRef {
    let inner = FnNode::new("Inner")
        .prep(|ctx| {
            let key: String = ctx.param("key").ok_or("no key")?;
            let v = ctx.shared().require::<Value>("input_data")?[&key].as_i64().unwrap_or(0);
            ctx.shared().update("intermediate", serde_json::Map::new, |m| m.insert(key.clone(), json!(v + 1)))?;
            Ok(Value::Null)
        })
        .post(move |_, _, _| Ok(Action::from(inner_action)))
        .into_node();
    let outer = FnNode::new("Outer")
        .prep(|ctx| {
            let key: String = ctx.param("key").ok_or("no key")?;
            let v = ctx.shared().require::<Value>("intermediate")?[&key].as_i64().unwrap_or(0);
            ctx.shared().update("results", serde_json::Map::new, |m| m.insert(key.clone(), json!(v * 2)))?;
            Ok(Value::Null)
        })
        .into_node();
    match inner_action {
        Some(a) => {
            let _ = inner.on(a) >> &outer;
        }
        None => {
            let _ = &inner >> &outer;
        }
    }
    inner
}

#[tokio::test]
async fn case_023_nested_flow_in_batch() {
    let flow = BatchFlow::new(&inner_outer(None)).params(keys_of_input);
    let (r, shared, _) = run_batch_both(&flow, json!({ "input_data": { "x": 1, "y": 2 } })).await;
    assert_eq!(r.unwrap(), Action::none());
    assert_eq!(shared.get_json("intermediate").unwrap(), json!({ "x": 2, "y": 3 }));
    assert_eq!(shared.get_json("results").unwrap(), json!({ "x": 4, "y": 6 }));
}

/// Batch params carry a multiplier: results[key] = input * multiplier.
fn multiplied(parallel: bool) -> BatchFlow {
    let node = FnNode::new("Multiply")
        .prep(|ctx| {
            let key: String = ctx.param("key").ok_or("no key")?;
            let m: i64 = ctx.param("multiplier").ok_or("no multiplier")?;
            let v = ctx.shared().require::<Value>("input_data")?[&key].as_i64().unwrap_or(0);
            ctx.shared().update("results", serde_json::Map::new, |r| r.insert(key.clone(), json!(v * m)))?;
            Ok(Value::Null)
        })
        .into_node();
    let flow = if parallel { BatchFlow::parallel(&node) } else { BatchFlow::new(&node) };
    flow.params(|ctx| {
        let data: serde_json::Map<String, Value> = ctx.shared().require("input_data")?;
        Ok(data.keys().enumerate().map(|(i, k)| params(json!({ "key": k, "multiplier": i + 1 }))).collect())
    })
}

#[tokio::test]
async fn case_024_custom_parameters() {
    let (r, shared, _) = run_batch_both(&multiplied(false), json!({ "input_data": { "a": 1, "b": 2, "c": 3 } })).await;
    r.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!({ "a": 1, "b": 4, "c": 9 }));
}

/// Outer batch over groups, inner batch over the group's items (params accumulate).
pub fn nested_groups(parallel: bool) -> BatchFlow {
    let item = FnNode::new("Item")
        .prep(|ctx| {
            let group: String = ctx.param("group").ok_or("no group")?;
            let i: usize = ctx.param("item").ok_or("no item")?;
            Ok(ctx.shared().require::<Value>("groups")?[&group][i].clone())
        })
        .exec(|v, _| async move { Ok(json!(v.as_i64().unwrap_or(0) * 2)) })
        .post(|ctx, _, doubled| {
            let group: String = ctx.param("group").ok_or("no group")?;
            ctx.shared().update("results", serde_json::Map::new, |r| {
                if let Some(a) = r.entry(group.clone()).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(doubled.clone());
                }
            })?;
            Ok(Action::none())
        })
        .into_node();
    let make = |start: &NodeRef| if parallel { BatchFlow::parallel(start) } else { BatchFlow::new(start) };
    let inner = make(&item).params(|ctx| {
        let group: String = ctx.param("group").ok_or("no group")?;
        let n = ctx.shared().require::<Value>("groups")?[&group].as_array().map_or(0, |a| a.len());
        Ok((0..n).map(|i| params(json!({ "item": i, "group": group }))).collect())
    });
    make(inner.as_node()).params(|ctx| {
        let groups: serde_json::Map<String, Value> = ctx.shared().require("groups")?;
        Ok(groups.keys().map(|g| params(json!({ "group": g }))).collect())
    })
}

#[tokio::test]
async fn case_025_nested_batch_flow() {
    let (r, shared, trace) =
        run_batch_both(&nested_groups(false), json!({ "groups": { "A": [1, 2], "B": [3, 4] } })).await;
    r.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!({ "A": [2, 4], "B": [6, 8] }));
    // Params accumulate: the inner runs see {group, item}; the trace shows each param set.
    let inner_runs: Vec<_> = trace
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::BatchRun)
        .filter_map(|s| s.input.as_ref())
        .filter(|i| i["params"].get("item").is_some())
        .map(|i| i["params"].clone())
        .collect();
    assert_eq!(
        inner_runs,
        vec![
            json!({ "group": "A", "item": 0 }),
            json!({ "group": "A", "item": 1 }),
            json!({ "group": "B", "item": 0 }),
            json!({ "group": "B", "item": 1 })
        ]
    );
}

/// The async batch node of the upstream tests: prep writes results[key] = data and returns
/// it; post writes results[key] = prep_res * 2 (and fails for `error_key` in case 44).
fn async_processor() -> NodeRef {
    FnNode::new("AsyncProcessor")
        .prep(|ctx| {
            let key: String = ctx.param("key").ok_or("no key")?;
            let v = ctx.shared().require::<Value>("input_data")?[&key].clone();
            ctx.shared().update("results", serde_json::Map::new, |r| r.insert(key.clone(), v.clone()))?;
            Ok(v)
        })
        .exec(|v, _| async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            Ok(v)
        })
        .post(|ctx, prep, _| {
            let key: String = ctx.param("key").ok_or("no key")?;
            if key == "error_key" {
                return Err(value_error("async post failed"));
            }
            let doubled = json!(prep.as_i64().unwrap_or(0) * 2);
            ctx.shared().update("results", serde_json::Map::new, |r| r.insert(key.clone(), doubled.clone()))?;
            Ok(Action::none())
        })
        .into_node()
}

#[tokio::test]
async fn case_042_basic_async_batch_processing() {
    let flow = BatchFlow::new(&async_processor()).params(keys_of_input);
    let (r, shared, _) = run_batch_both(&flow, json!({ "input_data": { "a": 1, "b": 2, "c": 3 } })).await;
    assert_eq!(r.unwrap(), Action::none());
    assert_eq!(shared.get_json("results").unwrap(), json!({ "a": 2, "b": 4, "c": 6 }));
}

#[tokio::test]
async fn case_043_empty_async_batch() {
    let flow = BatchFlow::new(&async_processor()).params(keys_of_input);
    let (r, shared, _) = run_batch_both(&flow, json!({ "input_data": {} })).await;
    assert_eq!(r.unwrap(), Action::none());
    assert_eq!(shared.to_json(), json!({ "input_data": {} }));
}

#[tokio::test]
async fn case_044_async_error_handling() {
    let flow = BatchFlow::new(&async_processor()).params(keys_of_input);
    let input = json!({ "input_data": { "normal_key": 1, "error_key": 2 } });
    let shared = SharedStore::from_json(input.clone());
    let err = flow.run(&shared).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "AsyncProcessor", Phase::Post);
    // prep ran for error_key (it wrote the raw value) before post failed.
    assert_eq!(shared.get_json("results").unwrap()["error_key"], json!(2));
    let (r, _, _) = run_batch_both(&flow, input).await;
    assert_eq!(r.unwrap_err(), err.to_string());
}

#[tokio::test]
async fn case_045_nested_async_flow() {
    let flow = BatchFlow::new(&inner_outer(Some("next"))).params(keys_of_input);
    let (r, shared, _) = run_batch_both(&flow, json!({ "input_data": { "x": 1, "y": 2 } })).await;
    r.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!({ "x": 4, "y": 6 }));
}

#[tokio::test]
async fn case_046_custom_async_parameters() {
    // The async variant of case 24. flowtrace has one batch flow for both: its hooks may
    // await, so the "async" case is the same graph with an exec that awaits a sleep.
    let node = FnNode::new("AsyncMultiply")
        .prep(|ctx| {
            let key: String = ctx.param("key").ok_or("no key")?;
            let m: i64 = ctx.param("multiplier").ok_or("no multiplier")?;
            Ok(json!([key, ctx.shared().require::<Value>("input_data")?[&key].as_i64().unwrap_or(0) * m]))
        })
        .exec(|v, _| async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            Ok(v)
        })
        .post(|ctx, _, kv| {
            let key = kv[0].as_str().ok_or("no key")?.to_owned();
            ctx.shared().update("results", serde_json::Map::new, |r| r.insert(key.clone(), kv[1].clone()))?;
            Ok(Action::none())
        })
        .into_node();
    let flow = BatchFlow::new(&node).params(|ctx| {
        let data: serde_json::Map<String, Value> = ctx.shared().require("input_data")?;
        Ok(data.keys().enumerate().map(|(i, k)| params(json!({ "key": k, "multiplier": i + 1 }))).collect())
    });
    let (r, shared, _) = run_batch_both(&flow, json!({ "input_data": { "a": 1, "b": 2, "c": 3 } })).await;
    assert_eq!(r.unwrap(), Action::none());
    assert_eq!(shared.get_json("results").unwrap(), json!({ "a": 1, "b": 4, "c": 9 }));
}

/// Records every params map a node sees, in order.
fn params_log() -> NodeRef {
    FnNode::new("ParamsLog")
        .prep(|ctx| {
            let p = Value::Object(ctx.params().clone());
            ctx.shared().update("seen", Vec::<Value>::new, |s| s.push(p.clone()))?;
            Ok(Value::Null)
        })
        .into_node()
}

/// Batch params are laid over the flow's params, batch keys winning. (PocketFlow's `None`
/// param list has no Rust counterpart: the list is a `Vec`, empty for "nothing to run".)
#[tokio::test]
async fn case_076_batch_params_overlay() {
    for (sets, expected) in [
        (json!([{ "k": 1 }, { "k": 2 }]), json!([{ "base": 0, "k": 1 }, { "base": 0, "k": 2 }])),
        (json!([]), Value::Null),
        (json!([{}]), json!([{ "base": 0, "k": 0 }])),
    ] {
        let list: Vec<Params> = sets.as_array().unwrap().iter().map(|v| params(v.clone())).collect();
        let flow = BatchFlow::new(&params_log()).params(move |_| Ok(list.clone()));
        flow.set_params(params(json!({ "base": 0, "k": 0 })));
        let (r, shared, _) = run_batch_both(&flow, json!({})).await;
        assert_eq!(r.unwrap(), Action::none());
        assert_eq!(shared.get_json("seen").unwrap_or(Value::Null), expected, "param sets {sets}");
    }
}

#[tokio::test]
async fn case_077_batch_flow_post_gets_param_sets_and_returns_none_by_default() {
    let flow = BatchFlow::new(&params_log()).params(|_| Ok(vec![params(json!({ "k": 1 }))]));
    let (r, _, _) = run_batch_both(&flow, json!({})).await;
    assert_eq!(r.unwrap(), Action::none());
    // PocketFlow's post gets (shared, prep_list, None); flowtrace's batch-flow post has no
    // exec result to pass, so it takes (ctx, param_sets) and the `None` is implicit.
    let flow = flow.post(|ctx, sets| {
        ctx.shared().insert("post_saw", sets);
        Ok("batch_done".into())
    });
    let (r, shared, _) = run_batch_both(&flow, json!({})).await;
    assert_eq!(r.unwrap(), "batch_done");
    assert_eq!(shared.get_json("post_saw").unwrap(), json!([{ "k": 1 }]));
    // As a nested node, the default `None` means "default": the batch flow's successor runs.
    let after = set("after", json!(true));
    let inner = BatchFlow::new(&params_log()).params(|_| Ok(vec![params(json!({ "k": 1 }))]));
    let _ = inner.as_node() >> &after;
    let (r, shared, _) = run_both(&Flow::new(inner.as_node()), json!({})).await;
    assert_eq!(r.unwrap(), Action::none());
    assert_eq!(shared.get_json("after").unwrap(), json!(true));
}
