//! PocketFlow conformance, retries and fallback (spec §13 cases 26–30, 65–69).

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::Phase;
use serde_json::{json, Value};
use support::*;

/// PocketFlow's `FallbackNode`: exec fails when `fail`, the fallback returns "fallback",
/// post appends `{attempts, result}` to `results`.
fn fallback_node(fail: bool, max_retries: u32) -> NodeRef {
    FnNode::new("FallbackNode")
        .exec(move |_, cx| async move {
            if fail {
                Err(value_error("failed"))
            } else {
                Ok(json!({ "attempts": cx.attempt() + 1, "result": "success" }))
            }
        })
        .fallback(|_, _err, cx| async move { Ok(json!({ "attempts": cx.attempt() + 1, "result": "fallback" })) })
        .post(|ctx, _, out| {
            ctx.shared().update("results", Vec::<Value>::new, |r| r.push(out.clone()))?;
            Ok(Action::none())
        })
        .into_node()
        .max_retries(max_retries)
}

#[tokio::test]
async fn case_026_successful_execution() {
    let shared = SharedStore::new();
    fallback_node(false, 1).run(&shared).await.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!([{ "attempts": 1, "result": "success" }]));
}

#[tokio::test]
async fn case_027_fallback_after_failure() {
    let shared = SharedStore::new();
    fallback_node(true, 2).run(&shared).await.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!([{ "attempts": 2, "result": "fallback" }]));
}

#[tokio::test]
async fn case_028_fallback_in_flow() {
    let node = fallback_node(true, 1);
    let result = FnNode::new("ResultNode")
        .post(|ctx, _, _| {
            ctx.shared().insert("final_result", ctx.shared().get_json("results").unwrap_or(Value::Null));
            Ok(Action::none())
        })
        .into_node();
    let _ = &node >> &result;
    let (_, shared, _) = run_both(&Flow::new(&node), json!({})).await;
    assert_eq!(shared.get_json("results").unwrap().as_array().unwrap().len(), 1);
    assert_eq!(shared.get_json("final_result").unwrap(), json!([{ "attempts": 1, "result": "fallback" }]));
}

#[tokio::test]
async fn case_029_no_fallback_implementation() {
    let node = FnNode::new("NoFallback").exec(|_, _| async { Err(value_error("boom")) }).into_node();
    let err = node.run(&SharedStore::new()).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "NoFallback", Phase::Exec);
}

#[tokio::test]
async fn case_030_retry_before_fallback() {
    let shared = SharedStore::new();
    fallback_node(true, 3).run(&shared).await.unwrap();
    assert_eq!(shared.get_json("results").unwrap(), json!([{ "attempts": 3, "result": "fallback" }]));
}

#[tokio::test]
async fn case_065_fails_twice_then_succeeds() {
    let node = FnNode::new("Flaky")
        .exec(|_, cx| async move {
            if cx.attempt() < 2 {
                Err(value_error("not yet"))
            } else {
                Ok(json!("ok"))
            }
        })
        .post(|ctx, _, out| {
            ctx.shared().insert("exec_res", out);
            Ok(Action::none())
        })
        .into_node()
        .max_retries(3);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let probe = seen.clone();
    let recorder = FnNode::new("Recorder")
        .exec(move |_, cx| {
            let probe = probe.clone();
            async move {
                probe.lock().push(cx.attempt());
                if cx.attempt() < 2 {
                    Err(value_error("not yet"))
                } else {
                    Ok(Value::Null)
                }
            }
        })
        .into_node()
        .max_retries(3);
    let shared = SharedStore::new();
    node.run(&shared).await.unwrap();
    assert_eq!(shared.get_json("exec_res").unwrap(), json!("ok"));
    recorder.run(&SharedStore::new()).await.unwrap();
    assert_eq!(*seen.lock(), vec![0, 1, 2]);
}

#[tokio::test]
async fn case_066_max_retries_zero_skips_exec() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let node = FnNode::new("Zero")
        .exec(move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(json!("ran")) }
        })
        .post(|ctx, _, out| {
            ctx.shared().insert("exec_res", out);
            Ok(Action::none())
        })
        .into_node()
        .max_retries(0);
    let shared = SharedStore::new();
    node.run(&shared).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0, "exec must not be called");
    assert_eq!(shared.get_json("exec_res").unwrap(), Value::Null);
}

/// A typed node cannot receive PocketFlow's `None` exec result, so `max_retries(0)` on it is a
/// clear error rather than a silent default.
#[tokio::test]
async fn case_066_typed_node_with_zero_retries_is_a_clear_error() {
    struct Typed;
    impl Node for Typed {
        type Prep = ();
        type Exec = u32;
        async fn prep(&self, _: &Context<'_>) -> NodeResult<()> {
            Ok(())
        }
        async fn exec(&self, _: &(), _: &ExecContext) -> NodeResult<u32> {
            Ok(1)
        }
        async fn post(&self, _: &Context<'_>, _: (), _: u32) -> NodeResult<Action> {
            Ok(Action::none())
        }
    }
    let err = Typed.into_node().max_retries(0).run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::Exec));
    assert!(err.to_string().contains("max_retries is 0"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn case_067_wait_only_between_attempts() {
    let node = FnNode::new("Waits")
        .exec(|_, cx| async move { Err(value_error(&format!("attempt {}", cx.attempt()))) })
        .into_node()
        .max_retries(2)
        .wait(Duration::from_millis(50));
    let start = tokio::time::Instant::now();
    let err = node.run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(50), "one wait, between the two attempts");
    assert_user_error::<ValueError>(&err, "Waits", Phase::Exec);
    assert!(err.to_string().contains("attempt 1"), "the last attempt's error is raised: {err}");
}

#[tokio::test]
async fn case_068_fallback_gets_last_error_and_last_attempt() {
    let node = FnNode::new("Last")
        .exec(|_, cx| async move { Err(value_error(&format!("error {}", cx.attempt()))) })
        .fallback(|_, err, cx| async move { Ok(json!({ "error": err.to_string(), "attempt": cx.attempt() })) })
        .post(|ctx, _, out| {
            ctx.shared().insert("fallback_saw", out);
            Ok(Action::none())
        })
        .into_node()
        .max_retries(3);
    let shared = SharedStore::new();
    node.run(&shared).await.unwrap();
    assert_eq!(shared.get_json("fallback_saw").unwrap(), json!({ "error": "error 2", "attempt": 2 }));
}

#[tokio::test]
async fn case_069_prep_error_is_not_retried() {
    let preps = Arc::new(AtomicU32::new(0));
    let fallbacks = Arc::new(AtomicU32::new(0));
    let (p, f) = (preps.clone(), fallbacks.clone());
    let node = FnNode::new("PrepFails")
        .prep(move |_| {
            p.fetch_add(1, Ordering::SeqCst);
            Err(value_error("prep failed"))
        })
        .fallback(move |_, _, _| {
            f.fetch_add(1, Ordering::SeqCst);
            async { Ok(Value::Null) }
        })
        .into_node()
        .max_retries(3);
    let err = node.run(&SharedStore::new()).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "PrepFails", Phase::Prep);
    assert_eq!(preps.load(Ordering::SeqCst), 1);
    assert_eq!(fallbacks.load(Ordering::SeqCst), 0);
}
