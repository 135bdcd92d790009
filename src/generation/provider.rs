//! OpenAI-compatible chat completions (OpenRouter by default, or a provider of the
//! providers file, see [`super::providers`]), with failures
//! classified for scheduling, and a response cache so that a resumed or repeated pipeline
//! never pays twice for the same answer. The API key comes from the environment and is
//! never written anywhere.

use super::limiter::CallOutcome;
use crate::domain::Failure;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

pub const OPENROUTER_BASE_URL: &str = "https://openrouter.ai/api/v1";

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub base_url: String,
    /// Environment variable holding the key (e.g. `OPENROUTER_API_KEY`); `None`: no key is
    /// sent.
    pub api_key_env: Option<String>,
    pub timeout: Duration,
}

impl ProviderConfig {
    pub fn openrouter() -> Self {
        ProviderConfig {
            name: "openrouter".into(),
            base_url: OPENROUTER_BASE_URL.into(),
            api_key_env: Some("OPENROUTER_API_KEY".into()),
            timeout: Duration::from_secs(300),
        }
    }

    fn api_key(&self) -> Option<String> {
        std::env::var(self.api_key_env.as_ref()?)
            .ok()
            .filter(|k| !k.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Cost in USD when the provider reports it (OpenRouter does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub content: String,
    /// `stop`, or `length` when the answer was cut off and should be continued.
    pub finish_reason: String,
    /// The model id as the provider resolved it.
    pub model: String,
    pub usage: Usage,
    /// Served from the response cache (nothing was paid).
    #[serde(default)]
    pub cached: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("rate limited by the provider (HTTP 429){}", retry_after_ms.map(|ms| format!(", retry after {} s", ms / 1000)).unwrap_or_default())]
    RateLimited { retry_after_ms: Option<i64> },
    #[error("the provider failed (HTTP {status})")]
    Server { status: u16 },
    #[error("the provider did not answer within {0} s")]
    Timeout(u64),
    #[error("cannot reach the provider: {0}")]
    Connection(String),
    #[error("quota or credits exhausted: {reason}")]
    QuotaExhausted { reason: String },
    #[error("the provider refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("no API key: set {0}")]
    NoKey(String),
    #[error("malformed answer from the provider: {0}")]
    Malformed(String),
    /// A 2xx answer without a message, which the provider may still have billed: its
    /// usage is accounted like a paid call's.
    #[error("the provider answered without a message: {reason}")]
    Unusable {
        reason: String,
        usage: Usage,
        model: String,
    },
    /// The scheduler refused the call for good: budget reached, model stopped, job over.
    #[error("{message}")]
    Stopped { code: String, message: String },
}

/// The most of a provider's answer Assay reads: far more than any chat completion or model
/// list, far less than a misbehaving endpoint could send.
pub const MAX_PROVIDER_ANSWER: usize = 32 << 20;

fn too_long_an_answer() -> ProviderError {
    ProviderError::Malformed(format!(
        "the answer is larger than {} MiB, the most Assay reads of one",
        MAX_PROVIDER_ANSWER >> 20
    ))
}

impl ProviderError {
    /// What the scheduler learns from it; `None` when it says nothing about the provider
    /// (the call was stopped, refused as malformed, or had no key).
    pub fn outcome(&self) -> Option<CallOutcome> {
        match self {
            ProviderError::RateLimited { retry_after_ms } => Some(CallOutcome::RateLimited {
                retry_after_ms: *retry_after_ms,
            }),
            ProviderError::Timeout(_) => Some(CallOutcome::Timeout),
            ProviderError::QuotaExhausted { reason } => Some(CallOutcome::QuotaExhausted {
                reason: reason.clone(),
            }),
            ProviderError::Server { .. } | ProviderError::Connection(_) => {
                Some(CallOutcome::ServerError)
            }
            ProviderError::Malformed(_)
            | ProviderError::Unusable { .. }
            | ProviderError::Refused { .. }
            | ProviderError::NoKey(_)
            | ProviderError::Stopped { .. } => None,
        }
    }

    /// As a job failure: transient trouble is retryable, a refused request or a missing
    /// key or quota is not.
    pub fn to_failure(&self) -> Failure {
        let (code, retryable) = match self {
            ProviderError::RateLimited { .. } => ("rate_limited", true),
            ProviderError::Server { .. } => ("provider_error", true),
            ProviderError::Timeout(_) => ("provider_timeout", true),
            ProviderError::Connection(_) => ("provider_unreachable", true),
            ProviderError::Malformed(_) | ProviderError::Unusable { .. } => {
                ("provider_malformed", true)
            }
            ProviderError::QuotaExhausted { .. } => ("quota_exhausted", false),
            ProviderError::Refused { .. } => ("provider_refused", false),
            ProviderError::NoKey(_) => ("no_api_key", false),
            ProviderError::Stopped { code, message } => {
                return Failure::permanent(code, message.clone()).external()
            }
        };
        let mut f = if retryable {
            Failure::retryable(code, self.to_string())
        } else {
            Failure::permanent(code, self.to_string())
        };
        // The provider's trouble is not the job's or the worker's (a refused request
        // or a missing key is: those stay ordinary failures).
        if !matches!(
            self,
            ProviderError::Refused { .. } | ProviderError::NoKey(_)
        ) {
            f = f.external();
        }
        if let ProviderError::RateLimited { retry_after_ms } = self {
            f.retry_after_ms = *retry_after_ms;
        }
        f
    }
}

/// Call the chat-completions endpoint once.
pub async fn chat(
    config: &ProviderConfig,
    req: &ChatRequest,
) -> Result<ChatResponse, ProviderError> {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .build()
        .expect("HTTP client builds");
    let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
    let mut body = serde_json::to_value(req).expect("request serializes");
    if config.base_url.starts_with(OPENROUTER_BASE_URL) {
        // OpenRouter reports what each call cost only when asked.
        body["usage"] = json!({"include": true});
    }
    let mut call = client.post(&url).json(&body);
    match config.api_key() {
        Some(key) => call = call.bearer_auth(key),
        None if config.base_url.starts_with(OPENROUTER_BASE_URL) => {
            return Err(ProviderError::NoKey(
                config
                    .api_key_env
                    .clone()
                    .unwrap_or_else(|| "an api_key_env for it in the providers file".into()),
            ))
        }
        None => {}
    }
    let resp = call.send().await.map_err(|e| {
        if e.is_timeout() {
            ProviderError::Timeout(config.timeout.as_secs())
        } else {
            ProviderError::Connection(e.without_url().to_string())
        }
    })?;
    let status = resp.status().as_u16();
    let retry_after_ms = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s * 1000.0) as i64);
    let body = crate::body::read_within(resp, MAX_PROVIDER_ANSWER)
        .await
        .map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout(config.timeout.as_secs())
            } else {
                ProviderError::Connection(e.without_url().to_string())
            }
        })?;
    if body.truncated {
        return Err(too_long_an_answer());
    }
    let body = body.text();
    let json: Option<Value> = serde_json::from_str(&body).ok();
    let error_text = || {
        json.as_ref()
            .and_then(|j| j["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(300).collect())
    };
    let error_code = json
        .as_ref()
        .and_then(|j| j["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    match status {
        200..=299 => {}
        402 => {
            return Err(ProviderError::QuotaExhausted {
                reason: error_text(),
            })
        }
        429 if error_code == "insufficient_quota" => {
            return Err(ProviderError::QuotaExhausted {
                reason: error_text(),
            })
        }
        429 => return Err(ProviderError::RateLimited { retry_after_ms }),
        408 => return Err(ProviderError::Timeout(config.timeout.as_secs())),
        500..=599 => return Err(ProviderError::Server { status }),
        _ => {
            return Err(ProviderError::Refused {
                status,
                message: error_text(),
            })
        }
    }
    let json = json.ok_or_else(|| {
        ProviderError::Malformed(format!(
            "not JSON: {}",
            body.chars().take(200).collect::<String>()
        ))
    })?;
    let choice = &json["choices"][0];
    let usage = &json["usage"];
    let usage = Usage {
        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
        total_tokens: usage["total_tokens"].as_u64().unwrap_or(0),
        cost: usage["cost"].as_f64(),
    };
    let model = json["model"].as_str().unwrap_or(&req.model).to_string();
    let Some(content) = choice["message"]["content"].as_str() else {
        return Err(ProviderError::Unusable {
            reason: "no choices[0].message.content".into(),
            usage,
            model,
        });
    };
    Ok(ChatResponse {
        content: content.to_string(),
        finish_reason: choice["finish_reason"]
            .as_str()
            .unwrap_or("stop")
            .to_string(),
        model,
        usage,
        cached: false,
    })
}

/// Answers by request, on disk. Keyed by provider, model, messages and parameters; only
/// successful answers are stored, so an error is always asked again.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

impl ResponseCache {
    pub fn new(dir: PathBuf) -> Self {
        ResponseCache { dir }
    }

    pub fn key(config: &ProviderConfig, req: &ChatRequest) -> String {
        let canonical = json!({"base_url": config.base_url, "request": req});
        hex::encode(Sha256::digest(
            serde_json::to_vec(&canonical).expect("request serializes"),
        ))
    }

    pub fn get(&self, key: &str) -> Option<ChatResponse> {
        let bytes = std::fs::read(self.dir.join(format!("{key}.json"))).ok()?;
        let mut resp: ChatResponse = serde_json::from_slice(&bytes).ok()?;
        resp.cached = true;
        Some(resp)
    }

    pub fn put(&self, key: &str, resp: &ChatResponse) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{key}.{}", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, serde_json::to_vec(resp)?)?;
        std::fs::rename(tmp, self.dir.join(format!("{key}.json")))
    }

    /// The cached answer, or a fresh one (stored when it succeeded).
    pub async fn chat(
        &self,
        config: &ProviderConfig,
        req: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let key = Self::key(config, req);
        if let Some(hit) = self.get(&key) {
            return Ok(hit);
        }
        let resp = chat(config, req).await?;
        if let Err(e) = self.put(&key, &resp) {
            tracing::warn!(error = %e, "could not store the answer in the response cache");
        }
        Ok(resp)
    }
}

/// A model as the provider lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    /// USD per token, when the provider gives prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_price: Option<f64>,
}

