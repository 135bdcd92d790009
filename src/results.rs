//! Per-app results of a pipeline: every analyzer's output for one app folded into one
//! record (findings merged across analyzers, counts, tool runs, performance figures, the
//! judge's verdicts) and a merged SARIF file. Pure: built from jobs the caller fetched.

use crate::analysis::finding::{merge, summarize, Finding, Severity, Summary, ToolRun};
use crate::analysis::sarif;
use crate::domain::JobState;
use crate::store::Job;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub const ANALYSIS_KINDS: &[&str] = &["static", "dynamic", "performance", "ai"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnalyzerStatus {
    pub analyzer: String,
    pub job_id: i64,
    /// `completed`, `skipped: …`, or the job's state and error.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppResults {
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub analyzers: Vec<AnalyzerStatus>,
    pub summary: Summary,
    pub tools: Vec<ToolRun>,
    pub findings: Vec<Finding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Value>,
}

impl AppResults {
    pub fn sarif(&self) -> Value {
        sarif::to_sarif(&self.findings, &self.tools)
    }
}

fn app_of(job: &Job) -> Option<String> {
    if job.params.get("app_from").is_some() {
        // A generated app lives in a worker's scratch folder; it is named by what made it
        // (`model=… template=…`), which every analysis of it shares.
        let item = job.item.as_object()?;
        let name = item
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{k}={s}"),
                None => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        return Some(name);
    }
    job.result
        .as_ref()
        .and_then(|r| r.get("app"))
        .and_then(|a| a.as_str())
        .map(str::to_string)
        .or_else(|| {
            job.params
                .get("app")
                .and_then(|a| a.as_str())
                .map(str::to_string)
        })
}

/// Fold a pipeline's analysis jobs into one record per app, in app order.
pub fn build(jobs: &[Job]) -> Vec<AppResults> {
    let mut apps: BTreeMap<String, AppResults> = BTreeMap::new();
    let mut raw_findings: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
    for job in jobs
        .iter()
        .filter(|j| ANALYSIS_KINDS.contains(&j.kind.as_str()))
    {
        let Some(app) = app_of(job) else { continue };
        let entry = apps.entry(app.clone()).or_insert_with(|| AppResults {
            app: app.clone(),
            template: None,
            analyzers: Vec::new(),
            summary: Summary::default(),
            tools: Vec::new(),
            findings: Vec::new(),
            performance: None,
            judge: None,
        });
        let status = match (&job.state, &job.result) {
            (JobState::Completed, Some(r)) => r
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("completed")
                .to_string(),
            (state, _) => match &job.last_error {
                Some(e) => format!("{state}: {} — {}", e.code, e.message),
                None => state.to_string(),
            },
        };
        entry.analyzers.push(AnalyzerStatus {
            analyzer: job.kind.clone(),
            job_id: job.id,
            status,
        });
        let Some(result) = job
            .result
            .as_ref()
            .filter(|_| job.state == JobState::Completed)
        else {
            continue;
        };
        if entry.template.is_none() {
            entry.template = result
                .get("template")
                .and_then(|t| t.as_str())
                .map(str::to_string);
        }
        if let Some(tools) = result.get("tools").cloned() {
            if let Ok(tools) = serde_json::from_value::<Vec<ToolRun>>(tools) {
                entry.tools.extend(tools);
            }
        }
        if let Some(findings) = result.get("findings").cloned() {
            if let Ok(findings) = serde_json::from_value::<Vec<Finding>>(findings) {
                raw_findings
                    .entry(app.clone())
                    .or_default()
                    .extend(findings);
            }
        }
        if let Some(p) = result.get("performance") {
            entry.performance = Some(p.clone());
        }
        if let Some(j) = result.get("judge") {
            entry.judge = Some(j.clone());
        }
    }
    for (app, findings) in raw_findings {
        if let Some(entry) = apps.get_mut(&app) {
            entry.findings = merge(findings);
        }
    }
    for entry in apps.values_mut() {
        entry.summary = summarize(&entry.findings);
        entry.analyzers.sort_by(|a, b| a.analyzer.cmp(&b.analyzer));
    }
    apps.into_values().collect()
}

/// The terminal rendering of `assay results`.
pub fn render(apps: &[AppResults], top: usize) -> String {
    let mut out = String::new();
    if apps.is_empty() {
        out.push_str("no analysis results in this pipeline (no static, dynamic, performance or ai jobs completed)\n");
        return out;
    }
    for a in apps {
        out += &format!("\n{}", a.app);
        if let Some(t) = &a.template {
            out += &format!("  (template {t})");
        }
        out.push('\n');
        let counts: Vec<String> = Severity::ALL_DESC
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    a.summary.by_severity.get(s.as_str()).copied().unwrap_or(0),
                    s.as_str()
                )
            })
            .collect();
        out += &format!("  findings: {} ({})\n", a.summary.total, counts.join(", "));
        for s in &a.analyzers {
            out += &format!("  {:<12} {}\n", s.analyzer, s.status);
        }
        let tools: Vec<String> = a
            .tools
            .iter()
            .map(|t| {
                let status = serde_json::to_value(t.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                match &t.version {
                    Some(v) => format!("{} {v}: {status}", t.tool),
                    None => format!("{}: {status}", t.tool),
                }
            })
            .collect();
        if !tools.is_empty() {
            out += &format!("  tools: {}\n", tools.join(", "));
        }
        if let Some(p) = &a.performance {
            out += &format!("  performance: {}\n", performance_line(p));
        }
        if let Some(j) = &a.judge {
            if let Some(rate) = j.get("pass_rate").and_then(|v| v.as_f64()) {
                let model = j.get("model").and_then(|m| m.as_str()).unwrap_or("?");
                out += &format!("  requirements: {:.0}% met (judge {model})\n", rate * 100.0);
            }
        }
        for f in a.findings.iter().take(top) {
            let tools: Vec<String> = f
                .sources
                .iter()
                .map(|s| format!("{}:{}", s.tool, s.rule))
                .collect();
            let line = f.location.line.map(|l| format!(":{l}")).unwrap_or_default();
            let cwe = f.cwe.map(|c| format!(" CWE-{c}")).unwrap_or_default();
            out += &format!(
                "    {:<8} {}{line}{cwe} — {} [{}]\n",
                f.severity.as_str(),
                f.location.path,
                f.message.chars().take(90).collect::<String>(),
                tools.join(", ")
            );
        }
        if a.findings.len() > top {
            out += &format!("    … {} more (--json for all)\n", a.findings.len() - top);
        }
    }
    out
}

