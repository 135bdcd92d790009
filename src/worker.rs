//! A pull-based worker: it claims jobs from a server over HTTP, runs them, heartbeats its
//! leases, and never loses a finished result: each result is written to a local spool
//! (fsynced) before it is reported, and stays there until the server acknowledges it,
//! across server outages and worker restarts.
//!
//! Shutdown (the token passed to [`run`]): stop claiming, let running jobs finish within
//! the grace period, then stop the rest and hand them back (`released`), flush the spool.

use crate::api::ClaimBody;
use crate::client::{Client, ClientError};
use crate::domain::Failure;
use crate::kinds::{self, JobContext};
use crate::server::blobs::hash_file;
use crate::store::{
    ArtifactRef, ClaimedJob, Heartbeat, HeldLease, Progress, Report, ReportAck, ReportOutcome,
    StopReason, WorkerRegistration,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub server: String,
    pub id: String,
    pub name: String,
    pub kinds: Vec<String>,
    pub concurrency: usize,
    /// Slots for `generate` jobs, apart from `concurrency`: they mostly wait on providers.
    pub generate_concurrency: usize,
    pub spool_dir: PathBuf,
    /// How long running jobs may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// How long to keep trying to deliver spooled results at shutdown before leaving them
    /// on disk for the next start.
    pub drain_timeout: Duration,
    /// How long one claim waits on the server for work (a long-poll). Shutdown waits
    /// for an outstanding claim, so this bounds how long stopping takes.
    pub claim_wait: Duration,
    /// The API token (scope `worker`) sent with every request, if the server needs one.
    pub token: Option<Secret>,
    /// PEM certificates to trust for an HTTPS server (`--ca-file`).
    pub ca_pem: Option<Vec<u8>>,
    /// The folders whose apps a job may name by path (`--app-root`); none by default.
    /// See [`kinds::app_roots`].
    pub app_roots: Vec<PathBuf>,
    /// The model providers jobs may call, by name, and the key each gets
    /// (`--providers`): a spec only names one of them.
    pub providers: Arc<crate::generation::providers::Providers>,
}

/// A value that never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl WorkerConfig {
    pub fn new(server: &str, spool_dir: PathBuf) -> Self {
        WorkerConfig {
            server: server.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            name: hostname(),
            kinds: kinds::KNOWN_KINDS.iter().map(|k| k.to_string()).collect(),
            concurrency: 4,
            generate_concurrency: 8,
            spool_dir,
            shutdown_grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(15),
            claim_wait: Duration::from_secs(2),
            token: None,
            ca_pem: None,
            app_roots: Vec::new(),
            providers: Arc::default(),
        }
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into())
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot use the spool directory {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the spool directory {0} is in use by another worker (one worker per spool; stop it or pick another --spool-dir)")]
    SpoolInUse(PathBuf),
    #[error("the server refused this worker: {0}")]
    Refused(String),
    #[error("{0}")]
    Setup(String),
}

/// The server does not take this worker's token (missing, unknown, revoked, or without
/// the `worker` scope): nothing it does will succeed until a person fixes that.
fn refused(e: &crate::client::ClientError) -> bool {
    matches!(
        e.code(),
        Some(crate::api::ErrorCode::Unauthorized | crate::api::ErrorCode::Forbidden)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    Cancelled,
    LeaseLost,
    Shutdown,
}

struct Running {
    job_id: i64,
    progress: watch::Receiver<Option<Progress>>,
    cancel: CancellationToken,
    cause: Arc<Mutex<Option<StopCause>>>,
    /// The attempt is over; its result is spooled and on its way to the server.
    finished: bool,
    /// Time spent waiting for a model provider's slot (ms): it does not count against
    /// the attempt timeout.
    waited_ms: Arc<kinds::WaitClock>,
}

/// Attempts this worker holds, keyed by their fencing token: one job can have an old
/// attempt awaiting acknowledgement and a new one running, and orders about one must
/// never touch the other.
type RunningMap = Arc<Mutex<HashMap<String, Running>>>;

/// A finished attempt waiting to be acknowledged: the report and where its files are.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpoolEntry {
    report: Report,
    dir: Option<PathBuf>,
}

/// A batch of entries that is on disk (fsynced) and waits for delivery.
struct SpooledBatch {
    path: PathBuf,
    entries: Vec<SpoolEntry>,
}

/// Batches are cut at this many entries or about this many bytes of JSON, so that one
/// request stays well under the server's body limit.
const BATCH_ENTRIES: usize = 512;
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Deliveries in flight at once: a slow upload does not hold up small results.
const PARALLEL_DELIVERIES: usize = 4;

