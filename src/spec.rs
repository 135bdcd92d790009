//! Pipeline spec files (TOML): parsing, validation with errors that point at a line and a
//! field, and planning (fan-out into jobs and the job-to-job dependency graph).
//!
//! A downstream job depends on the upstream jobs whose fan-out item agrees with its own on
//! every key they share (`wait = "item"`, the default, which streams), or on every job of
//! the upstream stage (`wait = "stage"`).

use crate::domain::{BreakerPolicy, RetryPolicy, MICROS_PER_MS};
use crate::generation::budget::Budget;
use crate::kinds::ParamError;
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
    /// A stage chooses a model provider's URL or key variable, which only a providers
    /// file may ([`crate::generation::providers`]).
    #[error("{file}:{line}: {field}: {message}\n  fix: {fix}")]
    ProviderInSpec {
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
    /// `apps = { dir, layout }`: expanded into `items` by the client that has the folder
    /// (`analysis::discover::expand_app_sources`); a server never sees one.
    #[serde(default)]
    apps: Option<Spanned<toml::Value>>,
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

/// The most jobs one pipeline may plan. A spec past it is refused while it is read, before
/// its fan-out is expanded: a 400-byte matrix can name billions of jobs.
pub const MAX_JOBS: usize = 1_000_000;
/// The most job-to-job dependencies one pipeline may plan. A stage that waits for a whole
/// stage is one barrier, not a dependency per pair of jobs, so only item agreement that
/// fans in across many jobs can reach this.
pub const MAX_DEPENDENCIES: usize = 2_000_000;

/// The most stages one pipeline may have (a real study has a handful).
pub const MAX_STAGES: usize = 200;
/// Instructions one templated param string may take to render (`{{ model }}` takes a
/// few): a loop in a param cannot hold the server.
pub const TEMPLATE_FUEL: u64 = 20_000;
/// The longest string a template may render to.
pub const MAX_RENDERED_BYTES: usize = 64 * 1024;
/// How long planning one spec may take before it is refused as too costly.
pub const MAX_PLANNING: std::time::Duration = std::time::Duration::from_secs(30);

/// The most different sets of keys the items of one stage may have (a matrix has one): each
/// is a group every downstream item is matched against.
pub const MAX_KEY_SETS: usize = 64;

/// One job as planned from a spec, before it is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedJob {
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub item: Map<String, Value>,
    pub params: Value,
    /// The upstream jobs it waits for one by one, as indices into [`Plan::jobs`] (always
    /// earlier jobs).
    pub depends_on: Vec<usize>,
}

/// Every job of `stage` waits for every job of `upstream` (`wait = "stage"`, or items that
/// share no key with the upstream stage's): stored as one barrier, never as
/// |stage| × |upstream| job edges.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StageWait {
    pub stage: String,
    pub upstream: String,
}

/// A spec expanded into jobs and the dependencies between them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub jobs: Vec<PlannedJob>,
    pub stage_waits: Vec<StageWait>,
}

impl Plan {
    /// Job-to-job dependencies (barriers not counted).
    pub fn dependencies(&self) -> usize {
        self.jobs.iter().map(|j| j.depends_on.len()).sum()
    }

    /// How many things a job waits for before it can run: its upstream jobs, plus one per
    /// stage its stage waits for as a whole.
    pub fn pending(&self, job: &PlannedJob) -> usize {
        job.depends_on.len()
            + self
                .stage_waits
                .iter()
                .filter(|w| w.stage == job.stage)
                .count()
    }

