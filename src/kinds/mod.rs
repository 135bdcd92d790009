//! Job kinds: what a worker can do. Each kind validates its params at spec time (so a bad
//! spec fails before anything runs) and runs on a worker with a [`JobContext`].
//!
//! Adding a kind: a module with `validate` and `run`, and one line in each of
//! [`KNOWN_KINDS`], [`validate_params`] and [`run`].

pub mod app_analysis;
pub mod app_roots;
pub mod cache;
pub mod command;
pub mod generate;
pub mod inputs;
pub mod internal;
pub mod judge_gate;
pub mod static_analysis;

use crate::domain::Failure;
use crate::store::Progress;
use serde_json::Value;
use std::path::PathBuf;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const KNOWN_KINDS: &[&str] = &[
    "command",
    "generate",
    "static",
    "dynamic",
    "performance",
    "ai",
    "noop",
    "sleep",
    "fail",
    "blob",
];

/// Kinds that start the analyzed app: they run it in the sandbox ([`crate::sandbox`]).
pub const APP_KINDS: &[&str] = &["dynamic", "performance"];

/// Kinds whose jobs make an app (`app.tar`): the only stages `app_from` may name, and the
/// only upstream jobs a worker unpacks an app from. An `app.tar` any other job reports (a
/// rogue worker's) is never run.
pub const APP_MAKING_KINDS: &[&str] = &["generate"];

/// Kinds that run a program the spec chooses: a server allows them only when told
/// (`assay server --allow-kinds`).
pub const PROGRAM_KINDS: &[&str] = &["command"];

/// What a server allows unless told otherwise: every kind but those in [`PROGRAM_KINDS`].
pub fn default_allowed_kinds() -> Vec<String> {
    KNOWN_KINDS
        .iter()
        .filter(|k| !PROGRAM_KINDS.contains(k))
        .map(|k| k.to_string())
        .collect()
}

/// Why a stage's params are refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("{0}")]
    Invalid(String),
    /// The params choose a model provider's URL or key variable, which only a providers
    /// file may (see [`crate::generation::providers`]): a server answers with its own
    /// error code, so a client can tell this apart from a typo.
    #[error("{0}")]
    ProviderInSpec(String),
}

impl From<String> for ParamError {
    fn from(message: String) -> Self {
        ParamError::Invalid(message)
    }
}

pub fn validate_params(kind: &str, params: &Value) -> Result<(), ParamError> {
    let params = &inputs::with_placeholder_app(params);
    Ok(match kind {
        "command" => command::validate(params),
        "generate" => return generate::validate(params),
        "static" => static_analysis::validate(params),
        "dynamic" => app_analysis::validate_dynamic(params),
        "performance" => app_analysis::validate_performance(params),
        "ai" => app_analysis::validate_ai(params),
        "noop" => Ok(()),
        "sleep" => internal::validate_sleep(params),
        "fail" => internal::validate_fail(params),
        "blob" => internal::validate_blob(params),
        other => Err(format!("unknown job kind `{other}`")),
    }?)
}

static SCRATCH_ROOT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Where kinds keep temporary files that are not a job's artifacts (an app's own temporary
/// folder, a tool's scratch space, the log of an app that outlives its job): the worker's
/// spool (`SPOOL/scratch`), emptied when a worker starts, so that nothing a killed worker
/// left there stays. The system's temporary folder when no worker said.
pub fn scratch_root() -> PathBuf {
    SCRATCH_ROOT
        .lock()
        .expect("scratch root lock")
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

pub fn set_scratch_root(dir: &std::path::Path) {
    *SCRATCH_ROOT.lock().expect("scratch root lock") = Some(dir.to_path_buf());
}

/// A temporary folder under [`scratch_root`], deleted when dropped.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let root = scratch_root();
    std::fs::create_dir_all(&root)?;
    tempfile::Builder::new().prefix("scratch-").tempdir_in(root)
}

