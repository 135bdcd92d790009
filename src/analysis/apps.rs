//! Generated apps as analysis targets: the run recipe (`assay-app.toml`), a port
//! allocator that never hands one port out twice (across processes), starting an app in
//! its own process group with a scratch directory and resource limits, health-gating,
//! crash detection, logs, and a pool that keeps an app running exactly as long as some
//! job holds it.

use crate::supervise::SupervisedCommand;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub const MANIFEST: &str = "assay-app.toml";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("no free port in {from}..{to} (is something holding them all?)")]
    NoPort { from: u16, to: u16 },
    #[error("cannot start the app (`{command}`): {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("the app exited with {status} before it answered; last log lines:\n{log_tail}")]
    Crashed { status: String, log_tail: String },
    #[error(
        "the app did not answer {url} {wanted} within {seconds} s; last log lines:\n{log_tail}"
    )]
    Unhealthy {
        url: String,
        /// What counted as an answer: "with 2xx" (a recipe's own health path) or "at all".
        wanted: &'static str,
        seconds: u64,
        log_tail: String,
    },
    /// The app died loading a package whose install script Assay does not run (a native
    /// addon): a limit of this machine's installs, not the model's fault, and no retry
    /// changes it.
    #[error(
        "the app needs {packages}, whose install script (a native build) Assay does not run; \
         last log lines:\n{log_tail}"
    )]
    NeedsInstallScript { packages: String, log_tail: String },
    #[error("{0}")]
    NoEntry(#[from] crate::analysis::recipe::NoEntry),
    #[error("{0}")]
    Env(#[from] crate::analysis::envs::EnvError),
    #[error("this worker cannot run Docker Compose apps: {0} (install Docker with the compose plugin, or run the app with run.command)")]
    ComposeUnavailable(String),
    #[error(
        "run.compose is refused: a compose file can ask for privileged containers and host \
         mounts, so model-written ones are not run; give run.command instead (a worker \
         started with --no-sandbox runs compose files, for apps you trust)"
    )]
    ComposeRefused,
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl AppError {
    /// Whether another attempt may succeed: the machine's trouble of the moment (no port,
    /// no sandbox, a file that could not be written) is; a broken manifest is not, and
    /// neither is the app's own failure ([`AppError::is_model_failure`]).
    pub fn is_retryable(&self) -> bool {
        !self.is_model_failure()
            && !matches!(
                self,
                AppError::Manifest { .. }
                    | AppError::ComposeUnavailable(_)
                    | AppError::ComposeRefused
                    | AppError::NeedsInstallScript { .. }
            )
    }

    /// The app's own failure, which is the model's result: it exited before answering, it
    /// never answered, or there is nothing in it that starts. An analyzer records these as
    /// results; they are never retried, open no breaker and quarantine no worker.
    pub fn is_model_failure(&self) -> bool {
        matches!(
            self,
            AppError::Crashed { .. }
                | AppError::Unhealthy { .. }
                | AppError::NoEntry(_)
                | AppError::Env(crate::analysis::envs::EnvError::DoesNotInstall { .. })
        )
    }

    /// The stable name of what went wrong with the app, for results and findings.
    pub fn outcome(&self) -> &'static str {
        match self {
            AppError::Crashed { .. } => "does_not_start",
            AppError::Unhealthy { .. } => "never_answers",
            AppError::NoEntry(_) => "no_entry_point",
            AppError::Env(crate::analysis::envs::EnvError::DoesNotInstall { .. }) => {
                "does_not_install"
            }
            _ => "not_started",
        }
    }
}

/// `assay-app.toml`: every part optional. An app without one, or without its `[run]`,
/// is started by a recipe [`crate::analysis::recipe`] infers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AppManifest {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub run: Option<RunRecipe>,
}