    /// The upstream stages each stage waits for as a whole.
    pub fn barriers_of<'a>(&'a self, stage: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.stage_waits
            .iter()
            .filter(move |w| w.stage == stage)
            .map(|w| w.upstream.as_str())
    }
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

    if raw.stages.len() > MAX_STAGES {
        return Err(loc.err(
            &raw.stages[MAX_STAGES].name,
            "stage",
            format!(
                "the spec declares {} stages; a pipeline may have at most {MAX_STAGES}",
                raw.stages.len()
            ),
            "fold stages that do the same work into one stage with a matrix or items",
        ));
    }
    let mut seen = HashSet::new();
    let mut stages: Vec<StageSpec> = Vec::with_capacity(raw.stages.len());
    let mut planned = 0usize;
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
        let items = fan_out(&loc, rs, &at, planned)?;
        planned += items.len();
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
            let from_kind = stages
                .iter()
                .find(|s| Some(s.name.as_str()) == from.as_str())
                .map(|s| s.kind.as_str())
                .unwrap_or_default();
            if !crate::kinds::APP_MAKING_KINDS.contains(&from_kind) {
                let p = rs.params.as_ref().expect("app_from comes from params");
                return Err(loc.err(
                    p,
                    &at("params.app_from"),
                    format!("`app_from` is {from}, a `{from_kind}` stage, which makes no apps"),
                    &format!(
                        "name a stage of a kind that makes apps ({})",
                        crate::kinds::APP_MAKING_KINDS.join(", ")
                    ),
                ));
            }
        }
        if let Err(e) = crate::kinds::validate_params(&kind, &params) {
            let at_params = |message: String, fix: &str| match &rs.params {
                Some(p) => loc.err(p, &at("params"), message, fix),
                None => loc.err(&rs.kind, &at("params"), message, fix),
            };
            return Err(match e {
                ParamError::Invalid(message) => at_params(
                    message,
                    &format!("see the `{kind}` kind in the README for its params"),
                ),
                ParamError::ProviderInSpec(message) => {
                    match at_params(
                        message,
                        "name a configured provider: provider = \"NAME\" (README: Providers)",
                    ) {
                        SpecError::Invalid {
                            file,
                            line,
                            field,
                            message,
                            fix,
                        } => SpecError::ProviderInSpec {
                            file,
                            line,
                            field,
                            message,
                            fix,
                        },
                        other => other,
                    }
                }
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
            let name = provider
                .as_str()
                .or(provider["name"].as_str())
                .unwrap_or(crate::generation::providers::DEFAULT_PROVIDER);
            let priced = provider["prompt_price"].is_number()
                || provider["completion_price"].is_number()
                || provider["reports_cost"] == serde_json::json!(true);
            if name != crate::generation::providers::DEFAULT_PROVIDER && !priced {
                return Err(loc.err(
                    b,
                    "pipeline.budget",
                    format!(
                        "a budget of ${usd} needs to know what calls cost, but stage[{index}] (`{}`) calls provider `{name}`, which is not known to report costs",
                        stage.name
                    ),
                    "give that stage's provider prices in USD per token, e.g. provider = { name = \"local\", prompt_price = 0.0000005, completion_price = 0.0000015 }, or say it reports `usage.cost` like OpenRouter (reports_cost = true), or budget tokens instead: budget = { tokens = 2000000 }",
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

/// The stage's items. `planned` is how many jobs earlier stages make; the stage's own count
/// is worked out before anything is expanded, so a spec over [`MAX_JOBS`] costs nothing.
fn fan_out(
    loc: &Locator,
    rs: &RawStage,
    at: &dyn Fn(&str) -> String,
    planned: usize,
) -> Result<Vec<Map<String, Value>>, SpecError> {
    if let Some(apps) = &rs.apps {
        return Err(loc.err(
            apps,
            &at("apps"),
            "an `apps` source names a folder on the submitting machine, which was not expanded here".into(),
            "submit with `assay run` or `assay submit`, which discover the apps and send them as `items`",
        ));
    }
    let count = match (&rs.matrix, &rs.items) {
        (Some(m), None) => m
            .get_ref()
            .values()
            .try_fold(1usize, |n, values| n.checked_mul(values.len())),
        (None, Some(list)) => Some(list.get_ref().len()),
        _ => Some(1),
    };
    let within = count.and_then(|c| c.checked_add(planned));
    if within.is_none_or(|total| total > MAX_JOBS) {
        let stage = rs.name.get_ref();
        let what = match count {
            Some(c) => crate::generation::budget::group_thousands(c as i64),
            None => "more than 2^64".to_string(),
        };
        let shape = match &rs.matrix {
            Some(m) => format!(
                " ({})",
                m.get_ref()
                    .iter()
                    .map(|(k, v)| format!("{} {k}", v.len()))
                    .collect::<Vec<_>>()
                    .join(" × ")
            ),
            None => String::new(),
        };
        let earlier = if planned > 0 {
            format!(
                ", on top of the {} jobs of the stages before it",
                crate::generation::budget::group_thousands(planned as i64)
            )
        } else {
            String::new()
        };
        let message = format!(
            "stage `{stage}` fans out into {what} jobs{shape}{earlier}; a pipeline may hold at most {} jobs",
            crate::generation::budget::group_thousands(MAX_JOBS as i64)
        );
        let fix = "split the study into several pipelines (e.g. one per model), or use fewer matrix values";
        return Err(match (&rs.matrix, &rs.items) {
            (Some(m), _) => loc.err(m, &at("matrix"), message, fix),
            (_, Some(list)) => loc.err(list, &at("items"), message, fix),
            _ => loc.err(&rs.name, &at("name"), message, fix),
        });
    }
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
            let mut key_sets = HashSet::new();
            for item in &items {
                key_sets.insert(key_set(item));
                if key_sets.len() > MAX_KEY_SETS {
                    return Err(loc.err(
                        list,
                        &at("items"),
                        format!(
                            "the items have more than {MAX_KEY_SETS} different sets of keys"
                        ),
                        "give the items of a stage the same keys (e.g. all { model = .., template = .. })",
                    ));
                }
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

    /// Whether any stage's params hold a template (`{{ … }}` or `{% … %}`): only those
    /// take planning memory the spec's size does not bound.
    pub fn has_templates(&self) -> bool {
        fn any(v: &Value) -> bool {
            match v {
                Value::String(s) => is_template(s),
                Value::Array(a) => a.iter().any(any),
                Value::Object(o) => o.values().any(any),
                _ => false,
            }
        }
        self.stages.iter().any(|stage| any(&stage.params))
    }

    /// Expand every stage into jobs and wire their dependencies, in time linear in jobs +
    /// dependencies: upstream jobs are indexed by the values of the keys a downstream item
    /// shares with them, and a stage that waits for a whole stage gets one barrier.
    pub fn plan(&self) -> Result<Plan, String> {
        let mut plan = Plan::default();
        let mut stage_jobs: HashMap<&str, std::ops::Range<usize>> = HashMap::new();
        let mut keys = HashSet::new();
        let mut dependencies = 0usize;
        let started = std::time::Instant::now();
        for stage in &self.stages {
            let params = StageParams::compile(&stage.params)
                .map_err(|e| format!("stage `{}`: {e}", stage.name))?;
            // Per upstream stage in item mode: how its jobs are found from an item.
            let mut matchers = Vec::new();
            for upstream in &stage.after {
                let range = stage_jobs[upstream.as_str()].clone();
                let matcher = match stage.wait {
                    WaitMode::Stage => None,
                    WaitMode::Item => UpstreamIndex::new(&plan.jobs, range, &stage.items),
                };
                match matcher {
                    Some(m) => matchers.push(m),
                    None => plan.stage_waits.push(StageWait {
                        stage: stage.name.clone(),
                        upstream: upstream.clone(),
                    }),
                }
            }
            let first = plan.jobs.len();
            for (n, item) in stage.items.iter().enumerate() {
                if n % 1024 == 0 && started.elapsed() > MAX_PLANNING {
                    return Err(format!(
                        "planning this spec took over {} s (at stage `{}`); refused as too costly: \
                         simplify the templates in its params or split it into several pipelines",
                        MAX_PLANNING.as_secs(),
                        stage.name
                    ));
                }
                let key = job_key(&stage.name, item);
                if !keys.insert(key.clone()) {
                    return Err(format!(
                        "stage `{}` lists the item {} twice (job key `{key}`)",
                        stage.name,
                        Value::Object(item.clone())
                    ));
                }
                let params = params
                    .render(item)
                    .map_err(|e| format!("stage `{}`, job `{key}`: {e}", stage.name))?;
                let mut depends_on = Vec::new();
                for m in &mut matchers {
                    m.extend_matches(&plan.jobs, item, &mut depends_on);
                }
                dependencies += depends_on.len();
                if dependencies > MAX_DEPENDENCIES {
                    return Err(format!(
                        "stage `{}` makes more than {} job-to-job dependencies (its jobs each wait for many upstream jobs one by one); \
                         fix: give its items a key they share with the upstream stage's, or wait for the whole upstream stage with wait = \"stage\"",
                        stage.name,
                        crate::generation::budget::group_thousands(MAX_DEPENDENCIES as i64)
                    ));
                }
                plan.jobs.push(PlannedJob {
                    key,
                    stage: stage.name.clone(),
                    kind: stage.kind.clone(),
                    item: item.clone(),
                    params,
                    depends_on,
                });
            }
            stage_jobs.insert(&stage.name, first..plan.jobs.len());
        }
        Ok(plan)
    }

    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// The keys of an item, sorted.
fn key_set(item: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = item.keys().cloned().collect();
    keys.sort_unstable();
    keys
}

/// A group of upstream jobs and the keys a downstream item shares with them.
type GroupKeys = (usize, Vec<String>);
/// An item's values on some keys → the upstream jobs with those values.
type ValueIndex = HashMap<String, Vec<usize>>;

/// One upstream stage's jobs, grouped by the set of keys their items have (one group in
/// every matrix stage), each group indexed on demand by the values of the keys it shares
/// with a downstream item. Two items agree when every key they share has the same value;
/// items that share no key agree, so a fanned-out stage after a single job depends on it.
struct UpstreamIndex {
    groups: Vec<(Vec<String>, Vec<usize>)>,
    /// (group, shared keys) → projection of an item on them → the group's jobs with it.
    by_values: Vec<(GroupKeys, ValueIndex)>,
    /// Per set of downstream keys: for each group, the index in `by_values` to look the
    /// item up in, or `None` when the group shares no key with it (all of it agrees).
    routes: HashMap<Vec<String>, Vec<(usize, Option<usize>)>>,
}

impl UpstreamIndex {
    /// `None` when no downstream item shares a key with any upstream item: then every job
    /// waits for the whole upstream stage, which is a barrier, not an index.
    fn new(
        jobs: &[PlannedJob],
        range: std::ops::Range<usize>,
        downstream: &[Map<String, Value>],
    ) -> Option<Self> {
        let mut groups: Vec<(Vec<String>, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<Vec<String>, usize> = HashMap::new();
        for i in range {
            let keys = key_set(&jobs[i].item);
            match group_of.get(&keys) {
                Some(&g) => groups[g].1.push(i),
                None => {
                    group_of.insert(keys.clone(), groups.len());
                    groups.push((keys, vec![i]));
                }
            }
        }
        let mut downstream_sets: Vec<Vec<String>> = Vec::new();
        for item in downstream {
            let keys = key_set(item);
            if !downstream_sets.contains(&keys) {
                downstream_sets.push(keys);
            }
        }
        let any_shared = downstream_sets.iter().any(|d| {
            groups
                .iter()
                .any(|(u, _)| u.iter().any(|k| d.binary_search(k).is_ok()))
        });
        any_shared.then(|| UpstreamIndex {
            groups,
            by_values: Vec::new(),
            routes: HashMap::new(),
        })
    }

    /// For the items with these keys: per group, where to look (worked out once per set
    /// of keys, not per job).
    fn route(&mut self, jobs: &[PlannedJob], keys: Vec<String>) -> Vec<(usize, Option<usize>)> {
        if let Some(route) = self.routes.get(&keys) {
            return route.clone();
        }
        let mut route = Vec::with_capacity(self.groups.len());
        for (g, (group_keys, members)) in self.groups.iter().enumerate() {
            let shared: Vec<String> = group_keys
                .iter()
                .filter(|k| keys.binary_search(k).is_ok())
                .cloned()
                .collect();
            if shared.is_empty() {
                route.push((g, None));
                continue;
            }
            let at = match self
                .by_values
                .iter()
                .position(|((group, k), _)| *group == g && *k == shared)
            {
                Some(at) => at,
                None => {
                    let mut index = ValueIndex::new();
                    for &m in members {
                        index
                            .entry(projection(&jobs[m].item, &shared))
                            .or_default()
                            .push(m);
                    }
                    self.by_values.push(((g, shared), index));
                    self.by_values.len() - 1
                }
            };
            route.push((g, Some(at)));
        }
        self.routes.insert(keys, route.clone());
        route
    }

    /// Append the upstream jobs that `item` agrees with, in plan order.
    fn extend_matches(
        &mut self,
        jobs: &[PlannedJob],
        item: &Map<String, Value>,
        out: &mut Vec<usize>,
    ) {
        let start = out.len();
        for (g, at) in self.route(jobs, key_set(item)) {
            match at {
                None => out.extend_from_slice(&self.groups[g].1),
                Some(at) => {
                    let ((_, shared), index) = &self.by_values[at];
                    if let Some(found) = index.get(&projection(item, shared)) {
                        out.extend_from_slice(found);
                    }
                }
            }
        }
        if self.groups.len() > 1 {
            out[start..].sort_unstable();
        }
    }
}

/// An item's values on `keys`, as one comparable string (-0.0 written as 0.0: the two are
/// equal as values).
fn projection(item: &Map<String, Value>, keys: &[String]) -> String {
    let values: Vec<std::borrow::Cow<Value>> = keys
        .iter()
        .map(|k| match &item[k] {
            Value::Number(n) if n.as_f64() == Some(0.0) && n.is_f64() => {
                std::borrow::Cow::Owned(Value::from(0.0))
            }
            v => std::borrow::Cow::Borrowed(v),
        })
        .collect();
    serde_json::to_string(&values).expect("values serialize")
}

/// A stage's params with their `{{ … }}` templates compiled once, rendered per item.
struct StageParams<'a> {
    params: &'a Value,
    /// Every templated string of the params, compiled, under its own text as its name.
    env: minijinja::Environment<'a>,
    templated: bool,
}

impl<'a> StageParams<'a> {
    fn compile(params: &'a Value) -> Result<Self, String> {
        fn add<'a>(env: &mut minijinja::Environment<'a>, v: &'a Value) -> Result<bool, String> {
            match v {
                Value::String(s) if is_template(s) => {
                    env.add_template(s, s)
                        .map_err(|e| format!("template `{s}`: {e}"))?;
                    Ok(true)
                }
                Value::Array(a) => a.iter().try_fold(false, |any, x| Ok(add(env, x)? || any)),
                Value::Object(o) => o.values().try_fold(false, |any, x| Ok(add(env, x)? || any)),
                _ => Ok(false),
            }
        }
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        let templated = add(&mut env, params)?;
        Ok(StageParams {
            params,
            env,
            templated,
        })
    }

    fn render(&self, item: &Map<String, Value>) -> Result<Value, String> {
        if !self.templated {
            return Ok(self.params.clone());
        }
        let ctx = minijinja::Value::from_serialize(item);
        render_with(&self.env, self.params, &ctx)
    }
}

/// A template as an error message quotes it: its start.
fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// A template's output, refused past [`MAX_RENDERED_BYTES`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other("the rendered param is too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Render every templated string of `v`; the environment holds each of them as a
/// template named by its text.
fn render_with(
    env: &minijinja::Environment,
    v: &Value,
    ctx: &minijinja::Value,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if is_template(s) => {
            // Into a capped buffer: a loop that prints a large string (`{{ "x" * 50000000 }}`
            // a thousand times, within the fuel) would otherwise fill memory before the
            // length could be checked.
            let mut out = Capped(Vec::new());
            env.get_template(s)
                .and_then(|t| t.render_captured_to(ctx, &mut out).map(drop))
                .map_err(|e| {
                    let why = match e.kind() {
                        minijinja::ErrorKind::OutOfFuel => format!(
                            "it takes more than {TEMPLATE_FUEL} steps to render (a param is a \
                             short template, e.g. `{{{{ model }}}}`, not a program)"
                        ),
                        minijinja::ErrorKind::WriteFailure => format!(
                            "it renders to more than {MAX_RENDERED_BYTES} bytes; a param may be at \
                             most {MAX_RENDERED_BYTES}"
                        ),
                        _ => e.to_string(),
                    };
                    format!("template `{}`: {why}", clip(s))
                })?;
            Value::String(String::from_utf8(out.0).expect("templates render UTF-8"))
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_with(env, x, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_with(env, x, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
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
        let err = parse(
            "s.toml",
            "[pipeline]\nname = \"p\"\n[[stage]]\nname = \"gen\"\nkind = \"noop\"\n[[stage]]\nname = \"s\"\nkind = \"static\"\nafter = [\"gen\"]\n[stage.params]\napp_from = \"gen\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stage[1].params.app_from"), "{err}");
        assert!(err.contains("a `noop` stage, which makes no apps"), "{err}");
    }

    #[test]
    fn a_usd_budget_needs_providers_that_report_or_are_given_prices() {
        let spec = |provider: &str, budget: &str| {
            format!("[pipeline]\nname = \"p\"\nbudget = {budget}\n[[stage]]\nname = \"g\"\nkind = \"generate\"\n[stage.params]\nmodel = \"m\"\ntemplate = \"todo-api\"\nprovider = {provider}\n")
        };
        for local in ["\"local\"", "{ name = \"local\" }"] {
            let err = parse("b.toml", &spec(local, "{ usd = 1.0 }"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("not known to report costs") && err.contains("prompt_price"),
                "{err}"
            );
            parse("b.toml", &spec(local, "{ tokens = 1000 }")).unwrap();
        }
        parse(
            "b.toml",
            &spec(
                "{ name = \"local\", prompt_price = 0.000001, completion_price = 0.000002 }",
                "{ usd = 1.0 }",
            ),
        )
        .unwrap();
        parse("b.toml", &spec("\"openrouter\"", "{ usd = 1.0 }")).unwrap();
        parse(
            "b.toml",
            &spec("{ name = \"openrouter\" }", "{ usd = 1.0 }"),
        )
        .unwrap();
    }

    #[test]
    fn a_spec_picks_a_provider_by_name_and_never_its_url_or_key() {
        let spec = |provider: &str| {
            format!("[pipeline]\nname = \"p\"\n[[stage]]\nname = \"g\"\nkind = \"generate\"\n[stage.params]\nmodel = \"m\"\ntemplate = \"todo-api\"\nprovider = {provider}\n")
        };
        for field in [
            "base_url = \"http://attacker.example/v1\"",
            "api_key_env = \"AWS_SECRET_ACCESS_KEY\"",
            "name = \"x\", base_url = \"http://attacker.example/v1\"",
        ] {
            let err = parse("p.toml", &spec(&format!("{{ {field} }}"))).unwrap_err();
            assert!(matches!(err, SpecError::ProviderInSpec { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("p.toml:6: stage[0].params: provider.")
                    && text.contains("--providers")
                    && text.contains("provider = \"local\""),
                "{text}"
            );
        }
        let err = parse("p.toml", &spec("\"../etc\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a provider name"), "{err}");
        let err = parse("p.toml", &spec("42")).unwrap_err().to_string();
        assert!(err.contains("pick a provider by name"), "{err}");
        parse("p.toml", &spec("\"local\"")).unwrap();
        parse("p.toml", &spec("\"{{ item }}\"")).unwrap();
    }

    #[test]
    fn api_keys_in_a_spec_are_refused() {
        let err = parse(
            "k.toml",
            "[pipeline]\nname = \"p\"\n[[stage]]\nname = \"g\"\nkind = \"generate\"\n[stage.params]\nmodel = \"m\"\ntemplate = \"todo-api\"\nprovider = { api_key = \"sk-123\" }\n",
        )
        .unwrap_err();
        assert!(matches!(err, SpecError::ProviderInSpec { .. }), "{err}");
        assert!(!err.to_string().contains("sk-123"), "{err}");
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
        let plan = spec.plan().unwrap();
        let jobs = &plan.jobs;
        assert_eq!(jobs.len(), 6 + 12 + 1);
        let a = jobs
            .iter()
            .find(|j| j.key == "analyze[model=b,template=y,tool=scan]")
            .unwrap();
        let upstream: Vec<&str> = a.depends_on.iter().map(|&i| jobs[i].key.as_str()).collect();
        assert_eq!(upstream, vec!["generate[model=b,template=y]"]);
        assert_eq!(a.params["args"][0], "b/y with scan");
        let report = jobs.iter().find(|j| j.stage == "report").unwrap();
        assert!(report.depends_on.is_empty(), "a barrier, not 12 edges");
        assert_eq!(
            plan.stage_waits,
            vec![StageWait {
                stage: "report".into(),
                upstream: "analyze".into()
            }]
        );
        assert_eq!(plan.pending(report), 1);
        assert_eq!(plan.dependencies(), 12);
        let st = spec.stage("analyze").unwrap();
        assert_eq!(st.retry.max_attempts, 2);
        assert_eq!(st.retry.backoff_base_ms, 100);
        assert_eq!(st.concurrency, Some(3));
    }

    /// The definition of item agreement, pair by pair: what the indexed plan must equal.
    fn agree(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
        a.iter()
            .all(|(k, v)| b.get(k).is_none_or(|other| other == v))
    }

    #[test]
    fn the_indexed_plan_equals_pairwise_item_agreement_for_every_shape() {
        let spec = parse(
            "shapes.toml",
            r#"
[pipeline]
name = "shapes"
[[stage]]
name = "gen"
kind = "noop"
matrix = { model = ["a", "b", "c"], template = ["x", "y"] }
[[stage]]
name = "lint"
kind = "noop"
after = ["gen"]
matrix = { model = ["a", "b", "c"], template = ["x", "y"], tool = [1, 2] }
[[stage]]
name = "per-model"
kind = "noop"
after = ["lint", "gen"]
matrix = { model = ["a", "b", "c"] }
[[stage]]
name = "mixed"
kind = "noop"
after = ["gen"]
items = [{ model = "a" }, { template = "y" }, { model = "b", template = "x", extra = true }, { other = 1 }]
[[stage]]
name = "loose"
kind = "noop"
after = ["mixed"]
items = [{ model = "a" }, { unrelated = 2 }]
[[stage]]
name = "signed"
kind = "noop"
items = [{ z = 0.0 }, { z = 1.5 }]
[[stage]]
name = "zero"
kind = "noop"
after = ["signed"]
items = [{ z = -0.0 }]
"#,
        )
        .unwrap();
        let plan = spec.plan().unwrap();
        let jobs = &plan.jobs;
        for job in jobs {
            let stage = spec.stage(&job.stage).unwrap();
            let mut expected = Vec::new();
            for upstream in &stage.after {
                if plan.barriers_of(&job.stage).any(|b| b == upstream) {
                    continue;
                }
                for (i, up) in jobs.iter().enumerate() {
                    if &up.stage == upstream && agree(&up.item, &job.item) {
                        expected.push(i);
                    }
                }
            }
            let mut got = job.depends_on.clone();
            got.sort_unstable();
            expected.sort_unstable();
            assert_eq!(got, expected, "{}", job.key);
        }
        let per_model = jobs.iter().find(|j| j.key == "per-model[model=b]").unwrap();
        assert_eq!(per_model.depends_on.len(), 4 + 2, "its lint and gen jobs");
        let zero = jobs.iter().find(|j| j.stage == "zero").unwrap();
        assert_eq!(zero.depends_on.len(), 1, "-0.0 and 0.0 agree");
        let other = jobs.iter().find(|j| j.key == "mixed[other=1]").unwrap();
        assert_eq!(other.depends_on.len(), 6, "shares no key: every gen job");
        assert!(plan.stage_waits.is_empty(), "{:?}", plan.stage_waits);
    }

    #[test]
    fn items_that_share_no_key_with_the_upstream_stage_wait_for_it_as_a_whole() {
        let spec = parse(
            "b.toml",
            "[pipeline]\nname = \"p\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nitems = [1, 2, 3]\n\
             [[stage]]\nname = \"b\"\nkind = \"noop\"\nafter = [\"a\"]\nmatrix = { x = [1, 2] }\n",
        )
        .unwrap();
        let plan = spec.plan().unwrap();
        assert_eq!(plan.dependencies(), 0);
        assert_eq!(
            plan.stage_waits,
            vec![StageWait {
                stage: "b".into(),
                upstream: "a".into()
            }]
        );
    }

    #[test]
    fn a_study_of_a_hundred_thousand_jobs_plans_in_linear_time() {
        let list = |p: &str, n: usize| {
            (0..n)
                .map(|i| format!("\"{p}{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let (m, t) = (list("m", 20), list("t", 1_000));
        let mut text = format!(
            "[pipeline]\nname = \"big\"\n[[stage]]\nname = \"gen\"\nkind = \"noop\"\nmatrix = {{ model = [{m}], template = [{t}] }}\n"
        );
        for a in ["static", "dynamic", "perf", "ai"] {
            text += &format!(
                "[[stage]]\nname = \"{a}\"\nkind = \"command\"\nafter = [\"gen\"]\nmatrix = {{ model = [{m}], template = [{t}] }}\n\
                 [stage.params]\nprogram = \"true\"\nargs = [\"{{{{ model }}}}/{{{{ template }}}}\"]\n"
            );
        }
        let spec = parse("big.toml", &text).unwrap();
        let plan = spec.plan().unwrap();
        assert_eq!(plan.jobs.len(), 100_000);
        assert_eq!(plan.dependencies(), 80_000);
        let last = plan.jobs.last().unwrap();
        assert_eq!(last.params["args"][0], "m19/t999");
        assert_eq!(
            plan.jobs[last.depends_on[0]].key,
            "gen[model=m19,template=t999]"
        );
    }

    #[test]
    fn a_template_bomb_in_a_param_is_refused_and_says_why() {
        let bomb = "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"b\"\nkind = \"noop\"\nitems = [1]\n\
            [stage.params]\nv = \"{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}\"\n";
        let spec = parse("bomb.toml", bomb).unwrap();
        let e = spec.plan().unwrap_err();
        assert!(
            e.contains("stage `b`") && e.contains("steps to render"),
            "{e}"
        );
        let wide =
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"w\"\nkind = \"noop\"\nitems = [1]\n\
            [stage.params]\nv = \"{{ range(30000) | join(',') }}\"\n";
        let e = parse("wide.toml", wide).unwrap().plan().unwrap_err();
        assert!(
            e.contains("renders to") && e.contains("at most 65536"),
            "{e}"
        );
        // Each output takes a few steps of the fuel, but a thousand of them were 50 GB,
        // buffered before their length was checked (the server ran out of memory).
        let loud = "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"l\"\nkind = \"noop\"\n\
            [stage.params]\nv = \"{% for i in range(1000) %}{{ 'x' * 50000000 }}{% endfor %}\"\n";
        let e = parse("loud.toml", loud).unwrap().plan().unwrap_err();
        assert!(e.contains("renders to more than 65536 bytes"), "{e}");
        // An ordinary template is untouched by the limits.
        let fine = "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"f\"\nkind = \"noop\"\nitems = [{ model = \"m\" }]\n\
            [stage.params]\nv = \"{{ model | upper }}-{% for i in range(3) %}{{ i }}{% endfor %}\"\n";
        let plan = parse("fine.toml", fine).unwrap().plan().unwrap();
        assert_eq!(plan.jobs[0].params["v"], "M-012");
    }

    #[test]
    fn a_spec_of_thousands_of_stages_is_refused_while_it_is_read() {
        let mut text = String::from("[pipeline]\nname = \"x\"\n");
        for i in 0..5_000 {
            let after = if i == 0 {
                String::new()
            } else {
                format!("after = [\"s{}\"]\n", i - 1)
            };
            text += &format!("[[stage]]\nname = \"s{i}\"\nkind = \"noop\"\n{after}");
        }
        let (_, field, message) = invalid(&text);
        assert_eq!(field, "stage");
        assert!(
            message.contains("5000 stages") && message.contains("at most 200"),
            "{message}"
        );
    }

    #[test]
    fn a_plan_too_large_is_refused_before_it_is_expanded() {
        let axes: Vec<String> = (0..9)
            .map(|a| format!("a{a} = [0,1,2,3,4,5,6,7,8,9]"))
            .collect();
        let text = format!(
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"huge\"\nkind = \"noop\"\nmatrix = {{ {} }}\n",
            axes.join(", ")
        );
        let started = std::time::Instant::now();
        let (line, field, message) = invalid(&text);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "nothing expanded"
        );
        assert_eq!((line, field.as_str()), (6, "stage[0].matrix"));
        assert!(
            message.contains("1,000,000,000 jobs") && message.contains("at most 1,000,000"),
            "{message}"
        );
        let overflow = format!(
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"o\"\nkind = \"noop\"\nmatrix = {{ {} }}\n",
            (0..40).map(|a| format!("b{a} = [0,1,2,3,4,5,6,7,8,9]")).collect::<Vec<_>>().join(", ")
        );
        assert!(invalid(&overflow).2.contains("more than 2^64"));
        // The limit is for the whole pipeline: two stages of 600,000 are refused at the second.
        let half = format!(
            "matrix = {{ a = [{}], b = [{}] }}",
            (0..600)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
            (0..1_000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let two = format!(
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"one\"\nkind = \"noop\"\n{half}\n[[stage]]\nname = \"two\"\nkind = \"noop\"\n{half}\n"
        );
        let (_, field, message) = invalid(&two);
        assert_eq!(field, "stage[1].matrix");
        assert!(message.contains("on top of the 600,000 jobs"), "{message}");
    }

    #[test]
    fn many_to_many_item_fan_in_past_the_dependency_limit_is_refused_with_a_fix() {
        // 2,000 × 2,000 jobs that share no key... except one that makes it item mode.
        let a: Vec<String> = (0..1_500)
            .map(|i| format!("{{ k = 1, a = {i} }}"))
            .collect();
        let b: Vec<String> = (0..1_500)
            .map(|i| format!("{{ k = 1, b = {i} }}"))
            .collect();
        let text = format!(
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nitems = [{}]\n\
             [[stage]]\nname = \"b\"\nkind = \"noop\"\nafter = [\"a\"]\nitems = [{}]\n",
            a.join(","),
            b.join(",")
        );
        let err = parse("x.toml", &text).unwrap().plan().unwrap_err();
        assert!(
            err.contains("2,000,000") && err.contains("wait = \"stage\""),
            "{err}"
        );
        let barrier = text.replace("after = [\"a\"]", "after = [\"a\"]\nwait = \"stage\"");
        let plan = parse("x.toml", &barrier).unwrap().plan().unwrap();
        assert_eq!((plan.jobs.len(), plan.dependencies()), (3_000, 0));
    }

    #[test]
    fn items_with_too_many_different_key_sets_are_refused() {
        let items: Vec<String> = (0..=MAX_KEY_SETS)
            .map(|i| format!("{{ k{i} = 1 }}"))
            .collect();
        let text = format!(
            "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\nitems = [{}]\n",
            items.join(",")
        );
        let (_, field, message) = invalid(&text);
        assert_eq!(field, "stage[0].items");
        assert!(message.contains("different sets of keys"), "{message}");
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
