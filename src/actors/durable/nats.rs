//! Flow runs on NATS JetStream (feature `nats`): a work queue of runs, checkpoints and
//! results in JetStream KV, workers in any number of processes.
//!
//! - [`Queue`] (any process): [`submit`](Queue::submit) a registered flow name, the initial
//!   store, params and trace fields → a run id; [`wait`](Queue::wait) for or
//!   [`result`](Queue::result) fetch its [`RunResult`]; [`resume`](Queue::resume) a run that
//!   waits for a person.
//! - [`Worker`]: registers flows by name and pulls runs from the work-queue stream, never more
//!   than its concurrency (its admission limit); keeps long runs' messages alive with
//!   in-progress acks; checkpoints every visit to KV, so a run whose worker died is
//!   redelivered to another and continues after its last checkpoint.
//!
//! JetStream objects (prefix `FLOWTRACE` by default): the stream `FLOWTRACE_RUNS` (work-queue
//! retention, subject `flowtrace.runs`), its durable pull consumer `FLOWTRACE_WORKERS`, and
//! the KV buckets `FLOWTRACE_CHECKPOINTS` and `FLOWTRACE_RESULTS`. The first process to connect
//! creates them with its [`NatsConfig`] (replicas, ack wait).
//!
//! A result is written once per run id (a KV create, which fails if one exists): a run
//! delivered twice still has one result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};

use super::{
    default_worker_name, prepare, with_input, CheckpointStore, DurableError, Outcome, Registry, ResultStatus, RunPhase,
    RunRequest, RunResult, RunState, Submission,
};
use crate::runtime::{Admission, Runtime};
use crate::{Error, Flow, Tracer};

/// The header naming a run, so a message whose body does not parse still gets a result.
pub const RUN_ID_HEADER: &str = "Flowtrace-Run-Id";

fn nats_err(what: &str, e: impl std::fmt::Display) -> DurableError {
    DurableError::Nats(format!("{what}: {e}"))
}

/// How to reach NATS and name the JetStream objects.
///
/// Credentials come from the URL (`nats://user:password@host:4222`, `nats://token@host:4222`)
/// or the environment ([`from_env`](Self::from_env)); they are taken out of the server list
/// and never appear in `Debug` output, flowtrace's logs or errors. (The NATS client's wire
/// trace redacts them too since async-nats 0.51; the credential tests run workers at
/// `RUST_LOG=trace` and search their output for the secrets.)
#[derive(Clone)]
pub struct NatsConfig {
    servers: Vec<String>,
    user: Option<(String, String)>,
    token: Option<String>,
    creds_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    tls_required: bool,
    prefix: String,
    replicas: usize,
    ack_wait: Duration,
    connection_name: Option<String>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("creds_file", &self.creds_file)
            .field("tls_required", &self.tls_required)
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .field("ack_wait", &self.ack_wait)
            .finish()
    }
}

