//! The `dynamic`, `performance` and `ai` kinds: analyzers that need the app running (and
//! its template, where it has one). Apps come from the worker's [`AppPool`]: one instance
//! per app folder, started on first use, and stopped when the last job holding it ends.
//!
//! An app that does not start, never answers, crashes while it is probed or loaded, or has
//! nothing to start is **the model's result**, not a fault: the job completes with that
//! outcome (`app_outcome`) and a finding saying so (see `docs/findings.md`), and is never
//! retried, so it opens no breaker and quarantines no worker. The machine's troubles (no
//! port, no sandbox, a file not written) stay retryable failures.
//!
//! Params: `app` (folder), optional `template` (a catalog name, overriding the app's
//! `assay-app.toml`), optional `templates` (a catalog folder; default: the built-in
//! catalog). Results follow the static kind's shape: `{app, analyzer, tools, findings,
//! summary}`, plus `run` (how the app was started), `coverage`, and `judge` for `ai`.

use super::{JobContext, JobOutput};
use crate::analysis::apps::{AppError, AppPlan, AppPool};
use crate::analysis::catalog::{self, Template};
use crate::analysis::finding::{
    merge, summarize, Finding, Location, Severity, ToolRun, ToolStatus,
};
use crate::analysis::{dynamic, judge, sarif};
use crate::domain::Failure;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppParams {
    app: PathBuf,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    templates: Option<PathBuf>,
    /// `false` bypasses the analysis cache for this stage.
    #[serde(default)]
    #[allow(dead_code)]
    cache: Option<bool>,
}

fn parse(kind: &str, params: &Value) -> Result<AppParams, String> {
    serde_json::from_value(params.clone()).map_err(|e| format!("invalid params for `{kind}`: {e}"))
}

pub fn validate_dynamic(params: &Value) -> Result<(), String> {
    parse("dynamic", params).map(|_| ())
}

pub fn validate_ai(params: &Value) -> Result<(), String> {
    parse("ai", params).map(|_| ())
}

/// A failure to start that is not the app's own (those are results: [`app_outcome`]).
fn app_failure(e: AppError) -> Failure {
    let code = match &e {
        AppError::Crashed { .. } => "app_crashed",
        AppError::Unhealthy { .. } => "app_unhealthy",
        AppError::Manifest { .. } => "bad_app_manifest",
        AppError::ComposeUnavailable(_) => "compose_unavailable",
        AppError::ComposeRefused => "compose_refused",
        AppError::Sandbox(_) => "sandbox_unavailable",
        AppError::Env(_) => "env_unavailable",
        AppError::NeedsInstallScript { .. } => "needs_install_script",
        _ => "app_start",
    };
    if let AppError::NeedsInstallScript { .. } = e {
        // One app's package, not this worker or stage: it opens no breaker.
        return Failure::permanent(code, e.to_string()).external();
    }
    if e.is_retryable() {
        Failure::retryable(code, e.to_string())
    } else {
        Failure::permanent(code, e.to_string())
    }
}

/// What an analysis of one app works from: the folder, how it starts (or why nothing in
/// it does), and its template (or why it has none).
struct Target {
    app: PathBuf,
    plan: Result<AppPlan, AppError>,
    template: Result<Template, String>,
}

impl Target {
    fn template_name(&self) -> Option<&str> {
        self.template.as_ref().ok().map(|t| t.name.as_str())
    }
}

