//! Assay manages its own analyzer toolchain: on a machine where no analysis tool is
//! installed (no `.tools/`, none on PATH), the first `assay analyze` installs the pinned
//! tools into its cache dir with progress, and the analysis then runs them for real;
//! `assay tools list` shows each pin installed at its version, and `assay doctor` finds
//! every tool there. One real install (about 40 s with a warm pip cache).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_assay");

/// A PATH with what the installers need (python3, npm, node) and the system's basics, but
/// no analysis tool.
fn bare_path() -> String {
    let mut dirs: Vec<PathBuf> = ["python3", "npm", "node"]
        .iter()
        .filter_map(|p| assay::toolchain::which(p))
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.extend(["/usr/bin", "/bin"].map(PathBuf::from));
    dirs.dedup();
    std::env::join_paths(dirs)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn assay(cwd: &Path, tools: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("PATH", bare_path())
        .env("ASSAY_TOOLS_DIR", tools)
        .env_remove("ASSAY_TOOL_PATH")
        .env_remove("ASSAY_NO_TOOLS_INSTALL")
        // A developer's key would make the run generate apps too.
        .env_remove("OPENROUTER_API_KEY")
        .output()
        .unwrap()
}

#[test]
fn the_first_analysis_installs_the_pinned_tools_and_runs_them() {
    let root = tempfile::tempdir().unwrap();
    let (work, tools) = (root.path().join("work"), root.path().join("toolchain"));
    let app = work.join("apps/some-model/calc");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("app.py"),
        "from flask import Flask, request\napp = Flask(__name__)\n\n@app.route('/calc')\ndef calc():\n    return str(eval(request.args['q']))\n",
    )
    .unwrap();
    std::fs::write(
        work.join("apps/some-model/calc/requirements.txt"),
        "flask\n",
    )
    .unwrap();
    let before = assay(&work, &tools, &["doctor", "--json"]);
    assert_eq!(
        before.status.code(),
        Some(1),
        "ruff and friends are missing"
    );
    let checks: Value = serde_json::from_slice(&before.stdout).unwrap();
    let ruff = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "ruff")
        .unwrap();
    assert_eq!(ruff["ok"], false, "{ruff}");

    let run = assay(
        &work,
        &tools,
        &[
            "analyze",
            "apps",
            "--layout",
            "{model}/{template}",
            "--analyzers",
            "static",
            "--plain",
            "--no-cache",
            "--data-dir",
            "data",
        ],
    );
    let log = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{log}");
    assert!(log.contains("installing Assay's analysis tools"), "{log}");
    assert!(
        log.contains("tools: installing the Python tools"),
        "progress: {log}"
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("report: "), "{stdout}");

    let results = assay(
        &work,
        &tools,
        &["results", "1", "--json", "--data-dir", "data"],
    );
    let apps: Value = serde_json::from_slice(&results.stdout).unwrap();
    let tool_runs = apps[0]["tools"].as_array().unwrap();
    for tool in ["ruff", "bandit", "semgrep", "pylint"] {
        let run = tool_runs.iter().find(|t| t["tool"] == tool).unwrap();
        assert_eq!(run["status"], "success", "{tool}: {run}");
    }
    assert!(
        apps[0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["cwe"] == 95 && f["location"]["line"] == 6),
        "the planted eval: {}",
        apps[0]["findings"]
    );

    let list = assay(&work, &tools, &["tools", "list", "--json"]);
    let lines: Vec<assay::toolchain::ToolLine> = serde_json::from_slice(&list.stdout).unwrap();
    for l in &lines {
        assert_eq!(l.installed.as_deref(), Some(l.pinned.as_str()), "{l:?}");
    }
    let ruff = lines.iter().find(|l| l.package == "ruff").unwrap();
    assert!(
        ruff.found_at
            .as_deref()
            .unwrap()
            .starts_with(&*tools.to_string_lossy()),
        "{ruff:?}"
    );
    let doctor = assay(&work, &tools, &["doctor", "--json"]);
    let checks: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    for c in checks.as_array().unwrap() {
        if ["ruff", "eslint", "uv"].contains(&c["what"].as_str().unwrap()) {
            assert_eq!(c["ok"], true, "{c}");
        }
    }
    // Installed once: a second install does nothing and says where the tools are.
    let again = assay(&work, &tools, &["tools", "install"]);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("tools: installing"));
}
