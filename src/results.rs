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
    /// Non-blank lines of the app's code, as static analysis counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_lines: Option<u64>,
    /// Weighted findings by category, as the ranking counts them (`crate::ranking`).
    #[serde(default)]
    pub scores: AppScores,
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
            code_lines: None,
            scores: AppScores::default(),
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
        if let Some(lines) = result.pointer("/code/lines").and_then(|l| l.as_u64()) {
            entry.code_lines = Some(lines);
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
        entry.scores = AppScores::of(&entry.findings, entry.did_not_run());
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

pub use crate::ranking::{compare, AppScores, Coverage, ModelStanding};

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
                score_before: old.map(|x| x.scores.security),
                score_after: new.map(|x| x.scores.security),
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

    fn finding(tool: &str, rule: &str, cwe: Option<u32>, severity: Severity) -> Finding {
        Finding::new(
            "static",
            tool,
            rule,
            cwe,
            severity,
            "x",
            "m",
            crate::analysis::finding::Location {
                path: "app.py".into(),
                line: Some(1),
                column: None,
                end_line: None,
            },
        )
    }

    /// An app with `high` security findings (bandit, CWE-89) and `low` quality ones
    /// (pylint), of `lines` lines.
    fn scored_app(
        model: &str,
        template: &str,
        high: usize,
        low: usize,
        pass: f64,
        lines: u64,
    ) -> AppResults {
        let findings: Vec<Finding> = (0..high)
            .map(|_| finding("bandit", "B608", Some(89), Severity::High))
            .chain((0..low).map(|_| finding("pylint", "W0612", None, Severity::Low)))
            .collect();
        AppResults {
            app: format!("model={model} template={template}"),
            model: Some(model.into()),
            template: Some(template.into()),
            analyzers: vec![],
            summary: summarize(&findings),
            tools: vec![],
            scores: AppScores::of(&findings, false),
            findings,
            performance: Some(
                json!({"overall": {"requests_per_sec": 100.0 * pass, "latency_ms": {"p50": 2.0}}}),
            ),
            judge: Some(json!({"pass_rate": pass})),
            outcome: None,
            coverage: String::new(),
            code_lines: Some(lines),
        }
    }

    #[test]
    fn models_are_ranked_by_security_then_quality_each_per_app_and_per_kloc() {
        let standings = compare(&[
            scored_app("a", "todo", 2, 0, 0.5, 500),
            scored_app("a", "blog", 0, 1, 0.7, 1500),
            scored_app("b", "todo", 0, 2, 0.9, 100),
            scored_app("b", "blog", 0, 0, 0.9, 100),
            scored_app("c", "todo", 0, 5, 0.9, 100),
            scored_app("c", "blog", 0, 5, 0.9, 100),
        ]);
        let order: Vec<&str> = standings.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(
            order,
            ["b", "c", "a"],
            "no security findings beat 5 per app; then fewer quality findings"
        );
        let [b, c, a] = [&standings[0], &standings[1], &standings[2]];
        assert_eq!((a.security_score, a.quality_score), (5.0, 0.5));
        assert_eq!((b.security_score, b.quality_score), (0.0, 1.0));
        assert_eq!(c.quality_score, 5.0);
        assert_eq!(a.code_lines, 2000);
        assert_eq!(a.security_per_kloc, Some(5.0), "10 points over 2 KLOC");
        assert_eq!(b.quality_per_kloc, Some(10.0), "2 points over 0.2 KLOC");
        assert_eq!(a.by_category["security"], 2);
        assert_eq!(a.by_severity["high"], 2);
        assert!((a.pass_rate.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(a.by_template["todo"], 10.0);
        assert_eq!(a.requests_per_sec, Some(60.0));
        assert_eq!((a.rank, b.rank), (3, 1));
        assert!(b.small_sample && b.note.contains("small sample (2 apps)"));
        let tie = b.versus_next.as_ref().unwrap();
        assert!(
            tie.tie && tie.model == "c",
            "b and c have equal security: {tie:?}"
        );
        assert!(b.note.contains("tie with c (p=1.00)"), "{}", b.note);
    }

    /// The ranking is not fooled by a model whose apps do not run, nor by one that wrote
    /// more code, and says when a difference is real.
    #[test]
    fn apps_that_do_not_run_count_against_their_model_and_many_apps_give_a_verdict() {
        let mut apps = Vec::new();
        for t in 0..8 {
            // "quiet": every app crashes at start, so nothing but static analysis ran.
            let mut quiet = scored_app("quiet", &format!("t{t}"), 0, 0, 0.0, 50);
            quiet.outcome = Some("does_not_start".into());
            quiet.scores = AppScores::of(&quiet.findings, quiet.did_not_run());
            apps.push(quiet);
            // "verbose" writes 10× the code with one high finding in every app.
            apps.push(scored_app("verbose", &format!("t{t}"), 1, 0, 0.9, 1000));
        }
        let standings = compare(&apps);
        let quiet = standings.iter().find(|m| m.model == "quiet").unwrap();
        let verbose = standings.iter().find(|m| m.model == "verbose").unwrap();
        assert_eq!(quiet.did_not_run, 8);
        assert_eq!(quiet.security_score, crate::ranking::DID_NOT_RUN_PENALTY);
        assert_eq!(verbose.rank, 1, "5 per app beats 10 per app that never ran");
        assert_eq!(verbose.security_per_kloc, Some(5.0));
        assert_eq!(quiet.security_per_kloc, Some(200.0));
        let v = verbose.versus_next.as_ref().unwrap();
        assert!(!v.tie && v.p_value < 0.01, "{v:?}");
        assert!(!verbose.small_sample && verbose.note.is_empty());
        assert_eq!(verbose.security_ci, Some([5.0, 5.0]));
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
            scores: AppScores::of(&findings, false),
            findings,
            performance: None,
            judge: None,
            outcome: None,
            coverage: String::new(),
            code_lines: None,
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