/// Everything a running job may use. Files written to `output_dir` are kept as artifacts.
pub struct JobContext {
    pub job_id: i64,
    pub key: String,
    pub attempt: i64,
    pub params: Value,
    pub item: Value,
    pub output_dir: PathBuf,
    /// Cancelled when the job must stop: cancelled, timed out, lease lost, or shutdown.
    pub cancel: CancellationToken,
    /// The latest progress; the worker sends it with the next heartbeat.
    pub progress: watch::Sender<Option<Progress>>,
    /// The server the job came from: for model calls, and upstream jobs' artifacts.
    /// `None` when a kind runs outside a worker (in tests).
    pub server: Option<crate::client::Client>,
    /// Time spent waiting for a model provider's slot: the attempt's timeout is extended
    /// by as much (on the worker and, through heartbeats, on the server).
    pub waited_ms: std::sync::Arc<WaitClock>,
    /// The model providers this worker may call, by name (`assay worker --providers`).
    pub providers: std::sync::Arc<crate::generation::providers::Providers>,
    /// The folder the job named, when `params.app` is the worker's snapshot of it
    /// ([`crate::analysis::snapshot`]): results name the folder, not the snapshot.
    pub app_source: Option<PathBuf>,
}

/// How long a job has waited for something outside it (a model provider's slot),
/// including a wait still going on.
#[derive(Debug, Default)]
pub struct WaitClock {
    done_ms: std::sync::atomic::AtomicI64,
    /// When the current wait began (ms on `since_ms`'s clock), 0 when not waiting.
    since_ms: std::sync::atomic::AtomicI64,
}

impl WaitClock {
    fn now_ms() -> i64 {
        crate::domain::now_micros() / crate::domain::MICROS_PER_MS
    }

    pub fn begin(&self) {
        use std::sync::atomic::Ordering;
        let _ = self.since_ms.compare_exchange(
            0,
            Self::now_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub fn end(&self) {
        use std::sync::atomic::Ordering;
        let since = self.since_ms.swap(0, Ordering::Relaxed);
        if since > 0 {
            self.done_ms
                .fetch_add((Self::now_ms() - since).max(0), Ordering::Relaxed);
        }
    }

    /// Everything waited so far, the current wait included.
    pub fn total_ms(&self) -> i64 {
        use std::sync::atomic::Ordering;
        let since = self.since_ms.load(Ordering::Relaxed);
        let current = if since > 0 {
            (Self::now_ms() - since).max(0)
        } else {
            0
        };
        self.done_ms.load(Ordering::Relaxed) + current
    }
}

impl JobContext {
    /// The app folder as results name it: the folder the job named, not the snapshot.
    pub fn shown_app(&self, app: &std::path::Path) -> PathBuf {
        self.app_source.clone().unwrap_or_else(|| app.to_path_buf())
    }

    pub fn step(&self, step: &str, percent: Option<f64>, message: Option<String>) {
        self.progress.send_replace(Some(Progress {
            step: step.to_string(),
            percent,
            message,
        }));
    }
}

/// A finished job: its JSON result. Artifacts are the files left in `output_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutput {
    pub result: Value,
}

/// The absolute app folder an analysis job names, or a permanent failure saying it is
/// not there.
pub(crate) fn app_folder(path: &std::path::Path) -> Result<PathBuf, Failure> {
    let app = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if !app.is_dir() {
        return Err(Failure::permanent(
            "app_not_found",
            format!(
                "app folder `{}` does not exist on this worker",
                app.display()
            ),
        ));
    }
    Ok(app)
}

/// Run a job of `kind`; analyses go through the [`cache`].
pub async fn run(kind: &str, ctx: &JobContext) -> Result<JobOutput, Failure> {
    let key = cache::key(kind, &ctx.params).await;
    if let Some(key) = &key {
        if let Some(hit) = cache::load(key, ctx) {
            ctx.step(
                "cached",
                Some(100.0),
                Some("an identical analysis was reused".into()),
            );
            return Ok(hit);
        }
    }
    let out = run_uncached(kind, ctx).await;
    if let (Some(key), Ok(out)) = (&key, &out) {
        cache::store(key, ctx, out);
    }
    out
}

async fn run_uncached(kind: &str, ctx: &JobContext) -> Result<JobOutput, Failure> {
    match kind {
        "command" => command::run(ctx).await,
        "generate" => generate::run(ctx).await,
        "static" => static_analysis::run(ctx).await,
        "dynamic" => app_analysis::run_dynamic(ctx).await,
        "performance" => app_analysis::run_performance(ctx).await,
        "ai" => app_analysis::run_ai(ctx).await,
        "noop" => Ok(JobOutput {
            result: Value::Object(Default::default()),
        }),
        "sleep" => internal::sleep(ctx).await,
        "fail" => internal::fail(ctx).await,
        "blob" => internal::blob(ctx).await,
        other => Err(Failure::permanent(
            "unknown_kind",
            format!("this worker cannot run jobs of kind `{other}`"),
        )),
    }
}
