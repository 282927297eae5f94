//! The HTTP delivery core shared by the Langfuse and OTLP exporters: a bounded queue, batching
//! by span count, age and bytes, retries with backoff and jitter, and the on-disk spool.
//!
//! The worker runs on its own thread and runtime, so neither encoding nor network waits ever
//! touch a run's threads or the tracer's.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use opentelemetry_proto::tonic::resource::v1::Resource;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::privacy::Privacy;
use super::spool::{spans_of, Frame, Log};
use super::{legacy, otlp, ExportReport, Exporter};
use crate::trace::TraceRecord;

/// Batching, retry and spool settings shared by the HTTP exporters.
///
/// Start from the defaults and change what you need, field by field or with the setters of
/// the same names:
///
/// ```
/// use std::time::Duration;
/// use flowtrace::export::DeliveryOptions;
/// let o = DeliveryOptions::default().max_attempts(3).max_batch_age(Duration::from_millis(200));
/// assert_eq!((o.max_attempts, o.max_batch_spans), (3, 512));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeliveryOptions {
    /// Send when a batch holds this many spans (default 512, as the OpenTelemetry SDKs).
    pub max_batch_spans: usize,
    /// Send when the oldest trace of a batch waited this long (default 1 s).
    pub max_batch_age: Duration,
    /// At most this many bytes in one request body (default 2.5 MB).
    pub max_request_bytes: usize,
    /// Traces held in memory (queued, batching or in flight) before new ones go to the
    /// spool's log only, to be read back when there is room (default 4,096).
    pub queue_capacity: usize,
    /// Requests in flight at once (default 4).
    pub max_in_flight: usize,
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
    /// Threads that scrub and encode traces, the export worker's own among them (default: the
    /// machine's cores, at most 4). They are the exporter's threads, never a run's or the
    /// tracer's; they sleep while there is nothing to encode and stop with the exporter. `1`
    /// (or `0`) encodes on the worker's thread alone.
    pub encoder_threads: usize,
}

/// The default of [`DeliveryOptions::encoder_threads`]: a thread per core, at most four (past
/// that the request side, one thread, is the bound).
fn default_encoder_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4)
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            max_batch_spans: 512,
            max_batch_age: Duration::from_secs(1),
            max_request_bytes: 2_500_000,
            queue_capacity: 4096,
            max_in_flight: 4,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            spool_dir: None,
            spool_max_bytes: 256 << 20,
            probe_interval: Duration::from_secs(5),
            encoder_threads: default_encoder_threads(),
        }
    }
}

/// Setters named after the fields, so options chain: `DeliveryOptions::default().max_attempts(3)`.
macro_rules! setters {
    ($($field:ident: $ty:ty),* $(,)?) => {
        impl DeliveryOptions {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    max_batch_spans: usize,
    max_batch_age: Duration,
    max_request_bytes: usize,
    queue_capacity: usize,
    max_in_flight: usize,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    request_timeout: Duration,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: u64,
    probe_interval: Duration,
    encoder_threads: usize,
}

/// How OTLP request bodies are compressed (`OTEL_EXPORTER_OTLP_COMPRESSION`).
///
/// Only OTLP requests are ever compressed: OTLP/HTTP receivers, Langfuse's among them, take
/// `Content-Encoding: gzip`, while Langfuse's legacy batch route reads its body as plain JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Bodies sent as they are.
    None,
    /// Bodies gzipped (fastest level: the spans' repeated keys and JSON shrink several
    /// times over at little CPU cost).
    Gzip,
}

impl Compression {
    /// Parses `gzip` and `none`, any case, as the OpenTelemetry variables take them.
    pub fn parse(variable: &str, v: &str) -> Result<Compression, crate::error::ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "gzip" => Ok(Compression::Gzip),
            "none" | "" => Ok(Compression::None),
            _ => Err(crate::error::ConfigError::new(variable, v, "expected gzip or none")),
        }
    }
}

/// An HTTP destination: URL, headers and optional Basic credentials.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub basic: Option<(String, String)>,
    /// Whether request bodies are gzipped.
    pub gzip: bool,
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
    /// The Langfuse environment put on every trace and observation.
    pub environment: Option<String>,
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
            environment: None,
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

enum Payload {
    /// An encoded `Span` message (a range of its trace's buffer).
    Otlp(otlp::SpanBytes),
    Legacy {
        id: String,
        json: Vec<u8>,
    },
}

/// Where a trace in memory came from, for its log record and for counting.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// Its record in the log, when it has one.
    seq: Option<u64>,
    /// Read back from the log (counted as `from_spool` when delivered).
    from_log: bool,
    /// The deadline-spill epoch it entered memory in: a spill since counts it as spooled.
    epoch: u64,
}

struct Batch {
    traces: Vec<Arc<TraceRecord>>,
    meta: Vec<Meta>,
    units: Vec<Unit>,
    bytes: usize,
    weight: u64,
    started: Option<Instant>,
}

impl Batch {
    fn new() -> Self {
        Batch { traces: Vec::new(), meta: Vec::new(), units: Vec::new(), bytes: 0, weight: 0, started: None }
    }
    fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }
}

/// A trace's units for one request mode, its trace index 0 (set when it joins a batch): the
/// weights add up to its span count plus one for the trace itself.
fn encode_units(t: &TraceRecord, mode: u8, environment: Option<&str>) -> Vec<Unit> {
    // A unit per span, and one for a made-up root (OTLP) or the trace-create (legacy).
    let units = if mode == MODE_LEGACY {
        let mut events = Vec::with_capacity(t.spans.len() + 1);
        legacy::encode_trace_bytes_in(t, environment, &mut events);
        legacy_units(events)
    } else {
        let mut units = Vec::with_capacity(t.spans.len() + 1);
        otlp::encode_trace_shared(t, environment, |s| units.push(otlp_unit(s)));
        units
    };
    weigh(t, units)
}

/// An OTLP span as a unit, its trace index 0.
fn otlp_unit(s: otlp::SpanBytes) -> Unit {
    // The span's field header in the request is at most 4 bytes.
    let size = s.len() + 4;
    Unit { trace: 0, weight: 1, size, payload: Payload::Otlp(s) }
}

/// The trace's units for `mode` (OTLP or legacy), its inputs and outputs checked by the
/// privacy rules as they are written, when nothing else in it needs the rules' work: `None`
/// when something does (the trace then goes through [`Privacy::apply_shared`] and is encoded
/// again), or when the rules cannot check that way (a mask hook, a generation node whose calls
/// are folded into it). What this gives is what scrubbing first and encoding after gives: the
/// same trace, shared and unchanged, and the same units; the values are walked once, not twice.
fn encode_checked(t: &TraceRecord, privacy: &Privacy, environment: Option<&str>, mode: u8) -> Option<Vec<Unit>> {
    if privacy.masks() {
        return None;
    }
    // Which values each protocol writes differs (legacy's trace-create always carries the
    // trace's), so each says which the rules need not look at here.
    let dirty = if mode == MODE_LEGACY {
        let (trace_values, span_values) = legacy::watched_values(t)?;
        privacy.dirty_except(t, trace_values, span_values)
    } else {
        let (trace_values, span_values) = otlp::watched_values(t)?;
        privacy.dirty_except(t, trace_values, span_values)
    };
    if dirty {
        return None;
    }
    privacy
        .with_scan(|scan| {
            let units = if mode == MODE_LEGACY {
                let mut events = Vec::with_capacity(t.spans.len() + 1);
                legacy::encode_trace_bytes_watched(t, environment, scan, &mut events);
                legacy_units(events)
            } else {
                let mut units = Vec::with_capacity(t.spans.len() + 1);
                otlp::encode_trace_watched(t, environment, scan, |s| units.push(otlp_unit(s)));
                units
            };
            (!scan.dirty()).then(|| weigh(t, units))
        })
        .flatten()
}

