//! The "ai" analyzer: an LLM judge over any OpenAI-compatible chat-completions API.
//!
//! The judge reads an app's source files, asks the model whether each requirement of the
//! app's template is met (with quotes from the files as evidence) and to score a few
//! quality criteria, and checks the answer: it must be JSON, name every requirement id
//! exactly once, use only known verdicts and scores 1..=5, and every quote must really
//! occur in the file it names (quotes that don't are dropped and counted). A malformed
//! answer is re-asked once, quoting the problems.
//!
//! Failures are typed: [`JudgeError::Transient`] (429, 5xx, timeouts, connection errors)
//! and [`JudgeError::Malformed`] are worth retrying later, [`JudgeError::Config`]
//! (401/403/404 and other refusals) is not. The API key is sent as a bearer token and is
//! never logged, stored in the report, or shown by `Debug`.

use super::catalog::Template;
use crate::domain::Failure;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The analyzer's name in reports and findings.
pub const ANALYZER: &str = "ai";
/// `detail` of the report when no endpoint is configured.
pub const NO_ENDPOINT: &str = "no LLM endpoint configured";
pub const ENV_BASE_URL: &str = "ASSAY_LLM_BASE_URL";
pub const ENV_API_KEY: &str = "ASSAY_LLM_API_KEY";
pub const ENV_MODEL: &str = "ASSAY_LLM_MODEL";
pub const ENV_PROMPT_PRICE: &str = "ASSAY_LLM_PROMPT_PRICE";
pub const ENV_COMPLETION_PRICE: &str = "ASSAY_LLM_COMPLETION_PRICE";
/// Used when `ASSAY_LLM_MODEL` is not set.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
pub const DEFAULT_MAX_SOURCE_BYTES: usize = 200_000;

/// File extensions the judge reads.
pub const SOURCE_EXTENSIONS: [&str; 6] = ["py", "js", "html", "css", "toml", "txt"];
/// Folders never read (besides hidden ones).
const SKIPPED_DIRS: [&str; 6] = [
    "node_modules",
    ".venv",
    "venv",
    "__pycache__",
    ".git",
    "target",
];
/// Assay's own files in an app folder: not part of the app (`expected.toml` lists the
/// planted defects of the sample apps and would give the answers away).
const ASSAY_FILES: [&str; 2] = ["assay-app.toml", "expected.toml"];
/// Larger single files are not read at all.
const MAX_FILE_BYTES: u64 = 2_000_000;

pub const VERDICTS: [&str; 3] = ["met", "partial", "not_met"];
pub const CRITERIA: [&str; 5] = [
    "readability",
    "error_handling",
    "security_practices",
    "structure",
    "api_conformance",
];

// ---------------------------------------------------------------------------------------
// Configuration

#[derive(Clone)]
pub struct JudgeConfig {
    /// Up to and including the API version, e.g. `https://api.openai.com/v1`;
    /// `/chat/completions` is appended.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    /// For the whole request, answer included.
    pub timeout: Duration,
    /// Cap on the source text put in the prompt.
    pub max_source_bytes: usize,
    /// USD per prompt and completion token, for endpoints that do not report what a call
    /// cost (`ASSAY_LLM_PROMPT_PRICE`, `ASSAY_LLM_COMPLETION_PRICE`): a dollar budget can
    /// only count what it is told.
    pub prices: (Option<f64>, Option<f64>),
}

impl fmt::Debug for JudgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JudgeConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_source_bytes", &self.max_source_bytes)
            .field("prices", &self.prices)
            .finish()
    }
}

impl JudgeConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        JudgeConfig {
            base_url: base_url.into().trim().trim_end_matches('/').to_string(),
            api_key: None,
            model: model.into(),
            prices: (None, None),
            timeout: DEFAULT_TIMEOUT,
            max_source_bytes: DEFAULT_MAX_SOURCE_BYTES,
        }
    }

    /// From `ASSAY_LLM_BASE_URL`, `ASSAY_LLM_API_KEY` and `ASSAY_LLM_MODEL`; `None` when
    /// no base URL is set (the judge is then skipped).
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`JudgeConfig::from_env`] over any variable lookup. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let base_url = get(ENV_BASE_URL)?;
        let mut config = JudgeConfig::new(
            base_url,
            get(ENV_MODEL).unwrap_or_else(|| DEFAULT_MODEL.to_string()),
        );
        config.api_key = get(ENV_API_KEY);
        let price = |name: &str| {
            get(name)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|p| *p >= 0.0)
        };
        config.prices = (price(ENV_PROMPT_PRICE), price(ENV_COMPLETION_PRICE));
        Some(config)
    }

    /// The chat-completions URL.
    pub fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

