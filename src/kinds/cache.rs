//! The analysis cache: an analysis of an unchanged app, with unchanged tools and settings,
//! is reused instead of run again (and, for the judge, paid for again).
//!
//! The key hashes the kind, its params, Assay's version, the versions of the tools it runs
//! and the content of every file of the app. Entries live under `ASSAY_CACHE_DIR`
//! (default `$XDG_CACHE_HOME/assay/analysis` or `~/.cache/assay/analysis`): the result and
//! a copy of the job's artifacts. Only successful analyses are stored. `--no-cache` (or the
//! param `cache = false`) bypasses it.

use super::{JobContext, JobOutput};
use crate::analysis::static_tools;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turn the cache off for this process (`--no-cache`).
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ASSAY_CACHE_DIR") {
        return PathBuf::from(d);
    }
    assay_cache_dir().join("analysis")
}

/// Assay's folder in the user's cache: `$XDG_CACHE_HOME/assay` or `~/.cache/assay`.
pub fn assay_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("assay")
}

/// Which kinds are cached.
pub fn applies(kind: &str) -> bool {
    matches!(kind, "static" | "dynamic" | "performance" | "ai")
}

fn enabled(params: &Value) -> bool {
    !DISABLED.load(Ordering::Relaxed)
        && params.get("cache").and_then(|c| c.as_bool()) != Some(false)
}

/// Hash every file under `dir` (relative path and content), skipping what tools skip.
pub fn content_hash(dir: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for f in crate::analysis::app_files(dir, &[]) {
        let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(std::fs::read(&f)?));
    }
    Ok(hex::encode(h.finalize()))
}

/// The cache key of an analysis job, or None when it must not be cached.
pub async fn key(kind: &str, params: &Value) -> Option<String> {
    if !applies(kind) || !enabled(params) {
        return None;
    }
    let app = params.get("app")?.as_str()?;
    let app = std::path::absolute(app).ok()?;
    let content = content_hash(&app).ok()?;
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let mut settings = params.clone();
    if let Value::Object(o) = &mut settings {
        o.remove("cache");
        o.insert("app".into(), Value::from(app.display().to_string()));
    }
    h.update(serde_json::to_vec(&settings).ok()?);
    h.update(content.as_bytes());
    match kind {
        "static" => {
            for tool in static_tools::TOOLS {
                let version = match static_tools::find_program(tool.name) {
                    Some(p) => static_tools::version_of(&p).await.unwrap_or_default(),
                    None => "absent".into(),
                };
                h.update(format!("{}={version};", tool.name).as_bytes());
            }
        }
        "ai" => {
            // Another model or endpoint is another judge.
            for var in ["ASSAY_LLM_BASE_URL", "ASSAY_LLM_MODEL"] {
                h.update(std::env::var(var).unwrap_or_default().as_bytes());
                h.update([0]);
            }
        }
        _ => {}
    }
    Some(hex::encode(h.finalize()))
}

/// A cached result: its artifacts are copied into the job's output folder.
pub fn load(key: &str, ctx: &JobContext) -> Option<JobOutput> {
    let entry = dir().join(key);
    let bytes = std::fs::read(entry.join("result.json")).ok()?;
    let mut result: Value = serde_json::from_slice(&bytes).ok()?;
    if let Ok(files) = std::fs::read_dir(entry.join("files")) {
        for f in files.flatten() {
            std::fs::copy(f.path(), ctx.output_dir.join(f.file_name())).ok()?;
        }
    }
    if let Value::Object(o) = &mut result {
        o.insert("cached".into(), Value::from(true));
        o.insert("cache_key".into(), Value::from(key));
    }
    Some(JobOutput { result })
}

/// Store a successful result and the job's artifacts. Failures to store are logged only:
/// the cache is an optimization.
pub fn store(key: &str, ctx: &JobContext, out: &JobOutput) {
    let entry = dir().join(key);
    let tmp = dir().join(format!(".{key}.{}", uuid::Uuid::new_v4()));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(tmp.join("files"))?;
        if let Ok(files) = std::fs::read_dir(&ctx.output_dir) {
            for f in files.flatten() {
                if f.file_type()?.is_file() {
                    std::fs::copy(f.path(), tmp.join("files").join(f.file_name()))?;
                }
            }
        }
        std::fs::write(tmp.join("result.json"), serde_json::to_vec(&out.result)?)?;
        // Atomic publish; a concurrent writer of the same key wins equally well.
        match std::fs::rename(&tmp, &entry) {
            Ok(()) => Ok(()),
            Err(_) if entry.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    if let Err(e) = write() {
        tracing::warn!(error = %e, "could not store the analysis in the cache");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_changes_with_any_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.py"), "x = 1\n").unwrap();
        let first = content_hash(dir.path()).unwrap();
        assert_eq!(first, content_hash(dir.path()).unwrap());
        std::fs::create_dir(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/a.pyc"), "junk").unwrap();
        assert_eq!(
            first,
            content_hash(dir.path()).unwrap(),
            "caches of tools do not count"
        );
        std::fs::write(dir.path().join("a.py"), "x = 2\n").unwrap();
        assert_ne!(first, content_hash(dir.path()).unwrap());
    }
}
