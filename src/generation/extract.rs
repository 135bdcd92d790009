//! Taking code out of a model's answer, as untrusted input: fenced blocks become files,
//! their paths are confined to the app folder (no `..`, no absolute paths, no links out),
//! file count and sizes are capped, and a violation is a clear, permanent error.
//!
//! A block's file name comes from, in order: its info string (```` ```python backend/app.py ````,
//! `filename=…`, `title="…"`), the line just before the block (`### backend/app.py`,
//! `**File: backend/app.py**`, `` `backend/app.py`: ``), or a path comment on its first line
//! (`# backend/app.py`, `// frontend/app.js`, `<!-- frontend/index.html -->`), else the
//! default file for its language given by the caller.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the answer contains no code block")]
    NoCode,
    #[error("file path `{path}` {reason}; generated files must stay inside the app folder")]
    UnsafePath { path: String, reason: &'static str },
    #[error("the answer has {count} files, more than the limit of {max}")]
    TooManyFiles { count: usize, max: usize },
    #[error("file `{path}` is {size} bytes, more than the limit of {max}")]
    FileTooLarge {
        path: String,
        size: usize,
        max: usize,
    },
    #[error("the answer's files total {size} bytes, more than the limit of {max}")]
    TotalTooLarge { size: usize, max: usize },
    #[error(
        "a block of language `{language}` has no file name and there is no default file for it"
    )]
    Unnamed { language: String },
    #[error("cannot write `{path}`: {reason}")]
    Write { path: String, reason: String },
}

