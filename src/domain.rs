//! The engine's core: job and pipeline states, the transitions between them, failure
//! classification and retry policy. Nothing here does IO or reads a clock: callers pass
//! `now` in, which keeps every rule testable without sleeping.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Microseconds since the Unix epoch. Microseconds because enqueue-to-start latency is
/// measured in fractions of a millisecond.
pub type Micros = i64;

pub const MICROS_PER_MS: i64 = 1_000;
pub const MICROS_PER_SEC: i64 = 1_000_000;

pub fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownVariant {
                        kind: stringify!($name),
                        value: other.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} `{value}` (expected one of: {})", expected.join(", "))]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

string_enum!(
    /// Where a job is in its life. See `docs/state_machine.md` for the diagram.
    JobState {
        Waiting => "waiting",
        Available => "available",
        Running => "running",
        Retrying => "retrying",
        Completed => "completed",
        Dead => "dead",
        Cancelled => "cancelled",
        Skipped => "skipped",
    }
);

impl JobState {
    /// A terminal job never changes again unless a person retries it (`dead` only).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Dead | JobState::Cancelled | JobState::Skipped
        )
    }
}

string_enum!(
    /// What an API token may do. `read` sees pipelines, jobs, results and artifacts;
    /// `submit` also submits, cancels and retries; `admin` also manages tokens and workers;
    /// `worker` is a worker's: register, claim, heartbeat, report, upload and fetch blobs,
    /// call models through the server's gate. A person's scopes grant no worker rights and
    /// a worker's grant no person's.
    Scope {
        Read => "read",
        Submit => "submit",
        Admin => "admin",
        Worker => "worker",
    }
);

impl Scope {
    /// Whether holding `self` grants what `needed` asks for: admin ⊇ submit ⊇ read;
    /// worker stands alone.
    pub fn grants(self, needed: Scope) -> bool {
        use Scope::*;
        matches!(
            (self, needed),
            (Admin, Admin | Submit | Read)
                | (Submit, Submit | Read)
                | (Read, Read)
                | (Worker, Worker)
        )
    }
}

string_enum!(
    PipelineState {
        Running => "running",
        Completed => "completed",
        PartialSuccess => "partial_success",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl PipelineState {
    pub fn is_terminal(self) -> bool {
        self != PipelineState::Running
    }
}

string_enum!(
    /// How one attempt ended.
    AttemptOutcome {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        TimedOut => "timed_out",
        Lost => "lost",
        Cancelled => "cancelled",
        Superseded => "superseded",
    }
);

string_enum!(
    /// Whether trying again can help. Handlers choose this by returning a typed error;
    /// nothing in the engine guesses it from message text.
    FailureClass {
        Retryable => "retryable",
        Permanent => "permanent",
    }
);

/// Why an attempt failed, as reported by a worker or decided by the reconciler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    /// A stable machine-readable reason, e.g. `timeout`, `worker_lost`, `exit_status`.
    pub code: String,
    pub message: String,
    /// A handler may ask for a specific delay (an API's `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<i64>,
    /// The cause lies outside the job and its worker (a model provider's limits or quota,
    /// the pipeline's budget): it says nothing about the stage's other jobs or the worker,
    /// so it opens no breaker and quarantines no worker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

impl Failure {
    /// Mark the cause as outside the job and the worker.
    pub fn external(mut self) -> Self {
        self.external = true;
        self
    }

    /// A lost worker says nothing against the job: it may run again at once, elsewhere,
    /// without a backoff.
    pub fn worker_lost(message: impl Into<String>) -> Self {
        Failure {
            retry_after_ms: Some(0),
            ..Failure::retryable("worker_lost", message)
        }
    }

    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Failure {
            class: FailureClass::Retryable,
            code: code.to_string(),
            message: message.into(),
            retry_after_ms: None,
            external: false,
        }
    }

    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        Failure {
            class: FailureClass::Permanent,
            code: code.to_string(),
            message: message.into(),
            retry_after_ms: None,
            external: false,
        }
    }
}

/// Per-stage retry policy: how many attempts and how long to wait between them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with "equal jitter": half the delay is fixed so retries never
    /// bunch up at zero, half is random so a burst of failures spreads out.
    /// `jitter` is a number in [0, 1) supplied by the caller.
    pub fn backoff_ms(&self, attempt: i64, jitter: f64) -> i64 {
        let exponent = (attempt.max(1) - 1).min(30) as u32;
        let full = self
            .backoff_base_ms
            .saturating_mul(1_i64 << exponent)
            .min(self.backoff_max_ms)
            .max(0);
        let half = full / 2;
        half + ((full - half) as f64 * jitter.clamp(0.0, 1.0)) as i64
    }
}

