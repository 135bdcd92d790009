//! Assay's own analyzer toolchain: the pinned analysis tools (`tools/requirements.txt`,
//! `tools/package.json` and its lock, compiled into the binary) installed on first use
//! into a folder named by the pins under the cache dir, with the versions recorded.
//! `assay tools install|list` and `assay doctor` are its faces; the static analyzer finds
//! the tools here after `ASSAY_TOOL_PATH` and `.tools/` (`static_tools::find_program`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const REQUIREMENTS: &str = include_str!("../tools/requirements.txt");
const PACKAGE_JSON: &str = include_str!("../tools/package.json");
const PACKAGE_LOCK: &str = include_str!("../tools/package-lock.json");

/// Where a toolchain is recorded as complete: written last, so a half-done install is
/// never taken for a finished one.
const VERSIONS_FILE: &str = "versions.json";

#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("{program} is needed to install the analysis tools but was not found; {fix}")]
    Missing { program: String, fix: String },
    #[error("{step} failed (exit {code:?}); its output is in {log}")]
    Step {
        step: String,
        code: Option<i32>,
        log: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ToolchainError + '_ {
    move |source| ToolchainError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One pinned tool: its package, the version pinned, and which ecosystem installs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pin {
    pub package: String,
    pub version: String,
    pub ecosystem: String,
}

/// Every pin, from the files compiled in.
pub fn pins() -> Vec<Pin> {
    let mut out: Vec<Pin> = REQUIREMENTS
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once("=="))
        .map(|(p, v)| Pin {
            package: p.trim().to_string(),
            version: v.trim().to_string(),
            ecosystem: "pypi".into(),
        })
        .collect();
    let package: serde_json::Value =
        serde_json::from_str(PACKAGE_JSON).expect("tools/package.json is JSON");
    if let Some(deps) = package["dependencies"].as_object() {
        out.extend(deps.iter().map(|(p, v)| Pin {
            package: p.clone(),
            version: v.as_str().unwrap_or_default().to_string(),
            ecosystem: "npm".into(),
        }));
    }
    out
}

fn pins_digest() -> String {
    let mut h = Sha256::new();
    for part in [REQUIREMENTS, PACKAGE_JSON, PACKAGE_LOCK] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    hex::encode(&h.finalize()[..6])
}

/// The managed toolchain's folder: `ASSAY_TOOLS_DIR`, else
/// `$XDG_CACHE_HOME/assay/tools/<pins digest>` (or `~/.cache/…`). A change of pins is a
/// new folder, so an old toolchain is never half-upgraded.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ASSAY_TOOLS_DIR") {
        return PathBuf::from(d);
    }
    crate::kinds::cache::assay_cache_dir()
        .join("tools")
        .join(pins_digest())
}

/// The managed folders programs are found in, once the toolchain is installed.
pub fn bin_dirs() -> Vec<PathBuf> {
    let d = dir();
    if !d.join(VERSIONS_FILE).is_file() {
        return Vec::new();
    }
    vec![d.join("venv/bin"), d.join("node/node_modules/.bin")]
}

/// What an install recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    /// Package → version, as the installers report them.
    pub versions: BTreeMap<String, String>,
    pub installed_at: String,
}

