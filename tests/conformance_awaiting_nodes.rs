//! PocketFlow conformance for nodes whose hooks await real work: retries, fallbacks, flows,
//! branching, composition and direct calls behave as the spec says when `prep`, `exec` and
//! `post` suspend (spec §13 cases 31–40, 79–81, 85, 87–89: PocketFlow's `AsyncNode` and
//! `AsyncFlow` cases; every flowtrace node is async, so they run on the same API as the sync
//! ones, and the typed `Node` implementations here await real sleeps).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::Phase;
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::*;

/// PocketFlow's `AsyncFallbackNode`: exec sleeps then fails (or succeeds); the fallback
/// awaits 10 ms then returns "async_fallback"; post appends `{attempts, result}`.
struct AsyncFallback {
    fail: bool,
}

impl Node for AsyncFallback {
    type Prep = ();
    type Exec = Value;
    async fn prep(&self, _ctx: &Context<'_>) -> NodeResult<()> {
        Ok(())
    }
    async fn exec(&self, _: &(), cx: &ExecContext) -> NodeResult<Value> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if self.fail {
            Err(value_error("async failure"))
        } else {
            Ok(json!({ "attempts": cx.attempt() + 1, "result": "success" }))
        }
    }
    async fn exec_fallback(&self, _: &(), _err: flowtrace::BoxError, cx: &ExecContext) -> NodeResult<Value> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(json!({ "attempts": cx.attempt() + 1, "result": "async_fallback" }))
    }
    async fn post(&self, ctx: &Context<'_>, _: (), out: Value) -> NodeResult<Action> {
        ctx.shared().update("results", Vec::<Value>::new, |r| r.push(out.clone()))?;
        Ok(Action::none())
    }
}

#[tokio::test]
async fn case_031_async_successful_execution() {
    let shared = SharedStore::new();
    AsyncFallback { fail: false }.into_node().run(&shared).await.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!([{ "attempts": 1, "result": "success" }]));
}

#[tokio::test]
async fn case_032_async_fallback_after_failure() {
    let shared = SharedStore::new();
    AsyncFallback { fail: true }.into_node().max_retries(2).run(&shared).await.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!([{ "attempts": 2, "result": "async_fallback" }]));
}

#[tokio::test]
async fn case_033_async_fallback_in_flow() {
    let node = AsyncFallback { fail: true }.into_node();
    let result = FnNode::new("AsyncResult")
        .prep(|ctx| Ok(ctx.shared().get_json("results").unwrap_or(Value::Null)))
        .post(|ctx, results, _| {
            ctx.shared()
                .insert("final_result", results[results.as_array().map_or(0, |a| a.len()) - 1]["result"].clone());
            Ok("done".into())
        })
        .into_node();
    let _ = &node >> &result;
    let (ret, shared, _) = run_both(&Flow::new(&node), json!({})).await;
    assert_eq!(ret.unwrap(), "done");
    assert_eq!(shared.get_json("results").unwrap().as_array().unwrap().len(), 1);
    assert_eq!(shared.get_json("final_result").unwrap(), json!("async_fallback"));
}

#[tokio::test]
async fn case_034_async_no_fallback_implementation() {
    let node = FnNode::new("AsyncNoFallback")
        .exec(|_, _| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Err(value_error("no fallback"))
        })
        .into_node();
    let err = node.run(&SharedStore::new()).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "AsyncNoFallback", Phase::Exec);
}

#[tokio::test]
async fn case_035_async_retry_before_fallback() {
    let shared = SharedStore::new();
    AsyncFallback { fail: true }.into_node().max_retries(3).run(&shared).await.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!([{ "attempts": 3, "result": "async_fallback" }]));
}

/// PocketFlow's `AsyncNumberNode`: sets current, returns "number_set".
struct AsyncNumber(i64);

impl Node for AsyncNumber {
    type Prep = i64;
    type Exec = i64;
    async fn prep(&self, _: &Context<'_>) -> NodeResult<i64> {
        Ok(self.0)
    }
    async fn exec(&self, n: &i64, _: &ExecContext) -> NodeResult<i64> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(*n)
    }
    async fn post(&self, ctx: &Context<'_>, _: i64, n: i64) -> NodeResult<Action> {
        ctx.shared().insert("current", n);
        Ok("number_set".into())
    }
}

/// PocketFlow's `AsyncIncrementNode`: current += 1, returns "done".
struct AsyncIncrement;

impl Node for AsyncIncrement {
    type Prep = i64;
    type Exec = i64;
    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<i64> {
        Ok(ctx.shared().get::<i64>("current")?.unwrap_or(0))
    }
    async fn exec(&self, n: &i64, _: &ExecContext) -> NodeResult<i64> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(n + 1)
    }
    async fn post(&self, ctx: &Context<'_>, _: i64, n: i64) -> NodeResult<Action> {
        ctx.shared().insert("current", n);
        Ok("done".into())
    }
}

