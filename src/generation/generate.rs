//! Generating one app the way a careful engineer would: the backend first, then the
//! frontend with the backend's API as context. Truncated answers are continued, answers
//! without code are asked again once with a stricter prompt, code is taken from fenced
//! blocks (as untrusted input, see [`extract`](super::extract)) and merged into a runnable
//! scaffold with the run recipe the analyzers need. Every prompt and raw answer is kept,
//! and the record says what reproduces the app.
//!
//! The model is reached through a `chat` function, so this runs the same against a real
//! provider, the response cache, or a test server.

use super::extract::{self, ExtractError, Extracted, Limits};
use super::provider::{ChatRequest, ChatResponse, Message, ProviderError, Usage};
use crate::analysis::apps::MANIFEST;
use crate::analysis::catalog::Template;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

const SYSTEM: &str = include_str!("../../prompts/system.md.j2");
const BACKEND: &str = include_str!("../../prompts/backend.md.j2");
const FRONTEND: &str = include_str!("../../prompts/frontend.md.j2");
const STRICT: &str = include_str!("../../prompts/strict.md.j2");
const CONTINUE: &str = include_str!("../../prompts/continue.md.j2");

/// How many times a cut-off answer is continued before giving up.
const MAX_CONTINUATIONS: usize = 3;

/// Prompt templates by name with the hash of their content: the version that produced an app.
pub fn prompt_hashes() -> BTreeMap<String, String> {
    [
        ("system", SYSTEM),
        ("backend", BACKEND),
        ("frontend", FRONTEND),
        ("strict", STRICT),
        ("continue", CONTINUE),
    ]
    .iter()
    .map(|(name, text)| {
        (
            name.to_string(),
            hex::encode(&Sha256::digest(text.as_bytes())[..8]),
        )
    })
    .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub model: String,
    pub temperature: f64,
    pub seed: Option<u64>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("the model's {step} answer is not acceptable: {source}")]
    Untrusted { step: String, source: ExtractError },
    #[error("the model's {step} answer had no code, also when asked again strictly")]
    NoCode { step: String },
    #[error("the model's {step} answer was still cut off after {MAX_CONTINUATIONS} continuations")]
    Truncated { step: String },
    #[error("prompt template: {0}")]
    Prompt(String),
    #[error("writing the app: {0}")]
    Io(#[from] std::io::Error),
}

impl GenerationError {
    pub fn to_failure(&self) -> crate::domain::Failure {
        use crate::domain::Failure;
        match self {
            GenerationError::Provider(e) => e.to_failure(),
            // The model's own failures: final (a retry would replay the same cached
            // answers), and no evidence against the other models' jobs of the stage.
            GenerationError::Untrusted { .. } => {
                Failure::permanent("untrusted_output", self.to_string()).external()
            }
            GenerationError::NoCode { .. } => {
                Failure::permanent("no_code", self.to_string()).external()
            }
            GenerationError::Truncated { .. } => {
                Failure::permanent("truncated", self.to_string()).external()
            }
            GenerationError::Prompt(_) => Failure::permanent("bad_prompt", self.to_string()),
            GenerationError::Io(_) => Failure::retryable("io", self.to_string()),
        }
    }
}

/// One exchange with the model, kept as an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub step: String,
    pub messages: Vec<Message>,
    pub answer: String,
    pub finish_reason: String,
    pub cached: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub template: String,
    pub model_requested: String,
    /// As the provider resolved it (a snapshot id, not an alias).
    pub model_resolved: String,
    pub params: GenerationParams,
    pub prompt_hashes: BTreeMap<String, String>,
    pub usage: Usage,
    /// Calls answered from the response cache (not paid).
    pub cached_calls: usize,
    pub calls: usize,
    pub files: Vec<String>,
    pub exchanges: Vec<Exchange>,
}

fn render(template_text: &str, ctx: minijinja::Value) -> Result<String, GenerationError> {
    let env = minijinja::Environment::new();
    env.render_str(template_text, ctx)
        .map_err(|e| GenerationError::Prompt(e.to_string()))
}

fn defaults_backend(lang: &str) -> Option<String> {
    match lang {
        "python" | "py" => Some("backend/app.py".into()),
        "text" | "txt" | "" => Some("backend/requirements.txt".into()),
        _ => None,
    }
}

fn defaults_frontend(lang: &str) -> Option<String> {
    match lang {
        "html" => Some("frontend/index.html".into()),
        "javascript" | "js" => Some("frontend/app.js".into()),
        "css" => Some("frontend/style.css".into()),
        "python" | "py" => Some("backend/app.py".into()),
        _ => None,
    }
}

