//! The one result model every analyzer reports in: findings with a normalized severity,
//! a CWE where known, a location and a stable fingerprint; per-tool runs with status,
//! version and duration. Pure: no IO.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Normalized severity. Each tool's levels map onto these (see `docs/findings.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL_DESC: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }

    /// SARIF `level` for this severity.
    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::Critical | Severity::High => "error",
            Severity::Medium => "warning",
            Severity::Low | Severity::Info => "note",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Location {
    /// Relative to the analyzed app's folder, with `/` separators; for dynamic findings
    /// the HTTP method and path, e.g. `GET /api/notes`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_line: Option<u32>,
}

/// One tool's report of a finding, kept when findings are merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub tool: String,
    pub rule: String,
    /// The tool's own level, before normalization.
    pub tool_severity: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub analyzer: String,
    /// The first reporting tool and its rule; all reporters are in `sources`.
    pub tool: String,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwe: Option<u32>,
    pub severity: Severity,
    pub message: String,
    pub location: Location,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
    pub fingerprint: String,
    pub sources: Vec<Source>,
}

impl Finding {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        analyzer: &str,
        tool: &str,
        rule: &str,
        cwe: Option<u32>,
        severity: Severity,
        tool_severity: &str,
        message: &str,
        location: Location,
    ) -> Self {
        let mut f = Finding {
            analyzer: analyzer.into(),
            tool: tool.into(),
            rule: rule.into(),
            cwe,
            severity,
            message: message.trim().into(),
            location,
            snippet: None,
            fingerprint: String::new(),
            sources: vec![Source {
                tool: tool.into(),
                rule: rule.into(),
                tool_severity: tool_severity.into(),
                message: message.trim().into(),
            }],
        };
        f.fingerprint = fingerprint(&f);
        f
    }

    /// What makes two reports "the same weakness at the same place": the CWE when known,
    /// else the tool and rule.
    fn weakness_key(&self) -> String {
        match self.cwe {
            Some(cwe) => format!("CWE-{cwe}"),
            None => format!("{}:{}", self.tool, self.rule),
        }
    }
}

/// What a finding says about the app, so that a comparison can weigh kinds apart
/// (`docs/findings.md`, "Categories").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// A weakness an attacker could use.
    Security,
    /// A bug, dead or needlessly complex code, slowness, a requirement not met.
    Quality,
    /// Layout and naming conventions.
    Style,
    /// The app did not install, start or answer: counted per app, not as findings.
    AppFailure,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Security => "security",
            Category::Quality => "quality",
            Category::Style => "style",
            Category::AppFailure => "app_failure",
        }
    }
}

/// CWEs of maintainability, not of exploitable weaknesses: dead code (561), needless
/// complexity (1121), irrelevant code (1164), poor code quality (398), coding standards (710).
const QUALITY_CWES: &[u32] = &[398, 561, 710, 1121, 1164];

/// Tools whose every rule is about security.
const SECURITY_TOOLS: &[&str] = &["bandit", "semgrep", "detect-secrets"];

impl Finding {
    pub fn category(&self) -> Category {
        if self.tool == APP_FAILURE_TOOL {
            return Category::AppFailure;
        }
        if let Some(cwe) = self.cwe {
            return if QUALITY_CWES.contains(&cwe) {
                Category::Quality
            } else {
                Category::Security
            };
        }
        let tools = || self.sources.iter().map(|s| s.tool.as_str());
        if tools().any(|t| SECURITY_TOOLS.contains(&t))
            || self
                .sources
                .iter()
                .any(|s| s.tool == "ruff" && s.rule.starts_with('S'))
            || (self.analyzer == "dynamic" && self.rule != "functional")
        {
            return Category::Security;
        }
        let style = self.sources.iter().all(|s| match s.tool.as_str() {
            // pycodestyle, isort, pep8-naming, pydocstyle, quotes, commas.
            "ruff" => ["E", "W", "I", "N", "D", "Q", "COM"].iter().any(|p| {
                s.rule.starts_with(p) && s.rule[p.len()..].starts_with(|c: char| c.is_ascii_digit())
            }),
            "pylint" => s.tool_severity == "convention",
            _ => false,
        });
        if style && self.rule != crate::analysis::static_tools::NOT_VALID_SOURCE {
            Category::Style
        } else {
            Category::Quality
        }
    }
}

/// The tool name of the finding an app's own failure to run is recorded as.
pub const APP_FAILURE_TOOL: &str = "assay-app";

/// A fingerprint that survives re-runs and unrelated edits elsewhere in the file: the
/// weakness, the file, and the line's snippet when known (else the line number).
pub fn fingerprint(f: &Finding) -> String {
    let mut h = Sha256::new();
    h.update(f.weakness_key().as_bytes());
    h.update(b"\0");
    h.update(f.location.path.as_bytes());
    h.update(b"\0");
    match &f.snippet {
        Some(s) => h.update(
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .as_bytes(),
        ),
        None => h.update(f.location.line.unwrap_or(0).to_le_bytes()),
    }
    hex::encode(&h.finalize()[..16])
}

