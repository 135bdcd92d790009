//! The analyzers check themselves: every planted defect in `examples/apps/*/expected.toml`
//! must be found by at least one of the tools the manifest names. Runs the real tools,
//! installed by `scripts/install-tools`.

use assay::analysis::finding::{Finding, ToolStatus};
use assay::analysis::static_tools;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Point the analyzer at the repo's tools unless the caller chose others, and start the
/// tools and apps under the real supervisor, as a worker does.
fn use_repo_tools() {
    // SAFETY: set before any tool or app starts; every test here sets the same value.
    unsafe { std::env::set_var("ASSAY_SUPERVISOR", env!("CARGO_BIN_EXE_assay")) };
    if std::env::var_os("ASSAY_TOOL_PATH").is_none() {
        let tools = repo().join(".tools");
        let path = format!(
            "{}:{}",
            tools.join("venv/bin").display(),
            tools.join("node/node_modules/.bin").display()
        );
        // Tests in this file share one setting; set before any tool runs.
        unsafe { std::env::set_var("ASSAY_TOOL_PATH", path) };
    }
}

#[derive(serde::Deserialize)]
struct Manifest {
    #[serde(default, rename = "static")]
    static_defects: Vec<StaticDefect>,
}

#[derive(serde::Deserialize)]
struct StaticDefect {
    defect: String,
    file: String,
    line: u32,
    #[serde(default)]
    cwe: Option<u32>,
    tools: Vec<String>,
}

fn apps() -> Vec<PathBuf> {
    let mut apps: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/apps"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expected.toml").is_file())
        .collect();
    apps.sort();
    apps
}

