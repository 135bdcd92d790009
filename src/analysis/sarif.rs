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
            // Assay's own analyzers record runs per check (`assay-probe:cors`).
            let version = versions.get(tool.as_str()).cloned().flatten().or_else(|| {
                versions
                    .iter()
                    .find(|(name, _)| name.split(':').next() == Some(tool.as_str()))
                    .and_then(|(_, v)| *v)
            });
            if let Some(v) = version {
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
                    // A file gets a physical location; an HTTP endpoint (`GET /api/x`) is
                    // not a file, so it is a logical location.
                    let location = if is_endpoint(&f.location.path) {
                        json!({"logicalLocations": [{"fullyQualifiedName": f.location.path, "kind": "resource"}]})
                    } else {
                        let mut physical = json!({"artifactLocation": {"uri": uri_reference(&f.location.path)}});
                        if !region.is_empty() {
                            physical["region"] = Value::Object(region);
                        }
                        json!({"physicalLocation": physical})
                    };
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
                        "locations": [location],
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

const HTTP_METHODS: &[&str] = &[
    "GET ", "POST ", "PUT ", "PATCH ", "DELETE ", "HEAD ", "OPTIONS ",
];

fn is_endpoint(path: &str) -> bool {
    HTTP_METHODS.iter().any(|m| path.starts_with(m))
}

/// A relative path as an RFC 3986 URI reference: characters outside the unreserved and
/// path sets are percent-encoded.
fn uri_reference(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

    #[test]
    fn endpoints_are_logical_locations_and_paths_are_uri_references() {
        let dynamic = Finding::new(
            "dynamic",
            "assay-probe",
            "cors",
            Some(942),
            Severity::High,
            "high",
            "cors",
            Location {
                path: "GET /r/<code>".into(),
                line: None,
                column: None,
                end_line: None,
            },
        );
        let file = Finding::new(
            "static",
            "bandit",
            "B1",
            None,
            Severity::Low,
            "LOW",
            "x",
            Location {
                path: "my app/a b.py".into(),
                line: Some(1),
                column: None,
                end_line: None,
            },
        );
        let sarif = to_sarif(&[dynamic, file], &[]);
        let runs = sarif["runs"].as_array().unwrap();
        let probe = runs
            .iter()
            .find(|r| r["tool"]["driver"]["name"] == "assay-probe")
            .unwrap();
        assert_eq!(
            probe["results"][0]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
            "GET /r/<code>"
        );
        let bandit = runs
            .iter()
            .find(|r| r["tool"]["driver"]["name"] == "bandit")
            .unwrap();
        assert_eq!(
            bandit["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "my%20app/a%20b.py"
        );
    }
}