/// Generate the app for `template` into `app_dir` (which should be empty).
pub async fn generate_app<F, Fut>(
    template: &Template,
    params: &GenerationParams,
    app_dir: &Path,
    limits: &Limits,
    mut chat: F,
) -> Result<GenerationRecord, GenerationError>
where
    F: FnMut(ChatRequest) -> Fut,
    Fut: Future<Output = Result<ChatResponse, ProviderError>>,
{
    let numbered = template.requirements.numbered();
    let by_area = |area: &str| {
        numbered
            .iter()
            .filter(|r| r.area == area)
            .cloned()
            .collect::<Vec<_>>()
    };
    let ctx = minijinja::context! {
        template => minijinja::Value::from_serialize(template),
        backend_requirements => minijinja::Value::from_serialize(by_area("backend")),
        frontend_requirements => minijinja::Value::from_serialize(by_area("frontend")),
    };
    let system = render(SYSTEM, ctx.clone())?;
    let mut record = GenerationRecord {
        template: template.name.clone(),
        model_requested: params.model.clone(),
        model_resolved: params.model.clone(),
        params: params.clone(),
        prompt_hashes: prompt_hashes(),
        usage: Usage::default(),
        cached_calls: 0,
        calls: 0,
        files: Vec::new(),
        exchanges: Vec::new(),
    };
    let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut steps = vec![(
        "backend",
        render(BACKEND, ctx.clone())?,
        defaults_backend as fn(&str) -> Option<String>,
    )];
    if !template.requirements.frontend.is_empty() {
        steps.push((
            "frontend",
            render(FRONTEND, ctx.clone())?,
            defaults_frontend,
        ));
    }
    let mut history = vec![Message::system(system)];
    for (step, prompt, defaults) in steps {
        history.push(Message::user(prompt));
        let extracted = ask_for_code(
            step,
            &mut history,
            params,
            limits,
            &defaults,
            &mut chat,
            &mut record,
        )
        .await?;
        files.extend(extracted.files);
    }
    // The scaffold: what the analyzers need to run the app, unless the model wrote it.
    files
        .entry(PathBuf::from("backend/requirements.txt"))
        .or_insert_with(|| "flask==3.1.3\n".into());
    // The model's name is the provider's to say: quoted by TOML's own rules, so no name
    // (a newline and a `[run]` table, say) can write the recipe.
    let quoted = |text: &str| toml::Value::String(text.to_string()).to_string();
    let manifest = format!(
        "template = {}\nmodel = {}\n\n[run]\ncommand = [\"python3\", \"backend/app.py\"]\nport_env = \"PORT\"\nhealth = \"/health\"\n",
        quoted(&template.name),
        quoted(&record.model_resolved)
    );
    files.insert(PathBuf::from(MANIFEST), manifest);
    std::fs::create_dir_all(app_dir)?;
    extract::write_files(app_dir, &files).map_err(|source| GenerationError::Untrusted {
        step: "write".into(),
        source,
    })?;
    record.files = files.keys().map(|p| p.display().to_string()).collect();
    Ok(record)
}

/// Ask until the step's answer holds complete code: continue cut-off answers, re-ask
/// once when there is no code at all.
async fn ask_for_code<F, Fut>(
    step: &str,
    history: &mut Vec<Message>,
    params: &GenerationParams,
    limits: &Limits,
    defaults: &(dyn Fn(&str) -> Option<String> + Sync),
    chat: &mut F,
    record: &mut GenerationRecord,
) -> Result<Extracted, GenerationError>
where
    F: FnMut(ChatRequest) -> Fut,
    Fut: Future<Output = Result<ChatResponse, ProviderError>>,
{
    let mut reasked = false;
    loop {
        let mut answer = String::new();
        let mut continuations = 0;
        let mut conversation = history.clone();
        let extracted = loop {
            let resp = call(step, &conversation, params, chat, record).await?;
            answer.push_str(&resp.content);
            let cut = resp.finish_reason == "length";
            match extract::extract(&answer, defaults, limits) {
                Ok(x) if !x.truncated && !cut => break Ok(x),
                Ok(_) | Err(ExtractError::NoCode) if cut || answer.contains("```") => {
                    continuations += 1;
                    if continuations > MAX_CONTINUATIONS {
                        return Err(GenerationError::Truncated { step: step.into() });
                    }
                    conversation.push(Message::assistant(resp.content));
                    conversation.push(Message::user(CONTINUE));
                }
                Ok(x) => break Ok(x),
                Err(e) => break Err(e),
            }
        };
        match extracted {
            Ok(x) => {
                history.push(Message::assistant(answer));
                return Ok(x);
            }
            Err(ExtractError::NoCode) if !reasked => {
                reasked = true;
                history.push(Message::assistant(answer));
                history.push(Message::user(STRICT));
            }
            Err(ExtractError::NoCode) => return Err(GenerationError::NoCode { step: step.into() }),
            Err(source) => {
                return Err(GenerationError::Untrusted {
                    step: step.into(),
                    source,
                })
            }
        }
    }
}

async fn call<F, Fut>(
    step: &str,
    messages: &[Message],
    params: &GenerationParams,
    chat: &mut F,
    record: &mut GenerationRecord,
) -> Result<ChatResponse, GenerationError>
where
    F: FnMut(ChatRequest) -> Fut,
    Fut: Future<Output = Result<ChatResponse, ProviderError>>,
{
    let req = ChatRequest {
        model: params.model.clone(),
        messages: messages.to_vec(),
        temperature: params.temperature,
        max_tokens: params.max_tokens,
        seed: params.seed,
    };
    let resp = chat(req).await?;
    record.calls += 1;
    if resp.cached {
        record.cached_calls += 1;
    } else {
        record.usage.prompt_tokens += resp.usage.prompt_tokens;
        record.usage.completion_tokens += resp.usage.completion_tokens;
        record.usage.total_tokens += resp.usage.total_tokens;
        if let Some(c) = resp.usage.cost {
            *record.usage.cost.get_or_insert(0.0) += c;
        }
    }
    record.model_resolved = resp.model.clone();
    record.exchanges.push(Exchange {
        step: step.into(),
        messages: messages.to_vec(),
        answer: resp.content.clone(),
        finish_reason: resp.finish_reason.clone(),
        cached: resp.cached,
    });
    Ok(resp)
}