/// Legacy events as units, their trace index 0.
fn legacy_units(events: Vec<(String, Vec<u8>)>) -> Vec<Unit> {
    events
        .into_iter()
        .map(|(id, json)| Unit { trace: 0, weight: 1, size: json.len() + 1, payload: Payload::Legacy { id, json } })
        .collect()
}

/// The units' weights adding up to the trace's span count plus one for the trace itself.
fn weigh(t: &TraceRecord, mut units: Vec<Unit>) -> Vec<Unit> {
    let total = spans_of(t);
    let n = units.len() as u64;
    if let Some(first) = units.first_mut() {
        first.weight += total.saturating_sub(n);
    }
    units
}

impl Batch {
    /// Adds a trace and its units (from [`encode_units`]).
    fn push(&mut self, t: Arc<TraceRecord>, mut units: Vec<Unit>, meta: Meta) {
        let idx = self.traces.len();
        for u in &mut units {
            u.trace = idx;
            self.bytes += u.size;
        }
        self.weight += spans_of(&t);
        self.units.append(&mut units);
        self.traces.push(t);
        self.meta.push(meta);
        self.started.get_or_insert_with(Instant::now);
    }
}

fn encode_into(batch: &mut Batch, t: Arc<TraceRecord>, mode: u8, environment: Option<&str>, meta: Meta) {
    let units = encode_units(&t, mode, environment);
    batch.push(t, units, meta);
}

/// A trace made ready off the worker's bookkeeping: scrubbed, its log record and its wire
/// units encoded. The worker appends and batches these in the order the traces came.
struct Prepared {
    trace: Arc<TraceRecord>,
    /// Its log record, when there is a log.
    frame: Option<Frame>,
    units: Vec<Unit>,
}

/// What preparing a trace needs; shared by the worker and its encoder threads.
struct Prep {
    privacy: Privacy,
    environment: Option<String>,
    /// Whether there is a log to encode records for.
    spool: bool,
}

impl Prep {
    /// Scrubs `t` (before anything is encoded: nothing secret reaches the log or the wire),
    /// then encodes its record and its units. `None` if a hook or encoder panicked.
    fn prepare(&self, t: Arc<TraceRecord>, job: Job, frame: &mut Frame) -> Option<Prepared> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The common case, a new trace for OTLP with nothing to scrub: checked as it is
            // encoded (one walk over its values), and shared as it is.
            let checked = match job.mode {
                Some(mode @ (MODE_OTLP | MODE_LEGACY)) if job.fresh => {
                    encode_checked(&t, &self.privacy, self.environment.as_deref(), mode)
                }
                _ => None,
            };
            if let Some(units) = checked {
                let frame = self.spool.then(|| frame.encode_detached(&t));
                return Prepared { trace: t, frame, units };
            }
            let (trace, frame) = if job.fresh {
                let trace = self.privacy.apply_shared(t);
                let frame = self.spool.then(|| frame.encode_detached(&trace));
                (trace, frame)
            } else {
                (t, None)
            };
            let units = match job.mode {
                Some(mode) => encode_units(&trace, mode, self.environment.as_deref()),
                None => Vec::new(),
            };
            Prepared { trace, frame, units }
        }))
        .ok()
    }
}

/// What a round asks for.
#[derive(Debug, Clone, Copy, Default)]
struct Job {
    /// The wire units' encoding; `None` for none (traces for the log alone).
    mode: Option<u8>,
    /// New traces, scrubbed and given a log record; not so those read back from the log,
    /// which were scrubbed before they were written.
    fresh: bool,
}

/// One round of preparation handed to the encoder threads.
#[derive(Default)]
struct Round {
    /// Traces not yet taken, by their place in the round.
    jobs: VecDeque<(usize, Arc<TraceRecord>)>,
    job: Job,
    results: Vec<Option<Option<Prepared>>>,
    /// Traces taken or waiting, not yet prepared.
    pending: usize,
    stop: bool,
    /// Which round this is: an encoder thread's result for an earlier one (a trace the worker
    /// prepared itself meanwhile) is dropped.
    id: u64,
    /// Traces an encoder thread is preparing, by their place in the round.
    busy: Vec<(usize, Arc<TraceRecord>)>,
}

/// How long the worker, done with a round's traces, waits at least for the encoder threads'
/// last ones before it prepares them itself (and at least four times what a trace took it in
/// the round): longer than a trace takes, shorter than the time slice a thread waits when
/// another process holds its core. Whichever is first counts.
const TAKE_BACK_AFTER: std::time::Duration = std::time::Duration::from_micros(200);

struct PoolShared {
    prep: Prep,
    round: Mutex<Round>,
    /// Wakes the encoder threads: a round began, or the exporter stops.
    work: parking_lot::Condvar,
    /// Wakes the worker: the round's last trace is prepared.
    done: parking_lot::Condvar,
}

/// The export worker and its encoder threads, which prepare a round of traces together (the
/// worker takes its share too, and waits for the rest: every trace of a round is appended
/// and batched, in order, before the worker does anything else, so a spill never misses a
/// trace in the middle of encoding). A trace an encoder thread is slow with (its core taken
/// by another process) the worker prepares too, so a round does not wait for a thread that
/// is not running.
struct Pool {
    shared: Arc<PoolShared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The worker's own frame.
    frame: std::cell::RefCell<Frame>,
}