#[tokio::test]
async fn case_036_async_number_node_direct_call() {
    let shared = SharedStore::new();
    let ret = AsyncNumber(42).into_node().run(&shared).await.unwrap();
    assert_eq!(current(&shared), 42);
    assert_eq!(ret, "number_set");
}

#[tokio::test]
async fn case_037_async_increment_node_direct_call() {
    let shared = SharedStore::new();
    shared.insert("current", 10);
    let ret = AsyncIncrement.into_node().run(&shared).await.unwrap();
    assert_eq!(current(&shared), 11);
    assert_eq!(ret, "done");
}

#[tokio::test]
async fn case_038_simple_async_flow() {
    let n = AsyncNumber(5).into_node();
    let _ = n.on("number_set") >> AsyncIncrement.into_node();
    let (_, shared, _) = run_both(&Flow::new(&n), json!({})).await;
    assert_eq!(current(&shared), 6);
}

/// In PocketFlow the branch nodes write `path` in `exec`; a flowtrace `exec` sees only its prep
/// result (the store belongs to prep and post), so they write it in `post`.
#[tokio::test]
async fn case_039_async_flow_branching() {
    let branch = FnNode::new("AsyncBranch")
        .post(|ctx, _, _| {
            Ok(if ctx.shared().require::<i64>("value")? >= 0 { "positive_branch" } else { "negative_branch" }.into())
        })
        .into_node();
    let _ = branch.on("positive_branch") >> path_node("positive");
    let _ = branch.on("negative_branch") >> path_node("negative");
    let (_, shared, _) = run_both(&Flow::new(&branch), json!({ "value": 10 })).await;
    assert_eq!(shared.get::<String>("path").unwrap().as_deref(), Some("positive"));
}

fn path_node(p: &'static str) -> NodeRef {
    FnNode::new(format!("Path({p})"))
        .post(move |ctx, _, _| {
            ctx.shared().insert("path", p);
            Ok(Action::none())
        })
        .into_node()
}

#[tokio::test]
async fn case_040_async_composition_with_action_propagation() {
    let n = AsyncNumber(200).into_node();
    let sig = FnNode::new("AsyncSignal")
        .post(|ctx, _, _| {
            ctx.shared().insert("last_async_signal_emitted", "async_inner_done");
            Ok("async_inner_done".into())
        })
        .into_node();
    let _ = n.on("number_set") >> &sig;
    let inner = Flow::new(&n);
    let outer = Flow::new(inner.as_node());
    let taken = |p: &'static str| {
        FnNode::new(format!("Path({p})"))
            .post(move |ctx, _, _| {
                ctx.shared().insert("async_path_taken", p);
                Ok(Action::none())
            })
            .into_node()
    };
    let _ = inner.as_node().on("async_inner_done") >> taken("AsyncB");
    let _ = inner.as_node().on("other_action") >> taken("AsyncA");
    let (ret, shared, _) = run_both(&outer, json!({})).await;
    assert_eq!(current(&shared), 200);
    assert_eq!(shared.get::<String>("last_async_signal_emitted").unwrap().as_deref(), Some("async_inner_done"));
    assert_eq!(shared.get::<String>("async_path_taken").unwrap().as_deref(), Some("AsyncB"));
    assert_eq!(ret.unwrap(), Action::none());
}

#[tokio::test]
async fn case_079_async_node_then_sync_style_node() {
    let a = AsyncNumber(3).into_node();
    let sync_style = FnNode::new("SyncStyle")
        .post(|ctx, _, _| {
            ctx.shared().insert("sync_ran", true);
            Ok(Action::none())
        })
        .into_node();
    let _ = a.on("number_set") >> &sync_style;
    let (ret, shared, _) = run_both(&Flow::new(&a), json!({})).await;
    assert_eq!(ret.unwrap(), Action::none());
    assert_eq!(current(&shared), 3);
    assert_eq!(shared.get::<bool>("sync_ran").unwrap(), Some(true));
}

/// PocketFlow's `Use run_async.` errors come from its split between sync and async nodes.
/// flowtrace has one kind of node, always async, so the protected behaviour is that any mix
/// of node kinds (typed async nodes, closure nodes, nested flows) runs, alone or in a flow.
#[tokio::test]
async fn case_080_no_sync_async_split_any_node_runs_anywhere() {
    let shared = SharedStore::new();
    AsyncNumber(1).into_node().run(&shared).await.unwrap();
    assert_eq!(current(&shared), 1);
    let mixed = number(2);
    let inc = AsyncIncrement.into_node();
    let _ = &mixed >> &inc;
    let _ = inc.on("done") >> add(10);
    let (_, shared, _) = run_both(&Flow::new(&mixed), json!({})).await;
    assert_eq!(current(&shared), 13);
}