// ---------------------------------------------------------------------------------------
// Errors

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// Worth retrying later: 408, 429, 5xx, timeouts, connection errors.
    #[error("LLM endpoint unavailable: {message}")]
    Transient {
        message: String,
        status: Option<u16>,
        /// From the server's `Retry-After` header, when it sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// Permanent until the configuration changes: 401/403/404 and other refusals.
    #[error("LLM endpoint refused the request: {message}")]
    Config {
        message: String,
        status: Option<u16>,
    },
    /// The model's answer was still invalid after one re-ask. Retryable.
    #[error("LLM answer malformed after {} attempts: {}", exchanges.len(), errors.join("; "))]
    Malformed {
        /// The validation errors of the last answer.
        errors: Vec<String>,
        /// Every request and answer, for artifacts.
        exchanges: Vec<Exchange>,
    },
    /// The Assay server refused the call: the pipeline's budget is spent or the model's
    /// quota is exhausted. Permanent, and says nothing about the app or the worker.
    #[error("the LLM judge may not call the model: {message}")]
    Stopped { code: String, message: String },
    #[error("reading the app at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl JudgeError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JudgeError::Transient { .. } | JudgeError::Malformed { .. }
        )
    }

    /// A stable code for the failure.
    pub fn code(&self) -> &'static str {
        match self {
            JudgeError::Transient { .. } => "llm_unavailable",
            JudgeError::Config { .. } => "llm_config",
            JudgeError::Malformed { .. } => "llm_malformed",
            JudgeError::Stopped { code, .. } if code == "budget_exhausted" => "budget_exhausted",
            JudgeError::Stopped { code, .. } if code == "quota_exhausted" => "quota_exhausted",
            JudgeError::Stopped { code, .. } if code == "not_running" => "not_running",
            JudgeError::Stopped { .. } => "llm_stopped",
            JudgeError::Io { .. } => "app_unreadable",
        }
    }

    /// The engine's failure for this error (retry class, code, `Retry-After`).
    pub fn to_failure(&self) -> Failure {
        let mut failure = if self.is_retryable() {
            Failure::retryable(self.code(), self.to_string())
        } else {
            Failure::permanent(self.code(), self.to_string())
        };
        // The provider's trouble (and a spent budget or quota) says nothing about the app
        // or the worker: it opens no breaker and quarantines no worker.
        if matches!(
            self,
            JudgeError::Stopped { .. } | JudgeError::Transient { .. }
        ) {
            failure = failure.external();
        }
        if let JudgeError::Transient {
            retry_after: Some(d),
            ..
        } = self
        {
            failure.retry_after_ms = Some(d.as_millis() as i64);
        }
        failure
    }
}

// ---------------------------------------------------------------------------------------
// Report

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeStatus {
    Success,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Partial,
    NotMet,
}