impl ExtractError {
    /// Only "no code at all" is worth asking again (with a stricter prompt); everything
    /// else is the answer violating the rules, which is the model's fault: permanent.
    pub fn is_reaskable(&self) -> bool {
        matches!(self, ExtractError::NoCode)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files: usize,
    pub max_file_bytes: usize,
    pub max_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 40,
            max_file_bytes: 256 * 1024,
            max_total_bytes: 2 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Confined relative path → content. Later blocks for one path replace earlier ones.
    pub files: BTreeMap<PathBuf, String>,
    /// The answer ended inside an unclosed block: it was cut off and should be continued.
    pub truncated: bool,
}

/// A relative path that cannot leave the folder it is joined to.
pub fn confine(raw: &str) -> Result<PathBuf, ExtractError> {
    // Trimming quotes can expose more to trim once `.` parts and slashes are gone
    // (``V`/`` → ``V` `` → `V`): take it to its fixed point, so that a confined path
    // confines to itself. Each pass that changes it makes it shorter.
    let name_raw = |e: ExtractError| match e {
        ExtractError::UnsafePath { reason, .. } => ExtractError::UnsafePath {
            path: raw.to_string(),
            reason,
        },
        other => other,
    };
    let mut path = confine_once(raw)?;
    loop {
        let text = path.to_str().expect("made of a str's parts").to_string();
        let again = confine_once(&text).map_err(name_raw)?;
        if again == path {
            return Ok(path);
        }
        path = again;
    }
}

fn confine_once(raw: &str) -> Result<PathBuf, ExtractError> {
    let unsafe_path = |reason| ExtractError::UnsafePath {
        path: raw.to_string(),
        reason,
    };
    let trimmed = raw
        .trim()
        .trim_matches('`')
        .trim_matches('"')
        .trim_matches('\'');
    if trimmed.is_empty() {
        return Err(unsafe_path("is empty"));
    }
    if trimmed.contains('\0') || trimmed.contains('\\') {
        return Err(unsafe_path("contains a NUL or a backslash"));
    }
    if trimmed.starts_with('~') || (trimmed.len() > 1 && trimmed.as_bytes()[1] == b':') {
        return Err(unsafe_path("points outside the app folder"));
    }
    let path = Path::new(trimmed);
    if path.is_absolute() {
        return Err(unsafe_path("is absolute"));
    }
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path("contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_path("is absolute")),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(unsafe_path("names no file"));
    }
    if clean.components().count() > 12 {
        return Err(unsafe_path("is nested too deeply"));
    }
    Ok(clean)
}

fn looks_like_path(token: &str) -> bool {
    let t = token.trim_matches(|c: char| "`*\"':()[]".contains(c));
    !t.is_empty()
        && t.len() < 200
        && !t.contains(' ')
        && t.rsplit('/').next().is_some_and(|name| {
            name.contains('.') && !name.starts_with('.')
                || name == "Dockerfile"
                || name == "Makefile"
        })
        && !t.starts_with("http")
}

fn path_in_text(line: &str) -> Option<String> {
    let line = line
        .trim()
        .trim_start_matches('#')
        .trim_start_matches("//")
        .trim_start_matches("<!--")
        .trim_end_matches("-->")
        .trim();
    let line = line.trim_start_matches(|c: char| c == '*' || c == '-' || c.is_whitespace());
    let lower = line.to_ascii_lowercase();
    let rest = ["file:", "filename:", "path:"]
        .iter()
        .find_map(|p| lower.strip_prefix(p).map(|_| line[p.len()..].trim()))
        .unwrap_or(line);
    let token = rest.split_whitespace().next()?;
    let token = token.trim_matches(|c: char| "`*\"':()[]".contains(c));
    looks_like_path(token).then(|| token.to_string())
}

fn path_in_info(info: &str) -> Option<String> {
    for part in info
        .split_whitespace()
        .skip(1)
        .chain(info.split(':').skip(1))
    {
        let value = part
            .strip_prefix("filename=")
            .or_else(|| part.strip_prefix("file="))
            .or_else(|| part.strip_prefix("title="))
            .or_else(|| part.strip_prefix("path="))
            .unwrap_or(part);
        let value = value.trim_matches('"').trim_matches('\'');
        // Anything path-like in the info string is taken as the name, so that a hostile
        // name (`../../etc/cron.d/x`) is refused rather than silently replaced.
        if !value.is_empty() && (value.contains('/') || value.contains('.') || value.contains('\\'))
        {
            return Some(value.to_string());
        }
    }
    None
}

/// Extract the files of an answer. `default_file` maps a block's language (`python`,
/// `javascript`, `html`, …) to the file it belongs in when the block is not named.
pub fn extract(
    answer: &str,
    default_file: &dyn Fn(&str) -> Option<String>,
    limits: &Limits,
) -> Result<Extracted, ExtractError> {
    let lines: Vec<&str> = answer.lines().collect();
    let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut i = 0;
    let mut truncated = false;
    let mut blocks = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let fence = if line.starts_with("```") {
            "```"
        } else if line.starts_with("~~~") {
            "~~~"
        } else {
            i += 1;
            continue;
        };
        let info = line[fence.len()..].trim();
        let language = info
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let before = (0..i)
            .rev()
            .map(|j| lines[j])
            .find(|l| !l.trim().is_empty());
        let mut body = Vec::new();
        let mut j = i + 1;
        let mut closed = false;
        while j < lines.len() {
            if lines[j].trim_start().starts_with(fence) && lines[j].trim() == fence {
                closed = true;
                break;
            }
            body.push(lines[j]);
            j += 1;
        }
        if !closed {
            truncated = true;
        }
        blocks += 1;
        let named = path_in_info(info)
            .or_else(|| before.and_then(path_in_text))
            .or_else(|| {
                body.first().and_then(|first| {
                    let t = first.trim();
                    (t.starts_with('#') || t.starts_with("//") || t.starts_with("<!--"))
                        .then(|| path_in_text(t))
                        .flatten()
                })
            });
        let raw = match named.or_else(|| default_file(&language)) {
            Some(p) => p,
            None => return Err(ExtractError::Unnamed { language }),
        };
        let path = confine(&raw)?;
        let mut content = body.join("\n");
        content.push('\n');
        if content.len() > limits.max_file_bytes {
            return Err(ExtractError::FileTooLarge {
                path: path.display().to_string(),
                size: content.len(),
                max: limits.max_file_bytes,
            });
        }
        files.insert(path, content);
        i = j + 1;
    }
    if blocks == 0 {
        return Err(ExtractError::NoCode);
    }
    if files.len() > limits.max_files {
        return Err(ExtractError::TooManyFiles {
            count: files.len(),
            max: limits.max_files,
        });
    }
    let total: usize = files.values().map(String::len).sum();
    if total > limits.max_total_bytes {
        return Err(ExtractError::TotalTooLarge {
            size: total,
            max: limits.max_total_bytes,
        });
    }
    Ok(Extracted { files, truncated })
}

