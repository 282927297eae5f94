//! The HTTP delivery core shared by the Langfuse and OTLP exporters: a bounded queue, batching
//! by span count, age and bytes, retries with backoff and jitter, and the on-disk spool.
//!
//! The worker runs on its own thread and runtime, so neither encoding nor network waits ever
//! touch a run's threads or the tracer's.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::privacy::Privacy;
use super::spool::{spans_of, Spool};
use super::{legacy, otlp, ExportReport, Exporter};
use crate::trace::TraceRecord;

/// Batching, retry and spool settings shared by the HTTP exporters.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Send when a batch holds this many spans (default 64).
    pub max_batch_spans: usize,
    /// Send when the oldest trace of a batch waited this long (default 1 s).
    pub max_batch_age: Duration,
    /// At most this many bytes in one request body (default 2.5 MB).
    pub max_request_bytes: usize,
    /// Traces the in-memory queue holds before spilling to the spool (default 4,096).
    pub queue_capacity: usize,
    /// Attempts per request before the batch goes to the spool (default 5).
    pub max_attempts: u32,
    /// The first retry delay, doubled each attempt, with equal jitter (default 250 ms).
    pub initial_backoff: Duration,
    /// The largest retry delay, also the cap on `Retry-After` (default 30 s).
    pub max_backoff: Duration,
    /// Timeout of one HTTP request (default 10 s).
    pub request_timeout: Duration,
    /// The spool folder; `None` disables spooling (what cannot be delivered is then dropped).
    pub spool_dir: Option<PathBuf>,
    /// The most the spool may hold (default 256 MiB).
    pub spool_max_bytes: u64,
    /// While the backend is down, how often to probe it with a spooled batch (default 5 s).
    pub probe_interval: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            max_batch_spans: 64,
            max_batch_age: Duration::from_secs(1),
            max_request_bytes: 2_500_000,
            queue_capacity: 4096,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            spool_dir: None,
            spool_max_bytes: 256 << 20,
            probe_interval: Duration::from_secs(5),
        }
    }
}

/// An HTTP destination: URL, headers and optional Basic credentials.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub basic: Option<(String, String)>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Endpoint").field("url", &self.url).field("headers", &names).finish()
    }
}

/// The most of a backend's answer quoted in a log line or report (after scrubbing).
const MAX_LOGGED_CHARS: usize = 200;

const MODE_OTLP: u8 = 0;
const MODE_LEGACY: u8 = 1;

/// Where and how to send: OTLP, legacy batch JSON, or OTLP falling back to legacy on 404.
#[derive(Debug)]
pub(crate) struct Target {
    pub otlp: Option<Endpoint>,
    pub legacy: Option<Endpoint>,
    /// Whether a 404 on OTLP switches to legacy.
    pub auto: bool,
    pub mode: AtomicU8,
    pub resource: Resource,
    pub public_key: String,
}

impl Target {
    /// Every credential this target sends: Basic user, password and their encoded pair, and
    /// the value of every header that is not one of flowtrace's own descriptive ones.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ep in self.otlp.iter().chain(self.legacy.iter()) {
            if let Some((user, pass)) = &ep.basic {
                out.push(user.clone());
                out.push(pass.clone());
                out.push(super::privacy::base64(format!("{user}:{pass}").as_bytes()));
            }
            for (name, value) in &ep.headers {
                let n = name.to_ascii_lowercase();
                if matches!(
                    n.as_str(),
                    "x-langfuse-sdk-name" | "x-langfuse-sdk-version" | "x-langfuse-ingestion-version"
                ) {
                    continue;
                }
                out.push(value.clone());
                // `Bearer abc…`: the credential alone, too.
                if let Some((_, cred)) = value.split_once(' ') {
                    out.push(cred.trim().to_owned());
                }
            }
        }
        if !self.public_key.is_empty() {
            out.push(self.public_key.clone());
        }
        out
    }

    pub(crate) fn otlp(ep: Endpoint, service: &str) -> Self {
        Target {
            otlp: Some(ep),
            legacy: None,
            auto: false,
            mode: AtomicU8::new(MODE_OTLP),
            resource: otlp::resource(service),
            public_key: String::new(),
        }
    }
}