/// What happens to a job after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    RetryAt(Micros),
    Dead,
}

/// Decide a job's fate after attempt number `attempt` (1-based) failed.
pub fn after_failure(
    policy: &RetryPolicy,
    attempt: i64,
    failure: &Failure,
    now: Micros,
    jitter: f64,
) -> AfterFailure {
    if failure.class == FailureClass::Permanent || attempt >= policy.max_attempts {
        return AfterFailure::Dead;
    }
    let delay_ms = failure
        .retry_after_ms
        .unwrap_or_else(|| policy.backoff_ms(attempt, jitter))
        .max(0);
    AfterFailure::RetryAt(now + delay_ms * MICROS_PER_MS)
}

/// Counts of a pipeline's jobs by state, the input to finalization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub waiting: i64,
    pub available: i64,
    pub running: i64,
    pub retrying: i64,
    pub completed: i64,
    pub dead: i64,
    pub cancelled: i64,
    pub skipped: i64,
}

impl StateCounts {
    pub fn add(&mut self, state: JobState, n: i64) {
        *self.slot(state) += n;
    }

    pub fn get(&self, state: JobState) -> i64 {
        match state {
            JobState::Waiting => self.waiting,
            JobState::Available => self.available,
            JobState::Running => self.running,
            JobState::Retrying => self.retrying,
            JobState::Completed => self.completed,
            JobState::Dead => self.dead,
            JobState::Cancelled => self.cancelled,
            JobState::Skipped => self.skipped,
        }
    }

    fn slot(&mut self, state: JobState) -> &mut i64 {
        match state {
            JobState::Waiting => &mut self.waiting,
            JobState::Available => &mut self.available,
            JobState::Running => &mut self.running,
            JobState::Retrying => &mut self.retrying,
            JobState::Completed => &mut self.completed,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
            JobState::Skipped => &mut self.skipped,
        }
    }

    pub fn total(&self) -> i64 {
        self.waiting
            + self.available
            + self.running
            + self.retrying
            + self.completed
            + self.dead
            + self.cancelled
            + self.skipped
    }

    pub fn unfinished(&self) -> i64 {
        self.waiting + self.available + self.running + self.retrying
    }
}

/// The final state of a pipeline whose jobs are all terminal, or `None` while any job can
/// still move. This is the rule that keeps a pipeline from staying `running` with nothing
/// left to run.
pub fn pipeline_outcome(counts: &StateCounts, cancel_requested: bool) -> Option<PipelineState> {
    if counts.unfinished() > 0 {
        return None;
    }
    Some(if cancel_requested {
        PipelineState::Cancelled
    } else if counts.total() == counts.completed {
        PipelineState::Completed
    } else if counts.completed > 0 {
        PipelineState::PartialSuccess
    } else {
        PipelineState::Failed
    })
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Why a job that is not running is not running. Shown by `explain`, `jobs` and progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    Upstream {
        /// Keys of unfinished upstream jobs: all of them, or the first few when `more`
        /// counts the rest.
        pending: Vec<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        more: usize,
    },
    BackingOff {
        until: Micros,
    },
    ConcurrencyLimit {
        stage: String,
        limit: i64,
    },
    BreakerOpen {
        stage: String,
    },
    NoWorkerForKind {
        kind: String,
    },
    ReadyToClaim,
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Upstream { pending, more } => {
                let shown: Vec<&str> = pending.iter().take(3).map(String::as_str).collect();
                write!(f, "waiting for upstream job(s) {}", shown.join(", "))?;
                let rest = pending.len().saturating_sub(3) + more;
                if rest > 0 {
                    write!(f, " and {rest} more")?;
                }
                Ok(())
            }
            WaitReason::BackingOff { until } => {
                write!(f, "backing off until {}", format_time(*until))
            }
            WaitReason::ConcurrencyLimit { stage, limit } => write!(
                f,
                "stage `{stage}` is at its concurrency limit of {limit} running job(s)"
            ),
            WaitReason::BreakerOpen { stage } => {
                write!(f, "the circuit breaker of stage `{stage}` is open")
            }
            WaitReason::NoWorkerForKind { kind } => {
                write!(f, "no live worker accepts job kind `{kind}`")
            }
            WaitReason::ReadyToClaim => f.write_str("ready; waiting for a free worker slot"),
        }
    }
}

