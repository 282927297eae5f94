//! The API's shape: fallback failures and panics report one phase, settings are fixed once a
//! node is shared, `wire!`/`params!`, and one `spawn` for anything runnable.

use flowtrace::prelude::*;
use flowtrace::Phase;
use serde_json::Value;

fn failing_exec() -> FnNode {
    FnNode::new("Fails").exec(|_, _| async { Err::<Value, _>("exec failed".into()) })
}

#[tokio::test]
async fn a_failing_and_a_panicking_fallback_report_the_same_phase() {
    let own_error = failing_exec().fallback(|_, _, _| async { Err("fallback failed".into()) }).into_node();
    let err = Flow::new(&own_error).run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::Fallback), "{err}");

    let panics = failing_exec().fallback(|_, _, _| async { panic!("fallback panicked") }).into_node();
    let err = Flow::new(&panics).run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::Fallback), "{err}");

    // Handing exec's error back (the default fallback does) re-raises exec's failure.
    let reraises = failing_exec().fallback(|_, e, _| async move { Err(e) }).into_node();
    let err = Flow::new(&reraises).run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::Exec), "{err}");
    let default = failing_exec().into_node();
    let err = Flow::new(&default).run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::Exec), "{err}");
}

#[test]
#[should_panic(expected = "max_retries on node 'A' after it was cloned or wired")]
fn settings_are_fixed_once_a_node_is_wired() {
    let a = FnNode::new("A").into_node();
    let b = FnNode::new("B").into_node();
    wire!(a >> b);
    let _ = a.max_retries(3);
}

#[test]
#[should_panic(expected = "after it was cloned or wired")]
fn settings_are_fixed_once_a_node_is_cloned() {
    let a = FnNode::new("A").into_node();
    let _held = a.clone();
    let _ = a.timeout(std::time::Duration::from_secs(1));
}

#[tokio::test]
async fn wire_params_and_one_spawn() {
    let count = FnNode::new("Count")
        .post(|ctx, _, _| {
            let n = ctx.shared().get::<i64>("n")?.unwrap_or(0) + 1;
            ctx.shared().insert("n", n);
            let limit: i64 = ctx.param("limit").unwrap_or(0);
            Ok(if n < limit { "again".into() } else { "done".into() })
        })
        .into_node()
        .max_retries(2);
    let done = FnNode::new("Done").into_node();
    wire! { count - "again" >> count - "done" >> done }
    let flow = Flow::new(&count);
    flow.set_params(params! { "limit" => 3 });
    let rt = Runtime::builder().build().unwrap();
    let shared = SharedStore::new();
    rt.spawn(&flow, &shared).await.unwrap().await.unwrap();
    assert_eq!(shared.get::<i64>("n").unwrap(), Some(3));
    // A node, a batch flow and a traced flow go through the same spawn.
    rt.spawn(&done, &SharedStore::new()).await.unwrap().await.unwrap();
    let batch = BatchFlow::named("PerKey", &FnNode::new("Step").into_node())
        .params(|_| Ok(vec![params! { "k" => "a" }, params! { "k" => "b" }]));
    rt.spawn(&batch, &SharedStore::new()).await.unwrap().await.unwrap();
    rt.spawn(&flow.traced("T"), &SharedStore::new()).await.unwrap().detach();
}

#[tokio::test]
async fn warnings_and_the_outcome_are_on_the_result() {
    let ask = FnNode::new("Ask").post(|_, _, _| Ok("maybe".into())).into_node();
    let yes = FnNode::new("Yes").into_node();
    wire!(ask - "yes" >> yes);
    let report = Flow::new(&ask).run_report(&SharedStore::new()).await;
    assert_eq!(report.outcome(), flowtrace::runtime::RunStatus::Succeeded);
    assert_eq!(report.result.unwrap().as_str(), Some("maybe"));
    assert_eq!(report.warnings, vec!["Flow ends: 'maybe' not found in ['yes']"]);

    // Through the runtime: a node run alone warns that it won't run its successors.
    let rt = Runtime::builder().build().unwrap();
    let report = rt.spawn(&ask, &SharedStore::new()).await.unwrap().report().await;
    assert_eq!(report.warnings, vec!["Node won't run successors. Use Flow."]);

    let failing = Flow::new(&failing_exec().into_node());
    let report = rt.spawn(&failing, &SharedStore::new()).await.unwrap().report().await;
    assert_eq!(report.outcome(), flowtrace::runtime::RunStatus::Failed);
    assert!(report.warnings.is_empty());
}
