//! Exports of a pipeline's results: a self-contained HTML report (one file, CSS inline,
//! charts as inline SVG, no script, nothing fetched from the network), the findings and
//! the model ranking as CSV, and the merged SARIF files of every app in one zip. Pure: no
//! IO, the caller fetches the pipeline, its results and its usage.

use crate::analysis::finding::{Finding, Severity, ToolStatus};
use crate::domain::{JobState, StateCounts};
use crate::generation::budget::{group_thousands, UsageTotals};
use crate::ranking;
use crate::results::{AppResults, ModelStanding};
use crate::store::{ModelUsage, Pipeline, PipelineUsage};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Cursor, Write};

/// Everything the HTML report shows.
pub struct ReportInput<'a> {
    pub pipeline: &'a Pipeline,
    /// Full apps, with findings and tools.
    pub apps: &'a [AppResults],
    /// `crate::results::compare(apps)`.
    pub models: &'a [ModelStanding],
    pub usage: &'a PipelineUsage,
    /// Microseconds since the epoch.
    pub generated_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("cannot write zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("cannot write export: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot serialize SARIF: {0}")]
    Json(#[from] serde_json::Error),
    #[error("export is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// What a pipeline exports to, by the file name it is served and saved under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The self-contained HTML report.
    Html,
    /// Every finding of every app.
    FindingsCsv,
    /// The model ranking.
    ModelsCsv,
    /// The pipeline, every app's full results, the ranking and the usage.
    Json,
    /// One merged SARIF file per app, zipped.
    SarifZip,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 5] = [
        ExportFormat::Html,
        ExportFormat::FindingsCsv,
        ExportFormat::ModelsCsv,
        ExportFormat::Json,
        ExportFormat::SarifZip,
    ];

    /// The name in the export's URL, and the end of its saved file's name.
    pub fn file_name(self) -> &'static str {
        match self {
            ExportFormat::Html => "report.html",
            ExportFormat::FindingsCsv => "findings.csv",
            ExportFormat::ModelsCsv => "models.csv",
            ExportFormat::Json => "results.json",
            ExportFormat::SarifZip => "sarif.zip",
        }
    }

    pub fn from_file_name(name: &str) -> Option<ExportFormat> {
        Self::ALL.into_iter().find(|f| f.file_name() == name)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Html => "text/html; charset=utf-8",
            ExportFormat::FindingsCsv | ExportFormat::ModelsCsv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
            ExportFormat::SarifZip => "application/zip",
        }
    }

    /// The name a download is saved under: `assay-pipeline-7-report.html`.
    pub fn download_name(self, pipeline_id: i64) -> String {
        format!("assay-pipeline-{pipeline_id}-{}", self.file_name())
    }
}

/// The bytes of one export.
pub fn export(format: ExportFormat, input: &ReportInput) -> Result<Vec<u8>, ExportError> {
    Ok(match format {
        ExportFormat::Html => html(input).into_bytes(),
        ExportFormat::FindingsCsv => findings_csv(input.apps)?.into_bytes(),
        ExportFormat::ModelsCsv => models_csv(input.models, &input.usage.by_model)?.into_bytes(),
        ExportFormat::Json => serde_json::to_vec_pretty(&serde_json::json!({
            "pipeline": input.pipeline,
            "generated_at": input.generated_at,
            "apps": input.apps,
            "models": input.models,
            "usage": input.usage,
        }))?,
        ExportFormat::SarifZip => sarif_zip(input.apps)?,
    })
}

const SEVERITY_COLORS: [(&str, &str); 5] = [
    ("critical", "#7f1d1d"),
    ("high", "#dc2626"),
    ("medium", "#f59e0b"),
    ("low", "#3b82f6"),
    ("info", "#9ca3af"),
];

const JOB_STATES: [JobState; 8] = [
    JobState::Waiting,
    JobState::Available,
    JobState::Running,
    JobState::Retrying,
    JobState::Completed,
    JobState::Dead,
    JobState::Cancelled,
    JobState::Skipped,
];

// ---------------------------------------------------------------------------------------
// CSV

/// Every finding of every app, one row each: app, model, template, severity, rule, cwe,
/// file, line, tools (`;`-joined distinct tools of its sources), message, fingerprint.
/// Header row first. Text that a spreadsheet would run as a formula is defused (see
/// [`spreadsheet_safe`]): messages and paths come from generated code and tool output.
pub fn findings_csv(apps: &[AppResults]) -> Result<String, ExportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "app",
        "model",
        "template",
        "severity",
        "rule",
        "cwe",
        "file",
        "line",
        "tools",
        "message",
        "fingerprint",
    ])?;
    for a in apps {
        let model = a.model.as_deref().unwrap_or("");
        let template = a.template.as_deref().unwrap_or("");
        for f in &a.findings {
            let cwe = f.cwe.map(|c| format!("CWE-{c}")).unwrap_or_default();
            let line = f.location.line.map(|l| l.to_string()).unwrap_or_default();
            w.write_record([
                spreadsheet_safe(&a.app).as_ref(),
                spreadsheet_safe(model).as_ref(),
                spreadsheet_safe(template).as_ref(),
                f.severity.as_str(),
                spreadsheet_safe(&f.rule).as_ref(),
                cwe.as_str(),
                spreadsheet_safe(&f.location.path).as_ref(),
                line.as_str(),
                spreadsheet_safe(&distinct_tools(f).join(";")).as_ref(),
                spreadsheet_safe(&f.message).as_ref(),
                f.fingerprint.as_str(),
            ])?;
        }
    }
    csv_string(w)
}

/// The model ranking: rank, model, apps, critical, high, medium, low, info,
/// security_score, pass_rate, p50_ms, requests_per_sec, prompt_tokens,
/// completion_tokens, cost_usd, then (added later, so appended) did_not_run,
/// coverage_full, coverage_partial, coverage_none, code_lines, security_ci_low,
/// security_ci_high, security_per_kloc, quality_score, quality_ci_low, quality_ci_high,
/// quality_per_kloc, small_sample, next_model, p_value_vs_next, tie_with_next. Usage is
/// matched by model name (summed over providers); missing values are empty cells. Scores
/// are as `crate::ranking` rounds them for every view; `pass_rate` is a fraction.
pub fn models_csv(models: &[ModelStanding], usage: &[ModelUsage]) -> Result<String, ExportError> {
    let usage = usage_by_model(usage);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "rank",
        "model",
        "apps",
        "critical",
        "high",
        "medium",
        "low",
        "info",
        "security_score",
        "pass_rate",
        "p50_ms",
        "requests_per_sec",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "did_not_run",
        "coverage_full",
        "coverage_partial",
        "coverage_none",
        "code_lines",
        "security_ci_low",
        "security_ci_high",
        "security_per_kloc",
        "quality_score",
        "quality_ci_low",
        "quality_ci_high",
        "quality_per_kloc",
        "small_sample",
        "next_model",
        "p_value_vs_next",
        "tie_with_next",
    ])?;
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for m in models {
        let u = usage.get(m.model.as_str());
        let mut row = vec![
            m.rank.to_string(),
            spreadsheet_safe(&m.model).into_owned(),
            m.apps.to_string(),
        ];
        for s in Severity::ALL_DESC {
            row.push(
                m.by_severity
                    .get(s.as_str())
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            );
        }
        row.push(m.security_score.to_string());
        row.push(opt(m.pass_rate));
        row.push(opt(m.p50_ms));
        row.push(opt(m.requests_per_sec));
        row.push(u.map(|u| u.prompt_tokens.to_string()).unwrap_or_default());
        row.push(
            u.map(|u| u.completion_tokens.to_string())
                .unwrap_or_default(),
        );
        row.push(u.map(|u| u.cost_usd.to_string()).unwrap_or_default());
        let ci = |c: Option<[f64; 2]>, i: usize| opt(c.map(|c| c[i]));
        row.extend([
            m.did_not_run.to_string(),
            m.coverage.full.to_string(),
            m.coverage.partial.to_string(),
            m.coverage.none.to_string(),
            m.code_lines.to_string(),
            ci(m.security_ci, 0),
            ci(m.security_ci, 1),
            opt(m.security_per_kloc),
            m.quality_score.to_string(),
            ci(m.quality_ci, 0),
            ci(m.quality_ci, 1),
            opt(m.quality_per_kloc),
            m.small_sample.to_string(),
        ]);
        match &m.versus_next {
            Some(v) => row.extend([
                spreadsheet_safe(&v.model).into_owned(),
                v.p_value.to_string(),
                v.tie.to_string(),
            ]),
            None => row.extend([String::new(), String::new(), String::new()]),
        }
        w.write_record(&row)?;
    }
    csv_string(w)
}

/// A cell that Excel, LibreOffice or Sheets would evaluate (it starts with `=`, `+`, `-`,
/// `@`, a tab or a carriage return) gets a leading `'`, which they show as text: an app
/// written by a model must not run formulas on the researcher's machine (OWASP's advice
/// on CSV injection). Any other text is left exactly as it is.
pub fn spreadsheet_safe(text: &str) -> std::borrow::Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}").into(),
        _ => text.into(),
    }
}

