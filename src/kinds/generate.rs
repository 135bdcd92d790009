//! The `generate` kind: one app from one model for one template.
//!
//! Every model call goes through the server: first the shared response cache (a resumed
//! or repeated pipeline never pays twice), then a slot from the model's limiter (shared by
//! all workers; the pipeline budget is checked there before each call), then the
//! provider; the call is recorded for accounting whatever its outcome. Transient provider
//! trouble (429, 5xx, timeouts) is retried inside the job after the limiter's back-off;
//! a quota exhaustion, a reached budget or untrusted output fails the job permanently.
//!
//! Artifacts: `app.tar` (the app folder, what analysis jobs with `app_from` unpack),
//! `generation.json` (what reproduces the app: resolved model, prompt hashes, parameters,
//! seed, usage) and `exchanges.json` (every prompt and raw answer, also on failure).

use super::{JobContext, JobOutput, ParamError};
use crate::analysis::catalog;
use crate::api::{AcquireBody, AnswerLookup, AnswerToCache, CallBody};
use crate::client::Client;
use crate::domain::Failure;
use crate::generation::budget::CallResult;
use crate::generation::extract::Limits;
use crate::generation::generate::{generate_app, GenerationParams};
use crate::generation::limiter::{CallOutcome, LimiterConfig};
use crate::generation::provider::{
    self, ChatRequest, ChatResponse, Message, ProviderConfig, ProviderError,
};
use crate::generation::providers::{self, Providers, DEFAULT_PROVIDER};
use crate::store::LlmCall;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the app is packed among a generate job's artifacts.
pub const APP_ARTIFACT: &str = "app.tar";

/// What a spec may say about its provider besides the name: prices for a USD budget, and
/// how long a call may take. Never where the provider is or which key it gets: that is
/// the providers file's (see [`crate::generation::providers`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderParams {
    name: String,
    #[serde(default)]
    timeout: Option<String>,
    /// USD per token, for providers that do not report the cost of a call.
    #[serde(default)]
    prompt_price: Option<f64>,
    #[serde(default)]
    completion_price: Option<f64>,
    /// The provider reports each call's cost in `usage.cost` (OpenRouter does); read by
    /// the spec's budget check.
    #[serde(default)]
    #[allow(dead_code)]
    reports_cost: Option<bool>,
}

/// Fields of a `provider` table that would choose where a worker's key goes.
const ENDPOINT_FIELDS: [&str; 4] = ["base_url", "api_key_env", "api_key", "key"];

/// The stage's `provider`: a name (`provider = "local"`), or a table with the name and
/// prices; `openrouter` when absent.
fn provider_params(params: &Value) -> Result<ProviderParams, ParamError> {
    let provider = match params.get("provider") {
        None | Some(Value::Null) => {
            return Ok(ProviderParams {
                name: DEFAULT_PROVIDER.into(),
                ..Default::default()
            })
        }
        Some(Value::String(name)) => ProviderParams {
            name: name.clone(),
            ..Default::default()
        },
        Some(Value::Object(table)) => {
            if let Some(field) = ENDPOINT_FIELDS.iter().find(|f| table.contains_key(**f)) {
                return Err(ParamError::ProviderInSpec(format!(
                    "provider.{field}: a spec cannot choose where a worker sends its API key \
                     (nor write the key); configure the endpoint as a named provider in the \
                     providers file given to `assay server --providers` and `assay worker \
                     --providers` (or `assay run --providers`), e.g. [providers.local] \
                     base_url = \"http://127.0.0.1:11434/v1\" api_key_env = \"LOCAL_KEY\", \
                     and pick it here by name: provider = \"local\""
                )));
            }
            serde_json::from_value(Value::Object(table.clone())).map_err(|e| {
                ParamError::Invalid(format!(
                    "provider: {e} (a provider is picked by name: provider = \"NAME\", or \
                     provider = {{ name = \"NAME\", prompt_price = …, completion_price = …, \
                     reports_cost = true, timeout = \"5m\" }})"
                ))
            })?
        }
        Some(other) => {
            return Err(ParamError::Invalid(format!(
                "provider is {other}: pick a provider by name, e.g. provider = \"openrouter\""
            )))
        }
    };
    // A templated name (`{{ provider }}`) is checked once rendered, by the server.
    if !provider.name.contains("{{") && !providers::valid_name(&provider.name) {
        return Err(ParamError::Invalid(format!(
            "provider `{}` is not a provider name (1 to 64 letters, digits, `-`, `_` or `.`)",
            provider.name
        )));
    }
    if let Some(t) = &provider.timeout {
        humantime::parse_duration(t)
            .map_err(|e| ParamError::Invalid(format!("provider.timeout `{t}`: {e}")))?;
    }
    Ok(provider)
}

