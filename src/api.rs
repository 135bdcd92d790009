//! The HTTP API's request and response bodies, shared by the server and its clients
//! (the worker and the CLI). Errors carry a stable, machine-readable `code`.

use crate::store::{ClaimedJob, Event, Heartbeat, Pipeline, Report, ReportAck, StageSummary};
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
            ErrorCode::Internal => "internal",
        }
    }
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
