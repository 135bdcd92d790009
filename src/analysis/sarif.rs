//! SARIF 2.1.0 output: one run per reporting tool, every source of a merged finding as a
//! result in its tool's run, tied together by the finding's fingerprint.

use super::finding::{Finding, ToolRun};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

pub fn to_sarif(findings: &[Finding], runs: &[ToolRun]) -> Value {
    let versions: BTreeMap<&str, Option<&str>> = runs
        .iter()
        .map(|r| (r.tool.as_str(), r.version.as_deref()))
        .collect();
    let mut by_tool: BTreeMap<String, Vec<(&Finding, &super::finding::Source)>> = BTreeMap::new();
    for f in findings {
        for s in &f.sources {
            by_tool.entry(s.tool.clone()).or_default().push((f, s));
        }
    }
    // Tools that ran without findings still get a run, so viewers show they were used.
    for r in runs {
        if matches!(r.status, super::finding::ToolStatus::NoIssues) {
            by_tool.entry(r.tool.clone()).or_default();
        }
    }
    let sarif_runs: Vec<Value> = by_tool
        .iter()
        .map(|(tool, results)| {
            let mut rules: BTreeMap<&str, Value> = BTreeMap::new();
            for (f, s) in results {
                rules.entry(s.rule.as_str()).or_insert_with(|| {
                    let mut tags = vec![];
                    if let Some(cwe) = f.cwe {
                        tags.push(format!("CWE-{cwe}"));
                    }
                    json!({
                        "id": s.rule,
                        "shortDescription": {"text": s.message.chars().take(200).collect::<String>()},
                        "properties": {"tags": tags},
                    })
                });
            }
            let mut driver = json!({
                "name": tool,
                "informationUri": "https://github.com/assay-dev/assay",
                "rules": rules.values().cloned().collect::<Vec<_>>(),
            });
            if let Some(Some(v)) = versions.get(tool.as_str()) {
                driver["version"] = json!(v);
            }
            let results: Vec<Value> = results
                .iter()
                .map(|(f, s)| {
                    let mut region = serde_json::Map::new();
                    if let Some(l) = f.location.line {
                        region.insert("startLine".into(), json!(l.max(1)));
                    }
                    if let Some(c) = f.location.column {
                        region.insert("startColumn".into(), json!(c.max(1)));
                    }
                    if let Some(snippet) = &f.snippet {
                        region.insert("snippet".into(), json!({"text": snippet}));
                    }
                    let mut physical = json!({"artifactLocation": {"uri": f.location.path}});
                    if !region.is_empty() {
                        physical["region"] = Value::Object(region);
                    }
                    let others: Vec<String> = f
                        .sources
                        .iter()
                        .filter(|o| o.tool != s.tool || o.rule != s.rule)
                        .map(|o| format!("{}:{}", o.tool, o.rule))
                        .collect();
                    json!({
                        "ruleId": s.rule,
                        "level": f.severity.sarif_level(),
                        "message": {"text": s.message},
                        "locations": [{"physicalLocation": physical}],
                        "partialFingerprints": {"assayFinding/v1": f.fingerprint},
                        "properties": {
                            "severity": f.severity.as_str(),
                            "toolSeverity": s.tool_severity,
                            "cwe": f.cwe.map(|c| format!("CWE-{c}")),
                            "alsoReportedBy": others,
                        },
                    })
                })
                .collect();
            json!({"tool": {"driver": driver}, "results": results})
        })
        .collect();
    json!({"$schema": SCHEMA, "version": "2.1.0", "runs": sarif_runs})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::finding::{merge, Location, Severity, ToolStatus};

    #[test]
    fn merged_findings_appear_once_per_reporting_tool() {
        let at = |tool: &str, rule: &str| {
            Finding::new(
                "static",
                tool,
                rule,
                Some(89),
                Severity::High,
                "ERROR",
                "SQL injection",
                Location {
                    path: "backend/app.py".into(),
                    line: Some(7),
                    column: Some(5),
                    end_line: None,
                },
            )
        };
        let findings = merge(vec![at("bandit", "B608"), at("semgrep", "sqli")]);
        let runs = vec![
            ToolRun {
                tool: "bandit".into(),
                status: ToolStatus::Success,
                version: Some("1.9.4".into()),
                duration_ms: 1,
                findings: 1,
                detail: None,
                raw_output: None,
            },
            ToolRun {
                tool: "ruff".into(),
                status: ToolStatus::NoIssues,
                version: Some("0.17.5".into()),
                duration_ms: 1,
                findings: 0,
                detail: None,
                raw_output: None,
            },
        ];
        let sarif = to_sarif(&findings, &runs);
        assert_eq!(sarif["version"], "2.1.0");
        let runs = sarif["runs"].as_array().unwrap();
        let names: Vec<_> = runs
            .iter()
            .map(|r| r["tool"]["driver"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["bandit", "ruff", "semgrep"]);
        let bandit = &runs[0];
        assert_eq!(bandit["tool"]["driver"]["version"], "1.9.4");
        let result = &bandit["results"][0];
        assert_eq!(result["level"], "error");
        assert_eq!(
            result["locations"][0]["physicalLocation"]["region"]["startLine"],
            7
        );
        assert_eq!(result["properties"]["alsoReportedBy"][0], "semgrep:sqli");
        assert_eq!(
            result["partialFingerprints"]["assayFinding/v1"],
            runs[2]["results"][0]["partialFingerprints"]["assayFinding/v1"]
        );
        assert_eq!(
            bandit["tool"]["driver"]["rules"][0]["properties"]["tags"][0],
            "CWE-89"
        );
    }
}