impl NatsConfig {
    /// Servers from `urls` (comma-separated for a cluster), credentials taken out of them.
    pub fn new(urls: &str) -> Result<NatsConfig, DurableError> {
        let mut cfg = NatsConfig {
            servers: Vec::new(),
            user: None,
            token: None,
            creds_file: None,
            tls_ca: None,
            tls_client: None,
            tls_required: false,
            prefix: "FLOWTRACE".into(),
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            connection_name: None,
        };
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (scheme, rest) = match url.split_once("://") {
                Some((s, r)) => (s, r),
                None => ("nats", url),
            };
            if scheme == "tls" {
                cfg.tls_required = true;
            }
            let (userinfo, host) = match rest.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, rest),
            };
            if host.is_empty() {
                return Err(DurableError::Config("a NATS URL without a host".into()));
            }
            if let Some(u) = userinfo {
                match u.split_once(':') {
                    Some((user, pass)) => cfg.user = Some((user.to_owned(), pass.to_owned())),
                    None => cfg.token = Some(u.to_owned()),
                }
            }
            cfg.servers.push(format!("{scheme}://{host}"));
        }
        if cfg.servers.is_empty() {
            return Err(DurableError::Config("no NATS server URL given".into()));
        }
        Ok(cfg)
    }

    /// From the environment: `NATS_URL` (default `nats://127.0.0.1:4222`), `NATS_USER` and
    /// `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_CREDS` (a creds file), `NATS_CA`, and `NATS_CERT` with
    /// `NATS_KEY` (a TLS client certificate).
    pub fn from_env() -> Result<NatsConfig, DurableError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut cfg = NatsConfig::new(&var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()))?;
        if let (Some(u), Some(p)) = (var("NATS_USER"), var("NATS_PASSWORD")) {
            cfg.user = Some((u, p));
        }
        if let Some(t) = var("NATS_TOKEN") {
            cfg.token = Some(t);
        }
        cfg.creds_file = var("NATS_CREDS").map(PathBuf::from);
        cfg.tls_ca = var("NATS_CA").map(PathBuf::from);
        if let (Some(c), Some(k)) = (var("NATS_CERT"), var("NATS_KEY")) {
            cfg.tls_client = Some((c.into(), k.into()));
        }
        Ok(cfg)
    }

    /// [`new`](Self::new) for `urls`, with the environment's credentials when the URL has none.
    pub fn from_url_and_env(urls: &str) -> Result<NatsConfig, DurableError> {
        let env = NatsConfig::from_env()?;
        let mut cfg = NatsConfig::new(urls)?;
        if cfg.user.is_none() && cfg.token.is_none() {
            cfg.user = env.user;
            cfg.token = env.token;
        }
        cfg.creds_file = env.creds_file;
        cfg.tls_ca = env.tls_ca;
        cfg.tls_client = env.tls_client;
        Ok(cfg)
    }

    /// Prefix of the stream, consumer and bucket names (default `FLOWTRACE`; letters, digits, `_`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Replicas of the stream and buckets (3 in a three-server cluster; default 1).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }
    /// How long a delivered run may go without an ack or in-progress ack before JetStream
    /// redelivers it (default 30 s): how soon a dead worker's runs move on. Workers send
    /// in-progress acks every third of it.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
    /// The connection's name, as the server shows it.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }
    /// Authenticates with a user and password (instead of any in the URL).
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }
    /// Authenticates with a token (instead of any in the URL).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// Authenticates with a NATS creds file (a user JWT and its seed), as `NATS_CREDS` does.
    pub fn creds_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.creds_file = Some(path.into());
        self
    }
    /// Trusts the CA certificates in this PEM file for the servers' TLS (as `NATS_CA` does).
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }
    /// Presents this client certificate and key (PEM files) for TLS (as `NATS_CERT` and
    /// `NATS_KEY` do).
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self
    }
    /// Requires TLS.
    pub fn require_tls(mut self, on: bool) -> Self {
        self.tls_required = on;
        self
    }
    /// The servers, without credentials.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Connects, retrying for up to 20 s while the servers come up. A refused credential, a
    /// TLS failure or a bad address fails at once, with an error naming the servers (never a
    /// credential).
    pub async fn connect(&self) -> Result<async_nats::Client, DurableError> {
        use async_nats::ConnectErrorKind as Kind;
        let addrs: Vec<async_nats::ServerAddr> = self
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| DurableError::Config(format!("NATS server {s}: {e}"))))
            .collect::<Result<_, _>>()?;
        let what = format!("connect to {}", self.servers.join(","));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.options().await?.connect(addrs.clone()).await {
                Ok(client) => return Ok(client),
                Err(e) if matches!(e.kind(), Kind::AuthorizationViolation | Kind::Authentication) => {
                    return Err(nats_err(&what, format!("{e} (check the NATS credentials)")))
                }
                Err(e) if matches!(e.kind(), Kind::Tls | Kind::ServerParse) => return Err(nats_err(&what, e)),
                // A certificate the client does not trust comes back as an I/O error (from
                // rustls, with no kind of its own); waiting does not make it trusted.
                Err(e) if e.kind() == Kind::Io && e.to_string().contains("certificate") => {
                    return Err(nats_err(&what, format!("TLS: {e}")))
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(target: "flowtrace::durable", "{what}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(nats_err(&what, e)),
            }
        }
    }

    /// The client's options: credentials, TLS, reconnecting for ever once connected.
    async fn options(&self) -> Result<async_nats::ConnectOptions, DurableError> {
        let mut opts =
            async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).max_reconnects(None);
        if let Some((u, p)) = &self.user {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        if let Some(path) = &self.creds_file {
            // The reader's error never quotes the file (it holds a seed): only its path is named.
            opts = opts.credentials_file(path).await.map_err(|e| {
                DurableError::Config(format!("NATS creds file {}: cannot be used ({:?})", path.display(), e.kind()))
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((c, k)) = &self.tls_client {
            opts = opts.add_client_certificate(c.clone(), k.clone());
        }
        if self.tls_required {
            opts = opts.require_tls(true);
        }
        if let Some(n) = &self.connection_name {
            opts = opts.name(n);
        }
        Ok(opts)
    }

    fn stream_name(&self) -> String {
        format!("{}_RUNS", self.prefix)
    }
    fn subject(&self) -> String {
        format!("{}.runs", self.prefix.to_lowercase())
    }
}

/// Checkpoints in a JetStream KV bucket (one key per run, history 1).
#[derive(Clone)]
pub struct KvCheckpoints {
    kv: kv::Store,
}

impl std::fmt::Debug for KvCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCheckpoints").finish_non_exhaustive()
    }
}