/// A worker's folder: `batches/` (finished results until acknowledged), `work/` (each
/// attempt's output folder, `apps/` unpacked apps), `procs/` (what supervisors started,
/// see [`crate::supervise`]) and `scratch/` (temporary files). One worker at a time.
struct Spool {
    batches: PathBuf,
    work: PathBuf,
    procs: PathBuf,
    scratch: PathBuf,
    /// Batches the server could not be reached to take.
    stuck: StuckDeliveries,
    /// Held while the worker runs: a second worker on this spool would take the first
    /// one's processes and files for a dead predecessor's.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// How many batches are waiting to be retried because the server could not be reached.
/// While any is, the worker claims nothing: a job whose lease lapsed while its result
/// waited here is claimable again at once, and claiming it back before delivering would
/// run it twice instead of keeping the finished result.
#[derive(Default)]
struct StuckDeliveries {
    count: std::sync::atomic::AtomicUsize,
    cleared: tokio::sync::Notify,
}

impl StuckDeliveries {
    fn stuck(&self) -> StuckGuard<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        StuckGuard(self)
    }

    /// Return once no delivery is stuck; `Err` if `stop` fired first.
    async fn wait_clear(&self, stop: &CancellationToken) -> Result<(), ()> {
        loop {
            let cleared = self.cleared.notified();
            tokio::pin!(cleared);
            cleared.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = cleared => {}
                _ = stop.cancelled() => return Err(()),
            }
        }
    }
}

/// A stuck delivery, counted until it ends either way.
struct StuckGuard<'a>(&'a StuckDeliveries);

impl Drop for StuckGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.cleared.notify_waiters();
        }
    }
}

impl Spool {
    fn open(root: &Path) -> Result<Self, WorkerError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorkerError::Spool { path, source }
        };
        std::fs::create_dir_all(root).map_err(io(root))?;
        // Results, apps and logs are no other local user's to read, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        let lock_path = root.join("worker.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| WorkerError::SpoolInUse(root.to_path_buf()))?;
        let spool = Spool {
            batches: root.join("batches"),
            work: root.join("work"),
            procs: root.join("procs"),
            scratch: root.join("scratch"),
            stuck: StuckDeliveries::default(),
            _lock: lock,
        };
        for dir in [&spool.batches, &spool.work, &spool.procs, &spool.scratch] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        Ok(spool)
    }

    /// After a crash, before anything runs: kill what the dead predecessor's supervisors
    /// started, and empty the scratch folder.
    fn clean_up_after_predecessor(&self) {
        match crate::supervise::sweep_leftovers(&self.procs) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                groups = n,
                "killed processes an earlier run of this worker left running"
            ),
            Err(e) => tracing::error!(error = %e, "cannot read what an earlier run started"),
        }
        if let Ok(entries) = std::fs::read_dir(&self.scratch) {
            for entry in entries.flatten() {
                let path = entry.path();
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(e) = gone {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a leftover scratch file");
                }
            }
        }
    }

    /// Attempt folders (`work/JOB-ATTEMPT`) that no result on its way needs: the output of
    /// attempts that were killed. `apps/` stays (it is pruned by age).
    fn remove_unneeded_attempt_folders(&self, pending: &[SpooledBatch]) -> usize {
        let needed: std::collections::HashSet<std::ffi::OsString> = pending
            .iter()
            .flat_map(|b| b.entries.iter())
            .filter_map(|e| e.dir.as_ref()?.file_name().map(|n| n.to_owned()))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.work) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let attempt_folder =
                name.to_str()
                    .and_then(|n| n.split_once('-'))
                    .is_some_and(|(job, attempt)| {
                        job.parse::<i64>().is_ok() && attempt.parse::<i64>().is_ok()
                    });
            if attempt_folder && !needed.contains(&name) {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(folder = %entry.path().display(), error = %e, "cannot delete an attempt folder")
                    }
                }
            }
        }
        removed
    }

    /// Write a batch durably: temp file, fsync, rename, fsync the directory.
    async fn write_batch(&self, entries: &[SpoolEntry]) -> std::io::Result<PathBuf> {
        use tokio::io::AsyncWriteExt;
        let name = format!(
            "{:020}-{}.json",
            crate::domain::now_micros(),
            uuid::Uuid::new_v4()
        );
        let tmp = self.batches.join(format!(".{name}.tmp"));
        let path = self.batches.join(name);
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(&serde_json::to_vec(entries).expect("spool entries serialize"))
            .await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, &path).await?;
        tokio::fs::File::open(&self.batches)
            .await?
            .sync_all()
            .await?;
        Ok(path)
    }

    /// Batches left by an earlier run, oldest first. A batch whose writing was cut short
    /// (`.NAME.tmp`) is kept if it is whole (its results were never reported) and deleted
    /// if not (its attempts will run again). Unreadable batches are set aside, not deleted,
    /// so nothing is silently lost.
    fn recover(&self) -> Vec<SpooledBatch> {
        let list = || -> Vec<PathBuf> {
            std::fs::read_dir(&self.batches)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default()
        };
        for tmp in list() {
            let Some(name) = tmp.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(batch) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
                continue;
            };
            let whole = std::fs::read(&tmp)
                .ok()
                .is_some_and(|b| serde_json::from_slice::<Vec<SpoolEntry>>(&b).is_ok());
            let kept = if whole {
                std::fs::rename(&tmp, self.batches.join(batch))
            } else {
                std::fs::remove_file(&tmp)
            };
            if let Err(e) = kept {
                tracing::warn!(file = %tmp.display(), error = %e, "cannot tidy a batch cut short");
            }
        }
        let mut files = list();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        let mut out = Vec::new();
        for path in files {
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Vec<SpoolEntry>>(&b)) {
                Ok(Ok(entries)) => out.push(SpooledBatch { path, entries }),
                _ => {
                    tracing::error!(file = %path.display(), "unreadable spool batch set aside as .corrupt");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        out
    }
}

