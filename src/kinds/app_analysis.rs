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
    let app = std::path::absolute(&p.app).unwrap_or(p.app.clone());
    if !app.is_dir() {
        return Err(Failure::permanent(
            "app_not_found",
            format!(
                "app folder `{}` does not exist on this worker",
                app.display()
            ),
        ));
    }
    let manifest = load_manifest(&app).map_err(app_failure)?;
    let dir = p.templates.unwrap_or_else(catalog::builtin_dir);
    let catalog =
        catalog::load_dir(&dir).map_err(|e| Failure::permanent("bad_catalog", e.to_string()))?;
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
    let dir = std::env::temp_dir().join("assay-apps");
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
            "app": app,
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
            let report = tokio::select! {
                r = judge::judge_app(&config, &template, &app) => r,
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
            "app": app,
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
