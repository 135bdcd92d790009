//! HTTP handlers. Each is a thin translation between JSON and a [`Store`] call.

use super::{answers, auth, AppState};
use crate::api::*;
use crate::domain::{now_micros, JobState, Micros, MICROS_PER_MS};
use crate::explain::{self, Explanation};
use crate::generation::limiter::Wait;
use crate::store::{JobFilter, NewPipeline, RetryTarget, StoreError, WorkerRegistration};
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::time::Duration;

const MAX_LONG_POLL: Duration = Duration::from_secs(30);
/// Request bodies: most routes take small JSON; these take more.
const SMALL_LIMIT: usize = 64 * 1024;
const SPEC_LIMIT: usize = 16 * 1024 * 1024;
const HEARTBEAT_LIMIT: usize = 16 * 1024 * 1024;
const CALL_LIMIT: usize = 16 * 1024 * 1024;
/// A worker's batches are cut at 8 MiB of JSON; reports also carry results.
const REPORT_LIMIT: usize = 64 * 1024 * 1024;
/// Upstream jobs an explanation lists; a fan-in over thousands is summed up by the count.
const EXPLAINED_DEPENDENCIES: i64 = 200;

pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/whoami", get(whoami))
        .route(
            "/session",
            post(super::auth::login).delete(super::auth::logout),
        )
        .route(
            "/pipelines",
            get(list_pipelines).post(axum::handler::Handler::layer(
                submit,
                DefaultBodyLimit::max(SPEC_LIMIT),
            )),
        )
        .route("/pipelines/{id}", get(get_pipeline))
        .route("/pipelines/{id}/cancel", post(cancel_pipeline))
        .route("/pipelines/{id}/retry", post(retry_pipeline))
        .route("/pipelines/{id}/events", get(pipeline_events))
        .route("/stream", get(super::stream::stream))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(explain_job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/jobs/{id}/artifacts/{name}", get(job_artifact))
        .route("/workers", get(list_workers))
        .route("/workers/register", post(register_worker))
        .route("/workers/{id}/stopped", post(worker_stopped))
        .route("/workers/claim", post(claim))
        .route(
            "/workers/heartbeat",
            post(heartbeat).layer(DefaultBodyLimit::max(HEARTBEAT_LIMIT)),
        )
        .route(
            "/workers/report",
            post(report).layer(DefaultBodyLimit::max(REPORT_LIMIT)),
        )
        .route("/pipelines/{id}/usage", get(pipeline_usage))
        .route("/pipelines/{id}/grid", get(pipeline_grid))
        .route("/pipelines/{id}/waiting", get(pipeline_waiting))
        .route("/breakers", get(list_breakers))
        .route("/pipelines/{id}/results", get(pipeline_results))
        .route("/pipelines/{id}/compare", get(pipeline_compare))
        .route("/pipelines/{id}/export/{file}", get(pipeline_export))
        .route("/llm/acquire", post(llm_acquire))
        .route(
            "/llm/calls",
            post(llm_call).layer(DefaultBodyLimit::max(CALL_LIMIT)),
        )
        .route("/llm/limits", get(llm_limits))
        .route(
            "/llm/answers",
            post(lookup_answer).layer(DefaultBodyLimit::max(CALL_LIMIT)),
        )
        .layer(DefaultBodyLimit::max(SMALL_LIMIT))
        .route(
            "/blobs/{digest}",
            put(put_blob)
                .get(get_blob)
                .head(head_blob)
                .layer(DefaultBodyLimit::disable()),
        );
    Router::new()
        .nest(API_PREFIX, api)
        .merge(super::dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.hosts.clone(),
            super::guard::guard,
        ))
        .with_state(state)
}

/// The token a request carried and what it may do; `auth: false` when the server does
/// not require tokens.
async fn whoami(
    State(state): State<AppState>,
    principal: Option<axum::Extension<super::auth::Principal>>,
) -> Json<WhoAmI> {
    Json(WhoAmI {
        auth: state.auth.required(),
        token_id: principal.as_ref().map(|p| p.token_id),
        name: principal.as_ref().map(|p| p.name.clone()),
        scopes: principal.map(|p| p.0.scopes).unwrap_or_default(),
    })
}

/// Extractors whose rejections answer in the API's error format (`invalid_request`).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct AppJson<T>(T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
struct AppPath<T>(T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
struct AppQuery<T>(T);

macro_rules! invalid_request_from {
    ($($rejection:ty),+) => {$(
        impl From<$rejection> for ApiError {
            fn from(r: $rejection) -> Self {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    return ApiError::new(
                        r.status(),
                        ErrorCode::TooLarge,
                        "the request body is larger than this route takes (specs 16 MiB, \
                         heartbeats, model calls and answer lookups 16 MiB, reports 64 MiB, \
                         other requests 64 KiB); split the work into smaller requests",
                    );
                }
                ApiError::new(r.status(), ErrorCode::InvalidRequest, r.body_text())
            }
        }
    )+};
}
invalid_request_from!(JsonRejection, PathRejection, QueryRejection);