/// The provider a generate job's (rendered) params pick, if they pick a valid one.
pub fn provider_name(params: &Value) -> Option<String> {
    provider_params(params).ok().map(|p| p.name)
}

/// The model a generate job's (rendered) params ask for: every request it makes names it.
pub fn model_name(params: &Value) -> Option<&str> {
    params.get("model").and_then(Value::as_str)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitParams {
    #[serde(default)]
    max_files: Option<usize>,
    #[serde(default)]
    max_file_bytes: Option<usize>,
    #[serde(default)]
    max_total_bytes: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    template: String,
    model: String,
    /// Read by [`provider_params`]: a name, or a table with the name and prices.
    #[serde(default)]
    #[allow(dead_code)]
    provider: Option<Value>,
    #[serde(default)]
    templates_dir: Option<String>,
    #[serde(default = "default_temperature")]
    temperature: f64,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    limits: Option<LimitParams>,
    /// How the model's adaptive concurrency starts and its bounds.
    #[serde(default)]
    concurrency: Option<f64>,
    #[serde(default)]
    max_concurrency: Option<f64>,
    /// Tries per call for transient provider trouble before the attempt fails.
    #[serde(default = "default_call_tries")]
    call_tries: u32,
}

fn default_temperature() -> f64 {
    0.2
}

fn default_call_tries() -> u32 {
    6
}

fn parse(params: &Value) -> Result<(Params, ProviderParams), ParamError> {
    let provider = provider_params(params)?;
    let p: Params = serde_json::from_value(params.clone())
        .map_err(|e| format!("generate params: {e} (expected template, model, and optionally provider, temperature, seed, max_tokens, limits, templates_dir, concurrency, max_concurrency, call_tries)"))?;
    check(&p)?;
    Ok((p, provider))
}

fn check(p: &Params) -> Result<(), String> {
    if !(0.0..=2.0).contains(&p.temperature) {
        return Err(format!("temperature {} is outside 0..=2", p.temperature));
    }
    for (name, v) in [
        ("concurrency", p.concurrency),
        ("max_concurrency", p.max_concurrency),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && v >= 1.0) {
                return Err(format!(
                    "{name} is {v}: use a number of calls of at least 1"
                ));
            }
        }
    }
    if let (Some(c), Some(m)) = (p.concurrency, p.max_concurrency) {
        if c > m {
            return Err(format!(
                "concurrency {c} is above max_concurrency {m}: start at or below the maximum"
            ));
        }
    }
    if p.call_tries == 0 {
        return Err("call_tries must be at least 1".into());
    }
    Ok(())
}

pub fn validate(params: &Value) -> Result<(), ParamError> {
    let (p, _) = parse(params)?;
    // Literal template names are checked now; templated ones (`{{ template }}`) when the
    // job runs.
    if !p.template.contains("{{") {
        let dir = p.templates_dir.as_deref().map(Path::new);
        let catalog = catalog::with_user_dir(dir).map_err(|e| e.to_string())?;
        if catalog.get(&p.template).is_none() {
            return Err(format!(
                "unknown template `{}`; `assay templates` lists them",
                p.template
            )
            .into());
        }
    }
    Ok(())
}

/// The worker's provider of that name, with the spec's timeout if it gives one.
fn provider_config(
    providers: &Providers,
    choice: &ProviderParams,
) -> Result<ProviderConfig, Failure> {
    let mut config = providers.get(&choice.name).cloned().ok_or_else(|| {
        Failure::permanent(
            "unknown_provider",
            format!(
                "this worker has no provider `{}` (it has: {}); add [providers.{}] with its \
                 base_url and api_key_env to the file given to `assay worker --providers`",
                choice.name,
                providers.names().join(", "),
                choice.name
            ),
        )
    })?;
    if let Some(t) = &choice.timeout {
        config.timeout = humantime::parse_duration(t).expect("validated");
    }
    Ok(config)
}

