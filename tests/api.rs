//! HTTP API tests: the axum router driven in-process with `oneshot`, over a real SQLite
//! store and blob directory in a fresh temp dir per test.

use assay::api::{ClaimBody, ClaimResponse, ReportBody, SubmitRequest};
use assay::server::blobs::BlobStore;
use assay::server::{app, open_store, AppState, Signals};
use assay::store::{
    ArtifactRef, Heartbeat, HeldLease, LeasePolicy, Report, ReportOutcome, WorkerRegistration,
};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The app over a fresh store; keep the `TempDir` alive for the test's duration.
async fn setup() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState {
        store: open_store(dir.path()).await.unwrap(),
        blobs: BlobStore::open(&dir.path().join("blobs")).unwrap(),
        lease: LeasePolicy::default(),
        signals: Signals::default(),
        shutdown: CancellationToken::new(),
    };
    (dir, app(state))
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
