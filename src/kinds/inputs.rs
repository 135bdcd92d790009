//! Inputs from upstream jobs. An analysis stage that names `app_from = "generate"` gets
//! the app its upstream `generate` job (the one its item agrees with) packed as an
//! artifact: the worker downloads and unpacks it once per upstream job, and the job runs
//! with `app` set to that folder, so the analysis cache and the app pool see an ordinary
//! app folder.

use super::generate::{unpack, APP_ARTIFACT};
use crate::client::Client;
use crate::domain::{Failure, JobState};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Params with `app_from` swapped for the `app` folder it names, as seen by validation.
pub fn with_placeholder_app(params: &Value) -> Value {
    let mut params = params.clone();
    if let Some(obj) = params.as_object_mut() {
        if obj.remove("app_from").is_some() {
            obj.insert("app".into(), Value::String("(from an upstream job)".into()));
        }
    }
    params
}

/// The job's params with `app_from` resolved to a local folder; unchanged without it.
pub async fn resolve(
    params: &Value,
    job_id: i64,
    client: &Client,
    work_root: &Path,
) -> Result<Value, Failure> {
    let Some(from) = params.get("app_from").and_then(Value::as_str) else {
        return Ok(params.clone());
    };
    let explained = client.explain(job_id).await.map_err(|e| {
        Failure::retryable(
            "server_unreachable",
            format!("asking for job {job_id}'s inputs: {e}"),
        )
    })?;
    let prefix = format!("{from}[");
    let upstream: Vec<_> = explained
        .dependencies
        .iter()
        .filter(|d| d.key == from || d.key.starts_with(&prefix))
        .collect();
    let up = match upstream.as_slice() {
        [one] => *one,
        [] => {
            return Err(Failure::permanent(
                "no_upstream_app",
                format!(
                    "no job of stage `{from}` feeds this job, so there is no app to analyze; \
                         make the stages' fan-out items agree (same keys and values)"
                ),
            ))
        }
        many => {
            return Err(Failure::permanent(
                "ambiguous_upstream_app",
                format!(
                    "{} jobs of stage `{from}` feed this job ({}); an analysis takes one app: \
                     give this stage the same fan-out keys as `{from}`",
                    many.len(),
                    many.iter()
                        .map(|d| d.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    };
    if up.state != JobState::Completed {
        return Err(Failure::permanent(
            "upstream_not_completed",
            format!(
                "upstream job {} ({}) is {}, not completed",
                up.job_id, up.key, up.state
            ),
        ));
    }
    let upstream = client.explain(up.job_id).await.map_err(|e| {
        Failure::retryable(
            "server_unreachable",
            format!("asking for job {}'s artifacts: {e}", up.job_id),
        )
    })?;
    // The server's spec check already refuses this; a worker still never runs an app
    // from a job that cannot make one, whoever reported its artifacts.
    if !super::APP_MAKING_KINDS.contains(&upstream.job.kind.as_str()) {
        return Err(Failure::permanent(
            "no_upstream_app",
            format!(
                "job {} ({}) is a `{}` job, which makes no apps: only {} jobs' apps are run",
                up.job_id,
                up.key,
                upstream.job.kind,
                super::APP_MAKING_KINDS.join(", ")
            ),
        ));
    }
    let archive = upstream
        .artifacts
        .iter()
        .filter(|a| a.name == APP_ARTIFACT)
        .max_by_key(|a| a.attempt)
        .ok_or_else(|| {
            Failure::permanent(
                "no_upstream_app",
                format!(
                    "job {} ({}) has no `{APP_ARTIFACT}`: `app_from` names a stage that does not make apps",
                    up.job_id, up.key
                ),
            )
        })?;
    let folder = fetch(client, up.job_id, &archive.sha256, &work_root.join("apps")).await?;
    let mut params = params.clone();
    let obj = params.as_object_mut().expect("params are an object");
    obj.remove("app_from");
    obj.insert("app".into(), Value::String(folder.display().to_string()));
    Ok(params)
}

/// The upstream job's app, unpacked under `apps/<archive sha256>` once: later jobs, and
/// later runs that made the same app, reuse it (and so does the analysis cache, whose key
/// includes the folder).
async fn fetch(
    client: &Client,
    upstream: i64,
    sha256: &str,
    apps: &Path,
) -> Result<PathBuf, Failure> {
    let folder = apps.join(sha256);
    if folder.is_dir() {
        touch(&folder);
        return Ok(folder);
    }
    let io = |what: &str, e: std::io::Error| Failure::retryable("io", format!("{what}: {e}"));
    std::fs::create_dir_all(apps).map_err(|e| io("creating the apps folder", e))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{upstream}-"))
        .tempdir_in(apps)
        .map_err(|e| io("creating a staging folder", e))?;
    let archive = staging.path().join(APP_ARTIFACT);
    client
        .download_artifact(upstream, APP_ARTIFACT, &archive)
        .await
        .map_err(|e| {
            Failure::retryable(
                "artifact_unavailable",
                format!("downloading the app of job {upstream}: {e}"),
            )
        })?;
    let unpacked = staging.path().join("app");
    unpack(&archive, &unpacked).map_err(|e| {
        Failure::permanent(
            "bad_app_archive",
            format!("unpacking the app of job {upstream}: {e}"),
        )
    })?;
    // Another job may have unpacked the same app meanwhile: either copy is the same.
    match std::fs::rename(&unpacked, &folder) {
        Ok(()) => Ok(folder),
        Err(_) if folder.is_dir() => Ok(folder),
        Err(e) => Err(io("moving the app in place", e)),
    }
}

/// Mark an app folder as used now: [`prune_apps`] keeps what was used recently.
pub(crate) fn touch(folder: &Path) {
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.set_modified(std::time::SystemTime::now());
    }
}

/// Staging folders younger than this may belong to another worker process that shares
/// the folder by mistake: only older ones are a killed run's leftovers.
const STAGING_LEFTOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Apps unpacked under `work_root/apps` that no job used for `unused_for` are deleted, and
/// so are staging folders a killed worker left behind. Run when the worker starts, before
/// any job can be using them. A folder is first renamed out of the way, so a deletion cut
/// short never leaves a half app that a later job would trust. Returns how many went;
/// what cannot be deleted is logged and skipped.
pub fn prune_apps(work_root: &Path, unused_for: std::time::Duration) -> std::io::Result<usize> {
    let apps = work_root.join("apps");
    let entries = match std::fs::read_dir(&apps) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        let doomed = if name.starts_with(".trash-") {
            true // an earlier prune was cut short
        } else if name.starts_with('.') {
            age >= STAGING_LEFTOVER_AFTER
        } else {
            age >= unused_for
        };
        if !doomed {
            continue;
        }
        let trash = if name.starts_with(".trash-") {
            entry.path()
        } else {
            let trash = apps.join(format!(".trash-{name}"));
            if let Err(e) = std::fs::rename(entry.path(), &trash) {
                tracing::warn!(folder = %entry.path().display(), error = %e, "cannot prune an app folder");
                continue;
            }
            trash
        };
        match std::fs::remove_dir_all(&trash) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(folder = %trash.display(), error = %e, "cannot delete a pruned app folder")
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn aged(dir: &Path, age: Duration) {
        let f = std::fs::File::open(dir).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn unused_apps_and_leftover_staging_folders_are_pruned() {
        let root = tempfile::tempdir().unwrap();
        let apps = root.path().join("apps");
        for name in [
            "old",
            "recent",
            ".42-staging",
            ".43-staging",
            "reused",
            ".trash-cut",
        ] {
            std::fs::create_dir_all(apps.join(name).join("backend")).unwrap();
        }
        let week = Duration::from_secs(7 * 24 * 3600);
        aged(&apps.join("old"), week * 2);
        aged(&apps.join("reused"), week * 2);
        aged(&apps.join(".42-staging"), Duration::from_secs(2 * 3600));
        touch(&apps.join("reused"));
        assert_eq!(prune_apps(root.path(), week).unwrap(), 3);
        let left: Vec<String> = std::fs::read_dir(&apps)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(
            left,
            vec![".43-staging", "recent", "reused"],
            "a fresh staging folder may be another process's"
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            prune_apps(empty.path(), week).unwrap(),
            0,
            "no apps folder yet"
        );
    }
}