fn prepare(kind: &str, ctx: &JobContext) -> Result<Target, Failure> {
    let p = parse(kind, &ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    resolve(p)
}

fn resolve(p: AppParams) -> Result<Target, Failure> {
    let app = super::app_folder(&p.app)?;
    let plan = match crate::analysis::apps::plan(&app) {
        Err(e) if !e.is_model_failure() => return Err(app_failure(e)),
        plan => plan,
    };
    let catalog = catalog::with_user_dir(p.templates.as_deref())
        .map_err(|e| Failure::permanent("bad_catalog", e.to_string()))?;
    let dir = p.templates.clone().unwrap_or_else(catalog::builtin_dir);
    let named = p
        .template
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| plan.as_ref().ok().and_then(|plan| plan.template.clone()));
    let template = match named {
        None => Err("no template: neither the job nor the app's assay-app.toml names one".into()),
        Some(name) => catalog.get(&name).cloned().ok_or_else(|| {
            format!(
                "template `{name}` is not in {} (known: {})",
                dir.display(),
                catalog.names().collect::<Vec<_>>().join(", ")
            )
        }),
    };
    Ok(Target {
        app,
        plan,
        template,
    })
}

/// Where apps commonly serve their OpenAPI document.
const OPENAPI_PATHS: &[&str] = &[
    "/openapi.json",
    "/swagger.json",
    "/api/openapi.json",
    "/api/swagger.json",
    "/apispec_1.json",
    "/v3/api-docs",
];

/// For an app whose template is unknown: a template made of the routes its own code
/// registers (Flask, FastAPI, Express), or of the OpenAPI document it serves. Creation
/// and login come first in the walk, so that later requests have ids and a session.
async fn discovered_template(app: &Path, base_url: &str) -> (Option<Template>, String) {
    use crate::analysis::routes;
    let found = routes::discover(app);
    let mut source = format!(
        "{} routes found in the app's code ({} files read)",
        found.routes.len(),
        found.files_read
    );
    let mut list = found.routes;
    if list.is_empty() {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client builds");
        for path in OPENAPI_PATHS {
            let Ok(resp) = client.get(format!("{base_url}{path}")).send().await else {
                continue;
            };
            if !resp.status().is_success() {
                continue;
            }
            let body = crate::body::read_capped(resp, 4 << 20).await;
            if let Ok(doc) = serde_json::from_str::<Value>(&body.text()) {
                list = routes::from_openapi(&doc);
                if !list.is_empty() {
                    source = format!("{} routes from the OpenAPI document at {path}", list.len());
                    break;
                }
            }
        }
    }
    if list.is_empty() {
        return (None, source);
    }
    list.sort_by_key(|r| {
        (
            dynamic::walk_rank(&r.method, &r.path),
            r.path.matches('/').count(),
        )
    });
    let table = |fields: &[String], kind: &str| -> Option<toml::Table> {
        (!fields.is_empty()).then(|| {
            fields
                .iter()
                .map(|f| (f.clone(), toml::Value::String(kind.into())))
                .collect()
        })
    };
    let endpoints = list
        .iter()
        .map(|r| catalog::Endpoint {
            method: r.method.clone(),
            path: r.path.clone(),
            auth: r.auth_hint,
            description: format!("{} route at {}:{}", r.framework, r.file, r.line),
            query: table(&r.query_fields, "string?"),
            request: if matches!(r.method.as_str(), "POST" | "PUT" | "PATCH") {
                table(&r.body_fields, "string")
            } else {
                None
            },
            response: catalog::Response {
                status: 200,
                body: toml::Value::String("any".into()),
            },
            found_in_code: true,
        })
        .collect();
    let template = Template {
        name: "discovered".into(),
        title: "Routes found in the app".into(),
        description: source.clone(),
        requirements: Default::default(),
        endpoints,
        data_model: Default::default(),
        discovered: true,
    };
    (Some(template), source)
}