/// An API error: an HTTP status and a stable code.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{} not found", what.into()),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) if what.starts_with("worker") => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::UnknownWorker,
                format!("{what} is not registered; register it first"),
            ),
            StoreError::NotFound(what) => ApiError::not_found(what),
            e @ StoreError::IdempotencyConflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyConflict,
                e.to_string(),
            ),
            StoreError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    other.to_string(),
                )
            }
        }
    }
}

/// A task of the server's own that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A `?state=` filter: absent or empty means any state.
fn parse_state<T>(state: Option<&str>) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    state
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<T>())
        .transpose()
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                e.to_string(),
            )
        })
}

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": s.started_at,
    }))
}

/// A submitted spec, read and planned; errors name the file, line and field.
/// What a submitted spec may use on this server.
struct Policy {
    allowed_kinds: std::sync::Arc<Vec<String>>,
    /// The submitting token's name and the kinds it is limited to, if it is.
    token_kinds: Option<(String, Vec<String>)>,
    providers: std::sync::Arc<Vec<String>>,
    planner: crate::planner::Planner,
}

fn plan_submission(req: SubmitRequest, policy: &Policy) -> Result<NewPipeline, ApiError> {
    let allowed = &policy.allowed_kinds;
    let file = req.file_name.as_deref().unwrap_or("spec.toml");
    let invalid =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidSpec, message);
    let spec = crate::spec::parse(file, &req.spec).map_err(|e| match e {
        crate::spec::SpecError::ProviderInSpec { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ProviderInSpec,
            e.to_string(),
        ),
        e => invalid(e.to_string()),
    })?;
    if let Some(stage) = spec.stages.iter().find(|s| !allowed.contains(&s.kind)) {
        let why = if crate::kinds::PROGRAM_KINDS.contains(&stage.kind.as_str()) {
            " (it runs a program the spec chooses, as the worker's user)"
        } else {
            ""
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::KindNotAllowed,
            format!(
                "{file}: stage `{}` uses kind `{}`, which this server does not allow{why}; \
                 allowed here: {}. An admin allows it with `assay server --allow-kinds …`",
                stage.name,
                stage.kind,
                allowed.join(", ")
            ),
        ));
    }
    if let Some((token, granted)) = &policy.token_kinds {
        if let Some(stage) = spec.stages.iter().find(|s| !granted.contains(&s.kind)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::KindNotAllowed,
                format!(
                    "{file}: stage `{}` uses kind `{}`, which token `{token}` may not submit; \
                     it may submit {}. An admin makes a token with more kinds with \
                     `assay token create --scope submit --kinds …`",
                    stage.name,
                    stage.kind,
                    granted.join(", ")
                ),
            ));
        }
    }
    let plan = policy
        .planner
        .plan(file, &spec, &req.spec)
        .map_err(|e| invalid(format!("{file}: {e}")))?;
    // Checked on the plan: a name may be templated (`provider = "{{ provider }}"`).
    let mut checked = std::collections::HashSet::new();
    for job in plan.jobs.iter().filter(|j| j.kind == "generate") {
        let name = crate::kinds::generate::provider_name(&job.params).unwrap_or_default();
        if !checked.insert(name.clone()) || policy.providers.contains(&name) {
            continue;
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnknownProvider,
            format!(
                "{file}: stage `{}` picks provider `{name}`, which this server does not know; \
                 known here: {}. Providers are named, with their base_url and api_key_env, \
                 in the providers file given to `assay server --providers` and to each \
                 worker's `--providers` (`assay run --providers` for both)",
                job.stage,
                policy.providers.join(", ")
            ),
        ));
    }
    Ok(NewPipeline {
        idempotency_key: req.idempotency_key,
        spec_hash: hex::encode(Sha256::digest(req.spec.as_bytes())),
        source: req.spec,
        spec,
        plan,
    })
}

/// A plan this large has freed enough memory that it is worth handing back to the system.
const LARGE_PLAN: usize = 10_000;

