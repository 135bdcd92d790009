//! The LLM judge's calls through the Assay server, like the `generate` kind's: the shared
//! response cache first (a retried or resumed `ai` job never pays twice for an answer),
//! then a slot from the model's limiter, where the pipeline's budget is checked, then the
//! call, recorded for accounting whatever its outcome.

use super::WaitClock;
use crate::analysis::judge::{CallRecord, Gate, JudgeError};
use crate::api::{AcquireBody, AnswerLookup, AnswerToCache, CallBody};
use crate::client::{Client, ClientError};
use crate::generation::budget::CallResult;
use crate::generation::limiter::CallOutcome;
use crate::store::{LlmCall, Progress};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Prefix of the provider under which judge calls are limited and accounted.
pub const JUDGE_PROVIDER_PREFIX: &str = "judge:";

/// The judge's provider label for an endpoint: `judge:https://…/v1`.
pub fn provider_label(base_url: &str) -> String {
    format!("{JUDGE_PROVIDER_PREFIX}{}", base_url.trim_end_matches('/'))
}

pub struct ServerGate {
    pub client: Client,
    pub job_id: i64,
    pub attempt: i64,
    /// The provider's identity for limits and accounting: [`provider_label`] of the
    /// endpoint, so the judge's spending is not mistaken for the models' it judges.
    pub provider: String,
    /// The longest a call can take: how long a slot is held at most.
    pub timeout: Duration,
    /// Where waiting for the provider is shown.
    pub progress: Option<watch::Sender<Option<Progress>>>,
    /// Time spent waiting for a slot, which does not count against the attempt.
    pub waited_ms: Arc<WaitClock>,
}

fn server_trouble(e: ClientError) -> JudgeError {
    JudgeError::Transient {
        message: format!("the Assay server: {e}"),
        status: None,
        retry_after: None,
    }
}

/// Ask the server again through a minute of short trouble.
async fn patiently<T, F, Fut>(ask: F) -> Result<T, JudgeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    crate::client::patiently(Duration::from_secs(60), ask)
        .await
        .map_err(server_trouble)
}

impl ServerGate {
    fn show(&self, message: String) {
        if let Some(p) = &self.progress {
            p.send_replace(Some(Progress {
                step: "waiting for the provider".into(),
                percent: None,
                message: Some(message),
            }));
        }
    }
}

fn outcome(error: Option<&JudgeError>) -> Option<CallOutcome> {
    match error {
        None => Some(CallOutcome::Success),
        Some(JudgeError::Transient {
            status: Some(429),
            retry_after,
            ..
        }) => Some(CallOutcome::RateLimited {
            retry_after_ms: retry_after.map(|d| d.as_millis() as i64),
        }),
        Some(JudgeError::Transient { .. }) => Some(CallOutcome::ServerError),
        Some(JudgeError::Stopped { code, message }) if code == "quota_exhausted" => {
            Some(CallOutcome::QuotaExhausted {
                reason: message.clone(),
            })
        }
        Some(_) => None,
    }
}

#[async_trait::async_trait]
impl Gate for ServerGate {
    async fn cached(&self, request: &serde_json::Value) -> Result<Option<String>, JudgeError> {
        let lookup = AnswerLookup {
            job_id: self.job_id,
            provider: self.provider.clone(),
            request: request.clone(),
        };
        let answer = patiently(|| self.client.cached_answer(&lookup)).await?;
        Ok(answer.and_then(|a| a.get("text").and_then(|t| t.as_str()).map(str::to_string)))
    }

    async fn acquire(&self, model: &str) -> Result<Option<u64>, JudgeError> {
        let body = AcquireBody {
            job_id: self.job_id,
            attempt: Some(self.attempt),
            provider: self.provider.clone(),
            model: model.to_string(),
            limiter: None,
            hold_ms: (self.timeout + Duration::from_secs(30)).as_millis() as i64,
            wait_ms: 5_000,
        };
        let result = loop {
            self.waited_ms.begin();
            let resp = match patiently(|| self.client.acquire_call(&body)).await {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            if let Some(permit) = resp.permit {
                if let Some(p) = &self.progress {
                    p.send_replace(Some(Progress {
                        step: "asking the judge".into(),
                        percent: None,
                        message: Some(format!("{model}: waiting for the answer")),
                    }));
                }
                break Ok(Some(permit));
            }
            if let Some(stop) = resp.stop {
                break Err(JudgeError::Stopped {
                    code: stop.code,
                    message: stop.message,
                });
            }
            if let Some(wait) = &resp.wait {
                self.show(format!("{model} at {}: {wait}", self.provider));
            }
            let pause = resp.retry_in_ms.unwrap_or(500).clamp(0, 60_000) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        };
        self.waited_ms.end();
        result
    }

    async fn record(&self, permit: Option<u64>, call: CallRecord<'_>) -> Result<(), JudgeError> {
        let cost = call.cost_usd.unwrap_or(0.0);
        let body = CallBody {
            call: LlmCall {
                call_id: uuid::Uuid::new_v4().to_string(),
                job_id: self.job_id,
                attempt: self.attempt,
                provider: self.provider.clone(),
                model: call.model.to_string(),
                model_resolved: call.resolved_model,
                result: if call.cached {
                    CallResult::Cached
                } else if call.error.is_some() {
                    CallResult::Failed
                } else {
                    CallResult::Paid
                },
                error: call.error.map(|e| e.code().to_string()),
                // A cached answer spent no tokens; what it saved is in `saved_usd`.
                prompt_tokens: if call.cached {
                    0
                } else {
                    call.usage.prompt_tokens as i64
                },
                completion_tokens: if call.cached {
                    0
                } else {
                    call.usage.completion_tokens as i64
                },
                cost_usd: if call.cached { 0.0 } else { cost },
                saved_usd: if call.cached { cost } else { 0.0 },
            },
            permit,
            outcome: if call.cached {
                None
            } else {
                outcome(call.error)
            },
            // Kept before the call is recorded and the slot given back, in one request.
            answer: call.keep.map(|text| AnswerToCache {
                request: call.request.clone(),
                answer: serde_json::json!({ "text": text }),
            }),
        };
        patiently(|| self.client.record_call(&body)).await
    }
}