fn csv_string(w: csv::Writer<Vec<u8>>) -> Result<String, ExportError> {
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes)?)
}

fn distinct_tools(f: &Finding) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for s in &f.sources {
        if !out.contains(&s.tool.as_str()) {
            out.push(&s.tool);
        }
    }
    out
}

/// Usage per model name, summed over the providers that served it.
/// What generating with each model cost, by model name: the judge's calls (which may use
/// one of the same models) are its own spending, not the judged model's.
fn usage_by_model(usage: &[ModelUsage]) -> HashMap<&str, UsageTotals> {
    let mut out: HashMap<&str, UsageTotals> = HashMap::new();
    for u in usage.iter().filter(|u| !is_judge(u)) {
        out.entry(u.model.as_str()).or_default().add(&u.totals);
    }
    out
}

/// Calls the `ai` judge made (see `kinds::judge_gate::provider_label`).
pub fn is_judge(u: &ModelUsage) -> bool {
    u.provider
        .starts_with(crate::kinds::judge_gate::JUDGE_PROVIDER_PREFIX)
}

// ---------------------------------------------------------------------------------------
// SARIF

/// A zip holding one merged SARIF 2.1.0 file per app (`AppResults::sarif()`, pretty
/// JSON), named by [`sarif_file_names`], in the apps' order.
pub fn sarif_zip(apps: &[AppResults]) -> Result<Vec<u8>, ExportError> {
    let names = sarif_file_names(apps);
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (app, name) in apps.iter().zip(names) {
        zip.start_file(name, options)?;
        let json = serde_json::to_vec_pretty(&app.sarif())?;
        zip.write_all(&json)?;
    }
    Ok(zip.finish()?.into_inner())
}

const MAX_NAME: usize = 120;

/// One safe, distinct file name per app, in the apps' order: the app's name with every
/// character outside `[A-Za-z0-9._=-]` replaced by `_`, cut to 120 characters, then
/// `.sarif`; a name already taken (compared without case, since some file systems ignore
/// it) gets `-2`, `-3`, … before `.sarif`. An empty name becomes `app`.
pub fn sarif_file_names(apps: &[AppResults]) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::with_capacity(apps.len());
    // The next suffix to try per base: keeps many equal names linear.
    let mut next: HashMap<String, usize> = HashMap::new();
    apps.iter()
        .map(|a| {
            let mut base: String = a
                .app
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .take(MAX_NAME)
                .collect();
            if base.is_empty() {
                base = "app".into();
            }
            let first = format!("{base}.sarif");
            if taken.insert(first.to_ascii_lowercase()) {
                return first;
            }
            let n = next.entry(base.to_ascii_lowercase()).or_insert(2);
            loop {
                let name = format!("{base}-{n}.sarif");
                *n += 1;
                if taken.insert(name.to_ascii_lowercase()) {
                    return name;
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// HTML

/// A self-contained HTML report: one file, CSS inline, charts as inline SVG, no script
/// and no network reference at all, so it opens offline and prints well.
pub fn html(input: &ReportInput) -> String {
    let view = build_view(input);
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Escape `<>&"'` only: minijinja also escapes `/`, which is legal but makes every
    // path and model name (`openai/gpt-4o`) unreadable in the source.
    env.set_formatter(|out, state, value| match value.as_str() {
        Some(s) if !value.is_safe() && state.auto_escape() != minijinja::AutoEscape::None => out
            .write_str(&escape_html(s))
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())),
        _ => minijinja::escape_formatter(out, state, value),
    });
    let rendered = env
        .template_from_named_str("report.html", TEMPLATE)
        .and_then(|t| t.render(&view));
    match rendered {
        Ok(html) => html,
        // The template is fixed and tested; should it ever fail, say so readably.
        Err(e) => format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Assay report</title>\
             <h1>Assay report of pipeline #{}</h1><pre>report rendering failed: {}</pre>",
            input.pipeline.id,
            escape_html(&format!("{e:#}"))
        ),
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// UTC, `2024-05-01 12:34:56 UTC`.
fn fmt_time(us: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Like the dashboard's `fmtDuration`.
fn fmt_duration(us: i64) -> String {
    let s = us.max(0) as f64 / 1e6;
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0).floor(), (s % 60.0).round())
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Like the dashboard's `usageText`.
fn usage_text(t: Option<&UsageTotals>) -> String {
    let Some(t) = t.filter(|t| t.calls > 0) else {
        return "—".into();
    };
    let mut s = format!(
        "{} tokens · ${:.4}",
        group_thousands(t.total_tokens()),
        t.cost_usd
    );
    if t.cached_calls > 0 {
        s += &format!(" · {} cached", t.cached_calls);
    }
    s
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.0}%", 100.0 * x))
        .unwrap_or_else(|| "—".into())
}

/// Like the dashboard's `heatColor`: green (no weighted findings) to red (the worst).
fn heat_color(score: f64, max: f64) -> String {
    let t = if max > 0.0 {
        (score / max).min(1.0)
    } else {
        0.0
    };
    let hue = (130.0 * (1.0 - t)).round();
    format!("hsl({hue}, 70%, {:.1}%)", 88.0 - 30.0 * t)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

fn px(v: f64) -> String {
    format!("{v:.1}")
}

#[derive(Serialize)]
struct View<'a> {
    title: String,
    pipeline: PipelineView<'a>,
    generated_at: String,
    app_count: usize,
    finding_count: usize,
    totals: Vec<SevCell>,
    models: Vec<ModelRow<'a>>,
    /// What an app that did not run adds to its scores.
    penalty: f64,
    severity_chart: Option<SeverityChart>,
    heatmap: Option<Heatmap<'a>>,
    apps: Vec<AppView<'a>>,
}

#[derive(Serialize)]
struct PipelineView<'a> {
    id: i64,
    name: &'a str,
    state: &'static str,
    created: String,
    finished: Option<String>,
    duration: String,
    running: bool,
    counts: Vec<StateCount>,
    jobs_total: i64,
    usage: String,
    calls: i64,
    failed_calls: i64,
    budget: Option<String>,
    by_model: Vec<(String, String)>,
}

#[derive(Serialize)]
struct StateCount {
    state: &'static str,
    n: i64,
    width: String,
}

#[derive(Serialize)]
struct SevCell {
    sev: &'static str,
    n: usize,
}

#[derive(Serialize)]
struct ModelRow<'a> {
    rank: usize,
    model: &'a str,
    apps: usize,
    did_not_run: usize,
    /// Apps analyzed fully / partially / not at all.
    coverage: String,
    counts: Vec<SevCell>,
    kloc: String,
    security: String,
    security_kloc: String,
    quality: String,
    quality_kloc: String,
    /// A tie with the next model, a small sample.
    note: String,
    pass_rate: String,
    p50: String,
    rps: String,
    cost: String,
}

#[derive(Serialize)]
struct SeverityChart {
    width: usize,
    height: usize,
    legend_y: usize,
    legend: Vec<LegendItem>,
    rows: Vec<ChartRow>,
}

#[derive(Serialize)]
struct LegendItem {
    label: &'static str,
    color: &'static str,
    x: String,
}

#[derive(Serialize)]
struct ChartRow {
    label: String,
    full_label: String,
    text_y: String,
    bars: Vec<Bar>,
    value: String,
    value_x: String,
    value_y: String,
}

#[derive(Serialize)]
struct Bar {
    x: String,
    y: String,
    width: String,
    height: String,
    color: &'static str,
    title: String,
}

#[derive(Serialize)]
struct Heatmap<'a> {
    templates: Vec<&'a str>,
    rows: Vec<HeatRow<'a>>,
}

#[derive(Serialize)]
struct HeatRow<'a> {
    model: &'a str,
    cells: Vec<Option<HeatCell>>,
}

#[derive(Serialize)]
struct HeatCell {
    score: f64,
    text: String,
    color: String,
}

#[derive(Serialize)]
struct AppView<'a> {
    n: usize,
    app: &'a str,
    model: Option<&'a str>,
    template: Option<&'a str>,
    counts: Vec<SevCell>,
    total: usize,
    analyzers: Vec<AnalyzerView<'a>>,
    tools: Vec<ToolView<'a>>,
    findings: Vec<FindingView<'a>>,
    performance: Option<PerfView>,
    judge: Option<JudgeView>,
}

#[derive(Serialize)]
struct AnalyzerView<'a> {
    analyzer: &'a str,
    status: &'a str,
    class: &'static str,
}

#[derive(Serialize)]
struct ToolView<'a> {
    tool: &'a str,
    status: &'static str,
    class: &'static str,
    version: &'a str,
    duration: String,
    findings: usize,
    detail: &'a str,
}