/// The template's endpoints, then the routes the app's code has that the template does
/// not name: an app written for a template often serves it at other paths (`/todos` for
/// `/api/todos`), and those are what it really answers.
async fn with_found_routes(template: &Template, app: &Path, base_url: &str) -> (Template, usize) {
    let mut merged = template.clone();
    let (found, _) = discovered_template(app, base_url).await;
    let known: std::collections::HashSet<(String, String)> =
        template.endpoints.iter().map(|e| e.shape()).collect();
    let mut added = 0;
    let (mut sign_in, mut log_out) = (Vec::new(), Vec::new());
    for e in found.into_iter().flat_map(|t| t.endpoints) {
        if known.contains(&e.shape()) {
            continue;
        }
        added += 1;
        // The app's own sign-up and login go first: an app that guards routes the
        // template leaves open is walked logged in, not measured by its 401s.
        match dynamic::walk_rank(&e.method, &e.path) {
            0 | 1 if e.method == "POST" => sign_in.push(e),
            7 => log_out.push(e),
            _ => merged.endpoints.push(e),
        }
    }
    merged.endpoints.splice(0..0, sign_in);
    // Logging out last: the rest of the walk keeps its session.
    merged.endpoints.extend(log_out);
    (merged, added)
}

/// One part of what an analyzer set out to do, done or not, and why not.
fn part(name: &str, done: Result<(), String>) -> Value {
    match done {
        Ok(()) => json!({"part": name, "done": true}),
        Err(why) => json!({"part": name, "done": false, "why": why}),
    }
}

/// The finding an app's own failure to run is recorded as. High: an app that does not run
/// delivers none of what it was asked for (`docs/findings.md`).
fn app_outcome_finding(analyzer: &str, outcome: &str, message: &str) -> Finding {
    let rule = format!("app/{}", outcome.replace('_', "-"));
    Finding::new(
        analyzer,
        crate::analysis::finding::APP_FAILURE_TOOL,
        &rule,
        None,
        Severity::High,
        outcome,
        message,
        Location {
            path: ".".into(),
            line: None,
            column: None,
            end_line: None,
        },
    )
}

/// The completed result of an analysis whose app failed on its own: the model's result.
fn app_outcome(
    ctx: &JobContext,
    analyzer: &str,
    target: &Target,
    error: &AppError,
    outcome: &str,
    not_done: &[&str],
) -> JobOutput {
    let message = error.to_string();
    let findings = vec![app_outcome_finding(analyzer, outcome, &message)];
    let runs = vec![ToolRun {
        tool: "assay-app".into(),
        status: ToolStatus::Error,
        version: Some(env!("CARGO_PKG_VERSION").into()),
        duration_ms: 0,
        findings: 1,
        detail: Some(message.lines().next().unwrap_or_default().to_string()),
        raw_output: None,
    }];
    let _ = write_sarif(ctx, &format!("{analyzer}.sarif"), &findings, &runs);
    let phrase = match outcome {
        "no_entry_point" => "has no entry point".to_string(),
        other => other.replace('_', " "),
    };
    let why = format!("the app {phrase}");
    let coverage: Vec<Value> = not_done.iter().map(|p| part(p, Err(why.clone()))).collect();
    JobOutput {
        result: json!({
            "app": ctx.shown_app(&target.app),
            "analyzer": analyzer,
            "template": target.template_name(),
            "status": format!("app {phrase}"),
            "app_outcome": outcome,
            "run": target.plan.as_ref().ok().map(AppPlan::describe),
            "summary": summarize(&findings),
            "tools": runs,
            "findings": findings,
            "coverage": coverage,
        }),
    }
}

/// Start (or join) the app; `Ok(Err(output))` when the app failed on its own.
async fn start_app(
    ctx: &JobContext,
    analyzer: &str,
    target: &Target,
    not_done: &[&str],
) -> Result<Result<crate::analysis::apps::AppLease, JobOutput>, Failure> {
    if let Err(e) = &target.plan {
        return Ok(Err(app_outcome(
            ctx,
            analyzer,
            target,
            e,
            e.outcome(),
            not_done,
        )));
    }
    ctx.step(
        "starting the app",
        None,
        Some(target.app.display().to_string()),
    );
    let log = pooled_log(&target.app);
    let started = tokio::select! {
        r = AppPool::global().acquire(&target.app, &log) => r,
        _ = ctx.cancel.cancelled() => return Err(Failure::retryable("stopped", "stopped while starting the app")),
    };
    match started {
        Ok(lease) => {
            if let Some(env) = &lease.env {
                let _ = std::fs::copy(&env.log, ctx.output_dir.join("install.log"));
            }
            Ok(Ok(lease))
        }
        Err(e) if e.is_model_failure() => {
            let _ = std::fs::copy(&log, ctx.output_dir.join("app.log"));
            Ok(Err(app_outcome(
                ctx,
                analyzer,
                target,
                &e,
                e.outcome(),
                not_done,
            )))
        }
        Err(e) => Err(app_failure(e)),
    }
}