impl Verdict {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "met" => Some(Verdict::Met),
            "partial" => Some(Verdict::Partial),
            "not_met" => Some(Verdict::NotMet),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Partial => "partial",
            Verdict::NotMet => "not_met",
        }
    }

    /// Its weight in the pass rate: met 1, partial 0.5, not met 0.
    pub fn credit(self) -> f64 {
        match self {
            Verdict::Met => 1.0,
            Verdict::Partial => 0.5,
            Verdict::NotMet => 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Relative to the app folder, `/` separators.
    pub file: String,
    pub quote: String,
    #[serde(default)]
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequirementVerdict {
    /// `backend-1`, `frontend-2`, ...
    pub id: String,
    /// The template's text of the requirement.
    pub requirement: String,
    pub verdict: Verdict,
    /// Only quotes that were found in the named file.
    pub evidence: Vec<Evidence>,
}

/// A quote the model cited that does not occur in the file it named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnverifiedQuote {
    pub requirement_id: String,
    pub file: String,
    pub quote: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityScore {
    pub criterion: String,
    /// 1 (poor) ..= 5 (excellent).
    pub score: u8,
    #[serde(default)]
    pub justification: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// One request to the API and what came back, as sent and received (the key is in a
/// header, never in these bodies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    pub request: String,
    pub status: u16,
    pub response: String,
}

/// What the judge read of the app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcesRead {
    /// Files put (at least partly) in the prompt.
    pub files: Vec<String>,
    /// Bytes of source in the prompt.
    pub bytes: usize,
    /// True when the cap cut or left out files.
    pub truncated: bool,
    /// Files cut short or left out by the cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<String>,
    /// Files not read, with the reason (binary, too large, symlink).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    pub analyzer: String,
    pub status: JudgeStatus,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The model asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_requested: Option<String>,
    /// The model id the API says answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Every template requirement, in template order.
    pub requirements: Vec<RequirementVerdict>,
    /// (met + 0.5 × partial) / requirements; `None` without requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_rate: Option<f64>,
    pub quality: Vec<QualityScore>,
    #[serde(default)]
    pub summary: String,
    /// How many cited quotes were not found in their file (and were dropped).
    pub unverified_quotes: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unverified: Vec<UnverifiedQuote>,
    /// Summed over attempts.
    pub usage: Usage,
    /// 1, or 2 when the first answer was re-asked.
    pub attempts: u32,
    #[serde(default)]
    pub sources: SourcesRead,
    /// Raw request and response bodies, one per attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<Exchange>,
}

impl JudgeReport {
    /// `success`, or `skipped: <reason>`.
    pub fn status_line(&self) -> String {
        match (self.status, &self.detail) {
            (JudgeStatus::Success, _) => "success".to_string(),
            (JudgeStatus::Skipped, Some(d)) => format!("skipped: {d}"),
            (JudgeStatus::Skipped, None) => "skipped".to_string(),
        }
    }
}

/// The report when the judge does not run, e.g. `skipped_report(NO_ENDPOINT)`.
pub fn skipped_report(reason: impl Into<String>) -> JudgeReport {
    JudgeReport {
        analyzer: ANALYZER.to_string(),
        status: JudgeStatus::Skipped,
        detail: Some(reason.into()),
        template: None,
        model_requested: None,
        model: None,
        requirements: Vec::new(),
        pass_rate: None,
        quality: Vec::new(),
        summary: String::new(),
        unverified_quotes: 0,
        unverified: Vec::new(),
        usage: Usage::default(),
        attempts: 0,
        sources: SourcesRead::default(),
        exchanges: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Sources

/// One file of the app as read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Relative, `/` separators.
    pub path: String,
    pub text: String,
}

/// The app's source files in path order (see [`SOURCE_EXTENSIONS`]); binaries,
/// symlinks, hidden and dependency folders and Assay's own manifest files are left out.
pub fn collect_sources(app_dir: &Path) -> Result<(Vec<SourceFile>, Vec<String>), JudgeError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    walk(app_dir, app_dir, &mut files, &mut skipped)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((files, skipped))
}

fn walk(
    root: &Path,
    dir: &Path,
    files: &mut Vec<SourceFile>,
    skipped: &mut Vec<String>,
) -> Result<(), JudgeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| JudgeError::Io { path, source }
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        entries.push(entry.map_err(io(dir))?);
    }
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = relative(root, &path);
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.file_type().is_symlink() {
            skipped.push(format!("{rel} (symlink)"));
            continue;
        }
        if meta.is_dir() {
            if name.starts_with('.') || SKIPPED_DIRS.contains(&name.as_str()) {
                continue;
            }
            walk(root, &path, files, skipped)?;
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        if dir == root && ASSAY_FILES.contains(&name.as_str()) {
            continue;
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !ext.is_some_and(|e| SOURCE_EXTENSIONS.contains(&e.as_str())) {
            continue;
        }
        if meta.len() > MAX_FILE_BYTES {
            skipped.push(format!("{rel} (too large: {} bytes)", meta.len()));
            continue;
        }
        // A second name of a file that may live outside the app.
        if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
            skipped.push(format!("{rel} (hard link)"));
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if bytes.contains(&0) {
            skipped.push(format!("{rel} (binary)"));
            continue;
        }
        match String::from_utf8(bytes) {
            Ok(text) => files.push(SourceFile { path: rel, text }),
            Err(_) => skipped.push(format!("{rel} (not UTF-8)")),
        }
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Render the files for the prompt, at most `cap` bytes of file text in all; a file that
/// does not fit is cut (at a line end when possible) and the rest are left out, with a
/// note saying so.
fn render_sources(files: &[SourceFile], cap: usize, sources: &mut SourcesRead) -> String {
    let mut out = String::new();
    let mut left = cap;
    for (i, f) in files.iter().enumerate() {
        if left == 0 {
            let rest: Vec<String> = files[i..].iter().map(|f| f.path.clone()).collect();
            out.push_str(&format!(
                "[NOTE: the source was truncated to {cap} bytes; these files were left out: {}]\n",
                rest.join(", ")
            ));
            sources.truncated = true;
            sources.cut.extend(rest);
            break;
        }
        let (shown, cut) = if f.text.len() <= left {
            (f.text.as_str(), false)
        } else {
            let mut end = left;
            while !f.text.is_char_boundary(end) {
                end -= 1;
            }
            if let Some(nl) = f.text[..end].rfind('\n') {
                if nl > 0 {
                    end = nl + 1;
                }
            }
            (&f.text[..end], true)
        };
        left = left.saturating_sub(shown.len());
        if cut {
            // Whatever remains of the cap is not enough for a further file to be useful.
            left = 0;
        }
        sources.files.push(f.path.clone());
        sources.bytes += shown.len();
        out.push_str(&format!("===== FILE: {} =====\n", f.path));
        out.push_str(shown);
        if !shown.ends_with('\n') {
            out.push('\n');
        }
        if cut {
            out.push_str(&format!(
                "[NOTE: file truncated: {} of {} bytes shown]\n",
                shown.len(),
                f.text.len()
            ));
            sources.truncated = true;
            sources.cut.push(f.path.clone());
        }
        out.push_str(&format!("===== END FILE: {} =====\n\n", f.path));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Prompt

const SYSTEM_PROMPT: &str = "You are a meticulous senior software reviewer. You judge \
whether a small web application meets the requirements of its specification, using only \
the source files you are given. You never guess: a requirement is \"met\" only when the \
code clearly implements it, \"partial\" when it is implemented incompletely or with \
exceptions, and \"not_met\" when it is missing or contradicted by the code. Evidence \
quotes must be copied exactly, character for character, from the named file (one or a \
few consecutive lines; no ellipses, no paraphrase). You answer with a single JSON object \
and nothing else.";

/// The user message: the specification, the answer format and the files.
pub fn build_prompt(template: &Template, sources_text: &str) -> String {
    let mut p = String::new();
    p.push_str(&format!(
        "# Specification: {} ({})\n\n{}\n\n",
        template.title, template.name, template.description
    ));
    p.push_str("## Requirements\n\n");
    for r in template.requirements.numbered() {
        p.push_str(&format!("- {}: {}\n", r.id, r.text));
    }
    if !template.endpoints.is_empty() {
        p.push_str("\n## HTTP endpoints\n\n");
        for e in &template.endpoints {
            p.push_str(&format!(
                "- {} {}{}: {}",
                e.method,
                e.path,
                if e.auth { " (requires auth)" } else { "" },
                e.description
            ));
            if let Some(q) = &e.query {
                p.push_str(&format!("; query {}", toml_inline(q)));
            }
            if let Some(r) = &e.request {
                p.push_str(&format!("; request body {}", toml_inline(r)));
            }
            p.push_str(&format!(
                "; responds {} with {}\n",
                e.response.status,
                value_inline(&e.response.body)
            ));
        }
    }
    if !template.data_model.is_empty() {
        p.push_str("\n## Data model\n\n");
        for (entity, fields) in &template.data_model {
            let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            p.push_str(&format!("- {entity} {{ {} }}\n", fields.join(", ")));
        }
    }
    let ids: Vec<String> = template
        .requirements
        .numbered()
        .into_iter()
        .map(|r| format!("\"{}\"", r.id))
        .collect();
    p.push_str(&format!(
        r#"
## Your task

Judge the application below against every requirement and score its quality.
Answer with ONLY this JSON object:

{{
  "requirements": [
    {{"id": "backend-1", "requirement": "<the requirement text>", "verdict": "met" | "partial" | "not_met",
      "evidence": [{{"file": "<path as shown in FILE headers>", "quote": "<text copied exactly from that file>", "explanation": "<why this supports the verdict>"}}]}}
  ],
  "quality": [
    {{"criterion": "readability" | "error_handling" | "security_practices" | "structure" | "api_conformance", "score": 1-5, "justification": "<one or two sentences>"}}
  ],
  "summary": "<two or three sentences>"
}}

Rules:
- "requirements" has exactly one entry for each of these ids, no others: {ids}.
- "verdict" is one of "met", "partial", "not_met".
- "evidence" quotes are copied exactly from the named file; give at least one quote for "met" and "partial".
  For "not_met" quote the code that shows the gap, or give an empty list if the code is simply absent.
- "quality" has exactly one entry for each criterion: {criteria}; "score" is an integer from 1 (poor) to 5 (excellent).

# Application source files

{sources_text}"#,
        ids = ids.join(", "),
        criteria = CRITERIA.join(", "),
    ));
    p
}

fn toml_inline(t: &toml::Table) -> String {
    let fields: Vec<String> = t
        .iter()
        .map(|(k, v)| format!("{k}: {}", value_inline(v)))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn value_inline(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) if t.is_empty() => "no body".to_string(),
        toml::Value::Table(t) => toml_inline(t),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// Collapse every run of whitespace to one space, trimmed.
pub fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn normalize_path(p: &str) -> String {
    let p = p.trim().replace('\\', "/");
    let mut p = p.as_str();
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.trim_start_matches('/').to_string()
}

/// A validated answer, before quotes are checked against the files.
#[derive(Debug)]
struct Answer {
    requirements: BTreeMap<String, (Verdict, Vec<Evidence>)>,
    quality: Vec<QualityScore>,
    summary: String,
}

/// Strip a Markdown code fence some models put around JSON despite being asked not to.
fn strip_fence(s: &str) -> &str {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        if let Some(inner) = rest.trim_end().strip_suffix("```") {
            return inner.trim();
        }
    }
    t
}

/// Check the model's answer against the schema and the template's requirement ids;
/// every problem is reported.
fn validate_answer(content: &str, ids: &[String]) -> Result<Answer, Vec<String>> {
    let value: Value = match serde_json::from_str(strip_fence(content)) {
        Ok(v) => v,
        Err(e) => {
            let excerpt: String = content.chars().take(80).collect();
            return Err(vec![format!(
                "the answer is not valid JSON ({e}); it starts with {excerpt:?}"
            )]);
        }
    };
    let Some(obj) = value.as_object() else {
        return Err(vec!["the answer must be a JSON object".to_string()]);
    };
    let mut errors = Vec::new();
    let mut requirements = BTreeMap::new();
    let known: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    match obj.get("requirements").and_then(Value::as_array) {
        None => errors.push("\"requirements\" must be an array".to_string()),
        Some(items) => {
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let Some(id) = item.get("id").and_then(Value::as_str) else {
                    errors.push(format!("requirements[{i}] has no string \"id\""));
                    continue;
                };
                if !known.contains(id) {
                    errors.push(format!(
                        "requirements[{i}] has unknown id {id:?} (expected one of {})",
                        ids.join(", ")
                    ));
                    continue;
                }
                if !seen.insert(id) {
                    errors.push(format!("requirement {id:?} appears more than once"));
                    continue;
                }
                let verdict = match item.get("verdict").and_then(Value::as_str) {
                    Some(v) => match Verdict::parse(v) {
                        Some(v) => Some(v),
                        None => {
                            errors.push(format!(
                                "requirement {id:?} has verdict {v:?}; use \"met\", \"partial\" or \"not_met\""
                            ));
                            None
                        }
                    },
                    None => {
                        errors.push(format!("requirement {id:?} has no string \"verdict\""));
                        None
                    }
                };
                let mut evidence = Vec::new();
                match item.get("evidence") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(list)) => {
                        for (j, e) in list.iter().enumerate() {
                            let file = e.get("file").and_then(Value::as_str);
                            let quote = e.get("quote").and_then(Value::as_str);
                            match (file, quote) {
                                (Some(file), Some(quote)) => evidence.push(Evidence {
                                    file: file.to_string(),
                                    quote: quote.to_string(),
                                    explanation: e
                                        .get("explanation")
                                        .and_then(Value::as_str)
                                        .unwrap_or_default()
                                        .to_string(),
                                }),
                                _ => errors.push(format!(
                                    "requirement {id:?} evidence[{j}] needs string \"file\" and \"quote\""
                                )),
                            }
                        }
                    }
                    Some(_) => {
                        errors.push(format!("requirement {id:?}: \"evidence\" must be an array"))
                    }
                }
                if let Some(verdict) = verdict {
                    requirements.insert(id.to_string(), (verdict, evidence));
                }
            }
            let missing: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|id| {
                    !items
                        .iter()
                        .any(|item| item.get("id").and_then(Value::as_str) == Some(id))
                })
                .collect();
            if !missing.is_empty() {
                errors.push(format!(
                    "requirements missing from the answer: {}",
                    missing.join(", ")
                ));
            }
        }
    }
    let mut quality = Vec::new();
    match obj.get("quality").and_then(Value::as_array) {
        None => errors.push("\"quality\" must be an array".to_string()),
        Some(items) => {
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let Some(criterion) = item.get("criterion").and_then(Value::as_str) else {
                    errors.push(format!("quality[{i}] has no string \"criterion\""));
                    continue;
                };
                if !CRITERIA.contains(&criterion) {
                    errors.push(format!(
                        "quality[{i}] has unknown criterion {criterion:?} (expected one of {})",
                        CRITERIA.join(", ")
                    ));
                    continue;
                }
                if !seen.insert(criterion.to_string()) {
                    errors.push(format!(
                        "quality criterion {criterion:?} appears more than once"
                    ));
                    continue;
                }
                let score = item.get("score").and_then(|s| {
                    s.as_u64().or_else(|| {
                        s.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                });
                match score {
                    Some(s @ 1..=5) => quality.push(QualityScore {
                        criterion: criterion.to_string(),
                        score: s as u8,
                        justification: item
                            .get("justification")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    }),
                    _ => errors.push(format!(
                        "quality {criterion:?} has score {}; it must be an integer from 1 to 5",
                        item.get("score")
                            .map(Value::to_string)
                            .unwrap_or_else(|| "missing".into())
                    )),
                }
            }
            let missing: Vec<&str> = CRITERIA
                .iter()
                .copied()
                .filter(|c| !seen.contains(*c))
                .collect();
            if !missing.is_empty() {
                errors.push(format!(
                    "quality criteria missing from the answer: {}",
                    missing.join(", ")
                ));
            }
        }
    }
    let summary = match obj.get("summary") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            errors.push("\"summary\" must be a string".to_string());
            String::new()
        }
    };
    if errors.is_empty() {
        Ok(Answer {
            requirements,
            quality,
            summary,
        })
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// The parts of a chat-completions response the judge uses.
struct Completion {
    content: String,
    model: Option<String>,
    usage: Usage,
    finish_reason: Option<String>,
}

fn parse_completion(body: &str) -> Result<Completion, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("the API response is not JSON ({e})"))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| "the API response has no choices[0]".to_string())?;
    let content = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let u = v.get("usage");
    let num = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let mut usage = Usage {
        prompt_tokens: num("prompt_tokens"),
        completion_tokens: num("completion_tokens"),
        total_tokens: num("total_tokens"),
    };
    if usage.total_tokens == 0 {
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    }
    Ok(Completion {
        content,
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        usage,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn redact(text: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if k.len() >= 4 => text.replace(k, "<redacted>"),
        _ => text.to_string(),
    }
}

fn excerpt(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.chars().count() <= max {
        t.to_string()
    } else {
        format!("{}…", t.chars().take(max).collect::<String>())
    }
}

/// `Retry-After` in seconds (integer or decimal). HTTP dates are not interpreted.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn transport_error(e: reqwest::Error, config: &JudgeConfig) -> JudgeError {
    let key = config.api_key.as_deref();
    let (builder, timeout, connect) = (e.is_builder(), e.is_timeout(), e.is_connect());
    // Without the URL: it is in the message already, and keeps the message short.
    let what = redact(&e.without_url().to_string(), key);
    if builder {
        JudgeError::Config {
            message: format!("invalid request to {}: {what}", config.endpoint()),
            status: None,
        }
    } else if timeout {
        JudgeError::Transient {
            message: format!(
                "no answer from {} within {:?}",
                config.endpoint(),
                config.timeout
            ),
            status: None,
            retry_after: None,
        }
    } else if connect {
        JudgeError::Transient {
            message: format!("cannot connect to {}: {what}", config.endpoint()),
            status: None,
            retry_after: None,
        }
    } else {
        JudgeError::Transient {
            message: format!("request to {} failed: {what}", config.endpoint()),
            status: None,
            retry_after: None,
        }
    }
}

