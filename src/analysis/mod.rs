//! Analysis: analyzers that turn an app folder into findings in one normalized model.
//! `finding` is the model (pure), `sarif` its standard export, `static_tools` the static
//! analyzer over real tools.

pub mod apps;
pub mod catalog;
pub mod confine;
pub mod discover;
pub mod dynamic;
pub mod envs;
pub mod finding;
pub mod judge;
pub mod loadgen;
pub mod node_env;
pub mod openapi_import;
pub mod recipe;
pub mod routes;
pub mod sarif;
pub mod snapshot;
pub mod static_tools;

use std::path::{Path, PathBuf};

/// A temporary folder holding `files` (relative path, text): an app for a unit test.
#[cfg(test)]
pub(crate) fn tree_of(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

/// Folders no analysis looks into: dependencies, virtualenvs, VCS data, caches.
pub const SKIPPED_DIRS: &[&str] = &["node_modules", ".git", "__pycache__", ".venv", "venv"];

/// Every file of an app folder (sorted), outside [`SKIPPED_DIRS`] and the folders `also_skip`
/// names. Symbolic links are not followed.
pub fn app_files(dir: &Path, also_skip: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().to_string();
            if kind.is_dir() {
                if !SKIPPED_DIRS.contains(&name.as_str()) && !also_skip.contains(&name.as_str()) {
                    stack.push(e.path());
                }
            } else if kind.is_file() {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}