impl KvCheckpoints {
    /// Over an opened bucket.
    pub fn new(kv: kv::Store) -> Self {
        KvCheckpoints { kv }
    }

    async fn entry(&self, run_id: &str) -> Result<Option<(RunState, u64)>, DurableError> {
        match self.kv.entry(run_id).await.map_err(|e| nats_err("read a checkpoint", e))? {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some((RunState::from_bytes(&e.value)?, e.revision))),
            _ => Ok(None),
        }
    }
}

impl CheckpointStore for KvCheckpoints {
    fn load<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<Option<RunState>, DurableError>> {
        Box::pin(async move { Ok(self.entry(run_id).await?.map(|(s, _)| s)) })
    }

    fn save<'a>(&'a self, state: &'a RunState) -> BoxFuture<'a, Result<(), DurableError>> {
        Box::pin(async move {
            let bytes = state.to_bytes()?;
            self.kv.put(&state.run_id, Bytes::from(bytes)).await.map_err(|e| nats_err("write a checkpoint", e))?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<(), DurableError>> {
        Box::pin(async move { self.kv.purge(run_id).await.map_err(|e| nats_err("remove a checkpoint", e)) })
    }

    fn run_ids(&self) -> BoxFuture<'_, Result<Vec<String>, DurableError>> {
        Box::pin(async move {
            let keys = self.kv.keys().await.map_err(|e| nats_err("list checkpoints", e))?;
            keys.map(|k| k.map_err(|e| nats_err("list checkpoints", e))).collect::<Vec<_>>().await.into_iter().collect()
        })
    }
}

/// The work queue of runs, and where their checkpoints and results are kept.
#[derive(Clone)]
pub struct Queue {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsConfig,
    stream: stream::Stream,
    checkpoints: KvCheckpoints,
    results: kv::Store,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Queue {
    /// Connects and makes sure the stream, consumer and buckets exist.
    pub async fn connect(config: &NatsConfig) -> Result<Queue, DurableError> {
        let client = config.connect().await?;
        Queue::with_client(client, config).await
    }

    /// As [`connect`](Self::connect), over a client the caller made.
    pub async fn with_client(client: async_nats::Client, config: &NatsConfig) -> Result<Queue, DurableError> {
        let js = jetstream::new(client.clone());
        let stream = retry("create the run stream", || {
            js.get_or_create_stream(stream::Config {
                name: config.stream_name(),
                subjects: vec![config.subject()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
        })
        .await?;
        let checkpoints = bucket(&js, config, "CHECKPOINTS").await?;
        let results = bucket(&js, config, "RESULTS").await?;
        Ok(Queue { client, js, config: config.clone(), stream, checkpoints: KvCheckpoints::new(checkpoints), results })
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The checkpoint store workers use.
    pub fn checkpoints(&self) -> &KvCheckpoints {
        &self.checkpoints
    }

    async fn consumer(&self) -> Result<consumer::PullConsumer, DurableError> {
        let name = format!("{}_WORKERS", self.config.prefix);
        retry("create the worker consumer", || {
            self.stream.get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    // Deliveries are bounded by the workers (dead-lettering with a result), not
                    // by the server, which would drop the run silently.
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
        })
        .await
    }

    async fn publish(&self, request: &RunRequest, msg_id: String) -> Result<(), DurableError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| DurableError::Format { what: "a run request", reason: e.to_string() })?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert(RUN_ID_HEADER, request.run_id.as_str());
        let ack = self
            .js
            .publish_with_headers(self.config.subject(), headers, body.into())
            .await
            .map_err(|e| nats_err("submit a run", e))?;
        ack.await.map_err(|e| nats_err("submit a run (no ack from JetStream)", e))?;
        Ok(())
    }

    /// Submits a run; returns its id once JetStream has stored it. Submitting the same run id
    /// again within two minutes is deduplicated.
    pub async fn submit(&self, submission: Submission) -> Result<String, DurableError> {
        let request = submission.into_request();
        self.publish(&request, request.run_id.clone()).await?;
        Ok(request.run_id)
    }

    /// Submits raw bytes as a run request (for tests of bad input); `run_id` goes in the header.
    pub async fn submit_raw(&self, run_id: &str, body: Vec<u8>) -> Result<(), DurableError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", run_id);
        headers.insert(RUN_ID_HEADER, run_id);
        let ack = self
            .js
            .publish_with_headers(self.config.subject(), headers, body.into())
            .await
            .map_err(|e| nats_err("submit a run", e))?;
        ack.await.map_err(|e| nats_err("submit a run (no ack from JetStream)", e))?;
        Ok(())
    }

    /// The run's final result, if it has one.
    pub async fn result(&self, run_id: &str) -> Result<Option<RunResult>, DurableError> {
        match self.results.get(run_id).await.map_err(|e| nats_err("read a result", e))? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| DurableError::Format { what: "a result", reason: e.to_string() }),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for the run's final result.
    pub async fn wait(&self, run_id: &str, timeout: Duration) -> Result<RunResult, DurableError> {
        let mut watch = self.results.watch(run_id).await.map_err(|e| nats_err("watch a result", e))?;
        if let Some(r) = self.result(run_id).await? {
            return Ok(r);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Err(_) => return Err(DurableError::Timeout(run_id.to_owned())),
                Ok(None) => return Err(DurableError::Nats("the result watch ended".into())),
                Ok(Some(Err(e))) => return Err(nats_err("watch a result", e)),
                Ok(Some(Ok(e))) if e.operation == kv::Operation::Put => {
                    return serde_json::from_slice(&e.value)
                        .map_err(|e| DurableError::Format { what: "a result", reason: e.to_string() })
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Every result written from now on, as they come (start it before submitting).
    ///
    /// The stream outlives a server failover: when the watch breaks (the server it was on
    /// died, heartbeats were missed), it is opened again from the last revision seen, so no
    /// result is skipped. It ends with an error only when the watch cannot be opened again
    /// within [`RESULT_WATCH_RETRY`].
    pub async fn results(
        &self,
    ) -> Result<futures::stream::BoxStream<'static, Result<RunResult, DurableError>>, DurableError> {
        let watch = self.results.watch_all().await.map_err(|e| nats_err("watch results", e))?;
        let store = self.results.clone();
        let state = (store, Some(watch), 0_u64);
        Ok(futures::stream::unfold(state, |(store, mut watch, mut last)| async move {
            loop {
                let w = match watch.as_mut() {
                    Some(w) => w,
                    None => match reopen_watch(&store, last).await {
                        Ok(w) => watch.insert(w),
                        Err(e) => return Some((Err(e), (store, None, last))),
                    },
                };
                match w.next().await {
                    Some(Ok(e)) => {
                        last = e.revision;
                        if e.operation == kv::Operation::Put {
                            let r = serde_json::from_slice(&e.value)
                                .map_err(|err| DurableError::Format { what: "a result", reason: err.to_string() });
                            return Some((r, (store, watch, last)));
                        }
                    }
                    Some(Err(err)) => {
                        tracing::debug!(target: "flowtrace::durable", "the result watch broke ({err}); opening it again");
                        watch = None;
                    }
                    None => watch = None,
                }
            }
        })
        .boxed())
    }

    /// The run's checkpoint (where it stands: running, suspended, finished).
    pub async fn state(&self, run_id: &str) -> Result<Option<RunState>, DurableError> {
        self.checkpoints.load(run_id).await
    }

    /// Continues a suspended run with `input` (written to the key it waits for), on whichever
    /// worker takes it. Two concurrent resumes of one run: one wins, the other gets
    /// [`DurableError::NotSuspended`].
    pub async fn resume(&self, run_id: &str, input: Value) -> Result<(), DurableError> {
        let (state, revision) =
            self.checkpoints.entry(run_id).await?.ok_or_else(|| DurableError::NotFound(run_id.to_owned()))?;
        let state = with_input(state, input)?;
        let bytes = state.to_bytes()?;
        self.checkpoints.kv.update(run_id, Bytes::from(bytes), revision).await.map_err(|_| {
            DurableError::NotSuspended { run_id: run_id.to_owned(), state: "resumed by someone else".into() }
        })?;
        let request = RunRequest::continuing(&state);
        self.publish(&request, format!("{run_id}.resume.{}", state.checkpoints)).await
    }

    /// Writes a run's final result unless it has one (the first result stands).
    async fn put_result(&self, result: &RunResult) -> Result<(), DurableError> {
        let body =
            serde_json::to_vec(result).map_err(|e| DurableError::Format { what: "a result", reason: e.to_string() })?;
        match self.results.create(&result.run_id, body.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(nats_err("write a result", e)),
        }
    }
}

/// Opens (creating it when missing) the KV bucket `<prefix>_<name>`: history 1, file storage,
/// the configured replicas. Every process opens its buckets here, with the same settings.
async fn bucket(js: &jetstream::Context, config: &NatsConfig, name: &str) -> Result<kv::Store, DurableError> {
    let bucket = format!("{}_{name}", config.prefix);
    let what = format!("create the KV bucket {bucket}");
    retry(&what, || {
        js.create_key_value(kv::Config {
            bucket: bucket.clone(),
            history: 1,
            num_replicas: config.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
    })
    .await
}

/// Retries a JetStream set-up call while a cluster elects its leaders (up to 30 s).
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> Result<T, DurableError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(target: "flowtrace::durable", "{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(nats_err(what, e)),
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Runs completed here.
    pub completed: u64,
    /// Runs that got a failed result here (refused, or failed for good).
    pub failed: u64,
    /// Runs dead-lettered here.
    pub dead_lettered: u64,
    /// Runs suspended here (waiting for input).
    pub suspended: u64,
    /// Failed executions handed back for another delivery.
    pub retried: u64,
    /// Runs handed back unfinished at shutdown (redelivered to another worker).
    pub handed_back: u64,
}

/// A worker: pulls runs of its registered flows from the queue and executes them durably,
/// through a [`Runtime`]: the runtime's admission limit bounds the runs it pulls, and the
/// runtime supervises and traces them.
pub struct Worker {
    queue: Queue,
    registry: Arc<Registry>,
    name: String,
    concurrency: usize,
    runtime: Option<Runtime>,
    max_deliveries: u64,
    grace: Duration,
    tracer: Option<Tracer>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("flows", &self.registry.names())
            .field("concurrency", &self.concurrency)
            .field("runtime", &self.runtime)
            .finish()
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    queue: Queue,
    registry: Registry,
    name: String,
    concurrency: usize,
    runtime: Option<Runtime>,
    max_deliveries: u64,
    grace: Duration,
    tracer: Option<Tracer>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder").field("name", &self.name).finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Registers `flow` under `name`.
    pub fn flow(mut self, name: &str, flow: &Flow) -> Result<Self, DurableError> {
        self.registry.add(name, flow, None)?;
        Ok(self)
    }
    /// Registers `flow` under `name` at `version`; runs submitted for another version fail.
    pub fn flow_version(mut self, name: &str, flow: &Flow, version: &str) -> Result<Self, DurableError> {
        self.registry.add(name, flow, Some(version.to_owned()))?;
        Ok(self)
    }
    /// The worker's name in resume spans and results (default `FLOWTRACE_WORKER`, else host-pid).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Runs in flight at most (default 16): the admission limit of the worker's own
    /// [`Runtime`]; it pulls no more. Ignored with [`runtime`](Self::runtime), whose limit holds.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }
    /// Runs through `runtime` (shared with the service's other runs, say) instead of a runtime
    /// of the worker's own: its `max_in_flight` bounds the runs pulled, its time and step
    /// limits and its tracer apply. The worker does not shut it down.
    pub fn runtime(mut self, runtime: &Runtime) -> Self {
        self.runtime = Some(runtime.clone());
        self
    }
    /// Deliveries a run gets before it is dead-lettered with its last error (default 5).
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.max_deliveries = n.max(1);
        self
    }
    /// How long runs in flight may take to finish at shutdown before they are handed back
    /// (default 10 s).
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }
    /// Traces runs with this tracer (default: the runtime's, else the global one).
    pub fn tracer(mut self, tracer: &Tracer) -> Self {
        self.tracer = Some(tracer.clone());
        self
    }
    /// The worker.
    pub fn build(self) -> Worker {
        Worker {
            queue: self.queue,
            registry: Arc::new(self.registry),
            name: self.name,
            concurrency: self.concurrency,
            runtime: self.runtime,
            max_deliveries: self.max_deliveries,
            grace: self.grace,
            tracer: self.tracer,
        }
    }
}

#[derive(Default)]
struct Counters {
    completed: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    dead_lettered: std::sync::atomic::AtomicU64,
    suspended: std::sync::atomic::AtomicU64,
    retried: std::sync::atomic::AtomicU64,
    handed_back: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn bump(c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn report(&self) -> WorkerReport {
        let l = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        WorkerReport {
            completed: l(&self.completed),
            failed: l(&self.failed),
            dead_lettered: l(&self.dead_lettered),
            suspended: l(&self.suspended),
            retried: l(&self.retried),
            handed_back: l(&self.handed_back),
        }
    }
}

struct Shared {
    queue: Queue,
    runtime: Runtime,
    registry: Arc<Registry>,
    store: Arc<dyn CheckpointStore>,
    name: String,
    max_deliveries: u64,
    ack_wait: Duration,
    tracer: Option<Tracer>,
    counters: Counters,
}

impl Worker {
    /// A builder for a worker on `queue`.
    pub fn builder(queue: &Queue) -> WorkerBuilder {
        WorkerBuilder {
            queue: queue.clone(),
            registry: Registry::default(),
            name: default_worker_name(),
            concurrency: 16,
            runtime: None,
            max_deliveries: 5,
            grace: Duration::from_secs(10),
            tracer: None,
        }
    }

    /// Pulls and executes runs until `shutdown` resolves; then takes no more, lets runs in
    /// flight finish for the grace period, hands back the rest (cancelled, then negative acks,
    /// so another worker takes them at once), shuts its own runtime down (flushing its
    /// tracer) and reports.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<WorkerReport, DurableError> {
        let consumer = self.queue.consumer().await?;
        let (runtime, own) = match &self.runtime {
            Some(rt) => (rt.clone(), false),
            None => {
                let mut b = Runtime::builder().max_in_flight(self.concurrency).admission(Admission::Wait);
                if let Some(t) = &self.tracer {
                    b = b.tracer(t);
                }
                (b.build().map_err(|e| DurableError::Config(e.to_string()))?, true)
            }
        };
        let limit = runtime.max_in_flight();
        let shared = Arc::new(Shared {
            runtime: runtime.clone(),
            store: Arc::new(self.queue.checkpoints.clone()),
            queue: self.queue.clone(),
            registry: Arc::clone(&self.registry),
            name: self.name.clone(),
            max_deliveries: self.max_deliveries,
            ack_wait: self.queue.config.ack_wait,
            tracer: self.tracer.clone(),
            counters: Counters::default(),
        });
        // The worker holds no more runs than its runtime admits at once.
        let permits = Arc::new(Semaphore::new(limit));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        'pull: loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                _ = &mut shutdown => break 'pull,
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'pull,
                },
            };
            if runtime.is_shutting_down() {
                break 'pull;
            }
            let mut held = vec![first];
            // A runtime shared with other work may have fewer places free than the worker.
            let room = runtime.free_slots().max(1);
            while held.len() < room {
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            // Ask for as many runs as there are free slots; they are handled as they arrive.
            let batch = consumer.batch().max_messages(held.len()).expires(Duration::from_millis(500)).messages().await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(target: "flowtrace::durable", "pulling runs failed: {e}; retrying");
                    tokio::select! {
                        _ = &mut shutdown => break 'pull,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => continue 'pull,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = &mut shutdown => break 'pull,
                    m = batch.next() => m,
                };
                match next {
                    Some(Ok(msg)) => {
                        let Some(permit) = held.pop() else { break };
                        let shared = Arc::clone(&shared);
                        let stop = stop_rx.clone();
                        tasks.spawn(async move {
                            handle(shared, msg, stop).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::debug!(target: "flowtrace::durable", "pull: {e}");
                        break;
                    }
                    None => break,
                }
            }
        }
        // Shutdown: finish what is in flight within the grace period, then hand back the rest.
        let finished = tokio::time::timeout(self.grace, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            let _ = stop_tx.send(true);
            while tasks.join_next().await.is_some() {}
        }
        if own {
            runtime.shutdown(self.grace).await;
        }
        let _ = self.queue.client.flush().await;
        Ok(shared.counters.report())
    }
}

/// Executes one delivery through the worker's runtime; `None` when it is handed back
/// unfinished (the worker or its runtime is shutting down).
async fn run_on_runtime(
    shared: &Shared,
    request: &RunRequest,
    delivered: u64,
    stop: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    let prepared = prepare(
        &shared.registry,
        &shared.store,
        request,
        shared.tracer.as_ref(),
        &shared.name,
        delivered,
        Some(shared.max_deliveries),
    )
    .await;
    let p = match prepared {
        Ok(p) => p,
        Err(outcome) => return Some(outcome),
    };
    let mut handle = tokio::select! {
        h = shared.runtime.spawn_with(&p.traced, &p.shared, p.options.clone()) => match h {
            Ok(h) => h,
            // Refused: the runtime is shutting down, or full under `Admission::Refuse`.
            Err(Error::Refused(_)) => return None,
            Err(e) => return Some(Outcome::Unavailable(e)),
        },
        _ = stopped(stop) => return None,
    };
    tokio::select! {
        res = &mut handle => match res {
            Err(Error::Cancelled { .. }) if shared.runtime.is_shutting_down() => None,
            res => Some(p.conclude(res)),
        },
        _ = stopped(stop) => {
            // Let the run end before it is handed back, so that no checkpoint of this worker
            // lands after another worker has taken the run.
            handle.cancel("the worker is shutting down: the run is handed back");
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut handle).await;
            None
        }
    }
}

/// Resolves once the worker's stop signal is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One delivery of one run.
async fn handle(shared: Arc<Shared>, msg: jetstream::Message, mut stop: watch::Receiver<bool>) {
    let msg = Arc::new(msg);
    let delivered = msg.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
    let header_id = msg.headers.as_ref().and_then(|h| h.get(RUN_ID_HEADER)).map(|v| v.as_str().to_owned());
    let request: RunRequest = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            let run_id = header_id.unwrap_or_else(|| "<unknown>".into());
            let request = RunRequest {
                format: super::FORMAT_VERSION,
                run_id,
                flow: String::new(),
                flow_version: None,
                store: Value::Null,
                params: Default::default(),
                trace: Default::default(),
            };
            let err = DurableError::BadInput(format!("the run request does not deserialise: {e}"));
            finish(&shared, &msg, RunResult::failed(&request, ResultStatus::Failed, &err, &shared.name, delivered))
                .await;
            Counters::bump(&shared.counters.failed);
            return;
        }
    };
    // A delivery of a run that already has its result (its ack was lost): ack it again.
    if let Ok(Some(_)) = shared.queue.result(&request.run_id).await {
        let _ = msg.ack().await;
        return;
    }
    // Keep the message alive while the run takes longer than the ack wait.
    let ticker = {
        let msg = Arc::clone(&msg);
        let every = (shared.ack_wait / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        })
    };
    let outcome = run_on_runtime(&shared, &request, delivered, &mut stop).await;
    ticker.abort();
    let Some(outcome) = outcome else {
        // Shut down before the run finished: hand it back now; it continues after its last
        // checkpoint wherever it is delivered next.
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        Counters::bump(&shared.counters.handed_back);
        return;
    };
    match outcome {
        Outcome::Suspended { .. } => {
            // The checkpoint holds the run; `resume` enqueues it again.
            let _ = msg.ack().await;
            Counters::bump(&shared.counters.suspended);
        }
        Outcome::Completed { .. } => {
            let r = RunResult::from_outcome(&request, outcome, &shared.name, delivered);
            finish(&shared, &msg, r).await;
            Counters::bump(&shared.counters.completed);
        }
        Outcome::Rejected(_) => {
            let r = RunResult::from_outcome(&request, outcome, &shared.name, delivered);
            finish(&shared, &msg, r).await;
            Counters::bump(&shared.counters.failed);
        }
        Outcome::Exhausted { attempts, last_error } => {
            // Every allowed attempt ended without a result: its workers died or stopped.
            let err = last_error.unwrap_or_else(|| {
                format!("no attempt finished ({attempts} attempts: each worker stopped or died while running it)")
            });
            dead_letter(&shared, &msg, &request, err, None, delivered).await;
        }
        Outcome::Unavailable(e) => {
            // The checkpoint store failed (a cluster electing a leader, a lost server): not the
            // run's fault, so it does not count towards dead-lettering. Try again shortly.
            tracing::warn!(target: "flowtrace::durable", run_id = %request.run_id, "checkpoint store unavailable: {e}; the run will be delivered again");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_millis(500)))).await;
            Counters::bump(&shared.counters.retried);
        }
        Outcome::Failed { error: e, attempts } => {
            let message = e.to_string();
            // Keep the error with the checkpoint, for a later dead-letter result.
            if let Ok(Some(mut s)) = shared.store.load(&request.run_id).await {
                s.last_error = Some(message.clone());
                let _ = shared.store.save(&s).await;
            }
            if attempts >= shared.max_deliveries {
                dead_letter(&shared, &msg, &request, message, Some(e.kind()), delivered).await;
            } else {
                let backoff = Duration::from_millis(100 * attempts.min(20));
                let _ = msg.ack_with(AckKind::Nak(Some(backoff))).await;
                Counters::bump(&shared.counters.retried);
            }
        }
    }
}