/// How an app will be started, and where that came from.
#[derive(Debug, Clone, PartialEq)]
pub struct AppPlan {
    pub template: Option<String>,
    pub model: Option<String>,
    pub recipe: RunRecipe,
    /// `None` for a recipe written in the manifest; else what the inference read.
    pub inferred: Option<InferredFrom>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferredFrom {
    pub runtime: &'static str,
    pub framework: &'static str,
    pub because: Vec<String>,
}

impl AppPlan {
    /// What a result records about how its app was started.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "source": if self.inferred.is_some() { "inferred" } else { "manifest" },
            "command": self.recipe.command,
            "compose": self.recipe.compose,
            "workdir": self.recipe.workdir,
            "health": self.recipe.health,
            "inferred": self.inferred,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunRecipe {
    /// Program and arguments, run from the app folder.
    #[serde(default)]
    pub command: Vec<String>,
    /// Or: a Docker Compose file (relative to the app folder) whose services publish the
    /// app on `${PORT}` (the variable named by `port_env`), e.g. `ports: ["${PORT}:5000"]`.
    #[serde(default)]
    pub compose: Option<String>,
    /// The folder (inside the app) the command runs in; default: the app's root.
    #[serde(default)]
    pub workdir: String,
    #[serde(default = "default_port_env")]
    pub port_env: String,
    /// A path that answers 2xx once the app is up. Without one, the app is up once
    /// `/health` answers anything at all (a 404 or a 500 is an answer).
    #[serde(default)]
    pub health: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long the app may take to answer its health endpoint.
    #[serde(default = "default_startup")]
    pub startup_timeout: String,
    /// Address-space limit for the app's processes, in MiB.
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
}

fn default_port_env() -> String {
    "PORT".into()
}
/// Asked when a recipe names no health path; any answer means "up".
pub const DEFAULT_HEALTH: &str = "/health";
fn default_startup() -> String {
    "30s".into()
}
fn default_memory() -> u64 {
    2048
}

/// The most address space a sandboxed app's process may ask for, in MiB.
pub const MAX_MEMORY_MB: u64 = 16 * 1024;

/// The app's `assay-app.toml`, or an empty one when it has none.
pub fn load_manifest(app_dir: &Path) -> Result<AppManifest, AppError> {
    let path = app_dir.join(MANIFEST);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(AppManifest::default());
    }
    // Never through a link: a recipe linked to `/etc/shadow` would quote it in the error.
    let text = read_no_follow(&path).map_err(|e| AppError::Manifest {
        path: path.clone(),
        message: format!("cannot read the run recipe: {e} ({MANIFEST} must be a regular file)"),
    })?;
    let manifest: AppManifest = toml::from_str(&text).map_err(|e| AppError::Manifest {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if let Some(recipe) = &manifest.run {
        check_recipe(app_dir, &path, recipe)?;
    }
    Ok(manifest)
}

/// How the app at `app_dir` starts: its manifest's recipe, or one inferred from its files.
/// Nothing to start is the app's own failure ([`AppError::NoEntry`]).
pub fn plan(app_dir: &Path) -> Result<AppPlan, AppError> {
    let manifest = load_manifest(app_dir)?;
    let (recipe, inferred) = match manifest.run {
        Some(recipe) => (recipe, None),
        None => {
            let found = crate::analysis::recipe::infer(app_dir)?;
            let recipe = RunRecipe {
                command: found.command,
                compose: None,
                workdir: found.workdir,
                port_env: default_port_env(),
                health: None,
                env: found.env.into_iter().collect(),
                startup_timeout: default_startup(),
                memory_mb: default_memory(),
            };
            let from = InferredFrom {
                runtime: found.runtime,
                framework: found.framework,
                because: found.because,
            };
            (recipe, Some(from))
        }
    };
    Ok(AppPlan {
        template: manifest.template,
        model: manifest.model,
        recipe,
        inferred,
    })
}

fn check_recipe(app_dir: &Path, path: &Path, recipe: &RunRecipe) -> Result<(), AppError> {
    let path = path.to_path_buf();
    match (&recipe.compose, recipe.command.is_empty()) {
        (Some(_), false) => {
            return Err(AppError::Manifest {
                path,
                message: "give either run.command or run.compose, not both".into(),
            })
        }
        (None, true) => {
            return Err(AppError::Manifest {
                path,
                message: "run.command is empty; give the program and its arguments, e.g. [\"python3\", \"app.py\"], or run.compose".into(),
            })
        }
        (Some(file), true) if !app_dir.join(file).is_file() => {
            return Err(AppError::Manifest {
                path,
                message: format!("run.compose names `{file}`, which is not a file in the app folder"),
            })
        }
        _ => {}
    }
    if !crate::analysis::recipe::is_inside(&recipe.workdir) {
        return Err(AppError::Manifest {
            path,
            message: format!(
                "run.workdir = `{}` must be a folder inside the app (relative, no `..`)",
                recipe.workdir
            ),
        });
    }
    if let Some(bad) = recipe
        .env
        .keys()
        .chain(std::iter::once(&recipe.port_env))
        .find(|k| !crate::sandbox::is_env_name(k))
    {
        return Err(AppError::Manifest {
            path,
            message: format!(
                "`{bad}` is not an environment variable's name (letters, digits and `_`, not starting with a digit)"
            ),
        });
    }
    if recipe.command.first().is_some_and(|c| c.contains('=')) {
        return Err(AppError::Manifest {
            path,
            message: "run.command's program may not contain `=`".into(),
        });
    }
    if let Some(health) = recipe.health.as_deref().filter(|h| !h.starts_with('/')) {
        return Err(AppError::Manifest {
            path,
            message: format!("run.health = `{health}` must be a path starting with `/`"),
        });
    }
    if humantime::parse_duration(&recipe.startup_timeout).is_err() {
        return Err(AppError::Manifest {
            path,
            message: format!(
                "run.startup_timeout = `{}` is not a duration such as \"30s\"",
                recipe.startup_timeout
            ),
        });
    }
    Ok(())
}

/// `${PORT}` (the recipe's `port_env`) in a command's arguments or an env value is the
/// allocated port: runners like uvicorn take the port only as an argument.
fn with_port(text: &str, port_env: &str, port: u16) -> String {
    text.replace(&format!("${{{port_env}}}"), &port.to_string())
}

/// A regular file's text, opened without following a link at its last component.
fn read_no_follow(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Hands out loopback ports, each held by an exclusive `flock` on a file in a directory
/// shared by every Assay process on the machine. The lock lives as long as the
/// [`PortLease`]; a process that dies releases its locks with it.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    dir: PathBuf,
    from: u16,
    to: u16,
}

pub struct PortLease {
    pub port: u16,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl std::fmt::Debug for PortLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortLease({})", self.port)
    }
}

impl Default for PortAllocator {
    fn default() -> Self {
        PortAllocator::new(std::env::temp_dir().join("assay-ports"), 20_000, 29_999)
    }
}

impl PortAllocator {
    pub fn new(dir: PathBuf, from: u16, to: u16) -> Self {
        PortAllocator { dir, from, to }
    }

