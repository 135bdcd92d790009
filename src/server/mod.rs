//! The server: the HTTP API over a [`Store`], the reconciler, and blob storage. One
//! shutdown token stops all of it: the listener drains in-flight requests, long-polls
//! return at once, and the reconciler finishes its pass.

mod answers;
pub mod auth;
pub mod blobs;
pub mod caps;
mod dashboard;
pub mod guard;
pub mod llm_gate;
mod routes;
pub mod serve;
mod stream;
pub mod tls;

pub use routes::app;

use crate::domain::now_micros;
use crate::store::{LeasePolicy, Store};
use blobs::BlobStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub lease: LeasePolicy,
    pub reconcile_every: Duration,
    /// How long the events of finished pipelines are kept (`None`: forever).
    pub event_retention: Option<Duration>,
    /// Every request but the health check and the dashboard's page needs an API token.
    /// On by default beyond loopback.
    pub require_auth: bool,
    /// Serve beyond loopback without tokens all the same (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// Names the server answers to besides IP addresses and `localhost` (`--public-host`).
    pub public_hosts: Vec<String>,
    /// Serve HTTPS with this certificate chain and private key (PEM files).
    pub tls: Option<TlsFiles>,
    /// The job kinds a spec may use (`--allow-kinds`); by default every kind but those that
    /// run a program the spec chooses.
    pub allowed_kinds: Vec<String>,
    /// The largest blob (artifact, app archive) the server stores (`--max-blob-bytes`).
    pub max_blob_bytes: u64,
    /// The most all blobs together may take (`--blob-quota`; `None`: no quota).
    pub blob_quota: Option<u64>,
    /// When unreferenced blobs are deleted.
    pub blob_gc: BlobGc,
    /// Tokens accepted besides the store's, held only in this process (`assay run`'s own).
    pub memory_tokens: Vec<auth::MemoryToken>,
    /// The model provider names a spec may pick (`--providers`: the built-in `openrouter`
    /// and those of the providers file). The server only checks names; where each one is
    /// and which key it gets is each worker's own providers file.
    pub providers: Vec<String>,
    /// Requests each token may make (`--rate-limit`; `None`: unlimited).
    pub request_rate: Option<auth::RequestRate>,
    /// Worker ids each token may own (`--worker-ids-per-token`).
    pub worker_ids_per_token: i64,
    /// Connections open at once per client address and in all ([`serve`]).
    pub connections_per_peer: usize,
    pub max_connections: usize,
    /// How long a client has to send a request's headers ([`serve::HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// Where submitted specs are planned: templated ones in a child process with limits,
    /// when this process is the `assay` binary ([`crate::planner`]).
    pub planner: crate::planner::Planner,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Events of finished pipelines are kept this long unless told otherwise.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often old events are pruned, and how many at most per pass (short write locks).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 5_000;

impl ServerConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ServerConfig {
            data_dir,
            listen,
            lease: LeasePolicy::default(),
            reconcile_every: Duration::from_millis(LeasePolicy::reconcile_tick_ms(
                LeasePolicy::default().heartbeat_ms,
            ) as u64),
            event_retention: Some(DEFAULT_EVENT_RETENTION),
            require_auth: !listen.ip().is_loopback(),
            insecure_no_auth: false,
            public_hosts: Vec::new(),
            tls: None,
            allowed_kinds: crate::kinds::default_allowed_kinds(),
            max_blob_bytes: blobs::DEFAULT_MAX_BLOB_BYTES,
            blob_quota: Some(blobs::DEFAULT_BLOB_QUOTA),
            blob_gc: BlobGc::default(),
            memory_tokens: Vec::new(),
            providers: crate::generation::providers::Providers::builtin().names(),
            request_rate: auth::RequestRate::per_second(auth::DEFAULT_REQUESTS_PER_SECOND),
            worker_ids_per_token: auth::DEFAULT_WORKER_IDS_PER_TOKEN,
            connections_per_peer: serve::CONNECTIONS_PER_PEER,
            max_connections: serve::MAX_CONNECTIONS,
            header_read_timeout: serve::HEADER_READ_TIMEOUT,
            planner: crate::planner::Planner::for_this_process(),
        }
    }

    /// Set the heartbeat interval; the lease and the reconciler tick follow from it.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        let ms = heartbeat.as_millis() as i64;
        self.lease = LeasePolicy::from_heartbeat(ms);
        self.reconcile_every = Duration::from_millis(LeasePolicy::reconcile_tick_ms(ms) as u64);
        self
    }
}

