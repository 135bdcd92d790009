//! Each analyzed Python app gets an environment built from its own requirements
//! (`requirements.txt`, or `pyproject.toml`'s dependencies), by `uv`. Environments are
//! named by the content of what they install (and the interpreter), built once, and
//! shared: 270 apps with 15 distinct requirement sets build 15 environments. What an
//! unpinned requirement resolved to is recorded (`requirements.lock`), as is the build's
//! log, which analyses keep as an artifact.
//!
//! Installing runs none of the model's code: only wheels are installed
//! (`--only-binary :all:`), so no `setup.py` of a package the model named runs outside
//! the sandbox; a requirement with no wheel for this machine does not install, and that
//! is the app's result. Requirements that point elsewhere (URLs, paths, `-e`, other
//! indexes) are left out and said.
//!
//! The machine's troubles (no `uv`, the index unreachable) are retryable failures; a
//! requirement that cannot be resolved or installed is the app's own result.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest an environment may take to build.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The most requirement lines one app may have.
pub const MAX_REQUIREMENTS: usize = 500;
/// How deep `-r other.txt` includes may go.
const MAX_INCLUDE_DEPTH: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The app's requirements cannot be installed: its result.
    #[error("its requirements ({from}) do not install: {message}")]
    DoesNotInstall { from: String, message: String },
    /// This machine cannot build environments now: retried.
    #[error("cannot build the app's environment on this worker: {0}")]
    Unavailable(String),
}

/// The requirements an app declares, as they will be installed.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirements {
    /// The files they came from, relative to the app.
    pub from: Vec<String>,
    /// One requirement per line, as written (comments dropped), in order.
    pub lines: Vec<String>,
    /// What was left out, and why.
    pub left_out: Vec<String>,
}

/// What an environment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// A virtualenv (`venv/`) built by `uv`.
    Python,
    /// A `node_modules/` built by npm ([`crate::analysis::node_env`]).
    Node,
}

/// A built environment.
#[derive(Debug, Clone)]
pub struct AppEnv {
    pub kind: EnvKind,
    pub digest: String,
    pub root: PathBuf,
    pub requirements: Requirements,
    /// `name==version` of every package installed.
    pub locked: Vec<String>,
    /// Packages whose install scripts were not run (Node; native addons among them).
    pub install_scripts_not_run: Vec<String>,
    pub log: PathBuf,
}

impl AppEnv {
    /// The folder of its programs, first on the app's `PATH`.
    pub fn bin(&self) -> PathBuf {
        match self.kind {
            EnvKind::Python => self.root.join("venv").join("bin"),
            EnvKind::Node => self.node_modules().join(".bin"),
        }
    }

    /// Where a Node environment's packages are (the app links to them).
    pub fn node_modules(&self) -> PathBuf {
        self.root.join("node_modules")
    }

    /// What a result records about it.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": match self.kind { EnvKind::Python => "python", EnvKind::Node => "node" },
            "install_scripts_not_run": self.install_scripts_not_run,
            "env": self.digest,
            "from": self.requirements.from,
            "requirements": self.requirements.lines,
            "left_out": self.requirements.left_out,
            "installed": self.locked,
        })
    }
}

/// Whether apps get environments of their own (default) or all share the interpreters of
/// `ASSAY_APP_PATH` (set: the user's choice of one environment for every app).
pub fn enabled() -> bool {
    std::env::var_os("ASSAY_APP_PATH").is_none()
}

/// Where environments live: `ASSAY_ENV_DIR`, or `envs/` beside the analysis cache.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ASSAY_ENV_DIR") {
        return PathBuf::from(d);
    }
    crate::kinds::cache::dir()
        .parent()
        .map(|p| p.join("envs"))
        .unwrap_or_else(|| std::env::temp_dir().join("assay-envs"))
}

