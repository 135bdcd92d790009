//! Following a pipeline from the CLI: live progress bars on a terminal, event lines
//! otherwise. Driven by the server's event feed (long-poll by last event id), so a
//! reconnect resumes where it left off and nothing is polled on a timer.

use crate::api::PipelineDetail;
use crate::client::{Client, ClientError};
use crate::domain::{format_time, JobState, PipelineState, StateCounts};
use crate::store::{Event, JobFilter, StageSummary};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Progress bars (a terminal).
    Bars,
    /// One line per notable event (logs, CI).
    Lines,
    /// Nothing until the end.
    Quiet,
}

impl Display {
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Display::Bars
        } else {
            Display::Lines
        }
    }
}

pub fn counts_line(c: &StateCounts) -> String {
    let mut parts = vec![format!("done {}", c.completed)];
    for (n, label) in [
        (c.running, "running"),
        (c.waiting + c.available, "waiting"),
        (c.retrying, "retrying"),
        (c.dead, "failed"),
        (c.skipped, "skipped"),
        (c.cancelled, "cancelled"),
    ] {
        if n > 0 {
            parts.push(format!("{label} {n}"));
        }
    }
    parts.join(" · ")
}

/// How often a plain (log) display prints where the whole run stands, when it changed.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// How many running jobs get a line of their own under the stage bars.
const RUNNING_LINES: usize = 8;

struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    running: Vec<ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            bars: HashMap::new(),
            running: Vec::new(),
        }
    }

    /// One line per running job (its current step), below the stage bars.
    fn update_running(&mut self, lines: &[String]) {
        let style = ProgressStyle::with_template("  {spinner} {msg}").expect("valid template");
        let idle = ProgressStyle::with_template(" ").expect("valid template");
        while self.running.len() < lines.len().min(RUNNING_LINES) {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            self.running.push(bar);
        }
        for (i, bar) in self.running.iter().enumerate() {
            match lines.get(i) {
                Some(line) => {
                    bar.set_style(style.clone());
                    if i + 1 == RUNNING_LINES && lines.len() > RUNNING_LINES {
                        bar.set_message(format!(
                            "{line} (and {} more running)",
                            lines.len() - RUNNING_LINES
                        ));
                    } else {
                        bar.set_message(line.clone());
                    }
                }
                None => bar.set_style(idle.clone()),
            }
            bar.tick();
        }
    }

    fn update(&mut self, stages: &[StageSummary]) {
        let style = ProgressStyle::with_template(
            "{prefix:>14.bold} [{bar:28.green/blue}] {pos:>5}/{len:<5} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        for stage in stages {
            let bar = self.bars.entry(stage.name.clone()).or_insert_with(|| {
                let bar = self
                    .multi
                    .add(ProgressBar::new(stage.counts.total() as u64));
                bar.set_style(style.clone());
                bar.set_prefix(stage.name.clone());
                bar
            });
            let c = &stage.counts;
            bar.set_length(c.total() as u64);
            bar.set_position((c.total() - c.unfinished()) as u64);
            let mut msg = counts_line(c);
            if stage.breaker_open {
                msg += " · BREAKER OPEN";
            }
            bar.set_message(msg);
        }
    }

    fn finish(&self) {
        for bar in &self.running {
            bar.finish_and_clear();
        }
        for bar in self.bars.values() {
            bar.abandon();
        }
    }
}

fn event_line(e: &Event) -> Option<String> {
    let d = &e.data;
    let key = d.get("key").and_then(|k| k.as_str()).unwrap_or("");
    let time = format_time(e.at);
    match e.kind.as_str() {
        "job_state" => {
            let state = d.get("state").and_then(|s| s.as_str()).unwrap_or("?");
            let err = d
                .get("error")
                .map(|err| {
                    format!(
                        " — {}: {}",
                        err.get("code").and_then(|c| c.as_str()).unwrap_or(""),
                        err.get("message").and_then(|m| m.as_str()).unwrap_or("")
                    )
                })
                .unwrap_or_default();
            match state {
                "running" | "available" | "waiting" => None,
                _ => Some(format!("{time} {key} {state}{err}")),
            }
        }
        "breaker_opened" => Some(format!("{time} circuit breaker opened: {d}")),
        "pipeline_finished" => Some(format!(
            "{time} pipeline finished: {}",
            d.get("state").and_then(|s| s.as_str()).unwrap_or("?")
        )),
        _ => None,
    }
}

