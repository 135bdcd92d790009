//! Persistence. All SQL lives below this module; everything above talks to the [`Store`]
//! trait. Every method takes `now` from the caller so the rules are deterministic under
//! test. `conformance` holds the suite every backend must pass.

pub mod conformance;
pub mod sqlite;

use crate::domain::{
    AttemptOutcome, Failure, JobState, Micros, PipelineState, RetryPolicy, StateCounts,
};
use crate::generation::budget::{Budget, CallResult, UsageTotals};
use crate::spec::{Plan, Spec};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("idempotency key `{0}` is already used by a pipeline with a different spec")]
    IdempotencyConflict(String),
    #[error("{0}")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewPipeline {
    pub idempotency_key: Option<String>,
    /// Hash of the spec's content: the same key with another spec is a conflict.
    pub spec_hash: String,
    /// The spec as it was submitted, kept with the pipeline.
    pub source: String,
    pub spec: Spec,
    pub plan: Plan,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pipeline {
    pub id: i64,
    pub name: String,
    pub state: PipelineState,
    pub idempotency_key: Option<String>,
    pub spec_hash: String,
    pub cancel_requested: bool,
    pub created_at: Micros,
    pub deadline_at: Option<Micros>,
    pub finished_at: Option<Micros>,
    pub counts: StateCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageSummary {
    pub name: String,
    pub kind: String,
    pub position: i64,
    pub concurrency: Option<i64>,
    pub timeout_ms: i64,
    pub retry: RetryPolicy,
    pub breaker_threshold: i64,
    pub consecutive_failures: i64,
    pub breaker_open: bool,
    pub deadline_at: Option<Micros>,
    pub counts: StateCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: i64,
    pub pipeline_id: i64,
    pub stage: String,
    pub key: String,
    pub kind: String,
    pub item: Value,
    pub params: Value,
    pub state: JobState,
    /// Attempts started so far (also the number of the latest attempt).
    pub attempts: i64,
    /// Attempts that failed and count against `max_attempts`.
    pub failed_attempts: i64,
    pub pending_deps: i64,
    pub run_after: Micros,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<Micros>,
    pub attempt_deadline_at: Option<Micros>,
    pub cancel_requested: bool,
    pub result: Option<Value>,
    pub last_error: Option<Failure>,
    pub progress: Option<Progress>,
    pub created_at: Micros,
    pub started_at: Option<Micros>,
    pub finished_at: Option<Micros>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub job_id: i64,
    pub number: i64,
    pub worker_id: String,
    pub started_at: Micros,
    pub finished_at: Option<Micros>,
    pub outcome: AttemptOutcome,
    pub error: Option<Failure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dependency {
    pub job_id: i64,
    pub key: String,
    pub state: JobState,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArtifactRef {
    pub name: String,
    pub sha256: String,
    pub size: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Artifact {
    pub job_id: i64,
    pub attempt: i64,
    pub name: String,
    pub sha256: String,
    pub size: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: i64,
    pub pipeline_id: i64,
    pub job_id: Option<i64>,
    pub at: Micros,
    pub kind: String,
    pub data: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRegistration {
    pub id: String,
    pub name: String,
    pub kinds: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerRow {
    pub id: String,
    pub name: String,
    pub kinds: Vec<String>,
    pub started_at: Micros,
    pub last_seen: Micros,
    pub consecutive_failures: i64,
    pub quarantined_until: Option<Micros>,
    pub stopped: bool,
    pub running: i64,
}

/// How many worker ids one token may own, and from when an owned id may be given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIdPolicy {
    pub per_token: i64,
    pub idle_before: Micros,
}

/// Who owns a worker id, once asked for by a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerBinding {
    Owner(i64),
    /// The asking token owns `owned` ids already, none of which may be given up.
    Full {
        owned: i64,
    },
}

/// An API token as stored: never the token itself, only its SHA-256 (hex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<crate::domain::Scope>,
    pub created_at: Micros,
    pub revoked_at: Option<Micros>,
    /// The job kinds it may claim; `None`: every kind.
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
}

/// How many lost attempts (its worker stopped heartbeating, or restarted) a job may have
/// by default before it is given up; they do not count against its `max_attempts`.
pub const MAX_LOST_ATTEMPTS: i64 = 5;

/// Knobs the server applies to every claim.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LeasePolicy {
    /// How often workers heartbeat.
    pub heartbeat_ms: i64,
    /// How long a lease lasts after a heartbeat. Derived from the heartbeat so that a dead
    /// worker's jobs are claimable again within two heartbeat intervals (see `from_heartbeat`).
    pub lease_ms: i64,
    /// Consecutive retryable failures after which a worker is quarantined; 0 disables.
    pub quarantine_after: i64,
    pub quarantine_ms: i64,
    /// Lost attempts after which a job is given up ([`MAX_LOST_ATTEMPTS`]), or its stage's
    /// `max_attempts` if that is more.
    #[serde(default = "default_max_lost_attempts")]
    pub max_lost_attempts: i64,
}

fn default_max_lost_attempts() -> i64 {
    MAX_LOST_ATTEMPTS
}

impl LeasePolicy {
    /// The reconciler tick that goes with a heartbeat interval.
    pub fn reconcile_tick_ms(heartbeat_ms: i64) -> i64 {
        (heartbeat_ms / 5).clamp(10, 200)
    }

    /// Lease = 2 heartbeats − 2 reconciler ticks: a lease expires, and the reconciler sees
    /// it, within two heartbeat intervals of the last heartbeat, while one late heartbeat
    /// (up to `heartbeat − 2 ticks` late) is still tolerated.
    /// How long running leases last after a server starts: one heartbeat interval. Live
    /// workers retry a failed heartbeat every few hundred milliseconds, so they are heard
    /// within it; a dead worker's jobs are claimable again within two heartbeat intervals
    /// of the later of its last heartbeat and the server's start (the grace, then one
    /// reconciler tick).
    pub fn startup_grace_ms(&self) -> i64 {
        self.heartbeat_ms
    }

    pub fn from_heartbeat(heartbeat_ms: i64) -> Self {
        let heartbeat_ms = heartbeat_ms.max(50);
        LeasePolicy {
            heartbeat_ms,
            lease_ms: 2 * heartbeat_ms - 2 * Self::reconcile_tick_ms(heartbeat_ms),
            quarantine_after: 5,
            quarantine_ms: 30_000,
            max_lost_attempts: MAX_LOST_ATTEMPTS,
        }
    }
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy::from_heartbeat(2_000)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub worker_id: String,
    pub kinds: Vec<String>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub pipeline_id: i64,
    pub stage: String,
    pub key: String,
    pub kind: String,
    pub item: Value,
    pub params: Value,
    pub attempt: i64,
    /// Fencing token: every report about this attempt must carry it.
    pub token: String,
    pub timeout_ms: i64,
    pub lease_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldLease {
    pub job_id: i64,
    pub token: String,
    #[serde(default)]
    pub progress: Option<Progress>,
    /// The attempt finished and its result is on its way (spooled, uploading): the
    /// attempt timeout no longer applies, only the lease does.
    #[serde(default)]
    pub finished: bool,
    /// How long this attempt has waited for a model provider's slot so far, in ms. Its
    /// attempt deadline moves out by as much: a job waiting its turn is not running late.
    #[serde(default)]
    pub waited_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker_id: String,
    pub leases: Vec<HeldLease>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The job or its pipeline was cancelled, or hit a stage or pipeline deadline.
    Cancelled,
    /// The lease was lost (expired, timed out by the server, or taken by a newer attempt).
    LeaseLost,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopOrder {
    pub job_id: i64,
    /// The attempt the order is about; a worker may hold a newer attempt of the same job.
    pub token: String,
    pub reason: StopReason,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatReply {
    pub stop: Vec<StopOrder>,
    pub quarantined_until: Option<Micros>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReportOutcome {
    Completed {
        result: Value,
        #[serde(default)]
        artifacts: Vec<ArtifactRef>,
    },
    Failed {
        failure: Failure,
        #[serde(default)]
        artifacts: Vec<ArtifactRef>,
    },
    /// The worker stopped the job because it was told to.
    Cancelled,
    /// The worker is shutting down and hands the job back unstarted or unfinished; this
    /// does not count as a failed attempt.
    Released,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub job_id: i64,
    pub attempt: i64,
    pub token: String,
    pub worker_id: String,
    #[serde(flatten)]
    pub outcome: ReportOutcome,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReportAck {
    /// The report was applied.
    Accepted,
    /// A newer attempt owns the job (or it was already finalized); recorded, not applied.
    Superseded,
    /// No such job or attempt.
    Unknown,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReconcileStats {
    pub leases_expired: i64,
    pub attempts_timed_out: i64,
    pub deadline_jobs: i64,
    pub pipelines_finalized: i64,
    pub cancelled_jobs_closed: i64,
    pub blocked_jobs_skipped: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobFilter {
    pub pipeline_id: Option<i64>,
    pub stage: Option<String>,
    pub state: Option<JobState>,
    /// Return jobs with id greater than this (keyset pagination).
    pub after_id: Option<i64>,
    pub limit: Option<i64>,
    /// Only jobs that have not started: waiting, available or retrying.
    #[serde(default)]
    pub pending: bool,
    /// Only jobs whose item names this model, and this template: one app's jobs.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
}

/// A job as the dashboard's grid sees it: where it goes and what colour it has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobCell {
    pub id: i64,
    pub stage: String,
    pub state: JobState,
    pub item: Value,
}

/// A pipeline's jobs of one stage, app and state, counted: the grid of a large pipeline,
/// aggregated by the database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobGroup {
    pub stage: String,
    /// The item's model and template when both are strings (the job belongs to an app).
    pub model: Option<String>,
    pub template: Option<String>,
    pub state: JobState,
    pub count: i64,
    pub first_id: i64,
}

/// The circuit breaker of one stage of a running pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BreakerRow {
    pub pipeline_id: i64,
    pub pipeline_name: String,
    pub stage: String,
    pub kind: String,
    /// Consecutive failures that open it (0: the stage has no breaker).
    pub threshold: i64,
    pub consecutive_failures: i64,
    pub open: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelineFilter {
    pub state: Option<PipelineState>,
    /// Only pipelines with a smaller id (the next page of a newest-first list).
    pub before_id: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RetryTarget {
    Job(i64),
    Pipeline(i64),
}

/// One call a job made to a model, for accounting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlmCall {
    /// Chosen by the caller, unique per call: recording the same call twice (a retried
    /// report) counts it once.
    pub call_id: String,
    pub job_id: i64,
    pub attempt: i64,
    pub provider: String,
    pub model: String,
    /// The model id as the provider resolved it, when it answered.
    #[serde(default)]
    pub model_resolved: Option<String>,
    pub result: CallResult,
    /// The failure code, for failed calls.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
    #[serde(default)]
    pub cost_usd: f64,
    /// For a cached answer: what it cost when it was first paid.
    #[serde(default)]
    pub saved_usd: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelUsage {
    pub provider: String,
    pub model: String,
    pub totals: UsageTotals,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobUsage {
    pub job_id: i64,
    pub key: String,
    pub totals: UsageTotals,
}

/// What a pipeline's LLM calls cost, in total, per model and per job, and its budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipelineUsage {
    pub pipeline_id: i64,
    pub budget: Option<Budget>,
    pub total: UsageTotals,
    pub by_model: Vec<ModelUsage>,
    pub by_job: Vec<JobUsage>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Create a pipeline with its stages, jobs and dependencies, in time linear in jobs +
    /// dependencies and without holding the database for long (a large plan may be written
    /// in several short transactions). It becomes visible, and its jobs claimable, all at
    /// once when the last row is in; if writing fails, nothing of it is left. With an
    /// idempotency key already used by the same spec, returns the existing pipeline and
    /// `false` (waiting for it if it is still being written).
    async fn create_pipeline(&self, new: &NewPipeline, now: Micros) -> StoreResult<(i64, bool)>;

    /// Delete what a crash left of pipelines that were being written (never visible, never
    /// claimable). Run by a server before it serves; returns how many were discarded.
    async fn discard_unfinished_submissions(&self) -> StoreResult<i64>;

    /// Register (or re-register) a worker. Jobs still leased to the same worker id belong
    /// to an earlier run of it that is gone: they are failed as `worker_lost` at once.
    async fn register_worker(&self, worker: &WorkerRegistration, now: Micros) -> StoreResult<()>;
    async fn worker_stopped(&self, worker_id: &str, now: Micros) -> StoreResult<()>;

    /// Lease up to `limit` claimable jobs to the worker.
    async fn claim(
        &self,
        req: &ClaimRequest,
        policy: &LeasePolicy,
        now: Micros,
    ) -> StoreResult<Vec<ClaimedJob>>;

    /// Extend the worker's leases, record progress, and say which jobs it must stop.
    async fn heartbeat(
        &self,
        hb: &Heartbeat,
        policy: &LeasePolicy,
        now: Micros,
    ) -> StoreResult<HeartbeatReply>;

    /// Apply finished attempts. Fenced by token: a report from an attempt that no longer
    /// owns its job is recorded as superseded and changes nothing else.
    async fn report(
        &self,
        reports: &[Report],
        policy: &LeasePolicy,
        now: Micros,
    ) -> StoreResult<Vec<ReportAck>>;

    /// Expire leases, enforce deadlines, close cancelled jobs and finalize pipelines.
    async fn reconcile(&self, policy: &LeasePolicy, now: Micros) -> StoreResult<ReconcileStats>;

    /// After a server restart, give every running lease until `until` so that live
    /// workers can reconnect and heartbeat before the reconciler takes their jobs away.
    async fn grant_startup_grace(&self, until: Micros) -> StoreResult<i64>;

    async fn cancel_pipeline(&self, pipeline_id: i64, now: Micros) -> StoreResult<()>;
    async fn cancel_job(&self, job_id: i64, now: Micros) -> StoreResult<()>;
    /// Put dead jobs back in line (and their skipped dependents back to waiting); also
    /// closes the stage breakers involved and reopens a finished pipeline.
    async fn retry_dead(&self, target: &RetryTarget, now: Micros) -> StoreResult<i64>;

    async fn pipeline(&self, id: i64) -> StoreResult<Option<Pipeline>>;
    /// The newest pipelines first.
    async fn pipelines(&self, limit: i64) -> StoreResult<Vec<Pipeline>> {
        self.list_pipelines(&PipelineFilter {
            limit,
            ..Default::default()
        })
        .await
    }
    /// Pipelines newest first, by state and before an id (keyset pagination).
    async fn list_pipelines(&self, filter: &PipelineFilter) -> StoreResult<Vec<Pipeline>>;
    async fn stages(&self, pipeline_id: i64) -> StoreResult<Vec<StageSummary>>;
    async fn jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>>;
    async fn job(&self, id: i64) -> StoreResult<Option<Job>>;
    async fn attempts(&self, job_id: i64) -> StoreResult<Vec<Attempt>>;
    /// The first `limit` upstream jobs of a job: those it waits for one by one, then those
    /// of the stages it waits for as a whole.
    async fn dependencies(&self, job_id: i64, limit: i64) -> StoreResult<Vec<Dependency>>;
    /// The keys of the first `limit` unfinished upstream jobs of a job, and how many there
    /// are in all: what a list of waiting jobs says without reading every dependency.
    async fn unfinished_upstream(&self, job_id: i64, limit: i64)
        -> StoreResult<(Vec<String>, i64)>;
    async fn artifacts(&self, job_id: i64) -> StoreResult<Vec<Artifact>>;
    /// Which of these blob digests some artifact names (blob garbage collection keeps
    /// those).
    async fn referenced_blobs(
        &self,
        digests: &[String],
    ) -> StoreResult<std::collections::BTreeSet<String>>;
    async fn events(
        &self,
        pipeline_id: Option<i64>,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>>;
    /// The newest `limit` events of one job (its state changes and progress steps), oldest
    /// first.
    async fn job_events(&self, job_id: i64, limit: i64) -> StoreResult<Vec<Event>>;
    /// The id after which the newest `back` events (of one pipeline, or of all) begin: a
    /// stream started there replays just those. 0 when there are no more than `back`.
    async fn event_id_back(&self, pipeline_id: Option<i64>, back: i64) -> StoreResult<i64>;
    async fn workers(&self) -> StoreResult<Vec<WorkerRow>>;
    /// Delete at most `limit` events of pipelines that finished before `before` (a running
    /// pipeline, or one finished since, keeps its whole history); returns how many went.
    async fn prune_events(&self, before: Micros, limit: i64) -> StoreResult<i64>;
    /// Every job of a pipeline in id order, narrowly (no payloads or results): cheap enough
    /// for a 10,000-job pipeline's grid.
    async fn job_cells(&self, pipeline_id: i64) -> StoreResult<Vec<JobCell>>;
    /// The pipeline's jobs counted per stage, model, template and state, in the order of
    /// each group's first job: a grid whose size follows the apps, not the jobs.
    async fn job_groups(&self, pipeline_id: i64) -> StoreResult<Vec<JobGroup>>;
    /// The breakers of the stages of running pipelines, open ones and those with failures
    /// first; at most `limit`.
    async fn breakers(&self, limit: i64) -> StoreResult<Vec<BreakerRow>>;
    /// The earliest time a backing-off job becomes claimable, so a long-poll can sleep
    /// exactly until then.
    async fn next_retry_at(&self) -> StoreResult<Option<Micros>>;

    /// Whether a job of one of these kinds may be claimable now: a read, so that idle
    /// long-polls woken by a change elsewhere do not each write a claim. May say yes when
    /// a claim would still find nothing (its stage is full); never no when one would not.
    async fn has_claimable(&self, kinds: &[String], now: Micros) -> StoreResult<bool>;

    /// Record an LLM call against its job and pipeline (a paid call is recorded even when
    /// its attempt has lost the job since: the money was spent). Idempotent by call id:
    /// returns whether this call was new.
    async fn record_llm_call(&self, call: &LlmCall, now: Micros) -> StoreResult<bool>;
    /// The pipeline's LLM usage: totals, per model, per job, and its budget.
    async fn pipeline_usage(&self, pipeline_id: i64) -> StoreResult<PipelineUsage>;
    /// A successful answer stored under `key` (a hash of the request), if any.
    async fn cached_answer(&self, key: &str) -> StoreResult<Option<Value>>;
    /// Store a successful answer; the first one stored under a key wins.
    async fn cache_answer(&self, key: &str, answer: &Value, now: Micros) -> StoreResult<()>;

    /// Keep a new API token by its hash; returns its id.
    async fn create_token(
        &self,
        name: &str,
        hash: &str,
        scopes: &[crate::domain::Scope],
        now: Micros,
    ) -> StoreResult<i64>;
    /// The token with this hash, revoked or not.
    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>>;
    /// Every token, newest first.
    async fn tokens(&self) -> StoreResult<Vec<TokenRow>>;
    /// Revoke a token; revoking it again keeps the first time. `NotFound` if there is none.
    async fn revoke_token(&self, id: i64, now: Micros) -> StoreResult<()>;
    /// Limit the job kinds a token's workers may claim. `NotFound` if there is no token.
    async fn limit_token_kinds(&self, id: i64, kinds: &[String]) -> StoreResult<()>;
    /// The token that owns `worker_id`: `token_id` if the id had no owner yet, or its owner
    /// was a revoked token. A token owns at most `policy.per_token` ids: at that many, the
    /// ids of its workers that are stopped or silent since `policy.idle_before` (or that
    /// never registered and were bound before it), holding no running job, are given up
    /// first; [`WorkerBinding::Full`] if none is.
    async fn bind_worker(
        &self,
        worker_id: &str,
        token_id: i64,
        policy: &WorkerIdPolicy,
        now: Micros,
    ) -> StoreResult<WorkerBinding>;
}