    pub fn allocate(&self) -> Result<PortLease, AppError> {
        std::fs::create_dir_all(&self.dir)?;
        let span = (self.to - self.from) as u32 + 1;
        let start = rand::random::<u32>() % span;
        for i in 0..span {
            let port = self.from + ((start + i) % span) as u16;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.dir.join(format!("{port}.lock")))?;
            let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            else {
                continue;
            };
            // Held by us among Assay processes; also make sure nobody else listens there.
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(PortLease { port, _lock: lock });
            }
        }
        Err(AppError::NoPort {
            from: self.from,
            to: self.to,
        })
    }
}

/// How an app runs: a process group of ours, or a Docker Compose project.
enum Process {
    Group {
        child: Mutex<std::process::Child>,
        handle: crate::supervise::Handle,
    },
    Compose {
        project: String,
        file: PathBuf,
        env: Vec<(String, String)>,
    },
}

/// The `docker compose` arguments that address one app's project.
fn compose_args(project: &str, file: &Path, rest: &[&str]) -> Vec<String> {
    let mut args = vec![
        "compose".to_string(),
        "--project-name".to_string(),
        project.to_string(),
        "--file".to_string(),
        file.display().to_string(),
    ];
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

/// What an app (untrusted code) may see of the worker's environment: nothing secret.
/// API keys and tokens live in the worker's environment, so apps start from an empty one
/// plus these, their recipe's `env`, and the port.
const APP_ENV_ALLOWED: &[&str] = &["LANG", "LC_ALL", "LC_CTYPE", "TZ"];
/// Docker's own settings, for Compose apps (a compose file only passes on what it names).
const DOCKER_ENV_ALLOWED: &[&str] = &[
    "HOME",
    "PATH",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "XDG_RUNTIME_DIR",
];

fn inherited(allowed: &[&str]) -> Vec<(String, std::ffi::OsString)> {
    allowed
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (k.to_string(), v)))
        .collect()
}

fn docker(
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
) -> std::io::Result<std::process::Output> {
    std::process::Command::new("docker")
        .args(args)
        .env_clear()
        .envs(inherited(DOCKER_ENV_ALLOWED))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
}

/// A started, healthy app. Dropping it stops the app: its whole process group, or its
/// Compose project (`down --volumes`).
pub struct RunningApp {
    pub dir: PathBuf,
    pub base_url: String,
    pub log: PathBuf,
    pub plan: AppPlan,
    /// The environment built from its requirements, when it has one of its own.
    pub env: Option<crate::analysis::envs::AppEnv>,
    /// What answered when the app came up: `GET /health → 404`, say.
    pub health: String,
    process: Process,
    /// Set when the pool killed the app for running past its wall-time limit.
    expired: std::sync::atomic::AtomicBool,
    /// Dropped after the app is stopped (fields drop after `Drop::drop`): the forwarder,
    /// the network namespace and the sandbox's files.
    _sandbox: Option<SandboxParts>,
    _port: PortLease,
    _scratch: tempfile::TempDir,
}

/// What a sandboxed instance holds besides its processes.
struct SandboxParts {
    _forwarder: crate::sandbox::Forwarder,
    _cgroup: crate::sandbox::AppCgroup,
    _network: Arc<crate::sandbox::AppNetwork>,
    _etc: tempfile::TempDir,
}

impl std::fmt::Debug for RunningApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunningApp({} at {})", self.dir.display(), self.base_url)
    }
}