/// Where a pooled app writes its log: outside any one job's folder, because the app may
/// outlive the job that started it. Each job keeps a copy.
fn pooled_log(app: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let dir = super::scratch_root().join("app-logs");
    let _ = std::fs::create_dir_all(&dir);
    let digest = hex::encode(&Sha256::digest(app.display().to_string().as_bytes())[..8]);
    dir.join(format!("{digest}-{}.log", std::process::id()))
}

const DYNAMIC_PARTS: &[&str] = &["functional checks", "security probes"];

pub async fn run_dynamic(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let target = prepare("dynamic", ctx)?;
    // Started first, template or not: whether the app runs at all is its first result.
    let running = match start_app(ctx, "dynamic", &target, DYNAMIC_PARTS).await? {
        Ok(running) => running,
        Err(output) => return Ok(output),
    };
    let (template, routes_from) = match &target.template {
        Ok(t) => (
            with_found_routes(t, &target.app, &running.base_url).await.0,
            None,
        ),
        Err(why) => match discovered_template(&target.app, &running.base_url).await {
            (Some(t), from) => (t, Some(format!("{why}; probed the {from}"))),
            (None, from) => {
                let why = format!("{why}, and no routes to probe: {from}");
                return Ok(started_not_analyzed(
                    ctx,
                    "dynamic",
                    &target,
                    DYNAMIC_PARTS,
                    &why,
                    &running,
                ));
            }
        },
    };
    let app = target.app.clone();
    ctx.step("probing", Some(10.0), Some(running.base_url.clone()));
    let health = running
        .plan
        .recipe
        .health
        .clone()
        .unwrap_or_else(|| crate::analysis::apps::DEFAULT_HEALTH.into());
    let outcome = tokio::select! {
        o = dynamic::probe(&running.base_url, &template, Some(&app), &health) => o,
        _ = ctx.cancel.cancelled() => return Err(Failure::retryable("stopped", "stopped while probing")),
    };
    let _ = std::fs::copy(&running.log, ctx.output_dir.join("app.log"));
    // A dead app answers nothing: never a clean result. The probes killed it: that is
    // what the model's app does with such requests.
    if let Err(e) = running.ensure_alive() {
        let mut output = app_outcome(ctx, "dynamic", &target, &e, "crashed_under_probes", &[]);
        let mut findings = outcome.findings;
        findings.push(app_outcome_finding(
            "dynamic",
            "crashed_under_probes",
            &e.to_string(),
        ));
        let findings = merge(findings);
        output.result["findings"] = json!(findings);
        output.result["summary"] = json!(summarize(&findings));
        output.result["requests"] = json!(outcome.requests);
        return Ok(output);
    }
    let findings = merge(outcome.findings);
    write_sarif(ctx, "dynamic.sarif", &findings, &outcome.runs)?;
    ctx.step(
        "probing",
        Some(100.0),
        Some(format!(
            "{} requests, {} findings",
            outcome.requests,
            findings.len()
        )),
    );
    Ok(JobOutput {
        result: json!({
            "app": ctx.shown_app(&app),
            "analyzer": dynamic::ANALYZER,
            "template": template.name,
            "requests": outcome.requests,
            "app_outcome": "started",
            "run": running.plan.describe(),
            "install": running.env.as_ref().map(|e| e.describe()),
            "health": running.health,
            "summary": summarize(&findings),
            "tools": outcome.runs,
            "findings": findings,
            "routes_from": routes_from,
            "coverage": [
                part("functional checks", match &routes_from {
                    None => Ok(()),
                    Some(why) => Err(why.clone()),
                }),
                part("security probes", Ok(())),
            ],
        }),
    })
}