/// The requirements of the Python app whose command runs in `workdir`: that folder's
/// `requirements.txt` or `pyproject.toml`, else the app root's.
pub fn requirements(app: &Path, workdir: &str) -> Requirements {
    let mut reqs = Requirements {
        from: Vec::new(),
        lines: Vec::new(),
        left_out: Vec::new(),
    };
    // Where the command runs, then the root, then the usual backend folders (an app run
    // as `python3 backend/app.py` from its root keeps `backend/requirements.txt`).
    let mut folders = vec![workdir.to_string()];
    for other in std::iter::once("").chain(crate::analysis::recipe::SERVICE_DIRS.iter().copied()) {
        if !folders.iter().any(|f| f == other) {
            folders.push(other.to_string());
        }
    }
    for folder in folders {
        let rel = |name: &str| {
            if folder.is_empty() {
                name.to_string()
            } else {
                format!("{folder}/{name}")
            }
        };
        if crate::analysis::recipe::read_small(&app.join(rel("requirements.txt"))).is_some() {
            read_requirements(app, &rel("requirements.txt"), 0, &mut reqs);
            return reqs;
        }
        if let Some(text) = crate::analysis::recipe::read_small(&app.join(rel("pyproject.toml"))) {
            reqs.from.push(rel("pyproject.toml"));
            pyproject_dependencies(&text, &rel("pyproject.toml"), &mut reqs);
            return reqs;
        }
    }
    reqs
}

fn read_requirements(app: &Path, rel: &str, depth: usize, reqs: &mut Requirements) {
    let Some(text) = crate::analysis::recipe::read_small(&app.join(rel)) else {
        reqs.left_out
            .push(format!("{rel}: not a regular file in the app"));
        return;
    };
    reqs.from.push(rel.to_string());
    let folder = Path::new(rel).parent().unwrap_or(Path::new(""));
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{rel}:{}", n + 1);
        if let Some(include) = line
            .strip_prefix("-r ")
            .or_else(|| line.strip_prefix("--requirement "))
            .or_else(|| line.strip_prefix("-c "))
        {
            let target = folder.join(include.trim());
            let target = target.display().to_string();
            if depth >= MAX_INCLUDE_DEPTH || !crate::analysis::recipe::is_inside(&target) {
                reqs.left_out.push(format!(
                    "{at}: `{line}` (outside the app, or nested too deep)"
                ));
            } else if line.starts_with("-c ") {
                reqs.left_out.push(format!(
                    "{at}: `{line}` (constraints files are not applied)"
                ));
            } else {
                read_requirements(app, &target, depth + 1, reqs);
            }
            continue;
        }
        if let Err(why) = plain_requirement(line) {
            reqs.left_out.push(format!("{at}: `{line}` ({why})"));
            continue;
        }
        if reqs.lines.len() >= MAX_REQUIREMENTS {
            reqs.left_out.push(format!(
                "{at}: past the {MAX_REQUIREMENTS}-requirement limit"
            ));
            break;
        }
        reqs.lines.push(line.to_string());
    }
}

/// A requirement from the package index, by name (with versions, extras, markers); not
/// an option, a URL, a path or a VCS link.
fn plain_requirement(line: &str) -> Result<(), &'static str> {
    if line.starts_with('-') {
        return Err("an installer option; only requirements from the package index are installed");
    }
    let lowered = line.to_ascii_lowercase();
    if lowered.contains("://")
        || lowered.contains(" @ ")
        || lowered.starts_with("git+")
        || lowered.starts_with("file:")
        || line.starts_with('.')
        || line.starts_with('/')
    {
        return Err("a URL or a path; only requirements from the package index are installed");
    }
    let name_ok = line
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err("not a requirement");
    }
    Ok(())
}