/// The PATH unsandboxed apps run with: the app's interpreters (its own environment's
/// `bin`, or [`interpreter_dirs`]) before the worker's own PATH.
fn app_path(interpreters: &[PathBuf]) -> std::ffi::OsString {
    let mut dirs = interpreters.to_vec();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The interpreters apps without an environment of their own share: `ASSAY_APP_PATH`'s
/// folders (e.g. a virtualenv's `bin`), or the local `.tools/venv/bin` when present.
fn interpreter_dirs() -> Vec<PathBuf> {
    match std::env::var_os("ASSAY_APP_PATH") {
        Some(p) => std::env::split_paths(&p).collect(),
        None => std::path::absolute(".tools/venv/bin")
            .ok()
            .filter(|p| p.is_dir())
            .into_iter()
            .collect(),
    }
}

/// A recipe's own `PATH` goes first; Assay's follows, so the interpreters stay found.
fn joined_path(recipe: &RunRecipe, ours: std::ffi::OsString) -> std::ffi::OsString {
    match recipe.env.get("PATH") {
        Some(own) if !own.is_empty() => {
            let mut path = std::ffi::OsString::from(own);
            path.push(":");
            path.push(ours);
            path
        }
        _ => ours,
    }
}

/// The packages whose install scripts were not run that a crash's log names (Node's
/// `Cannot find module '…/build/Release/x.node'`, `bindings` not finding its file).
fn unbuilt_package(env: Option<&crate::analysis::envs::AppEnv>, log_tail: &str) -> Option<String> {
    let env = env?;
    let named: Vec<&str> = env
        .install_scripts_not_run
        .iter()
        .map(String::as_str)
        // Node's own words about a binary of that package that is not there: a `.node`
        // file under its folder (`Cannot find module …`, `bindings`' list of tries).
        .filter(|p| {
            let inside = format!("node_modules/{p}/");
            log_tail
                .lines()
                .any(|line| line.contains(&inside) && line.contains(".node"))
        })
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

/// The wall-time limit of an app instance: however many jobs hold it, it is killed
/// after this long (a job holding an app forever is a bug, and an app must not outlive
/// the study).
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Copy an app folder (regular files and folders; links as links) for one instance to
/// write into.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        }
    }
    Ok(())
}

impl RunningApp {
    /// Start the app and wait until it answers: its recipe's health path with 2xx, or
    /// without one any HTTP answer at all to [`DEFAULT_HEALTH`].
    pub async fn start(
        dir: &Path,
        ports: &PortAllocator,
        log: &Path,
    ) -> Result<RunningApp, AppError> {
        let plan = plan(dir)?;
        let env = Self::environment(dir, &plan).await?;
        let interpreters = match &env {
            Some(env) if env.kind == crate::analysis::envs::EnvKind::Python => vec![env.bin()],
            _ => interpreter_dirs(),
        };
        let node_modules = env
            .as_ref()
            .filter(|e| e.kind == crate::analysis::envs::EnvKind::Node)
            .map(|e| e.node_modules());
        let sandboxed = crate::sandbox::enabled();
        if sandboxed {
            // The model's fault, whatever this machine can do: said before the sandbox is
            // checked.
            if plan.recipe.compose.is_some() {
                return Err(AppError::ComposeRefused);
            }
            crate::sandbox::check()?;
        }
        let port = ports.allocate()?;
        let scratch = crate::kinds::scratch_dir()?;
        let log_file = std::fs::File::create(log)?;
        let recipe = &plan.recipe;
        let (process, sandbox) = match &recipe.compose {
            Some(_) if sandboxed => return Err(AppError::ComposeRefused),
            Some(file) => (
                Self::start_compose(dir, file, recipe, port.port, log_file)?,
                None,
            ),
            None if sandboxed => {
                let (process, parts) = Self::start_sandboxed(
                    dir,
                    recipe,
                    &interpreters,
                    node_modules.as_deref(),
                    port.port,
                    log_file,
                )?;
                (process, Some(parts))
            }
            None => (
                Self::start_command(
                    dir,
                    recipe,
                    &interpreters,
                    node_modules.as_deref(),
                    port.port,
                    scratch.path(),
                    log_file,
                )?,
                None,
            ),
        };
        let timeout =
            humantime::parse_duration(&recipe.startup_timeout).unwrap_or(Duration::from_secs(30));
        let mut app = RunningApp {
            dir: dir.to_path_buf(),
            base_url: format!("http://127.0.0.1:{}", port.port),
            log: log.to_path_buf(),
            plan,
            env,
            health: String::new(),
            process,
            expired: Default::default(),
            _sandbox: sandbox,
            _port: port,
            _scratch: scratch,
        };
        app.health = match app.wait_healthy(timeout).await {
            Ok(health) => health,
            Err(AppError::Crashed { status, log_tail }) => {
                return Err(match unbuilt_package(app.env.as_ref(), &log_tail) {
                    Some(packages) => AppError::NeedsInstallScript { packages, log_tail },
                    None => AppError::Crashed { status, log_tail },
                })
            }
            Err(e) => return Err(e),
        };
        Ok(app)
    }