async fn submit(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<SubmitRequest>,
) -> Result<Response, ApiError> {
    // Reading and planning a study-sized spec is CPU work: off the async threads.
    let policy = Policy {
        allowed_kinds: s.allowed_kinds.clone(),
        token_kinds: caller
            .as_ref()
            .and_then(|p| Some((p.name.clone(), p.kinds.clone()?))),
        providers: s.providers.clone(),
        planner: s.planner.clone(),
    };
    // The slot is held until the plan is written and freed: a plan of a million jobs
    // takes a gigabyte or two, and at most PLANS_AT_ONCE are in memory at once.
    let slot = s.planner.slot().await;
    let new = tokio::task::spawn_blocking(move || plan_submission(req, &policy)).await??;
    // Written by a task of its own: a client that hangs up cannot cut a large pipeline's
    // writing short (it would be discarded, and the retry would start over).
    let store = s.store.clone();
    let (pipeline_id, created) = tokio::spawn(async move {
        let created = store.create_pipeline(&new, now_micros()).await;
        // Freeing a plan of 100,000 jobs takes a while: not on an async thread.
        tokio::task::spawn_blocking(move || {
            let large = new.plan.jobs.len() >= LARGE_PLAN;
            drop(new);
            if large {
                crate::planner::give_back_freed_memory();
            }
            drop(slot);
        });
        created
    })
    .await??;
    if created {
        s.signals.work_changed();
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(SubmitResponse {
            pipeline_id,
            created,
        }),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    before: Option<i64>,
}

async fn list_pipelines(
    State(s): State<AppState>,
    AppQuery(q): AppQuery<ListQuery>,
) -> ApiResult<Vec<crate::store::Pipeline>> {
    let state = parse_state::<crate::domain::PipelineState>(q.state.as_deref())?;
    let filter = crate::store::PipelineFilter {
        state,
        before_id: q.before,
        limit: q.limit.unwrap_or(50).clamp(1, 1_000),
    };
    Ok(Json(s.store.list_pipelines(&filter).await?))
}

/// The pipeline, or the API's `not_found` for it.
async fn pipeline_or_404(s: &AppState, id: i64) -> Result<crate::store::Pipeline, ApiError> {
    s.store
        .pipeline(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pipeline {id}")))
}

async fn get_pipeline(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<PipelineDetail> {
    let pipeline = pipeline_or_404(&s, id).await?;
    let stages = s.store.stages(id).await?;
    Ok(Json(PipelineDetail { pipeline, stages }))
}

/// The pipeline as the dashboard's grid draws it (see `crate::grid`).
async fn pipeline_grid(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<crate::grid::Grid> {
    let pipeline = pipeline_or_404(&s, id).await?;
    let stages: Vec<String> = s
        .store
        .stages(id)
        .await?
        .into_iter()
        .map(|st| st.name)
        .collect();
    // Read before the jobs: a change made in between is both shown and streamed again,
    // which is harmless; none is lost.
    let last_event_id = s.store.event_id_back(Some(id), 0).await?;
    // Too many jobs to place one by one: the database counts them per app and stage.
    let mut grid = if pipeline.counts.total() > crate::grid::MAX_CHIPS as i64 {
        crate::grid::from_groups(&s.store.job_groups(id).await?, &stages)
    } else {
        crate::grid::build(&s.store.job_cells(id).await?, &stages)
    };
    grid.last_event_id = last_event_id;
    Ok(Json(grid))
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// A page of the pipeline's jobs that have not started, each with why it waits.
async fn pipeline_waiting(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
    AppQuery(q): AppQuery<PageQuery>,
) -> ApiResult<Vec<WaitingJob>> {
    pipeline_or_404(&s, id).await?;
    let jobs = s
        .store
        .jobs(&JobFilter {
            pipeline_id: Some(id),
            pending: true,
            after_id: q.after,
            limit: Some(q.limit.unwrap_or(50).clamp(1, 500)),
            ..Default::default()
        })
        .await?;
    let stages = s.store.stages(id).await?;
    let workers = s.store.workers().await?;
    let now = now_micros();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        // A waiting job names its first unfinished upstream jobs and counts the rest: a
        // fan-in over 10,000 jobs costs one short read, not 10,000 rows.
        let upstream = if job.state == JobState::Waiting {
            s.store.unfinished_upstream(job.id, 3).await?
        } else {
            Default::default()
        };
        let stage = stages.iter().find(|st| st.name == job.stage);
        let wait = explain::wait_reason(&job, stage, upstream, &workers, s.lease.lease_ms, now);
        let why = explain::summarize(&job, wait.as_ref(), &[], now);
        out.push(WaitingJob {
            job_id: job.id,
            key: job.key,
            stage: job.stage,
            kind: job.kind,
            state: job.state,
            wait,
            why,
        });
    }
    Ok(Json(out))
}

async fn cancel_pipeline(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<PipelineDetail> {
    s.store.cancel_pipeline(id, now_micros()).await?;
    s.signals.work_changed();
    get_pipeline(State(s), AppPath(id)).await
}

async fn retry_pipeline(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<RetryResponse> {
    let retried = s
        .store
        .retry_dead(&RetryTarget::Pipeline(id), now_micros())
        .await?;
    s.signals.work_changed();
    Ok(Json(RetryResponse { retried }))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    wait_ms: u64,
}

async fn pipeline_events(
    State(s): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<i64>,
    AppQuery(q): AppQuery<EventsQuery>,
) -> ApiResult<EventsResponse> {
    pipeline_or_404(&s, id).await?;
    let limit = q.limit.unwrap_or(1_000).clamp(1, 10_000);
    let _slot = if q.wait_ms > 0 {
        Some(s.long_polls.enter(caller_key(&caller))?)
    } else {
        None
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(q.wait_ms).min(MAX_LONG_POLL);
    let mut changes = s.signals.events.subscribe();
    loop {
        changes.borrow_and_update();
        let events = s.store.events(Some(id), q.after, limit).await?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            let last_id = events.last().map(|e| e.id).unwrap_or(q.after);
            return Ok(Json(EventsResponse { events, last_id }));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = s.shutdown.cancelled() => return Ok(Json(EventsResponse { events: vec![], last_id: q.after })),
        }
    }
}

#[derive(Deserialize)]
struct JobsQuery {
    #[serde(default)]
    pipeline: Option<i64>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    /// Only jobs that have not started (waiting, available, retrying).
    #[serde(default)]
    pending: bool,
    /// Only one app's jobs: those whose item names this model and template.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    template: Option<String>,
}

async fn list_jobs(
    State(s): State<AppState>,
    AppQuery(q): AppQuery<JobsQuery>,
) -> ApiResult<Vec<crate::store::Job>> {
    let state = parse_state::<JobState>(q.state.as_deref())?;
    let filter = JobFilter {
        pipeline_id: q.pipeline,
        stage: q.stage,
        state,
        after_id: q.after,
        limit: Some(q.limit.unwrap_or(500).clamp(1, 10_000)),
        pending: q.pending,
        model: q.model,
        template: q.template,
    };
    Ok(Json(s.store.jobs(&filter).await?))
}

async fn explain_job(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<Explanation> {
    let job = s
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    let stages = s.store.stages(job.pipeline_id).await?;
    let stage = stages.iter().find(|st| st.name == job.stage);
    let attempts = s.store.attempts(id).await?;
    let dependencies = s.store.dependencies(id, EXPLAINED_DEPENDENCIES).await?;
    let artifacts = s.store.artifacts(id).await?;
    let workers = s.store.workers().await?;
    let now = now_micros();
    let upstream = if job.state == JobState::Waiting {
        s.store
            .unfinished_upstream(id, EXPLAINED_DEPENDENCIES)
            .await?
    } else {
        Default::default()
    };
    let wait = explain::wait_reason(&job, stage, upstream, &workers, s.lease.lease_ms, now);
    let summary = explain::summarize(&job, wait.as_ref(), &attempts, now);
    let model = job.params.get("model").and_then(|m| m.as_str());
    let provider_limits = match model {
        Some(model) if job.kind == "generate" => s
            .llm
            .states(now)
            .into_iter()
            .filter(|l| l.model == model)
            .collect(),
        _ => Vec::new(),
    };
    // Only jobs that call models (generate, and the `ai` judge) have usage; others skip
    // the aggregate.
    let llm_usage = if job.kind == "generate" || job.kind == "ai" {
        s.store
            .pipeline_usage(job.pipeline_id)
            .await?
            .by_job
            .into_iter()
            .find(|u| u.job_id == job.id)
            .map(|u| u.totals)
    } else {
        None
    };
    Ok(Json(Explanation {
        job,
        summary,
        wait,
        attempts,
        dependencies,
        artifacts,
        provider_limits,
        llm_usage,
    }))
}

/// A job's timeline: its newest 500 state changes and progress steps, oldest first.
async fn job_events(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<Vec<crate::store::Event>> {
    if s.store.job(id).await?.is_none() {
        return Err(ApiError::not_found(format!("job {id}")));
    }
    Ok(Json(s.store.job_events(id, 500).await?))
}

async fn cancel_job(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<crate::store::Job> {
    s.store.cancel_job(id, now_micros()).await?;
    s.signals.events_changed();
    Ok(Json(
        s.store
            .job(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("job {id}")))?,
    ))
}

async fn retry_job(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<RetryResponse> {
    let retried = s
        .store
        .retry_dead(&RetryTarget::Job(id), now_micros())
        .await?;
    s.signals.work_changed();
    Ok(Json(RetryResponse { retried }))
}

async fn job_artifact(
    State(s): State<AppState>,
    AppPath((id, name)): AppPath<(i64, String)>,
) -> Result<Response, ApiError> {
    let artifacts = s.store.artifacts(id).await?;
    // The newest attempt's artifact of that name.
    let found = artifacts
        .iter()
        .rev()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::not_found(format!("artifact `{name}` of job {id}")))?;
    stream_blob(&s, &found.sha256).await
}

async fn stream_blob(s: &AppState, digest: &str) -> Result<Response, ApiError> {
    let path = s.blobs.path(digest).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.to_string(),
        )
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("blob {digest}")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ETAG, format!("\"{digest}\"")),
        ],
        body,
    )
        .into_response())
}

async fn get_blob(
    State(s): State<AppState>,
    AppPath(digest): AppPath<String>,
) -> Result<Response, ApiError> {
    stream_blob(&s, &digest).await
}

async fn head_blob(
    State(s): State<AppState>,
    AppPath(digest): AppPath<String>,
) -> Result<Response, ApiError> {
    match s.blobs.contains(&digest).await {
        Ok(Some(len)) => Ok(([(header::CONTENT_LENGTH, len.to_string())], ()).into_response()),
        Ok(None) => Err(ApiError::not_found(format!("blob {digest}"))),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.to_string(),
        )),
    }
}

async fn put_blob(
    State(s): State<AppState>,
    AppPath(digest): AppPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    use super::blobs::BlobError;
    match s.blobs.put(&digest, body.into_data_stream()).await {
        Ok(size) => Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({"sha256": digest, "size": size})),
        )
            .into_response()),
        Err(e @ BlobError::HashMismatch { .. }) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::HashMismatch,
            e.to_string(),
        )),
        Err(e @ BlobError::BadDigest(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.to_string(),
        )),
        Err(e @ BlobError::TooLarge { .. }) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            e.to_string(),
        )),
        Err(e @ BlobError::QuotaExceeded { .. }) => Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::TooLarge,
            e.to_string(),
        )),
        Err(e @ BlobError::Interrupted(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )),
    }
}

