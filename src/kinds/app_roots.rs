//! Which folders of the worker's machine a job may have read or run: a spec is someone
//! else's text, and without this rule a `static` stage's `app = "/etc"` copied that folder
//! into findings, and `dynamic` or `performance` started the recipe of any folder a spec
//! named.
//!
//! A job's literal folder params ([`FOLDER_PARAMS`]) are allowed only when the folder's
//! canonical path (every symlink resolved) lies inside one of the worker's roots
//! (`assay worker --app-root`); the job then runs with that canonical path, so a link
//! swapped in after the check is not followed by the kind. An app that `app_from` names
//! is always allowed: the worker itself unpacked it from an upstream job's artifact into
//! its own work folder. A worker with no root allows no literal folder at all.
//!
//! A checked `app` is then read only through the worker's snapshot of it
//! ([`crate::analysis::snapshot`]), taken without following any link: someone who may
//! write inside a root and swaps a folder on the way for a link after the check gets the
//! job refused, not the folder read; so are template catalogs (`templates`,
//! `templates_dir`).

use crate::domain::Failure;
use serde_json::Value;
use std::path::{Component, Path, PathBuf};

/// The params that name a folder the worker reads: the app of an analysis, and the
/// template catalogs of analyses (`templates`) and generation (`templates_dir`).
pub const FOLDER_PARAMS: &[&str] = &["app", "templates", "templates_dir"];

/// The failure code of a job refused by this rule. Permanent: running it again on the
/// same worker cannot change the answer.
pub const NOT_ALLOWED: &str = "app_not_allowed";

#[derive(Debug, thiserror::Error)]
pub enum AppRootError {
    #[error("--app-root {path}: {source} (name a folder that exists)")]
    Unusable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--app-root {0} is not a folder")]
    NotAFolder(PathBuf),
}

/// The folders a worker allows, canonicalized once when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppRoots {
    roots: Vec<PathBuf>,
}

impl AppRoots {
    /// Canonicalize `dirs` (relative ones against the current folder). A root that does
    /// not exist is an error rather than skipped: a typo would otherwise refuse every job
    /// with a message about the wrong thing.
    pub fn new<P: AsRef<Path>>(dirs: &[P]) -> Result<AppRoots, AppRootError> {
        let mut roots = Vec::new();
        for dir in dirs {
            let dir = dir.as_ref();
            let canonical = dir
                .canonicalize()
                .map_err(|source| AppRootError::Unusable {
                    path: dir.to_path_buf(),
                    source,
                })?;
            if !canonical.is_dir() {
                return Err(AppRootError::NotAFolder(dir.to_path_buf()));
            }
            if !roots.contains(&canonical) {
                roots.push(canonical);
            }
        }
        Ok(AppRoots { roots })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn inside(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| path.starts_with(root))
    }