/// What the job records of each exchange, also when the app could not be made.
#[derive(Debug, Clone, Serialize)]
struct Logged {
    messages: Vec<Message>,
    answer: Option<String>,
    finish_reason: Option<String>,
    cached: bool,
    error: Option<String>,
}

/// What every call record of one attempt shares.
#[derive(Clone)]
struct CallMeta {
    job_id: i64,
    attempt: i64,
    /// The provider's identity for limits and accounting: its base URL (two servers that
    /// both serve a model called `llama3` do not share limits).
    provider: String,
    prices: (Option<f64>, Option<f64>),
}

impl CallMeta {
    fn cost(&self, resp: &ChatResponse) -> f64 {
        self.cost_of(&resp.usage)
    }

    fn cost_of(&self, usage: &provider::Usage) -> f64 {
        usage.cost.unwrap_or_else(|| {
            self.prices.0.unwrap_or(0.0) * usage.prompt_tokens as f64
                + self.prices.1.unwrap_or(0.0) * usage.completion_tokens as f64
        })
    }

    fn record(&self, model: &str, result: CallResult) -> LlmCall {
        LlmCall {
            call_id: uuid::Uuid::new_v4().to_string(),
            job_id: self.job_id,
            attempt: self.attempt,
            provider: self.provider.clone(),
            model: model.to_string(),
            model_resolved: None,
            result,
            error: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            saved_usd: 0.0,
        }
    }

    /// The record of a call made with `permit`, with its answer to cache when it has one.
    fn body(
        &self,
        req: &ChatRequest,
        permit: u64,
        answer: &Result<ChatResponse, ProviderError>,
    ) -> CallBody {
        match answer {
            Ok(resp) => {
                let mut call = self.record(&req.model, CallResult::Paid);
                call.model_resolved = Some(resp.model.clone());
                call.prompt_tokens = resp.usage.prompt_tokens as i64;
                call.completion_tokens = resp.usage.completion_tokens as i64;
                call.cost_usd = self.cost(resp);
                CallBody {
                    call,
                    permit: Some(permit),
                    outcome: Some(CallOutcome::Success),
                    answer: Some(AnswerToCache {
                        request: serde_json::to_value(req).expect("request serializes"),
                        answer: serde_json::to_value(resp).expect("answer serializes"),
                    }),
                }
            }
            Err(e) => {
                let mut call = self.record(&req.model, CallResult::Failed);
                call.error = Some(e.to_failure().code);
                // Answered but unusable: what the provider billed still counts.
                if let ProviderError::Unusable {
                    usage,
                    model: resolved,
                    ..
                } = e
                {
                    call.model_resolved = Some(resolved.clone());
                    call.prompt_tokens = usage.prompt_tokens as i64;
                    call.completion_tokens = usage.completion_tokens as i64;
                    call.cost_usd = self.cost_of(usage);
                }
                CallBody {
                    call,
                    permit: Some(permit),
                    outcome: e.outcome(),
                    answer: None,
                }
            }
        }
    }
}

/// Deliver a call's record (and answer) to the server. It is what was paid, so it is
/// tried for a while even when the job is being stopped.
async fn send_record(client: &Client, body: &CallBody) -> Result<(), ProviderError> {
    crate::client::patiently(Duration::from_secs(60), || client.record_call(body))
        .await
        .map_err(server_trouble)
}

struct Caller {
    client: Client,
    config: ProviderConfig,
    meta: CallMeta,
    limiter: LimiterConfig,
    call_tries: u32,
    cancel: tokio_util::sync::CancellationToken,
    progress: tokio::sync::watch::Sender<Option<crate::store::Progress>>,
    log: Arc<Mutex<Vec<Logged>>>,
    /// Time spent waiting for slots, reported to the worker (see `JobContext::waited_ms`).
    waited_ms: Arc<super::WaitClock>,
}

fn server_trouble(e: crate::client::ClientError) -> ProviderError {
    ProviderError::Connection(format!("the Assay server: {e}"))
}

fn stopped(message: &str) -> ProviderError {
    ProviderError::Stopped {
        code: "cancelled".into(),
        message: message.into(),
    }
}

impl Caller {
    fn step(&self, step: &str, message: String) {
        self.progress.send_replace(Some(crate::store::Progress {
            step: step.into(),
            percent: None,
            message: Some(message),
        }));
    }

