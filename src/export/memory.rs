//! An exporter that keeps traces in memory: for tests, and for applications that inspect runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{ExportReport, Exporter};
use crate::trace::{TraceId, TraceRecord};

/// Keeps every finished trace in memory; clones share the same list.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use flowtrace::prelude::*;
/// let memory = MemoryExporter::new();
/// let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
/// let hello = FnNode::new("Hello").post(|ctx, _, _| { ctx.shared().insert("greeting", "hi"); Ok(Action::none()) }).into_node();
/// let flow = Flow::new(&hello);
/// flow.traced("Hello").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
/// tracer.flush(std::time::Duration::from_secs(5)).await;
/// let traces = memory.traces();
/// assert_eq!(traces[0].name, "Hello");
/// assert!(traces[0].span("Hello.post").is_some());
/// # }
/// ```
/// Streamed runs are put back together: the exporter takes parts (so a tracer that is behind
/// hands spans over instead of shedding them, and a long run streams as it goes), and a run
/// appears in [`traces`](Self::traces) once, whole, when it ends.
#[derive(Debug, Clone, Default)]
pub struct MemoryExporter {
    inner: Arc<Mutex<Received>>,
}

#[derive(Debug, Default)]
struct Received {
    /// Finished runs, whole, in the order they ended.
    traces: Vec<Arc<TraceRecord>>,
    /// Parts of runs still in progress, by run, in the order they came.
    open: HashMap<TraceId, Vec<Arc<TraceRecord>>>,
}

impl MemoryExporter {
    /// An empty exporter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The traces received so far, in the order they finished; a run streamed in parts is
    /// one record with all its spans (see [`TraceRecord::merge_parts`]), and a run still in
    /// progress is not here yet.
    pub fn traces(&self) -> Vec<Arc<TraceRecord>> {
        self.inner.lock().traces.clone()
    }

    /// Forgets the traces received so far (and the parts of runs still in progress).
    pub fn clear(&self) {
        let mut r = self.inner.lock();
        r.traces.clear();
        r.open.clear();
    }
}

impl Exporter for MemoryExporter {
    fn name(&self) -> &str {
        "memory"
    }

    fn export(&self, trace: Arc<TraceRecord>) {
        let mut r = self.inner.lock();
        let whole = match r.open.remove(&trace.trace_id) {
            // A run's parts all come before the record that ends it (the tracer, or a run
            // that bypasses it, hands them over first).
            // A record no one else holds is moved, not copied, into the merge.
            Some(parts) => {
                let records = parts.into_iter().chain(std::iter::once(trace)).map(Arc::unwrap_or_clone);
                let merged = TraceRecord::merge_parts(records).pop();
                Arc::new(merged.expect("merge_parts returns a record for the run it is given"))
            }
            None => trace,
        };
        r.traces.push(whole);
    }

    fn takes_parts(&self) -> bool {
        true
    }

    fn export_part(&self, part: Arc<TraceRecord>) {
        self.inner.lock().open.entry(part.trace_id).or_default().push(part);
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, ExportReport> {
        let r = self.inner.lock();
        let delivered = r.traces.iter().chain(r.open.values().flatten()).map(|t| t.weight()).sum();
        drop(r);
        Box::pin(async move { ExportReport { delivered, ..Default::default() } })
    }
}