async fn dead_letter(
    shared: &Shared,
    msg: &jetstream::Message,
    request: &RunRequest,
    error: String,
    kind: Option<&str>,
    delivered: u64,
) {
    tracing::warn!(target: "flowtrace::durable", run_id = %request.run_id, flow = %request.flow, "run dead-lettered after {delivered} deliveries: {error}");
    let mut r = RunResult::new(request, ResultStatus::DeadLettered, &shared.name, delivered);
    r.error = Some(error);
    r.error_kind = kind.map(str::to_owned).or(Some("dead_lettered".into()));
    // Its checkpoint stays: the dead-lettered run's state can be inspected.
    if let Ok(Some(mut s)) = shared.store.load(&request.run_id).await {
        if s.phase == RunPhase::Running {
            s.last_error.clone_from(&r.error);
            let _ = shared.store.save(&s).await;
        }
    }
    finish(shared, msg, r).await;
    Counters::bump(&shared.counters.dead_lettered);
}

/// Writes the result, then acks the message for good (`Term`: never redelivered). If the
/// result cannot be written, the message is not acked, so the run is delivered again.
async fn finish(shared: &Shared, msg: &jetstream::Message, result: RunResult) {
    match shared.queue.put_result(&result).await {
        Ok(()) => {
            let kind = if result.status == ResultStatus::Completed { AckKind::Ack } else { AckKind::Term };
            let _ = msg.ack_with(kind).await;
        }
        Err(e) => {
            tracing::warn!(target: "flowtrace::durable", run_id = %result.run_id, "could not write the result: {e}; the run will be delivered again");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_millis(200)))).await;
        }
    }
}