    /// The environment an app runs in: a Python app's built from its own requirements, a
    /// Node app's `node_modules` from its `package.json` (or found built), unless every
    /// app shares `ASSAY_APP_PATH`'s. Apps declaring nothing run with the shared
    /// interpreters.
    async fn environment(
        dir: &Path,
        plan: &AppPlan,
    ) -> Result<Option<crate::analysis::envs::AppEnv>, AppError> {
        use crate::analysis::{envs, node_env};
        if !envs::enabled() || plan.recipe.compose.is_some() {
            return Ok(None);
        }
        let program = plan.recipe.command.first().map(|p| {
            Path::new(p)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
        let runtime = match &plan.inferred {
            Some(from) => from.runtime,
            None => match program.as_deref() {
                Some(p) if p.starts_with("python") => "python",
                Some("flask" | "uvicorn" | "gunicorn" | "hypercorn") => "python",
                Some("node" | "npm" | "npx" | "yarn") => "node",
                _ => "",
            },
        };
        match runtime {
            "python" => {
                let reqs = envs::requirements(dir, &plan.recipe.workdir);
                Ok(Some(envs::prepare(&reqs).await?))
            }
            "node" => match node_env::packages(dir, &plan.recipe.workdir) {
                Some(packages) => Ok(Some(node_env::prepare(&packages).await?)),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// The app in a sandbox (see [`crate::sandbox`]): its own network namespace reached
    /// through a forwarder on `port`, bubblewrap's mount and PID namespaces, a user of its
    /// own, limits, a capped log.
    fn start_sandboxed(
        dir: &Path,
        recipe: &RunRecipe,
        interpreters: &[PathBuf],
        node_modules: Option<&Path>,
        port: u16,
        log_file: std::fs::File,
    ) -> Result<(Process, SandboxParts), AppError> {
        use crate::sandbox::{self as sb, SandboxLimits};
        let limits = SandboxLimits::default();
        // Held from here: the port lock keeps other Assay processes off it, this keeps
        // everyone else off it.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let network = Arc::new(sb::AppNetwork::new()?);
        let etc = crate::kinds::scratch_dir()?;
        let jail = sb::Jail {
            app_dir: dir,
            etc: etc.path(),
            uid: sb::APP_UID_BASE + u32::from(port),
            read_only: {
                let mut mounts = sb::interpreter_mounts(interpreters);
                mounts.extend(node_modules.map(Path::to_path_buf));
                mounts
            },
            node_modules: node_modules.map(Path::to_path_buf),
        };
        jail.prepare()?;
        let mut path: Vec<PathBuf> = interpreters.to_vec();
        path.extend(std::env::split_paths(sb::SANDBOX_PATH));
        let path = joined_path(recipe, std::env::join_paths(path).unwrap_or_default());
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let write = std::fs::File::from(write);
        // 0 would mean no limit at all: in the sandbox it means the default, and no recipe
        // asks for more than MAX_MEMORY_MB.
        let memory_mb = match recipe.memory_mb {
            0 => default_memory(),
            mb => mb.min(MAX_MEMORY_MB),
        };
        let memory = memory_mb.saturating_mul(1024 * 1024);
        // The app's environment, set only after the drop to its user (see `bwrap_args`).
        let mut env: BTreeMap<String, std::ffi::OsString> =
            inherited(APP_ENV_ALLOWED).into_iter().collect();
        for (k, v) in &recipe.env {
            env.insert(k.clone(), with_port(v, &recipe.port_env, port).into());
        }
        for (k, v) in [
            ("HOME", "/tmp"),
            ("TMPDIR", "/tmp"),
            ("ASSAY_SCRATCH_DIR", "/tmp"),
            ("PYTHONUNBUFFERED", "1"),
        ] {
            env.insert(k.into(), v.into());
        }
        env.insert("PATH".into(), path);
        env.insert(recipe.port_env.clone(), port.to_string().into());
        let env: Vec<(String, std::ffi::OsString)> = env.into_iter().collect();
        let tools = sb::tools()?;
        // The memory limit also holds for the app as a whole, and so does the process cap.
        let cgroup = sb::AppCgroup::for_app(
            &format!("{port}-{}", uuid::Uuid::new_v4().simple()),
            memory,
            limits.processes,
        );
        let mut cmd = SupervisedCommand::new(&tools.bwrap);
        // The supervisor and bwrap are root: they get nothing of the recipe.
        let command: Vec<String> = recipe
            .command
            .iter()
            .map(|a| with_port(a, &recipe.port_env, port))
            .collect();
        cmd.args(jail.bwrap_args(tools, &env, &recipe.workdir, &command))
            .env_clear()
            .env("PATH", sb::SANDBOX_PATH)
            .stdout(write.try_clone()?)
            .stderr(write)
            .network_namespace(network.namespace())
            .cgroups(cgroup.procs())
            .address_space_limit(memory)
            .limits(
                Some(limits.processes),
                Some(limits.cpu_seconds),
                Some(limits.file_size),
            )
            .no_core_dumps();
        let (child, handle) = cmd.spawn().map_err(|source| AppError::Spawn {
            command: format!("bwrap … {}", recipe.command.join(" ")),
            source,
        })?;
        sb::capped_log(read, log_file, limits.log_bytes)?;
        let forwarder = sb::Forwarder::start(listener, network.clone(), port)?;
        Ok((
            Process::Group {
                child: Mutex::new(child),
                handle,
            },
            SandboxParts {
                _forwarder: forwarder,
                _cgroup: cgroup,
                _network: network,
                _etc: etc,
            },
        ))
    }

    /// The app as a process group of ours, unconfined but for its environment and limits
    /// (`--no-sandbox`: apps you trust only).
    fn start_command(
        dir: &Path,
        recipe: &RunRecipe,
        interpreters: &[PathBuf],
        node_modules: Option<&Path>,
        port: u16,
        scratch: &Path,
        log_file: std::fs::File,
    ) -> Result<Process, AppError> {
        let memory = recipe.memory_mb.saturating_mul(1024 * 1024);
        // The app writes next to its code (a SQLite file, `instance/`): into a copy of
        // its own, never into the folder the analyzers read.
        let copy = scratch.join("app");
        copy_tree(dir, &copy)?;
        if let Some(modules) = node_modules {
            crate::analysis::node_env::link_into(modules, &copy, &copy.join(&recipe.workdir))?;
        }
        let args: Vec<String> = recipe
            .command
            .iter()
            .map(|a| with_port(a, &recipe.port_env, port))
            .collect();
        // Under a supervisor: the app and everything it starts die with this worker.
        let mut cmd = SupervisedCommand::new(&args[0]);
        cmd.args(&args[1..])
            .current_dir(copy.join(&recipe.workdir))
            .env_clear()
            .envs(inherited(APP_ENV_ALLOWED))
            .env("HOME", scratch)
            .envs(
                recipe
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), with_port(v, &recipe.port_env, port))),
            )
            .env(&recipe.port_env, port.to_string())
            // Each instance gets its own temporary files (databases included), so two
            // instances of one app never share state.
            .env("TMPDIR", scratch)
            .env("ASSAY_SCRATCH_DIR", scratch)
            .env("PYTHONUNBUFFERED", "1")
            .env("PATH", joined_path(recipe, app_path(interpreters)))
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .address_space_limit(memory)
            .no_core_dumps();
        let (child, handle) = cmd.spawn().map_err(|source| AppError::Spawn {
            command: recipe.command.join(" "),
            source,
        })?;
        Ok(Process::Group {
            child: Mutex::new(child),
            handle,
        })
    }

    fn start_compose(
        dir: &Path,
        file: &str,
        recipe: &RunRecipe,
        port: u16,
        mut log_file: std::fs::File,
    ) -> Result<Process, AppError> {
        use std::io::Write;
        let available = std::process::Command::new("docker")
            .args(["compose", "version"])
            .stdin(Stdio::null())
            .output();
        match available {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(AppError::ComposeUnavailable(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ))
            }
            Err(e) => {
                return Err(AppError::ComposeUnavailable(format!(
                    "`docker` cannot be run: {e}"
                )))
            }
        }
        let project = format!("assay-{port}");
        let file = dir.join(file);
        let mut env: Vec<(String, String)> = recipe
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push((recipe.port_env.clone(), port.to_string()));
        let out = docker(
            &compose_args(&project, &file, &["up", "--detach", "--build"]),
            &env,
            dir,
        )?;
        let _ = log_file.write_all(&out.stdout);
        let _ = log_file.write_all(&out.stderr);
        if !out.status.success() {
            // Whatever did come up goes down again.
            let _ = docker(
                &compose_args(&project, &file, &["down", "--volumes", "--remove-orphans"]),
                &env,
                dir,
            );
            return Err(AppError::Crashed {
                status: format!("`docker compose up` {}", out.status),
                log_tail: String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
        Ok(Process::Compose { project, file, env })
    }

    /// Wait until the app answers; say what answered. A recipe's own health path must
    /// answer 2xx; otherwise any HTTP answer to [`DEFAULT_HEALTH`] means the app is up (an
    /// app the model wrote without `/health` answers 404, and one that fails on it 500:
    /// both are running, and what they answer is the analyzers' business).
    async fn wait_healthy(&self, timeout: Duration) -> Result<String, AppError> {
        let (path, strict) = match &self.plan.recipe.health {
            Some(path) => (path.as_str(), true),
            None => (DEFAULT_HEALTH, false),
        };
        let url = format!("{}{path}", self.base_url);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client builds");
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(AppError::Crashed {
                    status,
                    log_tail: log_tail(&self.log, 20),
                });
            }
            if let Ok(resp) = client.get(&url).send().await {
                let status = resp.status();
                if status.is_success() || !strict {
                    return Ok(format!("GET {path} → {}", status.as_u16()));
                }
            }
            if started.elapsed() > timeout {
                return Err(AppError::Unhealthy {
                    url,
                    wanted: if strict { "with 2xx" } else { "at all" },
                    seconds: timeout.as_secs(),
                    log_tail: log_tail(&self.log, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `Some(status)` once the app's main process (or every Compose service) has exited.
    pub fn exit_status(&self) -> Option<String> {
        match &self.process {
            Process::Group { child, .. } => {
                let mut child = child.lock().expect("child lock");
                match child.try_wait() {
                    Ok(Some(_)) if self.expired.load(std::sync::atomic::Ordering::Relaxed) => {
                        Some("killed: it ran past its wall-time limit".into())
                    }
                    Ok(Some(status)) => Some(status.to_string()),
                    Ok(None) => None,
                    Err(e) => Some(format!("unknown ({e})")),
                }
            }
            Process::Compose { project, file, env } => {
                let args = compose_args(project, file, &["ps", "--status", "running", "--quiet"]);
                match docker(&args, env, &self.dir) {
                    Ok(out) if out.status.success() && !out.stdout.trim_ascii().is_empty() => None,
                    Ok(_) => Some("no Compose service is running".into()),
                    Err(e) => Some(format!("unknown ({e})")),
                }
            }
        }
    }

    /// Kill the app (its whole tree) now, unless it has already exited: the wall-time limit.
    /// Under the child's lock, so that a stop that reaps it meanwhile cannot make this
    /// signal a reused pid.
    fn expire(&self) {
        if let Process::Group { child, handle } = &self.process {
            let mut child = child.lock().expect("child lock");
            if let Ok(None) = child.try_wait() {
                self.expired
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                handle.kill();
            }
        }
    }

    /// Fail with a crash error if the app died; analyzers call this after probing, so a
    /// dead app is never reported as "no findings".
    pub fn ensure_alive(&self) -> Result<(), AppError> {
        match self.exit_status() {
            Some(status) => Err(AppError::Crashed {
                status,
                log_tail: log_tail(&self.log, 20),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        match &self.process {
            Process::Group { child, handle } => {
                let mut child = child.lock().expect("child lock");
                if let Ok(None) = child.try_wait() {
                    handle.terminate();
                    let deadline = Instant::now() + Duration::from_secs(3);
                    let mut exited = false;
                    while Instant::now() < deadline {
                        if let Ok(Some(_)) = child.try_wait() {
                            exited = true;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if !exited {
                        // Whatever is left of it (children included) goes too.
                        handle.kill();
                    }
                }
                let _ = child.wait();
                handle.after_exit();
            }
            Process::Compose { project, file, env } => {
                if let Ok(out) = docker(
                    &compose_args(project, file, &["logs", "--no-color"]),
                    env,
                    &self.dir,
                ) {
                    use std::io::Write;
                    if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(&self.log) {
                        let _ = log.write_all(&out.stdout);
                    }
                }
                let _ = docker(
                    &compose_args(
                        project,
                        file,
                        &["down", "--volumes", "--remove-orphans", "--timeout", "3"],
                    ),
                    env,
                    &self.dir,
                );
            }
        }
    }
}

/// Keeps one running instance per app folder for as long as some job holds it: the
/// first `acquire` starts it, the last handle dropped stops it.
pub struct AppPool {
    ports: PortAllocator,
    /// A slot per app folder: held across that app's start, so that two jobs for one app
    /// start it once, while other apps start beside it.
    apps: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Weak<RunningApp>>>>>,
    linger: Duration,
    max_lifetime: Duration,
}

/// How long an app stays up after its last job let go, for the next job that needs it
/// (analyses of one app usually come in a burst).
pub const DEFAULT_LINGER: Duration = Duration::from_secs(5);

/// A job's hold on a running app. The app is never stopped while a lease exists; when the
/// last lease goes, it lingers for the pool's linger time, then stops.
pub struct AppLease {
    app: Arc<RunningApp>,
    linger: Duration,
}

impl std::ops::Deref for AppLease {
    type Target = RunningApp;
    fn deref(&self) -> &RunningApp {
        &self.app
    }
}

impl Drop for AppLease {
    fn drop(&mut self) {
        if self.linger.is_zero() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let keep = self.app.clone();
            let linger = self.linger;
            runtime.spawn(async move {
                tokio::time::sleep(linger).await;
                // Stopping blocks for up to a few seconds: not on a runtime thread.
                let _ = tokio::task::spawn_blocking(move || drop(keep)).await;
            });
        }
    }
}

impl AppPool {
    pub fn new(ports: PortAllocator) -> Self {
        AppPool {
            ports,
            apps: Default::default(),
            linger: DEFAULT_LINGER,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    /// Each instance's wall-time limit (default [`DEFAULT_MAX_LIFETIME`]).
    pub fn with_max_lifetime(mut self, limit: Duration) -> Self {
        self.max_lifetime = limit;
        self
    }

    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The process-wide pool.
    pub fn global() -> &'static AppPool {
        static POOL: std::sync::OnceLock<AppPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| AppPool::new(PortAllocator::default()))
    }

    pub async fn acquire(&self, dir: &Path, log: &Path) -> Result<AppLease, AppError> {
        let dir = std::path::absolute(dir)?;
        let slot = {
            let mut apps = self.apps.lock().expect("app pool lock");
            // Slots nobody waits on and whose app is gone are dropped.
            apps.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().map_or(true, |app| app.strong_count() > 0)
            });
            apps.entry(dir.clone()).or_default().clone()
        };
        let mut held = slot.lock().await;
        let lease = |app| AppLease {
            app,
            linger: self.linger,
        };
        if let Some(app) = held.upgrade() {
            if app.exit_status().is_none() {
                return Ok(lease(app));
            }
        }
        let app = Arc::new(RunningApp::start(&dir, &self.ports, log).await?);
        let watched = Arc::downgrade(&app);
        let limit = self.max_lifetime;
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            if let Some(app) = watched.upgrade() {
                // Stopping may block; and this may hold the last reference.
                let _ = tokio::task::spawn_blocking(move || app.expire()).await;
            }
        });
        *held = Arc::downgrade(&app);
        Ok(lease(app))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let dir = tempfile::tempdir().unwrap();
        let ports = PortAllocator::new(dir.path().to_path_buf(), 28_100, 28_104);
        let held: Vec<PortLease> = (0..5).map(|_| ports.allocate().unwrap()).collect();
        let mut seen: Vec<u16> = held.iter().map(|l| l.port).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 5);
        assert!(
            matches!(ports.allocate(), Err(AppError::NoPort { .. })),
            "all five are held"
        );
        drop(held);
        assert!(ports.allocate().is_ok(), "released with the lease");
    }

    #[test]
    fn a_port_held_by_another_process_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("28200.lock");
        std::fs::write(&lock, "").unwrap();
        // Another process holds port 28200's lock.
        let mut holder = std::process::Command::new("flock")
            .arg(&lock)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let ports = PortAllocator::new(dir.path().to_path_buf(), 28_200, 28_201);
        let lease = ports.allocate().unwrap();
        assert_eq!(lease.port, 28_201);
        holder.kill().unwrap();
        holder.wait().unwrap();
    }

    #[test]
    fn manifests_are_validated_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        // None at all: an empty one (the recipe will be inferred).
        assert_eq!(load_manifest(dir.path()).unwrap(), AppManifest::default());
        std::fs::write(
            dir.path().join(MANIFEST),
            "template = \"x\"\n[run]\ncommand = [\"a\"]\nworkdir = \"../up\"\n",
        )
        .unwrap();
        assert!(load_manifest(dir.path())
            .unwrap_err()
            .to_string()
            .contains("inside the app"));
        std::fs::write(
            dir.path().join(MANIFEST),
            "template = \"x\"\n[run]\ncommand = []\n",
        )
        .unwrap();
        assert!(load_manifest(dir.path())
            .unwrap_err()
            .to_string()
            .contains("run.command is empty"));
        std::fs::write(
            dir.path().join(MANIFEST),
            "template = \"x\"\n[run]\ncommand = [\"a\"]\nhealht = \"/\"\n",
        )
        .unwrap();
        assert!(load_manifest(dir.path())
            .unwrap_err()
            .to_string()
            .contains("healht"));
        std::fs::write(
            dir.path().join(MANIFEST),
            "template = \"x\"\n[run]\ncommand = [\"a\"]\nenv = { \"A=B\" = \"c\" }\n",
        )
        .unwrap();
        assert!(load_manifest(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not an environment variable's name"));
        // A recipe that is a link is not followed (it would quote its target).
        std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root:SECRET-HASH:20228\n").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join(MANIFEST)).unwrap();
        let e = load_manifest(dir.path()).unwrap_err().to_string();
        assert!(
            !e.contains("SECRET-HASH") && e.contains("regular file"),
            "{e}"
        );
    }

    #[test]
    fn compose_recipes_are_validated_and_addressed_by_project() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join(MANIFEST), text).unwrap();
        write("template = \"x\"\n[run]\ncommand = [\"a\"]\ncompose = \"compose.yml\"\n");
        assert!(load_manifest(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not both"));
        write("template = \"x\"\n[run]\ncompose = \"compose.yml\"\n");
        assert!(load_manifest(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not a file"));
        std::fs::write(dir.path().join("compose.yml"), "services: {}\n").unwrap();
        assert_eq!(
            load_manifest(dir.path())
                .unwrap()
                .run
                .unwrap()
                .compose
                .as_deref(),
            Some("compose.yml")
        );
        assert_eq!(
            compose_args(
                "assay-20001",
                Path::new("/a/compose.yml"),
                &["up", "--detach"]
            ),
            [
                "compose",
                "--project-name",
                "assay-20001",
                "--file",
                "/a/compose.yml",
                "up",
                "--detach"
            ]
        );
    }

    /// A model-written compose file can ask for `privileged: true` and host mounts: in
    /// the sandbox it is refused at once, permanently, with the way out named.
    #[tokio::test]
    async fn a_compose_app_is_refused_in_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("compose.yml"),
            "services:\n  web:\n    image: nginx\n    privileged: true\n    volumes: [\"/:/host\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(MANIFEST),
            "template = \"x\"\n[run]\ncompose = \"compose.yml\"\n",
        )
        .unwrap();
        let ports = PortAllocator::new(dir.path().join("ports"), 28_400, 28_410);
        let err = RunningApp::start(dir.path(), &ports, &dir.path().join("app.log"))
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::ComposeRefused), "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("run.command"), "{err}");
    }
}