impl Pool {
    fn start(name: &str, prep: Prep, threads: usize) -> Pool {
        let shared = Arc::new(PoolShared {
            prep,
            round: Mutex::new(Round::default()),
            work: parking_lot::Condvar::new(),
            done: parking_lot::Condvar::new(),
        });
        let mut handles = Vec::new();
        for i in 1..threads.max(1) {
            let sh = Arc::clone(&shared);
            let spawned =
                std::thread::Builder::new().name(format!("flowtrace-encode-{name}-{i}")).spawn(move || sh.serve());
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Fewer threads encode: slower, not wrong.
                    tracing::warn!(target: "flowtrace::export", "{name}: cannot start an encoder thread: {e}");
                    break;
                }
            }
        }
        Pool { shared, threads: Mutex::new(handles), frame: std::cell::RefCell::default() }
    }

    /// Prepares `traces`, the results in the same order.
    fn prepare(&self, traces: Vec<Arc<TraceRecord>>, job: Job) -> Vec<Option<Prepared>> {
        let sh = &*self.shared;
        let helpers = self.threads.lock().len();
        if traces.len() < 2 || helpers == 0 {
            let mut frame = self.frame.borrow_mut();
            return traces.into_iter().map(|t| sh.prep.prepare(t, job, &mut frame)).collect();
        }
        let n = traces.len();
        {
            let mut r = sh.round.lock();
            r.jobs.extend(traces.into_iter().enumerate());
            r.job = job;
            r.results.clear();
            r.results.resize_with(n, || None);
            r.pending = n;
        }
        if helpers >= n - 1 {
            sh.work.notify_all();
        } else {
            for _ in 0..helpers {
                sh.work.notify_one();
            }
        }
        let mut frame = self.frame.borrow_mut();
        let mut r = sh.round.lock();
        let (started, mut mine) = (std::time::Instant::now(), 0u32);
        while let Some((i, t)) = r.jobs.pop_front() {
            let p = parking_lot::MutexGuard::unlocked(&mut r, || sh.prep.prepare(t, job, &mut frame));
            r.results[i] = Some(p);
            r.pending -= 1;
            mine += 1;
        }
        // A trace the threads are on for much longer than one took here is taken back.
        let patience = TAKE_BACK_AFTER.max(started.elapsed() * 4 / mine.max(1));
        while r.pending > 0 {
            if !sh.done.wait_for(&mut r, patience).timed_out() || r.pending == 0 {
                continue;
            }
            // Preparing is deterministic (legacy envelope ids aside): the same trace prepared
            // twice gives the same units and record, and the first result is kept.
            let busy = r.busy.iter().find(|(i, _)| r.results[*i].is_none()).map(|(i, t)| (*i, Arc::clone(t)));
            if let Some((i, t)) = busy {
                let p = parking_lot::MutexGuard::unlocked(&mut r, || sh.prep.prepare(t, job, &mut frame));
                if r.results[i].is_none() {
                    r.results[i] = Some(p);
                    r.pending -= 1;
                }
            }
        }
        r.id += 1;
        r.busy.clear();
        let out = r.results.drain(..).map(Option::flatten).collect();
        drop(r);
        frame.trim();
        out
    }

    /// Stops the encoder threads and waits for them.
    fn stop(&self) {
        self.shared.round.lock().stop = true;
        self.shared.work.notify_all();
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PoolShared {
    /// An encoder thread: takes traces of the current round until it stops.
    fn serve(&self) {
        let mut frame = Frame::default();
        let mut r = self.round.lock();
        loop {
            if r.stop {
                return;
            }
            match r.jobs.pop_front() {
                Some((i, t)) => {
                    let (job, id) = (r.job, r.id);
                    r.busy.push((i, Arc::clone(&t)));
                    let p = parking_lot::MutexGuard::unlocked(&mut r, || self.prep.prepare(t, job, &mut frame));
                    // Unless the worker prepared it meanwhile (and perhaps moved on).
                    if r.id == id {
                        r.busy.retain(|(j, _)| *j != i);
                        if r.results[i].is_none() {
                            r.results[i] = Some(p);
                            r.pending -= 1;
                            if r.pending == 0 {
                                self.done.notify_one();
                            }
                        }
                    }
                }
                None => {
                    frame.trim();
                    self.work.wait(&mut r);
                }
            }
        }
    }
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
    /// Spans in the queue to the worker (not counted in reports: they are pending).
    queued: AtomicU64,
    /// Traces put in the queue to the worker, ever: a flush covers those sent before it.
    sent: AtomicU64,
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

/// A flush or shutdown: its deadline, how many traces had been queued when it was asked
/// for (those it waits for), and where to answer.
enum Control {
    Flush(Instant, u64, oneshot::Sender<()>),
    Shutdown(Instant, u64, oneshot::Sender<()>),
}

/// The exporter handle: queues traces for the worker thread.
pub(crate) struct HttpExporter {
    name: String,
    tx: mpsc::Sender<Arc<TraceRecord>>,
    ctl: mpsc::UnboundedSender<Control>,
    stats: Arc<Stats>,
    privacy: Privacy,
    log: Option<Arc<Mutex<Log>>>,
    closed: AtomicBool,
}

impl fmt::Debug for HttpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExporter").field("name", &self.name).finish_non_exhaustive()
    }
}

/// How long past a deadline a request already in flight may take to say how it went (the
/// calls return by their deadline plus at most a second).
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(800);
/// How often appends and the cursor are made durable (`fsync`).
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

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
        let log = match &opts.spool_dir {
            Some(dir) => match Log::open(dir, opts.spool_max_bytes) {
                Ok(s) => Some(Arc::new(Mutex::new(s))),
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
        let target_environment = target.environment.clone();
        let opts_threads = opts.encoder_threads;
        let worker = Worker {
            name: name.to_owned(),
            head: otlp::RequestHead::new(&target.resource),
            target,
            opts,
            client,
            stats: Arc::clone(&stats),
            log: log.clone(),
            privacy: privacy.clone(),
            down: Cell::new(false),
            next_probe: Cell::new(Instant::now()),
            last_failure: Cell::new(None),
            epoch: Cell::new(0),
            frame: std::cell::RefCell::default(),
            taken: Cell::new(0),
            spare: std::cell::RefCell::default(),
            pool: Pool::start(
                name,
                Prep { privacy: privacy.clone(), environment: target_environment, spool: log.is_some() },
                opts_threads,
            ),
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
        Ok(HttpExporter { name: name.to_owned(), tx, ctl, stats, privacy, log, closed: AtomicBool::new(false) })
    }

    fn wait(&self, timeout: Duration, shutdown: bool) -> BoxFuture<'_, ExportReport> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let (done, wait) = oneshot::channel();
            let sent = self.stats.sent.load(Ordering::Acquire);
            let msg =
                if shutdown { Control::Shutdown(deadline, sent, done) } else { Control::Flush(deadline, sent, done) };
            if shutdown {
                self.closed.store(true, Ordering::Relaxed);
            }
            if self.ctl.send(msg).is_ok() {
                // The worker answers by the deadline (plus the in-flight grace); the extra is
                // for a worker thread that has died.
                let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), wait).await;
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
        // With a log, traces beyond the queue's span bound go straight to it (memory is
        // bounded by spans: a long run's parts are large records); without one the queue is
        // bounded by its capacity in traces alone, as it always was.
        let over = self.stats.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_SPANS;
        let trace = if self.log.is_some() && over {
            trace
        } else {
            self.stats.queued.fetch_add(n, Ordering::Relaxed);
            match self.tx.try_send(trace) {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Release);
                    return;
                }
                Err(e) => {
                    self.stats.queued.fetch_sub(n, Ordering::Relaxed);
                    match e {
                        mpsc::error::TrySendError::Full(t) => t,
                        mpsc::error::TrySendError::Closed(_) => {
                            self.stats.drop_spans(n, format!("{}: the export worker stopped", self.name));
                            return;
                        }
                    }
                }
            }
        };
        // The queue is full: straight into the log (scrubbed like everything that leaves);
        // the worker reads it back when it has room.
        match &self.log {
            Some(log) => {
                let t = self.privacy.apply_shared(trace);
                // Encoded before the lock is taken: the worker and other runs append too.
                let appended = RUN_FRAME.with(|f| f.borrow_mut().append_to(log, &t, true));
                match appended {
                    Ok(_) => {
                        self.stats.spooled.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => self.stats.drop_spans(n, format!("{}: queue full and {e}", self.name)),
                }
            }
            None => self.stats.drop_spans(n, format!("{}: queue full and no spool configured", self.name)),
        }
    }

    fn takes_parts(&self) -> bool {
        // Parts are records like any other here: spooled, batched and encoded alike (OTLP
        // spans and legacy observations stand on their own; a part's trace-create carries
        // the trace's fields and no input or output, which Langfuse's upsert leaves alone).
        true
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.wait(timeout, false)
    }

    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.wait(timeout, true)
    }
}

thread_local! {
    /// The frame a run's thread encodes a trace into when the queue is full.
    static RUN_FRAME: std::cell::RefCell<Frame> = std::cell::RefCell::default();
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
    /// The resource and scope every OTLP request carries, encoded once.
    head: otlp::RequestHead,
    target: Target,
    opts: DeliveryOptions,
    client: reqwest::Client,
    stats: Arc<Stats>,
    log: Option<Arc<Mutex<Log>>>,
    privacy: Privacy,
    /// The backend is considered down: new traces go to the log only until a probe works.
    down: Cell<bool>,
    next_probe: Cell<Instant>,
    /// When a request was last given up on.
    last_failure: Cell<Option<Instant>>,
    /// Bumped at every deadline spill: traces that entered memory before it are counted as
    /// spooled, and as `from_spool` when delivered after all.
    epoch: Cell<u64>,
    /// The frame traces are encoded into before the log's lock is taken.
    frame: std::cell::RefCell<Frame>,
    /// The threads that scrub and encode traces, this one among them.
    pool: Pool,
    /// Traces taken from the queue, ever (see [`Stats::sent`]).
    taken: Cell<u64>,
    /// Delivered records kept while the log has records to read back, which are decoded
    /// into their memory (see [`Log::read_reusing`]).
    spare: std::cell::RefCell<Vec<TraceRecord>>,
}