/// One encoded span (or, for legacy, event) waiting in a batch.
struct Unit {
    /// Index of its trace in the batch.
    trace: usize,
    /// Spans it stands for in reports (a root carries the trace too).
    weight: u64,
    size: usize,
    payload: Payload,
}

#[allow(clippy::large_enum_variant)] // spans are the common case; boxing them would cost an allocation each
enum Payload {
    Otlp(Span),
    Legacy { id: String, json: Vec<u8> },
}

struct Batch {
    traces: Vec<Arc<TraceRecord>>,
    units: Vec<Unit>,
    bytes: usize,
    weight: u64,
    started: Option<Instant>,
    /// Whether it came from the spool (counted as `from_spool`, not `delivered`).
    from_spool: bool,
}

impl Batch {
    fn new() -> Self {
        Batch { traces: Vec::new(), units: Vec::new(), bytes: 0, weight: 0, started: None, from_spool: false }
    }
    fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }
}

fn encode_into(batch: &mut Batch, t: Arc<TraceRecord>, mode: u8) {
    let idx = batch.traces.len();
    let total = spans_of(&t);
    let before = batch.units.len();
    if mode == MODE_LEGACY {
        let mut events = Vec::new();
        legacy::encode_trace_bytes(&t, &mut events);
        for (id, json) in events {
            batch.units.push(Unit {
                trace: idx,
                weight: 1,
                size: json.len() + 1,
                payload: Payload::Legacy { id, json },
            });
        }
    } else {
        let mut spans = Vec::new();
        otlp::encode_trace(&t, &mut spans);
        for s in spans {
            let size = s.encoded_len() + 4;
            batch.units.push(Unit { trace: idx, weight: 1, size, payload: Payload::Otlp(s) });
        }
    }
    // Make the weights add up to the trace's span count plus one for the trace itself.
    let n = (batch.units.len() - before) as u64;
    if let Some(first) = batch.units.get_mut(before) {
        first.weight += total.saturating_sub(n);
    }
    batch.bytes += batch.units[before..].iter().map(|u| u.size).sum::<usize>();
    batch.weight += total;
    batch.traces.push(t);
    batch.started.get_or_insert_with(Instant::now);
}

/// Counters shared by the exporter handle and its worker.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    delivered: AtomicU64,
    from_spool: AtomicU64,
    spooled: AtomicU64,
    dropped: AtomicU64,
    reasons: Mutex<Vec<(String, u64)>>,
    auth_reported: AtomicBool,
}

impl Stats {
    fn reason(&self, text: String, spans: u64) {
        let mut r = self.reasons.lock();
        match r.iter_mut().find(|(t, _)| *t == text) {
            Some((_, n)) => *n += spans,
            None => r.push((text, spans)),
        }
    }
    fn drop_spans(&self, n: u64, why: String) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(target: "flowtrace::export", "dropped {n} spans: {why}");
        self.reason(why, n);
    }
    fn report(&self) -> ExportReport {
        let accepted = self.accepted.load(Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let spooled = self.spooled.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        ExportReport {
            delivered,
            spooled,
            dropped,
            pending: accepted.saturating_sub(delivered + spooled + dropped),
            reasons: self.reasons.lock().iter().map(|(t, n)| format!("{t} ({n} spans)")).collect(),
            from_spool: self.from_spool.load(Ordering::Relaxed),
        }
    }
}

enum Control {
    Flush(Instant, oneshot::Sender<()>),
    Shutdown(Instant, oneshot::Sender<()>),
}

/// The exporter handle: queues traces for the worker thread.
pub(crate) struct HttpExporter {
    name: String,
    tx: mpsc::Sender<Arc<TraceRecord>>,
    ctl: mpsc::UnboundedSender<Control>,
    stats: Arc<Stats>,
    privacy: Privacy,
    spool: Option<Arc<Spool>>,
    closed: AtomicBool,
}

impl fmt::Debug for HttpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExporter").field("name", &self.name).finish_non_exhaustive()
    }
}

