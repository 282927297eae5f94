//! An exporter that keeps traces in memory: for tests, and for applications that inspect runs.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{ExportReport, Exporter};
use crate::trace::TraceRecord;

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
#[derive(Debug, Clone, Default)]
pub struct MemoryExporter {
    traces: Arc<Mutex<Vec<Arc<TraceRecord>>>>,
}

impl MemoryExporter {
    /// An empty exporter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The traces received so far, in the order they finished.
    pub fn traces(&self) -> Vec<Arc<TraceRecord>> {
        self.traces.lock().clone()
    }

    /// Forgets the traces received so far.
    pub fn clear(&self) {
        self.traces.lock().clear();
    }
}

impl Exporter for MemoryExporter {
    fn name(&self) -> &str {
        "memory"
    }

    fn export(&self, trace: Arc<TraceRecord>) {
        self.traces.lock().push(trace);
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, ExportReport> {
        let delivered = self.traces.lock().iter().map(|t| t.weight()).sum();
        Box::pin(async move { ExportReport { delivered, ..Default::default() } })
    }
}
