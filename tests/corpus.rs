//! `assay analyze` on apps written the way LLMs write them (`examples/corpus/`, none of
//! them written for Assay: no `assay-app.toml`, no `/health`, hard-coded ports, a pinned
//! old Flask, a crash at import, Markdown saved as `app.py`). One real `assay analyze`
//! process, sandboxed apps, real tools; then every app must have its expected outcome:
//! started and analyzed, or the model's own failure recorded as a completed result, and
//! no job failed, retried or left for an infrastructure reason.

use assay::domain::JobState;
use assay::store::{sqlite::SqliteStore, JobFilter, Store};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_assay");

#[derive(Deserialize)]
struct Expected {
    app: Vec<ExpectedApp>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ExpectedApp {
    path: String,
    model: String,
    template: String,
    outcome: String,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    defect: Vec<Defect>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Defect {
    kind: String,
    cwe: u32,
    file: String,
    line: u32,
    what: String,
}

/// CWEs a finding may carry for a planted one: the same weakness in other words.
fn same_weakness(planted: u32, found: u32) -> bool {
    let family: &[&[u32]] = &[&[256, 257, 312, 522, 916, 327, 328], &[287, 290, 345, 347]];
    planted == found
        || family
            .iter()
            .any(|f| f.contains(&planted) && f.contains(&found))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool_path() -> String {
    let root = repo();
    format!(
        "{}:{}",
        root.join(".tools/venv/bin").display(),
        root.join(".tools/node/node_modules/.bin").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_app_of_a_real_looking_corpus_is_analyzed_or_recorded_with_its_own_failure() {
    if std::env::var_os("ASSAY_REQUIRE_SANDBOX").is_none() && assay::sandbox::check().is_err() {
        eprintln!("skipped: no sandbox here (CI sets ASSAY_REQUIRE_SANDBOX)");
        return;
    }
    let corpus = repo().join("examples/corpus");
    let expected: Expected =
        toml::from_str(&std::fs::read_to_string(corpus.join("expected.toml")).unwrap()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["analyze"])
        .arg(&corpus)
        .args([
            "--layout",
            "{model}/{template}",
            "--analyzers",
            "static,dynamic,performance",
            "--plain",
            "--no-cache",
            "--data-dir",
        ])
        .arg(data.path())
        .env("ASSAY_TOOL_PATH", tool_path())
        .env_remove("ASSAY_APP_PATH")
        // A developer's key would make the run generate apps too.
        .env_remove("OPENROUTER_API_KEY")
        .current_dir(repo())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "assay analyze took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains(&format!("{} apps under", expected.app.len())),
        "{log}"
    );

    let store = SqliteStore::open(&data.path().join("server").join("assay.db"))
        .await
        .unwrap();
    let jobs = store
        .jobs(&JobFilter {
            pipeline_id: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3 * expected.app.len());
    for job in &jobs {
        assert_eq!(
            job.state,
            JobState::Completed,
            "{} {:?}",
            job.key,
            job.last_error
        );
        // The model's failures are results, not retries.
        if job.attempts != 1 {
            let attempts = store.attempts(job.id).await.unwrap();
            panic!(
                "{} ran {} times: {attempts:#?}\n{log}",
                job.key, job.attempts
            );
        }
    }
    let by_app: BTreeMap<(String, String), Vec<_>> =
        jobs.iter().fold(BTreeMap::new(), |mut m, j| {
            let key = (
                j.item["model"].as_str().unwrap().to_string(),
                j.item["template"].as_str().unwrap().to_string(),
            );
            m.entry(key).or_insert_with(Vec::new).push(j);
            m
        });
    let mut wrong = Vec::new();
    for app in &expected.app {
        let jobs = by_app
            .get(&(app.model.clone(), app.template.clone()))
            .unwrap_or_else(|| panic!("{}: not discovered", app.path));
        for job in jobs.iter().filter(|j| j.kind != "static") {
            let result = job.result.as_ref().unwrap();
            let outcome = result["app_outcome"].as_str().unwrap_or("(none)");
            if outcome != app.outcome {
                wrong.push(format!(
                    "{} {}: {outcome}, expected {} ({})",
                    app.path, job.kind, app.outcome, result["status"]
                ));
                continue;
            }
            if app.outcome == "started" {
                assert_eq!(result["run"]["source"], "inferred", "{}", app.path);
                if job.kind == "dynamic" {
                    // Probed, with or without a template it was written for.
                    let probes = result["coverage"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|p| p["part"] == "security probes")
                        .cloned();
                    assert_eq!(
                        probes.map(|p| p["done"].clone()),
                        Some(json!(true)),
                        "{}: {result}",
                        app.path
                    );
                    assert!(result["requests"].as_u64().unwrap() > 5, "{}", app.path);
                }
                if job.kind == "performance" {
                    // Its real routes loaded, the protected ones logged in.
                    for part in result["coverage"].as_array().unwrap() {
                        assert_eq!(part["done"], true, "{}: {part}", app.path);
                    }
                }
                // Its own environment, from its own requirements.
                let installed = result["install"]["installed"].as_array().unwrap();
                for need in &app.needs {
                    let (name, version) = need.split_once("==").unwrap_or((need, ""));
                    assert!(
                        installed.iter().any(|i| {
                            let i = i.as_str().unwrap().to_ascii_lowercase();
                            // `flask==3.0.3` (Python), `express@4.21.2` (Node).
                            (i.starts_with(&format!("{name}=="))
                                || i.starts_with(&format!("{name}@")))
                                && i.ends_with(version)
                        }),
                        "{}: {need} not in {installed:?}",
                        app.path
                    );
                }
            } else {
                // The traceback's last words are in the finding.
                let findings = result["findings"].as_array().unwrap();
                let finding = findings
                    .iter()
                    .find(|f| f["rule"] == "app/does-not-start")
                    .unwrap_or_else(|| panic!("{}: {findings:?}", app.path));
                if let Some(error) = &app.error {
                    let word = error.split(':').next().unwrap();
                    assert!(
                        finding["message"].as_str().unwrap().contains(word),
                        "{}: {} lacks {word}",
                        app.path,
                        finding["message"]
                    );
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The static analyzer always runs, whatever the app does at start, and finds what
    // was planted: same file, same weakness, within three lines.
    let mut missed = Vec::new();
    for app in &expected.app {
        let job = by_app[&(app.model.clone(), app.template.clone())]
            .iter()
            .find(|j| j.kind == "static")
            .unwrap();
        let findings = job.result.as_ref().unwrap()["findings"].as_array().unwrap();
        assert!(
            !findings.is_empty(),
            "{}: no static finding at all",
            app.path
        );
        for d in app.defect.iter().filter(|d| d.kind == "static") {
            let hit = findings.iter().any(|f| {
                f["location"]["path"] == d.file.as_str()
                    && f["cwe"]
                        .as_u64()
                        .is_some_and(|c| same_weakness(d.cwe, c as u32))
                    && f["location"]["line"]
                        .as_u64()
                        .is_some_and(|l| (l as i64 - i64::from(d.line)).abs() <= 3)
            });
            if !hit {
                missed.push(format!(
                    "{} {}:{} CWE-{}: {}",
                    app.path, d.file, d.line, d.cwe, d.what
                ));
            }
        }
    }
    assert!(missed.is_empty(), "missed static defects: {missed:#?}");

    // `assay compare` ranks the three models, with each model's apps that did not run.
    let compare = Command::new(BIN)
        .args(["compare", "1", "--json", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stderr)
    );
    let standings: Vec<assay::ranking::ModelStanding> =
        serde_json::from_slice(&compare.stdout).unwrap();
    let models: std::collections::BTreeSet<&str> =
        expected.app.iter().map(|a| a.model.as_str()).collect();
    assert_eq!(standings.len(), models.len());
    for m in &standings {
        let apps: Vec<&ExpectedApp> = expected.app.iter().filter(|a| a.model == m.model).collect();
        assert_eq!(m.apps, apps.len(), "{}", m.model);
        assert_eq!(
            m.did_not_run,
            apps.iter().filter(|a| a.outcome != "started").count(),
            "{}",
            m.model
        );
        assert!(m.code_lines > 0 && m.security_per_kloc.is_some(), "{m:?}");
        assert!(
            m.small_sample,
            "a handful of apps per model is a small sample"
        );
    }
    let table = Command::new(BIN)
        .args(["compare", "1", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("{table}");
    for m in &standings {
        assert!(table.contains(&m.model), "{table}");
    }
    assert!(table.contains("did not run") && table.contains("security/KLOC"));
}
