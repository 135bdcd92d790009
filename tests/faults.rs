//! Fault tests: real `assay` server and worker processes, killed, cut off, hung and
//! interrupted. Each asserts that nothing was lost, duplicated or left running.

mod common;

use assay::api::SubmitRequest;
use assay::domain::{AttemptOutcome, JobState, PipelineState};
use assay::store::JobFilter;
use common::*;
use sha2::{Digest, Sha256};
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

fn sleep_spec(n: usize, ms: u64, extra: &str) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "[pipeline]\nname = \"sleepers\"\n[[stage]]\nname = \"s\"\nkind = \"sleep\"\nitems = [{}]\nmax_attempts = 5\nbackoff = \"100ms\"\n{extra}\n[stage.params]\nms = {ms}\nsteps = 4\n",
        items.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_worker_mid_job_the_job_finishes_elsewhere_once() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let mut a = c.worker("a", 1, &[]);
    let id = c.submit(&sleep_spec(1, 2_000, "")).await;
    wait_for("the job to run on worker a", MIN, || async {
        c.jobs(id)
            .await
            .iter()
            .any(|j| j.state == JobState::Running && j.worker_id.as_deref() == Some("a"))
    })
    .await;
    a.kill9();
    let _b = c.worker("b", 1, &[]);
    let detail = c.wait_finished(id, MIN).await;
    assert_eq!(detail.pipeline.state, PipelineState::Completed);
    assert_one_result_each(&c, id).await;
    let job = &c.jobs(id).await[0];
    let e = c.client.explain(job.id).await.unwrap();
    let outcomes: Vec<_> = e
        .attempts
        .iter()
        .map(|a| (a.outcome, a.worker_id.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (AttemptOutcome::Lost, "a"),
            (AttemptOutcome::Completed, "b")
        ]
    );
    assert_eq!(e.attempts[0].error.as_ref().unwrap().code, "worker_lost");
    // Noticed within two heartbeat intervals of the lease (reported, not asserted: no timing asserts).
    let lost_after = (e.attempts[0].finished_at.unwrap() - e.attempts[0].started_at) as f64 / 1e6;
    eprintln!("worker loss noticed {lost_after:.2}s after the attempt started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_server_mid_pipeline_then_restart_completes_with_every_result() {
    let c = Cluster::new();
    let mut server = c.server("2s").await;
    let _w = c.worker("w", 4, &[]);
    let id = c.submit(&sleep_spec(40, 300, "")).await;
    wait_for("some jobs to complete", MIN, || async {
        c.jobs(id)
            .await
            .iter()
            .filter(|j| j.state == JobState::Completed)
            .count()
            >= 5
    })
    .await;
    server.kill9();
    // Jobs keep running and finishing while the server is gone; results wait in the spool.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let _server = c.server("2s").await;
    let detail = c.wait_finished(id, 2 * MIN).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{}",
        c.logs()
    );
    assert_eq!(detail.pipeline.counts.completed, 40);
    assert_one_result_each(&c, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_job_is_timed_out_retried_then_dead_and_its_processes_are_gone() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let _w = c.worker("w", 2, &[]);
    let marker = "sleep 987.654321";
    let spec = format!(
        "[pipeline]\nname = \"hang\"\n[[stage]]\nname = \"h\"\nkind = \"command\"\ntimeout = \"1s\"\nmax_attempts = 2\nbackoff = \"100ms\"\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"{marker}; echo never\"]\ngrace = \"500ms\"\n"
    );
    let id = c.submit(&spec).await;
    let detail = c.wait_finished(id, MIN).await;
    assert_eq!(detail.pipeline.state, PipelineState::Failed);
    let job = &c.jobs(id).await[0];
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.last_error.as_ref().unwrap().code, "timeout");
    assert_eq!(c.client.explain(job.id).await.unwrap().attempts.len(), 2);
    wait_until_gone(
        marker,
        "the hung processes to be killed",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_heartbeating_past_its_deadline_is_taken_back_by_the_server() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let _w = c.worker("w", 1, &[]);
    let marker = "sleep 986.54321";
    // Ignores SIGTERM; the worker's grace is long, so only the server's backstop ends it in time.
    let spec = format!(
        "[pipeline]\nname = \"stubborn\"\n[[stage]]\nname = \"h\"\nkind = \"command\"\ntimeout = \"1s\"\nmax_attempts = 1\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"trap '' TERM; {marker}\"]\ngrace = \"4s\"\n"
    );
    let id = c.submit(&spec).await;
    let detail = c.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(detail.pipeline.state, PipelineState::Failed);
    let job = &c.jobs(id).await[0];
    let e = c.client.explain(job.id).await.unwrap();
    assert_eq!(
        e.attempts[0].outcome,
        AttemptOutcome::TimedOut,
        "{:?}",
        e.attempts
    );
    wait_until_gone(
        marker,
        "the stubborn process to be killed after the grace",
        Duration::from_secs(20),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pipeline_stops_the_running_process_group() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let _w = c.worker("w", 2, &[]);
    let marker = "sleep 985.4321";
    let spec = format!(
        "[pipeline]\nname = \"c\"\n[[stage]]\nname = \"long\"\nkind = \"command\"\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"{marker} & wait\"]\ngrace = \"1s\"\n\n[[stage]]\nname = \"after\"\nkind = \"noop\"\nafter = [\"long\"]\n"
    );
    let id = c.submit(&spec).await;
    wait_for("the process to start", MIN, || async {
        !processes_with(marker).is_empty()
    })
    .await;
    c.client.cancel_pipeline(id).await.unwrap();
    let detail = c.wait_finished(id, MIN).await;
    assert_eq!(detail.pipeline.state, PipelineState::Cancelled);
    let jobs = c.jobs(id).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Cancelled),
        "{jobs:?}"
    );
    wait_until_gone(
        marker,
        "the process group to be gone",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_worker_hands_jobs_back_and_nothing_stays_running() {
    let c = Cluster::new();
    let mut server = c.server("1s").await;
    let mut a = c.worker("a", 2, &["--grace", "300ms"]);
    let id = c.submit(&sleep_spec(2, 3_000, "")).await;
    wait_for("both jobs to run", MIN, || async {
        c.jobs(id)
            .await
            .iter()
            .filter(|j| j.state == JobState::Running)
            .count()
            == 2
    })
    .await;
    a.sigterm();
    assert_eq!(
        a.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        c.logs()
    );
    for job in c.jobs(id).await {
        assert_eq!(
            job.state,
            JobState::Available,
            "handed back at once, not left running: {job:?}"
        );
        let e = c.client.explain(job.id).await.unwrap();
        assert_eq!(e.attempts[0].error.as_ref().unwrap().code, "released");
        assert_eq!(job.failed_attempts, 0, "a hand-back is not a failure");
    }
    let workers = c.client.workers().await.unwrap();
    assert!(workers.iter().find(|w| w.id == "a").unwrap().stopped);
    let _b = c.worker("b", 2, &[]);
    assert_eq!(
        c.wait_finished(id, MIN).await.pipeline.state,
        PipelineState::Completed
    );
    assert_one_result_each(&c, id).await;
    server.sigterm();
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(0),
        "server drains and exits on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_submissions_make_one_pipeline() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let spec = c.path("dup.toml");
    std::fs::write(&spec, sleep_spec(3, 10, "")).unwrap();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (spec, url) = (spec.clone(), c.url.clone());
            std::thread::spawn(move || {
                std::process::Command::new(BIN)
                    .args([
                        "submit",
                        spec.to_str().unwrap(),
                        "--server",
                        &url,
                        "--idempotency-key",
                        "nightly-42",
                        "--json",
                    ])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.insert(v["pipeline_id"].as_i64().unwrap());
    }
    assert_eq!(
        ids.len(),
        1,
        "six concurrent submissions with one key made {ids:?}"
    );
    let all = c.client.pipelines(100).await.unwrap();
    assert_eq!(all.len(), 1, "one pipeline for the idempotency key");
    assert!(all.iter().all(|p| p.counts.total() == 3));
}

/// A TCP relay between a worker and the server that can cut every connection.
struct Relay {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    bytes_up: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let bytes_up = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = bytes_up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.split();
                    let (mut ro, mut wo) = outbound.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let n = ri.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            wo.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = tokio::io::copy(&mut ro, &mut wi);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Relay {
            port,
            cut,
            bytes_up,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cut_off_during_a_large_upload_delivers_it_intact() {
    use std::sync::atomic::Ordering;
    let c = Cluster::new();
    let _server = c.server("2s").await;
    let relay = Relay::start(c.port).await;
    let relay_url = format!("http://127.0.0.1:{}", relay.port);
    let spool = c.path("spool-cut");
    let log = std::fs::File::create(c.path("worker-cut.log")).unwrap();
    let _w = Proc {
        child: std::process::Command::new(BIN)
            .args([
                "worker",
                "--server",
                &relay_url,
                "--id",
                "cut",
                "--concurrency",
                "1",
                "--spool-dir",
                spool.to_str().unwrap(),
            ])
            .env("ASSAY_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        name: "cut".into(),
    };
    let size: u64 = 60 * 1024 * 1024;
    let id = c
        .submit(&format!("[pipeline]\nname = \"big\"\n[[stage]]\nname = \"b\"\nkind = \"blob\"\n[stage.params]\nbytes = {size}\nseed = 7\n"))
        .await;
    // Cut every connection once the upload is well under way, keep the line down, restore.
    wait_for("the upload to start", MIN, || async {
        relay.bytes_up.load(Ordering::Relaxed) > 20 * 1024 * 1024
    })
    .await;
    relay.cut.send_replace(true);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    relay.cut.send_replace(false);
    let detail = c.wait_finished(id, 2 * MIN).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{}",
        c.logs()
    );
    let job = &c.jobs(id).await[0];
    let arts = c.client.explain(job.id).await.unwrap().artifacts;
    let blob = arts
        .iter()
        .find(|a| a.name == "blob.bin")
        .expect("blob artifact recorded");
    assert_eq!(blob.size as u64, size);
    let out = c.path("downloaded.bin");
    assert_eq!(
        c.client
            .download_artifact(job.id, "blob.bin", &out)
            .await
            .unwrap(),
        size
    );
    let digest = hex::encode(Sha256::digest(std::fs::read(&out).unwrap()));
    assert_eq!(
        digest, blob.sha256,
        "the stored bytes hash to what the worker computed"
    );
    assert!(
        relay.bytes_up.load(Ordering::Relaxed) > size,
        "the upload was really interrupted and sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_delivers_its_spooled_results_before_anything_else() {
    let c = Cluster::new();
    let mut server = c.server("1s").await;
    let mut w = c.worker("steady", 2, &[]);
    let id = c.submit(&sleep_spec(2, 1_500, "")).await;
    wait_for("both jobs to run", MIN, || async {
        c.jobs(id)
            .await
            .iter()
            .filter(|j| j.state == JobState::Running)
            .count()
            == 2
    })
    .await;
    // The server goes away; the jobs finish and their results can only be spooled.
    server.kill9();
    let batches = c.path("spool-steady").join("batches");
    // Both results, which may land in one batch file or in two.
    wait_for("both results to be spooled", MIN, || async {
        let spooled: usize = std::fs::read_dir(&batches)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b).ok())
                    .map(|entries| entries.len())
                    .sum()
            })
            .unwrap_or(0);
        spooled == 2
    })
    .await;
    // Then the worker dies too, before it could deliver anything.
    w.kill9();
    let _server = c.server("1s").await;
    let _w = c.worker("steady", 2, &[]);
    let detail = c.wait_finished(id, MIN).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{}",
        c.logs()
    );
    for job in c.jobs(id).await {
        let attempts = c.client.explain(job.id).await.unwrap().attempts;
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            vec![AttemptOutcome::Completed],
            "the spooled result of attempt 1 was used, nothing re-ran: {attempts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let other_port = free_port().to_string();
    let out = std::process::Command::new(BIN)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{other_port}"),
            "--data-dir",
        ])
        .arg(c.path("server"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another Assay server"),
        "{stderr}"
    );
    assert!(
        c.client.health().await.is_ok(),
        "the first server is untouched"
    );
}