/// The most traces prepared in one round: a round holds up the worker's requests, so it is
/// about one batch (`max_batch_spans`) and never more than this.
const MAX_ROUND_TRACES: usize = 256;

/// What became of a batch: the traces (by index) with undelivered spans and their weight.
struct Settled {
    batch: Batch,
    failed: Vec<(usize, u64)>,
    why: String,
}

/// A caller of flush or shutdown, waiting.
struct Waiter {
    deadline: Instant,
    /// The traces queued before the call: the worker has taken that many before answering.
    mark: u64,
    /// Whether the batch was cut for it (once its traces were taken).
    cut: bool,
    since: Instant,
    done: oneshot::Sender<()>,
    stop: bool,
}

/// Answers a flush caller now, or a shutdown caller once the worker has stopped.
fn answer(w: &mut Waiter, stopping: &mut Vec<oneshot::Sender<()>>) {
    let (tx, _) = oneshot::channel();
    let done = std::mem::replace(&mut w.done, tx);
    if w.stop {
        stopping.push(done);
    } else {
        let _ = done.send(());
    }
}

/// What the worker holds in memory: traces batching, batches ready, requests in flight.
#[derive(Default)]
struct Memory {
    traces: usize,
    /// Spans of those traces: a streamed run's parts are large records, so memory is bounded
    /// by spans as well as by traces.
    spans: u64,
    seqs: std::collections::HashSet<u64>,
}

/// The most spans the worker holds in memory (batching, ready or in flight; an encoded OTLP
/// span with its trace's context costs about 3 KB, so some 50 MB); past it new traces go to
/// the log only, read back when there is room.
const MAX_MEMORY_SPANS: u64 = 16_384;
/// The most spans waiting in the queue between the tracer and the worker; past it an exporter
/// with a spool appends straight to its log (read back when the worker has room).
const MAX_QUEUED_SPANS: u64 = 16_384;

impl Memory {
    fn has_room(&self, cap: usize) -> bool {
        self.traces < cap && self.spans < MAX_MEMORY_SPANS
    }
}