/// Wakes long-polls. `work` ticks when jobs may have become claimable, `events` when
/// any event was written.
#[derive(Clone)]
pub struct Signals {
    work: watch::Sender<u64>,
    pub(crate) events: watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            work: watch::channel(0).0,
            events: watch::channel(0).0,
        }
    }
}

impl Signals {
    pub fn work_changed(&self) {
        self.work.send_modify(|v| *v += 1);
        self.events_changed();
    }
    pub fn events_changed(&self) {
        self.events.send_modify(|v| *v += 1);
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub blobs: BlobStore,
    pub lease: LeasePolicy,
    pub signals: Signals,
    pub shutdown: CancellationToken,
    /// Limiters for the providers and models workers call.
    pub llm: Arc<llm_gate::LlmGate>,
    /// When this server started (its leases' startup grace counts from here).
    pub started_at: crate::domain::Micros,
    /// Whether requests need tokens, and which.
    pub auth: Arc<auth::Auth>,
    /// The names requests may address this server by.
    pub hosts: guard::Hosts,
    /// The job kinds a submitted spec may use.
    pub allowed_kinds: Arc<Vec<String>>,
    /// The model provider names a submitted spec may pick.
    pub providers: Arc<Vec<String>>,
    /// Long-polls held per client ([`caps`]).
    pub long_polls: Arc<caps::Held>,
    /// Event streams held per client.
    pub streams: Arc<caps::Held>,
    /// Where submitted specs are planned ([`crate::planner`]).
    pub planner: crate::planner::Planner,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source} (is another server running there? pick another --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("the data directory {0} is in use by another Assay server (one server per data directory; stop it or pick another --data-dir)")]
    DataDirInUse(PathBuf),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("refusing to listen on {0} without authentication: anyone who can reach it could run jobs on the workers. Create a token (`assay token create --data-dir DIR --scope admin`) and leave authentication on, listen on loopback (127.0.0.1), or pass --insecure-no-auth if the network is yours alone")]
    AuthRequired(SocketAddr),
}

/// Two servers on one SQLite database would each think they own every lease: refuse.
fn lock_data_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, ServerError> {
    let io = |source| ServerError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // The database, blobs and answers are no other local user's to read, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("server.lock"))
        .map_err(io)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| ServerError::DataDirInUse(dir.to_path_buf()))
}

pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    tasks: TaskTracker,
    /// Held while the server runs: one server per data directory.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl RunningServer {
    /// Wait until the server has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

pub async fn open_store(data_dir: &std::path::Path) -> Result<Arc<dyn Store>, ServerError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let store = crate::store::sqlite::SqliteStore::open(&data_dir.join("assay.db")).await?;
    Ok(Arc::new(store))
}

