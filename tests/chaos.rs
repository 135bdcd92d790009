//! Chaos: a real server and three workers run a streamed two-stage pipeline while workers
//! are killed with -9 every few seconds (and restarted, alternately under the same and a
//! new id), the server is killed with -9 and restarted, and a loopback proxy between the
//! workers and the server resets a share of the connections. Then: every job completed
//! exactly once with its own result, nothing is stuck, the pipeline was finalized within a
//! second of its last job, and no process of any job is left.
//!
//! `chaos_short` runs with `cargo test`. The long form is a benchmark that prints what the
//! chaos cost (re-executions, how soon lost work was noticed, restart times):
//! `cargo test --release --test chaos -- --ignored --nocapture` (`ASSAY_CHAOS_APPS`
//! changes its size, `ASSAY_CHAOS_SECONDS` the time it may take).

mod common;

use assay::domain::{AttemptOutcome, JobState, PipelineState, MICROS_PER_MS};
use common::*;
use rand::Rng;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How hard and how long.
struct Chaos {
    /// Apps: each is a generate job and a check job (two streamed stages).
    apps: usize,
    /// A worker is killed this often.
    worker_kill_every: Duration,
    /// The server is killed this long after the start, then again every as long, while
    /// the pipeline runs; at least `min_server_kills` times.
    server_kill_every: Duration,
    min_server_kills: usize,
    /// Share of proxied connections reset.
    reset_share: f64,
    /// How long the check jobs run.
    check_ms: u64,
    /// The whole run must end within this.
    deadline: Duration,
}

impl Chaos {
    fn short() -> Chaos {
        Chaos {
            apps: 500,
            worker_kill_every: Duration::from_millis(2_500),
            server_kill_every: Duration::from_secs(5),
            min_server_kills: 3,
            reset_share: 0.05,
            check_ms: 400,
            deadline: Duration::from_secs(240),
        }
    }

    fn long() -> Chaos {
        let env = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let seconds = env("ASSAY_CHAOS_SECONDS", 600);
        Chaos {
            apps: env("ASSAY_CHAOS_APPS", 5_000) as usize,
            worker_kill_every: Duration::from_secs(3),
            server_kill_every: Duration::from_secs(15),
            min_server_kills: 3,
            reset_share: 0.03,
            check_ms: 200,
            deadline: Duration::from_secs(seconds),
        }
    }
}

