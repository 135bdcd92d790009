//! Model-written app folders are hostile input: a symlink `backend/passwd.py ->
//! /etc/passwd`, a hard link to a file outside, a 20 MB file of one line. Static tools and
//! snippets therefore read a confined copy: regular files of the app only, each opened
//! without following links and copied up to a size; what was left out is reported as a
//! finding, so the model that wrote it is accountable for it.

use super::finding::{Finding, Location, Severity};
use super::SKIPPED_DIRS;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest file copied for analysis (generated source files are kilobytes).
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// The longest line a copied file may have: source a model writes has lines of a hundred
/// characters; a longer one is minified or generated, and makes linters crawl.
pub const MAX_LINE_BYTES: usize = 20_000;
/// The most bytes and files one app's copy may hold.
pub const MAX_APP_BYTES: u64 = 256 * 1024 * 1024;
pub const MAX_APP_FILES: usize = 20_000;
/// How deep folders may nest.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    Symlink { target: String },
    HardLink,
    TooLarge { bytes: u64 },
    LineTooLong { line: u32, bytes: usize },
    NotARegularFile,
    OverTheAppLimit,
    TooDeep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// Relative to the app, `/`-separated.
    pub path: String,
    pub why: Left,
}

pub struct ConfinedCopy {
    pub root: PathBuf,
    pub left_out: Vec<LeftOut>,
}

impl ConfinedCopy {
    /// One finding per entry left out of the analysis.
    pub fn findings(&self, analyzer: &str) -> Vec<Finding> {
        self.left_out
            .iter()
            .map(|l| {
                let (rule, severity, message) = match &l.why {
                    Left::Symlink { target } => (
                        "symlink",
                        Severity::Medium,
                        format!("a symbolic link (to `{target}`) in the app's files was not followed"),
                    ),
                    Left::HardLink => (
                        "hard-link",
                        Severity::Medium,
                        "a file with several hard links was not read (it may be a file outside the app)".to_string(),
                    ),
                    Left::TooLarge { bytes } => (
                        "file-too-large",
                        Severity::Info,
                        format!("{bytes} bytes: larger than the {MAX_FILE_BYTES} bytes a file may have to be analyzed"),
                    ),
                    Left::LineTooLong { line, bytes } => (
                        "line-too-long",
                        Severity::Info,
                        format!("line {line} has {bytes} bytes: longer than the {MAX_LINE_BYTES} bytes a line may have for its file to be analyzed"),
                    ),
                    Left::NotARegularFile => (
                        "special-file",
                        Severity::Medium,
                        "a device, socket or pipe in the app's files was not read".to_string(),
                    ),
                    Left::OverTheAppLimit => (
                        "app-too-large",
                        Severity::Info,
                        format!("not analyzed: the app passed {MAX_APP_FILES} files or {MAX_APP_BYTES} bytes"),
                    ),
                    Left::TooDeep => (
                        "too-deep",
                        Severity::Info,
                        format!("not analyzed: folders nest deeper than {MAX_DEPTH}"),
                    ),
                };
                Finding::new(
                    analyzer,
                    "assay",
                    &format!("assay/{rule}"),
                    None,
                    severity,
                    "",
                    &message,
                    Location {
                        path: l.path.clone(),
                        line: None,
                        column: None,
                        end_line: None,
                    },
                )
            })
            .collect()
    }
}

/// Copy the regular files of `app` into `into` (which must not exist yet), following no
/// link. Blocking: call it off the async threads.
pub fn confined_copy(app: &Path, into: &Path) -> std::io::Result<ConfinedCopy> {
    std::fs::create_dir_all(into)?;
    // The copy may be made inside the app's own folder: it must not copy itself.
    let itself = std::fs::metadata(into).map(|m| (m.dev(), m.ino()))?;
    let mut copy = ConfinedCopy {
        root: into.to_path_buf(),
        left_out: Vec::new(),
    };
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(app.join(&rel))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let rel_path = rel.join(&name);
            let shown = rel_path.to_string_lossy().replace('\\', "/");
            let left = |why| LeftOut {
                path: shown.clone(),
                why,
            };
            let meta = std::fs::symlink_metadata(e.path())?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target = std::fs::read_link(e.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                // What a snapshot left out is a link to a marker: reported as what it was.
                use super::snapshot as snap;
                copy.left_out.push(left(match target.as_str() {
                    snap::HARD_LINK => Left::HardLink,
                    snap::SPECIAL_FILE => Left::NotARegularFile,
                    snap::OVER_THE_APP_LIMIT => Left::OverTheAppLimit,
                    snap::TOO_DEEP => Left::TooDeep,
                    _ => Left::Symlink { target },
                }));
            } else if kind.is_dir() {
                if SKIPPED_DIRS.contains(&name.to_string_lossy().as_ref())
                    || (meta.dev(), meta.ino()) == itself
                {
                    continue;
                }
                if depth + 1 > MAX_DEPTH {
                    copy.left_out.push(left(Left::TooDeep));
                    continue;
                }
                std::fs::create_dir(into.join(&rel_path))?;
                stack.push((rel_path, depth + 1));
            } else if !kind.is_file() {
                copy.left_out.push(left(Left::NotARegularFile));
            } else if files >= MAX_APP_FILES || bytes + meta.len() > MAX_APP_BYTES {
                copy.left_out.push(left(Left::OverTheAppLimit));
            } else {
                match copy_one(&e.path(), &into.join(&rel_path))? {
                    Ok(n) => {
                        files += 1;
                        bytes += n;
                    }
                    Err(why) => copy.left_out.push(left(why)),
                }
            }
        }
    }
    copy.left_out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(copy)
}

