//! `assay bench`: a real `assay server` process (durable SQLite in a temporary directory)
//! and real worker processes over loopback HTTP. Prints figures; it asserts nothing about
//! time.
//!
//! What it measures, in order: no-op throughput through one stage, alone and with hundreds
//! of idle long-polls; the main job's shape, a
//! streamed study (models × templates → generate → analyzers per app, no-op kinds) with
//! its submit time, throughput, how soon dependents start after their upstream job
//! completes, and the server's memory; submission of study-sized plans, and how the server
//! answers heartbeats while a large one is written; claim latency as a 100,000-job queue
//! drains; what the dashboard fetches to open a pipeline; enqueue-to-start on an idle
//! system.

use crate::api::{ClaimBody, SubmitRequest};
use crate::client::Client;
use crate::domain::JobState;
use crate::store::{Heartbeat, Job, JobFilter, Report, ReportOutcome, WorkerRegistration};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// No-op jobs in the single-stage throughput run.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Concurrent jobs per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// One-job pipelines submitted one at a time on an idle system, for latency.
    #[arg(long, default_value_t = 300)]
    pub latency_samples: usize,
    /// Models and templates of the streamed study: each app is generated, then analyzed by
    /// `--study-analyzers` stages as soon as it exists.
    #[arg(long, default_value_t = 10)]
    pub study_models: usize,
    #[arg(long, default_value_t = 100)]
    pub study_templates: usize,
    #[arg(long, default_value_t = 4)]
    pub study_analyzers: usize,
    /// Apps of the large pipeline (each generated, then analyzed by four stages: 5 jobs and
    /// 4 dependencies per app) whose submission is timed and whose queue is drained by
    /// one claimer to time claims as it shrinks.
    #[arg(long, default_value_t = 25_000)]
    pub queue_apps: usize,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

fn noop_spec(name: &str, n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "[pipeline]\nname = \"{name}\"\n\n[[stage]]\nname = \"noop\"\nkind = \"noop\"\nitems = [{}]\n",
        items.join(",")
    )
}

fn quoted(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("\"{prefix}{i}\""))
        .collect::<Vec<_>>()
        .join(",")
}

/// How the generate stage of a study runs: as fast as no-op jobs, or paced like a stage
/// bound by a model provider (a few ms each, a limited number at once).
#[derive(Clone, Copy)]
enum Generation {
    Noop,
    Paced {
        ms: u64,
        concurrency: usize,
    },
    /// Jobs no bench worker takes (`command`): the probe claims them itself.
    ForProbe,
}

/// One stage of a bench spec: its kind and settings, then its params table.
fn stage(name: &str, settings: &str, params: &str) -> String {
    format!("\n[[stage]]\nname = \"{name}\"\n{settings}\n{params}")
}

/// Jobs for the probe: a kind the bench's workers do not take.
const PROBE_KIND: &str = "kind = \"command\"";
const PROBE_PARAMS: &str = "[stage.params]\nprogram = \"true\"\n";

/// The main job's shape: every app generated, then analyzed by each analyzer stage as soon
/// as it exists (`wait = "item"`).
fn study_spec(
    name: &str,
    models: usize,
    templates: usize,
    analyzers: usize,
    generation: Generation,
) -> String {
    let matrix = format!(
        "matrix = {{ model = [{}], template = [{}] }}",
        quoted("model-", models),
        quoted("template-", templates)
    );
    let (generate, generate_params, analyze, analyze_params) = match generation {
        Generation::Noop => (
            "kind = \"noop\"".to_string(),
            String::new(),
            "kind = \"noop\"",
            "",
        ),
        Generation::Paced { ms, concurrency } => (
            format!("kind = \"sleep\"\nconcurrency = {concurrency}"),
            format!("[stage.params]\nms = {ms}\n"),
            "kind = \"noop\"",
            "",
        ),
        Generation::ForProbe => (
            PROBE_KIND.to_string(),
            PROBE_PARAMS.to_string(),
            PROBE_KIND,
            PROBE_PARAMS,
        ),
    };
    let mut spec = format!("[pipeline]\nname = \"{name}\"\n");
    spec += &stage(
        "generate",
        &format!("{generate}\n{matrix}"),
        &generate_params,
    );
    for a in 0..analyzers {
        spec += &stage(
            &format!("analyze-{a}"),
            &format!("{analyze}\nafter = [\"generate\"]\n{matrix}"),
            analyze_params,
        );
    }
    spec
}