/// UTC wall-clock time of a timestamp, `HH:MM:SS.mmm`, for humans.
pub fn format_time(t: Micros) -> String {
    let ms = t.div_euclid(MICROS_PER_MS);
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        (day_ms / 60_000) % 60,
        (day_ms / 1_000) % 60,
        day_ms % 1_000
    )
}

/// Consecutive-failure circuit breaker. Its state lives in the store; the rule lives here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    /// Open after this many consecutive failed attempts in one stage; 0 disables.
    pub threshold: i64,
}

impl BreakerPolicy {
    pub fn should_open(&self, consecutive_failures: i64) -> bool {
        self.threshold > 0 && consecutive_failures >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        let err = "finished".parse::<JobState>().unwrap_err().to_string();
        assert!(
            err.contains("finished") && err.contains("completed"),
            "{err}"
        );
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
        };
        assert_eq!(p.backoff_ms(1, 0.0), 50);
        assert_eq!(p.backoff_ms(1, 0.999), 99);
        assert_eq!(p.backoff_ms(2, 0.0), 100);
        assert_eq!(p.backoff_ms(3, 0.0), 200);
        assert_eq!(p.backoff_ms(9, 0.0), 500);
        assert!(p.backoff_ms(60, 0.99) <= 1_000);
    }

    #[test]
    fn permanent_failures_and_exhausted_attempts_are_dead() {
        let p = RetryPolicy {
            max_attempts: 3,
            backoff_base_ms: 10,
            backoff_max_ms: 100,
        };
        let retryable = Failure::retryable("timeout", "took too long");
        let permanent = Failure::permanent("bad_input", "no such file");
        assert_eq!(
            after_failure(&p, 1, &retryable, 0, 0.0),
            AfterFailure::RetryAt(5 * MICROS_PER_MS)
        );
        assert_eq!(after_failure(&p, 3, &retryable, 0, 0.0), AfterFailure::Dead);
        assert_eq!(after_failure(&p, 1, &permanent, 0, 0.0), AfterFailure::Dead);
    }

    #[test]
    fn retry_after_overrides_backoff() {
        let p = RetryPolicy::default();
        let mut f = Failure::retryable("rate_limited", "429");
        f.retry_after_ms = Some(7_000);
        assert_eq!(
            after_failure(&p, 1, &f, 1_000, 0.5),
            AfterFailure::RetryAt(1_000 + 7_000 * MICROS_PER_MS)
        );
    }

    #[test]
    fn pipeline_outcome_covers_every_terminal_mix() {
        let mut c = StateCounts::default();
        c.add(JobState::Completed, 2);
        assert_eq!(pipeline_outcome(&c, false), Some(PipelineState::Completed));
        c.add(JobState::Dead, 1);
        assert_eq!(
            pipeline_outcome(&c, false),
            Some(PipelineState::PartialSuccess)
        );
        assert_eq!(pipeline_outcome(&c, true), Some(PipelineState::Cancelled));
        c.add(JobState::Retrying, 1);
        assert_eq!(pipeline_outcome(&c, false), None);
        let mut only_failed = StateCounts::default();
        only_failed.add(JobState::Dead, 1);
        only_failed.add(JobState::Skipped, 4);
        assert_eq!(
            pipeline_outcome(&only_failed, false),
            Some(PipelineState::Failed)
        );
        assert_eq!(
            pipeline_outcome(&StateCounts::default(), false),
            Some(PipelineState::Completed)
        );
    }

    #[test]
    fn breaker_threshold_zero_never_opens() {
        assert!(!BreakerPolicy { threshold: 0 }.should_open(100));
        assert!(BreakerPolicy { threshold: 3 }.should_open(3));
        assert!(!BreakerPolicy { threshold: 3 }.should_open(2));
    }

    #[test]
    fn wait_reasons_read_well() {
        let r = WaitReason::Upstream {
            pending: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            more: 0,
        };
        assert_eq!(
            r.to_string(),
            "waiting for upstream job(s) a, b, c and 1 more"
        );
        let r = WaitReason::Upstream {
            pending: vec!["a".into(), "b".into(), "c".into()],
            more: 9_997,
        };
        assert_eq!(
            r.to_string(),
            "waiting for upstream job(s) a, b, c and 9997 more"
        );
        assert_eq!(format_time(3_723_004_000), "01:02:03.004Z");
    }
}