/// PEP 621 `[project] dependencies`, or Poetry's `[tool.poetry.dependencies]` (names and
/// plain versions; Poetry's `^`/`~` ranges are taken as the lowest version).
fn pyproject_dependencies(text: &str, rel: &str, reqs: &mut Requirements) {
    let doc: toml::Table = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            reqs.left_out.push(format!("{rel}: not valid TOML ({e})"));
            return;
        }
    };
    let project = doc
        .get("project")
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_array());
    if let Some(list) = project {
        for dep in list.iter().filter_map(|d| d.as_str()) {
            match plain_requirement(dep) {
                Ok(()) => reqs.lines.push(dep.to_string()),
                Err(why) => reqs.left_out.push(format!("{rel}: `{dep}` ({why})")),
            }
        }
        return;
    }
    let poetry = doc
        .get("tool")
        .and_then(|t| t.get("poetry"))
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_table());
    if let Some(table) = poetry {
        for (name, spec) in table {
            if name == "python" {
                continue;
            }
            let version = spec
                .as_str()
                .or_else(|| spec.get("version").and_then(|v| v.as_str()))
                .unwrap_or("*")
                .trim();
            let line = match version.trim_start_matches(['^', '~']) {
                "*" | "" => name.clone(),
                v if version.starts_with(['^', '~']) => format!("{name}>={v}"),
                v if v.starts_with(['<', '>', '=', '!']) => format!("{name}{v}"),
                v => format!("{name}=={v}"),
            };
            reqs.lines.push(line);
        }
    }
}

/// The interpreter environments are made from: the real `python3` behind any shim.
fn base_python() -> Result<PathBuf, EnvError> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.base_prefix + '/bin/python3')"])
                .env_remove("PYTHONHOME")
                .output()
                .map_err(|e| format!("`python3` cannot be run: {e}"))?;
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && path.is_file() {
                Ok(path)
            } else {
                Err("`python3` did not say where it lives".into())
            }
        })
        .clone()
        .map_err(EnvError::Unavailable)
}

fn uv() -> Result<PathBuf, EnvError> {
    crate::analysis::static_tools::find_program("uv").ok_or_else(|| {
        EnvError::Unavailable(
            "`uv` is not installed (scripts/install-tools installs it into .tools/, or `pip install uv`)"
                .into(),
        )
    })
}

/// The environment for these requirements: built now, or found built.
pub async fn prepare(reqs: &Requirements) -> Result<AppEnv, EnvError> {
    let python = base_python()?;
    let mut hasher = Sha256::new();
    hasher.update(python.display().to_string().as_bytes());
    hasher.update([0]);
    for line in &reqs.lines {
        hasher.update(line.as_bytes());
        hasher.update([0]);
    }
    let digest = hex::encode(&hasher.finalize()[..12]);
    let base = dir();
    std::fs::create_dir_all(&base).map_err(|e| unavailable(&base, e))?;
    let root = base.join(&digest);
    let lock_path = base.join(format!("{digest}.lock"));
    let reqs = reqs.clone();
    // One build per environment across every Assay process on the machine.
    let lock = lock_exclusive(lock_path)
        .await
        .map_err(|e| unavailable(&base, e))?;
    let result = build_or_reuse(&root, &python, &digest, &reqs).await;
    drop(lock);
    result
}

/// An exclusive lock on `path` (created if missing), held until dropped: one build at a
/// time across every Assay process on the machine.
pub(crate) async fn lock_exclusive(
    path: PathBuf,
) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(std::io::Error::other)?
}

pub(crate) fn unavailable(path: &Path, e: std::io::Error) -> EnvError {
    EnvError::Unavailable(format!("{}: {e}", path.display()))
}

