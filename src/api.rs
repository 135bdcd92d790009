//! The HTTP API's request and response bodies, shared by the server and its clients
//! (the worker and the CLI). Errors carry a stable, machine-readable `code`.

use crate::generation::limiter::{CallOutcome, LimiterConfig, Wait};
use crate::store::{
    ClaimedJob, Event, Heartbeat, LlmCall, Pipeline, PipelineUsage, Report, ReportAck, StageSummary,
};
use serde::{Deserialize, Serialize};

pub const API_PREFIX: &str = "/api/v1";

/// Stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidSpec,
    InvalidRequest,
    IdempotencyConflict,
    NotFound,
    UnknownWorker,
    HashMismatch,
    MissingBlob,
    ShuttingDown,
    /// The request collides with work in progress (e.g. the same idempotency key is still
    /// being written); retrying later can succeed.
    Conflict,
    /// No token, or one that is unknown or revoked.
    Unauthorized,
    /// The token is valid but its scopes do not allow this.
    Forbidden,
    /// The request's Host or Origin is not this server's.
    ForeignOrigin,
    /// The spec uses a job kind this server does not allow.
    KindNotAllowed,
    /// The spec sets a model provider's URL or key variable; it may only pick a name.
    ProviderInSpec,
    /// The spec picks a model provider this server does not know.
    UnknownProvider,
    /// The request body (or an upload) is over its limit.
    TooLarge,
    /// The client holds as many long-polls or streams as it may.
    TooManyRequests,
    /// The token owns as many worker ids as it may, and none is free to give up.
    TooManyWorkerIds,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidSpec => "invalid_spec",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownWorker => "unknown_worker",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::MissingBlob => "missing_blob",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ForeignOrigin => "foreign_origin",
            ErrorCode::KindNotAllowed => "kind_not_allowed",
            ErrorCode::ProviderInSpec => "provider_in_spec",
            ErrorCode::UnknownProvider => "unknown_provider",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::TooManyWorkerIds => "too_many_worker_ids",
            ErrorCode::Internal => "internal",
        }
    }
}

/// `GET /whoami`: what the request's token may do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhoAmI {
    /// Whether this server requires tokens at all.
    pub auth: bool,
    pub token_id: Option<i64>,
    pub name: Option<String>,
    pub scopes: Vec<crate::domain::Scope>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The spec file's TOML text.
    pub spec: String,
    /// Shown in error messages; defaults to `spec.toml`.
    #[serde(default)]
    pub file_name: Option<String>,
    /// Submitting again with the same key returns the same pipeline.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub pipeline_id: i64,
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineDetail {
    pub pipeline: Pipeline,
    pub stages: Vec<StageSummary>,
}

/// A job of a pipeline that has not started, and why (`GET /pipelines/{id}/waiting`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitingJob {
    pub job_id: i64,
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub state: crate::domain::JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<crate::domain::WaitReason>,
    /// The reason in words, as `assay explain` says it.
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimBody {
    pub worker_id: String,
    pub kinds: Vec<String>,
    pub limit: i64,
    /// Long-poll: wait up to this long for work before answering with none.
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub jobs: Vec<ClaimedJob>,
    /// How often the worker must heartbeat its leases.
    pub heartbeat_ms: i64,
}

pub type HeartbeatBody = Heartbeat;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportBody {
    pub reports: Vec<Report>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportResponse {
    pub acks: Vec<ReportAck>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsResponse {
    pub events: Vec<Event>,
    /// Pass as `after` to continue; unchanged when no events came.
    pub last_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryResponse {
    pub retried: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingBlobs {
    pub missing: Vec<String>,
}

/// Ask for a slot to call `model` at `provider` on behalf of a running job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcquireBody {
    pub job_id: i64,
    /// The attempt asking: an attempt that no longer owns its job gets no slot.
    #[serde(default)]
    pub attempt: Option<i64>,
    pub provider: String,
    pub model: String,
    /// How the model's limiter starts, the first time the server sees the model.
    #[serde(default)]
    pub limiter: Option<LimiterConfig>,
    /// The longest the call can take; the slot is reclaimed after that.
    pub hold_ms: i64,
    /// Long-poll: wait up to this long for a slot before answering with the reason.
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AcquireResponse {
    /// Granted: give it back with the call's record.
    #[serde(default)]
    pub permit: Option<u64>,
    /// Not yet: why, and when to ask again.
    #[serde(default)]
    pub wait: Option<Wait>,
    #[serde(default)]
    pub retry_in_ms: Option<i64>,
    /// Never for this job: no call may be made (budget reached, quota exhausted, the job
    /// is no longer running).
    #[serde(default)]
    pub stop: Option<CallStop>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallStop {
    /// `budget_exhausted`, `quota_exhausted` or `not_running`.
    pub code: String,
    pub message: String,
}

/// A finished call: recorded for accounting, and its permit (if any) given back with the
/// outcome the limiter learns from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallBody {
    pub call: LlmCall,
    #[serde(default)]
    pub permit: Option<u64>,
    #[serde(default)]
    pub outcome: Option<CallOutcome>,
    /// A successful answer to keep in the response cache, stored before the call is
    /// recorded: once the call counts as paid, its answer is never lost.
    #[serde(default)]
    pub answer: Option<AnswerToCache>,
}

/// A successful answer and the request it answers. The server files it under the key it
/// computes from that request and the job's provider; a worker cannot name the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerToCache {
    pub request: serde_json::Value,
    pub answer: serde_json::Value,
}

/// `POST /llm/answers`: is an answer kept for this request of this job?
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerLookup {
    pub job_id: i64,
    /// As in [`AcquireBody::provider`]; only the judge's is taken from here.
    pub provider: String,
    pub request: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageResponse {
    #[serde(flatten)]
    pub usage: PipelineUsage,
    /// Why new calls are refused, once the budget is reached.
    #[serde(default)]
    pub budget_reached: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// `None` when no answer is kept for the request.
    pub answer: Option<serde_json::Value>,
}