fn performance_line(p: &Value) -> String {
    let overall = p.get("overall").unwrap_or(p);
    let get = |k: &str| overall.get(k).and_then(|v| v.as_f64());
    let lat = |k: &str| {
        overall
            .get("latency_ms")
            .and_then(|l| l.get(k))
            .and_then(|v| v.as_f64())
    };
    format!(
        "{:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, errors {:.1}%",
        get("requests_per_sec").unwrap_or(f64::NAN),
        lat("p50").unwrap_or(f64::NAN),
        lat("p99").unwrap_or(f64::NAN),
        100.0 * get("error_rate").unwrap_or(0.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(id: i64, kind: &str, state: JobState, result: Option<Value>) -> Job {
        Job {
            id,
            pipeline_id: 1,
            stage: kind.into(),
            key: format!("{kind}[app=a]"),
            kind: kind.into(),
            item: json!({}),
            params: json!({"app": "apps/a"}),
            state,
            attempts: 1,
            failed_attempts: 0,
            pending_deps: 0,
            run_after: 0,
            worker_id: None,
            lease_expires_at: None,
            attempt_deadline_at: None,
            cancel_requested: false,
            result,
            last_error: None,
            progress: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn generated_apps_are_named_by_what_made_them() {
        let analysis = |id: i64, kind: &str, worker_path: &str| Job {
            item: json!({"model": "vendor/m", "template": "todo-api"}),
            params: json!({"app_from": "generate"}),
            ..job(
                id,
                kind,
                JobState::Completed,
                Some(json!({"app": worker_path, "analyzer": kind, "findings": [], "tools": []})),
            )
        };
        // Two workers unpacked the same app in different places.
        let apps = build(&[
            analysis(1, "static", "/w1/apps/9"),
            analysis(2, "dynamic", "/w2/apps/9"),
        ]);
        assert_eq!(apps.len(), 1);
        assert_eq!(apps[0].app, "model=vendor/m template=todo-api");
        assert_eq!(apps[0].analyzers.len(), 2);
    }

    #[test]
    fn analyzers_of_one_app_fold_into_one_record_with_merged_findings() {
        let finding = |tool: &str, rule: &str| {
            json!({"analyzer": "static", "tool": tool, "rule": rule, "cwe": 89, "severity": "high", "message": "sqli",
                   "location": {"path": "app.py", "line": 3}, "fingerprint": "x",
                   "sources": [{"tool": tool, "rule": rule, "tool_severity": "HIGH", "message": "sqli"}]})
        };
        let jobs = vec![
            job(
                1,
                "static",
                JobState::Completed,
                Some(
                    json!({"app": "/abs/apps/a", "analyzer": "static", "findings": [finding("bandit", "B608")], "tools": []}),
                ),
            ),
            job(
                2,
                "dynamic",
                JobState::Completed,
                Some(
                    json!({"app": "/abs/apps/a", "analyzer": "dynamic", "template": "todo-api", "findings": [finding("semgrep", "sqli")], "tools": []}),
                ),
            ),
            job(
                3,
                "ai",
                JobState::Completed,
                Some(
                    json!({"app": "/abs/apps/a", "analyzer": "ai", "status": "skipped: no LLM endpoint configured", "judge": {"pass_rate": null}}),
                ),
            ),
            job(4, "noop", JobState::Completed, Some(json!({}))),
        ];
        let apps = build(&jobs);
        assert_eq!(apps.len(), 1);
        let a = &apps[0];
        assert_eq!(a.template.as_deref(), Some("todo-api"));
        assert_eq!(
            a.findings.len(),
            1,
            "same place and CWE merge across analyzers"
        );
        assert_eq!(a.findings[0].sources.len(), 2);
        assert_eq!(
            a.analyzers
                .iter()
                .find(|s| s.analyzer == "ai")
                .unwrap()
                .status,
            "skipped: no LLM endpoint configured"
        );
        let text = render(&apps, 10);
        assert!(
            text.contains("1 high") && text.contains("bandit:B608, semgrep:sqli"),
            "{text}"
        );
        assert_eq!(a.sarif()["runs"].as_array().unwrap().len(), 2);
    }
}