/// A finished build leaves `status`: `ok`, or `does-not-install` with the reason (an
/// app's failure is kept, so fifty apps with one broken requirement set try once).
async fn build_or_reuse(
    root: &Path,
    python: &Path,
    digest: &str,
    reqs: &Requirements,
) -> Result<AppEnv, EnvError> {
    let from = if reqs.from.is_empty() {
        "none declared".to_string()
    } else {
        reqs.from.join(", ")
    };
    let status_file = root.join("status");
    let env = |locked: Vec<String>| AppEnv {
        kind: EnvKind::Python,
        install_scripts_not_run: Vec::new(),
        digest: digest.to_string(),
        root: root.to_path_buf(),
        requirements: reqs.clone(),
        locked,
        log: root.join("build.log"),
    };
    if let Ok(status) = std::fs::read_to_string(&status_file) {
        let locked = std::fs::read_to_string(root.join("requirements.lock")).unwrap_or_default();
        let locked: Vec<String> = locked.lines().map(str::to_string).collect();
        return match status.split_once('\n') {
            Some(("does-not-install", message)) => Err(EnvError::DoesNotInstall {
                from,
                message: message.to_string(),
            }),
            _ => Ok(env(locked)),
        };
    }
    // A build a kill cut short is started over.
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).map_err(|e| unavailable(root, e))?;
    let uv = uv()?;
    std::fs::write(root.join("requirements.in"), reqs.lines.join("\n") + "\n")
        .map_err(|e| unavailable(root, e))?;
    let mut log = String::new();
    let venv = root.join("venv");
    let steps: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "venv".into(),
            "--quiet".into(),
            "--python".into(),
            python.into(),
            venv.clone().into(),
        ],
        vec![
            "pip".into(),
            "install".into(),
            "--python".into(),
            venv.join("bin").join("python").into(),
            "--only-binary".into(),
            ":all:".into(),
            "--requirement".into(),
            root.join("requirements.in").into(),
        ],
    ];
    for args in steps
        .iter()
        .filter(|a| a[0] == "venv" || !reqs.lines.is_empty())
    {
        let out = run_uv(&uv, args, root).await?;
        log.push_str(&out.text);
        let _ = std::fs::write(root.join("build.log"), &log);
        if !out.success {
            if is_network_trouble(&out.text) {
                let _ = std::fs::remove_dir_all(venv.as_path());
                return Err(EnvError::Unavailable(format!(
                    "the package index could not be reached: {}",
                    last_lines(&out.text, 4)
                )));
            }
            let message = last_lines(&out.text, 12);
            let _ = std::fs::remove_dir_all(venv.as_path());
            std::fs::write(&status_file, format!("does-not-install\n{message}"))
                .map_err(|e| unavailable(root, e))?;
            return Err(EnvError::DoesNotInstall { from, message });
        }
    }
    let freeze = run_uv(
        &uv,
        &[
            "pip".into(),
            "freeze".into(),
            "--python".into(),
            venv.join("bin").join("python").into(),
        ],
        root,
    )
    .await?;
    let locked: Vec<String> = freeze
        .text
        .lines()
        .filter(|l| l.contains("=="))
        .map(str::to_string)
        .collect();
    std::fs::write(root.join("requirements.lock"), locked.join("\n") + "\n")
        .map_err(|e| unavailable(root, e))?;
    std::fs::write(&status_file, "ok\n").map_err(|e| unavailable(root, e))?;
    Ok(env(locked))
}

/// The worker's settings that say where packages come from (a mirror, a proxy, a CA);
/// nothing else of its environment (no keys) reaches `uv`.
const UV_ENV_ALLOWED: &[&str] = &[
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "PIP_INDEX_URL",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
];

async fn run_uv(
    uv: &Path,
    args: &[std::ffi::OsString],
    root: &Path,
) -> Result<InstallerOutput, EnvError> {
    let mut cmd = installer_command(uv, root, UV_ENV_ALLOWED);
    cmd.args(args)
        .env("UV_CACHE_DIR", dir().join("uv-cache"))
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("UV_NO_CONFIG", "1")
        .env("UV_NO_PROGRESS", "1");
    run_installer(cmd, "uv")
        .await?
        .ok_or_else(|| EnvError::DoesNotInstall {
            from: "requirements".into(),
            message: format!(
                "installing took longer than {} min",
                BUILD_TIMEOUT.as_secs() / 60
            ),
        })
}