async fn list_workers(State(s): State<AppState>) -> ApiResult<Vec<crate::store::WorkerRow>> {
    Ok(Json(s.store.workers().await?))
}

/// The circuit breakers of running pipelines' stages (open ones first).
async fn list_breakers(State(s): State<AppState>) -> ApiResult<Vec<crate::store::BreakerRow>> {
    Ok(Json(s.store.breakers(200).await?))
}

async fn register_worker(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(w): AppJson<WorkerRegistration>,
) -> ApiResult<serde_json::Value> {
    if w.id.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "worker id is empty",
        ));
    }
    let fine = |c: char| c.is_ascii_alphanumeric() || "._:-".contains(c);
    if w.id.len() > 128 || !w.id.chars().all(fine) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!(
                "worker id `{}` may only hold letters, digits and `._:-`, at most 128 of them",
                w.id.escape_debug()
            ),
        ));
    }
    must_own(&s, &caller, &w.id).await?;
    refuse_kinds_not_granted(&caller, &w.kinds)?;
    s.store.register_worker(&w, now_micros()).await?;
    Ok(Json(
        serde_json::json!({"registered": w.id, "heartbeat_ms": heartbeat_ms(&s)}),
    ))
}

async fn worker_stopped(
    State(s): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<serde_json::Value> {
    must_own(&s, &caller, &id).await?;
    s.store.worker_stopped(&id, now_micros()).await?;
    Ok(Json(serde_json::json!({"stopped": id})))
}

type Caller = Option<axum::Extension<super::auth::Principal>>;

/// A token limited to some kinds claims and registers for only those: a worker that asks
/// for more is refused, naming what it may have.
fn refuse_kinds_not_granted(caller: &Caller, kinds: &[String]) -> Result<(), ApiError> {
    let Some(granted) = caller.as_ref().and_then(|p| p.kinds.as_ref()) else {
        return Ok(());
    };
    let refused: Vec<&str> = kinds
        .iter()
        .filter(|k| !granted.contains(k))
        .map(String::as_str)
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!(
            "this token may not claim {} jobs; it may claim {} (start the worker with --kinds {}, or make a token with `assay token create --kinds`)",
            refused.join(", "),
            granted.join(", "),
            granted.join(",")
        ),
    ))
}

