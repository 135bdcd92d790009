//! Keys of the response cache, computed here from the request an answer is for, never
//! taken from a worker: a worker that could name the key could file its answer under
//! another request's key and serve it to every job that asks that request.
//!
//! A key is the SHA-256 of the provider's identity and the request in a canonical form
//! (object keys sorted, no whitespace). The identity comes from the job where the job
//! says it: a `generate` job's provider is the one its params pick, and its requests must
//! name its model; the `ai` judge's endpoint is the worker's own setting, so there the
//! worker's label is used, kept apart from generation's under its `judge:` prefix and
//! apart from other tokens' judge answers.

use super::routes::ApiError;
use crate::api::ErrorCode;
use crate::kinds::judge_gate::JUDGE_PROVIDER_PREFIX;
use crate::store::Job;
use axum::http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Changes when the key's recipe does: answers filed under an older recipe are not found.
const KEY_VERSION: &[u8] = b"assay-answer-2\n";

fn refused(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
}

/// Whose answers `request` of `job` may find or keep: its provider's, as the server
/// knows it. `stated` is the provider the worker names (used only for the judge), and
/// `token` the token the worker holds: a judge's endpoint is a worker's own setting, which
/// the server cannot check, so judge answers are kept per token, and a worker of one
/// token never reads a verdict another token filed.
pub fn identity(
    job: &Job,
    stated: &str,
    request: &Value,
    token: Option<i64>,
) -> Result<String, ApiError> {
    match job.kind.as_str() {
        "generate" => {
            let provider = crate::kinds::generate::provider_name(&job.params)
                .ok_or_else(|| refused(format!("job {} names no valid provider", job.id)))?;
            let model = crate::kinds::generate::model_name(&job.params);
            if model.is_none() || request.get("model").and_then(Value::as_str) != model {
                return Err(refused(format!(
                    "the request is for model {}, but job {} generates with `{}`: a job's \
                     answers are kept and found only for requests to its own model",
                    request.get("model").unwrap_or(&Value::Null),
                    job.id,
                    model.unwrap_or_default()
                )));
            }
            Ok(format!("generate:{provider}"))
        }
        "ai" if stated.starts_with(JUDGE_PROVIDER_PREFIX) => Ok(match token {
            Some(token) => format!("{stated} token:{token}"),
            None => stated.to_string(),
        }),
        "ai" => Err(refused(format!(
            "job {} is an `ai` job: its provider is `{JUDGE_PROVIDER_PREFIX}URL`, not `{stated}`",
            job.id
        ))),
        other => Err(refused(format!(
            "job {} is a `{other}` job: only `generate` and `ai` jobs keep model answers",
            job.id
        ))),
    }
}

/// Whether `job` may take limiter slots and record calls for `model` at `provider`: a
/// `generate` job only for its own provider and model, an `ai` job only under the judge's
/// prefix. Without this a worker holding any job could back off, stop or reshape the
/// limiter of a model other pipelines use, or charge calls to a model it never called.
pub fn may_call(job: &Job, provider: &str, model: &str) -> Result<(), ApiError> {
    match job.kind.as_str() {
        "generate" => {
            let own_provider = crate::kinds::generate::provider_name(&job.params);
            let own_model = crate::kinds::generate::model_name(&job.params);
            if own_provider.as_deref() == Some(provider) && own_model == Some(model) {
                Ok(())
            } else {
                Err(refused(format!(
                    "job {} generates with `{}` at `{}`, not `{model}` at `{provider}`: a job \
                     calls only its own model",
                    job.id,
                    own_model.unwrap_or_default(),
                    own_provider.unwrap_or_default()
                )))
            }
        }
        "ai" if provider.starts_with(JUDGE_PROVIDER_PREFIX) => Ok(()),
        "ai" => Err(refused(format!(
            "job {} is an `ai` job: its provider is `{JUDGE_PROVIDER_PREFIX}URL`, not `{provider}`",
            job.id
        ))),
        other => Err(refused(format!(
            "job {} is a `{other}` job: only `generate` and `ai` jobs call models",
            job.id
        ))),
    }
}

/// The cache key of `request` to the provider `identity`. Canonical JSON holds no raw
/// newline, so the last one in the hashed bytes is where the identity ends, even for a
/// judge label that has newlines of its own.
pub fn key(identity: &str, request: &Value) -> String {
    let mut bytes = KEY_VERSION.to_vec();
    bytes.extend_from_slice(identity.as_bytes());
    bytes.push(b'\n');
    canonical(request, &mut bytes);
    hex::encode(Sha256::digest(&bytes))
}

/// JSON with every object's keys in sorted order, whatever order they arrived in (and
/// whatever map type serde_json was built with), so that one request has one key.
fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(
                    serde_json::to_string(k)
                        .expect("a string serializes")
                        .as_bytes(),
                );
                out.push(b':');
                canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(
            serde_json::to_string(scalar)
                .expect("a scalar serializes")
                .as_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_request_has_one_key_and_any_change_another() {
        let a: Value = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#,
        )
        .unwrap();
        let reordered: Value = serde_json::from_str(
            r#"{"temperature":0.2,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(key("generate:p", &a), key("generate:p", &reordered));
        let mut other = a.clone();
        other["messages"][0]["content"] = json!("hi!");
        assert_ne!(key("generate:p", &a), key("generate:p", &other));
        assert_ne!(key("generate:p", &a), key("generate:q", &a));
        assert_ne!(key("generate:p", &a), key("judge:p", &a));
    }
}