fn list(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("\"{prefix}{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Generate (in-process sleeps), then check each app with a real process that writes its
/// result; one check in ten fails retryably on its first attempt.
fn spec(apps: usize, check_ms: u64, marker: &str) -> String {
    let models = 10.min(apps).max(1);
    let matrix = format!(
        "matrix = {{ model = [{}], template = [{}] }}",
        list("m", models),
        list("t", apps.div_ceil(models))
    );
    let script = format!(
        "case {{{{ template }}}} in t*0) [ \\\"$ASSAY_ATTEMPT\\\" = 1 ] && exit 75;; esac; \
         sleep {:.3}; printf '{{\\\"model\\\": \\\"%s\\\", \\\"template\\\": \\\"%s\\\"}}' {{{{ model }}}} {{{{ template }}}} \
         > \\\"$ASSAY_OUTPUT_DIR/result.json\\\"",
        check_ms as f64 / 1_000.0
    );
    format!(
        "[pipeline]\nname = \"chaos\"\n\n\
         [[stage]]\nname = \"gen\"\nkind = \"sleep\"\n{matrix}\nmax_attempts = 10\nbackoff = \"100ms\"\nbackoff_max = \"1s\"\n\
         [stage.params]\nms = 100\nsteps = 2\n\n\
         [[stage]]\nname = \"check\"\nkind = \"command\"\nafter = [\"gen\"]\n{matrix}\nmax_attempts = 10\nbackoff = \"100ms\"\nbackoff_max = \"1s\"\ntimeout = \"60s\"\n\
         [stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"{script}\", \"{marker}\"]\ngrace = \"1s\"\n"
    )
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(((p / 100.0) * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn run(chaos: Chaos) {
    let c = Cluster::new();
    let mut server = c.server("1s").await;
    let proxy = Proxy::start(c.port, chaos.reset_share).await;
    let via_proxy = proxy.url.clone();
    let marker = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    // Three worker slots, each with its own spool; a slot's worker is restarted alternately
    // under the same id and a new one.
    let mut generation = [0usize; 3];
    let start_worker = |slot: usize, generation: usize| {
        let id = if generation % 2 == 0 {
            format!("w{slot}")
        } else {
            format!("w{slot}-{generation}")
        };
        c.worker_at(
            &via_proxy,
            &id,
            &format!("spool-{slot}"),
            8,
            &["--grace", "1s"],
        )
    };
    let mut workers: Vec<Proc> = (0..3).map(|s| start_worker(s, 0)).collect();
    let id = c.submit(&spec(chaos.apps, chaos.check_ms, &marker)).await;
    let jobs_total = chaos.apps.div_ceil(10).max(1) * 10.min(chaos.apps).max(1) * 2;
    let started = Instant::now();
    let mut worker_kills: Vec<(i64, usize)> = Vec::new();
    let mut server_restarts = Vec::new();
    let mut worker_restarts = Vec::new();
    let mut next_server_kill = chaos.server_kill_every;
    let mut next_worker_kill = chaos.worker_kill_every;
    let mut kills_while_running = (0, 0);
    loop {
        let detail = c.client.pipeline(id).await;
        if let Ok(d) = &detail {
            if d.pipeline.state.is_terminal() {
                break;
            }
        }
        assert!(
            started.elapsed() < chaos.deadline,
            "stuck: {:?}\n{}",
            detail.map(|d| d.pipeline.counts),
            c.logs()
        );
        let now = started.elapsed();
        if now >= next_server_kill {
            next_server_kill = now + chaos.server_kill_every;
            server.kill9();
            tokio::time::sleep(Duration::from_millis(
                rand::thread_rng().gen_range(200..1_500),
            ))
            .await;
            let t = Instant::now();
            server = c.server("1s").await;
            server_restarts.push(t.elapsed().as_secs_f64());
            kills_while_running.0 += 1;
        } else if now >= next_worker_kill {
            next_worker_kill = now + chaos.worker_kill_every;
            let slot = rand::thread_rng().gen_range(0..3);
            workers[slot].kill9();
            worker_kills.push((assay::domain::now_micros(), slot));
            kills_while_running.1 += 1;
            tokio::time::sleep(Duration::from_millis(
                rand::thread_rng().gen_range(100..1_000),
            ))
            .await;
            generation[slot] += 1;
            let t = Instant::now();
            workers[slot] = start_worker(slot, generation[slot]);
            let id = workers[slot].name.clone();
            wait_for(
                "the restarted worker to register",
                Duration::from_secs(30),
                || async {
                    c.client
                        .workers()
                        .await
                        .is_ok_and(|ws| ws.iter().any(|w| w.id == id && !w.stopped))
                },
            )
            .await;
            worker_restarts.push(t.elapsed().as_secs_f64());
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let elapsed = started.elapsed();
    let detail = c.client.pipeline(id).await.unwrap();
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{:?}\n{}",
        detail.pipeline.counts,
        c.logs()
    );
    assert_eq!(detail.pipeline.counts.completed as usize, jobs_total);
    assert!(
        kills_while_running.0 >= chaos.min_server_kills && kills_while_running.1 >= 3,
        "the chaos happened while the pipeline ran: {kills_while_running:?} in {elapsed:?}"
    );

    // Every job completed exactly once, with its own result.
    let mut jobs = Vec::new();
    loop {
        let page = c
            .client
            .jobs(&assay::store::JobFilter {
                pipeline_id: Some(id),
                after_id: jobs.last().map(|j: &assay::store::Job| j.id),
                limit: Some(5_000),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        jobs.extend(page);
    }
    assert_eq!(jobs.len(), jobs_total);
    let mut attempts_total = 0;
    let mut scripted = 0;
    let mut notice_ms = Vec::new();
    let mut last_finished = 0;
    for job in &jobs {
        assert_eq!(job.state, JobState::Completed, "{job:?}");
        last_finished = last_finished.max(job.finished_at.unwrap());
        let e = c.client.explain(job.id).await.unwrap();
        let completed = e
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Completed)
            .count();
        assert_eq!(completed, 1, "{}: {:?}", job.key, e.attempts);
        assert!(
            e.attempts.iter().all(|a| a.finished_at.is_some()),
            "{}: an attempt was left open: {:?}",
            job.key,
            e.attempts
        );
        attempts_total += e.attempts.len();
        scripted += e
            .attempts
            .iter()
            .filter(|a| a.error.as_ref().is_some_and(|f| f.code == "exit_status"))
            .count();
        let result = job.result.as_ref().expect("a completed job has its result");
        if job.stage == "check" {
            assert_eq!(
                result["result"]["model"], job.item["model"],
                "{} has another job's result: {result}",
                job.key
            );
            assert_eq!(result["result"]["template"], job.item["template"]);
        }
        // How soon the loss of a killed worker's attempt was noticed.
        for a in e
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Lost)
        {
            let killed = worker_kills
                .iter()
                .filter(|(at, _)| *at <= a.finished_at.unwrap() && *at >= a.started_at)
                .map(|(at, _)| *at)
                .max();
            if let Some(at) = killed {
                notice_ms.push((a.finished_at.unwrap() - at) as f64 / MICROS_PER_MS as f64);
            }
        }
    }
    let finalized_after =
        (detail.pipeline.finished_at.unwrap() - last_finished) as f64 / MICROS_PER_MS as f64;
    assert!(
        finalized_after <= 1_000.0,
        "the pipeline was finalized {finalized_after} ms after its last job"
    );

    // Nothing of any job is left running; the workers stop cleanly and drain their spools.
    wait_until_gone(&marker, "every job process", Duration::from_secs(10)).await;
    for w in &workers {
        w.sigterm();
    }
    for w in &mut workers {
        assert_eq!(
            w.wait_exit(Duration::from_secs(30)),
            Some(0),
            "{}",
            c.logs()
        );
    }
    let spools = format!("{}/spool-", c.dir.path().display());
    assert!(
        processes_with(&marker).is_empty() && processes_with(&spools).is_empty(),
        "processes outlived the run: {:?}",
        processes_with(&spools)
    );
    for slot in 0..3 {
        let batches = c.path(&format!("spool-{slot}")).join("batches");
        let left: Vec<_> = std::fs::read_dir(&batches).unwrap().flatten().collect();
        assert!(
            left.is_empty(),
            "results left undelivered in {}",
            batches.display()
        );
    }

    let re_executions = attempts_total - jobs.len() - scripted;
    eprintln!(
        "chaos: {} jobs in {:.1} s; {} worker kills, {} server kills, {} of {} connections reset",
        jobs.len(),
        elapsed.as_secs_f64(),
        worker_kills.len(),
        server_restarts.len(),
        proxy.resets.load(Ordering::Relaxed),
        proxy.connections.load(Ordering::Relaxed)
    );
    eprintln!(
        "  attempts {attempts_total}: {scripted} scripted failures, {re_executions} re-executions (lost to kills)"
    );
    eprintln!(
        "  a killed worker's attempt noticed lost after: p50 {:.0} ms, max {:.0} ms (n={})",
        percentile(notice_ms.clone(), 50.0),
        percentile(notice_ms.clone(), 100.0),
        notice_ms.len()
    );
    eprintln!(
        "  server restart to healthy: p50 {:.2} s, max {:.2} s; worker restart to registered: p50 {:.2} s, max {:.2} s",
        percentile(server_restarts.clone(), 50.0),
        percentile(server_restarts, 100.0),
        percentile(worker_restarts.clone(), 50.0),
        percentile(worker_restarts, 100.0)
    );
    eprintln!("  pipeline finalized {finalized_after:.1} ms after its last job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short() {
    run(Chaos::short()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: cargo test --release --test chaos -- --ignored --nocapture"]
async fn chaos_long() {
    run(Chaos::long()).await;
}