/// How long a broken result watch is retried before the stream gives up.
pub const RESULT_WATCH_RETRY: Duration = Duration::from_secs(30);

/// Opens the results watch again after revision `last` (everything written since, when `last`
/// is known), retrying while the cluster elects a new leader.
async fn reopen_watch(store: &kv::Store, last: u64) -> Result<kv::Watch, DurableError> {
    let deadline = tokio::time::Instant::now() + RESULT_WATCH_RETRY;
    let mut pause = Duration::from_millis(50);
    loop {
        let opened = if last == 0 { store.watch_all().await } else { store.watch_all_from_revision(last + 1).await };
        match opened {
            Ok(w) => return Ok(w),
            Err(e) if tokio::time::Instant::now() + pause >= deadline => return Err(nats_err("watch results", e)),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_urls_and_never_printed() {
        let cfg = NatsConfig::new("nats://alice:s3cret@127.0.0.1:4222, nats://127.0.0.1:4223").unwrap();
        assert_eq!(cfg.servers(), ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("alice"));
        let cfg = NatsConfig::new("tls://tok3n@example:4222").unwrap();
        assert_eq!(cfg.servers(), ["tls://example:4222"]);
        assert!(cfg.tls_required);
        assert!(!format!("{cfg:?}").contains("tok3n"));
        assert!(NatsConfig::new("").is_err());
    }
}
