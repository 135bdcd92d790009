//! Pipeline spec files (TOML): parsing, validation with errors that point at a line and a
//! field, and planning (fan-out into jobs and the job-to-job dependency graph).
//!
//! A downstream job depends on the upstream jobs whose fan-out item agrees with its own on
//! every key they share (`wait = "item"`, the default, which streams), or on every job of
//! the upstream stage (`wait = "stage"`).

use crate::domain::{BreakerPolicy, RetryPolicy, MICROS_PER_MS};
use crate::generation::budget::Budget;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{file}: cannot read the spec: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}:{line}: {field}: {message}\n  fix: {fix}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
        fix: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    pipeline: RawPipeline,
    #[serde(default, rename = "stage")]
    stages: Vec<RawStage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    #[serde(default)]
    deadline: Option<Spanned<String>>,
    #[serde(default)]
    budget: Option<Spanned<RawBudget>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    #[serde(default)]
    usd: Option<f64>,
    #[serde(default)]
    tokens: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    #[serde(default)]
    wait: Option<Spanned<String>>,
    #[serde(default)]
    matrix: Option<Spanned<BTreeMap<String, Vec<toml::Value>>>>,
    #[serde(default)]
    items: Option<Spanned<Vec<toml::Value>>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    max_attempts: Option<Spanned<i64>>,
    #[serde(default)]
    backoff: Option<Spanned<String>>,
    #[serde(default)]
    backoff_max: Option<Spanned<String>>,
    #[serde(default)]
    concurrency: Option<Spanned<i64>>,
    #[serde(default)]
    deadline: Option<Spanned<String>>,
    #[serde(default)]
    breaker: Option<Spanned<i64>>,
    #[serde(default)]
    params: Option<Spanned<toml::Table>>,
}

/// A validated pipeline spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Spec {
    pub name: String,
    pub deadline_ms: Option<i64>,
    /// The pipeline's limit on LLM spending.
    #[serde(default)]
    pub budget: Option<Budget>,
    pub stages: Vec<StageSpec>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WaitMode {
    Item,
    Stage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageSpec {
    pub name: String,
    pub kind: String,
    pub after: Vec<String>,
    pub wait: WaitMode,
    /// Fan-out items; each is an object of key → value. One empty item when not fanned out.
    pub items: Vec<Map<String, Value>>,
    pub timeout_ms: i64,
    pub retry: RetryPolicy,
    pub concurrency: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub breaker: BreakerPolicy,
    pub params: Value,
}

pub const DEFAULT_TIMEOUT_MS: i64 = 10 * 60 * 1_000;
pub const DEFAULT_BREAKER_THRESHOLD: i64 = 10;

/// One job as planned from a spec, before it is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedJob {
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub item: Map<String, Value>,
    pub params: Value,
    pub depends_on: Vec<String>,
}

struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn err<T>(&self, span: &Spanned<T>, field: &str, message: String, fix: &str) -> SpecError {
        SpecError::Invalid {
            file: self.file.to_string(),
            line: self.line(span.span().start),
            field: field.to_string(),
            message,
            fix: fix.to_string(),
        }
    }
}

pub fn load(path: &Path) -> Result<Spec, SpecError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text)
}