/// Write confined files under `root`, refusing to follow any symbolic link on the way
/// (an app folder must not be a way out).
pub fn write_files(root: &Path, files: &BTreeMap<PathBuf, String>) -> Result<(), ExtractError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for (rel, content) in files {
        let fail = |reason: String| ExtractError::Write {
            path: rel.display().to_string(),
            reason,
        };
        let mut dir = root.to_path_buf();
        for part in rel.parent().into_iter().flat_map(|p| p.components()) {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(fail("a folder on its path is a symbolic link".into()))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(fail("a file stands where a folder should be".into()))
                }
                Ok(_) => {}
                Err(_) => std::fs::create_dir(&dir).map_err(|e| fail(e.to_string()))?,
            }
        }
        let target = root.join(rel);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .map_err(|e| fail(e.to_string()))?;
        file.write_all(content.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(lang: &str) -> Option<String> {
        match lang {
            "python" | "py" => Some("backend/app.py".into()),
            "html" => Some("frontend/index.html".into()),
            _ => None,
        }
    }

    fn run(answer: &str) -> Result<Extracted, ExtractError> {
        extract(answer, &defaults, &Limits::default())
    }

    /// Found by the `extract_code` fuzz target: ``V`/`` confined to ``V` ``, which confined
    /// again to `V`. A confined path is its own confinement.
    #[test]
    fn confining_is_idempotent_when_quotes_hide_behind_slashes() {
        for raw in ["V`/", "`a`/./", "'x'/", "\"b\"//.", "a/`b`"] {
            let once = confine(raw).unwrap();
            assert_eq!(confine(once.to_str().unwrap()).unwrap(), once, "{raw}");
        }
        assert_eq!(confine("V`/").unwrap(), Path::new("V"));
        let e = confine("`./`").unwrap_err().to_string();
        assert!(
            e.contains("`./`"),
            "the error names what the model wrote: {e}"
        );
    }

    #[test]
    fn names_come_from_info_strings_headings_and_first_line_comments() {
        let answer = "Here is the app.\n\n```python backend/app.py\nprint('a')\n```\n\n### frontend/app.js\n```javascript\nconsole.log(1)\n```\n\n```html\n<!-- frontend/index.html -->\n<p>x</p>\n```\n\n**File: backend/requirements.txt**\n```\nflask==3.1.3\n```\n";
        let out = run(answer).unwrap();
        let names: Vec<String> = out.files.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            vec![
                "backend/app.py",
                "backend/requirements.txt",
                "frontend/app.js",
                "frontend/index.html"
            ]
        );
        assert_eq!(out.files[Path::new("backend/app.py")], "print('a')\n");
        assert!(!out.truncated);
    }

    #[test]
    fn unnamed_blocks_use_the_language_default() {
        let out = run("```python\nx = 1\n```").unwrap();
        assert!(out.files.contains_key(Path::new("backend/app.py")));
        assert_eq!(
            run("```rust\nfn main() {}\n```").unwrap_err(),
            ExtractError::Unnamed {
                language: "rust".into()
            }
        );
    }

    #[test]
    fn an_unclosed_block_marks_the_answer_truncated() {
        let out = run("```python backend/app.py\nimport flask\napp = fla").unwrap();
        assert!(out.truncated);
    }

    #[test]
    fn no_code_is_reaskable_and_violations_are_not() {
        let e = run("I cannot help with that.").unwrap_err();
        assert_eq!(e, ExtractError::NoCode);
        assert!(e.is_reaskable());
        let e = run("```python ../../etc/cron.d/x\nboom\n```").unwrap_err();
        assert!(
            matches!(e, ExtractError::UnsafePath { .. }) && !e.is_reaskable(),
            "{e}"
        );
    }

    #[test]
    fn paths_are_confined() {
        for bad in [
            "/etc/passwd",
            "../x.py",
            "a/../../x.py",
            "~/.ssh/id",
            "C:\\x.py",
            "a\\b.py",
            "",
            ".",
            "x\0.py",
        ] {
            assert!(confine(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            confine("./backend//app.py").unwrap(),
            PathBuf::from("backend/app.py")
        );
        assert_eq!(
            confine("`frontend/index.html`").unwrap(),
            PathBuf::from("frontend/index.html")
        );
    }

    #[test]
    fn counts_and_sizes_are_capped() {
        let limits = Limits {
            max_files: 2,
            max_file_bytes: 10,
            max_total_bytes: 15,
        };
        let three = "```python a.py\n1\n```\n```python b.py\n2\n```\n```python c.py\n3\n```";
        assert!(matches!(
            extract(three, &defaults, &limits),
            Err(ExtractError::TooManyFiles { count: 3, max: 2 })
        ));
        let big = "```python a.py\n0123456789abc\n```";
        assert!(matches!(
            extract(big, &defaults, &limits),
            Err(ExtractError::FileTooLarge { .. })
        ));
        let total = "```python a.py\n012345678\n```\n```python b.py\n012345678\n```";
        assert!(matches!(
            extract(total, &defaults, &limits),
            Err(ExtractError::TotalTooLarge { .. })
        ));
    }

    #[test]
    fn writing_never_follows_links_out_of_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("backend")).unwrap();
        let mut files = BTreeMap::new();
        files.insert(PathBuf::from("backend/app.py"), "x".to_string());
        assert!(write_files(root.path(), &files).is_err());
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "nothing written outside"
        );
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("app.py")).unwrap();
        let mut files = BTreeMap::new();
        files.insert(PathBuf::from("app.py"), "x".to_string());
        assert!(
            write_files(root.path(), &files).is_err(),
            "a link as the file itself is refused"
        );
        let mut ok = BTreeMap::new();
        ok.insert(
            PathBuf::from("frontend/js/app.js"),
            "console.log(1)\n".to_string(),
        );
        write_files(root.path(), &ok).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("frontend/js/app.js")).unwrap(),
            "console.log(1)\n"
        );
    }
}