/// Unpacked apps that no job used for this long are deleted when a worker starts.
pub const APP_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let client = Client::with_options(
        &config.server,
        config.token.as_ref().map(|t| t.0.as_str()),
        config.ca_pem.as_deref(),
    )
    .map_err(|e| WorkerError::Setup(format!("--ca-file: {e}")))?;
    let app_roots = Arc::new(
        kinds::app_roots::AppRoots::new(&config.app_roots)
            .map_err(|e| WorkerError::Setup(e.to_string()))?,
    );
    let spool = Arc::new(Spool::open(&config.spool_dir)?);
    let running: RunningMap = Arc::default();
    let heartbeat_ms = Arc::new(AtomicI64::new(1_000));

    // What a killed predecessor started may still run, and write into its folders: it
    // goes first. From here on, whatever this worker starts is recorded in the spool.
    spool.clean_up_after_predecessor();
    if let Err(source) = crate::supervise::record_in(&spool.procs) {
        return Err(WorkerError::Spool {
            path: spool.procs.clone(),
            source,
        });
    }
    kinds::set_scratch_root(&spool.scratch);
    match crate::supervise::namespaces_available() {
        Some(true) => tracing::info!("job programs run in PID namespaces of their own"),
        Some(false) => tracing::warn!(
            "job programs run without PID namespaces (not permitted here, or --no-pid-namespace): \
             they still die with this worker, but one that kills its own supervisor can leave a \
             daemon it moved to a session of its own running"
        ),
        None => {
            tracing::warn!("job programs run without a supervisor: they may outlive this worker")
        }
    }

    let runs_apps = config
        .kinds
        .iter()
        .any(|k| kinds::APP_KINDS.contains(&k.as_str()));
    if runs_apps && crate::sandbox::enabled() {
        crate::sandbox::check().map_err(|e| {
            WorkerError::Setup(format!(
                "{e}; or leave the kinds that start apps ({}) out of --kinds",
                kinds::APP_KINDS.join(", ")
            ))
        })?;
        tracing::info!(
            "analyzed apps run sandboxed (own network, mount and PID namespaces, own user)"
        );
        // A killed predecessor's apps are gone with their namespaces; their cgroups are not.
        match crate::sandbox::sweep_cgroups() {
            0 => {}
            n => tracing::info!(
                cgroups = n,
                "removed the app cgroups of workers that were killed"
            ),
        }
    } else if runs_apps {
        tracing::warn!(
            "analyzed apps run WITHOUT a sandbox (--no-sandbox): they can read what this \
             worker's user can read and reach the network; only for apps you trust"
        );
    }

    // Nothing runs yet: apps no job used for a week, and staging folders a killed run left,
    // can go.
    match kinds::inputs::prune_apps(&spool.work, APP_RETENTION) {
        Ok(0) => {}
        Ok(n) => tracing::info!(folders = n, "pruned unused app folders"),
        Err(e) => tracing::warn!(error = %e, "pruning unused app folders failed"),
    }

    // A wrong token is said at once, not retried forever (unreachable: the loops below wait).
    match client.whoami().await {
        Ok(me) if me.auth && !me.scopes.contains(&crate::domain::Scope::Worker) => {
            return Err(WorkerError::Refused(format!(
                "its token ({}) lacks the `worker` scope; create one with `assay token create --scope worker`",
                me.name.unwrap_or_default()
            )));
        }
        Err(e) if refused(&e) => return Err(WorkerError::Refused(e.to_string())),
        _ => {}
    }

    // Deliver what an earlier run of this worker finished *before* registering:
    // registering fails whatever this worker id still held, so results must land first.
    let recovered = spool.recover();
    match spool.remove_unneeded_attempt_folders(&recovered) {
        0 => {}
        n => tracing::info!(
            folders = n,
            "deleted the output folders of attempts an earlier run did not finish"
        ),
    }
    if !recovered.is_empty() {
        tracing::info!(
            batches = recovered.len(),
            "delivering results spooled by an earlier run"
        );
        for batch in recovered {
            if !deliver(&client, &spool, batch, &running, &shutdown).await {
                tracing::warn!("stopped before earlier results were delivered; they stay spooled");
                return Ok(());
            }
        }
    }

    let registration = WorkerRegistration {
        id: config.id.clone(),
        name: config.name.clone(),
        kinds: config.kinds.clone(),
    };
    let mut backoff = Backoff::default();
    loop {
        match client.register(&registration).await {
            Ok(reply) => {
                if let Some(ms) = reply.get("heartbeat_ms").and_then(|v| v.as_i64()) {
                    heartbeat_ms.store(ms, Ordering::Relaxed);
                }
                break;
            }
            Err(e) if refused(&e) => return Err(WorkerError::Refused(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the server; retrying");
                if backoff.wait(&shutdown).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    tracing::info!(worker = %config.id, server = %config.server, concurrency = config.concurrency, "worker started");
    if app_roots.roots().is_empty() {
        tracing::info!("no --app-root: jobs may analyze only apps fetched from upstream jobs");
    } else {
        let roots: Vec<String> = app_roots
            .roots()
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        tracing::info!(roots = %roots.join(":"), "jobs may analyze app folders inside these roots");
    }

    // Finished results flow: job task → spool writer (fsync per group) → deliverer.
    let (results_tx, results_rx) = mpsc::unbounded_channel::<SpoolEntry>();
    let (spooled_tx, spooled_rx) = mpsc::unbounded_channel::<SpooledBatch>();
    let drain_stop = CancellationToken::new();
    let writer = tokio::spawn(spool_writer(spool.clone(), results_rx, spooled_tx));
    let deliverer = tokio::spawn(deliverer(
        client.clone(),
        spool.clone(),
        spooled_rx,
        running.clone(),
        drain_stop.clone(),
    ));
    let heartbeat_stop = CancellationToken::new();
    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        config.id.clone(),
        running.clone(),
        heartbeat_ms.clone(),
        heartbeat_stop.clone(),
    ));

    let jobs = TaskTracker::new();
    let shared = ClaimShared {
        config: &config,
        client: &client,
        registration: &registration,
        spool: &spool,
        running: &running,
        results_tx: &results_tx,
        heartbeat_ms: &heartbeat_ms,
        jobs: &jobs,
        app_roots: &app_roots,
        reregistered: tokio::sync::Mutex::new(None),
    };
    futures::future::join_all(
        pools(&config)
            .into_iter()
            .map(|pool| claim_loop(&shared, pool, &shutdown)),
    )
    .await;

    // Soft stop: no more claims; running jobs get the grace period to finish.
    tracing::info!("worker stopping: waiting for running jobs");
    jobs.close();
    if tokio::time::timeout(config.shutdown_grace, jobs.wait())
        .await
        .is_err()
    {
        let map = running.lock().expect("running map lock");
        let unfinished = map.values().filter(|r| !r.finished).count();
        tracing::warn!(
            jobs = unfinished,
            "grace period over: stopping and handing back running jobs"
        );
        for r in map.values().filter(|r| !r.finished) {
            r.cause
                .lock()
                .expect("cause lock")
                .get_or_insert(StopCause::Shutdown);
            r.cancel.cancel();
        }
    }
    jobs.wait().await;
    // Every result is now in the channel; the writer puts all of it on disk and ends.
    drop(results_tx);
    let _ = writer.await;
    // Deliver what we can in time; the rest stays spooled for the next start.
    if tokio::time::timeout(config.drain_timeout, async {
        while !running.lock().expect("running map lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_err()
    {
        tracing::warn!("results not yet acknowledged stay in the spool for the next start");
    }
    drain_stop.cancel();
    let _ = deliverer.await;
    heartbeat_stop.cancel();
    let _ = heartbeats.await;
    let _ = client.worker_stopped(&config.id).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// A set of kinds with its own slots. Model calls wait on providers, not on this machine:
/// `generate` jobs get their own slots so that a model that is backing off cannot hold
/// every slot while the analyses of apps already made wait.
struct Pool {
    kinds: Vec<String>,
    concurrency: usize,
}

fn pools(config: &WorkerConfig) -> Vec<Pool> {
    let (model_bound, local): (Vec<String>, Vec<String>) =
        config.kinds.iter().cloned().partition(|k| k == "generate");
    [
        Pool {
            kinds: local,
            concurrency: config.concurrency,
        },
        Pool {
            kinds: model_bound,
            concurrency: config.generate_concurrency,
        },
    ]
    .into_iter()
    .filter(|p| !p.kinds.is_empty())
    .collect()
}

struct ClaimShared<'a> {
    config: &'a WorkerConfig,
    client: &'a Client,
    registration: &'a WorkerRegistration,
    spool: &'a Arc<Spool>,
    running: &'a RunningMap,
    results_tx: &'a mpsc::UnboundedSender<SpoolEntry>,
    heartbeat_ms: &'a Arc<AtomicI64>,
    jobs: &'a TaskTracker,
    app_roots: &'a Arc<kinds::app_roots::AppRoots>,
    /// When the worker last registered again after the server forgot it: registering
    /// fails what the worker holds, so the pools must not each do it.
    reregistered: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Claim jobs of the pool's kinds whenever it has free slots, until shutdown.
async fn claim_loop(shared: &ClaimShared<'_>, pool: Pool, shutdown: &CancellationToken) {
    let ClaimShared {
        config,
        client,
        registration,
        ..
    } = *shared;
    let slots = Arc::new(Semaphore::new(pool.concurrency.max(1)));
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
            _ = shutdown.cancelled() => break,
        };
        if shared.spool.stuck.wait_clear(shutdown).await.is_err() {
            break;
        }
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        // The claim is not abandoned mid-flight (the server may already have leased
        // jobs to us); it is short so shutdown is prompt.
        let body = ClaimBody {
            worker_id: config.id.clone(),
            kinds: pool.kinds.clone(),
            limit: permits.len() as i64,
            wait_ms: config.claim_wait.as_millis() as u64,
        };
        let claimed = match client.claim(&body).await {
            Ok((claimed, hb)) => {
                shared.heartbeat_ms.store(hb, Ordering::Relaxed);
                backoff = Backoff::default();
                claimed
            }
            Err(e) => {
                if e.code() == Some(crate::api::ErrorCode::UnknownWorker) {
                    let mut last = shared.reregistered.lock().await;
                    if last.is_none_or(|at| at.elapsed() > Duration::from_secs(2)) {
                        let _ = client.register(registration).await;
                        *last = Some(tokio::time::Instant::now());
                    }
                } else {
                    tracing::warn!(error = %e, "claim failed; retrying");
                    let _ = backoff.wait(shutdown).await;
                }
                continue;
            }
        };
        for job in claimed {
            let permit = permits
                .pop()
                .expect("never claims more than its free slots");
            let ctx = JobRun {
                worker_id: config.id.clone(),
                client: client.clone(),
                spool: shared.spool.clone(),
                running: shared.running.clone(),
                tx: shared.results_tx.clone(),
                app_roots: shared.app_roots.clone(),
                providers: config.providers.clone(),
            };
            shared.jobs.spawn(async move {
                ctx.run(job).await;
                drop(permit);
            });
        }
    }
}

struct JobRun {
    worker_id: String,
    client: Client,
    spool: Arc<Spool>,
    running: RunningMap,
    tx: mpsc::UnboundedSender<SpoolEntry>,
    app_roots: Arc<kinds::app_roots::AppRoots>,
    providers: Arc<crate::generation::providers::Providers>,
}

/// Kinds that write files; others get no output directory (it costs a few syscalls that
/// matter at thousands of jobs per second).
fn kind_writes_files(kind: &str) -> bool {
    matches!(
        kind,
        "command" | "blob" | "generate" | "static" | "dynamic" | "performance" | "ai"
    )
}

impl JobRun {
    async fn run(self, job: ClaimedJob) {
        let cancel = CancellationToken::new();
        let cause: Arc<Mutex<Option<StopCause>>> = Arc::default();
        let (progress_tx, progress_rx) = watch::channel(None);
        let waited_ms: Arc<kinds::WaitClock> = Arc::default();
        self.running.lock().expect("running map lock").insert(
            job.token.clone(),
            Running {
                job_id: job.job_id,
                progress: progress_rx,
                cancel: cancel.clone(),
                cause: cause.clone(),
                finished: false,
                waited_ms: waited_ms.clone(),
            },
        );
        let output_dir = self
            .spool
            .work
            .join(format!("{}-{}", job.job_id, job.attempt));
        let has_dir = kind_writes_files(&job.kind);
        let mut prepared = Ok(());
        if has_dir {
            prepared = tokio::fs::create_dir_all(&output_dir).await.map_err(|e| {
                Failure::retryable("io", format!("creating {}: {e}", output_dir.display()))
            });
        }
        let mut params = job.params.clone();
        // Before the kind or the analysis cache reads anything: a folder the spec names
        // must lie inside this worker's roots.
        if prepared.is_ok() {
            match self.app_roots.confine(&job.params) {
                Ok(Some(confined)) => params = confined,
                Ok(None) => {}
                Err(f) => prepared = Err(f),
            }
        }
        // Then the kinds read only the worker's own copies of those folders: nothing
        // swapped inside the root after the check is followed out of it.
        let mut app_source = None;
        if prepared.is_ok() {
            let apps = self.spool.work.join("apps");
            let checked = params.clone();
            let taken = tokio::task::spawn_blocking(move || {
                kinds::app_roots::snapshot_folders(&checked, &apps)
            })
            .await
            .unwrap_or_else(|e| Err(Failure::retryable("io", e.to_string())));
            match taken {
                Ok((snapshotted, source)) => {
                    params = snapshotted;
                    app_source = source;
                }
                Err(f) => prepared = Err(f),
            }
        }
        if prepared.is_ok() && job.params.get("app_from").is_some() {
            progress_tx.send_replace(Some(Progress {
                step: "fetching the app".into(),
                percent: None,
                message: None,
            }));
            let inputs =
                kinds::inputs::resolve(&params, job.job_id, &self.client, &self.spool.work);
            prepared = tokio::select! {
                r = inputs => r.map(|p| params = p),
                _ = cancel.cancelled() => Err(Failure::retryable("stopped", "stopped while fetching the app")),
            };
        }
        let ctx = JobContext {
            job_id: job.job_id,
            key: job.key.clone(),
            attempt: job.attempt,
            params,
            item: job.item.clone(),
            output_dir: output_dir.clone(),
            cancel: cancel.clone(),
            progress: progress_tx,
            server: Some(self.client.clone()),
            waited_ms: waited_ms.clone(),
            providers: self.providers.clone(),
            app_source,
        };
        let result = match prepared {
            Err(f) => Err(f),
            Ok(()) => {
                let work = kinds::run(&job.kind, &ctx);
                tokio::pin!(work);
                let started = tokio::time::Instant::now();
                let timeout = Duration::from_millis(job.timeout_ms.max(1) as u64);
                // The deadline moves out by the time spent waiting for a provider's slot.
                let deadline = || {
                    started + timeout + Duration::from_millis(waited_ms.total_ms().max(0) as u64)
                };
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = tokio::time::sleep_until(deadline()) => {
                            if tokio::time::Instant::now() < deadline() {
                                continue;
                            }
                            cancel.cancel();
                            let _ = work.await;
                            break Err(Failure::retryable("timeout", format!("the attempt ran past its timeout of {} ms", job.timeout_ms)));
                        }
                    }
                }
            }
        };
        let stop = *cause.lock().expect("cause lock");
        let artifacts = if has_dir {
            collect_artifacts(&output_dir).await
        } else {
            Ok(Vec::new())
        };
        // A result that was produced is reported as such, whatever stop order raced it:
        // a finished result is never thrown away.
        let outcome = match (result, artifacts, stop) {
            (Ok(out), Ok(artifacts), _) => ReportOutcome::Completed {
                result: out.result,
                artifacts,
            },
            (_, Err(e), _) => ReportOutcome::Failed {
                failure: Failure::retryable("io", format!("collecting artifacts: {e}")),
                artifacts: vec![],
            },
            (Err(_), Ok(_), Some(StopCause::Shutdown)) => ReportOutcome::Released,
            (Err(_), Ok(_), Some(StopCause::Cancelled)) => ReportOutcome::Cancelled,
            (Err(failure), Ok(artifacts), _) => ReportOutcome::Failed { failure, artifacts },
        };
        if let Some(r) = self
            .running
            .lock()
            .expect("running map lock")
            .get_mut(&job.token)
        {
            r.finished = true;
        }
        let report = Report {
            job_id: job.job_id,
            attempt: job.attempt,
            token: job.token,
            worker_id: self.worker_id.clone(),
            outcome,
        };
        // The entry stays in `running` (and keeps being heartbeated) until acknowledged.
        let _ = self.tx.send(SpoolEntry {
            report,
            dir: has_dir.then_some(output_dir),
        });
    }
}

async fn collect_artifacts(dir: &Path) -> std::io::Result<Vec<ArtifactRef>> {
    let mut out = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if !entry.file_type().await?.is_file() {
            continue;
        }
        let (sha256, size) = hash_file(&entry.path()).await?;
        out.push(ArtifactRef {
            name: entry.file_name().to_string_lossy().to_string(),
            sha256,
            size: size as i64,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn heartbeat_loop(
    client: Client,
    worker_id: String,
    running: RunningMap,
    every_ms: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    // Heartbeats go out every interval; fresh progress goes out sooner, so that people
    // watching see steps move without the lease traffic growing.
    const PROGRESS_EVERY: Duration = Duration::from_millis(250);
    // A failed heartbeat is tried again soon, not an interval later: the lease lasts two
    // intervals, and one fast failure (a reset connection, a restarting server) must not
    // cost the worker its leases.
    const FIRST_RETRY: Duration = Duration::from_millis(50);
    let mut sent: HashMap<String, Progress> = HashMap::new();
    let mut last_sent = tokio::time::Instant::now();
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let every = Duration::from_millis(every_ms.load(Ordering::Relaxed).max(20) as u64);
        let mut wake = tokio::time::Instant::now() + PROGRESS_EVERY.min(every);
        if let Some((at, _)) = retry {
            wake = wake.min(at);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.cancelled() => return,
        }
        let retry_due = retry.is_some_and(|(at, _)| tokio::time::Instant::now() >= at);
        let due = retry_due || last_sent.elapsed() + Duration::from_millis(5) >= every;
        if !due {
            let map = running.lock().expect("running map lock");
            let progressed = map.iter().any(|(token, r)| {
                let current = r.progress.borrow();
                current.is_some() && current.as_ref() != sent.get(token)
            });
            if !progressed {
                continue;
            }
        }
        last_sent = tokio::time::Instant::now();
        let leases: Vec<HeldLease> = {
            let map = running.lock().expect("running map lock");
            sent.retain(|token, _| map.contains_key(token));
            map.iter()
                .map(|(token, r)| {
                    let current = r.progress.borrow().clone();
                    let changed = match (&current, sent.get(token)) {
                        (Some(p), Some(old)) => p != old,
                        (Some(_), None) => true,
                        _ => false,
                    };
                    HeldLease {
                        job_id: r.job_id,
                        token: token.clone(),
                        progress: if changed { current } else { None },
                        finished: r.finished,
                        waited_ms: r.waited_ms.total_ms(),
                    }
                })
                .collect()
        };
        let hb = Heartbeat {
            worker_id: worker_id.clone(),
            leases,
        };
        // A heartbeat without an answer after a third of an interval is given up and tried
        // again, not waited for: sent an interval after the last one that got through, the
        // retry still lands within the lease (two intervals less two reconciler ticks).
        match client
            .heartbeat(&hb, (every / 3).max(Duration::from_millis(100)))
            .await
        {
            Ok(reply) => {
                retry = None;
                for lease in &hb.leases {
                    if let Some(p) = &lease.progress {
                        sent.insert(lease.token.clone(), p.clone());
                    }
                }
                if let Some(until) = reply.quarantined_until {
                    tracing::warn!(until = %crate::domain::format_time(until), "this worker is quarantined after repeated failures");
                }
                let map = running.lock().expect("running map lock");
                for order in reply.stop {
                    if let Some(r) = map.get(&order.token) {
                        let cause = match order.reason {
                            StopReason::Cancelled => StopCause::Cancelled,
                            StopReason::LeaseLost => StopCause::LeaseLost,
                        };
                        r.cause.lock().expect("cause lock").get_or_insert(cause);
                        r.cancel.cancel();
                    }
                }
            }
            Err(e) => {
                let backoff = retry.map_or(FIRST_RETRY, |(_, b)| (b * 2).min(every / 4));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "heartbeat failed; jobs keep running");
                retry = Some((tokio::time::Instant::now() + backoff, backoff));
            }
        }
    }
}

/// Put every finished result on disk as soon as it arrives (one fsync per group), then
/// hand the batch to the deliverer. Ends when every job task is done and the channel is
/// empty, so nothing finished is only in memory at shutdown.
async fn spool_writer(
    spool: Arc<Spool>,
    mut rx: mpsc::UnboundedReceiver<SpoolEntry>,
    out: mpsc::UnboundedSender<SpooledBatch>,
) {
    let mut buffer = Vec::with_capacity(BATCH_ENTRIES);
    loop {
        buffer.clear();
        if rx.recv_many(&mut buffer, BATCH_ENTRIES).await == 0 {
            return;
        }
        for entries in split_by_size(std::mem::take(&mut buffer)) {
            let path = match spool.write_batch(&entries).await {
                Ok(p) => p,
                Err(e) => {
                    // The disk refuses: deliver straight from memory rather than lose results.
                    tracing::error!(error = %e, "cannot write the spool; delivering without it");
                    PathBuf::new()
                }
            };
            let _ = out.send(SpooledBatch { path, entries });
        }
    }
}

fn split_by_size(entries: Vec<SpoolEntry>) -> Vec<Vec<SpoolEntry>> {
    let mut batches = vec![Vec::new()];
    let mut bytes = 0usize;
    for e in entries {
        let size = serde_json::to_vec(&e.report).map(|v| v.len()).unwrap_or(0);
        if bytes + size > BATCH_BYTES && !batches.last().expect("one batch").is_empty() {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        batches.last_mut().expect("one batch").push(e);
    }
    batches
}

/// Deliver spooled batches, several at once, until acknowledged or stopped.
async fn deliverer(
    client: Client,
    spool: Arc<Spool>,
    mut rx: mpsc::UnboundedReceiver<SpooledBatch>,
    running: RunningMap,
    stop: CancellationToken,
) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            batch = rx.recv(), if in_flight.len() < PARALLEL_DELIVERIES => {
                let Some(batch) = batch else { break };
                let (client, spool, running, stop) = (client.clone(), spool.clone(), running.clone(), stop.clone());
                in_flight.spawn(async move { deliver(&client, &spool, batch, &running, &stop).await });
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = stop.cancelled() => break,
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Deliver one batch; returns false when stopped first (the batch stays on disk). A batch
/// the server refuses is split so that one bad entry cannot take the others down with it.
async fn deliver(
    client: &Client,
    spool: &Spool,
    batch: SpooledBatch,
    running: &RunningMap,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::default();
    let mut stuck = None;
    loop {
        match try_deliver(client, &batch.entries).await {
            Ok(acks) => {
                for (entry, ack) in batch.entries.iter().zip(&acks) {
                    if *ack != ReportAck::Accepted {
                        tracing::info!(
                            job = entry.report.job_id,
                            attempt = entry.report.attempt,
                            ?ack,
                            "result not applied: a newer attempt owns the job"
                        );
                    }
                    forget(running, entry);
                }
                if !batch.path.as_os_str().is_empty() {
                    let _ = std::fs::remove_file(&batch.path);
                }
                return true;
            }
            // A token revoked meanwhile refuses the result, not the work: it stays spooled
            // until a worker with a good token delivers it.
            Err(e)
                if e.is_transient()
                    || refused(&e)
                    || e.code() == Some(crate::api::ErrorCode::MissingBlob) =>
            {
                tracing::warn!(error = %e, results = batch.entries.len(), "cannot deliver results yet; they are spooled and will be retried");
                if e.is_transient() || refused(&e) {
                    stuck.get_or_insert_with(|| spool.stuck.stuck());
                }
                if backoff.wait(stop).await.is_err() {
                    return false;
                }
            }
            Err(e) if batch.entries.len() > 1 => {
                tracing::warn!(error = %e, results = batch.entries.len(), "the server refused a batch; delivering its results one by one");
                for entry in batch.entries.clone() {
                    let path = spool
                        .write_batch(std::slice::from_ref(&entry))
                        .await
                        .unwrap_or_default();
                    let single = SpooledBatch {
                        path,
                        entries: vec![entry],
                    };
                    if !Box::pin(deliver(client, spool, single, running, stop)).await {
                        return false;
                    }
                }
                if !batch.path.as_os_str().is_empty() {
                    let _ = std::fs::remove_file(&batch.path);
                }
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, file = %batch.path.display(), "the server refused this result; it is kept as .rejected");
                if !batch.path.as_os_str().is_empty() {
                    let _ = std::fs::rename(&batch.path, batch.path.with_extension("rejected"));
                }
                for entry in &batch.entries {
                    forget(running, entry);
                }
                return true;
            }
        }
    }
}

fn forget(running: &RunningMap, entry: &SpoolEntry) {
    running
        .lock()
        .expect("running map lock")
        .remove(&entry.report.token);
    if let Some(dir) = &entry.dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

async fn try_deliver(
    client: &Client,
    entries: &[SpoolEntry],
) -> Result<Vec<ReportAck>, ClientError> {
    for entry in entries {
        let (ReportOutcome::Completed { artifacts, .. } | ReportOutcome::Failed { artifacts, .. }) =
            &entry.report.outcome
        else {
            continue;
        };
        let Some(dir) = &entry.dir else { continue };
        for a in artifacts {
            if !client.has_blob(&a.sha256).await? {
                client.put_blob(&a.sha256, &dir.join(&a.name)).await?;
            }
        }
    }
    client
        .report(entries.iter().map(|e| e.report.clone()).collect())
        .await
}

/// Exponential backoff with jitter for reconnecting: 100 ms doubling to 5 s.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// Sleep; `Err` if `stop` fired first.
    async fn wait(&mut self, stop: &CancellationToken) -> Result<(), ()> {
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        let wait = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = stop.cancelled() => Err(()),
        }
    }
}
