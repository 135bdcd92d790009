//! A static tool's output is whatever the tool (or the app it ran over) made it print:
//! reading it gives findings or an error, never a panic, and the findings survive what
//! happens to them next (stored as JSON, merged across tools, exported as SARIF).
#![no_main]

use assay::analysis::finding::{merge, Finding};
use assay::analysis::sarif::to_sarif;
use assay::analysis::static_tools::{parse, TOOLS};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Ok(out) = std::str::from_utf8(rest) else {
        return;
    };
    let tool = TOOLS[choice as usize % TOOLS.len()].name;
    let app = Path::new("/apps/x");
    let Ok(findings) = parse(tool, out, app) else {
        return;
    };
    for f in &findings {
        assert_eq!((f.analyzer.as_str(), f.tool.as_str()), ("static", tool));
        assert_eq!(f.sources.len(), 1);
        assert_eq!(
            (f.sources[0].tool.as_str(), &f.sources[0].rule),
            (tool, &f.rule)
        );
        assert!(
            f.fingerprint.len() == 32 && f.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
            "fingerprint {:?}",
            f.fingerprint
        );
        assert!(
            !Path::new(&f.location.path).starts_with(app),
            "{:?} is not relative to the app",
            f.location.path
        );
        // Findings are stored as JSON and read back for reports and exports.
        let json = serde_json::to_string(f).unwrap();
        let back: Finding = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, f);
    }

    let sources = findings.len();
    let merged = merge(findings);
    let kept: usize = merged.iter().map(|f| f.sources.len()).sum();
    assert!(kept <= sources && merged.len() <= sources);
    let sarif = to_sarif(&merged, &[]);
    let results: usize = sarif["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["results"].as_array().unwrap().len())
        .sum();
    assert_eq!(results, kept, "one SARIF result per source of a finding");
    for run in sarif["runs"].as_array().unwrap() {
        for r in run["results"].as_array().unwrap() {
            if let Some(uri) =
                r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str()
            {
                assert!(
                    uri.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~/%".contains(&b)),
                    "uri {uri:?} is not a URI reference"
                );
            }
        }
    }
    serde_json::to_string(&sarif).unwrap();
});