    /// The canonical folder `path` names, if it lies inside a root.
    pub fn allow(&self, param: &str, path: &Path) -> Result<PathBuf, Failure> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let canonical = match absolute.canonicalize() {
            Ok(canonical) => canonical,
            // Said only of a path inside a root: elsewhere the answer would tell a spec's
            // author which paths of the worker's machine exist.
            Err(_) if self.inside(&lexically_normal(&absolute)) => {
                return Err(Failure::permanent(
                    "app_not_found",
                    format!(
                        "`{param}` folder `{}` does not exist on this worker",
                        absolute.display()
                    ),
                ))
            }
            Err(_) => return Err(self.refusal(param, path, None)),
        };
        if !self.inside(&canonical) {
            return Err(self.refusal(param, path, Some(&canonical)));
        }
        if !canonical.is_dir() {
            return Err(Failure::permanent(
                "app_not_found",
                format!("`{param}` = `{}` is not a folder", path.display()),
            ));
        }
        Ok(canonical)
    }

    fn refusal(&self, param: &str, path: &Path, canonical: Option<&Path>) -> Failure {
        let resolved = match canonical {
            Some(c) if c != path => format!(" (resolved: `{}`)", c.display()),
            _ => String::new(),
        };
        let allowed = if self.roots.is_empty() {
            "this worker allows no folder (it was started without --app-root)".to_string()
        } else {
            let roots: Vec<String> = self
                .roots
                .iter()
                .map(|r| format!("`{}`", r.display()))
                .collect();
            format!(
                "this worker allows only folders inside {}",
                roots.join(", ")
            )
        };
        Failure::permanent(
            NOT_ALLOWED,
            format!(
                "`{param}` = `{}`{resolved} is outside the folders this worker may read: \
                 {allowed}. Start the worker with `--app-root DIR` (or ASSAY_APP_ROOTS) for a \
                 folder of apps you trust it to run, or let the stage take its app from an \
                 upstream job with `app_from`",
                path.display()
            ),
        )
    }

    /// `params` with every literal folder param checked and replaced by its canonical
    /// path; `None` when they name no folder (most jobs: they are not copied). `app` is
    /// left alone when `app_from` is given: the worker fetches that app.
    pub fn confine(&self, params: &Value) -> Result<Option<Value>, Failure> {
        let Some(obj) = params.as_object() else {
            return Ok(None);
        };
        let fetched = obj.contains_key("app_from");
        let mut out = None;
        for &param in FOLDER_PARAMS {
            if param == "app" && fetched {
                continue;
            }
            // Anything but a string is the kind's to refuse (`bad_params`): it reads none.
            let Some(Value::String(path)) = obj.get(param) else {
                continue;
            };
            let allowed = self.allow(param, Path::new(path))?;
            out.get_or_insert_with(|| obj.clone()).insert(
                param.to_string(),
                Value::String(allowed.to_string_lossy().into_owned()),
            );
        }
        Ok(out.map(Value::Object))
    }
}

/// `params` with every folder param the job names (already checked by
/// [`AppRoots::confine`]) replaced by the worker's snapshot of it under `apps`, and the
/// `app` it named (results name that, not the snapshot). An `app` fetched with `app_from`
/// is the worker's own already. Blocking.
pub fn snapshot_folders(params: &Value, apps: &Path) -> Result<(Value, Option<PathBuf>), Failure> {
    use crate::analysis::snapshot::{snapshot, SnapshotError};
    let Some(obj) = params.as_object() else {
        return Ok((params.clone(), None));
    };
    let fetched = obj.contains_key("app_from");
    let mut out = obj.clone();
    let mut app = None;
    for &param in FOLDER_PARAMS {
        if param == "app" && fetched {
            continue;
        }
        let Some(Value::String(path)) = obj.get(param) else {
            continue;
        };
        let named = PathBuf::from(path);
        let snap = snapshot(&named, apps).map_err(|e| match e {
            SnapshotError::Swapped { .. } => Failure::permanent(NOT_ALLOWED, e.to_string()),
            e => Failure::retryable("io", e.to_string()),
        })?;
        out.insert(
            param.to_string(),
            Value::String(snap.to_string_lossy().into_owned()),
        );
        if param == "app" {
            app = Some(named);
        }
    }
    Ok((Value::Object(out), app))
}

