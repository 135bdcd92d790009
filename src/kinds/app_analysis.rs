//! The `dynamic` and `ai` kinds: analyzers that need the app's template, and (dynamic)
//! the app running. Apps come from the worker's [`AppPool`]: one instance per app folder,
//! started on first use, health-gated, and stopped when the last job holding it ends. An
//! app that crashes is an infrastructure failure (retryable), never "no findings".
//!
//! Params: `app` (folder), optional `templates` (a catalog folder; default: the built-in
//! catalog). Results follow the static kind's shape: `{app, analyzer, tools, findings,
//! summary}`, plus `judge` for `ai`.

use super::{JobContext, JobOutput};
use crate::analysis::apps::{load_manifest, AppError, AppPool, MANIFEST};
use crate::analysis::catalog::{self, Template};
use crate::analysis::finding::{merge, summarize};
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

fn app_failure(e: AppError) -> Failure {
    let code = match &e {
        AppError::Crashed { .. } => "app_crashed",
        AppError::Unhealthy { .. } => "app_unhealthy",
        AppError::Manifest { .. } => "bad_app_manifest",
        AppError::ComposeUnavailable(_) => "compose_unavailable",
        AppError::ComposeRefused => "compose_refused",
        AppError::Sandbox(_) => "sandbox_unavailable",
        _ => "app_start",
    };
    if e.is_retryable() {
        Failure::retryable(code, e.to_string())
    } else {
        Failure::permanent(code, e.to_string())
    }
}

/// The app folder, its run recipe's template, and that template from the catalog.
fn prepare(kind: &str, ctx: &JobContext) -> Result<(PathBuf, Template), Failure> {
    let p = parse(kind, &ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    resolve(p)
}

fn resolve(p: AppParams) -> Result<(PathBuf, Template), Failure> {
    let app = super::app_folder(&p.app)?;
    let manifest = load_manifest(&app).map_err(app_failure)?;
    let catalog = catalog::with_user_dir(p.templates.as_deref())
        .map_err(|e| Failure::permanent("bad_catalog", e.to_string()))?;
    let dir = p.templates.clone().unwrap_or_else(catalog::builtin_dir);
    let template = catalog.get(&manifest.template).cloned().ok_or_else(|| {
        Failure::permanent(
            "unknown_template",
            format!(
                "{}/{MANIFEST} names template `{}`, which is not in {} (known: {})",
                app.display(),
                manifest.template,
                dir.display(),
                catalog.names().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    Ok((app, template))
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

pub async fn run_dynamic(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let (app, template) = prepare("dynamic", ctx)?;
    ctx.step("starting the app", None, Some(app.display().to_string()));
    let log = pooled_log(&app);
    let running = tokio::select! {
        r = AppPool::global().acquire(&app, &log) => r.map_err(app_failure)?,
        _ = ctx.cancel.cancelled() => return Err(Failure::retryable("stopped", "stopped while starting the app")),
    };
    ctx.step("probing", Some(10.0), Some(running.base_url.clone()));
    let outcome = tokio::select! {
        o = dynamic::probe(&running.base_url, &template, Some(&app), &running.manifest.run.health) => o,
        _ = ctx.cancel.cancelled() => return Err(Failure::retryable("stopped", "stopped while probing")),
    };
    let _ = std::fs::copy(&running.log, ctx.output_dir.join("app.log"));
    // A dead app answers nothing: that is a failed analysis, not a clean one.
    running.ensure_alive().map_err(app_failure)?;
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
            "summary": summarize(&findings),
            "tools": outcome.runs,
            "findings": findings,
        }),
    })
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
    let (app, template) = prepare("ai", ctx)?;
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
        }),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerformanceParams {
    app: PathBuf,
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
    let (app, template) = resolve(target)?;
    let log = pooled_log(&app);
    ctx.step("starting the app", None, Some(app.display().to_string()));
    let running = tokio::select! {
        r = AppPool::global().acquire(&app, &log) => r.map_err(app_failure)?,
        _ = ctx.cancel.cancelled() => return Err(Failure::retryable("stopped", "stopped while starting the app")),
    };
    // Create what the read endpoints need (a link to redirect, a todo to fetch), the way
    // the dynamic analyzer does, then load every public GET endpoint.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("HTTP client builds");
    let mut context = std::collections::HashMap::new();
    let unique = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    for e in template
        .endpoints
        .iter()
        .filter(|e| e.method == "POST" && !e.auth)
    {
        let body = e
            .request
            .as_ref()
            .map(|shape| dynamic::sample_body(shape, &unique));
        let mut req = client.post(format!(
            "{}{}",
            running.base_url,
            dynamic::fill_path(&e.path, &context)
        ));
        if let Some(b) = &body {
            req = req.json(b);
        }
        if let Ok(resp) = req.send().await {
            let text = crate::body::read_capped(resp, dynamic::MAX_PROBE_BODY).await;
            dynamic::remember(&mut context, &text.text());
        }
    }
    let mut endpoints = Vec::new();
    let mut template_paths = std::collections::HashMap::new();
    for e in template
        .endpoints
        .iter()
        .filter(|e| e.method == "GET" && !e.auth)
    {
        let path = dynamic::concrete_path(e, &context);
        template_paths.insert(path.clone(), e.path.clone());
        endpoints.push(EndpointLoad::new("GET", &path));
    }
    if endpoints.is_empty() {
        return Err(Failure::permanent(
            "nothing_to_load",
            format!(
                "template `{}` has no public GET endpoint to load",
                template.name
            ),
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
    };
    ctx.step("load", Some(20.0), Some(config.mode.describe()));
    let started = std::time::Instant::now();
    let report = run_load(&config, &ctx.cancel)
        .await
        .map_err(|e| Failure::retryable("load_failed", e.to_string()))?;
    let _ = std::fs::copy(&running.log, ctx.output_dir.join("app.log"));
    running.ensure_alive().map_err(app_failure)?;
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
    Ok(JobOutput {
        result: json!({
            "app": ctx.shown_app(&app),
            "analyzer": "performance",
            "template": template.name,
            "summary": summarize(&findings),
            "tools": runs,
            "findings": findings,
            "performance": perf,
        }),
    })
}