pub fn installed() -> Option<Installed> {
    let text = std::fs::read_to_string(dir().join(VERSIONS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A progress report: the step about to run.
pub trait Progress {
    fn step(&self, what: &str);
}

impl<F: Fn(&str)> Progress for F {
    fn step(&self, what: &str) {
        self(what)
    }
}

/// Install the pinned tools unless they are already: idempotent, one install at a time
/// across processes. Steps' output goes to `install.log` in the folder.
pub async fn install(progress: &dyn Progress) -> Result<Installed, ToolchainError> {
    let root = dir();
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let lock_path = root.join(".lock");
    let lock = crate::analysis::envs::lock_exclusive(lock_path.clone())
        .await
        .map_err(io(&lock_path))?;
    if let Some(done) = installed() {
        return Ok(done);
    }
    for (program, fix) in [
        (
            "python3",
            "install Python 3 with venv (Debian: apt-get install python3 python3-venv)",
        ),
        (
            "npm",
            "install Node.js with npm (Debian: apt-get install nodejs npm)",
        ),
    ] {
        if which(program).is_none() {
            return Err(ToolchainError::Missing {
                program: program.into(),
                fix: fix.into(),
            });
        }
    }
    let log = root.join("install.log");
    let _ = std::fs::remove_file(&log);
    let write = |name: &str, text: &str| -> Result<PathBuf, ToolchainError> {
        let p = root.join(name);
        std::fs::write(&p, text).map_err(io(&p))?;
        Ok(p)
    };
    let requirements = write("requirements.txt", REQUIREMENTS)?;
    let node = root.join("node");
    std::fs::create_dir_all(&node).map_err(io(&node))?;
    std::fs::write(node.join("package.json"), PACKAGE_JSON).map_err(io(&node))?;
    std::fs::write(node.join("package-lock.json"), PACKAGE_LOCK).map_err(io(&node))?;
    let venv = root.join("venv");
    progress.step("creating a Python environment");
    run_step(
        "python3 -m venv",
        std::process::Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv),
        &log,
    )
    .await?;
    progress.step("installing the Python tools (ruff, bandit, semgrep, pylint, vulture, radon, detect-secrets, uv)");
    run_step(
        "pip install",
        std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        &log,
    )
    .await?;
    progress.step("installing the JavaScript tools (eslint, its TypeScript parser)");
    run_step(
        "npm ci",
        std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&node),
        &log,
    )
    .await?;
    progress.step("recording versions");
    let mut versions = BTreeMap::new();
    let pip_list = tokio::process::Command::new(venv.join("bin/pip"))
        .args(["list", "--format", "json", "--disable-pip-version-check"])
        .output()
        .await
        .map_err(io(&venv))?;
    if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&pip_list.stdout) {
        for p in list {
            if let (Some(n), Some(v)) = (p["name"].as_str(), p["version"].as_str()) {
                versions.insert(normalized(n), v.to_string());
            }
        }
    }
    for pin in pins().iter().filter(|p| p.ecosystem == "npm") {
        let manifest = node
            .join("node_modules")
            .join(&pin.package)
            .join("package.json");
        if let Some(v) = std::fs::read_to_string(&manifest)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|j| j["version"].as_str().map(str::to_string))
        {
            versions.insert(pin.package.clone(), v);
        }
    }
    let done = Installed {
        versions,
        installed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let tmp = root.join(format!("{VERSIONS_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&done).expect("versions serialize"),
    )
    .map_err(io(&tmp))?;
    std::fs::rename(&tmp, root.join(VERSIONS_FILE)).map_err(io(&root))?;
    drop(lock);
    Ok(done)
}

async fn run_step(
    step: &str,
    cmd: &mut std::process::Command,
    log: &Path,
) -> Result<(), ToolchainError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let status =
        tokio::process::Command::from(std::mem::replace(cmd, std::process::Command::new("true")))
            .kill_on_drop(true)
            .status()
            .await
            .map_err(io(log))?;
    if !status.success() {
        return Err(ToolchainError::Step {
            step: step.into(),
            code: status.code(),
            log: log.display().to_string(),
        });
    }
    Ok(())
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The analysis tools the static analyzer and the app environments need, missing from
/// every place they are looked for.
pub fn missing_tools() -> Vec<&'static str> {
    crate::analysis::static_tools::TOOLS
        .iter()
        .map(|t| t.program)
        .chain(["uv"])
        .filter(|p| crate::analysis::static_tools::find_program(p).is_none())
        .collect()
}

/// Install on first use: when a tool is missing and the managed toolchain is not there
/// yet. `ASSAY_NO_TOOLS_INSTALL` turns this off (the run then reports tools as
/// `not_available`).
pub async fn ensure(progress: &dyn Progress) -> Result<Option<Installed>, ToolchainError> {
    if std::env::var_os("ASSAY_NO_TOOLS_INSTALL").is_some()
        || installed().is_some()
        || missing_tools().is_empty()
    {
        return Ok(None);
    }
    install(progress).await.map(Some)
}

/// One line of `assay tools list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolLine {
    pub package: String,
    pub pinned: String,
    /// What the managed toolchain recorded, when it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<String>,
    /// Where the program the analyzers would run is (a tool may be found elsewhere first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_at: Option<String>,
}

/// Programs of pinned packages whose name differs from the package (or that have none).
fn program_of(package: &str) -> Option<&str> {
    match package {
        "flask" | "typescript" | "@typescript-eslint/parser" => None,
        "@microsoft/sarif-multitool" => Some("sarif-multitool"),
        p => Some(p),
    }
}

/// A package name as PEP 503 compares them (`pip_audit`, `Pip.Audit` and `pip-audit` are one).
fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

pub fn list() -> Vec<ToolLine> {
    let installed = installed();
    pins()
        .into_iter()
        .map(|p| ToolLine {
            installed: installed
                .as_ref()
                .and_then(|i| i.versions.get(&normalized(&p.package)).cloned()),
            found_at: program_of(&p.package)
                .and_then(crate::analysis::static_tools::find_program)
                .map(|f| f.display().to_string()),
            package: p.package,
            pinned: p.version,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pins_compiled_in_name_every_analysis_tool() {
        let pins = pins();
        for tool in crate::analysis::static_tools::TOOLS
            .iter()
            .filter(|t| t.program != "npm")
        {
            assert!(
                pins.iter().any(|p| p.package == tool.name),
                "{} is not pinned",
                tool.name
            );
        }
        assert!(pins
            .iter()
            .any(|p| p.package == "uv" && p.ecosystem == "pypi"));
        assert!(pins.iter().all(|p| !p.version.is_empty()));
    }
}