/// The most of an LLM endpoint's answer the judge reads.
const MAX_JUDGE_ANSWER: usize = 16 << 20;

/// Send one request; a non-2xx answer becomes the matching error.
async fn post(
    client: &reqwest::Client,
    config: &JudgeConfig,
    body: &Value,
) -> Result<(u16, String), JudgeError> {
    let mut req = client.post(config.endpoint()).json(body);
    if let Some(key) = &config.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| transport_error(e, config))?;
    let status = resp.status();
    let retry = retry_after(resp.headers());
    let text = crate::body::read_within(resp, MAX_JUDGE_ANSWER)
        .await
        .map_err(|e| transport_error(e, config))?;
    if text.truncated {
        return Err(JudgeError::Config {
            message: format!(
                "{} answered with more than {} MiB, the most Assay reads of one answer",
                config.endpoint(),
                MAX_JUDGE_ANSWER >> 20
            ),
            status: Some(status.as_u16()),
        });
    }
    let text = text.text();
    let text = redact(&text, config.api_key.as_deref());
    let code = status.as_u16();
    if status.is_success() {
        return Ok((code, text));
    }
    let message = format!(
        "{} answered {status}: {}",
        config.endpoint(),
        excerpt(&text, 300)
    );
    if code == 402 {
        return Err(JudgeError::Stopped {
            code: "quota_exhausted".into(),
            message,
        });
    }
    if code == 408 || code == 429 || status.is_server_error() {
        Err(JudgeError::Transient {
            message,
            status: Some(code),
            retry_after: retry,
        })
    } else {
        Err(JudgeError::Config {
            message,
            status: Some(code),
        })
    }
}