/// All the server's logs so far, whole.
fn server_logs(c: &Cluster) -> String {
    std::fs::read_dir(c.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("server-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_writing_a_large_pipeline_keeps_none_of_it() {
    let c = Cluster::new();
    let mut server = c.server("1s").await;
    // 15,000 apps, each generated then checked: written in chunks, not one transaction.
    let models: Vec<String> = (0..100).map(|m| format!("\"m{m}\"")).collect();
    let templates: Vec<String> = (0..150).map(|t| format!("\"t{t}\"")).collect();
    let matrix = format!(
        "matrix = {{ model = [{}], template = [{}] }}",
        models.join(","),
        templates.join(",")
    );
    let spec = format!(
        "[pipeline]\nname = \"study\"\n[[stage]]\nname = \"gen\"\nkind = \"noop\"\n{matrix}\n\
         [[stage]]\nname = \"check\"\nkind = \"noop\"\nafter = [\"gen\"]\n{matrix}\n"
    );
    let request = SubmitRequest {
        spec: spec.clone(),
        file_name: None,
        idempotency_key: Some("study-1".into()),
    };
    let submitting = {
        let (client, request) = (c.client.clone(), request.clone());
        tokio::spawn(async move { client.submit(&request).await })
    };
    wait_for("the pipeline's chunks to be written", MIN, || async {
        server_logs(&c).contains("writing a large pipeline in chunks")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill9();
    assert!(
        submitting.await.unwrap().is_err(),
        "the submission finished before the kill; the test needs a larger pipeline"
    );

    let _server = c.server("1s").await;
    assert!(
        server_logs(&c).contains("discarded pipelines whose submission a crash cut short"),
        "{}",
        c.logs()
    );
    assert!(c.client.pipelines(10).await.unwrap().is_empty());
    let every_job = JobFilter {
        limit: Some(10),
        ..Default::default()
    };
    assert!(
        c.client.jobs(&every_job).await.unwrap().is_empty(),
        "no job of the half-written pipeline is left"
    );
    // Submitted again under the same key, it is written whole, once.
    let again = c.client.submit(&request).await.unwrap();
    assert!(again.created);
    let detail = c.client.pipeline(again.pipeline_id).await.unwrap();
    assert_eq!(detail.pipeline.counts.total(), 30_000);
    assert_eq!(
        c.client.submit(&request).await.unwrap().pipeline_id,
        again.pipeline_id
    );
    assert_eq!(c.client.pipelines(10).await.unwrap().len(), 1);
}