pub fn parse(file: &str, text: &str) -> Result<Spec, SpecError> {
    let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Syntax {
        file: file.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let loc = Locator { file, text };
    let deadline_ms = raw
        .pipeline
        .deadline
        .as_ref()
        .map(|d| duration_ms(&loc, d, "pipeline.deadline"))
        .transpose()?;
    if raw.pipeline.name.get_ref().trim().is_empty() {
        return Err(loc.err(
            &raw.pipeline.name,
            "pipeline.name",
            "the pipeline name is empty".into(),
            "give the pipeline a name, e.g. name = \"nightly-eval\"",
        ));
    }
    if raw.stages.is_empty() {
        return Err(SpecError::Invalid {
            file: file.into(),
            line: 1,
            field: "stage".into(),
            message: "the spec declares no stages".into(),
            fix: "add at least one [[stage]] table with a name and a kind".into(),
        });
    }

    let mut seen = HashSet::new();
    let mut stages = Vec::with_capacity(raw.stages.len());
    for (index, rs) in raw.stages.iter().enumerate() {
        let at = |f: &str| format!("stage[{index}].{f}");
        let name = rs.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(loc.err(
                &rs.name,
                &at("name"),
                format!("`{name}` is not a valid stage name"),
                "use letters, digits, `-` and `_` only, e.g. name = \"analyze-static\"",
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(loc.err(
                &rs.name,
                &at("name"),
                format!("stage `{name}` is declared twice"),
                "give every stage a unique name",
            ));
        }
        let kind = rs.kind.get_ref().clone();
        if !crate::kinds::KNOWN_KINDS.contains(&kind.as_str()) {
            return Err(loc.err(
                &rs.kind,
                &at("kind"),
                format!("unknown job kind `{kind}`"),
                &format!("use one of: {}", crate::kinds::KNOWN_KINDS.join(", ")),
            ));
        }
        let mut after = Vec::new();
        for dep in &rs.after {
            if !seen.contains(dep.get_ref()) || dep.get_ref() == &name {
                return Err(loc.err(
                    dep,
                    &at("after"),
                    format!(
                        "stage `{name}` runs after `{}`, which is not declared before it",
                        dep.get_ref()
                    ),
                    "declare stages in order and name only earlier stages in `after`",
                ));
            }
            after.push(dep.get_ref().clone());
        }
        let wait =
            match rs.wait.as_ref().map(|w| w.get_ref().as_str()) {
                None | Some("item") => WaitMode::Item,
                Some("stage") => WaitMode::Stage,
                Some(other) => return Err(loc.err(
                    rs.wait.as_ref().unwrap(),
                    &at("wait"),
                    format!("unknown wait mode `{other}`"),
                    "use wait = \"item\" (stream each matching upstream job) or wait = \"stage\"",
                )),
            };
        let items = fan_out(&loc, rs, &at)?;
        let timeout_ms = rs
            .timeout
            .as_ref()
            .map(|t| duration_ms(&loc, t, &at("timeout")))
            .transpose()?
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        let mut retry = RetryPolicy::default();
        if let Some(m) = &rs.max_attempts {
            if *m.get_ref() < 1 {
                return Err(loc.err(
                    m,
                    &at("max_attempts"),
                    format!("max_attempts is {}", m.get_ref()),
                    "use 1 (no retries) or more",
                ));
            }
            retry.max_attempts = *m.get_ref();
        }
        if let Some(b) = &rs.backoff {
            retry.backoff_base_ms = duration_ms(&loc, b, &at("backoff"))?;
        }
        retry.backoff_max_ms = match &rs.backoff_max {
            Some(b) => duration_ms(&loc, b, &at("backoff_max"))?,
            None => retry.backoff_max_ms.max(retry.backoff_base_ms),
        };
        let concurrency = match &rs.concurrency {
            Some(c) if *c.get_ref() < 1 => {
                return Err(loc.err(
                    c,
                    &at("concurrency"),
                    format!("concurrency is {}", c.get_ref()),
                    "use a positive number of jobs that may run at once, or leave it out",
                ))
            }
            Some(c) => Some(*c.get_ref()),
            None => None,
        };
        let deadline_ms = rs
            .deadline
            .as_ref()
            .map(|d| duration_ms(&loc, d, &at("deadline")))
            .transpose()?;
        let breaker = match &rs.breaker {
            Some(b) if *b.get_ref() < 0 => return Err(loc.err(
                b,
                &at("breaker"),
                "breaker threshold is negative".into(),
                "use 0 to disable the breaker, or the number of consecutive failures that opens it",
            )),
            Some(b) => BreakerPolicy {
                threshold: *b.get_ref(),
            },
            None => BreakerPolicy {
                threshold: DEFAULT_BREAKER_THRESHOLD,
            },
        };
        let params = match &rs.params {
            Some(p) => serde_json::to_value(p.get_ref()).expect("TOML converts to JSON"),
            None => Value::Object(Map::new()),
        };
        if let Some(from) = params.get("app_from") {
            if !from.as_str().is_some_and(|f| after.iter().any(|a| a == f)) {
                let p = rs.params.as_ref().expect("app_from comes from params");
                return Err(loc.err(
                    p,
                    &at("params.app_from"),
                    format!("`app_from` is {from}, which is not a stage this one runs after"),
                    "name the stage that produces the apps and list it in `after`, e.g. after = [\"generate\"] and app_from = \"generate\"",
                ));
            }
        }
        if let Err(message) = crate::kinds::validate_params(&kind, &params) {
            let fix = format!("see the `{kind}` kind in the README for its params");
            return Err(match &rs.params {
                Some(p) => loc.err(p, &at("params"), message, &fix),
                None => loc.err(&rs.kind, &at("params"), message, &fix),
            });
        }
        stages.push(StageSpec {
            name,
            kind,
            after,
            wait,
            items,
            timeout_ms,
            retry,
            concurrency,
            deadline_ms,
            breaker,
            params,
        });
    }
    let budget = match &raw.pipeline.budget {
        None => None,
        Some(b) => {
            let raw_budget = b.get_ref();
            let bad_usd = raw_budget.usd.is_some_and(|u| !(u.is_finite() && u > 0.0));
            let bad_tokens = raw_budget.tokens.is_some_and(|t| t <= 0);
            if bad_usd || bad_tokens || (raw_budget.usd.is_none() && raw_budget.tokens.is_none()) {
                return Err(loc.err(
                    b,
                    "pipeline.budget",
                    "a budget needs a positive `usd` amount, a positive number of `tokens`, or both".into(),
                    "e.g. budget = { usd = 5.0 } or budget = { usd = 5.0, tokens = 2000000 }",
                ));
            }
            Some(Budget {
                usd: raw_budget.usd,
                tokens: raw_budget.tokens,
            })
        }
    };
    if let (Some(b), Some(usd)) = (&raw.pipeline.budget, budget.and_then(|b| b.usd)) {
        // Only OpenRouter reports what a call cost; elsewhere the budget needs prices, or
        // it would count every call as free and never stop anything.
        for (index, stage) in stages.iter().enumerate() {
            if stage.kind != "generate" {
                continue;
            }
            let provider = &stage.params["provider"];
            let url = provider["base_url"]
                .as_str()
                .unwrap_or(crate::generation::provider::OPENROUTER_BASE_URL);
            let priced = provider["prompt_price"].is_number()
                || provider["completion_price"].is_number()
                || provider["reports_cost"] == serde_json::json!(true);
            if !url.starts_with(crate::generation::provider::OPENROUTER_BASE_URL) && !priced {
                return Err(loc.err(
                    b,
                    "pipeline.budget",
                    format!(
                        "a budget of ${usd} needs to know what calls cost, but stage[{index}] (`{}`) calls {url}, which does not report costs",
                        stage.name
                    ),
                    "give that stage's provider prices in USD per token, e.g. provider = { base_url = \"...\", prompt_price = 0.0000005, completion_price = 0.0000015 }, or say it reports `usage.cost` like OpenRouter (reports_cost = true), or budget tokens instead: budget = { tokens = 2000000 }",
                ));
            }
        }
    }
    Ok(Spec {
        name: raw.pipeline.name.into_inner(),
        deadline_ms,
        budget,
        stages,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn duration_ms(loc: &Locator, value: &Spanned<String>, field: &str) -> Result<i64, SpecError> {
    humantime::parse_duration(value.get_ref())
        .map(|d| d.as_millis() as i64)
        .map_err(|e| {
            loc.err(
                value,
                field,
                format!("`{}` is not a duration ({e})", value.get_ref()),
                "write a duration such as \"500ms\", \"30s\", \"5m\" or \"1h\"",
            )
        })
}

fn fan_out(
    loc: &Locator,
    rs: &RawStage,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<Map<String, Value>>, SpecError> {
    match (&rs.matrix, &rs.items) {
        (Some(m), Some(_)) => Err(loc.err(
            m,
            &at("matrix"),
            "a stage has both `matrix` and `items`".into(),
            "use one of them: `matrix` for a cross product, `items` for a list",
        )),
        (Some(m), None) => {
            let mut items = vec![Map::new()];
            for (key, values) in m.get_ref() {
                if !valid_name(key) || values.is_empty() {
                    return Err(loc.err(
                        m,
                        &at(&format!("matrix.{key}")),
                        format!("matrix axis `{key}` is empty or badly named"),
                        "give each axis a simple name and at least one value",
                    ));
                }
                let mut next = Vec::with_capacity(items.len() * values.len());
                for item in &items {
                    for v in values {
                        let mut item = item.clone();
                        item.insert(key.clone(), toml_to_json(v));
                        next.push(item);
                    }
                }
                items = next;
            }
            Ok(items)
        }
        (None, Some(list)) => {
            let mut items = Vec::with_capacity(list.get_ref().len());
            for v in list.get_ref() {
                match toml_to_json(v) {
                    Value::Object(map) => items.push(map),
                    scalar => {
                        let mut map = Map::new();
                        map.insert("item".into(), scalar);
                        items.push(map);
                    }
                }
            }
            if items.is_empty() {
                return Err(loc.err(
                    list,
                    &at("items"),
                    "`items` is empty".into(),
                    "list at least one item, or leave `items` out for a single job",
                ));
            }
            Ok(items)
        }
        (None, None) => Ok(vec![Map::new()]),
    }
}

fn toml_to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).expect("TOML converts to JSON")
}

/// The deterministic key of a job inside its pipeline: stage plus its fan-out item.
pub fn job_key(stage: &str, item: &Map<String, Value>) -> String {
    if item.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = item
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("{stage}[{}]", parts.join(","))
}

impl Spec {
    pub fn deadline_micros(&self) -> Option<i64> {
        self.deadline_ms.map(|ms| ms * MICROS_PER_MS)
    }

    /// Expand every stage into jobs and wire job-level dependencies.
    pub fn plan(&self) -> Result<Vec<PlannedJob>, String> {
        let mut by_stage: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut jobs: Vec<PlannedJob> = Vec::new();
        let mut keys = HashSet::new();
        for stage in &self.stages {
            let mut indices = Vec::with_capacity(stage.items.len());
            for item in &stage.items {
                let key = job_key(&stage.name, item);
                if !keys.insert(key.clone()) {
                    return Err(format!(
                        "stage `{}` lists the item {} twice (job key `{key}`)",
                        stage.name,
                        Value::Object(item.clone())
                    ));
                }
                let params = render_params(&stage.params, item)
                    .map_err(|e| format!("stage `{}`, job `{key}`: {e}", stage.name))?;
                let mut depends_on = Vec::new();
                for upstream in &stage.after {
                    for &u in &by_stage[upstream.as_str()] {
                        let up = &jobs[u];
                        if stage.wait == WaitMode::Stage || items_agree(&up.item, item) {
                            depends_on.push(up.key.clone());
                        }
                    }
                }
                indices.push(jobs.len());
                jobs.push(PlannedJob {
                    key,
                    stage: stage.name.clone(),
                    kind: stage.kind.clone(),
                    item: item.clone(),
                    params,
                    depends_on,
                });
            }
            by_stage.insert(&stage.name, indices);
        }
        Ok(jobs)
    }

    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Two items agree when every key they share has the same value. Items that share no key
/// agree, so a fanned-out stage after a single job depends on that job.
fn items_agree(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.iter()
        .all(|(k, v)| b.get(k).map(|other| other == v).unwrap_or(true))
}

/// Render `{{ key }}` templates in every string of `params` with the job's item.
pub fn render_params(params: &Value, item: &Map<String, Value>) -> Result<Value, String> {
    let env = minijinja::Environment::new();
    let ctx = minijinja::Value::from_serialize(item);
    fn walk(
        env: &minijinja::Environment,
        v: &Value,
        ctx: &minijinja::Value,
    ) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) if s.contains("{{") || s.contains("{%") => Value::String(
                env.render_str(s, ctx.clone())
                    .map_err(|e| format!("template `{s}`: {e}"))?,
            ),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| walk(env, x, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), walk(env, x, ctx)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
    walk(&env, params, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_spec_is_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
        }
        assert!(checked >= 3);
    }

    #[test]
    fn a_budget_must_be_positive_and_app_from_must_name_an_upstream_stage() {
        let err = parse(
            "b.toml",
            "[pipeline]\nname = \"p\"\nbudget = { usd = 0 }\n[[stage]]\nname = \"a\"\nkind = \"noop\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("b.toml:3: pipeline.budget"), "{err}");
        let ok = parse(
            "b.toml",
            "[pipeline]\nname = \"p\"\nbudget = { usd = 1.5, tokens = 1000 }\n[[stage]]\nname = \"a\"\nkind = \"noop\"\n",
        )
        .unwrap();
        assert_eq!(ok.budget.unwrap().tokens, Some(1000));
        let err = parse(
            "s.toml",
            "[pipeline]\nname = \"p\"\n[[stage]]\nname = \"gen\"\nkind = \"noop\"\n[[stage]]\nname = \"s\"\nkind = \"static\"\n[stage.params]\napp_from = \"gen\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stage[1].params.app_from"), "{err}");
        assert!(err.contains("after"), "{err}");
    }

    #[test]
    fn a_usd_budget_needs_providers_that_report_or_are_given_prices() {
        let spec = |provider: &str, budget: &str| {
            format!("[pipeline]\nname = \"p\"\nbudget = {budget}\n[[stage]]\nname = \"g\"\nkind = \"generate\"\n[stage.params]\nmodel = \"m\"\ntemplate = \"todo-api\"\nprovider = {provider}\n")
        };
        let local = "{ base_url = \"http://127.0.0.1:11434/v1\" }";
        let err = parse("b.toml", &spec(local, "{ usd = 1.0 }"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not report costs") && err.contains("prompt_price"),
            "{err}"
        );
        parse("b.toml", &spec(local, "{ tokens = 1000 }")).unwrap();
        parse(
            "b.toml",
            &spec(
                "{ base_url = \"http://127.0.0.1:11434/v1\", prompt_price = 0.000001, completion_price = 0.000002 }",
                "{ usd = 1.0 }",
            ),
        )
        .unwrap();
        parse(
            "b.toml",
            &spec("{ name = \"openrouter\" }", "{ usd = 1.0 }"),
        )
        .unwrap();
    }

    #[test]
    fn api_keys_in_a_spec_are_refused() {
        let err = parse(
            "k.toml",
            "[pipeline]\nname = \"p\"\n[[stage]]\nname = \"g\"\nkind = \"generate\"\n[stage.params]\nmodel = \"m\"\ntemplate = \"todo-api\"\nprovider = { api_key = \"sk-123\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("api_key_env"), "{err}");
        let err = parse(
            "t.toml",
            "[pipeline]\nname = \"p\"\n[[stage]]\nname = \"g\"\nkind = \"generate\"\n[stage.params]\nmodel = \"m\"\ntemplate = \"no-such-template\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown template `no-such-template`"), "{err}");
    }

    const GOOD: &str = r#"
[pipeline]
name = "demo"
deadline = "10m"

[[stage]]
name = "generate"
kind = "noop"
matrix = { model = ["a", "b"], template = ["x", "y", "z"] }

[[stage]]
name = "analyze"
kind = "command"
after = ["generate"]
matrix = { model = ["a", "b"], template = ["x", "y", "z"], tool = ["lint", "scan"] }
timeout = "30s"
max_attempts = 2
backoff = "100ms"
concurrency = 3
[stage.params]
program = "echo"
args = ["{{ model }}/{{ template }} with {{ tool }}"]

[[stage]]
name = "report"
kind = "noop"
after = ["analyze"]
wait = "stage"
"#;

    #[test]
    fn plans_matrix_fan_out_with_streaming_dependencies() {
        let spec = parse("good.toml", GOOD).unwrap();
        assert_eq!(spec.deadline_ms, Some(600_000));
        let jobs = spec.plan().unwrap();
        assert_eq!(jobs.len(), 6 + 12 + 1);
        let a = jobs
            .iter()
            .find(|j| j.key == "analyze[model=b,template=y,tool=scan]")
            .unwrap();
        assert_eq!(a.depends_on, vec!["generate[model=b,template=y]"]);
        assert_eq!(a.params["args"][0], "b/y with scan");
        let report = jobs.iter().find(|j| j.stage == "report").unwrap();
        assert_eq!(report.depends_on.len(), 12);
        let st = spec.stage("analyze").unwrap();
        assert_eq!(st.retry.max_attempts, 2);
        assert_eq!(st.retry.backoff_base_ms, 100);
        assert_eq!(st.concurrency, Some(3));
    }

    #[test]
    fn job_keys_are_deterministic() {
        let spec = parse("good.toml", GOOD).unwrap();
        assert_eq!(spec.plan().unwrap(), spec.plan().unwrap());
    }

    fn invalid(text: &str) -> (usize, String, String) {
        match parse("bad.toml", text).unwrap_err() {
            SpecError::Invalid {
                line,
                field,
                message,
                ..
            } => (line, field, message),
            other => panic!("expected a validation error, got {other}"),
        }
    }

    #[test]
    fn errors_name_line_and_field() {
        let (line, field, msg) = invalid(
            "[pipeline]\nname = \"x\"\n\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nafter = [\"b\"]\n",
        );
        assert_eq!((line, field.as_str()), (7, "stage[0].after"));
        assert!(msg.contains("`b`"), "{msg}");

        let (line, field, _) =
            invalid("[pipeline]\nname = \"x\"\n[[stage]]\nname = \"a\"\nkind = \"teleport\"\n");
        assert_eq!((line, field.as_str()), (5, "stage[0].kind"));

        let (line, field, msg) = invalid(
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\ntimeout = \"soon\"\n",
        );
        assert_eq!((line, field.as_str()), (6, "stage[0].timeout"));
        assert!(msg.contains("soon"));

        let (line, field, _) = invalid(
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"a\"\nkind = \"command\"\n[stage.params]\nargs = [\"x\"]\n",
        );
        assert_eq!((line, field.as_str()), (6, "stage[0].params"));
    }

    #[test]
    fn syntax_and_unknown_fields_are_reported_with_position() {
        let err = parse(
            "bad.toml",
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nretries = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("bad.toml") && err.contains("line 6") && err.contains("retries"),
            "{err}"
        );
        let err = parse("bad.toml", "[pipeline\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn duplicate_items_are_rejected_at_plan_time() {
        let spec = parse(
            "d.toml",
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nitems = [1, 1]\n",
        )
        .unwrap();
        assert!(spec.plan().unwrap_err().contains("twice"));
    }
}