#[derive(Serialize)]
struct FindingView<'a> {
    severity: &'static str,
    rule: &'a str,
    cwe: Option<String>,
    location: String,
    short_message: String,
    message: &'a str,
    snippet: Option<&'a str>,
    fingerprint: &'a str,
    analyzer: &'a str,
    sources: Vec<SourceView<'a>>,
}

#[derive(Serialize)]
struct SourceView<'a> {
    tool: &'a str,
    rule: &'a str,
    tool_severity: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct PerfView {
    mode: Option<String>,
    rps: String,
    p50: String,
    p99: String,
    error_rate: String,
    chart: Option<LatencyChart>,
}

#[derive(Serialize)]
struct LatencyChart {
    width: usize,
    height: usize,
    legend_y: usize,
    rows: Vec<ChartRow>,
}

#[derive(Serialize)]
struct JudgeView {
    model: Option<String>,
    status: Option<String>,
    pass_rate: Option<String>,
    summary: Option<String>,
    detail: Option<String>,
    requirements: Vec<RequirementView>,
    quality: Vec<QualityView>,
}

#[derive(Serialize)]
struct RequirementView {
    id: String,
    requirement: String,
    verdict: String,
    class: &'static str,
    evidence: Vec<EvidenceView>,
}

#[derive(Serialize)]
struct EvidenceView {
    file: String,
    quote: String,
    explanation: String,
}

#[derive(Serialize)]
struct QualityView {
    criterion: String,
    score: String,
    justification: String,
}

fn sev_cells(by: &std::collections::BTreeMap<String, usize>) -> Vec<SevCell> {
    Severity::ALL_DESC
        .iter()
        .map(|s| SevCell {
            sev: s.as_str(),
            n: by.get(s.as_str()).copied().unwrap_or(0),
        })
        .collect()
}

fn state_counts(c: &StateCounts) -> Vec<StateCount> {
    let total = c.total().max(1) as f64;
    JOB_STATES
        .iter()
        .map(|&s| {
            let n = match s {
                JobState::Waiting => c.waiting,
                JobState::Available => c.available,
                JobState::Running => c.running,
                JobState::Retrying => c.retrying,
                JobState::Completed => c.completed,
                JobState::Dead => c.dead,
                JobState::Cancelled => c.cancelled,
                JobState::Skipped => c.skipped,
            };
            StateCount {
                state: s.as_str(),
                n,
                width: format!("{:.2}", 100.0 * n as f64 / total),
            }
        })
        .filter(|s| s.n > 0)
        .collect()
}

fn build_view<'a>(input: &'a ReportInput<'a>) -> View<'a> {
    let p = input.pipeline;
    let usage = input.usage;
    let by_model_usage = usage_by_model(&usage.by_model);
    let finished = p.finished_at.map(fmt_time);
    let end = p.finished_at.unwrap_or(input.generated_at);
    let budget = usage.budget.filter(|b| !b.is_unlimited()).map(|b| {
        let mut parts = Vec::new();
        if let Some(usd) = b.usd {
            parts.push(format!("${usd:.2}"));
        }
        if let Some(tokens) = b.tokens {
            parts.push(format!("{} tokens", group_thousands(tokens)));
        }
        parts.join(" or ")
    });
    let pipeline = PipelineView {
        id: p.id,
        name: &p.name,
        state: p.state.as_str(),
        created: fmt_time(p.created_at),
        finished,
        duration: fmt_duration(end - p.created_at),
        running: p.finished_at.is_none(),
        counts: state_counts(&p.counts),
        jobs_total: p.counts.total(),
        usage: usage_text(Some(&usage.total)),
        calls: usage.total.calls,
        failed_calls: usage.total.failed_calls,
        budget,
        by_model: usage
            .by_model
            .iter()
            .map(|m| {
                (
                    format!("{} ({})", m.model, m.provider),
                    usage_text(Some(&m.totals)),
                )
            })
            .collect(),
    };

    let models: Vec<ModelRow> = input
        .models
        .iter()
        .map(|m| ModelRow {
            rank: m.rank,
            model: &m.model,
            apps: m.apps,
            did_not_run: m.did_not_run,
            coverage: format!(
                "{} / {} / {}",
                m.coverage.full, m.coverage.partial, m.coverage.none
            ),
            counts: sev_cells(&m.by_severity),
            kloc: format!("{:.2}", m.code_lines as f64 / 1000.0),
            security: ranking::with_interval(m.security_score, m.security_ci),
            security_kloc: ranking::cell(m.security_per_kloc),
            quality: ranking::with_interval(m.quality_score, m.quality_ci),
            quality_kloc: ranking::cell(m.quality_per_kloc),
            note: m.note.clone(),
            pass_rate: pct(m.pass_rate),
            p50: ranking::cell(m.p50_ms),
            rps: ranking::cell(m.requests_per_sec),
            cost: usage_text(by_model_usage.get(m.model.as_str())),
        })
        .collect();

    let mut totals = std::collections::BTreeMap::new();
    let mut finding_count = 0;
    for a in input.apps {
        finding_count += a.findings.len();
        for f in &a.findings {
            *totals.entry(f.severity.as_str().to_string()).or_insert(0) += 1;
        }
    }

    View {
        title: format!("Assay report: pipeline #{} {}", p.id, p.name),
        pipeline,
        generated_at: fmt_time(input.generated_at),
        app_count: input.apps.len(),
        finding_count,
        totals: sev_cells(&totals),
        models,
        penalty: ranking::DID_NOT_RUN_PENALTY,
        severity_chart: (!input.models.is_empty()).then(|| severity_chart(input.models)),
        heatmap: heatmap(input.models),
        apps: input
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| app_view(i + 1, a))
            .collect(),
    }
}

/// Geometry of the dashboard's `severityChart`.
fn severity_chart(models: &[ModelStanding]) -> SeverityChart {
    const ROW_H: f64 = 26.0;
    const LABEL: f64 = 240.0;
    const W: f64 = 520.0;
    let total = |m: &ModelStanding| -> usize {
        SEVERITY_COLORS
            .iter()
            .map(|(s, _)| m.by_severity.get(*s).copied().unwrap_or(0))
            .sum()
    };
    let max = models.iter().map(total).max().unwrap_or(0).max(1) as f64;
    let rows = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let y = i as f64 * ROW_H + 4.0;
            let mut x = LABEL;
            let mut bars = Vec::new();
            for (s, color) in SEVERITY_COLORS {
                let n = m.by_severity.get(s).copied().unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let w = W * n as f64 / max;
                bars.push(Bar {
                    x: px(x),
                    y: px(y),
                    width: px(w),
                    height: "16".into(),
                    color,
                    title: format!("{}: {n} {s}", m.model),
                });
                x += w;
            }
            ChartRow {
                label: truncate(&m.model, 36),
                full_label: m.model.clone(),
                text_y: px(y + 14.0),
                bars,
                value: total(m).to_string(),
                value_x: px(x + 6.0),
                value_y: px(y + 13.0),
            }
        })
        .collect();
    let height = models.len() * ROW_H as usize + 30;
    SeverityChart {
        width: (LABEL + W + 60.0) as usize,
        height,
        legend_y: height - 8,
        legend: SEVERITY_COLORS
            .iter()
            .enumerate()
            .map(|(i, (label, color))| LegendItem {
                label,
                color,
                x: px(LABEL + 90.0 * i as f64),
            })
            .collect(),
        rows,
    }
}

fn heatmap(models: &[ModelStanding]) -> Option<Heatmap<'_>> {
    let templates: Vec<&str> = models
        .iter()
        .flat_map(|m| m.by_template.keys().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if templates.is_empty() {
        return None;
    }
    let max = models
        .iter()
        .flat_map(|m| m.by_template.values().copied())
        .fold(0.0_f64, f64::max);
    let rows = models
        .iter()
        .map(|m| HeatRow {
            model: &m.model,
            cells: templates
                .iter()
                .map(|t| {
                    m.by_template.get(*t).map(|&v| HeatCell {
                        score: v,
                        text: format!("{v:.0}"),
                        color: heat_color(v, max),
                    })
                })
                .collect(),
        })
        .collect();
    Some(Heatmap { templates, rows })
}

fn status_class(status: &str) -> &'static str {
    if status == "completed" || status == "success" {
        "completed"
    } else if status.starts_with("skipped") {
        "skipped"
    } else {
        "dead"
    }
}

fn tool_status(s: ToolStatus) -> (&'static str, &'static str) {
    match s {
        ToolStatus::Success => ("success", "completed"),
        ToolStatus::NoIssues => ("no_issues", "completed"),
        ToolStatus::Error => ("error", "dead"),
        ToolStatus::Timeout => ("timeout", "dead"),
        ToolStatus::Skipped => ("skipped", "skipped"),
        ToolStatus::NotAvailable => ("not_available", "skipped"),
    }
}