/// The client a request counts against for [`super::caps`]: its token.
pub(crate) fn caller_key(caller: &Caller) -> Option<i64> {
    caller.as_ref().map(|p| p.token_id)
}

fn not_holder(job: i64) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!("job {job} is not held by a worker of this token"),
    )
}

/// Refuse a request that names a worker id another token owns, or a new one past the
/// token's share.
async fn must_own(s: &AppState, caller: &Caller, worker_id: &str) -> Result<(), ApiError> {
    match s.auth.owns_worker(s, caller.as_deref(), worker_id).await? {
        auth::Ownership::Owned => Ok(()),
        auth::Ownership::OtherToken => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "worker id `{worker_id}` belongs to another token; a worker acts only under an \
                 id its own token registered first (pick another --id)"
            ),
        )),
        auth::Ownership::Full { owned, most } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::TooManyWorkerIds,
            format!(
                "token `{}` owns {owned} worker ids already, the most one token may \
                 (`assay server --worker-ids-per-token`, {most} here), and none of them is \
                 free to give up (a worker's id is, once it stopped or was silent for {} min); \
                 start workers with a fixed --id, or give each machine its own token",
                caller.as_deref().map(|p| p.name.as_str()).unwrap_or("?"),
                auth::WORKER_ID_IDLE.as_secs() / 60
            ),
        )),
    }
}