/// What an installer run printed (stdout, then stderr), and whether it succeeded.
pub(crate) struct InstallerOutput {
    pub success: bool,
    pub text: String,
}

/// An installer (`uv`, `npm`) to run in `root` with nothing of the worker's environment
/// (no keys) but the settings `allowed` names: where packages come from, proxies, CAs.
pub(crate) fn installer_command(
    program: &Path,
    root: &Path,
    allowed: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.current_dir(root)
        .env_clear()
        .env("PATH", crate::sandbox::SANDBOX_PATH)
        .env("HOME", root)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in allowed {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd
}

/// Run an installer for at most [`BUILD_TIMEOUT`]; `None` when it took longer (each
/// installer says whose trouble that is).
pub(crate) async fn run_installer(
    mut cmd: tokio::process::Command,
    name: &str,
) -> Result<Option<InstallerOutput>, EnvError> {
    let Ok(out) = tokio::time::timeout(BUILD_TIMEOUT, cmd.output()).await else {
        return Ok(None);
    };
    let out = out.map_err(|e| EnvError::Unavailable(format!("`{name}` cannot be run: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Some(InstallerOutput {
        success: out.status.success(),
        text,
    }))
}

/// uv's words for an index it could not reach (as opposed to requirements it could not
/// satisfy).
fn is_network_trouble(text: &str) -> bool {
    [
        "error sending request",
        "dns error",
        "tcp connect error",
        "Failed to fetch",
        "operation timed out",
        "Connection reset",
        "failed to download",
    ]
    .iter()
    .any(|p| text.contains(p))
}

/// The last `n` lines of a tool's output that say something.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::analysis::tree_of as app;

    #[test]
    fn requirements_are_read_where_the_app_runs_and_foreign_sources_are_left_out() {
        let dir = app(&[
            (
                "backend/requirements.txt",
                "# deps\nFlask==2.2.5  # web\n-r extra.txt\n-e git+https://x/y.git#egg=y\n--index-url https://evil/simple\nrequests @ https://x/r.whl\n./local\n",
            ),
            ("backend/extra.txt", "flask-cors\n-r ../../../etc/passwd\n"),
            ("requirements.txt", "django\n"),
        ]);
        let reqs = requirements(dir.path(), "backend");
        assert_eq!(reqs.from, ["backend/requirements.txt", "backend/extra.txt"]);
        assert_eq!(reqs.lines, ["Flask==2.2.5", "flask-cors"]);
        assert_eq!(reqs.left_out.len(), 5, "{:?}", reqs.left_out);
        assert!(reqs.left_out.iter().any(|l| l.contains("outside the app")));
        // The root's, when the folder has none.
        assert_eq!(requirements(dir.path(), "").lines, ["django"]);
    }

    #[test]
    fn pyproject_dependencies_are_read_in_both_styles() {
        let dir = app(&[(
            "pyproject.toml",
            "[project]\nname='x'\ndependencies = ['fastapi>=0.100', 'uvicorn']\n",
        )]);
        assert_eq!(
            requirements(dir.path(), "").lines,
            ["fastapi>=0.100", "uvicorn"]
        );
        let dir = app(&[(
            "pyproject.toml",
            "[tool.poetry.dependencies]\npython = '^3.11'\nflask = '^2.2'\nrequests = '*'\n",
        )]);
        assert_eq!(
            requirements(dir.path(), "").lines,
            ["flask>=2.2", "requests"]
        );
    }

    #[test]
    fn an_unreachable_index_is_told_apart_from_an_unsatisfiable_requirement() {
        assert!(is_network_trouble("error: Request failed after 3 retries\n  cause: Failed to fetch: http://127.0.0.1:9/simple/flask/\n  cause: tcp connect error"));
        assert!(!is_network_trouble("error: No solution found when resolving dependencies\n  cause: Because nonexistent-pkg was not found in the package registry"));
    }
}
