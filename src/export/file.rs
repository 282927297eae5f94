//! The embedded default: each finished trace appended to a local JSON Lines file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::privacy::Privacy;
use super::{ExportReport, Exporter};
use crate::trace::TraceRecord;

/// Appends every finished trace as one JSON line to a file (`flowtrace show FILE` reads it).
///
/// # Parts of long runs
///
/// A run is written as it goes: each time [`PART_SPANS`](crate::export::PART_SPANS) of its
/// spans have ended, they are appended as a line of their own, a *part*: a [`TraceRecord`]
/// with `"part": k` (0, 1, …), the trace's id and fields, `"input": null`, `"output": null`,
/// `"status": "ok"` and only those spans. The line written when the run ends is the trace
/// record as before, with `"parts": n` (how many part lines came before it) and only the
/// spans not in a part. A run with fewer spans is one line with neither key, exactly as
/// before. Lines of concurrent runs interleave; a reader groups them by `trace_id`, as
/// [`TraceRecord::merge_parts`] does (and so `flowtrace show`). Part lines with no ending
/// line are a run the process did not see end.
///
/// Every trace is written as the [`Privacy`] rules let it leave: secret keys and
/// credential-shaped values redacted, values too deep or too large replaced by a marker (so
/// every line reads back). [`new`](Self::new) applies the default rules.
///
/// [`export`](Exporter::export) only queues: the writing (privacy rules, serialisation,
/// the write itself) happens on the exporter's own writer thread, so neither a run nor the
/// tracer actor ever waits on the disk. An I/O failure is logged once and counted as dropped
/// spans in the next [`flush`](Exporter::flush) report.
#[derive(Debug, Clone)]
pub struct JsonlFileExporter {
    inner: Arc<Inner>,
}

enum Msg {
    Trace(Arc<TraceRecord>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    queue: Mutex<std::sync::mpsc::Sender<Msg>>,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    path: PathBuf,
    privacy: Privacy,
    queued: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    failed_once: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl State {
    fn write(&self, out: &mut BufWriter<File>, trace: Arc<TraceRecord>) -> std::io::Result<()> {
        let trace = self.privacy.apply_shared(trace);
        let line = serde_json::to_vec(&*trace)?;
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        // One flush per trace: a crash loses at most the trace being written.
        out.flush()
    }

    fn record(&self, spans: u64, result: std::io::Result<()>) {
        match result {
            Ok(()) => {
                self.delivered.fetch_add(spans, Ordering::Relaxed);
            }
            Err(e) => self.fail(spans, &e.to_string()),
        }
    }

    fn fail(&self, spans: u64, why: &str) {
        self.dropped.fetch_add(spans, Ordering::Relaxed);
        *self.last_error.lock() = Some(why.to_owned());
        if !self.failed_once.swap(true, Ordering::Relaxed) {
            tracing::error!(target: "flowtrace::export", path = %self.path.display(), "cannot write traces: {why}");
        }
    }
}

impl JsonlFileExporter {
    /// Opens (creating it and its folder if needed) `path` for appending.
    pub fn new(path: impl AsRef<Path>) -> std::io::Result<Self> {
        Self::with_max_value_bytes(path, 1_000_000)
    }

    /// Like [`new`](Self::new), truncating recorded values larger than `max` bytes.
    pub fn with_max_value_bytes(path: impl AsRef<Path>, max: usize) -> std::io::Result<Self> {
        Self::with_privacy(path, Privacy::default().with_max_value_bytes(max))
    }

    /// Like [`new`](Self::new), with these privacy rules (sampling is left to the tracer).
    pub fn with_privacy(path: impl AsRef<Path>, privacy: Privacy) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let state = Arc::new(State {
            path: path.clone(),
            privacy,
            queued: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_once: AtomicBool::new(false),
            last_error: Mutex::new(None),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let writer = state.clone();
        std::thread::Builder::new().name("flowtrace-file".into()).spawn(move || {
            let mut out = BufWriter::new(file);
            // Ends when every handle to the exporter is gone (the channel closes).
            for msg in rx {
                match msg {
                    Msg::Trace(trace) => {
                        let spans = trace.weight();
                        let result = writer.write(&mut out, trace);
                        writer.record(spans, result);
                    }
                    Msg::Flush(done) => {
                        let _ = out.flush();
                        let _ = done.send(());
                    }
                }
            }
        })?;
        Ok(JsonlFileExporter { inner: Arc::new(Inner { path, queue: Mutex::new(tx), state }) })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn report(&self) -> ExportReport {
        let s = &self.inner.state;
        let delivered = s.delivered.load(Ordering::Relaxed);
        let dropped = s.dropped.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        if dropped > 0 {
            let why = s.last_error.lock().clone().unwrap_or_default();
            reasons.push(format!("{dropped} spans could not be written to {}: {why}", s.path.display()));
        }
        let pending = s.queued.load(Ordering::Relaxed).saturating_sub(delivered + dropped);
        ExportReport { delivered, dropped, pending, reasons, ..Default::default() }
    }
}

impl Exporter for JsonlFileExporter {
    fn name(&self) -> &str {
        "file"
    }

    fn export(&self, trace: Arc<TraceRecord>) {
        let spans = trace.weight();
        self.inner.state.queued.fetch_add(spans, Ordering::Relaxed);
        if self.inner.queue.lock().send(Msg::Trace(trace)).is_err() {
            self.inner.state.fail(spans, "the file writer thread has stopped");
        }
    }

    fn takes_parts(&self) -> bool {
        true
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.inner.queue.lock().send(Msg::Flush(tx)).is_ok();
        Box::pin(async move {
            if sent {
                // The writer answers after everything queued before this flush is written.
                let _ = tokio::time::timeout(timeout, rx).await;
            }
            self.report()
        })
    }
}