impl HttpExporter {
    /// Starts the worker thread.
    pub(crate) fn start(
        name: &str,
        target: Target,
        opts: DeliveryOptions,
        privacy: Privacy,
    ) -> Result<HttpExporter, String> {
        // The exporter's own credentials are never let out: not in traces, logs or reports.
        let privacy = privacy.with_secret_values(target.secrets());
        let stats = Arc::new(Stats::default());
        let spool = match &opts.spool_dir {
            Some(dir) => match Spool::open(dir, opts.spool_max_bytes) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    // Tracing goes on without a spool: what cannot be delivered is dropped
                    // and counted, and the report says why, once.
                    let why = format!(
                        "{name}: cannot create the spool folder {} (FLOWTRACE_SPOOL_DIR): {e}; tracing goes on without a spool, so traces that cannot be delivered are dropped",
                        dir.display()
                    );
                    tracing::warn!(target: "flowtrace::export", "{why}");
                    stats.reason(why, 0);
                    None
                }
            },
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            name: name.to_owned(),
            target,
            opts,
            client,
            stats: Arc::clone(&stats),
            spool: spool.clone(),
            privacy: privacy.clone(),
            down: false,
            next_probe: Instant::now(),
        };
        std::thread::Builder::new()
            .name(format!("flowtrace-export-{name}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(target: "flowtrace::export", "cannot start the export runtime: {e}");
                        return;
                    }
                };
                rt.block_on(worker.run(rx, ctl_rx));
            })
            .map_err(|e| format!("cannot start the export thread: {e}"))?;
        Ok(HttpExporter { name: name.to_owned(), tx, ctl, stats, privacy, spool, closed: AtomicBool::new(false) })
    }

    fn wait(&self, timeout: Duration, shutdown: bool) -> BoxFuture<'_, ExportReport> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let (done, wait) = oneshot::channel();
            let msg = if shutdown { Control::Shutdown(deadline, done) } else { Control::Flush(deadline, done) };
            if shutdown {
                self.closed.store(true, Ordering::Relaxed);
            }
            if self.ctl.send(msg).is_ok() {
                let _ = tokio::time::timeout_at(deadline, wait).await;
            }
            self.stats.report()
        })
    }
}

impl Exporter for HttpExporter {
    fn name(&self) -> &str {
        &self.name
    }

    fn export(&self, trace: Arc<TraceRecord>) {
        if !self.privacy.sampled(trace.trace_id) {
            return;
        }
        let n = spans_of(&trace);
        self.stats.accepted.fetch_add(n, Ordering::Relaxed);
        if self.closed.load(Ordering::Relaxed) {
            self.stats.drop_spans(n, format!("{}: trace exported after shutdown", self.name));
            return;
        }
        let trace = match self.tx.try_send(trace) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(t)) => t,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.drop_spans(n, format!("{}: the export worker stopped", self.name));
                return;
            }
        };
        // The queue is full: spill to the spool, scrubbed like everything that leaves.
        match &self.spool {
            Some(spool) => match spool.write(&[self.privacy.apply_shared(trace)]) {
                Ok(w) => {
                    self.stats.spooled.fetch_add(w, Ordering::Relaxed);
                }
                Err(e) => self.stats.drop_spans(n, format!("{}: queue full and {e}", self.name)),
            },
            None => self.stats.drop_spans(n, format!("{}: queue full and no spool configured", self.name)),
        }
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.wait(timeout, false)
    }

    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.wait(timeout, true)
    }
}

/// How one request went.
enum Sent {
    Ok,
    /// Retryable: connect error, timeout, 5xx, 429.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Legacy 207: some events failed; retry those with retryable statuses.
    Partial {
        retry: Vec<usize>,
        rejected: Vec<(usize, String)>,
    },
    /// 413: the body is too large.
    TooLarge(String),
    /// 404 on the OTLP path.
    NotFound(String),
    /// 401/403.
    Auth(String),
    /// Other 4xx: not retryable.
    Rejected(String),
}