/// [`not_analyzed`] for an app that did start: how it started is recorded too.
fn started_not_analyzed(
    ctx: &JobContext,
    analyzer: &str,
    target: &Target,
    parts: &[&str],
    why: &str,
    running: &crate::analysis::apps::AppLease,
) -> JobOutput {
    let mut output = not_analyzed(ctx, analyzer, target, parts, why);
    output.result["app_outcome"] = json!("started");
    output.result["health"] = json!(running.health);
    output.result["install"] = json!(running.env.as_ref().map(|e| e.describe()));
    output
}

/// A completed result that says what could not be done and why (no template, say): the
/// app counts as not analyzed by this analyzer, never as clean.
fn not_analyzed(
    ctx: &JobContext,
    analyzer: &str,
    target: &Target,
    parts: &[&str],
    why: &str,
) -> JobOutput {
    let runs = vec![ToolRun {
        tool: format!("assay-{analyzer}"),
        status: ToolStatus::Skipped,
        version: Some(env!("CARGO_PKG_VERSION").into()),
        duration_ms: 0,
        findings: 0,
        detail: Some(why.to_string()),
        raw_output: None,
    }];
    JobOutput {
        result: json!({
            "app": ctx.shown_app(&target.app),
            "analyzer": analyzer,
            "template": target.template_name(),
            "status": format!("not analyzed: {why}"),
            "run": target.plan.as_ref().ok().map(AppPlan::describe),
            "summary": summarize(&[]),
            "tools": runs,
            "findings": [],
            "coverage": parts.iter().map(|p| part(p, Err(why.to_string()))).collect::<Vec<_>>(),
        }),
    }
}

fn write_sarif(
    ctx: &JobContext,
    name: &str,
    findings: &[crate::analysis::finding::Finding],
    runs: &[crate::analysis::finding::ToolRun],
) -> Result<(), Failure> {
    let doc = sarif::to_sarif(findings, runs);
    std::fs::write(
        ctx.output_dir.join(name),
        serde_json::to_vec_pretty(&doc).expect("SARIF serializes"),
    )
    .map_err(|e| Failure::retryable("io", format!("writing {name}: {e}")))
}