/// Copy one file, opened without following a link (one swapped in since the walk saw it is
/// refused by the kernel), checked on the open handle.
fn copy_one(from: &Path, to: &Path) -> std::io::Result<Result<u64, Left>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Err(Left::Symlink {
                target: String::new(),
            }))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err(Left::NotARegularFile));
    }
    if meta.nlink() > 1 {
        return Ok(Err(Left::HardLink));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Ok(Err(Left::TooLarge { bytes: meta.len() }));
    }
    // Bounded even if the file grows while it is read.
    let mut text = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut text)?;
    if let Some((index, line)) = text
        .split(|b| *b == b'\n')
        .enumerate()
        .find(|(_, line)| line.len() > MAX_LINE_BYTES)
    {
        return Ok(Err(Left::LineTooLong {
            line: u32::try_from(index + 1).unwrap_or(u32::MAX),
            bytes: line.len(),
        }));
    }
    std::fs::write(to, &text)?;
    Ok(Ok(text.len() as u64))
}

/// Snippets for findings, read from the confined copy: each file once, only files of the
/// copy, the line clipped.
pub fn attach_snippets(root: &Path, findings: &mut [Finding]) {
    let mut texts: std::collections::HashMap<String, Option<String>> = Default::default();
    for f in findings.iter_mut() {
        let Some(line) = f.location.line else {
            continue;
        };
        let path = f.location.path.clone();
        let text = texts
            .entry(path.clone())
            .or_insert_with(|| read_inside(root, &path));
        let Some(text) = text else { continue };
        if let Some(l) = text.lines().nth(line.saturating_sub(1) as usize) {
            f.snippet = Some(l.trim().chars().take(240).collect());
            f.fingerprint = super::finding::fingerprint(f);
        }
    }
}

/// A file of the copy by its relative path; nothing for a path that leaves it.
fn read_inside(root: &Path, rel: &str) -> Option<String> {
    let rel = Path::new(rel);
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(root.join(rel))
        .ok()?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_apps_own_regular_files_are_copied_and_the_rest_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("backend")).unwrap();
        std::fs::write(app.join("backend/app.py"), "import os\nos.system(cmd)\n").unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "root:x:0:0\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", app.join("backend/passwd.py")).unwrap();
        std::os::unix::fs::symlink(dir.path(), app.join("outside")).unwrap();
        std::fs::hard_link(&secret, app.join("backend/linked.py")).unwrap();
        std::fs::write(app.join("big.js"), vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let mut minified = b"// bundle\n".to_vec();
        minified.extend(vec![b'x'; MAX_LINE_BYTES + 1]);
        std::fs::write(app.join("bundle.min.js"), minified).unwrap();
        std::fs::create_dir_all(app.join("node_modules/x")).unwrap();
        std::fs::write(app.join("node_modules/x/i.js"), "1").unwrap();

        let copy = confined_copy(&app, &dir.path().join("copy")).unwrap();
        let whys: Vec<(&str, &Left)> = copy
            .left_out
            .iter()
            .map(|l| (l.path.as_str(), &l.why))
            .collect();
        assert_eq!(
            whys,
            vec![
                ("backend/linked.py", &Left::HardLink),
                (
                    "backend/passwd.py",
                    &Left::Symlink {
                        target: "/etc/passwd".into()
                    }
                ),
                (
                    "big.js",
                    &Left::TooLarge {
                        bytes: MAX_FILE_BYTES + 1
                    }
                ),
                (
                    "bundle.min.js",
                    &Left::LineTooLong {
                        line: 2,
                        bytes: MAX_LINE_BYTES + 1
                    }
                ),
                (
                    "outside",
                    &Left::Symlink {
                        target: dir.path().display().to_string()
                    }
                ),
            ]
        );
        assert_eq!(
            std::fs::read_to_string(copy.root.join("backend/app.py")).unwrap(),
            "import os\nos.system(cmd)\n"
        );
        assert!(!copy.root.join("backend/passwd.py").exists());
        assert!(!copy.root.join("node_modules").exists());
        let findings = copy.findings("static");
        assert_eq!(findings.len(), 5);
        assert!(findings.iter().any(
            |f| f.rule == "assay/line-too-long" && f.message.contains("line 2 has 20001 bytes")
        ));
        assert!(findings.iter().all(|f| f.rule.starts_with("assay/")));

        // Snippets come from the copy only: a finding that names the link, or a path out of
        // the app, quotes nothing.
        let at = |path: &str| {
            Finding::new(
                "static",
                "t",
                "r",
                None,
                Severity::Low,
                "",
                "m",
                Location {
                    path: path.into(),
                    line: Some(1),
                    column: None,
                    end_line: None,
                },
            )
        };
        let mut fs = vec![
            at("backend/app.py"),
            at("backend/passwd.py"),
            at("../secret.txt"),
            at("/etc/passwd"),
        ];
        attach_snippets(&copy.root, &mut fs);
        assert_eq!(fs[0].snippet.as_deref(), Some("import os"));
        assert!(fs[1..].iter().all(|f| f.snippet.is_none()), "{fs:?}");
    }
}
