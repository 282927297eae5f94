//! Durable runs on one machine, with the embedded checkpoint store (redb): a process killed
//! mid-run and restarted continues after its last checkpoint; suspend and resume with input;
//! refused runs get clear error results.

#[path = "support/child.rs"]
mod child;
#[path = "support/counted_batch.rs"]
mod counted_batch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use counted_batch::{assert_resumed_once_each, batch_flow};
use flowtrace::durable::{CheckpointStore, DurableRuns, EmbeddedStore, ResultStatus, RunPhase, Submission};
use flowtrace::prelude::*;
use parking_lot::Mutex;
use serde_json::{json, Value};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtrace-durable-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn example_binary() -> PathBuf {
    child::example_binary("durable_local")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[cfg(unix)]
#[test]
fn a_killed_process_resumes_after_its_last_checkpoint() {
    let bin = example_binary();
    let dir = temp_dir("kill");
    let db = dir.join("runs.redb");
    let witness = dir.join("witness.txt");
    let run_id = "0123456789abcdef0123456789abcdef";
    let mut child = Command::new(&bin)
        .args(["run", "--run-id", run_id, "--db"])
        .arg(&db)
        .arg("--witness")
        .arg(&witness)
        .env("STEP_MS", "150")
        .env("FLOWTRACE_TRACE_FILE", dir.join("traces.jsonl"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the example");
    // Kill it once the third node's exec has run: A and B are checkpointed, C may or may not be.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&witness).len() < 3 {
        assert!(Instant::now() < deadline, "the run did not reach node C in 30 s");
        assert!(child.try_wait().unwrap().is_none(), "the example exited before it was killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL the example");
    child.wait().unwrap();

    let before = lines(&witness);
    let checkpointed = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = EmbeddedStore::open(&db).unwrap();
            let state = store.load(run_id).await.unwrap().expect("a checkpoint survived the kill");
            assert_eq!(state.phase, RunPhase::Running);
            state.steps as usize
        })
    };
    assert!((2..=3).contains(&checkpointed), "A and B (and perhaps C) were checkpointed, got {checkpointed} steps");
    assert!(before.len() < 5, "the run was killed before it finished: {before:?}");

    let out = Command::new(&bin)
        .args(["resume", "--db"])
        .arg(&db)
        .arg("--witness")
        .arg(&witness)
        .env("STEP_MS", "1")
        .env("FLOWTRACE_TRACE_FILE", dir.join("traces.jsonl"))
        .output()
        .expect("run the example again");
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().expect("a result line")).unwrap();
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["run_id"], run_id);
    // The store went across the crash: every node's post ran once, in order.
    assert_eq!(result["store"]["visited"], json!(["A", "B", "C", "D", "E"]));

    let all = lines(&witness);
    let names = ["A", "B", "C", "D", "E"];
    for (i, n) in names.iter().enumerate() {
        let count = all.iter().filter(|l| *l == n).count();
        if i < checkpointed {
            assert_eq!(count, 1, "node {n} was checkpointed before the kill and must not run again: {all:?}");
        } else if i == checkpointed {
            assert!((1..=2).contains(&count), "node {n} was in flight at the kill: it runs once or twice: {all:?}");
        } else {
            assert_eq!(count, 1, "node {n} ran after the restart only: {all:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn approval_flow() -> Flow {
    let draft = FnNode::new("Draft")
        .post(|ctx, _, _| {
            ctx.shared().insert("draft", "Dear customer, …");
            Ok(Action::none())
        })
        .into_node();
    let approve = FnNode::new("Approve")
        .prep(|ctx| {
            let approved: bool = ctx.wait_for("approved")?;
            Ok(approved.into())
        })
        .post(|ctx, approved, _| {
            ctx.shared().insert("sent", approved.as_bool() == Some(true));
            Ok(Action::none())
        })
        .into_node();
    let _ = &draft >> &approve;
    Flow::named("approval", &draft)
}

#[tokio::test]
async fn a_suspended_run_waits_for_input_and_resumes_with_it() {
    let dir = temp_dir("suspend");
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let runs = DurableRuns::builder(EmbeddedStore::open(dir.join("runs.redb")).unwrap())
        .flow("approval", &approval_flow())
        .unwrap()
        .tracer(&tracer)
        .worker_name("local-1")
        .build();
    let first = runs.run(Submission::new("approval").store(json!({"ticket": "T-1"}))).await.unwrap();
    assert_eq!(first.status, ResultStatus::Suspended, "{first:?}");
    assert_eq!(first.waiting, Some(("Approve".to_owned(), "approved".to_owned())));
    let state = runs.state(&first.run_id).await.unwrap().unwrap();
    assert_eq!(state.next.as_deref(), Some("Approve"));
    assert_eq!(state.store["draft"], "Dear customer, …");

    // Resuming something that does not wait is refused; the real input continues it.
    assert!(runs.resume("no-such-run", Some(json!(true))).await.is_err());
    let done = runs.resume(&first.run_id, Some(json!(true))).await.unwrap();
    assert_eq!(done.status, ResultStatus::Completed, "{done:?}");
    assert_eq!(done.store.as_ref().unwrap()["sent"], true);
    assert!(runs.resume(&first.run_id, Some(json!(true))).await.is_err(), "a finished run cannot be resumed");

    tracer.flush(Duration::from_secs(5)).await;
    let traces = memory.traces();
    assert_eq!(traces.len(), 2, "two executions");
    assert_eq!(traces[0].trace_id, traces[1].trace_id, "one trace id across the suspension");
    assert_eq!(traces[0].trace_id.to_string(), first.run_id, "the run id is the trace id");
    let resume = traces[1].span("resume").expect("the second execution opens with a resume span");
    assert_eq!(resume.input.as_ref().unwrap()["worker"], "local-1");
    assert_eq!(resume.input.as_ref().unwrap()["node"], "Approve");
    assert!(traces[1].span("Draft").is_none(), "Draft is not executed again");
    // The suspension is no error (Langfuse would show the whole trace as ERROR), and both
    // parts carry the run's initial store as the trace's input; the last, its final store.
    assert!(!traces[0].status.is_error(), "{:?}", traces[0].status);
    assert!(traces[0].spans.iter().all(|s| !s.status.is_error()), "no span of the suspended part is an error");
    let event = traces[0].spans.iter().find(|s| s.name.starts_with("suspended at 'Approve'")).expect("an event");
    assert_eq!(event.attributes["level"], "DEFAULT");
    assert_eq!(traces[0].input, json!({"ticket": "T-1"}));
    assert_eq!(traces[1].input, json!({"ticket": "T-1"}), "not the checkpoint's store");
    assert_eq!(traces[1].output["sent"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn refused_runs_get_clear_error_results() {
    let dir = temp_dir("refused");
    let runs = DurableRuns::builder(EmbeddedStore::open(dir.join("runs.redb")).unwrap())
        .flow_version("approval", &approval_flow(), "2")
        .unwrap()
        .build();
    let unknown = runs.run(Submission::new("nope")).await.unwrap();
    assert_eq!(unknown.status, ResultStatus::Failed);
    assert_eq!(unknown.error_kind.as_deref(), Some("unknown_flow"));
    assert!(unknown.error.as_ref().unwrap().contains("unknown flow 'nope'"), "{unknown:?}");

    let bad_store = runs.run(Submission::new("approval").store(json!([1, 2]))).await.unwrap();
    assert_eq!(bad_store.error_kind.as_deref(), Some("bad_input"), "{bad_store:?}");
    assert!(bad_store.error.as_ref().unwrap().contains("must be a JSON object"));

    let old = runs.run(Submission::new("approval").flow_version("1")).await.unwrap();
    assert_eq!(old.error_kind.as_deref(), Some("version"), "{old:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duplicate_node_names_are_refused_at_registration() {
    let a = FnNode::new("Same").into_node();
    let b = FnNode::new("Same").into_node();
    let _ = &a >> &b;
    let dir = temp_dir("dup");
    let err = DurableRuns::builder(EmbeddedStore::open(dir.join("runs.redb")).unwrap())
        .flow("dup", &Flow::new(&a))
        .unwrap_err();
    assert!(err.to_string().contains("two nodes named 'Same'"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_run_resumed_inside_a_sequential_batch_does_not_repeat_completed_items() {
    let dir = temp_dir("batch");
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let runs = DurableRuns::builder(EmbeddedStore::open(dir.join("runs.redb")).unwrap())
        .flow("batched", &batch_flow(&counts, "i3"))
        .unwrap()
        .tracer(&tracer)
        .build();
    let first = runs.run(Submission::new("batched")).await.unwrap();
    assert_eq!(first.status, ResultStatus::Failed, "{first:?}");
    let state = runs.state(&first.run_id).await.unwrap().unwrap();
    let batch = state.batch.as_ref().expect("the checkpoint holds the batch's progress");
    assert_eq!((batch.node.as_str(), batch.done, batch.sets.len()), ("Items", 3, 5));
    assert_eq!(state.next.as_deref(), Some("Items"));
    assert_eq!(state.store["done_i2"], true);

    let done = runs.resume(&first.run_id, None).await.unwrap();
    assert_eq!(done.status, ResultStatus::Completed, "{done:?}");
    let store = done.store.unwrap();
    assert_resumed_once_each(&store, &counts, "completed items are not executed again; only the one in flight is");
    assert!(runs.state(&first.run_id).await.unwrap().unwrap().batch.is_none(), "the finished visit clears it");

    tracer.flush(Duration::from_secs(5)).await;
    let traces = memory.traces();
    let resume = traces[1].span("resume").expect("the second execution opens with a resume span");
    assert_eq!(resume.input.as_ref().unwrap()["batch"], json!({"node": "Items", "done": 3, "of": 5}));
    let _ = std::fs::remove_dir_all(&dir);
}