fn heartbeat_ms(s: &AppState) -> i64 {
    s.lease.heartbeat_ms
}

async fn claim(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<ClaimBody>,
) -> ApiResult<ClaimResponse> {
    must_own(&s, &caller, &body.worker_id).await?;
    refuse_kinds_not_granted(&caller, &body.kinds)?;
    let req = crate::store::ClaimRequest {
        worker_id: body.worker_id,
        kinds: body.kinds,
        limit: body.limit.clamp(0, 1_000),
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(body.wait_ms).min(MAX_LONG_POLL);
    let _slot = s.long_polls.enter(caller_key(&caller))?;
    let mut work = s.signals.work.subscribe();
    let mut first = true;
    loop {
        work.borrow_and_update();
        if s.shutdown.is_cancelled() {
            return Ok(Json(ClaimResponse {
                jobs: vec![],
                heartbeat_ms: heartbeat_ms(&s),
            }));
        }
        let now = now_micros();
        // The first try writes (it marks the worker seen); a wake-up only writes when a
        // read says there may be something, so idle long-polls stay reads.
        let jobs = if first || s.store.has_claimable(&req.kinds, now).await? {
            s.store.claim(&req, &s.lease, now).await?
        } else {
            Vec::new()
        };
        first = false;
        if !jobs.is_empty() {
            s.signals.events_changed();
            return Ok(Json(ClaimResponse {
                jobs,
                heartbeat_ms: heartbeat_ms(&s),
            }));
        }
        let now_instant = tokio::time::Instant::now();
        if now_instant >= deadline {
            return Ok(Json(ClaimResponse {
                jobs,
                heartbeat_ms: heartbeat_ms(&s),
            }));
        }
        let wake = match s.store.next_retry_at().await? {
            Some(at) if at > now => deadline.min(now_instant + micros_to_duration(at - now)),
            _ => deadline,
        };
        tokio::select! {
            _ = work.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = s.shutdown.cancelled() => {}
        }
    }
}

fn micros_to_duration(m: Micros) -> Duration {
    Duration::from_micros(m.max(0) as u64) + Duration::from_micros((MICROS_PER_MS / 2) as u64)
}

async fn heartbeat(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(hb): AppJson<HeartbeatBody>,
) -> ApiResult<crate::store::HeartbeatReply> {
    must_own(&s, &caller, &hb.worker_id).await?;
    let reply = s.store.heartbeat(&hb, &s.lease, now_micros()).await?;
    if hb.leases.iter().any(|l| l.progress.is_some()) {
        s.signals.events_changed();
    }
    Ok(Json(reply))
}

async fn report(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<ReportBody>,
) -> Result<Response, ApiError> {
    let workers: std::collections::BTreeSet<&str> =
        body.reports.iter().map(|r| r.worker_id.as_str()).collect();
    for worker in workers {
        must_own(&s, &caller, worker).await?;
    }
    // A result must never point at bytes the server does not have.
    let mut missing = Vec::new();
    for r in &body.reports {
        if let crate::store::ReportOutcome::Completed { artifacts, .. }
        | crate::store::ReportOutcome::Failed { artifacts, .. } = &r.outcome
        {
            for a in artifacts {
                match s.blobs.contains(&a.sha256).await {
                    Ok(Some(_)) => {}
                    _ => missing.push(a.sha256.clone()),
                }
            }
        }
    }
    if !missing.is_empty() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::MissingBlob,
                message: format!("upload these blobs first: {}", missing.join(", ")),
            },
        };
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    let acks = s
        .store
        .report(&body.reports, &s.lease, now_micros())
        .await?;
    s.signals.work_changed();
    Ok(Json(ReportResponse { acks }).into_response())
}