/// Follow a pipeline until it is finished or `stop` fires; returns its last detail.
pub async fn follow(
    client: &Client,
    pipeline_id: i64,
    display: Display,
    stop: &CancellationToken,
) -> Result<PipelineDetail, ClientError> {
    let mut bars = (display == Display::Bars).then(Bars::new);
    let mut last_summary = std::time::Instant::now();
    let mut last_counts = String::new();
    let mut after = 0i64;
    let mut failures = 0u32;
    loop {
        let events = tokio::select! {
            r = client.events(pipeline_id, after, 1_000) => r,
            _ = stop.cancelled() => break,
        };
        let events = match events {
            Ok(e) => {
                failures = 0;
                e
            }
            Err(e) if e.is_transient() && failures < 600 => {
                failures += 1;
                if failures == 1 {
                    eprintln!("lost the server ({e}); reconnecting…");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        after = events.last_id;
        if display == Display::Lines {
            for line in events.events.iter().filter_map(event_line) {
                eprintln!("{line}");
            }
        }
        let detail = client.pipeline(pipeline_id).await?;
        if display == Display::Lines {
            // A log has no bars: now and then, where the whole run stands.
            let counts = counts_line(&detail.pipeline.counts);
            if last_summary.elapsed() >= SUMMARY_EVERY && counts != last_counts {
                eprintln!(
                    "{} progress: {counts}",
                    format_time(crate::domain::now_micros())
                );
                last_summary = std::time::Instant::now();
                last_counts = counts;
            }
        }
        if let Some(bars) = bars.as_mut() {
            let running = client
                .jobs(&JobFilter {
                    pipeline_id: Some(pipeline_id),
                    state: Some(JobState::Running),
                    limit: Some(200),
                    ..Default::default()
                })
                .await?;
            let lines: Vec<String> = running
                .iter()
                .map(|job| match &job.progress {
                    Some(p) => {
                        let pct = p.percent.map(|v| format!(" {v:.0}%")).unwrap_or_default();
                        let msg = p
                            .message
                            .as_deref()
                            .map(|m| format!(" — {m}"))
                            .unwrap_or_default();
                        format!("{}: {}{pct}{msg}", job.key, p.step)
                    }
                    None => format!("{}: started", job.key),
                })
                .collect();
            bars.update(&detail.stages);
            bars.update_running(&lines);
        }
        if detail.pipeline.state.is_terminal() {
            if let Some(bars) = &bars {
                bars.finish();
            }
            return Ok(detail);
        }
    }
    if let Some(bars) = &bars {
        bars.finish();
    }
    client.pipeline(pipeline_id).await
}

/// The final report printed after a run or watch.
pub async fn print_summary(client: &Client, detail: &PipelineDetail) -> Result<(), ClientError> {
    let p = &detail.pipeline;
    let took = p
        .finished_at
        .map(|f| format!(" in {:.1}s", (f - p.created_at) as f64 / 1e6))
        .unwrap_or_default();
    println!("pipeline {} `{}`: {}{took}", p.id, p.name, p.state);
    for s in &detail.stages {
        println!("  {:<16} {}", s.name, counts_line(&s.counts));
    }
    // Older servers have no usage endpoint: the summary goes on without it.
    if let Ok(usage) = client.usage(p.id).await {
        if usage.usage.total.calls > 0 {
            println!("model calls: {}", usage.usage.total.summary());
            for m in &usage.usage.by_model {
                println!("  {:<32} {}", m.model, m.totals.summary());
            }
        }
        if let Some(why) = &usage.budget_reached {
            println!("budget: {why}; no new calls were made");
        }
    }
    if p.counts.dead > 0 {
        let dead = client
            .jobs(&JobFilter {
                pipeline_id: Some(p.id),
                state: Some(JobState::Dead),
                limit: Some(10),
                ..Default::default()
            })
            .await?;
        println!("failed jobs:");
        for j in &dead {
            let e = j.last_error.as_ref();
            println!(
                "  #{} {} — {}: {}",
                j.id,
                j.key,
                e.map(|e| e.code.as_str()).unwrap_or("?"),
                e.map(|e| e.message.as_str()).unwrap_or("")
            );
        }
        if p.counts.dead > dead.len() as i64 {
            println!(
                "  … and {} more (assay jobs --pipeline {} --state dead)",
                p.counts.dead - dead.len() as i64,
                p.id
            );
        }
        println!(
            "explain one with `assay explain JOB`; run them again with `assay retry {}`",
            p.id
        );
    }
    Ok(())
}

/// Process exit code for a pipeline's final state (documented in the README).
pub fn exit_code(state: PipelineState) -> u8 {
    match state {
        PipelineState::Completed => 0,
        PipelineState::PartialSuccess => 2,
        PipelineState::Failed => 3,
        PipelineState::Cancelled => 4,
        PipelineState::Running => 5,
    }
}