struct Worker {
    name: String,
    target: Target,
    opts: DeliveryOptions,
    client: reqwest::Client,
    stats: Arc<Stats>,
    spool: Option<Arc<Spool>>,
    privacy: Privacy,
    /// The backend is considered down: batches go straight to the spool until a probe works.
    down: bool,
    next_probe: Instant,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<TraceRecord>>, mut ctl: mpsc::UnboundedReceiver<Control>) {
        let mut batch = Batch::new();
        // Whatever an earlier process left in the spool goes first.
        self.drain_spool(None).await;
        loop {
            let age_deadline = batch.started.map(|s| s + self.opts.max_batch_age);
            let probe = self.spool.is_some() && (self.down || self.spool_has_files());
            tokio::select! {
                biased;
                c = ctl.recv() => {
                    let Some(c) = c else { break };
                    let (deadline, done, stop) = match c {
                        Control::Flush(d, done) => (d, done, false),
                        Control::Shutdown(d, done) => (d, done, true),
                    };
                    while let Ok(t) = rx.try_recv() {
                        self.add(&mut batch, t, Some(deadline)).await;
                    }
                    let b = std::mem::replace(&mut batch, Batch::new());
                    self.send_batch(b, Some(deadline)).await;
                    // Also a chance to deliver what is spooled (a probe when the backend was down).
                    self.drain_spool(Some(deadline)).await;
                    let _ = done.send(());
                    if stop {
                        rx.close();
                        while let Ok(t) = rx.try_recv() {
                            self.spool_or_drop(&[t], "arrived during shutdown");
                        }
                        break;
                    }
                }
                t = rx.recv() => match t {
                    Some(t) => self.add(&mut batch, t, None).await,
                    None => {
                        let b = std::mem::replace(&mut batch, Batch::new());
                        self.send_batch(b, None).await;
                        break;
                    }
                },
                _ = sleep_until_opt(age_deadline) => {
                    let b = std::mem::replace(&mut batch, Batch::new());
                    self.send_batch(b, None).await;
                }
                _ = tokio::time::sleep_until(self.next_probe), if probe => {
                    self.next_probe = Instant::now() + self.opts.probe_interval;
                    self.drain_spool(None).await;
                }
            }
        }
    }

    fn spool_has_files(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| s.has_files())
    }

    fn mode(&self) -> u8 {
        self.target.mode.load(Ordering::Relaxed)
    }

    async fn add(&mut self, batch: &mut Batch, t: Arc<TraceRecord>, deadline: Option<Instant>) {
        let t = self.privacy.apply_shared(t);
        encode_into(batch, t, self.mode());
        if batch.weight as usize >= self.opts.max_batch_spans || batch.bytes >= self.opts.max_request_bytes {
            let b = std::mem::replace(batch, Batch::new());
            self.send_batch(b, deadline).await;
        }
    }

    fn spool_or_drop(&self, traces: &[Arc<TraceRecord>], why: &str) -> bool {
        let n: u64 = traces.iter().map(|t| spans_of(t)).sum();
        match &self.spool {
            // Scrubbed like everything that leaves (a no-op scan for traces already scrubbed).
            Some(s) => {
                match s.write(&traces.iter().map(|t| self.privacy.apply_shared(Arc::clone(t))).collect::<Vec<_>>()) {
                    Ok(w) => {
                        self.stats.spooled.fetch_add(w, Ordering::Relaxed);
                        tracing::info!(target: "flowtrace::export", "{}: spooled {w} spans to {} ({why})", self.name, s.dir().display());
                        true
                    }
                    Err(e) => {
                        self.stats.drop_spans(n, format!("{}: {why}, and {e}", self.name));
                        false
                    }
                }
            }
            None => {
                self.stats.drop_spans(n, format!("{}: {why}, and no spool is configured", self.name));
                false
            }
        }
    }

    /// Sends a batch, retrying; what cannot be delivered goes to the spool (or, for a batch
    /// from the spool, back to it). Returns whether everything was settled without spooling.
    async fn send_batch(&mut self, mut batch: Batch, deadline: Option<Instant>) -> bool {
        if batch.is_empty() {
            return true;
        }
        if self.down && !batch.from_spool {
            let traces = std::mem::take(&mut batch.traces);
            self.spool_or_drop(&traces, "the backend is down");
            return false;
        }
        // Split by request size.
        let mut chunks: Vec<Vec<Unit>> = Vec::new();
        let mut cur = Vec::new();
        let mut bytes = 0;
        for u in std::mem::take(&mut batch.units) {
            if !cur.is_empty() && bytes + u.size > self.opts.max_request_bytes {
                chunks.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            bytes += u.size;
            cur.push(u);
        }
        chunks.push(cur);
        let mut failed: Vec<Unit> = Vec::new();
        let mut why = String::new();
        let mut queue = std::collections::VecDeque::from(chunks);
        while let Some(chunk) = queue.pop_front() {
            if self.down {
                failed.extend(chunk);
                continue;
            }
            match self.deliver(chunk, &batch, deadline).await {
                Ok(()) => {}
                Err((units, reason, split)) => {
                    if let Some((a, b)) = split {
                        queue.push_front(b);
                        queue.push_front(a);
                        continue;
                    }
                    why = reason;
                    failed.extend(units);
                }
            }
        }
        if failed.is_empty() {
            return true;
        }
        // Spool the traces that still have undelivered units.
        let mut idx: Vec<usize> = failed.iter().map(|u| u.trace).collect();
        idx.sort_unstable();
        idx.dedup();
        let traces: Vec<Arc<TraceRecord>> = idx.iter().map(|&i| Arc::clone(&batch.traces[i])).collect();
        let weight: u64 = failed.iter().map(|u| u.weight).sum();
        if batch.from_spool {
            // The caller puts the file back.
            return false;
        }
        match &self.spool {
            Some(s) => match s.write(&traces) {
                Ok(_) => {
                    self.stats.spooled.fetch_add(weight, Ordering::Relaxed);
                    tracing::info!(target: "flowtrace::export", "{}: spooled {weight} spans to {} ({why})", self.name, s.dir().display());
                }
                Err(e) => self.stats.drop_spans(weight, format!("{}: {why}, and {e}", self.name)),
            },
            None => self.stats.drop_spans(weight, format!("{}: {why}, and no spool is configured", self.name)),
        }
        false
    }

    fn count_delivered(&self, batch: &Batch, n: u64) {
        if batch.from_spool {
            self.stats.from_spool.fetch_add(n, Ordering::Relaxed);
        } else {
            self.stats.delivered.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Delivers one chunk with retries. On failure returns the undelivered units, the reason,
    /// and for a 413 the two halves to try instead.
    #[allow(clippy::type_complexity)]
    async fn deliver(
        &mut self,
        mut units: Vec<Unit>,
        batch: &Batch,
        deadline: Option<Instant>,
    ) -> Result<(), (Vec<Unit>, String, Option<(Vec<Unit>, Vec<Unit>)>)> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = self.post(&mut units).await;
            let (after, why) = match outcome {
                Sent::Ok => {
                    self.count_delivered(batch, units.iter().map(|u| u.weight).sum());
                    self.down = false;
                    return Ok(());
                }
                Sent::Partial { retry, rejected } => {
                    let mut keep = vec![0u8; units.len()]; // 0 delivered, 1 retry, 2 rejected
                    for i in &retry {
                        keep[*i] = 1;
                    }
                    for (i, msg) in &rejected {
                        keep[*i] = 2;
                        let w = units[*i].weight;
                        self.stats.drop_spans(w, format!("{}: event rejected: {msg}", self.name));
                    }
                    let mut rest = Vec::new();
                    let mut ok = 0;
                    for (u, k) in units.into_iter().zip(keep) {
                        match k {
                            0 => ok += u.weight,
                            1 => rest.push(u),
                            _ => {}
                        }
                    }
                    self.count_delivered(batch, ok);
                    self.down = false;
                    if rest.is_empty() {
                        return Ok(());
                    }
                    units = rest;
                    (None, format!("{} events failed with a retryable status", units.len()))
                }
                Sent::Retry { after, why } => (after, why),
                Sent::TooLarge(msg) => {
                    if units.len() > 1 {
                        let b = units.split_off(units.len() / 2);
                        return Err((Vec::new(), msg, Some((units, b))));
                    }
                    let w = units[0].weight;
                    self.stats
                        .drop_spans(w, format!("{}: a single span is too large for the backend: {msg}", self.name));
                    return Ok(());
                }
                Sent::NotFound(msg) if self.target.auto && self.mode() == MODE_OTLP && self.target.legacy.is_some() => {
                    tracing::warn!(target: "flowtrace::export", "{}: the OTLP endpoint answered 404 ({msg}); switching to legacy batch ingestion", self.name);
                    self.target.mode.store(MODE_LEGACY, Ordering::Relaxed);
                    // Re-encode the traces of these units as legacy events.
                    let mut idx: Vec<usize> = units.iter().map(|u| u.trace).collect();
                    idx.dedup();
                    let mut b = Batch::new();
                    for i in idx {
                        encode_into(&mut b, Arc::clone(&batch.traces[i]), MODE_LEGACY);
                    }
                    units = b
                        .units
                        .into_iter()
                        .map(|mut u| {
                            u.trace = batch.traces.iter().position(|t| Arc::ptr_eq(t, &b.traces[u.trace])).unwrap_or(0);
                            u
                        })
                        .collect();
                    attempt = 0;
                    continue;
                }
                Sent::NotFound(msg) | Sent::Rejected(msg) => {
                    let w = units.iter().map(|u| u.weight).sum();
                    self.stats.drop_spans(w, format!("{}: the backend rejected the batch: {msg}", self.name));
                    return Ok(());
                }
                Sent::Auth(msg) => {
                    if !self.stats.auth_reported.swap(true, Ordering::Relaxed) {
                        tracing::error!(target: "flowtrace::export", "{}: authentication failed: {msg}; check the keys. Traces are kept in the spool.", self.name);
                        self.stats.reason(format!("{}: authentication failed: {msg}", self.name), 0);
                    }
                    self.down = true;
                    self.next_probe = Instant::now() + self.opts.probe_interval;
                    return Err((units, format!("authentication failed: {msg}"), None));
                }
            };
            let wait = after.unwrap_or_else(|| self.backoff(attempt)).min(self.opts.max_backoff);
            let past_deadline = deadline.is_some_and(|d| Instant::now() + wait > d);
            if attempt >= self.opts.max_attempts || past_deadline {
                tracing::warn!(target: "flowtrace::export", "{}: giving up on a request after {attempt} attempts: {why}", self.name);
                self.down = true;
                self.next_probe = Instant::now() + self.opts.probe_interval;
                return Err((units, why, None));
            }
            tracing::debug!(target: "flowtrace::export", "{}: retrying in {wait:?}: {why}", self.name);
            tokio::time::sleep(wait).await;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.opts.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let cap = base.min(self.opts.max_backoff);
        // Equal jitter: uniform in [cap/2, cap].
        let r = legacy_random() % 1000;
        cap / 2 + cap.mul_f64(r as f64 / 2000.0)
    }

    async fn post(&self, units: &mut [Unit]) -> Sent {
        let legacy = matches!(units.first().map(|u| &u.payload), Some(Payload::Legacy { .. }));
        let (ep, body, ctype) = if legacy {
            let Some(ep) = &self.target.legacy else { return Sent::Rejected("no legacy endpoint".into()) };
            let mut body = Vec::with_capacity(units.iter().map(|u| u.size).sum::<usize>() + 256);
            body.extend_from_slice(b"{\"batch\":[");
            for (i, u) in units.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                if let Payload::Legacy { json, .. } = &u.payload {
                    body.extend_from_slice(json);
                }
            }
            body.extend_from_slice(b"],\"metadata\":");
            let md = serde_json::json!({
                "batch_size": units.len(), "sdk_name": "flowtrace",
                "sdk_version": env!("CARGO_PKG_VERSION"), "public_key": self.target.public_key,
            });
            body.extend_from_slice(md.to_string().as_bytes());
            body.push(b'}');
            (ep, body, "application/json")
        } else {
            let Some(ep) = &self.target.otlp else { return Sent::Rejected("no OTLP endpoint".into()) };
            // Move the spans into the request for encoding and back again: no copies.
            let spans = units
                .iter_mut()
                .filter_map(|u| match &mut u.payload {
                    Payload::Otlp(s) => Some(std::mem::take(s)),
                    Payload::Legacy { .. } => None,
                })
                .collect();
            let (body, spans) = otlp::encode_request_reusing(&self.target.resource, spans);
            let mut spans = spans.into_iter();
            for u in units.iter_mut() {
                if let (Payload::Otlp(s), Some(back)) = (&mut u.payload, spans.next()) {
                    *s = back;
                }
            }
            (ep, body, "application/x-protobuf")
        };
        let mut req = self.client.post(&ep.url).header("content-type", ctype).body(body);
        for (k, v) in &ep.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some((user, pass)) = &ep.basic {
            req = req.basic_auth(user, Some(pass));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                let why = self.privacy.scrub_text(&format!("{kind}: {} ({e})", ep.url), MAX_LOGGED_CHARS);
                return Sent::Retry { after: None, why };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body = resp.bytes().await.unwrap_or_default();
        // A backend or proxy may echo the request (its Authorization header among it) in an
        // error page: the body is scrubbed before it goes into any log line or report.
        let text = || {
            let s = self.privacy.scrub_text(&String::from_utf8_lossy(&body), MAX_LOGGED_CHARS);
            self.privacy.scrub_text(&format!("{status} from {}: {s}", ep.url), 4 * MAX_LOGGED_CHARS)
        };
        match status {
            207 if legacy => {
                let errors = legacy::parse_multi_status(&body);
                if errors.is_empty() {
                    return Sent::Ok;
                }
                let pos: HashMap<&str, usize> = units
                    .iter()
                    .enumerate()
                    .filter_map(|(i, u)| match &u.payload {
                        Payload::Legacy { id, .. } => Some((id.as_str(), i)),
                        Payload::Otlp(_) => None,
                    })
                    .collect();
                let mut retry = Vec::new();
                let mut rejected = Vec::new();
                for e in errors {
                    let Some(&i) = pos.get(e.id.as_str()) else { continue };
                    if e.status >= 500 || e.status == 429 {
                        retry.push(i);
                    } else {
                        rejected.push((
                            i,
                            format!("{} {}", e.status, self.privacy.scrub_text(&e.message, MAX_LOGGED_CHARS)),
                        ));
                    }
                }
                Sent::Partial { retry, rejected }
            }
            200..=299 => Sent::Ok,
            429 => Sent::Retry { after: retry_after, why: text() },
            401 | 403 => Sent::Auth(text()),
            404 => Sent::NotFound(text()),
            413 => Sent::TooLarge(text()),
            408 | 500..=599 => Sent::Retry { after: retry_after.filter(|_| status == 503), why: text() },
            _ => Sent::Rejected(text()),
        }
    }

    /// Sends spooled files while the backend takes them (within the deadline).
    async fn drain_spool(&mut self, deadline: Option<Instant>) {
        let Some(spool) = self.spool.clone() else { return };
        while deadline.is_none_or(|d| Instant::now() < d) {
            let Some(claim) = spool.claim() else { break };
            if claim.unreadable > 0 {
                self.stats.drop_spans(claim.unreadable, format!("{}: unreadable lines in the spool", self.name));
            }
            let mut batch = Batch::new();
            batch.from_spool = true;
            for t in &claim.traces {
                encode_into(&mut batch, Arc::clone(t), self.mode());
            }
            let was_down = self.down;
            self.down = false;
            if self.send_batch(batch, deadline).await {
                spool.done(claim);
            } else {
                spool.release(claim);
                self.down = true;
                if !was_down {
                    self.next_probe = Instant::now() + self.opts.probe_interval;
                }
                break;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn legacy_random() -> u64 {
    let id = legacy::envelope_id();
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&id, &mut h);
    std::hash::Hasher::finish(&h)
}