/// Two stages of `n` jobs, the second waiting for the whole first (a barrier).
fn barrier_spec(n: usize) -> String {
    barrier_spec_of(n, n)
}

/// A stage of `upstream` jobs, then one of `waiting` jobs that waits for all of it.
fn barrier_spec_of(upstream: usize, waiting: usize) -> String {
    let items = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    format!(
        "[pipeline]\nname = \"barrier\"\n{}{}",
        stage(
            "a",
            &format!("{PROBE_KIND}\nitems = [{}]", items(upstream)),
            PROBE_PARAMS
        ),
        stage(
            "b",
            &format!(
                "{PROBE_KIND}\nafter = [\"a\"]\nwait = \"stage\"\nitems = [{}]",
                items(waiting)
            ),
            PROBE_PARAMS
        )
    )
}

/// `models × templates × tools` no-op jobs: the shape of an analysis run, for the grid.
fn grid_spec(name: &str, models: usize, templates: usize, tools: usize) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\n\n[[stage]]\nname = \"analyze\"\nkind = \"noop\"\n\
         matrix = {{ model = [{}], template = [{}], tool = [{}] }}\n",
        quoted("model-", models),
        quoted("template-", templates),
        quoted("tool-", tools)
    )
}

/// What the dashboard's pipeline page fetches when it opens, timed: each request
/// `rounds` times. Returns, per request, its path, p50 in µs and size in bytes.
async fn time_page_open(url: &str, id: i64, rounds: usize) -> Result<Vec<(String, f64, usize)>> {
    let http = reqwest::Client::new();
    let paths = ["", "/grid", "/waiting?limit=20", "/usage"];
    let mut out = Vec::new();
    for tail in paths {
        let p = format!("/pipelines/{id}{tail}");
        let mut times = Vec::with_capacity(rounds);
        let mut bytes = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let resp = http.get(format!("{url}/api/v1{p}")).send().await?;
            if !resp.status().is_success() {
                bail!("{p} answered {}", resp.status());
            }
            bytes = resp.bytes().await?.len();
            times.push(t.elapsed().as_micros() as f64);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        out.push((
            format!("/pipelines/ID{tail}"),
            percentile(&times, 50.0),
            bytes,
        ));
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_line(label: &str, mut micros: Vec<f64>) -> String {
    micros.sort_by(|a, b| a.total_cmp(b));
    let ms = |v: f64| v / 1_000.0;
    format!(
        "{label}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        micros.len(),
        ms(percentile(&micros, 50.0)),
        ms(percentile(&micros, 90.0)),
        ms(percentile(&micros, 99.0)),
        ms(micros.last().copied().unwrap_or(f64::NAN))
    )
}

fn thousands(n: usize) -> String {
    crate::generation::budget::group_thousands(n as i64)
}

async fn submit(client: &Client, spec: String) -> Result<i64> {
    Ok(client
        .submit(&SubmitRequest {
            spec,
            file_name: Some("bench.toml".into()),
            idempotency_key: None,
        })
        .await?
        .pipeline_id)
}

/// Submit and time it (the request: the server plans and writes the pipeline).
async fn timed_submit(client: &Client, spec: String) -> Result<(i64, Duration)> {
    let t = Instant::now();
    let id = submit(client, spec).await?;
    Ok((id, t.elapsed()))
}

async fn wait_finished(client: &Client, id: i64, poll: Duration) -> Result<()> {
    loop {
        let d = client.pipeline(id).await?;
        if d.pipeline.state.is_terminal() {
            if d.pipeline.counts.completed != d.pipeline.counts.total() {
                bail!(
                    "bench pipeline {id} ended {} with {:?}",
                    d.pipeline.state,
                    d.pipeline.counts
                );
            }
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

async fn all_jobs(client: &Client, pipeline: i64) -> Result<Vec<Job>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let jobs = client
            .jobs(&JobFilter {
                pipeline_id: Some(pipeline),
                after_id: Some(after),
                limit: Some(10_000),
                ..Default::default()
            })
            .await?;
        let Some(last) = jobs.last() else { break };
        after = last.id;
        out.extend(jobs);
    }
    Ok(out)
}

fn start_latencies(jobs: &[Job]) -> Vec<f64> {
    jobs.iter()
        .filter(|j| j.state == JobState::Completed)
        .filter_map(|j| j.started_at.map(|s| (s - j.created_at) as f64))
        .collect()
}

/// For each analysis job of a study: from its app's generate job completing to its start.
fn dependent_start_latencies(jobs: &[Job]) -> Vec<f64> {
    let generated: HashMap<String, i64> = jobs
        .iter()
        .filter(|j| j.stage == "generate")
        .filter_map(|j| Some((j.item.to_string(), j.finished_at?)))
        .collect();
    jobs.iter()
        .filter(|j| j.stage != "generate")
        .filter_map(|j| {
            let upstream_done = generated.get(&j.item.to_string())?;
            Some((j.started_at? - upstream_done) as f64)
        })
        .collect()
}

/// Peak and current resident memory of a process, in MiB (`/proc/PID/status`).
fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn spawn_assay(exe: &Path, args: &[String]) -> Result<tokio::process::Child> {
    tokio::process::Command::new(exe)
        .args(args)
        .env("ASSAY_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting an assay process")
}

/// A claimer of its own, for the phases that time the server's side of claims and
/// heartbeats without a worker's work in the way: it claims `command` jobs (which the
/// bench's workers do not take) and reports them done at once, without running them.
struct Probe {
    client: Client,
    id: String,
}

impl Probe {
    async fn register(client: &Client) -> Result<Probe> {
        let id = "bench-probe".to_string();
        client
            .register(&WorkerRegistration {
                id: id.clone(),
                name: id.clone(),
                kinds: vec!["command".into()],
            })
            .await?;
        Ok(Probe {
            client: client.clone(),
            id,
        })
    }

    async fn heartbeat(&self) -> Result<Duration> {
        let t = Instant::now();
        self.client
            .heartbeat(
                &Heartbeat {
                    worker_id: self.id.clone(),
                    leases: Vec::new(),
                },
                Duration::from_secs(30),
            )
            .await?;
        Ok(t.elapsed())
    }

    /// Claim up to `limit` jobs and report them completed; the claim's latency and how
    /// many it got.
    async fn claim_and_finish(&self, limit: i64) -> Result<(Duration, usize)> {
        let t = Instant::now();
        let claimed = self.claim(limit).await?;
        let took = t.elapsed();
        let n = claimed.len();
        self.finish(claimed).await?;
        Ok((took, n))
    }

    async fn claim(&self, limit: i64) -> Result<Vec<crate::store::ClaimedJob>> {
        Ok(self
            .client
            .claim(&ClaimBody {
                worker_id: self.id.clone(),
                kinds: vec!["command".into()],
                limit,
                wait_ms: 0,
            })
            .await?
            .0)
    }

    /// Report the jobs completed; how long the server took.
    async fn finish(&self, claimed: Vec<crate::store::ClaimedJob>) -> Result<Duration> {
        let t = Instant::now();
        if claimed.is_empty() {
            return Ok(t.elapsed());
        }
        let reports = claimed
            .into_iter()
            .map(|c| Report {
                job_id: c.job_id,
                attempt: c.attempt,
                token: c.token,
                worker_id: self.id.clone(),
                outcome: ReportOutcome::Completed {
                    result: serde_json::json!({}),
                    artifacts: vec![],
                },
            })
            .collect();
        self.client.report(reports).await?;
        Ok(t.elapsed())
    }

    /// Heartbeat every few milliseconds (from a task of its own) until `done` resolves,
    /// and until the heartbeat in flight then is answered; `done`'s result and the
    /// heartbeats' latencies (µs).
    async fn heartbeats_during<T>(
        &self,
        done: impl std::future::Future<Output = T>,
    ) -> Result<(T, Vec<f64>)> {
        let stop = tokio_util::sync::CancellationToken::new();
        let beating = {
            let (probe, stop) = (
                Probe {
                    client: self.client.clone(),
                    id: self.id.clone(),
                },
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut beats = Vec::new();
                while !stop.is_cancelled() {
                    beats.push(probe.heartbeat().await?.as_micros() as f64);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok::<_, anyhow::Error>(beats)
            })
        };
        let out = done.await;
        stop.cancel();
        Ok((out, beating.await??))
    }
}

pub async fn run(args: BenchArgs) -> Result<u8> {
    let temp = tempfile_dir()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.clone());
    let exe = std::env::current_exe().context("locating the assay binary")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_assay(
        &exe,
        &[
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.join("server").display().to_string(),
            // The probe's jobs are of kind `command` (no bench worker takes them).
            "--allow-kinds".into(),
            "all".into(),
        ],
    )?;
    let server_pid = server.id().context("the server's pid")?;
    let client = Client::new(&url);
    let started = Instant::now();
    while client.health().await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the server did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut children = Vec::new();
    for i in 0..args.workers {
        children.push(spawn_assay(
            &exe,
            &[
                "worker".into(),
                "--server".into(),
                url.clone(),
                "--concurrency".into(),
                args.concurrency.to_string(),
                "--id".into(),
                format!("bench-{i}"),
                "--kinds".into(),
                "noop,sleep".into(),
                "--spool-dir".into(),
                data_dir.join(format!("spool-{i}")).display().to_string(),
            ],
        )?);
    }
    let started = Instant::now();
    loop {
        let live = client
            .workers()
            .await?
            .iter()
            .filter(|w| !w.stopped)
            .count();
        if live >= args.workers {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "only {live} of {} workers registered within 30 s",
                args.workers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "assay bench: {} worker processes × {} slots, an `assay server` process on SQLite (WAL, synchronous=NORMAL) at {}",
        args.workers,
        args.concurrency,
        data_dir.display()
    );

    let warmup = submit(&client, noop_spec("warmup", 500)).await?;
    wait_finished(&client, warmup, Duration::from_millis(5)).await?;

    // 1. One stage of no-op jobs.
    let t0 = Instant::now();
    let id = submit(&client, noop_spec("throughput", args.jobs)).await?;
    let enqueued = t0.elapsed();
    wait_finished(&client, id, Duration::from_millis(5)).await?;
    let total = t0.elapsed();
    let single_rate = args.jobs as f64 / total.as_secs_f64();
    println!(
        "single stage: {single_rate:.0} jobs/s end to end ({} no-op jobs in {:.3} s; submit took {:.3} s)",
        thousands(args.jobs),
        total.as_secs_f64(),
        enqueued.as_secs_f64()
    );
    println!(
        "{}",
        latency_line(
            "  enqueue-to-start under that load",
            start_latencies(&all_jobs(&client, id).await?)
        )
    );

    // 1b. The same, while hundreds of workers of another kind long-poll with nothing to
    //     do (a fleet of idle analyzers): every report wakes them all, and a wake-up must
    //     not cost a write.
    let idle_polls = crate::server::caps::LONG_POLLS_PER_CLIENT - 6;
    let stop_polls = tokio_util::sync::CancellationToken::new();
    let mut polls = tokio::task::JoinSet::new();
    for i in 0..idle_polls {
        let (client, stop) = (client.clone(), stop_polls.clone());
        let id = format!("idle-{i}");
        client
            .register(&WorkerRegistration {
                id: id.clone(),
                name: id.clone(),
                kinds: vec!["fail".into()],
            })
            .await?;
        polls.spawn(async move {
            let body = ClaimBody {
                worker_id: id.clone(),
                kinds: vec!["fail".into()],
                limit: 1,
                wait_ms: 25_000,
            };
            let mut wakes = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = client.claim(&body) => if r.is_err() { break },
                }
                wakes += 1;
            }
            let _ = client.worker_stopped(&id).await;
            wakes
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let id = submit(&client, noop_spec("idle-polls", args.jobs)).await?;
    wait_finished(&client, id, Duration::from_millis(5)).await?;
    let total = t0.elapsed();
    stop_polls.cancel();
    let mut answered = 0;
    while let Some(wakes) = polls.join_next().await {
        answered += wakes.unwrap_or(0);
    }
    println!(
        "single stage with {idle_polls} idle long-polls: {:.0} jobs/s end to end ({:.2}× the rate without; {answered} of the polls were answered, as no job of their kind came)",
        args.jobs as f64 / total.as_secs_f64(),
        (args.jobs as f64 / total.as_secs_f64()) / single_rate,
    );

    // 2. The main job's shape: a streamed study. Flooded with no-op jobs it measures
    //    throughput (dependents then queue behind everything released before them); with
    //    generation paced like a provider-bound stage, workers have free slots and it
    //    measures how soon an app's analyses start once the app exists.
    let (m, t, a) = (
        args.study_models,
        args.study_templates,
        args.study_analyzers,
    );
    let study_jobs = m * t * (1 + a);
    let t0 = Instant::now();
    let (id, submitted) =
        timed_submit(&client, study_spec("study", m, t, a, Generation::Noop)).await?;
    wait_finished(&client, id, Duration::from_millis(5)).await?;
    let total = t0.elapsed();
    let study_rate = study_jobs as f64 / total.as_secs_f64();
    println!(
        "streamed study: {m} models × {t} templates → generate → {a} analyzers per app ({} jobs, {} dependencies), no-op: \
         submit {:.3} s, {study_rate:.0} jobs/s end to end ({:.3} s), {:.2} × the single-stage rate",
        thousands(study_jobs),
        thousands(m * t * a),
        submitted.as_secs_f64(),
        total.as_secs_f64(),
        study_rate / single_rate
    );
    println!(
        "{}",
        latency_line(
            "  an analysis starts after its app's generate job completed (queued behind the flood)",
            dependent_start_latencies(&all_jobs(&client, id).await?)
        )
    );
    let paced = Generation::Paced {
        ms: 20,
        concurrency: 32,
    };
    let t0 = Instant::now();
    let id = submit(&client, study_spec("study-paced", m, t, a, paced)).await?;
    wait_finished(&client, id, Duration::from_millis(5)).await?;
    println!(
        "streamed study, generation paced (20 ms each, 32 at once; analyses no-op): {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        latency_line(
            "  an analysis starts after its app's generate job completed",
            dependent_start_latencies(&all_jobs(&client, id).await?)
        )
    );
    if let Some((peak, now)) = memory_mib(server_pid) {
        println!("  server memory: peak {peak:.0} MiB, now {now:.0} MiB");
    }

    // 3. Submitting study-sized plans. The probe heartbeats throughout the large one: the
    //    server must keep answering while it is written.
    let probe = Probe::register(&client).await?;
    let (small_id, small) = timed_submit(
        &client,
        study_spec("study-1500", 10, 30, 4, Generation::ForProbe),
    )
    .await?;
    println!(
        "submit: 10 models × 30 templates × 4 analyzers (1,500 jobs, 1,200 dependencies) in {:.3} s",
        small.as_secs_f64()
    );
    let (barrier, took) = timed_submit(&client, barrier_spec(2_000)).await?;
    println!(
        "submit: two stages of 2,000 jobs, the second waiting for the whole first (a barrier, no edges) in {:.3} s",
        took.as_secs_f64()
    );
    let apps = args.queue_apps;
    let models = 25.min(apps).max(1);
    let spec = study_spec(
        "queue",
        models,
        apps.div_ceil(models),
        4,
        Generation::ForProbe,
    );
    let (submitted, beats) = probe.heartbeats_during(timed_submit(&client, spec)).await?;
    let (queue, took) = submitted?;
    let queued = client.pipeline(queue).await?.pipeline.counts.total() as usize;
    println!(
        "submit: {} jobs, {} dependencies ({} apps × generate → 4 analyzers) in {:.3} s",
        thousands(queued),
        thousands(queued / 5 * 4),
        thousands(queued / 5),
        took.as_secs_f64()
    );
    println!(
        "{}",
        latency_line("  heartbeats answered while it was written", beats)
    );
    if let Some((peak, now)) = memory_mib(server_pid) {
        println!("  server memory: peak {peak:.0} MiB, now {now:.0} MiB");
    }

    // 4. Claims as that queue drains (the two smaller pipelines are cancelled first).
    for id in [small_id, barrier] {
        client.cancel_pipeline(id).await?;
    }
    let mut by_depth: Vec<(usize, f64)> = Vec::new();
    let mut left = queued;
    loop {
        let (took, n) = probe.claim_and_finish(100).await?;
        if n == 0 {
            break;
        }
        by_depth.push((left, took.as_micros() as f64));
        left = left.saturating_sub(n);
    }
    println!(
        "claims of 100 as a {}-job queue drains (one claimer; depth = jobs not yet finished):",
        thousands(queued)
    );
    let buckets = [
        (queued, queued * 3 / 4),
        (queued * 3 / 4, queued / 2),
        (queued / 2, queued / 4),
        (queued / 4, 0),
    ];
    for (high, low) in buckets {
        let samples: Vec<f64> = by_depth
            .iter()
            .filter(|(d, _)| *d <= high && *d > low)
            .map(|(_, t)| *t)
            .collect();
        println!(
            "{}",
            latency_line(
                &format!("  depth {}–{}", thousands(high), thousands(low)),
                samples
            )
        );
    }
    wait_finished(&client, queue, Duration::from_millis(20)).await?;

    // 5. A barrier opening on a large stage: one report releases all of it.
    let waiting = args.queue_apps * 4;
    let (opening, _) = timed_submit(&client, barrier_spec_of(1, waiting)).await?;
    let upstream = probe.claim(1).await?;
    let (took, beats) = probe.heartbeats_during(probe.finish(upstream)).await?;
    let took = took?;
    let released = client.pipeline(opening).await?.pipeline.counts.available;
    println!(
        "a barrier opening: the report that completes the last upstream job makes {} jobs available in {:.3} s",
        thousands(released as usize),
        took.as_secs_f64()
    );
    println!("{}", latency_line("  heartbeats answered meanwhile", beats));
    let t = Instant::now();
    let (cancelled, beats) = probe
        .heartbeats_during(client.cancel_pipeline(opening))
        .await?;
    cancelled?;
    println!(
        "cancelling those {} jobs: {:.3} s",
        thousands(released as usize),
        t.elapsed().as_secs_f64()
    );
    println!("{}", latency_line("  heartbeats answered meanwhile", beats));

    // 6. Opening a pipeline in the dashboard: a 10-job grid and a 10,000-job grid.
    for (models, templates, tools) in [(1, 1, 10), (10, 100, 10)] {
        let jobs = models * templates * tools;
        let id = submit(&client, grid_spec("grid", models, templates, tools)).await?;
        wait_finished(&client, id, Duration::from_millis(5)).await?;
        let requests = time_page_open(&url, id, 50).await?;
        let total: f64 = requests.iter().map(|r| r.1).sum();
        let bytes: usize = requests.iter().map(|r| r.2).sum();
        let each: Vec<String> = requests
            .iter()
            .map(|(p, t, b)| format!("{p} {:.1} ms {:.1} KiB", t / 1_000.0, *b as f64 / 1024.0))
            .collect();
        println!(
            "dashboard pipeline page, {jobs} jobs ({models} models × {templates} templates × {tools} tools): \
             {:.1} ms and {:.1} KiB for its 4 requests (p50 each: {})",
            total / 1_000.0,
            bytes as f64 / 1024.0,
            each.join(", ")
        );
    }

    // 7. A job on an idle system.
    let mut idle = Vec::with_capacity(args.latency_samples);
    for _ in 0..args.latency_samples {
        let id = submit(&client, noop_spec("latency", 1)).await?;
        wait_finished(&client, id, Duration::from_millis(1)).await?;
        idle.extend(start_latencies(&all_jobs(&client, id).await?));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{}",
        latency_line("enqueue-to-start on an idle system", idle)
    );
    if let Some((peak, _)) = memory_mib(server_pid) {
        println!("server peak memory over the whole bench: {peak:.0} MiB");
    }

    for child in children.iter_mut().chain(std::iter::once(&mut server)) {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for mut child in children {
        let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), server.wait()).await;
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(0)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("assay-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
