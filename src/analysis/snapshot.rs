//! The worker's own copy of an app folder it was allowed to read, taken before any
//! analysis reads it.
//!
//! An app root is checked once (`kinds::app_roots`: the folder's canonical path lies inside
//! the worker's roots); after that, someone who may write inside the root could swap a
//! folder on the way for a link, and a path-based reader would follow it out. The snapshot
//! reads the app only through descriptors: the canonical path is opened one component at
//! a time without following any link (a component swapped for a link since the check is
//! refused), and every entry below it is opened relative to its folder's descriptor, again
//! following nothing. What it cannot copy (links, hard links, devices, what is over the
//! app's limits) it records as a link to a marker, which [`super::confine`] reports as a
//! finding like any other link. Every kind then reads, hashes and runs the snapshot: a
//! worker-owned folder under `apps/`, named by its content, so jobs of one app share it
//! (and the app pool shares the running app).

use super::confine::{MAX_APP_BYTES, MAX_APP_FILES};
use super::SKIPPED_DIRS;
use sha2::{Digest, Sha256};
use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// How deep folders of a snapshot may nest.
const MAX_DEPTH: usize = 32;

/// Link targets that stand for what a snapshot left out (no real link points there: they
/// are not paths).
pub const LEFT_OUT_PREFIX: &str = "assay-left-out:";
pub const HARD_LINK: &str = "assay-left-out:hard-link";
pub const SPECIAL_FILE: &str = "assay-left-out:special-file";
pub const OVER_THE_APP_LIMIT: &str = "assay-left-out:over-the-app-limit";
pub const TOO_DEEP: &str = "assay-left-out:too-deep";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The canonical path no longer leads to the folder that was checked.
    #[error("`{path}` changed after it was checked: `{component}` is now a link or not a folder")]
    Swapped { path: PathBuf, component: String },
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error("snapshot of {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Copy the app at the canonical path `app` into `apps/snap-<content hash>` (once: a
/// snapshot of the same content is reused) and return that folder. Blocking.
pub fn snapshot(app: &Path, apps: &Path) -> Result<PathBuf, SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let root = open_without_links(app)?;
    std::fs::create_dir_all(apps).map_err(io(apps))?;
    let staging = tempfile::Builder::new()
        .prefix(".snap-")
        .tempdir_in(apps)
        .map_err(io(apps))?;
    let into = staging.path().join("app");
    std::fs::create_dir(&into).map_err(io(&into))?;
    let mut walk = Walk {
        hash: Sha256::new(),
        files: 0,
        bytes: 0,
    };
    walk.copy_dir(&root, Path::new(""), &into, 0)
        .map_err(io(app))?;
    let folder = apps.join(format!("snap-{}", hex::encode(walk.hash.finalize())));
    if folder.is_dir() {
        crate::kinds::inputs::touch(&folder);
        return Ok(folder);
    }
    match std::fs::rename(&into, &folder) {
        Ok(()) => Ok(folder),
        // Another job took the same snapshot meanwhile: either copy is the same.
        Err(_) if folder.is_dir() => Ok(folder),
        Err(e) => Err(io(&folder)(e)),
    }
}

/// `path`'s folder, opened from `/` one component at a time, following no link.
fn open_without_links(path: &Path) -> Result<OwnedFd, SnapshotError> {
    if !path.is_absolute() {
        return Err(SnapshotError::NotAbsolute(path.to_path_buf()));
    }
    let mut fd =
        open_at(None, OsStr::new("/"), libc::O_PATH | libc::O_DIRECTORY).map_err(|source| {
            SnapshotError::Io {
                path: "/".into(),
                source,
            }
        })?;
    for component in path.components() {
        let name = match component {
            Component::RootDir => continue,
            Component::Normal(name) => name,
            // A canonical path has neither; refuse rather than guess.
            other => {
                return Err(SnapshotError::Swapped {
                    path: path.to_path_buf(),
                    component: other.as_os_str().to_string_lossy().into_owned(),
                })
            }
        };
        fd = match open_at(
            Some(&fd),
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        ) {
            Ok(next) => next,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(SnapshotError::Swapped {
                    path: path.to_path_buf(),
                    component: name.to_string_lossy().into_owned(),
                })
            }
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
    }
    Ok(fd)
}

fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let name = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid C string and descriptor; the result is checked before it is owned.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target of the link `fd` (opened with `O_PATH | O_NOFOLLOW`) is.
fn link_target(fd: &OwnedFd) -> std::io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: an empty path makes readlinkat read the link `fd` itself is; `buf` is large
    // enough for any target and its length is passed.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// `/proc/self/fd/N`: opening it reaches exactly the file `fd` holds, whatever was
