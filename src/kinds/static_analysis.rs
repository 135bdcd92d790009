//! The `static` kind: run the static analyzer's tools over an app folder.
//!
//! Params: `app` (the app folder; relative paths resolve against the worker's working
//! directory), `tools` (default: all known), `timeout` per tool (default `120s`).
//! Result: `{app, analyzer, tools: [ToolRun], findings: [Finding], summary}`; each tool's
//! raw output and `static.sarif` are artifacts.

use super::{JobContext, JobOutput};
use crate::analysis::finding::{merge, summarize, ToolStatus};
use crate::analysis::{sarif, static_tools};
use crate::domain::Failure;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticParams {
    app: PathBuf,
    #[serde(default)]
    tools: Option<Vec<String>>,
    #[serde(default = "default_timeout")]
    timeout: String,
    /// `false` bypasses the analysis cache for this stage.
    #[serde(default)]
    #[allow(dead_code)]
    cache: Option<bool>,
}

fn default_timeout() -> String {
    "120s".into()
}

struct Parsed {
    app: PathBuf,
    tools: Vec<&'static static_tools::Tool>,
    timeout: Duration,
}

fn parse(params: &Value) -> Result<Parsed, String> {
    let p: StaticParams = serde_json::from_value(params.clone())
        .map_err(|e| format!("invalid params for `static`: {e}"))?;
    let timeout = humantime::parse_duration(&p.timeout)
        .map_err(|e| format!("`timeout` = `{}` is not a duration: {e}", p.timeout))?;
    let tools = match p.tools {
        None => static_tools::TOOLS.iter().collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                static_tools::tool(n).ok_or_else(|| {
                    let known: Vec<&str> = static_tools::TOOLS.iter().map(|t| t.name).collect();
                    format!("unknown static tool `{n}`; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Parsed {
        app: p.app,
        tools,
        timeout,
    })
}

/// What each tool could do for the app: done, or not and why (missing, failed, timed
/// out, its database out of reach). A tool with nothing to read (no JavaScript for
/// ESLint) had nothing to do, and is left out.
fn coverage(runs: &[crate::analysis::finding::ToolRun]) -> Vec<Value> {
    runs.iter()
        .filter(|r| r.status != ToolStatus::Skipped)
        .map(|r| match r.status {
            ToolStatus::Success | ToolStatus::NoIssues => {
                serde_json::json!({"part": r.tool, "done": true})
            }
            _ => serde_json::json!({
                "part": r.tool,
                "done": false,
                "why": r.detail.clone().unwrap_or_else(|| format!("{:?}", r.status).to_lowercase()),
            }),
        })
        .collect()
}

pub fn validate(params: &Value) -> Result<(), String> {
    parse(params).map(|_| ())
}

pub async fn run(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let p = parse(&ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    let app = super::app_folder(&p.app)?;
    let scratch = super::scratch_dir()
        .map_err(|e| Failure::retryable("io", format!("creating a scratch folder: {e}")))?;
    ctx.step(
        "static analysis",
        Some(0.0),
        Some(format!("{} tools", p.tools.len())),
    );
    let outcome = tokio::select! {
        o = static_tools::run_all(&app, &p.tools, p.timeout, &ctx.output_dir, scratch.path()) => {
            o.map_err(|e| Failure::retryable("io", format!("copying the app for analysis: {e}")))?
        }
        _ = ctx.cancel.cancelled() => return Err(Failure::retryable("stopped", "static analysis was stopped")),
    };
    let findings = merge(outcome.findings);
    let sarif = sarif::to_sarif(&findings, &outcome.runs);
    std::fs::write(
        ctx.output_dir.join("static.sarif"),
        serde_json::to_vec_pretty(&sarif).expect("SARIF serializes"),
    )
    .map_err(|e| Failure::retryable("io", format!("writing static.sarif: {e}")))?;
    let ran = outcome
        .runs
        .iter()
        .filter(|r| matches!(r.status, ToolStatus::Success | ToolStatus::NoIssues))
        .count();
    ctx.step(
        "static analysis",
        Some(100.0),
        Some(format!(
            "{ran} of {} tools ran, {} findings",
            outcome.runs.len(),
            findings.len()
        )),
    );
    Ok(JobOutput {
        result: json!({
            "app": ctx.shown_app(&app),
            "analyzer": "static",
            "summary": summarize(&findings),
            "tools": outcome.runs,
            "findings": findings,
            "code": outcome.code,
            "coverage": coverage(&outcome.runs),
        }),
    })
}
