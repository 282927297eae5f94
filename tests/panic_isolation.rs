//! A node that panics ends its run with an error naming the node; the process runs on, and
//! nothing leaks: after 1,000 such runs, no run supervisor and no task is left alive.
//! (Alone in its file: it counts process-wide run supervisors.)

mod support;

use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::Phase;
use serde_json::Value;
use support::{eventually, silence_panics};

fn panicking_flow() -> Flow {
    let ok = FnNode::new("Fine").exec(|_, _| async { Ok(Value::Null) }).into_node();
    let boom = FnNode::new("Boom")
        .exec(|_, cx| async move {
            if cx.params().get("panic") == Some(&Value::Bool(true)) {
                panic!("kaboom");
            }
            Ok(Value::Null)
        })
        .into_node();
    let _ = &ok >> &boom;
    Flow::new(&ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_panicking_runs_leak_no_actor_or_task() {
    // Keep the output readable: silence the 500 intended panics, and only those (flowtrace's
    // own hook chains to whatever hook is installed).
    silence_panics("kaboom");
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let runs_before = flowtrace::runtime::live_runs();

    let flow = panicking_flow();
    let mut panics = 0;
    for i in 0..1_000 {
        let mut params = Params::new();
        params.insert("panic".into(), Value::Bool(i % 2 == 0));
        let res = flow.run_with(&SharedStore::new(), RunOptions::new().params(params)).await;
        match res {
            Err(Error::Panic { node, phase, message, location }) => {
                assert_eq!(node, "Boom");
                assert_eq!(phase, Phase::Exec);
                assert_eq!(message, "kaboom");
                assert!(location.is_some_and(|l| l.contains("panic_isolation.rs")));
                panics += 1;
            }
            Ok(_) => assert!(i % 2 == 1, "run {i} should have panicked"),
            Err(e) => panic!("unexpected error in run {i}: {e}"),
        }
    }
    assert_eq!(panics, 500);
    assert!(
        eventually(Duration::from_secs(10), || flowtrace::runtime::live_runs() == runs_before).await,
        "run supervisors still alive: {}",
        flowtrace::runtime::live_runs()
    );
    assert!(
        eventually(Duration::from_secs(10), || metrics.num_alive_tasks() <= tasks_before).await,
        "tasks leaked: {} alive, {} before",
        metrics.num_alive_tasks(),
        tasks_before
    );
}
