//! Debug output (`Tracer::builder().debug(true)`, or `FLOWTRACE_DEBUG`): a `[TRACING]` line as
//! each run starts and each span completes, and the trace's tree when it ends; a long run
//! keeps streaming with it on, its span lines printed as each part comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flowtrace::export::{MemoryExporter, PART_SPANS};
use flowtrace::prelude::*;
use serde_json::Value;

/// Everything `tracing` printed in this test binary (the debug output is printed on the
/// tracer's thread, so the subscriber is the process's).
fn printed() -> &'static Arc<Mutex<Vec<u8>>> {
    static OUT: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Writer(Arc::clone(&sink)))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the one subscriber of this binary");
        out
    })
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lines_with(needle: &str) -> Vec<String> {
    let out = printed().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&out).lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

/// A flow of one node that runs `steps` times (five spans a step: node, prep, exec with its attempt, post).
fn looping(steps: u64) -> Flow {
    let count = Arc::new(AtomicU64::new(0));
    let step = FnNode::new("Step")
        .exec(move |_, _| {
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            async move { Ok(Value::from(n)) }
        })
        .post(move |_, _, n| Ok(if n.as_u64() < Some(steps) { "again".into() } else { Action::none() }))
        .into_node();
    wire!(step - "again" >> step);
    Flow::new(&step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_prints_each_span_and_the_tree_and_keeps_a_long_run_streaming() {
    printed();
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).debug(true).build().unwrap();
    assert!(tracer.debug());

    // A short run: a line as it starts, one per span, and the tree at its end.
    looping(3).traced("DebugShort").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    assert!(tracer.flush(Duration::from_secs(30)).await.is_complete());
    let short = memory.traces().pop().unwrap();
    assert_eq!(lines_with("[TRACING] Starting trace: DebugShort").len(), 1);
    assert_eq!(lines_with("span completed in").len(), short.spans.len(), "a line per span");
    let finished = lines_with("[TRACING] Trace finished: DebugShort");
    assert_eq!(finished.len(), 1);
    assert!(!finished[0].contains("streamed"), "{finished:?}");
    assert!(!lines_with("Step").is_empty(), "the tree names the node");

    // A long run is streamed while every exporter takes parts (the memory exporter takes none,
    // so this tracer has only the debug output).
    let steps = 2 * PART_SPANS as u64 / 5;
    looping(steps).traced("Whole").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    assert!(tracer.flush(Duration::from_secs(30)).await.is_complete());
    let whole = memory.traces().pop().unwrap().spans.len();
    assert!(whole > 2 * PART_SPANS);
    let tracer = Tracer::builder().debug(true).build().unwrap();
    let before = lines_with("span completed in").len();
    looping(steps).traced("DebugLong").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    assert!(tracer.flush(Duration::from_secs(30)).await.is_complete());
    let spans = lines_with("span completed in").len() - before;
    assert_eq!(spans, whole, "every span printed once, parts and end alike");
    let end = lines_with("[TRACING] Trace finished: DebugLong");
    assert_eq!(end.len(), 1);
    let parts = whole / PART_SPANS;
    assert!(end[0].contains(&format!("streamed in {parts} parts")), "{end:?}");
}