fn found_by(findings: &[Finding], d: &StaticDefect) -> Vec<String> {
    let mut tools = Vec::new();
    for f in findings {
        let near =
            f.location.path == d.file && f.location.line.is_some_and(|l| l.abs_diff(d.line) <= 2);
        if !near {
            continue;
        }
        for s in &f.sources {
            if d.tools.contains(&s.tool) && !tools.contains(&s.tool) {
                tools.push(s.tool.clone());
            }
        }
    }
    tools
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_analysis_finds_every_planted_defect() {
    use_repo_tools();
    let all: Vec<&'static static_tools::Tool> = static_tools::TOOLS.iter().collect();
    let mut missed = Vec::new();
    let apps = apps();
    assert!(
        apps.len() >= 4,
        "expected at least four sample apps, found {apps:?}"
    );
    for app in &apps {
        let manifest: Manifest =
            toml::from_str(&std::fs::read_to_string(app.join("expected.toml")).unwrap()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let result = static_tools::run_all(
            app,
            &all,
            Duration::from_secs(300),
            out.path(),
            scratch.path(),
        )
        .await
        .unwrap();
        for run in &result.runs {
            // An audit whose database cannot be reached from here says so, and only that.
            if run.status == ToolStatus::NotAvailable
                && run.tool.ends_with("-audit")
                && run
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("could not be"))
            {
                continue;
            }
            assert!(
                !matches!(
                    run.status,
                    ToolStatus::NotAvailable | ToolStatus::Error | ToolStatus::Timeout
                ),
                "{}: tool {} is {:?}: {:?} (run scripts/install-tools)",
                app.display(),
                run.tool,
                run.status,
                run.detail
            );
            if run.status != ToolStatus::Skipped {
                assert!(run.version.is_some(), "{}: no version recorded", run.tool);
                assert!(
                    run.raw_output
                        .as_ref()
                        .is_some_and(|r| out.path().join(r).is_file()),
                    "{}: raw output kept",
                    run.tool
                );
            }
        }
        let merged = assay::analysis::finding::merge(result.findings);
        for d in &manifest.static_defects {
            let tools = found_by(&merged, d);
            if tools.is_empty() {
                missed.push(format!(
                    "{}: {} at {}:{} (expected from {:?})",
                    name(app),
                    d.defect,
                    d.file,
                    d.line,
                    d.tools
                ));
            } else if let Some(cwe) = d.cwe {
                let with_cwe = merged.iter().any(|f| {
                    f.cwe == Some(cwe)
                        && f.location.path == d.file
                        && f.location.line.is_some_and(|l| l.abs_diff(d.line) <= 2)
                });
                if !with_cwe {
                    missed.push(format!(
                        "{}: {} found by {tools:?} but not as CWE-{cwe}",
                        name(app),
                        d.defect
                    ));
                }
            }
        }
    }
    assert!(
        missed.is_empty(),
        "planted defects missed:\n{}",
        missed.join("\n")
    );
}

fn name(app: &Path) -> String {
    app.file_name().unwrap().to_string_lossy().to_string()
}

#[derive(serde::Deserialize)]
struct DynamicManifest {
    #[serde(default)]
    dynamic: Vec<DynamicDefect>,
}

#[derive(serde::Deserialize, Debug)]
struct DynamicDefect {
    defect: String,
    check: String,
    path: String,
    #[serde(default)]
    method: Option<String>,
}

/// `/r/{code}`, `/r/<code>` and `/r/<int:code>` all become `/r/<>`; the query goes.
fn normalize_path(p: &str) -> String {
    p.split('?')
        .next()
        .unwrap_or(p)
        .split('/')
        .map(|seg| {
            if seg.starts_with('<') || seg.starts_with('{') {
                "<>"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The sample apps need Flask: they run with the tools' virtualenv first on PATH.
fn use_repo_python() {
    // SAFETY: as in `use_repo_tools`.
    unsafe { std::env::set_var("ASSAY_SUPERVISOR", env!("CARGO_BIN_EXE_assay")) };
    if std::env::var_os("ASSAY_APP_PATH").is_none() {
        let venv = repo().join(".tools/venv/bin");
        unsafe { std::env::set_var("ASSAY_APP_PATH", venv) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_analysis_finds_every_planted_defect() {
    use assay::analysis::apps::{AppPool, PortAllocator};
    use assay::analysis::{catalog, dynamic};
    use_repo_python();
    let catalog = catalog::load_dir(&catalog::builtin_dir()).unwrap();
    let pool = AppPool::new(PortAllocator::default());
    let mut missed = Vec::new();
    for app in apps() {
        let manifest: DynamicManifest =
            toml::from_str(&std::fs::read_to_string(app.join("expected.toml")).unwrap()).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let running = pool
            .acquire(&app, &logs.path().join("app.log"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-tools)", name(&app)));
        let template = catalog
            .get(
                running
                    .plan
                    .template
                    .as_deref()
                    .expect("the sample names its template"),
            )
            .expect("the app's template is in the catalog");
        let out = dynamic::probe(
            &running.base_url,
            template,
            Some(&app),
            running.plan.recipe.health.as_deref().unwrap_or("/health"),
        )
        .await;
        running.ensure_alive().expect("the app survived the probes");
        for d in &manifest.dynamic {
            let want = normalize_path(&d.path);
            let hit = out.findings.iter().any(|f| {
                let (method, path) = f
                    .location
                    .path
                    .split_once(' ')
                    .unwrap_or(("", &f.location.path));
                f.rule == d.check
                    && (d.path == "*" || normalize_path(path) == want)
                    && d.method.as_deref().is_none_or(|m| m == method)
            });
            if !hit {
                let got: Vec<String> = out
                    .findings
                    .iter()
                    .map(|f| format!("{} {}", f.rule, f.location.path))
                    .collect();
                missed.push(format!(
                    "{}: {} ({} at {}) — found: {got:?}",
                    name(&app),
                    d.defect,
                    d.check,
                    d.path
                ));
            }
        }
    }
    assert!(
        missed.is_empty(),
        "planted defects missed:\n{}",
        missed.join("\n")
    );
}

#[derive(serde::Deserialize)]
struct PerformanceManifest {
    #[serde(default)]
    performance: Vec<PerformanceDefect>,
}

#[derive(serde::Deserialize, Debug)]
struct PerformanceDefect {
    defect: String,
    path: String,
    min_p50_ms: f64,
}

/// Runs the `performance` job kind itself (app pool, setup requests, load, findings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn performance_analysis_measures_every_planted_slow_endpoint() {
    use_repo_python();
    let mut checked = 0;
    for app in apps() {
        let manifest: PerformanceManifest =
            toml::from_str(&std::fs::read_to_string(app.join("expected.toml")).unwrap()).unwrap();
        if manifest.performance.is_empty() {
            continue;
        }
        let out = tempfile::tempdir().unwrap();
        let ctx = assay::kinds::JobContext {
            job_id: 1,
            key: "performance".into(),
            attempt: 1,
            params: serde_json::json!({"app": app, "users": 4, "duration": "2s", "warmup": "300ms", "cache": false}),
            item: serde_json::json!({}),
            output_dir: out.path().to_path_buf(),
            cancel: tokio_util::sync::CancellationToken::new(),
            progress: tokio::sync::watch::channel(None).0,
            server: None,
            waited_ms: Default::default(),
            providers: Default::default(),
            app_source: None,
        };
        let result = assay::kinds::run("performance", &ctx)
            .await
            .unwrap_or_else(|f| panic!("{}: {f:?}", name(&app)))
            .result;
        for d in &manifest.performance {
            let want = normalize_path(&d.path);
            let endpoint = result["performance"]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| {
                    e["template_path"]
                        .as_str()
                        .is_some_and(|t| normalize_path(t) == want)
                })
                .unwrap_or_else(|| panic!("{}: {} not loaded: {result}", name(&app), d.path));
            let p50 = endpoint["stats"]["latency_ms"]["p50"].as_f64().unwrap();
            assert!(
                p50 >= d.min_p50_ms,
                "{}: {} p50 {p50} ms < {} ms",
                name(&app),
                d.defect,
                d.min_p50_ms
            );
            let flagged = result["findings"].as_array().unwrap().iter().any(|f| {
                f["rule"] == "slow_endpoint"
                    && normalize_path(
                        f["location"]["path"]
                            .as_str()
                            .unwrap()
                            .split_once(' ')
                            .unwrap()
                            .1,
                    ) == want
            });
            assert!(
                flagged,
                "{}: the slow endpoint is reported as a finding: {result}",
                name(&app)
            );
            checked += 1;
        }
        assert!(out.path().join("performance.sarif").is_file());
    }
    assert!(
        checked >= 1,
        "the sample apps plant at least one slow endpoint"
    );
}

/// An unchanged app with unchanged tools and settings is analyzed once; a changed file,
/// or `cache = false`, runs the analysis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_apps_are_reused_from_the_cache() {
    use_repo_tools();
    let cache = tempfile::tempdir().unwrap();
    // Only this test reads the cache location.
    unsafe { std::env::set_var("ASSAY_CACHE_DIR", cache.path()) };
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("app.py"),
        "import subprocess\nsubprocess.call('ls', shell=True)\n",
    )
    .unwrap();
    let run = |params: serde_json::Value| async move {
        let out = tempfile::tempdir().unwrap();
        let ctx = assay::kinds::JobContext {
            job_id: 1,
            key: "static".into(),
            attempt: 1,
            params,
            item: serde_json::json!({}),
            output_dir: out.path().to_path_buf(),
            cancel: tokio_util::sync::CancellationToken::new(),
            progress: tokio::sync::watch::channel(None).0,
            server: None,
            waited_ms: Default::default(),
            providers: Default::default(),
            app_source: None,
        };
        let result = assay::kinds::run("static", &ctx).await.unwrap().result;
        let files: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        (result, files)
    };
    let params = serde_json::json!({"app": app.path(), "tools": ["bandit"]});
    let (first, _) = run(params.clone()).await;
    assert!(first.get("cached").is_none());
    assert!(first["summary"]["total"].as_u64().unwrap() >= 1, "{first}");
    let (second, files) = run(params.clone()).await;
    assert_eq!(second["cached"], true);
    assert_eq!(second["findings"], first["findings"]);
    assert!(
        files.contains(&"static.sarif".to_string()),
        "artifacts come back with a cached result: {files:?}"
    );
    let (bypassed, _) =
        run(serde_json::json!({"app": app.path(), "tools": ["bandit"], "cache": false})).await;
    assert!(bypassed.get("cached").is_none());
    std::fs::write(app.path().join("app.py"), "print('changed')\n").unwrap();
    let (changed, _) = run(params).await;
    assert!(
        changed.get("cached").is_none(),
        "a changed app is analyzed again"
    );
}

/// The merged SARIF of a real analysis (static tools and dynamic probes together) passes
/// Microsoft's SARIF validator (the SARIF Multitool, installed by scripts/install-tools)
/// without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_sarif_passes_the_official_validator() {
    use assay::analysis::apps::{AppPool, PortAllocator};
    use assay::analysis::{catalog, dynamic, finding, sarif};
    use_repo_tools();
    use_repo_python();
    let app = repo().join("examples/apps/todo-api-sqli");
    let tools: Vec<&'static static_tools::Tool> = ["bandit", "semgrep", "vulture"]
        .iter()
        .map(|t| static_tools::tool(t).unwrap())
        .collect();
    let out = tempfile::tempdir().unwrap();
    let stat = static_tools::run_all(
        &app,
        &tools,
        Duration::from_secs(300),
        out.path(),
        out.path(),
    )
    .await
    .unwrap();
    let pool = AppPool::new(PortAllocator::default());
    let running = pool
        .acquire(&app, &out.path().join("app.log"))
        .await
        .unwrap();
    let catalog = catalog::load_dir(&catalog::builtin_dir()).unwrap();
    let dynamic = dynamic::probe(
        &running.base_url,
        catalog.get("todo-api").unwrap(),
        Some(&app),
        "/health",
    )
    .await;
    let mut runs = stat.runs;
    runs.extend(dynamic.runs);
    let merged = finding::merge(stat.findings.into_iter().chain(dynamic.findings).collect());
    assert!(
        merged.iter().any(|f| f.analyzer == "dynamic")
            && merged.iter().any(|f| f.analyzer == "static")
    );
    let file = out.path().join("merged.sarif");
    std::fs::write(
        &file,
        serde_json::to_vec_pretty(&sarif::to_sarif(&merged, &runs)).unwrap(),
    )
    .unwrap();
    let validator = repo().join(".tools/node/node_modules/.bin/sarif-multitool");
    assert!(
        validator.exists(),
        "run scripts/install-tools (it installs the SARIF Multitool)"
    );
    let report = out.path().join("validation.sarif");
    let status = std::process::Command::new(&validator)
        .args(["validate", "--output"])
        .arg(&report)
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success(), "the validator ran");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let errors: Vec<String> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["results"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["level"] == "error")
        .map(|r| format!("{}: {}", r["ruleId"], r["message"]["text"]))
        .collect();
    assert!(
        errors.is_empty(),
        "SARIF validation errors:\n{}",
        errors.join("\n")
    );
}
