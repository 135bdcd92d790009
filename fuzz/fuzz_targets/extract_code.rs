//! A model's answer is untrusted: whatever files the extractor accepts have relative
//! paths that stay inside the app folder, respect the limits, and are written there and
//! nowhere else.
#![no_main]

use assay::generation::extract::{confine, extract, write_files, ExtractError, Limits};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

/// The generator's defaults for the backend step (see `generation::generate`).
fn defaults(lang: &str) -> Option<String> {
    match lang {
        "python" | "py" => Some("backend/app.py".into()),
        "text" | "txt" | "" => Some("backend/requirements.txt".into()),
        "html" => Some("frontend/index.html".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Ok(answer) = std::str::from_utf8(rest) else {
        return;
    };
    // Small limits too, so that the count and size checks are reached by small inputs.
    let limits = if choice & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_files: 3,
            max_file_bytes: 64,
            max_total_bytes: 128,
        }
    };
    let out = match extract(answer, &defaults, &limits) {
        Ok(out) => out,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            // Only "no code" is asked again; a rule broken by the answer is final.
            assert_eq!(e.is_reaskable(), e == ExtractError::NoCode);
            return;
        }
    };
    assert!(out.files.len() <= limits.max_files);
    let mut total = 0;
    for (path, content) in &out.files {
        assert_confined(path);
        assert_eq!(confine(path.to_str().unwrap()).as_ref(), Ok(path));
        assert!(content.len() <= limits.max_file_bytes);
        total += content.len();
    }
    assert!(total <= limits.max_total_bytes);

    if choice & 2 != 0 {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        std::fs::create_dir(&app).unwrap();
        // Two files may still collide (`a` as a file and `a/b`): a clean error, not an escape.
        let _ = write_files(&app, &out.files);
        assert_only_under(root.path(), &app);
    }
});

fn assert_confined(path: &Path) {
    assert!(path.is_relative(), "{path:?}");
    assert!(path.components().count() <= 12, "{path:?}");
    for c in path.components() {
        assert!(matches!(c, Component::Normal(_)), "{path:?} has {c:?}");
    }
}

/// Nothing in `root` but `app` and what is under it, and no links anywhere.
fn assert_only_under(root: &Path, app: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(path.starts_with(app), "{path:?} written outside the app");
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(!meta.file_type().is_symlink(), "{path:?} is a link");
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
}