/// Merge findings that several tools report for the same place and weakness: same
/// path, same line (or both without a line) and the same CWE. The merged finding keeps
/// the highest severity and every source. Order: severity, then path and line.
pub fn merge(findings: Vec<Finding>) -> Vec<Finding> {
    let mut groups: BTreeMap<(String, Option<u32>, String), Finding> = BTreeMap::new();
    let mut unmergeable = Vec::new();
    for f in findings {
        if f.cwe.is_none() {
            unmergeable.push(f);
            continue;
        }
        let key = (f.location.path.clone(), f.location.line, f.weakness_key());
        match groups.get_mut(&key) {
            Some(existing) => {
                for s in f.sources {
                    if !existing.sources.contains(&s) {
                        existing.sources.push(s);
                    }
                }
                if f.severity > existing.severity {
                    existing.severity = f.severity;
                }
                if existing.snippet.is_none() {
                    existing.snippet = f.snippet;
                }
            }
            None => {
                groups.insert(key, f);
            }
        }
    }
    let mut out: Vec<Finding> = groups.into_values().chain(unmergeable).collect();
    for f in &mut out {
        f.fingerprint = fingerprint(f);
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.location.cmp(&b.location))
            .then_with(|| a.rule.cmp(&b.rule))
    });
    out
}

/// How one tool's run went. A tool that is not installed is `not_available`, never
/// "no findings".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    Success,
    NoIssues,
    Error,
    Timeout,
    Skipped,
    NotAvailable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRun {
    pub tool: String,
    pub status: ToolStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub duration_ms: u64,
    pub findings: usize,
    /// Why it failed, was skipped or is not available (with the install command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Name of the artifact holding the tool's raw output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<String>,
}

/// Counts by severity, tool and analyzer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total: usize,
    pub by_severity: BTreeMap<String, usize>,
    pub by_tool: BTreeMap<String, usize>,
    pub by_analyzer: BTreeMap<String, usize>,
}

pub fn summarize(findings: &[Finding]) -> Summary {
    let mut s = Summary {
        total: findings.len(),
        ..Default::default()
    };
    for sev in Severity::ALL_DESC {
        s.by_severity.insert(sev.as_str().into(), 0);
    }
    for f in findings {
        *s.by_severity.entry(f.severity.as_str().into()).or_default() += 1;
        *s.by_analyzer.entry(f.analyzer.clone()).or_default() += 1;
        let mut tools: Vec<&str> = f.sources.iter().map(|s| s.tool.as_str()).collect();
        tools.dedup();
        for t in tools {
            *s.by_tool.entry(t.into()).or_default() += 1;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tool: &str, rule: &str, cwe: Option<u32>, sev: Severity, line: u32) -> Finding {
        Finding::new(
            "static",
            tool,
            rule,
            cwe,
            sev,
            "x",
            "msg",
            Location {
                path: "backend/app.py".into(),
                line: Some(line),
                column: None,
                end_line: None,
            },
        )
    }

    #[test]
    fn each_finding_has_a_category_the_comparison_weighs_apart() {
        let mut pylint_convention = at("pylint", "C0114", None, Severity::Info, 1);
        pylint_convention.sources[0].tool_severity = "convention".into();
        let cases = [
            (
                at("bandit", "B105", None, Severity::Low, 1),
                Category::Security,
            ),
            (
                at("pylint", "W0703", Some(703), Severity::Low, 1),
                Category::Security,
            ),
            (
                at("vulture", "unused-function", Some(561), Severity::Info, 1),
                Category::Quality,
            ),
            (
                at("radon", "complexity", Some(1121), Severity::Low, 1),
                Category::Quality,
            ),
            (
                at("ruff", "S608", None, Severity::Medium, 1),
                Category::Security,
            ),
            (at("ruff", "E501", None, Severity::Info, 1), Category::Style),
            (
                at("ruff", "F401", None, Severity::Low, 1),
                Category::Quality,
            ),
            (
                at("ruff", "not-valid-source", None, Severity::High, 1),
                Category::Quality,
            ),
            (pylint_convention, Category::Style),
            (
                at("assay-app", "app/does-not-start", None, Severity::High, 1),
                Category::AppFailure,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(f.category(), want, "{}:{}", f.tool, f.rule);
        }
    }

    #[test]
    fn same_place_and_weakness_merge_keeping_every_source() {
        let merged = merge(vec![
            at("bandit", "B608", Some(89), Severity::Medium, 10),
            at("semgrep", "sqli", Some(89), Severity::High, 10),
            at("ruff", "S608", Some(89), Severity::Medium, 11),
            at("vulture", "unused-function", None, Severity::Info, 10),
        ]);
        assert_eq!(merged.len(), 3);
        let sqli = &merged[0];
        assert_eq!(sqli.severity, Severity::High);
        let tools: Vec<_> = sqli.sources.iter().map(|s| s.tool.as_str()).collect();
        assert_eq!(tools, vec!["bandit", "semgrep"]);
        assert_eq!(merged.last().unwrap().tool, "vulture");
    }

    #[test]
    fn fingerprints_are_stable_and_distinguish_weaknesses() {
        let a = at("bandit", "B608", Some(89), Severity::Medium, 10);
        let b = at("semgrep", "other-rule", Some(89), Severity::High, 10);
        let c = at("bandit", "B105", Some(798), Severity::Medium, 10);
        assert_eq!(a.fingerprint, b.fingerprint, "same weakness, same place");
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(a.fingerprint.len(), 32);
    }

    #[test]
    fn summary_counts_by_severity_tool_and_analyzer() {
        let s = summarize(&merge(vec![
            at("bandit", "B608", Some(89), Severity::Medium, 10),
            at("semgrep", "sqli", Some(89), Severity::High, 10),
            at("vulture", "unused", None, Severity::Info, 3),
        ]));
        assert_eq!(s.total, 2);
        assert_eq!(s.by_severity["high"], 1);
        assert_eq!(s.by_severity["critical"], 0);
        assert_eq!(s.by_tool["bandit"], 1);
        assert_eq!(s.by_tool["semgrep"], 1);
        assert_eq!(s.by_analyzer["static"], 2);
    }
}