pub async fn run_ai(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let target = prepare("ai", ctx)?;
    let template = match &target.template {
        Ok(t) => t.clone(),
        Err(why) => return Ok(not_analyzed(ctx, "ai", &target, &["judge"], why)),
    };
    let app = target.app.clone();
    let report = match judge::JudgeConfig::from_env() {
        None => judge::skipped_report(judge::NO_ENDPOINT),
        Some(config) => {
            ctx.step("asking the judge", None, Some(config.model.clone()));
            // On a worker, every call goes through the server (cache, limits, budget,
            // accounting); run alone (tests), straight to the endpoint.
            let gate: std::sync::Arc<dyn judge::Gate> = match &ctx.server {
                Some(client) => std::sync::Arc::new(super::judge_gate::ServerGate {
                    client: client.clone(),
                    job_id: ctx.job_id,
                    attempt: ctx.attempt,
                    provider: super::judge_gate::provider_label(&config.base_url),
                    timeout: config.timeout,
                    progress: Some(ctx.progress.clone()),
                    waited_ms: ctx.waited_ms.clone(),
                }),
                None => std::sync::Arc::new(judge::Direct),
            };
            let report = tokio::select! {
                r = judge::judge_app(&config, &template, &app, gate) => r,
                _ = ctx.cancel.cancelled() => return Err(Failure::retryable("stopped", "stopped while judging")),
            };
            match report {
                Ok(r) => r,
                Err(e) => {
                    if let judge::JudgeError::Malformed { exchanges, .. } = &e {
                        let _ = std::fs::write(
                            ctx.output_dir.join("judge-exchanges.json"),
                            serde_json::to_vec_pretty(exchanges).unwrap_or_default(),
                        );
                    }
                    return Err(e.to_failure());
                }
            }
        }
    };
    if !report.exchanges.is_empty() {
        std::fs::write(
            ctx.output_dir.join("judge-exchanges.json"),
            serde_json::to_vec_pretty(&report.exchanges).unwrap_or_default(),
        )
        .map_err(|e| Failure::retryable("io", format!("writing judge-exchanges.json: {e}")))?;
    }
    let status = report.status_line();
    let judged_part = match report.status {
        judge::JudgeStatus::Skipped => part(
            "judge",
            Err(report.detail.clone().unwrap_or_else(|| "skipped".into())),
        ),
        _ => part("judge", Ok(())),
    };
    let mut judged = serde_json::to_value(&report).expect("report serializes");
    if let Value::Object(o) = &mut judged {
        // Kept as an artifact; the result stays small.
        o.remove("exchanges");
    }
    Ok(JobOutput {
        result: json!({
            "app": ctx.shown_app(&app),
            "analyzer": judge::ANALYZER,
            "template": template.name,
            "status": status,
            "summary": summarize(&[]),
            "tools": [],
            "findings": [],
            "judge": judged,
            "coverage": [judged_part],
        }),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerformanceParams {
    app: PathBuf,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    templates: Option<PathBuf>,
    /// Closed loop: this many users, each on its own connection (default 8).
    #[serde(default)]
    users: Option<usize>,
    /// Open loop instead: this many requests per second.
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default = "default_load_duration")]
    duration: String,
    #[serde(default = "default_warmup")]
    warmup: String,
    /// An endpoint whose p50 latency is above this is reported as slow.
    #[serde(default = "default_slow")]
    slow_p50: String,
    /// `false` bypasses the analysis cache for this stage.
    #[serde(default)]
    #[allow(dead_code)]
    cache: Option<bool>,
}

fn default_load_duration() -> String {
    "5s".into()
}
fn default_warmup() -> String {
    "1s".into()
}
fn default_slow() -> String {
    "200ms".into()
}

struct Load {
    users: Option<usize>,
    rate: Option<f64>,
    duration: std::time::Duration,
    warmup: std::time::Duration,
    slow_p50_ms: f64,
}

fn parse_performance(params: &Value) -> Result<(AppParams, Load), String> {
    let p: PerformanceParams = serde_json::from_value(params.clone())
        .map_err(|e| format!("invalid params for `performance`: {e}"))?;
    let dur = |field: &str, v: &str| {
        humantime::parse_duration(v)
            .map_err(|e| format!("`{field}` = `{v}` is not a duration: {e}"))
    };
    let load = Load {
        users: p.users,
        rate: p.rate,
        duration: dur("duration", &p.duration)?,
        warmup: dur("warmup", &p.warmup)?,
        slow_p50_ms: dur("slow_p50", &p.slow_p50)?.as_secs_f64() * 1_000.0,
    };
    if p.users.is_some() && p.rate.is_some() {
        return Err("give either `users` (closed loop) or `rate` (open loop), not both".into());
    }
    Ok((
        AppParams {
            app: p.app,
            template: p.template,
            templates: p.templates,
            cache: p.cache,
        },
        load,
    ))
}

pub fn validate_performance(params: &Value) -> Result<(), String> {
    parse_performance(params).map(|_| ())
}

pub async fn run_performance(ctx: &JobContext) -> Result<JobOutput, Failure> {
    use crate::analysis::finding::{Finding, Location, Severity, ToolRun, ToolStatus};
    use crate::analysis::loadgen::{run_load, EndpointLoad, LoadConfig, LoadMode};
    let (target, load) =
        parse_performance(&ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    let target = resolve(target)?;
    let running = match start_app(ctx, "performance", &target, &["load test"]).await? {
        Ok(running) => running,
        Err(output) => return Ok(output),
    };
    let template = match &target.template {
        Ok(t) => with_found_routes(t, &target.app, &running.base_url).await.0,
        Err(why) => match discovered_template(&target.app, &running.base_url).await {
            (Some(t), _) => t,
            (None, from) => {
                let why = format!("{why}, and no routes to load: {from}");
                return Ok(started_not_analyzed(
                    ctx,
                    "performance",
                    &target,
                    &["load test"],
                    &why,
                    &running,
                ));
            }
        },
    };
    let app = target.app.clone();
    // Sign up, log in and create what the read endpoints need (a link to redirect, a todo
    // to fetch) the way the dynamic analyzer does; then load every GET route, the
    // protected ones in the session the app gave.
    let session = dynamic::sign_in_and_create(&running.base_url, &template).await;
    let context = &session.context;
    let mut endpoints = Vec::new();
    let mut template_paths = std::collections::HashMap::new();
    let health = running
        .plan
        .recipe
        .health
        .clone()
        .unwrap_or_else(|| crate::analysis::apps::DEFAULT_HEALTH.into());
    // The app's own routes: a health check measures nothing the app does.
    let mut protected_skipped = 0;
    for e in template
        .endpoints
        .iter()
        .filter(|e| e.method == "GET" && e.path != health && e.path != "/health")
        // Loading a logout would end the session the protected routes are loaded in.
        .filter(|e| dynamic::walk_rank(&e.method, &e.path) < 7)
    {
        if e.auth && !session.logged_in() {
            protected_skipped += 1;
            continue;
        }
        let path = dynamic::concrete_path(e, context);
        template_paths.insert(path.clone(), e.path.clone());
        endpoints.push(EndpointLoad::new("GET", &path));
    }
    if endpoints.is_empty() {
        // Said and counted as not loaded: never a failure, never "fast".
        let why = if protected_skipped > 0 {
            format!(
                "template `{}`: its {protected_skipped} GET routes besides the health check need a login, and none succeeded ({})",
                template.name,
                session.walked.join("; ")
            )
        } else {
            format!(
                "template `{}` has no GET route besides the health check to load",
                template.name
            )
        };
        return Ok(started_not_analyzed(
            ctx,
            "performance",
            &target,
            &["load test"],
            &why,
            &running,
        ));
    }
    let mode = match (load.rate, load.users) {
        (Some(rate), _) => LoadMode::OpenLoop {
            rate_per_sec: rate,
            max_in_flight: 256,
        },
        (None, users) => LoadMode::ClosedLoop {
            users: users.unwrap_or(8),
        },
    };
    let config = LoadConfig {
        base_url: running.base_url.clone(),
        endpoints,
        mode,
        duration: load.duration,
        warmup: load.warmup,
        request_timeout: std::time::Duration::from_secs(10),
        headers: session.headers(),
    };
    ctx.step("load", Some(20.0), Some(config.mode.describe()));
    let started = std::time::Instant::now();
    let report = run_load(&config, &ctx.cancel)
        .await
        .map_err(|e| Failure::retryable("load_failed", e.to_string()))?;
    let _ = std::fs::copy(&running.log, ctx.output_dir.join("app.log"));
    if let Err(e) = running.ensure_alive() {
        // The load killed it: a result about the app.
        return Ok(app_outcome(
            ctx,
            "performance",
            &target,
            &e,
            "crashed_under_load",
            &["load test"],
        ));
    }
    let mut findings = Vec::new();
    for ep in &report.endpoints {
        let shown = template_paths
            .get(&ep.path)
            .cloned()
            .unwrap_or_else(|| ep.path.clone());
        let at = Location {
            path: format!("{} {shown}", ep.method),
            line: None,
            column: None,
            end_line: None,
        };
        let p50 = ep.stats.latency_ms.p50;
        if p50 > load.slow_p50_ms {
            let severity = if p50 > 4.0 * load.slow_p50_ms {
                Severity::Medium
            } else {
                Severity::Low
            };
            findings.push(Finding::new(
                "performance",
                "assay-load",
                "slow_endpoint",
                Some(400),
                severity,
                "slow",
                &format!(
                    "p50 latency {p50:.0} ms (p99 {:.0} ms) under {}; slower than {:.0} ms",
                    ep.stats.latency_ms.p99, report.mode, load.slow_p50_ms
                ),
                at.clone(),
            ));
        }
        if ep.stats.error_rate > 0.01 {
            findings.push(Finding::new(
                "performance",
                "assay-load",
                "errors_under_load",
                None,
                Severity::Medium,
                "errors",
                &format!(
                    "{:.1}% of requests failed under load (statuses {:?})",
                    100.0 * ep.stats.error_rate,
                    ep.stats.status_counts
                ),
                at,
            ));
        }
    }
    let findings = merge(findings);
    let runs = vec![ToolRun {
        tool: "assay-load".into(),
        status: if findings.is_empty() {
            ToolStatus::NoIssues
        } else {
            ToolStatus::Success
        },
        version: Some(env!("CARGO_PKG_VERSION").into()),
        duration_ms: started.elapsed().as_millis() as u64,
        findings: findings.len(),
        detail: Some(report.mode.clone()),
        raw_output: None,
    }];
    write_sarif(ctx, "performance.sarif", &findings, &runs)?;
    let mut perf = serde_json::to_value(&report).expect("report serializes");
    if let Some(eps) = perf.get_mut("endpoints").and_then(|e| e.as_array_mut()) {
        for ep in eps {
            let concrete = ep["path"].as_str().unwrap_or("").to_string();
            if let Some(t) = template_paths.get(&concrete) {
                ep["template_path"] = json!(t);
            }
        }
    }
    ctx.step(
        "load",
        Some(100.0),
        Some(format!("{:.0} req/s", report.overall.requests_per_sec)),
    );
    // Routes that answered mostly 4xx were not really loaded (a 404 costs nothing).
    let real: Vec<&str> = report
        .endpoints
        .iter()
        .filter(|e| e.stats.responses > 0 && e.stats.client_errors * 2 < e.stats.responses)
        .map(|e| e.path.as_str())
        .collect();
    let loaded = if real.is_empty() {
        Err(format!(
            "nothing real could be loaded: every route answered mostly 4xx or not at all ({})",
            report
                .endpoints
                .iter()
                .map(|e| format!("{} {:?}", e.path, e.stats.status_counts))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    } else {
        Ok(())
    };
    let mut coverage = vec![part("load test", loaded)];
    if protected_skipped > 0 {
        coverage.push(part(
            "protected routes",
            Err(format!(
                "{protected_skipped} GET routes that need a login were not loaded: no login succeeded ({})",
                session.walked.join("; ")
            )),
        ));
    } else if session.logged_in()
        && template
            .endpoints
            .iter()
            .any(|e| e.auth && e.method == "GET")
    {
        coverage.push(part("protected routes", Ok(())));
    }
    Ok(JobOutput {
        result: json!({
            "app": ctx.shown_app(&app),
            "analyzer": "performance",
            "template": template.name,
            "app_outcome": "started",
            "run": running.plan.describe(),
            "install": running.env.as_ref().map(|e| e.describe()),
            "health": running.health,
            "summary": summarize(&findings),
            "tools": runs,
            "findings": findings,
            "performance": perf,
            "session": session.describe(),
            "coverage": coverage,
        }),
    })
}