async fn pipeline_usage(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> ApiResult<UsageResponse> {
    let usage = s.store.pipeline_usage(id).await?;
    let budget_reached = usage.budget.and_then(|b| b.reached(&usage.total));
    Ok(Json(UsageResponse {
        usage,
        budget_reached,
    }))
}

/// The longest an acquire waits for a slot on the server before answering.
const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(10);

async fn llm_acquire(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<AcquireBody>,
) -> ApiResult<AcquireResponse> {
    let stop = |code: &str, message: String| {
        Json(AcquireResponse {
            permit: None,
            wait: None,
            retry_in_ms: None,
            stop: Some(CallStop {
                code: code.into(),
                message,
            }),
        })
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(body.wait_ms).min(MAX_ACQUIRE_WAIT);
    loop {
        let job = s
            .store
            .job(body.job_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("job {}", body.job_id)))?;
        let stale = body.attempt.is_some_and(|a| a != job.attempts);
        if let Some(worker) = &job.worker_id {
            // Only the worker that holds the job may take slots for it.
            must_own(&s, &caller, worker).await?;
        } else if s.auth.required() {
            return Err(not_holder(job.id));
        }
        answers::may_call(&job, &body.provider, &body.model)?;
        if job.state != JobState::Running || job.cancel_requested || stale {
            return Ok(stop(
                "not_running",
                format!(
                    "job {} is {}, not running: it may not call a model",
                    job.id, job.state
                ),
            ));
        }
        // Checked before every call: the budget stops new calls, not the ones in flight.
        let usage = s.store.pipeline_usage(job.pipeline_id).await?;
        if let Some(why) = usage.budget.and_then(|b| b.reached(&usage.total)) {
            return Ok(stop("budget_exhausted", why));
        }
        let now = now_micros();
        let wait = match s.llm.try_acquire(
            job.id,
            &body.provider,
            &body.model,
            body.limiter,
            body.hold_ms,
            now,
        ) {
            Ok(permit) => {
                return Ok(Json(AcquireResponse {
                    permit: Some(permit),
                    wait: None,
                    retry_in_ms: None,
                    stop: None,
                }))
            }
            Err(Wait::Stopped { why }) => {
                return Ok(stop(
                    "quota_exhausted",
                    format!("{} at {} is stopped: {why}", body.model, body.provider),
                ))
            }
            Err(wait) => wait,
        };
        let retry_in = match &wait {
            Wait::BackingOff { until } => micros_to_duration(until - now),
            _ => Duration::from_millis(500),
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() || s.shutdown.is_cancelled() {
            return Ok(Json(AcquireResponse {
                permit: None,
                retry_in_ms: Some(retry_in.as_millis() as i64),
                wait: Some(wait),
                stop: None,
            }));
        }
        tokio::select! {
            _ = s.llm.released(retry_in.min(remaining)) => {}
            _ = s.shutdown.cancelled() => {}
        }
    }
}

async fn llm_call(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<CallBody>,
) -> ApiResult<serde_json::Value> {
    let now = now_micros();
    if s.auth.required() {
        // Only the worker that ran the attempt may record its calls (and spend its budget).
        let attempts = s.store.attempts(body.call.job_id).await?;
        let Some(attempt) = attempts.iter().find(|a| a.number == body.call.attempt) else {
            return Err(not_holder(body.call.job_id));
        };
        must_own(&s, &caller, &attempt.worker_id).await?;
    }
    let job = s
        .store
        .job(body.call.job_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {}", body.call.job_id)))?;
    answers::may_call(&job, &body.call.provider, &body.call.model)?;
    // The answer first, then the record, then the slot: a waiting call sees the spending
    // before it gets the slot, and a paid answer is kept before it counts as paid.
    // The cache is written only here, with a call the attempt that holds the job made:
    // nobody can plant an answer for another job's request.
    // The key is the server's, from the request the answer is for: a worker cannot file an
    // answer under another request's key.
    if let Some(a) = &body.answer {
        let key = answers::key(
            &answers::identity(&job, &body.call.provider, &a.request, caller_key(&caller))?,
            &a.request,
        );
        let holds = job.state == JobState::Running && job.attempts == body.call.attempt;
        let allowed = match (holds, job.worker_id.as_deref()) {
            (true, Some(worker)) => {
                s.auth.owns_worker(&s, caller.as_deref(), worker).await? == auth::Ownership::Owned
            }
            _ => false,
        };
        if allowed {
            s.store.cache_answer(&key, &a.answer, now).await?;
        } else {
            tracing::info!(
                job = body.call.job_id,
                attempt = body.call.attempt,
                "an answer from an attempt that does not hold its job is not cached"
            );
        }
    }
    // Idempotent by call id: a retried report neither counts the call twice nor teaches
    // the limiter twice.
    let new = s.store.record_llm_call(&body.call, now).await?;
    if let (true, Some(permit)) = (new, body.permit) {
        s.llm.release(
            body.call.job_id,
            &body.call.provider,
            &body.call.model,
            permit,
            body.outcome.as_ref(),
            now,
        );
    }
    s.signals.events_changed();
    Ok(Json(serde_json::json!({"recorded": new})))
}

async fn llm_limits(
    State(s): State<AppState>,
) -> ApiResult<Vec<crate::server::llm_gate::LimiterState>> {
    Ok(Json(s.llm.states(now_micros())))
}

/// The answer kept for a request of a job, found by the key the server computes, as when
/// it was kept.
async fn lookup_answer(
    State(s): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<AnswerLookup>,
) -> ApiResult<CachedAnswer> {
    let job = s
        .store
        .job(body.job_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {}", body.job_id)))?;
    if let Some(worker) = &job.worker_id {
        must_own(&s, &caller, worker).await?;
    } else if s.auth.required() {
        return Err(not_holder(job.id));
    }
    let key = answers::key(
        &answers::identity(&job, &body.provider, &body.request, caller_key(&caller))?,
        &body.request,
    );
    Ok(Json(CachedAnswer {
        answer: s.store.cached_answer(&key).await?,
    }))
}

#[derive(Deserialize)]
struct ResultsQuery {
    /// One app's whole record (findings and tool runs); without it, every app's summary.
    #[serde(default)]
    app: Option<String>,
    /// A page of the summaries, in app order.
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

/// A pipeline's analysis jobs, all pages of them.
async fn analysis_jobs(s: &AppState, id: i64) -> Result<Vec<crate::store::Job>, ApiError> {
    pipeline_or_404(s, id).await?;
    Ok(crate::exports::analysis_jobs(&*s.store, id).await?)
}

/// One export of a pipeline as a download: `report.html`, `findings.csv`, `models.csv`,
/// `results.json` or `sarif.zip`.
async fn pipeline_export(
    State(s): State<AppState>,
    AppPath((id, file)): AppPath<(i64, String)>,
) -> Result<Response, ApiError> {
    use crate::report::ExportFormat;
    let format = ExportFormat::from_file_name(&file).ok_or_else(|| {
        let known: Vec<&str> = ExportFormat::ALL.iter().map(|f| f.file_name()).collect();
        ApiError::not_found(format!(
            "export `{file}`; the exports are: {}",
            known.join(", ")
        ))
    })?;
    let gathered = crate::exports::gather(&*s.store, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pipeline {id}")))?;
    let internal = |e: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("exporting {file} of pipeline {id}: {e}"),
        )
    };
    // Rendering a large report or zipping many SARIF files is CPU work: off the runtime
    // that serves heartbeats and claims.
    let bytes = tokio::task::spawn_blocking(move || gathered.export(format, now_micros()))
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", format.download_name(id)),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// The per-app results of a pipeline (what `assay results` prints).
async fn pipeline_results(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
    AppQuery(q): AppQuery<ResultsQuery>,
) -> ApiResult<serde_json::Value> {
    let apps = crate::results::build(&analysis_jobs(&s, id).await?);
    match q.app {
        Some(name) => {
            let app = apps
                .into_iter()
                .find(|a| a.app == name)
                .ok_or_else(|| ApiError::not_found(format!("app `{name}` in pipeline {id}")))?;
            Ok(Json(serde_json::to_value(app).expect("results serialize")))
        }
        None => {
            let summaries: Vec<serde_json::Value> = apps
                .iter()
                .skip(q.offset.unwrap_or(0))
                .take(q.limit.unwrap_or(usize::MAX))
                .map(|a| {
                    let mut v = serde_json::to_value(a).expect("results serialize");
                    let obj = v.as_object_mut().expect("an object");
                    obj.remove("findings");
                    obj.remove("tools");
                    v
                })
                .collect();
            Ok(Json(serde_json::Value::Array(summaries)))
        }
    }
}

#[derive(Deserialize)]
struct CompareQuery {
    /// An earlier run to compare with (what got better, what got worse).
    #[serde(default)]
    with: Option<i64>,
    /// How many apps' changes to list, worst first (default 100; `apps_total` says how
    /// many there are).
    #[serde(default)]
    changes: Option<usize>,
}

/// The models of a pipeline ranked on security, requirements, performance and cost; with
/// `?with=EARLIER`, also how each model and app changed since that run.
async fn pipeline_compare(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
    AppQuery(q): AppQuery<CompareQuery>,
) -> ApiResult<serde_json::Value> {
    let apps = crate::results::build(&analysis_jobs(&s, id).await?);
    let models = crate::results::compare(&apps);
    let templates: std::collections::BTreeSet<&str> =
        apps.iter().filter_map(|a| a.template.as_deref()).collect();
    let usage = s.store.pipeline_usage(id).await?;
    let mut out = serde_json::json!({
        "pipeline_id": id,
        "models": models,
        "did_not_run_penalty": crate::ranking::DID_NOT_RUN_PENALTY,
        "templates": templates,
        // Per model, what generating cost; the judge's calls are not the judged model's.
        "usage": usage
            .by_model
            .iter()
            .filter(|u| !crate::report::is_judge(u))
            .collect::<Vec<_>>(),
    });
    if let Some(other) = q.with {
        let (this, earlier) = (
            s.store.pipeline(id).await?.expect("checked above"),
            s.store
                .pipeline(other)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("pipeline {other}")))?,
        );
        let before = crate::results::build(&analysis_jobs(&s, other).await?);
        let mut changes = crate::results::diff_runs(&before, &apps);
        let apps_total = changes.len();
        changes.truncate(q.changes.unwrap_or(100));
        out["baseline"] = serde_json::json!({
            "pipeline_id": other,
            "same_spec": this.spec_hash == earlier.spec_hash,
            "models": crate::results::compare(&before),
            "apps": changes,
            "apps_total": apps_total,
        });
    }
    Ok(Json(out))
}