/// Bind, then serve and reconcile in the background until `shutdown` is cancelled.
pub async fn start(
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, ServerError> {
    if !config.require_auth && !config.insecure_no_auth && !config.listen.ip().is_loopback() {
        return Err(ServerError::AuthRequired(config.listen));
    }
    let acceptor = match &config.tls {
        Some(files) => Some(tls::acceptor(&files.cert, &files.key)?),
        None => None,
    };
    let lock = lock_data_dir(&config.data_dir)?;
    let store = open_store(&config.data_dir).await?;
    if config.require_auth
        && config.memory_tokens.is_empty()
        && store.tokens().await?.iter().all(|t| t.revoked_at.is_some())
    {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "authentication is on and no token exists yet: create one with `assay token create --data-dir DIR --scope admin` (it works while the server runs)"
        );
    }
    // A submission cut short by a crash was never visible: nothing of it may stay.
    let discarded = store.discard_unfinished_submissions().await?;
    if discarded > 0 {
        tracing::info!(
            pipelines = discarded,
            "discarded pipelines whose submission a crash cut short"
        );
    }
    // Workers may have been running jobs while this server was down: give them time to
    // reconnect and heartbeat before the reconciler reclaims their jobs.
    let started_at = now_micros();
    let grace_until = started_at + config.lease.startup_grace_ms() * crate::domain::MICROS_PER_MS;
    let extended = store.grant_startup_grace(grace_until).await?;
    if extended > 0 {
        tracing::info!(
            jobs = extended,
            "running jobs get one heartbeat interval to be heard from again"
        );
    }
    let blob_dir = config.data_dir.join("blobs");
    let blobs = BlobStore::open(&blob_dir)
        .map_err(|source| ServerError::DataDir {
            path: blob_dir,
            source,
        })?
        .with_limit(config.max_blob_bytes)
        .with_quota(config.blob_quota);
    let state = AppState {
        store,
        blobs,
        lease: config.lease,
        signals: Signals::default(),
        shutdown: shutdown.clone(),
        llm: Arc::default(),
        started_at,
        auth: Arc::new(
            auth::Auth::new(config.require_auth)
                .with_memory_tokens(config.memory_tokens.clone())
                .with_request_rate(config.request_rate)
                .with_worker_ids_per_token(config.worker_ids_per_token),
        ),
        hosts: guard::Hosts::new(config.public_hosts.clone()),
        allowed_kinds: Arc::new(config.allowed_kinds.clone()),
        providers: Arc::new(config.providers.clone()),
        long_polls: caps::Held::new("long-polls", caps::LONG_POLLS_PER_CLIENT),
        streams: caps::Held::new("event streams", caps::STREAMS_PER_CLIENT),
        planner: config.planner.clone(),
    };
    if !state.planner.is_isolated() {
        tracing::warn!(
            "templated specs are planned inside the server process (it is not the assay binary)"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let tasks = TaskTracker::new();
    let router = app(state.clone());
    tasks.spawn(serve::serve(
        listener,
        acceptor,
        router,
        serve::Bounds {
            caps: serve::ConnectionCaps::new(config.max_connections, config.connections_per_peer),
            header_read_timeout: config.header_read_timeout,
        },
        shutdown.clone(),
    ));
    tasks.spawn(reconcile_loop(state.clone(), config.reconcile_every));
    tasks.spawn(blob_gc_loop(state.clone(), config.blob_gc));
    if let Some(keep) = config.event_retention {
        tasks.spawn(prune_loop(state.clone(), keep));
    }
    tasks.close();
    tracing::info!(%addr, tls = config.tls.is_some(), data_dir = %config.data_dir.display(), "server listening");
    Ok(RunningServer {
        addr,
        state,
        tasks,
        _lock: lock,
    })
}

/// When blobs that no artifact names are deleted.
#[derive(Debug, Clone, Copy)]
pub struct BlobGc {
    /// How often they are looked for.
    pub every: Duration,
    /// How old an unreferenced blob must be (an upload comes just before its report).
    pub grace: Duration,
}

impl Default for BlobGc {
    fn default() -> Self {
        BlobGc {
            every: Duration::from_secs(600),
            grace: blobs::UNREFERENCED_GRACE,
        }
    }
}

/// Deletes blobs no artifact names once they are older than
/// [`blobs::UNREFERENCED_GRACE`]: uploads whose report never came (a worker cut off for
/// good, or a hostile one filling the disk).
async fn blob_gc_loop(state: AppState, gc: BlobGc) {
    let mut ticker = tokio::time::interval(gc.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let store = state.store.clone();
        let swept = state
            .blobs
            .collect_garbage(gc.grace, |digests| {
                let store = store.clone();
                async move { store.referenced_blobs(&digests).await.ok() }
            })
            .await;
        match swept {
            Ok((0, _)) => {}
            Ok((blobs, bytes)) => tracing::info!(blobs, bytes, "unreferenced blobs deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "blob garbage collection failed; retrying next pass")
            }
        }
    }
}

/// Deletes the events of pipelines that finished more than `keep` ago, a batch at a
/// time so that it never holds the database for long.
async fn prune_loop(state: AppState, keep: Duration) {
    let mut ticker = tokio::time::interval(PRUNE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let keep = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
        let before = now_micros().saturating_sub(keep);
        let mut pruned = 0;
        loop {
            match state.store.prune_events(before, PRUNE_BATCH).await {
                Ok(n) if n == PRUNE_BATCH => {
                    pruned += n;
                    tokio::task::yield_now().await;
                }
                Ok(n) => {
                    pruned += n;
                    if pruned > 0 {
                        tracing::info!(pruned, "old events of finished pipelines pruned");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning old events failed; retrying next pass");
                    break;
                }
            }
            if state.shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// The reconciler: the one place that moves time-driven state (leases, timeouts,
/// deadlines, finalization). Store errors are logged and retried on the next tick; the
/// loop itself never dies while the server lives.
async fn reconcile_loop(state: AppState, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        match state.store.reconcile(&state.lease, now_micros()).await {
            Ok(stats) => {
                if stats != Default::default() {
                    tracing::info!(?stats, "reconciler acted");
                    state.signals.work_changed();
                }
            }
            Err(e) => tracing::error!(error = %e, "reconcile pass failed; retrying next tick"),
        }
        // Jobs whose backoff ended are claimable now: wake long-polling workers.
        if let Ok(Some(at)) = state.store.next_retry_at().await {
            if at <= now_micros() {
                state.signals.work_changed();
            }
        }
    }
}