// ---------------------------------------------------------------------------------------
// The gate

/// One call as a [`Gate`] accounts it.
pub struct CallRecord<'a> {
    pub model: &'a str,
    /// The model id as the provider resolved it.
    pub resolved_model: Option<String>,
    pub usage: Usage,
    /// What the call cost: as the provider reported it, or by the configured prices.
    pub cost_usd: Option<f64>,
    /// `None` for a call that answered; the failure otherwise.
    pub error: Option<&'a JudgeError>,
    /// Served from the gate's cache: nothing was paid.
    pub cached: bool,
    /// The request the call sent.
    pub request: &'a Value,
    /// An answer that validated, to keep for `request`: recorded and kept in one step, so
    /// a paid valid answer is never lost.
    pub keep: Option<&'a str>,
}

/// What every judge call goes through on its way to the model: nothing ([`Direct`]), or,
/// for the `ai` kind on a worker, the Assay server's response cache (a retried or resumed
/// job never pays twice), the model's shared limiter with the pipeline's budget, and its
/// accounting.
#[async_trait::async_trait]
pub trait Gate: Send + Sync {
    /// A valid answer kept for this exact request (the chat-completions body), if any.
    async fn cached(&self, request: &Value) -> Result<Option<String>, JudgeError>;
    /// Wait for a slot to call `model`: the permit to give back with the record.
    async fn acquire(&self, model: &str) -> Result<Option<u64>, JudgeError>;
    /// Account one call, made with `permit` (or served from the cache), giving the slot
    /// back and keeping `call.keep`.
    async fn record(&self, permit: Option<u64>, call: CallRecord<'_>) -> Result<(), JudgeError>;
}

/// Straight to the endpoint: no cache, no shared limits, no accounting.
pub struct Direct;

#[async_trait::async_trait]
impl Gate for Direct {
    async fn cached(&self, _request: &Value) -> Result<Option<String>, JudgeError> {
        Ok(None)
    }
    async fn acquire(&self, _model: &str) -> Result<Option<u64>, JudgeError> {
        Ok(None)
    }
    async fn record(&self, _permit: Option<u64>, _call: CallRecord<'_>) -> Result<(), JudgeError> {
        Ok(())
    }
}

/// What a call cost: `usage.cost` when the provider reports it, else by the configured
/// prices, else unknown.
fn call_cost(config: &JudgeConfig, body: &str, usage: &Usage) -> Option<f64> {
    reported_cost(body).or(match config.prices {
        (None, None) => None,
        (p, c) => Some(
            p.unwrap_or(0.0) * usage.prompt_tokens as f64
                + c.unwrap_or(0.0) * usage.completion_tokens as f64,
        ),
    })
}

/// One paid call and its record, as a task of its own: a job stopped mid-call (cancelled,
/// timed out, its worker shutting down) still accounts what was paid, gives the slot back
/// and keeps a valid answer, so that its retry does not pay again.
async fn protected_call(
    gate: std::sync::Arc<dyn Gate>,
    client: reqwest::Client,
    config: JudgeConfig,
    body: Value,
    ids: Vec<String>,
    permit: Option<u64>,
) -> Result<(u16, String), JudgeError> {
    let task = tokio::spawn(async move {
        let answer = post(&client, &config, &body).await;
        let parsed = answer
            .as_ref()
            .ok()
            .and_then(|(_, text)| parse_completion(text).ok());
        let valid = parsed
            .as_ref()
            .is_some_and(|c| validate_answer(&c.content, &ids).is_ok());
        let usage = parsed.as_ref().map(|c| c.usage).unwrap_or_default();
        let recorded = gate
            .record(
                permit,
                CallRecord {
                    model: &config.model,
                    resolved_model: parsed.as_ref().and_then(|c| c.model.clone()),
                    usage,
                    cost_usd: answer
                        .as_ref()
                        .ok()
                        .and_then(|(_, text)| call_cost(&config, text, &usage)),
                    error: answer.as_ref().err(),
                    cached: false,
                    request: &body,
                    keep: match (&answer, valid) {
                        (Ok((_, text)), true) => Some(text.as_str()),
                        _ => None,
                    },
                },
            )
            .await;
        recorded.and(answer)
    });
    task.await.map_err(|e| JudgeError::Transient {
        message: format!("the judge's call failed: {e}"),
        status: None,
        retry_after: None,
    })?
}

/// `usage.cost` of a chat-completions response, when the provider reports it.
fn reported_cost(body: &str) -> Option<f64> {
    serde_json::from_str::<Value>(body)
        .ok()?
        .get("usage")?
        .get("cost")?
        .as_f64()
}

// ---------------------------------------------------------------------------------------
// The judge

/// Judge the app in `app_dir` against `template`. Makes one request, or two when the
/// first answer is malformed; each goes through `gate`.
pub async fn judge_app(
    config: &JudgeConfig,
    template: &Template,
    app_dir: &Path,
    gate: std::sync::Arc<dyn Gate>,
) -> Result<JudgeReport, JudgeError> {
    let (files, skipped) = collect_sources(app_dir)?;
    let mut sources = SourcesRead {
        skipped,
        ..Default::default()
    };
    let sources_text = render_sources(&files, config.max_source_bytes, &mut sources);
    let numbered = template.requirements.numbered();
    let ids: Vec<String> = numbered.iter().map(|r| r.id.clone()).collect();

    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(30)))
        .build()
        .map_err(|e| transport_error(e, config))?;

    let mut messages = vec![
        json!({"role": "system", "content": SYSTEM_PROMPT}),
        json!({"role": "user", "content": build_prompt(template, &sources_text)}),
    ];
    let mut exchanges = Vec::new();
    let mut usage = Usage::default();
    let mut model = None;
    let mut last_errors = Vec::new();

    for attempt in 1..=2u32 {
        let body = json!({
            "model": config.model,
            "messages": messages,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        });
        let request_text = serde_json::to_string(&body).unwrap_or_default();
        tracing::debug!(
            url = %config.endpoint(),
            model = %config.model,
            attempt,
            bytes = request_text.len(),
            "asking the LLM judge"
        );
        let (status, response_text) = match gate.cached(&body).await? {
            Some(text) => {
                let parsed = parse_completion(&text).ok();
                let usage = parsed.as_ref().map(|c| c.usage).unwrap_or_default();
                gate.record(
                    None,
                    CallRecord {
                        model: &config.model,
                        resolved_model: parsed.as_ref().and_then(|c| c.model.clone()),
                        usage,
                        cost_usd: call_cost(config, &text, &usage),
                        error: None,
                        cached: true,
                        request: &body,
                        keep: None,
                    },
                )
                .await?;
                (200, text)
            }
            None => {
                let permit = gate.acquire(&config.model).await?;
                protected_call(
                    gate.clone(),
                    client.clone(),
                    config.clone(),
                    body.clone(),
                    ids.clone(),
                    permit,
                )
                .await?
            }
        };
        exchanges.push(Exchange {
            request: request_text,
            status,
            response: response_text.clone(),
        });
        let (content, errors) = match parse_completion(&response_text) {
            Ok(c) => {
                usage.add(c.usage);
                if c.model.is_some() {
                    model = c.model.clone();
                }
                match validate_answer(&c.content, &ids) {
                    Ok(answer) => {
                        return Ok(build_report(
                            config, template, &files, sources, answer, model, usage, attempt,
                            exchanges,
                        ));
                    }
                    Err(mut errors) => {
                        if c.finish_reason.as_deref() == Some("length") {
                            errors.push(
                                "the answer was cut off (finish_reason \"length\"); keep \
                                 explanations and quotes short"
                                    .to_string(),
                            );
                        }
                        (c.content, errors)
                    }
                }
            }
            Err(e) => (String::new(), vec![e]),
        };
        tracing::debug!(
            attempt,
            problems = errors.len(),
            "LLM judge answer malformed"
        );
        last_errors = errors;
        if attempt == 1 {
            messages.push(json!({"role": "assistant", "content": content}));
            messages.push(json!({"role": "user", "content": reask_message(&last_errors)}));
        }
    }
    Err(JudgeError::Malformed {
        errors: last_errors,
        exchanges,
    })
}