/// A flow of closure nodes nested in a flow, and a flow of typed async nodes nested in a
/// flow of closure nodes, both run (PocketFlow's sync/async nesting cases).
#[tokio::test]
async fn case_081_nested_flows_of_any_kind_run() {
    let inner_sync = Flow::new(&number(4));
    let outer = Flow::new(inner_sync.as_node());
    let (_, shared, _) = run_both(&outer, json!({})).await;
    assert_eq!(current(&shared), 4);

    let inner_async = Flow::new(&AsyncNumber(8).into_node());
    let start = add(0);
    let _ = &start >> inner_async.as_node();
    let (_, shared, _) = run_both(&Flow::new(&start), json!({ "current": 0 })).await;
    assert_eq!(current(&shared), 8);
}

#[tokio::test]
async fn case_085_flow_post_receives_prep_and_last_action() {
    let flow = Flow::new(&AsyncNumber(1).into_node()).prep(|_| Ok(json!("async-prep"))).post(|ctx, prep, last| {
        ctx.shared().insert("post_args", json!([prep, last.as_str()]));
        Ok(last)
    });
    let (ret, shared, _) = run_both(&flow, json!({})).await;
    assert_eq!(ret.unwrap(), "number_set");
    assert_eq!(shared.get_json("post_args").unwrap(), json!(["async-prep", "number_set"]));
}

#[tokio::test]
async fn case_087_async_retries_see_attempts_and_use_fallback() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let probe = seen.clone();
    let node = FnNode::new("AsyncRetry")
        .exec(move |_, cx| {
            let probe = probe.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                probe.lock().push(cx.attempt());
                Err(value_error("always"))
            }
        })
        .fallback(|_, _, _| async { Ok(json!("fallback used")) })
        .post(|ctx, _, out| {
            ctx.shared().insert("out", out);
            Ok(Action::none())
        })
        .into_node()
        .max_retries(3);
    let shared = SharedStore::new();
    node.run(&shared).await.unwrap();
    assert_eq!(*seen.lock(), vec![0, 1, 2]);
    assert_eq!(shared.get_json("out").unwrap(), json!("fallback used"));
}

/// A flowtrace node has one `exec`, so "the sync exec of an async node is never called" holds
/// by construction; the successor warning of a node run alone is checked here.
#[tokio::test]
async fn case_088_node_run_alone_with_successors_warns() {
    let warnings = Warnings::capture();
    let a = AsyncNumber(5).into_node();
    let _ = a.on("number_set") >> AsyncIncrement.into_node();
    let shared = SharedStore::new();
    a.run(&shared).await.unwrap();
    assert_eq!(current(&shared), 5, "the successor must not run");
    assert_eq!(warnings.all().len(), 1, "{:?}", warnings.all());
    assert_eq!(warnings.containing("Node won't run successors. Use Flow."), 1);
}

/// Repo HEAD shares one `cur_retry` between concurrent items, so an item can reach its
/// fallback early. flowtrace keeps attempt state per item: each always-failing item gets all
/// of its attempts (PyPI 0.0.3's behaviour, and the spec's recommendation).
#[tokio::test]
async fn case_089_parallel_items_keep_their_own_attempts() {
    let attempts: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    let probe = attempts.clone();
    let node = FnBatchNode::parallel("ParallelRetry")
        .items(|_| Ok(json!(["a", "b"])))
        .exec(move |item, cx| {
            let probe = probe.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                probe.lock().entry(item.as_str().unwrap_or_default().to_owned()).or_default().push(cx.attempt());
                Err(value_error("always"))
            }
        })
        .fallback(|item, _, cx| async move { Ok(json!({ "item": item, "attempts": cx.attempt() + 1 })) })
        .post(|ctx, _, out| {
            ctx.shared().insert("out", out);
            Ok(Action::none())
        })
        .into_node()
        .max_retries(2);
    let shared = SharedStore::new();
    Flow::new(&node).run(&shared).await.unwrap();
    let seen = std::mem::take(&mut *attempts.lock());
    assert_eq!(seen["a"], vec![0, 1]);
    assert_eq!(seen["b"], vec![0, 1]);
    // Traced, each item again gets both of its attempts.
    let (ret, traced, _) = run_both(&Flow::new(&node), json!({})).await;
    assert_eq!(ret.unwrap(), Action::none());
    assert_eq!(traced.get_json("out"), shared.get_json("out"));
    let seen = attempts.lock().clone();
    assert_eq!(seen["a"], vec![0, 1, 0, 1], "untraced then traced run");
    assert_eq!(seen["b"], vec![0, 1, 0, 1], "untraced then traced run");
    assert_eq!(
        shared.get_json("out").unwrap(),
        json!([{ "item": "a", "attempts": 2 }, { "item": "b", "attempts": 2 }])
    );
}