/// How many of a round's traces, of `spans` spans each and in order, an exporter with a log
/// takes into memory (the rest go to the log alone, as [`Worker::admit`] decides trace by
/// trace): as many as memory has room for; none while the backend is down (`down`) or with
/// no room at all (`cap` 0: a spill, stopping).
fn fitting(mem: &Memory, cap: usize, down: bool, spans: &[u64]) -> usize {
    if down {
        return 0;
    }
    let mut room = Memory { traces: mem.traces, spans: mem.spans, seqs: Default::default() };
    let mut fit = 0;
    for n in spans {
        if !room.has_room(cap) {
            break;
        }
        room.traces += 1;
        room.spans += n;
        fit += 1;
    }
    fit
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Arc<TraceRecord>>, mut ctl: mpsc::UnboundedReceiver<Control>) {
        let mut batch = Batch::new();
        let mut ready: VecDeque<Batch> = VecDeque::new();
        let mut inflight = FuturesUnordered::new();
        let mut mem = Memory::default();
        let mut waiters: Vec<Waiter> = Vec::new();
        // Shutdown callers, answered once the log is closed.
        let mut stopping: Vec<oneshot::Sender<()>> = Vec::new();
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        let cap = self.opts.queue_capacity.max(1);
        let max_in_flight = self.opts.max_in_flight.max(1);
        loop {
            // Whatever the log holds beyond memory (an earlier process's traces at start-up,
            // overflow, failures) is read back while there is room and the backend takes it,
            // and nothing waits in the queue. Queued traces go first: one walk checks and
            // encodes a new trace, where one read back is decoded and encoded again, and
            // every moment the queue is over its bound a caller (the tracer, or a run that
            // bypasses it) writes another trace to the log on its own thread.
            if !self.down.get() && ready.is_empty() && mem.has_room(cap) && rx.is_empty() {
                self.refill(&mut batch, &mut ready, &mut mem, cap);
            }
            // Once a caller's traces are all taken, the batch goes without waiting for its age
            // (once per caller, as when it called).
            let taken = self.taken.get();
            let mut cut = false;
            for w in waiters.iter_mut().filter(|w| !w.cut && w.mark <= taken) {
                w.cut = true;
                cut = true;
            }
            if cut && !batch.is_empty() {
                ready.push_back(std::mem::replace(&mut batch, Batch::new()));
            }
            while inflight.len() < max_in_flight {
                let Some(b) = ready.pop_front() else { break };
                inflight.push(self.send_batch(b));
            }
            // Callers of flush whose traces are all taken and settled (or the backend is down).
            let idle = batch.is_empty() && ready.is_empty() && inflight.is_empty();
            let unread = self.log.as_ref().is_some_and(|l| l.lock().has_unread());
            if idle && !waiters.is_empty() {
                // What a flush settled is durable before the caller hears of it.
                self.sync_log();
            }
            waiters.retain_mut(|w| {
                let gave_up = self.last_failure.get().is_some_and(|f| f >= w.since);
                let settled = idle && w.mark <= taken && (!unread || gave_up);
                if settled {
                    answer(w, &mut stopping);
                }
                !settled
            });
            if !stopping.is_empty() {
                break;
            }
            let due = waiters.iter().map(|w| w.deadline).min();
            let spill_at = due.map(|d| if inflight.is_empty() { d } else { d + IN_FLIGHT_GRACE });
            let age_deadline = batch.started.map(|s| s + self.opts.max_batch_age);
            let probe = self.log.is_some() && self.down.get();
            tokio::select! {
                biased;
                c = ctl.recv() => {
                    let Some(c) = c else { break };
                    let (deadline, mark, done, stop) = match c {
                        Control::Flush(d, m, done) => (d, m, done, false),
                        Control::Shutdown(d, m, done) => (d, m, done, true),
                    };
                    // Everything queued so far is part of this flush: taken round by round
                    // below, between requests (not all at once here, which would hold the
                    // requests up until the last trace is encoded).
                    if self.down.get() {
                        self.next_probe.set(Instant::now());
                    }
                    waiters.push(Waiter { deadline, mark, cut: false, since: Instant::now(), done, stop });
                }
                Some(s) = inflight.next(), if !inflight.is_empty() => self.settle(s, &mut mem),
                t = rx.recv(), if self.log.is_some() || mem.has_room(cap) => match t {
                    Some(t) => {
                        // Without a log, memory's bound holds the round too.
                        let room = if self.log.is_some() { usize::MAX } else { cap.saturating_sub(mem.traces) };
                        let round = self.take_round(&mut rx, Some(t), room);
                        self.add_all(&mut batch, &mut ready, &mut mem, round, cap);
                        if !inflight.is_empty() {
                            // The requests' connections are tasks of this runtime: they
                            // move on between rounds, so the backend works while we encode.
                            tokio::task::yield_now().await;
                        }
                    }
                    None => break,
                },
                _ = sleep_until_opt(age_deadline) => {
                    ready.push_back(std::mem::replace(&mut batch, Batch::new()));
                }
                _ = sleep_until_opt(spill_at) => {
                    // A deadline passed: what is not delivered is in the log before the caller
                    // gets its answer (counted as spooled), and the log is made durable.
                    self.add_queued(&mut rx, &mut batch, &mut ready, &mut mem, 0);
                    self.spill();
                    let now = Instant::now();
                    waiters.retain_mut(|w| {
                        let due = w.deadline <= now;
                        if due {
                            answer(w, &mut stopping);
                        }
                        !due
                    });
                    if !stopping.is_empty() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(self.next_probe.get()), if probe => {
                    // Try the backend again with what the log holds.
                    self.next_probe.set(Instant::now() + self.opts.probe_interval);
                    self.down.set(false);
                }
                _ = tick.tick(), if self.log.is_some() => {
                    ticks += 1;
                    self.sync_log();
                    // Folders other processes left behind are taken over while running.
                    if ticks.is_multiple_of(25) {
                        if let Some(log) = &self.log {
                            log.lock().adopt();
                        }
                    }
                }
            }
        }
        // Stopping: what is still queued goes to the log.
        rx.close();
        self.add_queued(&mut rx, &mut batch, &mut ready, &mut mem, 0);
        drop(inflight);
        self.spill();
        // Nothing is left to encode: the encoder threads stop with the worker.
        self.pool.stop();
        if let Some(log) = &self.log {
            // The folder is free for the next process (or exporter) from here on.
            if let Err(e) = log.lock().close() {
                tracing::warn!(target: "flowtrace::export", "{}: cannot sync the spool: {e}", self.name);
            }
        }
        for w in waiters.drain(..) {
            let _ = w.done.send(());
        }
        for done in stopping {
            let _ = done.send(());
        }
    }

    fn mode(&self) -> u8 {
        self.target.mode.load(Ordering::Relaxed)
    }

    fn sync_log(&self) {
        if let Some(log) = &self.log {
            let mut log = log.lock();
            if let Err(e) = log.sync() {
                tracing::warn!(target: "flowtrace::export", "{}: cannot sync the spool {}: {e}", self.name, log.dir().display());
            }
        }
    }

    /// `first` and what follows it in the queue, up to a round: about a batch of spans, at most
    /// `room` traces.
    fn take_round(
        &self,
        rx: &mut mpsc::Receiver<Arc<TraceRecord>>,
        first: Option<Arc<TraceRecord>>,
        room: usize,
    ) -> Vec<Arc<TraceRecord>> {
        let max = room.clamp(1, MAX_ROUND_TRACES);
        let mut round = Vec::new();
        let mut spans = 0;
        if let Some(t) = first {
            spans += spans_of(&t);
            round.push(t);
        }
        while round.len() < max && spans < self.opts.max_batch_spans.max(1) as u64 {
            let Ok(t) = rx.try_recv() else { break };
            spans += spans_of(&t);
            round.push(t);
        }
        self.taken.set(self.taken.get() + round.len() as u64);
        round
    }

    /// Takes everything queued, round by round.
    fn add_queued(
        &self,
        rx: &mut mpsc::Receiver<Arc<TraceRecord>>,
        batch: &mut Batch,
        ready: &mut VecDeque<Batch>,
        mem: &mut Memory,
        cap: usize,
    ) {
        loop {
            let round = self.take_round(rx, None, usize::MAX);
            if round.is_empty() {
                return;
            }
            self.add_all(batch, ready, mem, round, cap);
        }
    }

    /// Takes traces from the queue: scrubbed and encoded on the encoder threads, then each
    /// admitted in the order they came.
    fn add_all(
        &self,
        batch: &mut Batch,
        ready: &mut VecDeque<Batch>,
        mem: &mut Memory,
        traces: Vec<Arc<TraceRecord>>,
        cap: usize,
    ) {
        let spans: Vec<u64> = traces.iter().map(|t| spans_of(t)).collect();
        for n in &spans {
            self.stats.queued.fetch_sub(*n, Ordering::Relaxed);
        }
        // With a log, the traces past the room memory has (all of them when there is no room
        // at all: a spill, stopping) go to the log alone: their wire units would not be used.
        let fit = if self.log.is_some() { fitting(mem, cap, self.down.get(), &spans) } else { traces.len() };
        let mut prepared = Vec::with_capacity(traces.len());
        let mut traces = traces;
        let rest = traces.split_off(fit);
        if !traces.is_empty() {
            prepared.extend(self.pool.prepare(traces, Job { mode: Some(self.mode()), fresh: true }));
        }
        if !rest.is_empty() {
            prepared.extend(self.pool.prepare(rest, Job { mode: None, fresh: true }));
        }
        for (p, n) in prepared.into_iter().zip(spans) {
            match p {
                Some(p) => self.admit(batch, ready, mem, p, n, cap),
                None => self.stats.drop_spans(n, format!("{}: the privacy hook or an encoder panicked", self.name)),
            }
        }
    }

    /// Takes a prepared trace of `n` spans: into the log, and into memory while there is room
    /// (and the backend is up); otherwise the log alone, to be read back later.
    fn admit(&self, batch: &mut Batch, ready: &mut VecDeque<Batch>, mem: &mut Memory, p: Prepared, n: u64, cap: usize) {
        let Prepared { trace: t, frame, mut units } = p;
        let room = mem.has_room(cap) && !(self.down.get() && self.log.is_some());
        let mut seq = None;
        if let Some(log) = &self.log {
            let appended = match frame {
                Some(mut f) => {
                    let mut log = log.lock();
                    if room {
                        log.append_frame(&mut f)
                    } else {
                        log.append_frame_unread(&mut f)
                    }
                }
                None => self.frame.borrow_mut().append_to(log, &t, !room),
            };
            match appended {
                Ok(s) if room => seq = Some(s),
                Ok(_) => {
                    self.stats.spooled.fetch_add(n, Ordering::Relaxed);
                    return;
                }
                // Full (or failing): the trace is still delivered from memory if there is room.
                Err(e) if room => {
                    tracing::warn!(target: "flowtrace::export", "{}: {e}; delivering from memory only", self.name);
                }
                Err(e) => {
                    self.stats.drop_spans(n, format!("{}: {e} (the disk cap is reached)", self.name));
                    return;
                }
            }
        }
        if let Some(s) = seq {
            mem.seqs.insert(s);
        }
        mem.traces += 1;
        mem.spans += n;
        if units.is_empty() {
            // Prepared for the log alone ([`fitting`] counts as this does: kept for safety).
            units = encode_units(&t, self.mode(), self.target.environment.as_deref());
        }
        batch.push(t, units, Meta { seq, from_log: false, epoch: self.epoch.get() });
        if batch.weight as usize >= self.opts.max_batch_spans || batch.bytes >= self.opts.max_request_bytes {
            ready.push_back(std::mem::replace(batch, Batch::new()));
        }
    }

    /// Reads traces back from the log into memory, up to the room there is.
    fn refill(&self, batch: &mut Batch, ready: &mut VecDeque<Batch>, mem: &mut Memory, cap: usize) {
        let Some(log) = &self.log else { return };
        let (records, bad) = {
            let mut log = log.lock();
            if !log.has_unread() {
                return;
            }
            let per_refill = self.per_refill();
            let want = (cap - mem.traces).min(per_refill);
            let spans = MAX_MEMORY_SPANS.saturating_sub(mem.spans).min(per_refill as u64);
            log.read_reusing(want, spans, |s| mem.seqs.contains(&s), &mut self.spare.borrow_mut())
        };
        if bad > 0 {
            self.stats.drop_spans(bad, format!("{}: unreadable records in the spool (traces, not spans)", self.name));
        }
        // Scrubbed before they were written: encoded alone, on the encoder threads.
        let mut seqs = Vec::with_capacity(records.len());
        let mut traces = Vec::with_capacity(records.len());
        for r in records {
            mem.seqs.insert(r.seq);
            mem.traces += 1;
            mem.spans += spans_of(&r.trace);
            seqs.push(r.seq);
            traces.push(Arc::new(r.trace));
        }
        let mode = self.mode();
        let prepared = self.pool.prepare(traces.clone(), Job { mode: Some(mode), fresh: false });
        for ((t, p), seq) in traces.into_iter().zip(prepared).zip(seqs) {
            let meta = Meta { seq: Some(seq), from_log: true, epoch: self.epoch.get() };
            match p {
                Some(p) => batch.push(p.trace, p.units, meta),
                // An encoder panicked on it: once more here, as before there were threads.
                None => encode_into(batch, t, mode, self.target.environment.as_deref(), meta),
            }
            if batch.weight as usize >= self.opts.max_batch_spans || batch.bytes >= self.opts.max_request_bytes {
                ready.push_back(std::mem::replace(batch, Batch::new()));
            }
        }
        if !batch.is_empty() {
            ready.push_back(std::mem::replace(batch, Batch::new()));
        }
    }

    /// Spans read back from the log at a time: enough for every request slot and one batch
    /// more. Reading on is cheap (the reader stays where it stopped), while records read
    /// ahead only hold memory.
    fn per_refill(&self) -> usize {
        self.opts.max_batch_spans.max(1) * (self.opts.max_in_flight.max(1) + 1)
    }

    /// Keeps the records of a settled batch that nothing else holds, for the next records read
    /// back from the log to be decoded into (while the log has some to read), up to a read's
    /// worth of spans; the rest are freed.
    fn keep_spare(&self, traces: Vec<Arc<TraceRecord>>, unread: bool) {
        let mut spare = self.spare.borrow_mut();
        if !unread {
            spare.clear();
            return;
        }
        let limit = self.per_refill();
        let mut held: usize = spare.iter().map(|t| t.spans.len()).sum();
        for t in traces {
            if held + t.spans.len() > limit {
                continue;
            }
            if let Ok(t) = Arc::try_unwrap(t) {
                held += t.spans.len();
                spare.push(t);
            }
        }
    }

    /// A deadline passed: everything in memory not delivered yet is in the log already (it
    /// was appended on arrival); count it as spooled and make the log durable.
    fn spill(&self) {
        let Some(log) = &self.log else { return };
        let s = &self.stats;
        let pending = s.accepted.load(Ordering::Relaxed).saturating_sub(
            s.delivered.load(Ordering::Relaxed) + s.spooled.load(Ordering::Relaxed) + s.dropped.load(Ordering::Relaxed),
        );
        s.spooled.fetch_add(pending, Ordering::Relaxed);
        self.epoch.set(self.epoch.get() + 1);
        let mut log = log.lock();
        if let Err(e) = log.sync() {
            s.reason(format!("{}: cannot sync the spool {}: {e}", self.name, log.dir().display()), 0);
        }
    }

    /// Books a finished batch: delivered traces are acknowledged in the log; failed ones stay
    /// there (read again later) or, without a log, are dropped.
    fn settle(&self, s: Settled, mem: &mut Memory) {
        let Settled { batch, failed, why } = s;
        let mut failed_w = vec![0u64; batch.traces.len()];
        for (i, w) in &failed {
            failed_w[*i] += w;
        }
        let mut log = self.log.as_ref().map(|l| l.lock());
        let mut spooled = 0;
        let mut rewind = false;
        for (i, m) in batch.meta.iter().enumerate() {
            mem.traces = mem.traces.saturating_sub(1);
            mem.spans = mem.spans.saturating_sub(spans_of(&batch.traces[i]));
            if let Some(seq) = m.seq {
                mem.seqs.remove(&seq);
            }
            let fw = failed_w[i];
            match (m.seq, log.as_mut()) {
                (Some(seq), Some(log)) if fw == 0 => log.ack(seq),
                (Some(_), Some(_)) => {
                    rewind = true;
                    if !m.from_log && m.epoch == self.epoch.get() {
                        spooled += fw;
                    }
                }
                _ if fw == 0 => {}
                _ => self.stats.drop_spans(fw, format!("{}: {why}, and no spool is configured", self.name)),
            }
        }
        if let Some(log) = log.as_mut() {
            if rewind {
                log.rewind();
                self.last_failure.set(Some(Instant::now()));
            }
            if spooled > 0 {
                self.stats.spooled.fetch_add(spooled, Ordering::Relaxed);
                tracing::info!(target: "flowtrace::export", "{}: {spooled} spans left in the spool {} ({why})", self.name, log.dir().display());
            }
        } else if !failed.is_empty() {
            self.last_failure.set(Some(Instant::now()));
        }
        let unread = log.as_ref().is_some_and(|l| l.has_unread());
        drop(log);
        self.keep_spare(batch.traces, unread);
    }

    /// Sends a batch, retrying; says which traces still have undelivered spans.
    async fn send_batch(&self, mut batch: Batch) -> Settled {
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
        let mut failed: Vec<(usize, u64)> = Vec::new();
        let mut why = String::new();
        let mut queue = VecDeque::from(chunks);
        while let Some(chunk) = queue.pop_front() {
            if self.down.get() && self.log.is_some() {
                failed.extend(chunk.iter().map(|u| (u.trace, u.weight)));
                why = "the backend is down".into();
                continue;
            }
            match self.deliver(chunk, &batch, None).await {
                Ok(()) => {}
                Err((units, reason, split)) => {
                    if let Some((a, b)) = split {
                        queue.push_front(b);
                        queue.push_front(a);
                        continue;
                    }
                    why = reason;
                    failed.extend(units.iter().map(|u| (u.trace, u.weight)));
                }
            }
        }
        Settled { batch, failed, why }
    }

    fn count_delivered(&self, batch: &Batch, u: &Unit) {
        let m = &batch.meta[u.trace];
        if m.from_log || m.epoch < self.epoch.get() {
            self.stats.from_spool.fetch_add(u.weight, Ordering::Relaxed);
        } else {
            self.stats.delivered.fetch_add(u.weight, Ordering::Relaxed);
        }
    }

    /// Delivers one chunk with retries. On failure returns the undelivered units, the reason,
    /// and for a 413 the two halves to try instead.
    #[allow(clippy::type_complexity)]
    async fn deliver(
        &self,
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
                    for u in &units {
                        self.count_delivered(batch, u);
                    }
                    self.down.set(false);
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
                    for (u, k) in units.into_iter().zip(keep) {
                        match k {
                            0 => self.count_delivered(batch, &u),
                            1 => rest.push(u),
                            _ => {}
                        }
                    }
                    self.down.set(false);
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
                        encode_into(
                            &mut b,
                            Arc::clone(&batch.traces[i]),
                            MODE_LEGACY,
                            self.target.environment.as_deref(),
                            batch.meta[i],
                        );
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
                    self.down.set(true);
                    self.next_probe.set(Instant::now() + self.opts.probe_interval);
                    return Err((units, format!("authentication failed: {msg}"), None));
                }
            };
            let wait = after.unwrap_or_else(|| self.backoff(attempt)).min(self.opts.max_backoff);
            let past_deadline = deadline.is_some_and(|d| Instant::now() + wait > d);
            if attempt >= self.opts.max_attempts || past_deadline {
                tracing::warn!(target: "flowtrace::export", "{}: giving up on a request after {attempt} attempts: {why}", self.name);
                self.down.set(true);
                self.next_probe.set(Instant::now() + self.opts.probe_interval);
                self.last_failure.set(Some(Instant::now()));
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
            let body = self.head.body(units.iter().filter_map(|u| match &u.payload {
                Payload::Otlp(s) => Some(s.as_slice()),
                Payload::Legacy { .. } => None,
            }));
            (ep, body, "application/x-protobuf")
        };
        let mut req = self.client.post(&ep.url).header("content-type", ctype);
        req = if ep.gzip {
            // Compressing costs about as much as encoding: it runs on a blocking thread, so
            // the worker goes on preparing the next round meanwhile.
            match tokio::task::spawn_blocking(move || {
                let z = gzip(&body);
                (body, z)
            })
            .await
            {
                Ok((_, Ok(z))) => req.header("content-encoding", "gzip").body(z),
                // Compressing into memory does not fail in practice; send it plain if it does.
                Ok((body, Err(_))) => req.body(body),
                Err(e) => return Sent::Retry { after: None, why: format!("compressing the request failed: {e}") },
            }
        } else {
            req.body(body)
        };
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
            _ => classify(status, retry_after, text),
        }
    }
}

