//! A fake OpenAI-compatible chat-completions server for tests: a real HTTP server on
//! 127.0.0.1 (random port) that answers `POST /v1/chat/completions` (and
//! `/chat/completions`) from a script, one entry per request, and records every request
//! body and its `Authorization` header.
//!
//! ```ignore
//! let llm = FakeLlm::start(vec![Scripted::Text("not json".into()), Scripted::Json(answer)]).await;
//! // point the client at llm.base_url ("http://127.0.0.1:PORT/v1")
//! assert_eq!(llm.requests().len(), 2);
//! ```
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// 200 with this JSON value (serialized) as the message content.
    Json(Value),
    /// 200 with this text as the message content.
    Text(String),
    /// This status with an OpenAI-shaped error body, and `Retry-After: <secs>` if given.
    Status(u16, Option<u64>),
    /// Never answers (the client has to time out).
    Hang,
    /// Waits, then answers as the inner entry.
    Delay(Duration, Box<Scripted>),
    /// This status and this exact body (`application/json`), for malformed envelopes.
    Raw(u16, String),
    /// 200 with this content and this `finish_reason` (e.g. `"length"`).
    Finish(String, String),
}

impl Scripted {
    pub fn text(s: impl Into<String>) -> Self {
        Scripted::Text(s.into())
    }
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// The model id the fake reports for a requested model.
pub fn served_model(requested: &str) -> String {
    format!("{requested}-fake-snapshot")
}

/// Answers by request, for tests with concurrent callers where a single queue would be
/// racy: given the request body, what to answer.
pub type Responder = Arc<dyn Fn(&Value) -> Scripted + Send + Sync>;

/// What the fake charges, per token (OpenRouter reports `usage.cost` like this).
pub const PROMPT_PRICE: f64 = 0.000_001;
pub const COMPLETION_PRICE: f64 = 0.000_002;

/// One answered (billed) completion.
#[derive(Debug, Clone)]
pub struct Billed {
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<VecDeque<Scripted>>>,
    responder: Option<Responder>,
    billed: Arc<Mutex<Vec<Billed>>>,
    requests: Arc<Mutex<Vec<Value>>>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    counter: Arc<Mutex<u64>>,
}

pub struct FakeLlm {
    /// `http://127.0.0.1:PORT/v1`: what a client takes as its base URL.
    pub base_url: String,
    /// Every request body, in arrival order (a body that is not JSON is kept as a string).
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Every request with its path and `Authorization` header.
    pub recorded: Arc<Mutex<Vec<Recorded>>>,
    /// Every completion answered with 200, with what it cost.
    pub billed: Arc<Mutex<Vec<Billed>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    /// Bind 127.0.0.1:0 and serve `script` (one entry per request; when it runs out,
    /// requests get a 500 saying so).
    pub async fn start(script: Vec<Scripted>) -> FakeLlm {
        Self::serve(script, None).await
    }

    /// Serve answers chosen by `responder` from each request.
    pub async fn start_with(responder: Responder) -> FakeLlm {
        Self::serve(Vec::new(), Some(responder)).await
    }

    async fn serve(script: Vec<Scripted>, responder: Option<Responder>) -> FakeLlm {
        let shared = Shared {
            script: Arc::new(Mutex::new(script.into())),
            responder,
            billed: Arc::default(),
            requests: Arc::default(),
            recorded: Arc::default(),
            counter: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/chat/completions", post(completions))
            .route("/v1/models", axum::routing::get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            requests: shared.requests,
            recorded: shared.recorded,
            billed: shared.billed,
            script: shared.script,
            task,
        }
    }

    /// A copy of the request bodies so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// The `Authorization` headers so far, one per request.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.recorded
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.authorization.clone())
            .collect()
    }

    /// Append to the script.
    pub fn push(&self, entry: Scripted) {
        self.script.lock().unwrap().push_back(entry);
    }

    /// Script entries not used yet.
    pub fn remaining(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn completions(
    State(shared): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    shared.requests.lock().unwrap().push(body.clone());
    shared.recorded.lock().unwrap().push(Recorded {
        path: uri.path().to_string(),
        authorization,
        body: body.clone(),
    });
    let n = {
        let mut c = shared.counter.lock().unwrap();
        *c += 1;
        *c
    };
    let next = match &shared.responder {
        Some(responder) => Some(responder(&body)),
        None => shared.script.lock().unwrap().pop_front(),
    };
    match next {
        Some(entry) => answer(entry, &body, n, &shared.billed).await,
        None => error_response(500, None, "fake LLM: the script has no answer left"),
    }
}

fn answer<'a>(
    entry: Scripted,
    request: &'a Value,
    n: u64,
    billed: &'a Mutex<Vec<Billed>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'a>> {
    Box::pin(async move {
        match entry {
            Scripted::Json(v) => completion(request, &v.to_string(), "stop", n, billed),
            Scripted::Text(t) => completion(request, &t, "stop", n, billed),
            Scripted::Finish(t, reason) => completion(request, &t, &reason, n, billed),
            Scripted::Status(code, retry) => {
                error_response(code, retry, &format!("fake LLM: scripted status {code}"))
            }
            Scripted::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            Scripted::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                answer(*inner, request, n, billed).await
            }
            Scripted::Raw(code, body) => (
                StatusCode::from_u16(code).unwrap(),
                [("content-type", "application/json")],
                body,
            )
                .into_response(),
        }
    })
}

/// An OpenAI-shaped chat completion. Token counts are derived from the sizes (about
/// four bytes per token), so they are deterministic and non-zero.
fn completion(
    request: &Value,
    content: &str,
    finish_reason: &str,
    n: u64,
    billed: &Mutex<Vec<Billed>>,
) -> Response {
    let requested = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let prompt_tokens = (request.to_string().len() as u64).div_ceil(4);
    let completion_tokens = (content.len() as u64).div_ceil(4).max(1);
    let cost = prompt_tokens as f64 * PROMPT_PRICE + completion_tokens as f64 * COMPLETION_PRICE;
    billed.lock().unwrap().push(Billed {
        model: requested.to_string(),
        prompt_tokens,
        completion_tokens,
        cost,
    });
    let body = json!({
        "id": format!("chatcmpl-fake-{n}"),
        "object": "chat.completion",
        "created": 1_700_000_000u64 + n,
        "model": served_model(requested),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "cost": cost,
        },
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn error_response(code: u16, retry_after: Option<u64>, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match code {
        401 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    let mut resp = (
        status,
        axum::Json(json!({"error": {"message": message, "type": kind, "code": code}})),
    )
        .into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

/// An OpenRouter-shaped model list (two models, one with prices), counting its calls.
async fn models(axum::extract::State(shared): axum::extract::State<Shared>) -> axum::Json<Value> {
    shared.recorded.lock().unwrap().push(Recorded {
        path: "/v1/models".into(),
        authorization: None,
        body: Value::Null,
    });
    axum::Json(serde_json::json!({"data": [
        {"id": "vendor/model-a", "name": "Model A", "context_length": 128000,
         "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
        {"id": "vendor/model-b", "context_length": 32000}
    ]}))
}
