//! The embedded default: each finished trace appended to a local JSON Lines file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{limit_values, ExportReport, Exporter};
use crate::trace::TraceRecord;

/// Appends every finished trace as one JSON line to a file (`flowtrace show FILE` reads it).
///
/// Writes happen on the tracer's thread, never on a run's. An I/O failure is logged once and
/// counted as dropped spans in the next [`flush`](Exporter::flush) report.
#[derive(Debug, Clone)]
pub struct JsonlFileExporter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
    max_value_bytes: usize,
    delivered: AtomicU64,
    dropped: AtomicU64,
    failed_once: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl JsonlFileExporter {
    /// Opens (creating it and its folder if needed) `path` for appending.
    pub fn new(path: impl AsRef<Path>) -> std::io::Result<Self> {
        Self::with_max_value_bytes(path, 1_000_000)
    }

    /// Like [`new`](Self::new), truncating recorded values larger than `max` bytes.
    pub fn with_max_value_bytes(path: impl AsRef<Path>, max: usize) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(JsonlFileExporter {
            inner: Arc::new(Inner {
                path,
                out: Mutex::new(BufWriter::new(file)),
                max_value_bytes: max,
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                failed_once: AtomicBool::new(false),
                last_error: Mutex::new(None),
            }),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn write(&self, trace: &TraceRecord) -> std::io::Result<()> {
        let limited = limit_values(trace, self.inner.max_value_bytes);
        let line = serde_json::to_vec(limited.as_ref().unwrap_or(trace))?;
        let mut out = self.inner.out.lock();
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        // One write per trace: a crash loses at most the trace being written.
        out.flush()
    }
}

impl Exporter for JsonlFileExporter {
    fn name(&self) -> &str {
        "file"
    }

    fn export(&self, trace: Arc<TraceRecord>) {
        let spans = trace.spans.len() as u64 + 1;
        match self.write(&trace) {
            Ok(()) => {
                self.inner.delivered.fetch_add(spans, Ordering::Relaxed);
            }
            Err(e) => {
                self.inner.dropped.fetch_add(spans, Ordering::Relaxed);
                *self.inner.last_error.lock() = Some(e.to_string());
                if !self.inner.failed_once.swap(true, Ordering::Relaxed) {
                    tracing::error!(target: "flowtrace::export", path = %self.inner.path.display(), "cannot write traces: {e}");
                }
            }
        }
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, ExportReport> {
        let _ = self.inner.out.lock().flush();
        let dropped = self.inner.dropped.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        if dropped > 0 {
            let why = self.inner.last_error.lock().clone().unwrap_or_default();
            reasons.push(format!("{dropped} spans could not be written to {}: {why}", self.inner.path.display()));
        }
        let report = ExportReport {
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            dropped,
            reasons,
            ..Default::default()
        };
        Box::pin(async move { report })
    }
}