    async fn chat(&self, req: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let result = self.chat_inner(&req).await;
        let mut log = self.log.lock().expect("log lock");
        log.push(match &result {
            Ok(r) => Logged {
                messages: req.messages,
                answer: Some(r.content.clone()),
                finish_reason: Some(r.finish_reason.clone()),
                cached: r.cached,
                error: None,
            },
            Err(e) => Logged {
                messages: req.messages,
                answer: None,
                finish_reason: None,
                cached: false,
                error: Some(e.to_string()),
            },
        });
        result
    }

    /// An answer from the server's cache, asking again through short server trouble.
    async fn cached(&self, req: &ChatRequest) -> Result<Option<ChatResponse>, ProviderError> {
        let lookup = AnswerLookup {
            job_id: self.meta.job_id,
            provider: self.meta.provider.clone(),
            request: serde_json::to_value(req).expect("request serializes"),
        };
        let mut delay = Duration::from_millis(200);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.client.cached_answer(&lookup).await {
                Ok(answer) => {
                    return Ok(answer.and_then(|a| serde_json::from_value::<ChatResponse>(a).ok()))
                }
                Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                    if self.cancel.is_cancelled() {
                        return Err(stopped("the job was stopped"));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(server_trouble(e)),
            }
        }
    }

    async fn chat_inner(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        if let Some(mut resp) = self.cached(req).await? {
            resp.cached = true;
            let mut call = self.meta.record(&req.model, CallResult::Cached);
            call.model_resolved = Some(resp.model.clone());
            call.saved_usd = self.meta.cost(&resp);
            let body = CallBody {
                call,
                permit: None,
                outcome: None,
                answer: None,
            };
            send_record(&self.client, &body).await?;
            return Ok(resp);
        }
        let mut tries = 0;
        loop {
            let permit = self.acquire(&req.model).await?;
            tries += 1;
            self.step(
                "calling",
                format!(
                    "{} at {}: waiting for the answer",
                    req.model, self.config.name
                ),
            );
            let mut call = tokio::spawn({
                let (config, req) = (self.config.clone(), req.clone());
                async move { provider::chat(&config, &req).await }
            });
            let answer = tokio::select! {
                r = &mut call => r.unwrap_or_else(|e| Err(ProviderError::Connection(format!("the call failed: {e}")))),
                _ = self.cancel.cancelled() => {
                    // The call may already be paid for: let it finish in the background
                    // and keep its answer and record, so that nothing is paid twice.
                    let (client, meta, req) =
                        (self.client.clone(), self.meta.clone(), req.clone());
                    tokio::spawn(async move {
                        let answer = call.await.unwrap_or_else(|e| {
                            Err(ProviderError::Connection(format!("the call failed: {e}")))
                        });
                        let _ = send_record(&client, &meta.body(&req, permit, &answer)).await;
                    });
                    return Err(stopped("the job was stopped during a call; its answer will be kept"));
                }
            };
            send_record(&self.client, &self.meta.body(req, permit, &answer)).await?;
            match answer {
                Ok(resp) => return Ok(resp),
                Err(e) if transient(&e) && tries < self.call_tries => {
                    self.step(
                        "retrying",
                        format!(
                            "{} at {}: {e}; try {} of {}",
                            req.model,
                            self.config.name,
                            tries + 1,
                            self.call_tries
                        ),
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A slot from the server, waiting (with the reason shown as progress) as long as the
    /// limiter says so.
    async fn acquire(&self, model: &str) -> Result<u64, ProviderError> {
        let body = AcquireBody {
            job_id: self.meta.job_id,
            attempt: Some(self.meta.attempt),
            provider: self.meta.provider.clone(),
            model: model.to_string(),
            limiter: Some(self.limiter),
            hold_ms: (self.config.timeout + Duration::from_secs(30)).as_millis() as i64,
            wait_ms: 5_000,
        };
        let mut delay = Duration::from_millis(200);
        loop {
            if self.cancel.is_cancelled() {
                self.waited_ms.end();
                return Err(stopped(
                    "the job was stopped while waiting for the provider",
                ));
            }
            // The long-poll may hold the request while the model is busy: that is waiting.
            let slow = tokio::time::Instant::now() + Duration::from_millis(100);
            let ask = self.client.acquire_call(&body);
            tokio::pin!(ask);
            let answer = tokio::select! {
                r = &mut ask => r,
                _ = tokio::time::sleep_until(slow) => {
                    self.waited_ms.begin();
                    ask.await
                }
            };
            let resp = match answer {
                Ok(r) => r,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => return Err(server_trouble(e)),
            };
            if let Some(permit) = resp.permit {
                self.waited_ms.end();
                return Ok(permit);
            }
            if let Some(stop) = resp.stop {
                self.waited_ms.end();
                return Err(ProviderError::Stopped {
                    code: stop.code,
                    message: stop.message,
                });
            }
            if let Some(wait) = &resp.wait {
                self.waited_ms.begin();
                self.step(
                    "waiting for the provider",
                    format!("{model} at {}: {wait}", self.config.name),
                );
            }
            let pause =
                Duration::from_millis(resp.retry_in_ms.unwrap_or(500).clamp(0, 60_000) as u64);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
    }
}

fn transient(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::RateLimited { .. }
            | ProviderError::Server { .. }
            | ProviderError::Timeout(_)
            | ProviderError::Connection(_)
            | ProviderError::Malformed(_)
            | ProviderError::Unusable { .. }
    )
}

pub async fn run(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let (p, choice) = parse(&ctx.params).map_err(|e| match e {
        // A pipeline stored before providers were named may still hold one.
        ParamError::ProviderInSpec(m) => Failure::permanent("provider_in_spec", m),
        ParamError::Invalid(m) => Failure::permanent("bad_params", m),
    })?;
    let client = ctx.server.clone().ok_or_else(|| {
        Failure::permanent(
            "no_server",
            "generate jobs run on a worker connected to an Assay server",
        )
    })?;
    let dir = p.templates_dir.as_deref().map(Path::new);
    let catalog = catalog::with_user_dir(dir)
        .map_err(|e| Failure::permanent("bad_templates", e.to_string()))?;
    let template = catalog.get(&p.template).cloned().ok_or_else(|| {
        Failure::permanent(
            "unknown_template",
            format!(
                "unknown template `{}`; `assay templates` lists them",
                p.template
            ),
        )
    })?;
    let config = provider_config(&ctx.providers, &choice)?;
    let defaults = LimiterConfig::default();
    let limiter = LimiterConfig {
        initial: p.concurrency.unwrap_or(defaults.initial),
        max: p
            .max_concurrency
            .unwrap_or(defaults.max)
            .max(p.concurrency.unwrap_or(1.0)),
        ..defaults
    };
    let caller = Caller {
        client,
        meta: CallMeta {
            job_id: ctx.job_id,
            attempt: ctx.attempt,
            provider: config.name.clone(),
            prices: (choice.prompt_price, choice.completion_price),
        },
        limiter,
        call_tries: p.call_tries,
        cancel: ctx.cancel.clone(),
        progress: ctx.progress.clone(),
        log: Arc::default(),
        waited_ms: ctx.waited_ms.clone(),
        config,
    };
    let mut limits = Limits::default();
    if let Some(l) = &p.limits {
        limits.max_files = l.max_files.unwrap_or(limits.max_files);
        limits.max_file_bytes = l.max_file_bytes.unwrap_or(limits.max_file_bytes);
        limits.max_total_bytes = l.max_total_bytes.unwrap_or(limits.max_total_bytes);
    }
    let params = GenerationParams {
        model: p.model.clone(),
        temperature: p.temperature,
        seed: p.seed,
        max_tokens: p.max_tokens,
    };
    let staging = tempfile::Builder::new()
        .prefix(".app-")
        .tempdir_in(&ctx.output_dir)
        .map_err(|e| Failure::retryable("io", format!("creating the app folder: {e}")))?;
    let app_dir = staging.path().join("app");
    ctx.step(
        "generating",
        Some(0.0),
        Some(format!("{} × {}", p.model, p.template)),
    );
    let generated = generate_app(&template, &params, &app_dir, &limits, |req| {
        caller.chat(req)
    })
    .await;
    let log = caller.log.lock().expect("log lock").clone();
    write_json(&ctx.output_dir.join("exchanges.json"), &json!(log))?;
    let record = generated.map_err(|e| e.to_failure())?;
    pack(&app_dir, &ctx.output_dir.join(APP_ARTIFACT))
        .map_err(|e| Failure::retryable("io", format!("packing the app: {e}")))?;
    let mut summary = serde_json::to_value(&record).expect("record serializes");
    summary
        .as_object_mut()
        .expect("record is an object")
        .remove("exchanges");
    summary["provider"] = json!(caller.config.name);
    summary["base_url"] = json!(caller.config.base_url);
    summary["app_artifact"] = json!(APP_ARTIFACT);
    write_json(&ctx.output_dir.join("generation.json"), &summary)?;
    drop(staging);
    Ok(JobOutput { result: summary })
}

fn write_json(path: &Path, value: &Value) -> Result<(), Failure> {
    std::fs::write(
        path,
        serde_json::to_vec_pretty(value).expect("JSON serializes"),
    )
    .map_err(|e| Failure::retryable("io", format!("writing {}: {e}", path.display())))
}

/// The app folder as a tar archive with stable order and no owner or time, so that the
/// same app is the same bytes (and the same blob).
pub fn pack(dir: &Path, to: &Path) -> std::io::Result<()> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut builder = tar::Builder::new(std::fs::File::create(to)?);
    for rel in files {
        let data = std::fs::read(dir.join(&rel))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, &rel, data.as_slice())?;
    }
    builder.into_inner()?.sync_all()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &entry.path(), out)?;
        } else if kind.is_file() {
            out.push(
                entry
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .to_path_buf(),
            );
        }
    }
    Ok(())
}