fn app_view(n: usize, a: &AppResults) -> AppView<'_> {
    let mut findings: Vec<&Finding> = a.findings.iter().collect();
    findings.sort_by(|x, y| {
        y.severity
            .cmp(&x.severity)
            .then_with(|| x.location.path.cmp(&y.location.path))
            .then_with(|| x.location.line.cmp(&y.location.line))
            .then_with(|| x.rule.cmp(&y.rule))
    });
    let mut counts = std::collections::BTreeMap::new();
    for f in &a.findings {
        *counts.entry(f.severity.as_str().to_string()).or_insert(0) += 1;
    }
    AppView {
        n,
        app: &a.app,
        model: a.model.as_deref(),
        template: a.template.as_deref(),
        counts: sev_cells(&counts),
        total: a.findings.len(),
        analyzers: a
            .analyzers
            .iter()
            .map(|z| AnalyzerView {
                analyzer: &z.analyzer,
                status: &z.status,
                class: status_class(&z.status),
            })
            .collect(),
        tools: a
            .tools
            .iter()
            .map(|t| {
                let (status, class) = tool_status(t.status);
                ToolView {
                    tool: &t.tool,
                    status,
                    class,
                    version: t.version.as_deref().unwrap_or(""),
                    duration: format!("{:.2} s", t.duration_ms as f64 / 1000.0),
                    findings: t.findings,
                    detail: t.detail.as_deref().unwrap_or(""),
                }
            })
            .collect(),
        findings: findings
            .into_iter()
            .map(|f| FindingView {
                severity: f.severity.as_str(),
                rule: &f.rule,
                cwe: f.cwe.map(|c| format!("CWE-{c}")),
                location: match f.location.line {
                    Some(l) => format!("{}:{l}", f.location.path),
                    None => f.location.path.clone(),
                },
                short_message: truncate(&f.message, 120),
                message: &f.message,
                snippet: f.snippet.as_deref(),
                fingerprint: &f.fingerprint,
                analyzer: &f.analyzer,
                sources: f
                    .sources
                    .iter()
                    .map(|s| SourceView {
                        tool: &s.tool,
                        rule: &s.rule,
                        tool_severity: &s.tool_severity,
                        message: &s.message,
                    })
                    .collect(),
            })
            .collect(),
        performance: a.performance.as_ref().map(perf_view),
        judge: a.judge.as_ref().map(judge_view),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn perf_view(p: &Value) -> PerfView {
    let overall = p.get("overall").unwrap_or(p);
    let num = |v: &Value| v.as_f64();
    let lat = |k: &str| num(&overall["latency_ms"][k]);
    let ms = |v: Option<f64>| {
        v.map(|x| format!("{x:.1} ms"))
            .unwrap_or_else(|| "—".into())
    };
    PerfView {
        mode: p.get("mode").and_then(text),
        rps: num(&overall["requests_per_sec"])
            .map(|x| format!("{x:.0}"))
            .unwrap_or_else(|| "—".into()),
        p50: ms(lat("p50")),
        p99: ms(lat("p99")),
        error_rate: format!("{:.1}%", 100.0 * num(&overall["error_rate"]).unwrap_or(0.0)),
        chart: latency_chart(p.get("endpoints").and_then(Value::as_array)),
    }
}

/// Geometry of the dashboard's `latencyChart`: per endpoint, p99, p95 and p50 bars on one
/// scale.
fn latency_chart(endpoints: Option<&Vec<Value>>) -> Option<LatencyChart> {
    const W: f64 = 560.0;
    const LABEL: f64 = 260.0;
    const ROW_H: f64 = 26.0;
    let rows: Vec<(&Value, [f64; 3])> = endpoints?
        .iter()
        .filter_map(|e| {
            let l = e.get("stats")?.get("latency_ms")?;
            let get = |k: &str| l.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            Some((e, [get("p99"), get("p95"), get("p50")]))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let max = rows.iter().map(|(_, l)| l[0]).fold(1.0_f64, f64::max);
    const COLORS: [(&str, &str); 3] = [("p99", "#dc2626"), ("p95", "#f59e0b"), ("p50", "#3b82f6")];
    let chart_rows = rows
        .iter()
        .enumerate()
        .map(|(i, (e, l))| {
            let y = i as f64 * ROW_H + 4.0;
            let label = format!(
                "{} {}",
                e.get("method").and_then(text).unwrap_or_default(),
                e.get("path").and_then(text).unwrap_or_default()
            );
            let bars = COLORS
                .iter()
                .zip(l)
                .enumerate()
                .map(|(j, ((k, color), v))| Bar {
                    x: px(LABEL),
                    y: px(y + 5.0 * j as f64),
                    width: px((W * v / max).max(1.0)),
                    height: px(14.0 - 5.0 * j as f64),
                    color,
                    title: format!("{label}: {k} {v:.1} ms"),
                })
                .collect();
            ChartRow {
                label: truncate(&label, 40),
                full_label: label.clone(),
                text_y: px(y + 14.0),
                bars,
                value: format!("p99 {:.1} ms", l[0]),
                value_x: px(LABEL + W * l[0] / max + 6.0),
                value_y: px(y + 12.0),
            }
        })
        .collect();
    let height = rows.len() * ROW_H as usize + 24;
    Some(LatencyChart {
        width: (LABEL + W + 80.0) as usize,
        height,
        legend_y: height - 6,
        rows: chart_rows,
    })
}

fn judge_view(j: &Value) -> JudgeView {
    let s = |k: &str| j.get(k).and_then(text).filter(|s| !s.is_empty());
    let list = |k: &str| {
        j.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    JudgeView {
        model: s("model"),
        status: s("status"),
        pass_rate: j
            .get("pass_rate")
            .and_then(Value::as_f64)
            .map(|r| pct(Some(r))),
        summary: s("summary"),
        detail: s("detail"),
        requirements: list("requirements")
            .iter()
            .map(|r| {
                let verdict = r.get("verdict").and_then(text).unwrap_or_default();
                RequirementView {
                    id: r.get("id").and_then(text).unwrap_or_default(),
                    requirement: r.get("requirement").and_then(text).unwrap_or_default(),
                    class: match verdict.as_str() {
                        "met" => "completed",
                        "partial" => "retrying",
                        _ => "dead",
                    },
                    verdict,
                    evidence: r
                        .get("evidence")
                        .and_then(Value::as_array)
                        .map(|ev| {
                            ev.iter()
                                .map(|e| EvidenceView {
                                    file: e.get("file").and_then(text).unwrap_or_default(),
                                    quote: e.get("quote").and_then(text).unwrap_or_default(),
                                    explanation: e
                                        .get("explanation")
                                        .and_then(text)
                                        .unwrap_or_default(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect(),
        quality: list("quality")
            .iter()
            .map(|q| QualityView {
                criterion: q.get("criterion").and_then(text).unwrap_or_default(),
                score: q.get("score").and_then(text).unwrap_or_default(),
                justification: q.get("justification").and_then(text).unwrap_or_default(),
            })
            .collect(),
    }
}

const TEMPLATE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="assay">
<title>{{ title }}</title>
<style>
:root {
  --bg: #f6f7f9; --fg: #1d2330; --muted: #6b7280; --line: #e3e6ea; --card: #fff;
  --waiting: #c9ced6; --available: #9fb7d9; --running: #3b82f6; --retrying: #f59e0b;
  --completed: #16a34a; --dead: #dc2626; --cancelled: #6b7280; --skipped: #a3a3a3;
  --partial_success: #d97706; --failed: #dc2626;
}
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--fg); }
header.top { display: flex; align-items: baseline; gap: 16px; padding: 10px 24px; background: #111827; color: #fff; }
header.top .brand { font-weight: 700; font-size: 17px; }
header.top nav { display: flex; gap: 16px; flex: 1; }
header.top a { color: #d1d5db; text-decoration: none; }
header.top .when { color: #9ca3af; font-size: 12px; }
main { padding: 20px 24px; max-width: 1400px; margin: 0 auto; }
h1 { font-size: 20px; margin: 0 0 12px; }
h2 { font-size: 17px; margin: 28px 0 10px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
.muted { color: var(--muted); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; margin-bottom: 16px; }
table { border-collapse: collapse; width: 100%; background: var(--card); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
a { color: #2563eb; }
.state { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; background: var(--muted); }
.state.waiting { background: var(--waiting); color: #374151; }
.state.available { background: var(--available); }
.state.running { background: var(--running); }
.state.retrying { background: var(--retrying); }
.state.completed { background: var(--completed); }
.state.dead, .state.failed { background: var(--dead); }
.state.cancelled { background: var(--cancelled); }
.state.skipped { background: var(--skipped); }
.state.partial_success { background: var(--partial_success); }
.bar { display: flex; height: 10px; border-radius: 5px; overflow: hidden; background: var(--line); min-width: 160px; max-width: 480px; }
.bar span { display: block; height: 100%; }
.bar .waiting { background: var(--waiting); } .bar .available { background: var(--available); }
.bar .running { background: var(--running); } .bar .retrying { background: var(--retrying); }
.bar .completed { background: var(--completed); } .bar .dead { background: var(--dead); }
.bar .cancelled { background: var(--cancelled); } .bar .skipped { background: var(--skipped); }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; }
.sev { display: inline-block; min-width: 1.6em; padding: 0 6px; border-radius: 4px; font-size: 12px; color: #fff; text-align: center; }
.sev.critical { background: #7f1d1d; } .sev.high { background: #dc2626; } .sev.medium { background: #f59e0b; }
.sev.low { background: #3b82f6; } .sev.info { background: #9ca3af; }
.chip { display: inline-block; margin: 2px; padding: 1px 6px; border-radius: 4px; font-size: 11px; color: #fff; background: var(--muted); }
.chip.completed { background: var(--completed); } .chip.dead { background: var(--dead); } .chip.skipped { background: var(--skipped); }
.grid { border-collapse: separate; border-spacing: 4px; background: transparent; width: auto; }
.grid th { text-transform: none; font-size: 12px; }
.grid td.cell { border: 1px solid var(--line); border-radius: 6px; min-width: 90px; padding: 6px; background: var(--card); }
.scroll { overflow-x: auto; }
svg { max-width: 100%; height: auto; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
section.app { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 4px 16px 14px; margin: 18px 0; }
section.app > h3:first-child { font-size: 16px; margin-top: 12px; word-break: break-all; }
.back { float: right; font-size: 12px; font-weight: normal; }
details.finding { border-bottom: 1px solid var(--line); }
details.finding > summary { cursor: pointer; padding: 5px 4px; list-style-position: outside; margin-left: 14px; }
details.finding > summary:hover { background: #fafbfc; }
details.finding .rule { font-weight: 600; }
details.finding .loc { font-family: ui-monospace, monospace; font-size: 12px; color: #374151; word-break: break-all; }
details.finding .body { padding: 4px 14px 10px; background: #fafbfc; }
pre.snippet { background: #0f172a; color: #e2e8f0; padding: 8px 10px; border-radius: 6px; overflow: auto; font-size: 12px; white-space: pre-wrap; word-break: break-all; }
ul.sources { margin: 4px 0; padding-left: 20px; }
blockquote { margin: 6px 0 6px 12px; padding-left: 8px; border-left: 3px solid var(--line); font-size: 13px; white-space: pre-wrap; }
.figures { display: flex; gap: 24px; flex-wrap: wrap; margin: 6px 0 10px; }
.figures div { min-width: 90px; }
.figures b { display: block; font-size: 18px; }
@media print {
  @page { margin: 12mm; }
  body { background: #fff; font-size: 11px; }
  header.top { background: #fff; color: #000; border-bottom: 2px solid #111827; padding: 0 0 6px; }
  header.top nav, .back { display: none; }
  header.top .when { color: #374151; }
  main { padding: 0; max-width: none; }
  .scroll { overflow: visible; }
  th, td { padding: 4px 6px; }
  th { font-size: 10px; }
  .card, section.app { border-color: #d1d5db; }
  h2, h3 { break-after: avoid; }
  tr, figure, blockquote, pre { break-inside: avoid; }
  section.app { break-inside: auto; }
  details.finding { break-inside: avoid; }
  details.finding::details-content { content-visibility: visible; display: block; }
  details.finding > summary { margin-left: 0; list-style: none; }
  a { color: inherit; text-decoration: none; }
  pre.snippet { background: #f3f4f6; color: #111827; border: 1px solid #d1d5db; }
}
</style>
</head>
<body>
<header class="top">
  <span class="brand">Assay</span>
  <nav>
    {%- if models %}<a href="#ranking">Models</a>{% endif %}
    <a href="#apps">Apps</a>
  </nav>
  <span class="when">generated {{ generated_at }}</span>
</header>
<main>
<h1 id="pipeline" data-pipeline="{{ pipeline.id }}">Pipeline #{{ pipeline.id }} {{ pipeline.name }} <span class="state {{ pipeline.state }}" data-state="{{ pipeline.state }}">{{ pipeline.state }}</span></h1>
<div class="card">
  <dl class="kv">
    <dt>created</dt><dd>{{ pipeline.created }}</dd>
    <dt>finished</dt><dd>{% if pipeline.finished %}{{ pipeline.finished }}{% else %}<span class="muted">not yet</span>{% endif %}</dd>
    <dt>duration</dt><dd>{{ pipeline.duration }}{% if pipeline.running %} <span class="muted">(until this report)</span>{% endif %}</dd>
    <dt>jobs</dt><dd>
      <div class="bar" title="{% for c in pipeline.counts %}{{ c.state }}: {{ c.n }}{% if not loop.last %}, {% endif %}{% endfor %}">
        {%- for c in pipeline.counts %}<span class="{{ c.state }}" style="width:{{ c.width }}%"></span>{% endfor -%}
      </div>
      {{ pipeline.jobs_total }} jobs{% for c in pipeline.counts %} · <span data-count="{{ c.state }}">{{ c.n }} {{ c.state }}</span>{% endfor %}
    </dd>
    <dt>model calls</dt><dd id="usage">{{ pipeline.usage }}{% if pipeline.calls %} <span class="muted">({{ pipeline.calls }} calls{% if pipeline.failed_calls %}, {{ pipeline.failed_calls }} failed{% endif %})</span>{% endif %}{% if pipeline.budget %} · budget {{ pipeline.budget }}{% endif %}</dd>
    {%- for m in pipeline.by_model %}
    <dt class="muted">&nbsp;&nbsp;{{ m[0] }}</dt><dd>{{ m[1] }}</dd>
    {%- endfor %}
    <dt>findings</dt><dd>{{ finding_count }} in {{ app_count }} app{% if app_count != 1 %}s{% endif %}{% if finding_count %}:{% for c in totals %} {% if c.n %}<span class="sev {{ c.sev }}">{{ c.n }}</span>{% else %}<span class="muted">0</span>{% endif %} {{ c.sev }}{% endfor %}{% endif %}</dd>
    <dt>generated</dt><dd>{{ generated_at }}</dd>
  </dl>
</div>

{% if models %}
<h2>Models ranked</h2>
<p class="muted">Ranked by weighted security findings per app (critical × 10, high × 5, medium × 2, low × 1; lower is better), then quality, then requirement pass rate. An app that did not run adds {{ penalty }} to both of its scores. Intervals are 95% bootstrap intervals; a tie means a permutation test cannot tell the model from the next one (p ≥ 0.05). The rules: docs/ranking.md in Assay's repository.</p>
<div class="scroll">
<table id="ranking">
  <thead><tr><th>#</th><th>model</th><th class="num">apps</th><th class="num" title="apps that did not install, start or answer: the model's own failures">did not run</th><th class="num" title="apps analyzed fully / partially / not at all">coverage</th>{% for c in models[0].counts %}<th class="num">{{ c.sev }}</th>{% endfor %}<th class="num" title="thousands of non-blank lines of code">KLOC</th><th class="num">security/app [95% CI]</th><th class="num">security/KLOC</th><th class="num">quality/app [95% CI]</th><th class="num">quality/KLOC</th><th class="num">pass rate</th><th class="num">p50 ms</th><th class="num">req/s</th><th>cost</th><th>note</th></tr></thead>
  <tbody>
  {%- for m in models %}
    <tr data-model="{{ m.model }}"><td>{{ m.rank }}</td><td>{{ m.model }}</td><td class="num">{{ m.apps }}</td><td class="num">{% if m.did_not_run %}<span class="sev high">{{ m.did_not_run }}</span>{% else %}0{% endif %}</td><td class="num">{{ m.coverage }}</td>
      {%- for c in m.counts %}<td class="num">{% if c.n %}<span class="sev {{ c.sev }}">{{ c.n }}</span>{% else %}<span class="muted">0</span>{% endif %}</td>{% endfor -%}
      <td class="num">{{ m.kloc }}</td><td class="num security">{{ m.security }}</td><td class="num">{{ m.security_kloc }}</td><td class="num quality">{{ m.quality }}</td><td class="num">{{ m.quality_kloc }}</td><td class="num">{{ m.pass_rate }}</td><td class="num">{{ m.p50 }}</td><td class="num">{{ m.rps }}</td><td>{{ m.cost }}</td><td class="muted">{{ m.note }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
</div>

<h3>Findings by severity</h3>
<figure class="card" style="margin:0 0 16px">
{%- set ch = severity_chart %}
<svg id="severity-chart" role="img" aria-label="findings by severity per model" width="{{ ch.width }}" height="{{ ch.height }}" viewBox="0 0 {{ ch.width }} {{ ch.height }}">
  {%- for r in ch.rows %}
  <g><title>{{ r.full_label }}</title><text x="0" y="{{ r.text_y }}" font-size="12" fill="#374151">{{ r.label }}</text></g>
  {%- for b in r.bars %}
  <rect x="{{ b.x }}" y="{{ b.y }}" width="{{ b.width }}" height="{{ b.height }}" fill="{{ b.color }}"><title>{{ b.title }}</title></rect>
  {%- endfor %}
  <text x="{{ r.value_x }}" y="{{ r.value_y }}" font-size="11" fill="#6b7280">{{ r.value }}</text>
  {%- endfor %}
  {%- for l in ch.legend %}
  <rect x="{{ l.x }}" y="{{ ch.legend_y - 9 }}" width="10" height="10" fill="{{ l.color }}"></rect><text x="{{ l.x }}" dx="14" y="{{ ch.legend_y }}" font-size="11" fill="#6b7280">{{ l.label }}</text>
  {%- endfor %}
</svg>
</figure>

{% if heatmap %}
<h3>Heatmap: weighted findings, model × template</h3>
<div class="scroll">
<table class="grid" id="heatmap">
  <thead><tr><th></th>{% for t in heatmap.templates %}<th>{{ t }}</th>{% endfor %}</tr></thead>
  <tbody>
  {%- for r in heatmap.rows %}
    <tr data-model="{{ r.model }}"><th>{{ r.model }}</th>
    {%- for c in r.cells %}
      {%- if c %}<td class="cell num" style="background:{{ c.color }}" data-score="{{ c.score }}">{{ c.text }}</td>{% else %}<td class="cell muted">—</td>{% endif %}
    {%- endfor %}</tr>
  {%- endfor %}
  </tbody>
</table>
</div>
{% endif %}
{% endif %}

<h2>Apps</h2>
{% if apps %}
<div class="scroll">
<table id="apps">
  <thead><tr><th>app</th><th>model</th><th>template</th>{% for c in apps[0].counts %}<th class="num">{{ c.sev }}</th>{% endfor %}<th class="num">total</th></tr></thead>
  <tbody>
  {%- for a in apps %}
    <tr data-app="{{ a.app }}"><td><a href="#app-{{ a.n }}">{{ a.app }}</a></td><td>{{ a.model or "—" }}</td><td>{{ a.template or "—" }}</td>
      {%- for c in a.counts %}<td class="num">{% if c.n %}<span class="sev {{ c.sev }}">{{ c.n }}</span>{% else %}<span class="muted">0</span>{% endif %}</td>{% endfor -%}
      <td class="num">{{ a.total }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
</div>
{% else %}
<p class="muted" id="apps">No analysis results in this pipeline.</p>
{% endif %}

{% for a in apps %}
<section class="app" id="app-{{ a.n }}" data-app="{{ a.app }}">
<h3>{{ a.app }} <a class="back" href="#apps">↑ apps</a></h3>
<p class="muted">model {{ a.model or "—" }} · template {{ a.template or "—" }} · {{ a.total }} finding{% if a.total != 1 %}s{% endif %}
{%- if a.analyzers %} · analyzers:{% for z in a.analyzers %} <span class="chip {{ z.class }}" title="{{ z.status }}">{{ z.analyzer }}</span>{% if z.class != "completed" %} <span class="muted">{{ z.status }}</span>{% endif %}{% endfor %}{% endif %}</p>

{% if a.tools %}
<h3>Tools</h3>
<table class="tools">
  <thead><tr><th>tool</th><th>status</th><th>version</th><th class="num">duration</th><th class="num">findings</th><th>detail</th></tr></thead>
  <tbody>
  {%- for t in a.tools %}
    <tr><td>{{ t.tool }}</td><td><span class="state {{ t.class }}">{{ t.status }}</span></td><td>{{ t.version }}</td><td class="num">{{ t.duration }}</td><td class="num">{{ t.findings }}</td><td class="muted">{{ t.detail }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{% endif %}

<h3>Findings</h3>
{% if a.findings %}
<div class="findings">
{%- for f in a.findings %}
<details class="finding" data-fingerprint="{{ f.fingerprint }}" data-severity="{{ f.severity }}">
<summary><span class="sev {{ f.severity }}">{{ f.severity }}</span> <span class="rule">{{ f.rule }}</span>{% if f.cwe %} <span class="muted">{{ f.cwe }}</span>{% endif %} <span class="loc">{{ f.location }}</span> — {{ f.short_message }}</summary>
<div class="body">
<p>{{ f.message }}</p>
{% if f.snippet %}<pre class="snippet">{{ f.snippet }}</pre>{% else %}<p class="muted">No code snippet.</p>{% endif %}
<p><strong>Reported by</strong> <span class="muted">({{ f.analyzer }} analysis; fingerprint {{ f.fingerprint }})</span></p>
<ul class="sources">
{%- for s in f.sources %}
<li><b>{{ s.tool }}</b> {{ s.rule }} ({{ s.tool_severity }}): {{ s.message }}</li>
{%- endfor %}
</ul>
</div>
</details>
{%- endfor %}
</div>
{% else %}
<p class="muted">No findings.</p>
{% endif %}

{% if a.performance %}
{%- set p = a.performance %}
<h3>Performance</h3>
<div class="figures">
  {%- if p.mode %}<div><span class="muted">load</span><b>{{ p.mode }}</b></div>{% endif %}
  <div><span class="muted">throughput</span><b>{{ p.rps }} req/s</b></div>
  <div><span class="muted">p50</span><b>{{ p.p50 }}</b></div>
  <div><span class="muted">p99</span><b>{{ p.p99 }}</b></div>
  <div><span class="muted">errors</span><b>{{ p.error_rate }}</b></div>
</div>
{% if p.chart %}
{%- set ch = p.chart %}
<figure class="card" style="margin:0 0 12px">
<svg class="latency-chart" role="img" aria-label="latency per endpoint" width="{{ ch.width }}" height="{{ ch.height }}" viewBox="0 0 {{ ch.width }} {{ ch.height }}">
  {%- for r in ch.rows %}
  <g><title>{{ r.full_label }}</title><text x="0" y="{{ r.text_y }}" font-size="12" fill="#374151">{{ r.label }}</text></g>
  {%- for b in r.bars %}
  <rect x="{{ b.x }}" y="{{ b.y }}" width="{{ b.width }}" height="{{ b.height }}" fill="{{ b.color }}"><title>{{ b.title }}</title></rect>
  {%- endfor %}
  <text x="{{ r.value_x }}" y="{{ r.value_y }}" font-size="11" fill="#6b7280">{{ r.value }}</text>
  {%- endfor %}
  <text x="260" y="{{ ch.legend_y }}" font-size="11" fill="#6b7280">latency: p50 (blue) · p95 (amber) · p99 (red)</text>
</svg>
</figure>
{% else %}
<p class="muted">No endpoint figures.</p>
{% endif %}
{% endif %}

{% if a.judge %}
{%- set j = a.judge %}
<h3>Requirements (LLM judge)</h3>
{% if j.requirements %}
<p>{% if j.pass_rate %}pass rate <b>{{ j.pass_rate }}</b>{% endif %}{% if j.model %} <span class="muted">judged by {{ j.model }}</span>{% endif %}{% if j.summary %} — {{ j.summary }}{% endif %}</p>
<table class="requirements">
  <tbody>
  {%- for r in j.requirements %}
    <tr data-requirement="{{ r.id }}"><td>{{ r.id }}</td><td><span class="state {{ r.class }}">{{ r.verdict }}</span></td><td>{{ r.requirement }}
    {%- for e in r.evidence %}
      <blockquote><code>{{ e.file }}:</code> {{ e.quote }}{% if e.explanation %}<div class="muted">{{ e.explanation }}</div>{% endif %}</blockquote>
    {%- endfor %}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{% if j.quality %}
<table class="quality">
  <thead><tr><th>quality</th><th class="num">score (1–5)</th><th>why</th></tr></thead>
  <tbody>
  {%- for q in j.quality %}
    <tr><td>{{ q.criterion }}</td><td class="num">{{ q.score }}</td><td class="muted">{{ q.justification }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{% endif %}
{% else %}
<p class="muted">{% if j.detail %}skipped: {{ j.detail }}{% else %}No verdicts.{% endif %}</p>
{% endif %}
{% endif %}
</section>
{% endfor %}
</main>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::finding::{merge, summarize, Location, ToolRun};
    use crate::domain::PipelineState;
    use crate::results::{compare, AnalyzerStatus};
    use serde_json::json;

    fn finding(
        tool: &str,
        rule: &str,
        cwe: Option<u32>,
        sev: Severity,
        path: &str,
        line: u32,
        msg: &str,
    ) -> Finding {
        Finding::new(
            "static",
            tool,
            rule,
            cwe,
            sev,
            "TOOL",
            msg,
            Location {
                path: path.into(),
                line: Some(line),
                column: None,
                end_line: None,
            },
        )
    }

    fn app(model: &str, template: &str, findings: Vec<Finding>) -> AppResults {
        let findings = merge(findings);
        AppResults {
            app: format!("model={model} template={template}"),
            model: Some(model.into()),
            template: Some(template.into()),
            analyzers: vec![AnalyzerStatus {
                analyzer: "static".into(),
                job_id: 7,
                status: "completed".into(),
            }],
            summary: summarize(&findings),
            tools: vec![ToolRun {
                tool: "bandit".into(),
                status: ToolStatus::Success,
                version: Some("1.9.4".into()),
                duration_ms: 1234,
                findings: findings.len(),
                detail: None,
                raw_output: None,
            }],
            scores: crate::ranking::AppScores::of(&findings, false),
            findings,
            performance: None,
            judge: None,
            outcome: None,
            coverage: String::new(),
            code_lines: Some(400),
        }
    }

    fn pipeline() -> Pipeline {
        Pipeline {
            id: 42,
            name: "compare <models>".into(),
            state: PipelineState::PartialSuccess,
            idempotency_key: None,
            spec_hash: "h".into(),
            cancel_requested: false,
            created_at: 1_714_566_896_000_000,
            deadline_at: None,
            finished_at: Some(1_714_566_896_000_000 + 125_000_000),
            counts: StateCounts {
                completed: 10,
                dead: 2,
                ..Default::default()
            },
        }
    }

    fn usage(by_model: Vec<ModelUsage>) -> PipelineUsage {
        let mut total = UsageTotals::default();
        for m in &by_model {
            total.add(&m.totals);
        }
        PipelineUsage {
            pipeline_id: 42,
            budget: None,
            total,
            by_model,
            by_job: vec![],
        }
    }

    fn model_usage(model: &str, prompt: i64, completion: i64, cost: f64) -> ModelUsage {
        ModelUsage {
            provider: "http://localhost:1".into(),
            model: model.into(),
            totals: UsageTotals {
                calls: 2,
                paid_calls: 2,
                prompt_tokens: prompt,
                completion_tokens: completion,
                cost_usd: cost,
                ..Default::default()
            },
        }
    }

    const HOSTILE: &str = "x <script>alert(1)</script> \"q\" 'a' & b, c\nnext line";

    fn sample_apps() -> Vec<AppResults> {
        let mut a = app(
            "openai/gpt-4o",
            "todo",
            vec![
                finding(
                    "bandit",
                    "B608",
                    Some(89),
                    Severity::Medium,
                    "app.py",
                    10,
                    "SQL built from strings",
                ),
                finding(
                    "semgrep",
                    "sqli",
                    Some(89),
                    Severity::High,
                    "app.py",
                    10,
                    "SQL injection",
                ),
                finding(
                    "ruff",
                    "S105",
                    Some(798),
                    Severity::Low,
                    "config.py",
                    3,
                    HOSTILE,
                ),
                finding(
                    "vulture",
                    "unused",
                    None,
                    Severity::Info,
                    "util.py",
                    1,
                    "unused function",
                ),
            ],
        );
        a.findings[0].snippet = Some("cur.execute(f\"SELECT * FROM t WHERE id={id}\")".into());
        a.performance = Some(json!({
            "mode": "closed loop, 8 users",
            "overall": {"requests_per_sec": 812.4, "error_rate": 0.002,
                        "latency_ms": {"p50": 3.21, "p95": 7.0, "p99": 12.5}},
            "endpoints": [
                {"method": "GET", "path": "/api/todos", "stats": {"latency_ms": {"p50": 3.0, "p95": 6.0, "p99": 11.0}}},
                {"method": "POST", "path": "/api/<todos>", "stats": {"latency_ms": {"p50": 4.0, "p95": 8.0, "p99": 12.5}}}
            ]
        }));
        a.judge = Some(json!({
            "status": "success", "model": "judge-1", "pass_rate": 0.75, "summary": "mostly there",
            "requirements": [
                {"id": "backend-1", "requirement": "Lists todos", "verdict": "met",
                 "evidence": [{"file": "app.py", "quote": "@app.get(\"/api/todos\")", "explanation": "the route"}]},
                {"id": "backend-2", "requirement": "Deletes todos", "verdict": "partial", "evidence": []}
            ],
            "quality": [{"criterion": "readability", "score": 4, "justification": "clear"}]
        }));
        let b = app(
            "anthropic/claude",
            "blog",
            vec![finding(
                "bandit",
                "B105",
                Some(259),
                Severity::Critical,
                "main.py",
                5,
                "hard-coded password",
            )],
        );
        let mut c = app("anthropic/claude", "todo", vec![]);
        c.judge = Some(
            json!({"status": "skipped", "detail": "no LLM endpoint configured", "requirements": []}),
        );
        vec![a, b, c]
    }

    #[test]
    fn html_is_self_contained_escaped_and_complete() {
        let apps = sample_apps();
        let models = compare(&apps);
        let usage = usage(vec![
            model_usage("openai/gpt-4o", 1000, 500, 0.01234),
            model_usage("anthropic/claude", 2000, 250, 0.5),
        ]);
        let p = pipeline();
        let html = html(&ReportInput {
            pipeline: &p,
            apps: &apps,
            models: &models,
            usage: &usage,
            generated_at: 1_714_570_000_000_000,
        });
        assert!(!html.contains("report rendering failed"), "{html}");
        for bad in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "<script",
            "@import",
            "<link",
        ] {
            assert!(!html.contains(bad), "found {bad:?}");
        }
        assert!(html
            .contains("x &lt;script&gt;alert(1)&lt;/script&gt; &quot;q&quot; &#39;a&#39; &amp; b"));
        assert!(
            html.contains("compare &lt;models&gt;"),
            "the pipeline name is escaped"
        );
        for id in [
            "id=\"ranking\"",
            "id=\"severity-chart\"",
            "id=\"heatmap\"",
            "id=\"apps\"",
        ] {
            assert!(html.contains(id), "{id}");
        }
        for (i, a) in apps.iter().enumerate() {
            assert!(html.contains(&format!(
                "<section class=\"app\" id=\"app-{}\" data-app=\"{}\"",
                i + 1,
                a.app
            )));
            assert!(html.contains(&format!("<a href=\"#app-{}\">{}</a>", i + 1, a.app)));
            for f in &a.findings {
                assert!(html.contains(&format!(
                    "<details class=\"finding\" data-fingerprint=\"{}\"",
                    f.fingerprint
                )));
            }
        }
        // Header figures.
        assert!(html.contains("Pipeline #42"));
        assert!(html.contains("2024-05-01 12:34:56 UTC"), "created, in UTC");
        assert!(html.contains("2 min 5 s"), "duration");
        assert!(html.contains("10 completed") && html.contains("2 dead"));
        assert!(html.contains("3,750 tokens · $0.5123"), "total usage");
        // The ranking: claude has 1 critical over 2 apps (score 5.0), gpt-4o 5+1+0 = 6.0 over 1.
        let ranking = &html
            [html.find("id=\"ranking\"").unwrap()..html.find("id=\"severity-chart\"").unwrap()];
        let claude = ranking.find("data-model=\"anthropic/claude\"").unwrap();
        let gpt = ranking.find("data-model=\"openai/gpt-4o\"").unwrap();
        assert!(claude < gpt, "ranked by score");
        assert!(
            ranking.contains(">5.00 [0.00–10.00]<") && ranking.contains(">6.00<"),
            "security per app with its interval (none for one app): {ranking}"
        );
        assert!(ranking.contains(">75%<"), "pass rate");
        assert!(ranking.contains(">3.21<"), "p50");
        assert!(ranking.contains(">812.40<"), "req/s");
        assert!(ranking.contains("small sample (2 apps)"), "the note");
        assert!(
            ranking.contains("1,500 tokens · $0.0123"),
            "cost matched by model name"
        );
        // Severity chart colours, heatmap colours (green at 0, red at the max).
        assert!(html.contains("fill=\"#7f1d1d\"") && html.contains("fill=\"#dc2626\""));
        assert!(
            html.contains("background:hsl(0, 70%, 58.0%)"),
            "the worst cell"
        );
        assert!(
            html.contains("background:hsl(130, 70%, 88.0%)"),
            "a clean cell"
        );
        // Findings: critical before high within an app; the sources and snippet are shown.
        let first = &html[html.find("id=\"app-1\"").unwrap()..html.find("id=\"app-2\"").unwrap()];
        let high = first.find("data-severity=\"high\"").unwrap();
        let low = first.find("data-severity=\"low\"").unwrap();
        let info = first.find("data-severity=\"info\"").unwrap();
        assert!(high < low && low < info);
        assert!(first.contains("<b>bandit</b> B608 (TOOL): SQL built from strings"));
        assert!(first.contains("<b>semgrep</b> sqli (TOOL): SQL injection"));
        assert!(first.contains("<pre class=\"snippet\">cur.execute(f&quot;SELECT"));
        assert!(first.contains("app.py:10") && first.contains("CWE-89"));
        // Tools, performance, judge.
        assert!(first.contains("1.9.4") && first.contains("1.23 s"));
        assert!(
            first.contains("class=\"latency-chart\"") && first.contains("POST /api/&lt;todos&gt;")
        );
        assert!(first.contains("812 req/s") && first.contains("12.5 ms") && first.contains("0.2%"));
        assert!(
            first.contains("data-requirement=\"backend-1\"")
                && first.contains("@app.get(&quot;/api/todos&quot;)")
        );
        assert!(first.contains(">partial<") && first.contains("readability"));
        assert!(html.contains("skipped: no LLM endpoint configured"));
    }

    #[test]
    fn html_without_models_or_apps_still_renders() {
        let p = Pipeline {
            finished_at: None,
            state: PipelineState::Running,
            ..pipeline()
        };
        let html = html(&ReportInput {
            pipeline: &p,
            apps: &[],
            models: &[],
            usage: &usage(vec![]),
            generated_at: p.created_at + 3_600_000_000 * 2,
        });
        assert!(!html.contains("report rendering failed"), "{html}");
        assert!(!html.contains("id=\"ranking\"") && !html.contains("id=\"severity-chart\""));
        assert!(html.contains("id=\"apps\"") && html.contains("No analysis results"));
        assert!(html.contains("2.0 h") && html.contains("not yet"));
    }

    #[test]
    fn html_of_a_large_pipeline_renders() {
        let apps: Vec<AppResults> = (0..500)
            .map(|i| {
                let findings = (0..50)
                    .map(|j| {
                        finding(
                            "bandit",
                            &format!("B{j}"),
                            None,
                            Severity::ALL_DESC[j % 5],
                            "app.py",
                            j as u32,
                            "m",
                        )
                    })
                    .collect();
                app(&format!("m{}", i % 10), &format!("t{}", i / 10), findings)
            })
            .collect();
        let models = compare(&apps);
        let p = pipeline();
        let started = std::time::Instant::now();
        let html = html(&ReportInput {
            pipeline: &p,
            apps: &apps,
            models: &models,
            usage: &usage(vec![]),
            generated_at: 0,
        });
        let took = started.elapsed();
        assert!(!html.contains("report rendering failed"));
        assert_eq!(html.matches("<details class=\"finding\"").count(), 25_000);
        assert!(html.contains(&format!(
            "data-fingerprint=\"{}\"",
            apps[499].findings[49].fingerprint
        )));
        assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    }

    #[test]
    fn findings_csv_round_trips() {
        let apps = sample_apps();
        let text = findings_csv(&apps).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            r.headers().unwrap().iter().collect::<Vec<_>>(),
            [
                "app",
                "model",
                "template",
                "severity",
                "rule",
                "cwe",
                "file",
                "line",
                "tools",
                "message",
                "fingerprint"
            ]
        );
        let rows: Vec<csv::StringRecord> = r.records().collect::<Result<_, _>>().unwrap();
        let expected: usize = apps.iter().map(|a| a.findings.len()).sum();
        assert_eq!(rows.len(), expected);
        assert_eq!(rows.len(), 4, "the SQL injection is merged");
        let sqli = rows.iter().find(|r| &r[5] == "CWE-89").unwrap();
        assert_eq!(&sqli[0], "model=openai/gpt-4o template=todo");
        assert_eq!(&sqli[1], "openai/gpt-4o");
        assert_eq!(&sqli[2], "todo");
        assert_eq!(&sqli[3], "high");
        assert_eq!(&sqli[6], "app.py");
        assert_eq!(&sqli[7], "10");
        assert_eq!(&sqli[8], "bandit;semgrep");
        assert_eq!(&sqli[10], apps[0].findings[0].fingerprint);
        let hostile = rows.iter().find(|r| &r[4] == "S105").unwrap();
        assert_eq!(&hostile[9], HOSTILE.trim());
        let unused = rows.iter().find(|r| &r[4] == "unused").unwrap();
        assert_eq!(&unused[5], "", "no CWE: an empty cell");
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_defused() {
        for formula in [
            "=HYPERLINK(\"http://x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(spreadsheet_safe(formula), format!("'{formula}"));
        }
        for text in ["Possible SQL injection", "a=b", "", "'quoted"] {
            assert_eq!(spreadsheet_safe(text), text, "left as it is");
        }
        let mut apps = sample_apps();
        apps[0].findings[0].message = "=cmd|' /C calc'!A0".into();
        let csv = findings_csv(&apps).unwrap();
        let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(csv.as_bytes())
            .records()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(rows.iter().any(|r| &r[9] == "'=cmd|' /C calc'!A0"));
    }

    #[test]
    fn models_csv_defuses_a_model_name_a_spreadsheet_would_run() {
        let mut models = compare(&sample_apps());
        models[0].model = "=HYPERLINK(\"http://evil\",\"x\")".into();
        let text = models_csv(&models, &[]).unwrap();
        let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(&rows[0][1], "'=HYPERLINK(\"http://evil\",\"x\")");
    }

    #[test]
    fn models_csv_matches_usage_by_model_name() {
        let apps = sample_apps();
        let models = compare(&apps);
        let text = models_csv(
            &models,
            &[
                model_usage("openai/gpt-4o", 1000, 500, 0.25),
                ModelUsage {
                    provider: "other".into(),
                    ..model_usage("openai/gpt-4o", 10, 5, 0.5)
                },
            ],
        )
        .unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(headers.len(), 31);
        assert_eq!(headers[8], "security_score");
        assert_eq!(headers[14], "cost_usd");
        assert_eq!(headers[23], "quality_score");
        let rows: Vec<csv::StringRecord> = r.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows.len(), 2);
        let claude = &rows[0];
        assert_eq!(&claude[0], "1");
        assert_eq!(&claude[1], "anthropic/claude");
        assert_eq!(&claude[2], "2");
        assert_eq!(&claude[3], "1", "critical");
        assert_eq!(&claude[8], "5");
        assert_eq!(&claude[9], "", "no judged app with a pass rate");
        assert_eq!(&claude[12], "", "no usage: empty cells");
        assert_eq!(&claude[14], "");
        let gpt = &rows[1];
        assert_eq!(&gpt[0], "2");
        assert_eq!(&gpt[4], "1", "high");
        assert_eq!(&gpt[9], "0.75");
        assert_eq!(&gpt[10], "3.21");
        assert_eq!(&gpt[11], "812.4");
        assert_eq!(&gpt[12], "1010", "summed over providers");
        assert_eq!(&gpt[13], "505");
        assert_eq!(&gpt[14], "0.75");
    }

    #[test]
    fn sarif_zip_holds_one_sarif_file_per_app() {
        let mut apps = sample_apps();
        apps.push(AppResults {
            app: "model=anthropic/claude template=todo".into(),
            ..apps[2].clone()
        });
        let names = sarif_file_names(&apps);
        let bytes = sarif_zip(&apps).unwrap();
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(zip.len(), apps.len());
        for (i, name) in names.iter().enumerate() {
            let mut entry = zip.by_index(i).unwrap();
            assert_eq!(entry.name(), name);
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            let sarif: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(sarif["version"], "2.1.0");
            assert_eq!(sarif, apps[i].sarif());
        }
    }

    #[test]
    fn sarif_file_names_are_safe_and_distinct() {
        let named = |names: &[&str]| -> Vec<AppResults> {
            names
                .iter()
                .map(|n| AppResults {
                    app: n.to_string(),
                    ..app("m", "t", vec![])
                })
                .collect()
        };
        let apps = named(&[
            "model=openai/gpt-4o template=todo",
            "/tmp/x/apps/todo",
            "model=openai/gpt-4o template=todo",
            "model=openai_gpt-4o_template=todo",
            "model=openai_gpt-4o_template=todo-2",
            "MODEL=openai/gpt-4o template=todo",
            "",
            "../../etc/passwd",
            "ünïcode",
            &"x".repeat(300),
            &"x".repeat(301),
        ]);
        let names = sarif_file_names(&apps);
        assert_eq!(
            names[..9],
            [
                "model=openai_gpt-4o_template=todo.sarif",
                "_tmp_x_apps_todo.sarif",
                "model=openai_gpt-4o_template=todo-2.sarif",
                "model=openai_gpt-4o_template=todo-3.sarif",
                "model=openai_gpt-4o_template=todo-2-2.sarif",
                "MODEL=openai_gpt-4o_template=todo-4.sarif",
                "app.sarif",
                ".._.._etc_passwd.sarif",
                "_n_code.sarif",
            ]
        );
        assert_eq!(names[9], format!("{}.sarif", "x".repeat(120)));
        assert_eq!(names[10], format!("{}-2.sarif", "x".repeat(120)));
        let distinct: HashSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        assert_eq!(distinct.len(), names.len());
        for n in &names {
            assert!(n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '-')));
            assert!(!n.contains('/'));
        }
    }

    #[test]
    fn many_equal_names_stay_linear_and_distinct() {
        let apps: Vec<AppResults> = (0..2000)
            .map(|_| AppResults {
                app: "same".into(),
                ..app("m", "t", vec![])
            })
            .collect();
        let names = sarif_file_names(&apps);
        assert_eq!(names[0], "same.sarif");
        assert_eq!(names[1999], "same-2000.sarif");
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), 2000);
    }
}
