//! `assay run` on the embedded default: the demo spec runs to its documented end, and a
//! run killed with SIGKILL resumes without running finished jobs again.

mod common;

use assay::domain::{AttemptOutcome, JobState, PipelineState};
use assay::store::sqlite::SqliteStore;
use assay::store::{JobFilter, Store};
use common::*;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `assay run SPEC` in the background with two workers on a known port, and a client for
/// its embedded server (which requires a token, as every `assay run`'s does).
async fn background_run(
    spec: &std::path::Path,
    data: &std::path::Path,
    listen: &str,
) -> (Proc, assay::client::Client) {
    let child = Command::new(BIN)
        .args([
            "run",
            spec.to_str().unwrap(),
            "--plain",
            "--workers",
            "2",
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = Proc {
        child,
        name: "run".into(),
    };
    let client = run_client(data, listen, "read").await;
    (run, client)
}

#[test]
fn the_demo_spec_ends_in_partial_success_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml");
    let out = Command::new(BIN)
        .args(["run", demo, "--plain", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("partial_success"), "{stdout}");
    assert!(
        stdout.contains("no_llm_endpoint"),
        "the dead job is named with its reason: {stdout}"
    );
    assert!(
        stderr.contains("retrying — connection_reset"),
        "the flaky job retried: {stderr}"
    );
    // Running it again resumes the finished pipeline instead of starting over.
    let again = Command::new(BIN)
        .args(["run", demo, "--plain", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("resuming pipeline 1"));
}

#[test]
fn a_bad_spec_is_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(
        &spec,
        "[pipeline]\nname = \"x\"\n\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nconcurrency = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run"])
        .arg(&spec)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("bad.toml:7: stage[0].concurrency"),
        "{stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");
    assert!(
        !dir.path().join("d").exists(),
        "nothing was started for a bad spec"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_without_running_finished_jobs_again() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("resume.toml");
    let items: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    std::fs::write(
        &spec,
        format!("[pipeline]\nname = \"resume\"\n[[stage]]\nname = \"s\"\nkind = \"sleep\"\nitems = [{}]\n[stage.params]\nms = 400\n", items.join(",")),
    )
    .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut first, client) = background_run(&spec, &data, &listen).await;
    wait_for(
        "a few jobs to complete",
        Duration::from_secs(60),
        || async {
            match client
                .jobs(&JobFilter {
                    pipeline_id: Some(1),
                    ..Default::default()
                })
                .await
            {
                Ok(jobs) => {
                    jobs.iter()
                        .filter(|j| j.state == JobState::Completed)
                        .count()
                        >= 3
                }
                Err(_) => false,
            }
        },
    )
    .await;
    first.kill9();

    let db = data.join("server").join("assay.db");
    let before: HashMap<i64, (i64, Option<i64>)> = {
        let store = SqliteStore::open(&db).await.unwrap();
        let jobs = store
            .jobs(&JobFilter {
                pipeline_id: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            jobs.iter().any(|j| j.state != JobState::Completed),
            "the kill came mid-run"
        );
        jobs.into_iter()
            .filter(|j| j.state == JobState::Completed)
            .map(|j| (j.id, (j.attempts, j.finished_at)))
            .collect()
    };

    let second = Command::new(BIN)
        .args([
            "run",
            spec.to_str().unwrap(),
            "--plain",
            "--workers",
            "2",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("resuming pipeline 1"), "{stderr}");

    let store = SqliteStore::open(&db).await.unwrap();
    let p = store.pipeline(1).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::Completed);
    assert_eq!(
        store.pipelines(10).await.unwrap().len(),
        1,
        "resumed, not started anew"
    );
    for job in store
        .jobs(&JobFilter {
            pipeline_id: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
    {
        let attempts = store.attempts(job.id).await.unwrap();
        assert_eq!(
            attempts
                .iter()
                .filter(|a| a.outcome == AttemptOutcome::Completed)
                .count(),
            1,
            "{attempts:?}"
        );
        if let Some((n, finished)) = before.get(&job.id) {
            assert_eq!(
                (job.attempts, job.finished_at),
                (*n, *finished),
                "a finished job ran again: {}",
                job.key
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_hands_jobs_back_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("long.toml");
    std::fs::write(
        &spec,
        "[pipeline]\nname = \"long\"\n[[stage]]\nname = \"s\"\nkind = \"sleep\"\nitems = [1, 2, 3]\n[stage.params]\nms = 30000\nsteps = 30\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut run, client) = background_run(&spec, &data, &listen).await;
    wait_for("two jobs to run", Duration::from_secs(60), || async {
        match client
            .jobs(&JobFilter {
                pipeline_id: Some(1),
                ..Default::default()
            })
            .await
        {
            Ok(jobs) => jobs.iter().filter(|j| j.state == JobState::Running).count() == 2,
            Err(_) => false,
        }
    })
    .await;
    run.sigterm();
    assert_eq!(run.wait_exit(Duration::from_secs(20)), Some(130));
    let store = SqliteStore::open(&data.join("server").join("assay.db"))
        .await
        .unwrap();
    let jobs = store
        .jobs(&JobFilter {
            pipeline_id: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        jobs.iter().all(|j| j.state == JobState::Available),
        "handed back, none left running: {jobs:?}"
    );
    assert!(jobs.iter().all(|j| j.failed_attempts == 0));
}

#[test]
fn templates_are_listed_and_user_folders_are_checked() {
    let out = Command::new(BIN)
        .args(["templates", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "todo-api"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/templates/todo-api.toml"),
        dir.path().join("todo-api.toml"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["templates", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("defined twice"));
}
