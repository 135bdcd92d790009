//! `assay bench`: no-op jobs through a real server (in this process, durable SQLite in a
//! temporary directory) and real worker processes over loopback HTTP. Prints figures; it
//! asserts nothing about time.

use crate::api::SubmitRequest;
use crate::client::Client;
use crate::domain::JobState;
use crate::server::{self, ServerConfig};
use crate::store::JobFilter;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// No-op jobs in the throughput run.
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

/// `models × templates × tools` no-op jobs: the shape of an analysis run, for the grid.
fn grid_spec(name: &str, models: usize, templates: usize, tools: usize) -> String {
    let list = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| format!("\"{prefix}{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "[pipeline]\nname = \"{name}\"\n\n[[stage]]\nname = \"analyze\"\nkind = \"noop\"\n\
         matrix = {{ model = [{}], template = [{}], tool = [{}] }}\n",
        list("model-", models),
        list("template-", templates),
        list("tool-", tools)
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

async fn start_latencies(client: &Client, pipeline: i64) -> Result<Vec<f64>> {
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
        for j in &jobs {
            if j.state == JobState::Completed {
                if let Some(started) = j.started_at {
                    out.push((started - j.created_at) as f64);
                }
            }
        }
    }
    Ok(out)
}

pub async fn run(args: BenchArgs) -> Result<u8> {
    let temp = tempfile_dir()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.clone());
    let stop = CancellationToken::new();
    let server = server::start(
        ServerConfig::new(data_dir.join("server"), "127.0.0.1:0".parse()?),
        stop.clone(),
    )
    .await?;
    let url = format!("http://{}", server.addr);
    let exe = std::env::current_exe().context("locating the assay binary")?;
    let mut children = Vec::new();
    for i in 0..args.workers {
        let child = tokio::process::Command::new(&exe)
            .args([
                "worker",
                "--server",
                &url,
                "--concurrency",
                &args.concurrency.to_string(),
                "--id",
                &format!("bench-{i}"),
                "--kinds",
                "noop",
            ])
            .arg("--spool-dir")
            .arg(data_dir.join(format!("spool-{i}")))
            .env("ASSAY_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        children.push(child);
    }
    let client = Client::new(&url);
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
        "assay bench: {} no-op jobs, {} worker processes × {} slots, SQLite (WAL, synchronous=NORMAL) at {}",
        args.jobs,
        args.workers,
        args.concurrency,
        data_dir.display()
    );

    let warmup = submit(&client, noop_spec("warmup", 500)).await?;
    wait_finished(&client, warmup, Duration::from_millis(5)).await?;

    let t0 = Instant::now();
    let id = submit(&client, noop_spec("throughput", args.jobs)).await?;
    let enqueued = t0.elapsed();
    wait_finished(&client, id, Duration::from_millis(5)).await?;
    let total = t0.elapsed();
    println!(
        "throughput: {:.0} jobs/s end to end ({} jobs in {:.3} s; enqueue took {:.3} s)",
        args.jobs as f64 / total.as_secs_f64(),
        args.jobs,
        total.as_secs_f64(),
        enqueued.as_secs_f64()
    );
    println!(
        "{}",
        latency_line(
            "enqueue-to-start under that load",
            start_latencies(&client, id).await?
        )
    );

    // Opening a pipeline in the dashboard: a 10-job grid and a 10,000-job grid.
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

    let mut idle = Vec::with_capacity(args.latency_samples);
    for _ in 0..args.latency_samples {
        let id = submit(&client, noop_spec("latency", 1)).await?;
        wait_finished(&client, id, Duration::from_millis(1)).await?;
        idle.extend(start_latencies(&client, id).await?);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{}",
        latency_line("enqueue-to-start on an idle system", idle)
    );

    for child in &mut children {
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
    stop.cancel();
    server.wait().await;
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
