//! Why a job is in the state it is: the answer `assay explain` and the API give. Pure:
//! everything it needs is read by the caller.

use crate::domain::{format_time, JobState, Micros, WaitReason, MICROS_PER_MS};
use crate::store::{Artifact, Attempt, Dependency, Job, StageSummary, WorkerRow};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    pub job: Job,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitReason>,
    pub attempts: Vec<Attempt>,
    pub dependencies: Vec<Dependency>,
    pub artifacts: Vec<Artifact>,
    /// For jobs that call models: the live state of their model's limiter ("backing off
    /// until 12:03:10") and what the job's calls cost so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provider_limits: Vec<crate::server::llm_gate::LimiterState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_usage: Option<crate::generation::budget::UsageTotals>,
}

/// A worker counts as live if it was seen within this many lease periods.
const LIVE_LEASES: i64 = 3;

pub fn live_workers_for<'a>(
    workers: &'a [WorkerRow],
    kind: &str,
    lease_ms: i64,
    now: Micros,
) -> impl Iterator<Item = &'a WorkerRow> + 'a {
    let kind = kind.to_string();
    workers.iter().filter(move |w| {
        !w.stopped
            && now - w.last_seen <= LIVE_LEASES * lease_ms * MICROS_PER_MS
            && w.kinds.contains(&kind)
    })
}

/// `unfinished_upstream`: for a waiting job, the keys of the first upstream jobs it still
/// waits for and how many there are in all (`Store::unfinished_upstream`).
pub fn wait_reason(
    job: &Job,
    stage: Option<&StageSummary>,
    unfinished_upstream: (Vec<String>, i64),
    workers: &[WorkerRow],
    lease_ms: i64,
    now: Micros,
) -> Option<WaitReason> {
    match job.state {
        JobState::Waiting => {
            let (pending, total) = unfinished_upstream;
            Some(WaitReason::Upstream {
                more: (total as usize).saturating_sub(pending.len()),
                pending,
            })
        }
        JobState::Retrying if job.run_after > now => Some(WaitReason::BackingOff {
            until: job.run_after,
        }),
        JobState::Available | JobState::Retrying => {
            if let Some(stage) = stage {
                if stage.breaker_open {
                    return Some(WaitReason::BreakerOpen {
                        stage: stage.name.clone(),
                    });
                }
            }
            let mut live = live_workers_for(workers, &job.kind, lease_ms, now);
            if live.next().is_none() {
                return Some(WaitReason::NoWorkerForKind {
                    kind: job.kind.clone(),
                });
            }
            if let Some(stage) = stage {
                if let Some(limit) = stage.concurrency {
                    if stage.counts.running >= limit {
                        return Some(WaitReason::ConcurrencyLimit {
                            stage: stage.name.clone(),
                            limit,
                        });
                    }
                }
            }
            Some(WaitReason::ReadyToClaim)
        }
        _ => None,
    }
}

pub fn summarize(
    job: &Job,
    wait: Option<&WaitReason>,
    attempts: &[Attempt],
    now: Micros,
) -> String {
    let error = || {
        job.last_error
            .as_ref()
            .map(|e| format!("{} ({}): {}", e.code, e.class, e.message))
            .unwrap_or_else(|| "no error recorded".into())
    };
    match job.state {
        JobState::Running => {
            let mut s = format!(
                "running attempt {} on worker `{}`",
                job.attempts,
                job.worker_id.as_deref().unwrap_or("?")
            );
            if let Some(a) = attempts.last() {
                s += &format!(" for {:.1}s", (now - a.started_at) as f64 / 1e6);
            }
            if let Some(t) = job.lease_expires_at {
                s += &format!("; lease held until {}", format_time(t));
            }
            if let Some(t) = job.attempt_deadline_at {
                s += &format!("; attempt times out at {}", format_time(t));
            }
            if let Some(p) = &job.progress {
                s += &format!("; step `{}`", p.step);
                if let Some(pct) = p.percent {
                    s += &format!(" {pct:.0}%");
                }
                if let Some(m) = &p.message {
                    s += &format!(" ({m})");
                }
            }
            if job.cancel_requested {
                s += "; cancellation requested, waiting for the worker to stop it";
            }
            s
        }
        JobState::Completed => format!(
            "completed on attempt {} of {}",
            job.attempts,
            job.attempts.max(1)
        ),
        JobState::Dead => format!(
            "dead after {} failed attempt(s): {}; `assay retry --job {}` runs it again",
            job.failed_attempts,
            error(),
            job.id
        ),
        JobState::Skipped => format!("skipped: {}", error()),
        JobState::Cancelled => "cancelled".into(),
        JobState::Retrying | JobState::Available | JobState::Waiting => {
            let mut s = wait.map(|w| w.to_string()).unwrap_or_default();
            if job.failed_attempts > 0 {
                s += &format!(
                    "; {} failed attempt(s) so far, last: {}",
                    job.failed_attempts,
                    error()
                );
            }
            s
        }
    }
}