/// renamed or swapped since.
fn through(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

struct Walk {
    hash: Sha256,
    files: usize,
    bytes: u64,
}

impl Walk {
    fn record(&mut self, kind: &str, rel: &Path, extra: &[u8]) {
        self.hash.update(kind.as_bytes());
        self.hash.update([0]);
        self.hash.update(rel.as_os_str().as_bytes());
        self.hash.update([0]);
        self.hash.update((extra.len() as u64).to_le_bytes());
        self.hash.update(extra);
    }

    fn left_out(&mut self, marker: &str, rel: &Path, to: &Path) -> std::io::Result<()> {
        self.record("l", rel, marker.as_bytes());
        std::os::unix::fs::symlink(marker, to)
    }

    fn copy_dir(
        &mut self,
        dir: &OwnedFd,
        rel: &Path,
        into: &Path,
        depth: usize,
    ) -> std::io::Result<()> {
        let mut names: Vec<OsString> = std::fs::read_dir(through(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let to = into.join(&name);
            let entry = open_at(Some(dir), &name, libc::O_PATH | libc::O_NOFOLLOW)?;
            // Of the entry itself: a link's descriptor stands for the link.
            let stat = nix::sys::stat::fstat(entry.as_raw_fd()).map_err(std::io::Error::from)?;
            let kind = stat.st_mode & libc::S_IFMT;
            if kind == libc::S_IFLNK {
                let target = link_target(&entry)?;
                self.record("l", &rel, target.as_bytes());
                std::os::unix::fs::symlink(&target, &to)?;
            } else if kind == libc::S_IFDIR {
                if SKIPPED_DIRS.contains(&name.to_string_lossy().as_ref()) {
                    continue;
                }
                if depth + 1 > MAX_DEPTH {
                    self.left_out(TOO_DEEP, &rel, &to)?;
                    continue;
                }
                self.record("d", &rel, &[]);
                std::fs::create_dir(&to)?;
                self.copy_dir(&entry, &rel, &to, depth + 1)?;
            } else if kind != libc::S_IFREG {
                self.left_out(SPECIAL_FILE, &rel, &to)?;
            } else if stat.st_nlink > 1 {
                self.left_out(HARD_LINK, &rel, &to)?;
            } else if self.files >= MAX_APP_FILES
                || self.bytes + stat.st_size.max(0) as u64 > MAX_APP_BYTES
            {
                self.left_out(OVER_THE_APP_LIMIT, &rel, &to)?;
            } else {
                let mut content = Vec::new();
                std::fs::File::open(through(&entry))?
                    .take(MAX_APP_BYTES - self.bytes)
                    .read_to_end(&mut content)?;
                self.files += 1;
                self.bytes += content.len() as u64;
                self.record("f", &rel, &content);
                std::fs::File::create(&to)?.write_all(&content)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(dir: &Path) -> PathBuf {
        let app = dir.join("app");
        std::fs::create_dir_all(app.join("backend")).unwrap();
        std::fs::write(app.join("backend/app.py"), "print('hi')\n").unwrap();
        std::fs::write(app.join("assay-app.toml"), "template = \"t\"\n").unwrap();
        app.canonicalize().unwrap()
    }

    #[test]
    fn a_snapshot_copies_files_keeps_links_as_links_and_is_named_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        std::os::unix::fs::symlink("/etc/passwd", app.join("backend/passwd.py")).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "SECRET").unwrap();
        std::fs::hard_link(&secret, app.join("backend/linked.py")).unwrap();
        std::fs::create_dir_all(app.join("node_modules/x")).unwrap();
        let apps = dir.path().join("apps");
        let snap = snapshot(&app, &apps).unwrap();
        assert!(snap
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("snap-"));
        assert_eq!(
            std::fs::read_to_string(snap.join("backend/app.py")).unwrap(),
            "print('hi')\n"
        );
        assert_eq!(
            std::fs::read_link(snap.join("backend/passwd.py")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(snap.join("backend/linked.py")).unwrap(),
            Path::new(HARD_LINK)
        );
        assert!(!snap.join("node_modules").exists());
        // The same content, the same snapshot; other content, another.
        assert_eq!(snapshot(&app, &apps).unwrap(), snap);
        std::fs::write(app.join("backend/app.py"), "print('changed')\n").unwrap();
        assert_ne!(snapshot(&app, &apps).unwrap(), snap);
        // No staging folder is left behind.
        let staging: Vec<_> = std::fs::read_dir(&apps)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(staging.is_empty(), "{staging:?}");
    }

    /// The check saw a real folder; by the time the snapshot is taken, a folder on the way
    /// is a link out of the root. The snapshot refuses, and reads nothing outside.
    #[test]
    fn a_folder_swapped_for_a_link_after_the_check_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("apps/todo")).unwrap();
        std::fs::write(root.join("apps/todo/app.py"), "x = 1\n").unwrap();
        // As the worker checks a job's `app` against its roots.
        let roots = crate::kinds::app_roots::AppRoots::new(&[&root]).unwrap();
        let confined = roots
            .confine(&serde_json::json!({"app": root.join("apps/todo")}))
            .unwrap()
            .unwrap();
        let checked = PathBuf::from(confined["app"].as_str().unwrap());
        let outside = dir.path().join("outside/todo");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("app.py"), "SECRET = 'outside'\n").unwrap();
        std::fs::rename(root.join("apps"), dir.path().join("apps-moved")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("apps")).unwrap();
        let e = snapshot(&checked, &dir.path().join("spool")).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Swapped { component, .. } if component == "apps"),
            "{e}"
        );
        // Inside the app, a folder swapped for a link is copied as the link it is.
        let app = dir.path().join("apps-moved/todo");
        std::os::unix::fs::symlink(dir.path().join("outside/todo"), app.join("lib")).unwrap();
        let snap = snapshot(&app.canonicalize().unwrap(), &dir.path().join("spool")).unwrap();
        assert!(std::fs::symlink_metadata(snap.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