fn reask_message(errors: &[String]) -> String {
    let list: Vec<String> = errors.iter().map(|e| format!("- {e}")).collect();
    format!(
        "Your previous answer was not valid:\n{}\n\nAnswer again with ONLY the corrected JSON \
         object in the format described above, with every requirement id exactly once and \
         every quality criterion exactly once.",
        list.join("\n")
    )
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    config: &JudgeConfig,
    template: &Template,
    files: &[SourceFile],
    sources: SourcesRead,
    mut answer: Answer,
    model: Option<String>,
    usage: Usage,
    attempts: u32,
    exchanges: Vec<Exchange>,
) -> JudgeReport {
    let normalized: BTreeMap<&str, String> = files
        .iter()
        .map(|f| (f.path.as_str(), normalize_ws(&f.text)))
        .collect();
    let mut unverified = Vec::new();
    let mut requirements = Vec::new();
    for r in template.requirements.numbered() {
        let Some((verdict, evidence)) = answer.requirements.remove(&r.id) else {
            continue; // validation guarantees every id is present
        };
        let mut kept = Vec::new();
        for mut e in evidence {
            let file = normalize_path(&e.file);
            let quote = normalize_ws(&e.quote);
            let found = !quote.is_empty()
                && normalized
                    .get(file.as_str())
                    .is_some_and(|text| text.contains(&quote));
            if found {
                e.file = file;
                kept.push(e);
            } else {
                unverified.push(UnverifiedQuote {
                    requirement_id: r.id.clone(),
                    file: e.file,
                    quote: e.quote,
                });
            }
        }
        requirements.push(RequirementVerdict {
            id: r.id,
            requirement: r.text,
            verdict,
            evidence: kept,
        });
    }
    let pass_rate = (!requirements.is_empty()).then(|| {
        requirements.iter().map(|r| r.verdict.credit()).sum::<f64>() / requirements.len() as f64
    });
    let mut quality = answer.quality;
    quality.sort_by_key(|q| CRITERIA.iter().position(|c| *c == q.criterion));
    JudgeReport {
        analyzer: ANALYZER.to_string(),
        status: JudgeStatus::Success,
        detail: None,
        template: Some(template.name.clone()),
        model_requested: Some(config.model.clone()),
        model,
        requirements,
        pass_rate,
        quality,
        summary: answer.summary,
        unverified_quotes: unverified.len(),
        unverified,
        usage,
        attempts,
        sources,
        exchanges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        vec!["backend-1".into(), "backend-2".into()]
    }

    fn quality() -> Value {
        Value::Array(
            CRITERIA
                .iter()
                .map(|c| json!({"criterion": c, "score": 3, "justification": "ok"}))
                .collect(),
        )
    }

    #[test]
    fn a_valid_answer_passes_and_fences_are_tolerated() {
        let answer = json!({
            "requirements": [
                {"id": "backend-1", "verdict": "met", "evidence": []},
                {"id": "backend-2", "verdict": "partial", "evidence": [{"file": "a.py", "quote": "x"}]},
            ],
            "quality": quality(),
            "summary": "fine",
        });
        let a = validate_answer(&format!("```json\n{answer}\n```"), &ids()).unwrap();
        assert_eq!(a.requirements.len(), 2);
        assert_eq!(a.quality.len(), 5);
    }

    #[test]
    fn schema_violations_are_all_reported() {
        let answer = json!({
            "requirements": [
                {"id": "backend-1", "verdict": "yes"},
                {"id": "backend-1", "verdict": "met"},
                {"id": "backend-9", "verdict": "met"},
            ],
            "quality": [{"criterion": "readability", "score": 7}],
        });
        let errors = validate_answer(&answer.to_string(), &ids()).unwrap_err();
        let all = errors.join("\n");
        assert!(all.contains("verdict \"yes\""), "{all}");
        assert!(all.contains("more than once"), "{all}");
        assert!(all.contains("unknown id \"backend-9\""), "{all}");
        assert!(all.contains("missing from the answer: backend-2"), "{all}");
        assert!(all.contains("score 7"), "{all}");
        assert!(all.contains("criteria missing"), "{all}");
        let errors = validate_answer("not json", &ids()).unwrap_err();
        assert!(errors[0].contains("not valid JSON"));
    }

    #[test]
    fn sources_are_capped_with_a_note() {
        let files = vec![
            SourceFile {
                path: "a.py".into(),
                text: "line one\nline two\nline three\n".into(),
            },
            SourceFile {
                path: "b.py".into(),
                text: "other\n".into(),
            },
        ];
        let mut read = SourcesRead::default();
        let text = render_sources(&files, 20, &mut read);
        assert!(text.contains("line one\nline two\n"));
        assert!(!text.contains("line three"));
        assert!(text.contains("file truncated"));
        assert!(text.contains("left out: b.py"));
        assert!(read.truncated);
        assert_eq!(read.cut, vec!["a.py", "b.py"]);
        assert_eq!(read.files, vec!["a.py"]);

        let mut read = SourcesRead::default();
        let text = render_sources(&files, 10_000, &mut read);
        assert!(!read.truncated);
        assert!(text.contains("===== FILE: b.py ====="));
    }

    #[test]
    fn the_key_is_not_in_debug_output_and_from_lookup_reads_the_env_names() {
        let env: BTreeMap<&str, &str> = [
            (ENV_BASE_URL, "http://x/v1/"),
            (ENV_API_KEY, "sk-secret-123"),
            (ENV_MODEL, " "),
        ]
        .into();
        let c = JudgeConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.endpoint(), "http://x/v1/chat/completions");
        assert_eq!(c.model, DEFAULT_MODEL);
        assert!(!format!("{c:?}").contains("sk-secret"));
        assert_eq!(
            redact("key sk-secret-123!", Some("sk-secret-123")),
            "key <redacted>!"
        );
    }

    #[test]
    fn the_skipped_report_says_why() {
        let r = skipped_report(NO_ENDPOINT);
        assert_eq!(r.status_line(), "skipped: no LLM endpoint configured");
        assert_eq!(r.status, JudgeStatus::Skipped);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "skipped");
    }
}