/// Unpack an app archive into `into`. Only plain files and folders are accepted (no
/// links, devices or absolute paths), each confined to `into`.
pub fn unpack(archive: &Path, into: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(into)?;
    let mut a = tar::Archive::new(std::fs::File::open(archive)?);
    a.set_preserve_permissions(false);
    for entry in a.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "`{}` in the app archive is not a plain file or folder",
                    entry.path()?.display()
                ),
            ));
        }
        // `unpack_in` would re-root `/etc/x` under `into`; an archive Assay packed never
        // holds one, so one that does is not ours and is refused whole.
        let path = entry.path()?.into_owned();
        if path.has_root()
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "`{}` in the app archive points outside the app",
                    path.display()
                ),
            ));
        }
        if !entry.unpack_in(into)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "`{}` in the app archive points outside the app",
                    entry.path()?.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_round_trip_through_the_archive_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("backend")).unwrap();
        std::fs::write(app.join("backend/app.py"), "print('hi')\n").unwrap();
        std::fs::write(app.join("assay-app.toml"), "[run]\n").unwrap();
        pack(&app, &dir.path().join("a.tar")).unwrap();
        pack(&app, &dir.path().join("b.tar")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a.tar")).unwrap(),
            std::fs::read(dir.path().join("b.tar")).unwrap(),
            "the same app packs to the same bytes"
        );
        let out = dir.path().join("out");
        unpack(&dir.path().join("a.tar"), &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("backend/app.py")).unwrap(),
            "print('hi')\n"
        );
    }

    #[test]
    fn archives_with_links_or_escaping_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link_tar = dir.path().join("link.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&link_tar).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "backend/secrets", "/etc").unwrap();
        b.into_inner().unwrap();
        let err = unpack(&link_tar, &dir.path().join("out1")).unwrap_err();
        assert!(err.to_string().contains("not a plain file"), "{err}");

        let escape_tar = dir.path().join("escape.tar");
        let mut raw = tar::Header::new_old();
        raw.set_size(1);
        raw.set_entry_type(tar::EntryType::Regular);
        // Written by hand: the builder refuses `..` itself.
        raw.as_old_mut().name[..12].copy_from_slice(b"../outside.x");
        raw.set_cksum();
        let mut bytes = raw.as_bytes().to_vec();
        bytes.extend_from_slice(b"x");
        bytes.resize(bytes.len() + 511, 0);
        bytes.resize(bytes.len() + 1024, 0);
        std::fs::write(&escape_tar, bytes.clone()).unwrap();
        assert!(unpack(&escape_tar, &dir.path().join("out2")).is_err());
        assert!(!dir.path().join("outside.x").exists());

        // An absolute path is refused, not re-rooted inside the app.
        bytes[..12].copy_from_slice(b"/etc/passwdx");
        let mut raw = tar::Header::from_byte_slice(&bytes[..512]).clone();
        raw.set_cksum();
        bytes[..512].copy_from_slice(raw.as_bytes());
        let absolute_tar = dir.path().join("absolute.tar");
        std::fs::write(&absolute_tar, bytes).unwrap();
        let out = dir.path().join("out3");
        let err = unpack(&absolute_tar, &out).unwrap_err();
        assert!(err.to_string().contains("`/etc/passwdx`"), "{err}");
        assert!(!out.join("etc").exists());
    }
}