fn price(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The provider's models (`GET {base_url}/models`).
pub async fn list_models(config: &ProviderConfig) -> Result<Vec<ModelInfo>, ProviderError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client builds");
    let mut call = client.get(format!("{}/models", config.base_url.trim_end_matches('/')));
    if let Some(key) = config.api_key() {
        call = call.bearer_auth(key);
    }
    let resp = call
        .send()
        .await
        .map_err(|e| ProviderError::Connection(e.without_url().to_string()))?;
    let status = resp.status().as_u16();
    let body = crate::body::read_within(resp, MAX_PROVIDER_ANSWER)
        .await
        .map_err(|e| ProviderError::Connection(e.without_url().to_string()))?;
    if body.truncated {
        return Err(too_long_an_answer());
    }
    let body = body.text();
    match status {
        200..=299 => {}
        429 => {
            return Err(ProviderError::RateLimited {
                retry_after_ms: None,
            })
        }
        500..=599 => return Err(ProviderError::Server { status }),
        _ => {
            return Err(ProviderError::Refused {
                status,
                message: body.chars().take(300).collect(),
            })
        }
    }
    let json: Value =
        serde_json::from_str(&body).map_err(|e| ProviderError::Malformed(e.to_string()))?;
    let data = json["data"]
        .as_array()
        .ok_or_else(|| ProviderError::Malformed("no `data` list".into()))?;
    let mut models: Vec<ModelInfo> = data
        .iter()
        .filter_map(|m| {
            Some(ModelInfo {
                id: m["id"].as_str()?.to_string(),
                context_length: m["context_length"].as_u64(),
                prompt_price: price(&m["pricing"]["prompt"]),
                completion_price: price(&m["pricing"]["completion"]),
            })
        })
        .collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

/// The model list, from a cache file younger than `max_age`, else from the provider
/// (and then stored).
pub async fn models_cached(
    config: &ProviderConfig,
    cache_dir: &std::path::Path,
    max_age: Duration,
) -> Result<(Vec<ModelInfo>, bool), ProviderError> {
    let key = hex::encode(&Sha256::digest(config.base_url.as_bytes())[..8]);
    let file = cache_dir.join(format!("models-{key}.json"));
    let fresh = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < max_age);
    if fresh {
        if let Some(models) = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok((models, true));
        }
    }
    let models = list_models(config).await?;
    if std::fs::create_dir_all(cache_dir).is_ok() {
        let _ = std::fs::write(&file, serde_json::to_vec(&models).unwrap_or_default());
    }
    Ok((models, false))
}