/// `path` with `.` and `..` folded away without asking the file system.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureClass;
    use serde_json::json;

    fn refused(r: Result<Option<Value>, Failure>) -> Failure {
        let f = r.expect_err("refused");
        assert_eq!(f.class, FailureClass::Permanent, "{f:?}");
        f
    }

    #[test]
    fn only_folders_inside_a_root_are_allowed_and_links_are_resolved_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("apps");
        std::fs::create_dir_all(root.join("todo/backend")).unwrap();
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secrets"), root.join("sneaky")).unwrap();
        std::os::unix::fs::symlink(root.join("todo"), root.join("alias")).unwrap();
        let roots = AppRoots::new(&[&root]).unwrap();
        let canonical_root = root.canonicalize().unwrap();

        let ok = roots
            .confine(&json!({"app": root.join("todo"), "tools": ["bandit"]}))
            .unwrap()
            .unwrap();
        assert_eq!(ok["app"], json!(canonical_root.join("todo")));
        assert_eq!(
            ok["tools"],
            json!(["bandit"]),
            "other params pass as they are"
        );
        // A link inside the root to a folder inside it runs as the folder it names.
        let ok = roots
            .confine(&json!({"app": root.join("alias")}))
            .unwrap()
            .unwrap();
        assert_eq!(ok["app"], json!(canonical_root.join("todo")));

        let f = refused(roots.confine(&json!({"app": "/etc"})));
        assert_eq!(f.code, NOT_ALLOWED);
        assert!(
            f.message.contains("`/etc`")
                && f.message.contains(&canonical_root.display().to_string())
                && f.message.contains("--app-root"),
            "names the path, the roots and the fix: {}",
            f.message
        );
        let f = refused(roots.confine(&json!({"app": root.join("sneaky")})));
        assert_eq!(f.code, NOT_ALLOWED);
        assert!(f.message.contains("resolved"), "{}", f.message);
        let f = refused(roots.confine(&json!({"app": root.join("todo/../../secrets")})));
        assert_eq!(f.code, NOT_ALLOWED);
        // Template folders are folders the worker reads too.
        let f = refused(roots.confine(&json!({"app": root.join("todo"), "templates": "/etc"})));
        assert_eq!(f.code, NOT_ALLOWED);
        assert!(f.message.contains("`templates`"), "{}", f.message);
        let f = refused(roots.confine(&json!({"templates_dir": "/etc"})));
        assert_eq!(f.code, NOT_ALLOWED);
    }

    #[test]
    fn a_missing_folder_is_not_found_only_inside_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let roots = AppRoots::new(&[dir.path()]).unwrap();
        let f = refused(roots.confine(&json!({"app": dir.path().join("typo")})));
        assert_eq!(f.code, "app_not_found");
        // Outside, a missing folder and an existing one get the same answer.
        let f = refused(roots.confine(&json!({"app": "/etc/no-such-folder-4711"})));
        assert_eq!(f.code, NOT_ALLOWED);
        let f = refused(roots.confine(&json!({"app": dir.path().join("../no-such-4711")})));
        assert_eq!(f.code, NOT_ALLOWED);
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let f = refused(roots.confine(&json!({"app": dir.path().join("file")})));
        assert_eq!(f.code, "app_not_found", "a file is not an app folder");
    }

    #[test]
    fn no_root_allows_nothing_but_fetched_apps() {
        let roots = AppRoots::new::<&Path>(&[]).unwrap();
        let here = std::env::current_dir().unwrap();
        let f = refused(roots.confine(&json!({"app": here})));
        assert_eq!(f.code, NOT_ALLOWED);
        assert!(f.message.contains("without --app-root"), "{}", f.message);
        // `app_from`: the worker unpacks the app into its own folder, whatever `app` says.
        let params = json!({"app_from": "generate", "app": "/etc"});
        assert_eq!(roots.confine(&params).unwrap(), None, "passes unchanged");
        // Params that name no folder pass.
        assert_eq!(roots.confine(&json!({"ms": 10})).unwrap(), None);
    }

    #[test]
    fn a_root_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            AppRoots::new(&[dir.path().join("nope")]),
            Err(AppRootError::Unusable { .. })
        ));
        std::fs::write(dir.path().join("f"), "").unwrap();
        assert!(matches!(
            AppRoots::new(&[dir.path().join("f")]),
            Err(AppRootError::NotAFolder(_))
        ));
    }

    #[test]
    fn checked_folders_are_replaced_by_snapshots_and_the_app_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("apps/todo")).unwrap();
        std::fs::create_dir_all(dir.path().join("apps/catalog")).unwrap();
        let root = dir.path().join("apps").canonicalize().unwrap();
        let params = json!({
            "app": root.join("todo"),
            "templates": root.join("catalog"),
            "tools": ["bandit"],
        });
        let spool = dir.path().join("spool");
        let (out, named) = snapshot_folders(&params, &spool).unwrap();
        for param in ["app", "templates"] {
            let path = out[param].as_str().unwrap();
            assert!(path.starts_with(spool.to_str().unwrap()), "{param}: {path}");
        }
        assert_eq!(out["tools"], json!(["bandit"]));
        assert_eq!(named, Some(root.join("todo")));
        // A fetched app is the worker's own already.
        let fetched = json!({"app_from": "generate", "app": root.join("todo")});
        let (out, named) = snapshot_folders(&fetched, &spool).unwrap();
        assert_eq!(out, fetched);
        assert_eq!(named, None);
    }
}