/// `body` gzipped at the fastest level.
fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    // Traces compress about tenfold; a quarter is room enough to start with.
    let mut z = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    z.write_all(body)?;
    z.finish()
}

/// What a status (other than legacy's 207) means for the request: the retry classes.
/// `Retry-After` is honoured on 429 and 503 only; `why` is computed only when needed.
fn classify(status: u16, retry_after: Option<Duration>, why: impl FnOnce() -> String) -> Sent {
    match status {
        200..=299 => Sent::Ok,
        429 => Sent::Retry { after: retry_after, why: why() },
        401 | 403 => Sent::Auth(why()),
        404 => Sent::NotFound(why()),
        413 => Sent::TooLarge(why()),
        408 | 500..=599 => Sent::Retry { after: retry_after.filter(|_| status == 503), why: why() },
        _ => Sent::Rejected(why()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: u16, retry_after: Option<u64>) -> String {
        let after = retry_after.map(Duration::from_secs);
        match classify(status, after, || format!("{status}")) {
            Sent::Ok => "ok".into(),
            Sent::Retry { after, .. } => format!("retry after {:?}", after.map(|d| d.as_secs())),
            Sent::Partial { .. } => "partial".into(),
            Sent::TooLarge(_) => "too large".into(),
            Sent::NotFound(_) => "not found".into(),
            Sent::Auth(_) => "auth".into(),
            Sent::Rejected(_) => "rejected".into(),
        }
    }

    #[test]
    fn a_round_is_encoded_for_the_wire_only_as_far_as_memory_has_room() {
        let mem = |traces, spans| Memory { traces, spans, seqs: Default::default() };
        // Room for two more traces by count.
        assert_eq!(fitting(&mem(8, 0), 10, false, &[5, 5, 5]), 2);
        // By spans: the trace that crosses the bound still fits (as admit takes it), the
        // next does not.
        assert_eq!(fitting(&mem(0, MAX_MEMORY_SPANS - 10), 100, false, &[20, 1, 1]), 1);
        assert_eq!(fitting(&mem(0, 0), 100, false, &[1, 2, 3]), 3);
        // No room at all (a spill, stopping), a backend down, memory full: the log alone.
        assert_eq!(fitting(&mem(0, 0), 0, false, &[1]), 0);
        assert_eq!(fitting(&mem(0, 0), 100, true, &[1]), 0);
        assert_eq!(fitting(&mem(0, MAX_MEMORY_SPANS), 100, false, &[1]), 0);
        assert_eq!(fitting(&mem(0, 0), 100, false, &[]), 0);
    }

    #[test]
    fn statuses_fall_into_their_retry_classes() {
        assert_eq!(class(200, None), "ok");
        assert_eq!(class(204, None), "ok");
        assert_eq!(class(429, Some(3)), "retry after Some(3)");
        assert_eq!(class(503, Some(7)), "retry after Some(7)");
        // Retry-After counts only where the standard gives it meaning (429, 503).
        assert_eq!(class(500, Some(7)), "retry after None");
        assert_eq!(class(408, None), "retry after None");
        assert_eq!(class(401, None), "auth");
        assert_eq!(class(403, None), "auth");
        assert_eq!(class(404, None), "not found");
        assert_eq!(class(413, None), "too large");
        assert_eq!(class(400, None), "rejected");
        assert_eq!(class(422, None), "rejected");
    }

    #[test]
    fn the_reason_is_built_only_when_kept() {
        assert!(matches!(classify(200, None, || unreachable!("an accepted request keeps no reason")), Sent::Ok));
    }

    fn bytes(units: &[Unit]) -> Vec<Vec<u8>> {
        units
            .iter()
            .map(|u| match &u.payload {
                Payload::Otlp(s) => s.as_slice().to_vec(),
                Payload::Legacy { json, .. } => json.clone(),
            })
            .collect()
    }

    #[test]
    fn encoder_threads_prepare_a_round_in_order_as_one_thread_would_and_stop() {
        let traces = otlp::tests::traces();
        let prep = || Prep { privacy: Privacy::default(), environment: Some("test".into()), spool: true };
        let pool = Pool::start("test", prep(), 3);
        assert_eq!(pool.threads.lock().len(), 2);
        let round: Vec<Arc<TraceRecord>> = (0..40).map(|i| Arc::new(traces[i % traces.len()].clone())).collect();
        for mode in [MODE_OTLP, MODE_LEGACY] {
            let out = pool.prepare(round.clone(), Job { mode: Some(mode), fresh: true });
            assert_eq!(out.len(), round.len());
            let alone = Pool::start("alone", prep(), 1);
            for (t, p) in round.iter().zip(out) {
                let p = p.expect("prepared");
                assert_eq!(p.trace.trace_id, t.trace_id, "in the round's order");
                let mut frame = Frame::default();
                assert_eq!(p.frame.map(|f| f.bytes().to_vec()), Some(frame.encode_detached(t).bytes().to_vec()));
                let one = alone
                    .prepare(vec![Arc::clone(t)], Job { mode: Some(mode), fresh: true })
                    .pop()
                    .flatten()
                    .expect("prepared");
                if mode == MODE_OTLP {
                    assert_eq!(bytes(&p.units), bytes(&one.units), "the same bytes as on one thread");
                } else {
                    // Legacy events carry fresh envelope ids: the same count and sizes.
                    assert_eq!(p.units.len(), one.units.len());
                }
            }
        }
        // A round for the log alone encodes no wire units.
        let log_only = Job { mode: None, fresh: true };
        assert!(pool.prepare(round.clone(), log_only).into_iter().all(|p| p.is_some_and(|p| p.units.is_empty())));
        // Read back from the log: as they are, no record, and the same bytes.
        let back = pool.prepare(round.clone(), Job { mode: Some(MODE_OTLP), fresh: false });
        for (t, p) in round.iter().zip(back) {
            let p = p.expect("prepared");
            assert!(Arc::ptr_eq(t, &p.trace) && p.frame.is_none());
            assert_eq!(bytes(&p.units), bytes(&encode_units(t, MODE_OTLP, Some("test"))));
        }
        pool.stop();
        assert!(pool.threads.lock().is_empty(), "the threads are joined");
    }

    #[test]
    fn a_round_does_not_wait_for_an_encoder_thread_that_is_not_running() {
        // The encoder threads stop in the mask hook until the round is over: the worker
        // prepares their traces itself, in order, and their late results are dropped.
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let g = Arc::clone(&gate);
        let privacy = Privacy::default().with_mask(move |v| {
            if std::thread::current().name().is_some_and(|n| n.starts_with("flowtrace-encode")) {
                let (open, cv) = &*g;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }
            v
        });
        let pool = Pool::start("stuck", Prep { privacy, environment: None, spool: true }, 3);
        let traces = otlp::tests::traces();
        let round: Vec<Arc<TraceRecord>> = (0..12).map(|i| Arc::new(traces[i % traces.len()].clone())).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = round.clone();
        let worker = std::thread::spawn(move || {
            let out = pool.prepare(r.clone(), Job { mode: Some(MODE_OTLP), fresh: true });
            let _ =
                tx.send(out.into_iter().map(|p| p.map(|p| (p.trace.trace_id, bytes(&p.units)))).collect::<Vec<_>>());
            // A second round after the first's late results: each gets its own.
            let again = pool.prepare(r, Job { mode: Some(MODE_OTLP), fresh: true });
            (pool, again.len())
        });
        let out = rx.recv_timeout(Duration::from_secs(60)).expect("the round ends without the stuck threads");
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
        assert_eq!(out.len(), round.len());
        for (t, p) in round.iter().zip(out) {
            let (id, units) = p.expect("prepared");
            assert_eq!(id, t.trace_id, "in the round's order");
            assert_eq!(units, bytes(&encode_units(t, MODE_OTLP, None)));
        }
        let (pool, n) = worker.join().expect("worker");
        assert_eq!(n, round.len());
        pool.stop();
    }

    #[test]
    fn checking_values_as_they_are_encoded_agrees_with_scrubbing_first() {
        use crate::export::privacy::REDACTED;
        use crate::trace::SpanStatus;
        use serde_json::json;
        let secret = "sk-lf-test-secret-value";
        let mut bases: Vec<TraceRecord> = otlp::tests::traces();
        // The same traces without a generation node (whose folded spans take the slow path).
        for t in otlp::tests::traces() {
            let mut t = t;
            for s in &mut t.spans {
                s.attributes.retain(|k, v| !(k == "observation_type" && v == "generation"));
            }
            bases.push(t);
        }
        let mut part = bases[bases.len() - 3].clone();
        part.spans.retain(|s| s.parent_id.is_some());
        part.part = Some(Default::default());
        bases.push(part);
        let deep = json!({"a": {"b": {"c": [1]}}});
        // Far deeper than the limit: the check stops at the limit, not at the bottom.
        let deeper = (0..1000).fold(json!(1), |v, _| json!([v]));
        let long = json!({"k": "x".repeat(100)});
        type Edit = Box<dyn Fn(&mut TraceRecord, usize)>;
        let edits: Vec<Edit> = vec![
            Box::new(|_, _| {}),
            Box::new(|t, _| t.input = json!({"api_key": "k-1"})),
            Box::new(|t, _| t.input = json!({"api_key": REDACTED})),
            Box::new(|t, _| t.output = json!({"note": "Authorization: Bearer abcdefgh12345678"})),
            Box::new(move |t, _| t.output = json!([format!("the key {secret} here")])),
            Box::new({
                let d = deep.clone();
                move |t, _| t.input = d.clone()
            }),
            Box::new({
                let l = long.clone();
                move |t, _| t.output = l.clone()
            }),
            Box::new({
                let d = deeper.clone();
                move |t, i| {
                    t.input = d.clone();
                    if let Some(s) = t.spans.get_mut(i) {
                        s.output = Some(d.clone());
                    }
                }
            }),
            Box::new(|t, _| {
                t.metadata.insert("token".into(), "x".into());
            }),
            Box::new(|t, _| {
                t.status = SpanStatus::Cancelled { reason: "Bearer abcdefgh12345678".into() };
            }),
            Box::new(move |t, i| {
                if let Some(s) = t.spans.get_mut(i) {
                    s.input = Some(json!({"q": format!("{secret}")}));
                }
            }),
            Box::new(|t, i| {
                if let Some(s) = t.spans.get_mut(i) {
                    s.output = Some(json!({"nested": [{"Password": "hunter22"}]}));
                }
            }),
            Box::new({
                let d = deep.clone();
                move |t, i| {
                    if let Some(s) = t.spans.get_mut(i) {
                        s.output = Some(d.clone());
                    }
                }
            }),
            Box::new({
                let l = long.clone();
                move |t, i| {
                    if let Some(s) = t.spans.get_mut(i) {
                        s.input = Some(l.clone());
                    }
                }
            }),
            Box::new(|t, i| {
                if let Some(s) = t.spans.get_mut(i) {
                    s.attributes.insert("secret".into(), "x".into());
                }
            }),
            // A value written before comes back inside another, deeper than the limit lets it.
            Box::new(|t, i| {
                if let Some(s) = t.spans.get_mut(i) {
                    s.output = Some(json!({"c": [1]}));
                }
                t.output = json!({"x": {"c": [1]}});
            }),
            Box::new(|t, i| {
                if let Some(s) = t.spans.get_mut(i) {
                    s.input = Some(json!({"c": [{"d": "a string of sixteen bytes"}]}));
                    s.output = Some(json!({"x": {"c": [{"d": "a string of sixteen bytes"}]}}));
                }
            }),
            Box::new(|t, i| {
                if let Some(s) = t.spans.get_mut(i) {
                    s.status = SpanStatus::Error {
                        kind: "k".into(),
                        message: "m".into(),
                        chain: vec!["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_X".into()],
                        location: None,
                    };
                }
            }),
        ];
        let base = Privacy::default().with_secret_values([secret]);
        let rules = [
            base.clone(),
            base.clone().with_max_value_bytes(64),
            base.clone().with_max_depth(2),
            base.clone().with_value_redaction(false),
            base.clone().with_mask(|v| v),
        ];
        // Per protocol: traces checked as encoded, and traces scrubbed first.
        let mut taken = [[0_usize; 2]; 2];
        // Legacy events without their envelope ids (fresh for every event).
        let without_ids = |units: &[Unit]| -> Vec<String> {
            units
                .iter()
                .map(|u| match &u.payload {
                    Payload::Legacy { id, json } => String::from_utf8_lossy(json).replacen(id.as_str(), "_", 1),
                    Payload::Otlp(_) => panic!("an OTLP unit"),
                })
                .collect()
        };
        // What is compared of a protocol's units: OTLP's bytes, legacy's without their ids.
        let shown = |mode: u8, units: &[Unit]| -> Vec<Vec<u8>> {
            if mode == MODE_LEGACY {
                without_ids(units).into_iter().map(String::into_bytes).collect()
            } else {
                bytes(units)
            }
        };
        for (r, privacy) in rules.iter().enumerate() {
            for t in &bases {
                for (e, edit) in edits.iter().enumerate() {
                    for i in 0..t.spans.len().max(1) {
                        let mut t = t.clone();
                        edit(&mut t, i);
                        let before = serde_json::to_string(&t).unwrap();
                        let scrubbed = privacy.apply_shared(Arc::new(t.clone()));
                        let same = serde_json::to_string(&*scrubbed).unwrap() == before;
                        let what = format!("rules {r}, edit {e}, span {i}, trace {}", t.name);
                        for (m, mode) in [MODE_OTLP, MODE_LEGACY].into_iter().enumerate() {
                            match encode_checked(&t, privacy, Some("test"), mode) {
                                Some(units) => {
                                    taken[m][0] += 1;
                                    assert!(same, "checked as clean but scrubbing changes it (mode {mode}): {what}");
                                    let want = encode_units(&scrubbed, mode, Some("test"));
                                    assert_eq!(shown(mode, &units), shown(mode, &want), "mode {mode}: {what}");
                                    assert_eq!(
                                        units.iter().map(|u| u.weight).collect::<Vec<_>>(),
                                        want.iter().map(|u| u.weight).collect::<Vec<_>>()
                                    );
                                }
                                None => taken[m][1] += 1,
                            }
                            // Whatever the path, the trace that leaves is the scrubbed one.
                            let prep =
                                Prep { privacy: privacy.clone(), environment: Some("test".into()), spool: false };
                            let p = prep
                                .prepare(
                                    Arc::new(t.clone()),
                                    Job { mode: Some(mode), fresh: true },
                                    &mut Frame::default(),
                                )
                                .expect("prepared");
                            assert_eq!(
                                serde_json::to_string(&*p.trace).unwrap(),
                                serde_json::to_string(&*scrubbed).unwrap()
                            );
                            assert_eq!(
                                shown(mode, &p.units),
                                shown(mode, &encode_units(&scrubbed, mode, Some("test"))),
                                "mode {mode}: {what}"
                            );
                        }
                    }
                }
            }
        }
        for (name, [fast, slow]) in ["OTLP", "legacy"].into_iter().zip(taken) {
            assert!(
                fast > 100 && slow > 100,
                "both {name} paths taken: {fast} checked as encoded, {slow} scrubbed first"
            );
        }
    }

    #[test]
    fn options_setters_change_only_their_field() {
        let o = DeliveryOptions::default().max_attempts(2).spool_dir(None);
        let d = DeliveryOptions::default();
        assert_eq!((o.max_attempts, o.spool_dir), (2, None));
        assert_eq!(
            (o.max_batch_spans, o.max_in_flight, o.max_backoff),
            (d.max_batch_spans, d.max_in_flight, d.max_backoff)
        );
    }
}
