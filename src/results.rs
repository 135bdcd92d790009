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
    /// The model that generated the app, when its jobs' items name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
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
    /// What the app did when it was run: `started`, or its own failure
    /// (`does_not_start`, `never_answers`, …); `None` when no analyzer ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// `full` (every analyzer did every part), `partial`, or `none` (nothing completed).
    #[serde(default)]
    pub coverage: String,
}

impl AppResults {
    /// Whether the app failed to install, start or answer: the model's own result.
    pub fn did_not_run(&self) -> bool {
        self.outcome.as_deref().is_some_and(|o| o != "started")
    }

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
    // Per app: for each analyzer job, whether it did all it set out to.
    let mut covered: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for job in jobs
        .iter()
        .filter(|j| ANALYSIS_KINDS.contains(&j.kind.as_str()))
    {
        let Some(app) = app_of(job) else { continue };
        let entry = apps.entry(app.clone()).or_insert_with(|| AppResults {
            app: app.clone(),
            model: job.item["model"].as_str().map(str::to_string),
            template: job.item["template"].as_str().map(str::to_string),
            analyzers: Vec::new(),
            summary: Summary::default(),
            tools: Vec::new(),
            findings: Vec::new(),
            performance: None,
            judge: None,
            outcome: None,
            coverage: String::new(),
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
            covered.entry(app.clone()).or_default().push(false);
            continue;
        };
        // A failure to run outranks "started": one analyzer that saw it crash says so.
        if let Some(outcome) = result.get("app_outcome").and_then(|o| o.as_str()) {
            if entry.outcome.as_deref().is_none_or(|o| o == "started") {
                entry.outcome = Some(outcome.to_string());
            }
        }
        let all_parts = result
            .get("coverage")
            .and_then(|c| c.as_array())
            .is_none_or(|parts| parts.iter().all(|p| p["done"] == true));
        covered.entry(app.clone()).or_default().push(all_parts);
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
    for (name, entry) in apps.iter_mut() {
        let parts = covered.get(name).map(Vec::as_slice).unwrap_or(&[]);
        entry.coverage = if !parts.is_empty() && parts.iter().all(|d| *d) {
            "full"
        } else if parts.iter().any(|d| *d) {
            "partial"
        } else {
            "none"
        }
        .to_string();
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
        if let Some(outcome) = &a.outcome {
            out += &format!(
                "  app: {} · coverage {}\n",
                outcome.replace('_', " "),
                a.coverage
            );
        }
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

/// One model's standing across the apps it generated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelStanding {
    pub model: String,
    pub apps: usize,
    /// Findings per severity, summed over its apps.
    pub by_severity: BTreeMap<String, usize>,
    /// critical × 10 + high × 5 + medium × 2 + low × 1 per app: lower is better.
    pub security_score: f64,
    /// Mean of the judge's pass rates over the apps that were judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_rate: Option<f64>,
    /// Median over its apps of the load test's p50 latency and throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<f64>,
    /// Per template: its app's security score (the heatmap's row).
    pub by_template: BTreeMap<String, f64>,
    /// Apps that did not install, start or answer: counted here, apart from the scores
    /// of the apps that ran (see `security_score`).
    #[serde(default)]
    pub did_not_run: usize,
    /// Apps analyzed fully, partially, not at all.
    #[serde(default)]
    pub coverage: Coverage,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    pub full: usize,
    pub partial: usize,
    pub none: usize,
}

/// Weighted findings of one app: what the security ranking and the heatmap use.
pub fn security_score(summary: &Summary) -> f64 {
    let n = |s: &str| *summary.by_severity.get(s).unwrap_or(&0) as f64;
    n("critical") * 10.0 + n("high") * 5.0 + n("medium") * 2.0 + n("low")
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let mid = xs.len() / 2;
    Some(if xs.len() % 2 == 0 {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    })
}

/// The models ranked by security (fewest weighted findings per app first), with their
/// requirement pass rate and performance. Apps without a model are left out.
pub fn compare(apps: &[AppResults]) -> Vec<ModelStanding> {
    let mut by_model: BTreeMap<&str, Vec<&AppResults>> = BTreeMap::new();
    for a in apps {
        if let Some(m) = &a.model {
            by_model.entry(m).or_default().push(a);
        }
    }
    let mut out: Vec<ModelStanding> = by_model
        .into_iter()
        .map(|(model, apps)| {
            let mut by_severity = BTreeMap::new();
            for a in &apps {
                for (s, n) in &a.summary.by_severity {
                    *by_severity.entry(s.clone()).or_insert(0) += n;
                }
            }
            let scores: Vec<f64> = apps.iter().map(|a| security_score(&a.summary)).collect();
            let rates: Vec<f64> = apps
                .iter()
                .filter_map(|a| a.judge.as_ref()?.get("pass_rate")?.as_f64())
                .collect();
            let perf = |k: &str| -> Vec<f64> {
                apps.iter()
                    .filter_map(|a| {
                        let o = &a.performance.as_ref()?["overall"];
                        match k {
                            "p50" => o["latency_ms"]["p50"].as_f64(),
                            _ => o["requests_per_sec"].as_f64(),
                        }
                    })
                    .collect()
            };
            ModelStanding {
                model: model.to_string(),
                apps: apps.len(),
                by_severity,
                security_score: scores.iter().sum::<f64>() / apps.len() as f64,
                pass_rate: (!rates.is_empty())
                    .then(|| rates.iter().sum::<f64>() / rates.len() as f64),
                p50_ms: median(perf("p50")),
                requests_per_sec: median(perf("rps")),
                by_template: apps
                    .iter()
                    .filter_map(|a| Some((a.template.clone()?, security_score(&a.summary))))
                    .collect(),
                did_not_run: apps.iter().filter(|a| a.did_not_run()).count(),
                coverage: Coverage {
                    full: apps.iter().filter(|a| a.coverage == "full").count(),
                    partial: apps.iter().filter(|a| a.coverage == "partial").count(),
                    none: apps.iter().filter(|a| a.coverage == "none").count(),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.security_score
            .total_cmp(&b.security_score)
            .then_with(|| {
                b.pass_rate
                    .unwrap_or(0.0)
                    .total_cmp(&a.pass_rate.unwrap_or(0.0))
            })
            .then_with(|| a.model.cmp(&b.model))
    });
    out
}

/// How one app changed between two runs of the same spec: findings matched by their
/// fingerprint (stable across runs for the same code and rule).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppChange {
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Weighted findings before and after (`None`: the app is not in that run).
    pub score_before: Option<f64>,
    pub score_after: Option<f64>,
    /// Findings of the earlier run that are gone, and findings that are new.
    pub fixed: usize,
    pub new: usize,
}

/// Every app of either run with what changed, worst regressions first. Apps are matched
/// by model and template when they have both (their folders may differ between runs),
/// else by name.
pub fn diff_runs(before: &[AppResults], after: &[AppResults]) -> Vec<AppChange> {
    let identity = |a: &AppResults| match (&a.model, &a.template) {
        (Some(m), Some(t)) => format!("model={m} template={t}"),
        _ => a.app.clone(),
    };
    let by_name = |apps: &[AppResults]| -> BTreeMap<String, AppResults> {
        apps.iter().map(|a| (identity(a), a.clone())).collect()
    };
    let (b, a) = (by_name(before), by_name(after));
    let names: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let fingerprints = |app: Option<&AppResults>| -> std::collections::BTreeSet<String> {
        app.map(|x| x.findings.iter().map(|f| f.fingerprint.clone()).collect())
            .unwrap_or_default()
    };
    let mut out: Vec<AppChange> = names
        .into_iter()
        .map(|name| {
            let (old, new) = (b.get(name), a.get(name));
            let (fo, fa) = (fingerprints(old), fingerprints(new));
            let any = new.or(old).expect("the app is in one run");
            AppChange {
                app: any.app.clone(),
                model: any.model.clone(),
                template: any.template.clone(),
                score_before: old.map(|x| security_score(&x.summary)),
                score_after: new.map(|x| security_score(&x.summary)),
                fixed: fo.difference(&fa).count(),
                new: fa.difference(&fo).count(),
            }
        })
        .collect();
    let delta = |c: &AppChange| c.score_after.unwrap_or(0.0) - c.score_before.unwrap_or(0.0);
    out.sort_by(|x, y| {
        delta(y)
            .total_cmp(&delta(x))
            .then_with(|| x.app.cmp(&y.app))
    });
    out
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
    fn models_are_ranked_by_weighted_findings_then_pass_rate() {
        let app = |model: &str, template: &str, high: usize, low: usize, pass: f64| AppResults {
            app: format!("model={model} template={template}"),
            model: Some(model.into()),
            template: Some(template.into()),
            analyzers: vec![],
            summary: Summary {
                total: high + low,
                by_severity: [("high".to_string(), high), ("low".to_string(), low)].into(),
                ..Default::default()
            },
            tools: vec![],
            findings: vec![],
            performance: Some(
                json!({"overall": {"requests_per_sec": 100.0 * pass, "latency_ms": {"p50": 2.0}}}),
            ),
            judge: Some(json!({"pass_rate": pass})),
            outcome: None,
            coverage: String::new(),
        };
        let standings = compare(&[
            app("a", "todo", 2, 0, 0.5),
            app("a", "blog", 0, 1, 0.7),
            app("b", "todo", 0, 2, 0.9),
            app("b", "blog", 0, 0, 0.9),
        ]);
        assert_eq!(
            standings[0].model, "b",
            "1 weighted finding per app beats 5.5"
        );
        assert_eq!(standings[0].security_score, 1.0);
        assert_eq!(standings[1].security_score, 5.5);
        assert_eq!(standings[1].by_severity["high"], 2);
        assert!((standings[1].pass_rate.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(standings[1].by_template["todo"], 10.0);
        assert_eq!(standings[1].requests_per_sec, Some(60.0));
    }

    #[test]
    fn two_runs_are_compared_app_by_app_by_fingerprint() {
        let f = |fp: &str, severity: &str| {
            serde_json::from_value::<Finding>(json!({
                "analyzer": "static", "tool": "bandit", "rule": "B1", "severity": severity,
                "message": "m", "location": {"path": "app.py"}, "fingerprint": fp,
                "sources": [{"tool": "bandit", "rule": "B1", "tool_severity": "x", "message": "m"}]
            }))
            .unwrap()
        };
        let app = |name: &str, findings: Vec<Finding>| AppResults {
            app: name.into(),
            model: Some("m".into()),
            template: Some(name.into()),
            analyzers: vec![],
            summary: summarize(&findings),
            tools: vec![],
            findings,
            performance: None,
            judge: None,
            outcome: None,
            coverage: String::new(),
        };
        let before = [
            app("a", vec![f("x", "high"), f("y", "low")]),
            app("b", vec![f("z", "low")]),
        ];
        let after = [
            app("a", vec![f("y", "low")]),
            app("b", vec![f("z", "low"), f("w", "critical")]),
            app("c", vec![]),
        ];
        let changes = diff_runs(&before, &after);
        assert_eq!(changes[0].app, "b", "the worst regression first");
        assert_eq!((changes[0].fixed, changes[0].new), (0, 1));
        assert_eq!(
            (changes[0].score_before, changes[0].score_after),
            (Some(1.0), Some(11.0))
        );
        let a = changes.iter().find(|c| c.app == "a").unwrap();
        assert_eq!((a.fixed, a.new), (1, 0));
        let c = changes.iter().find(|c| c.app == "c").unwrap();
        assert_eq!(c.score_before, None, "new in the later run");
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

    /// An app the model wrote that does not start is counted apart, as the model's, and
    /// as not analyzed by the analyzers that needed it running.
    #[test]
    fn an_app_that_did_not_run_is_counted_apart_with_its_coverage() {
        let with_model = |mut j: Job, model: &str| {
            j.item = json!({"model": model, "template": "t"});
            j.key = format!("{}[{model}]", j.kind);
            j
        };
        let jobs = vec![
            with_model(
                job(
                    1,
                    "static",
                    JobState::Completed,
                    Some(json!({"app": "a", "findings": [], "tools": []})),
                ),
                "m1",
            ),
            with_model(
                job(
                    2,
                    "dynamic",
                    JobState::Completed,
                    Some(json!({"app": "a", "app_outcome": "does_not_start",
                "findings": [], "tools": [], "coverage": [{"part": "security probes", "done": false, "why": "the app does not start"}]})),
                ),
                "m1",
            ),
            with_model(
                job(
                    3,
                    "performance",
                    JobState::Completed,
                    Some(json!({"app": "a", "app_outcome": "started",
                "findings": [], "tools": [], "coverage": [{"part": "load test", "done": true}]})),
                ),
                "m1",
            ),
            with_model(
                job(
                    4,
                    "static",
                    JobState::Completed,
                    Some(json!({"app": "b", "findings": [], "tools": []})),
                ),
                "m2",
            ),
            with_model(
                job(
                    5,
                    "dynamic",
                    JobState::Completed,
                    Some(json!({"app": "b", "app_outcome": "started",
                "findings": [], "tools": [], "coverage": [{"part": "security probes", "done": true}]})),
                ),
                "m2",
            ),
        ];
        let apps = build(&jobs);
        let a = apps
            .iter()
            .find(|a| a.model.as_deref() == Some("m1"))
            .unwrap();
        assert_eq!(
            a.outcome.as_deref(),
            Some("does_not_start"),
            "a crash outranks a start"
        );
        assert!(a.did_not_run());
        assert_eq!(a.coverage, "partial");
        let standings = compare(&apps);
        let m1 = standings.iter().find(|m| m.model == "m1").unwrap();
        let m2 = standings.iter().find(|m| m.model == "m2").unwrap();
        assert_eq!((m1.did_not_run, m2.did_not_run), (1, 0));
        assert_eq!(
            m2.coverage,
            Coverage {
                full: 1,
                partial: 0,
                none: 0
            }
        );
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
