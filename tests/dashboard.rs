//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `.ci/run` installs), driven over WebDriver: submit a pipeline from the page,
//! watch its cells change state without a reload, kill -9 the server mid-run and see the
//! page's event stream resume with nothing lost or shown twice. Screenshots of the pages
//! are kept in `target/test-artifacts/dashboard/`.

mod common;

use common::{create_token, free_port, wait_for, Cluster, Proc, BIN};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const SPEC: &str = r#"[pipeline]
name = "from-the-browser"

[[stage]]
name = "generate"
kind = "sleep"
matrix = { model = ["model-a", "model-b"], template = ["todo-api", "blog"] }
[stage.params]
ms = 1200
steps = 3

[[stage]]
name = "analyze"
kind = "sleep"
after = ["generate"]
matrix = { model = ["model-a", "model-b"], template = ["todo-api", "blog"] }
[stage.params]
ms = 800
"#;

struct Browser {
    client: Client,
    /// Where the browser saves downloads, without asking.
    downloads: tempfile::TempDir,
    _driver: Proc,
}

fn executable(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver; .ci/run does), or set {env}",
        path.display()
    );
    path
}

async fn browser() -> Browser {
    let chromium = executable("ASSAY_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = executable("ASSAY_CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = free_port();
    // In a PID namespace of its own whose init is chromedriver (`--kill-child`: it dies with
    // this test's handle): when it ends, the kernel ends Chromium and its crash handlers too,
    // which otherwise outlive a killed chromedriver.
    let driver = Proc {
        child: Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--kill-child",
            ])
            .arg(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        name: "chromedriver".into(),
    };
    wait_for("chromedriver", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let downloads = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"],
            "prefs": {
                "download.default_directory": downloads.path(),
                "download.prompt_for_download": false,
            },
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("chromedriver starts a headless Chromium");
    Browser {
        client,
        downloads,
        _driver: driver,
    }
}

/// Click the element `css` names, once it is there.
async fn click(b: &Browser, css: &str) {
    b.client
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Wait until the element `css` names is there.
async fn present(b: &Browser, css: &str) {
    b.client
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

async fn js(b: &Browser, script: &str) -> Value {
    b.client.execute(script, vec![]).await.unwrap()
}

async fn screenshot(b: &Browser, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let png = b.client.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The states of the grid's chips, by job id.
async fn chip_states(b: &Browser) -> Vec<(i64, String)> {
    let v = js(
        b,
        "return [...document.querySelectorAll('#grid [data-job]')].map(e => [Number(e.dataset.job), e.dataset.state]);",
    )
    .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_run_live_and_its_stream_survives_a_server_kill() {
    let cluster = Cluster::new();
    let mut server = cluster.server("500ms").await;
    let _worker = cluster.worker("w1", 2, &[]);
    let b = browser().await;

    // The pipelines page: submit a spec from the page.
    b.client.goto(&format!("{}/", cluster.url)).await.unwrap();
    click(&b, "#new-pipeline").await;
    // A bad spec gets the CLI's error, on the page.
    b.client
        .execute(
            "document.getElementById('spec-text').value = arguments[0];",
            vec![json!(
                "[pipeline]\nname = \"bad\"\n[[stage]]\nname = \"x\"\nkind = \"nope\"\n"
            )],
        )
        .await
        .unwrap();
    click(&b, "#submit-spec").await;
    let error = b
        .client
        .wait()
        .for_element(Locator::Css("#submit-result .error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        error.contains("pasted.toml:5: stage[0].kind: unknown job kind `nope`")
            && error.contains("fix: use one of"),
        "{error}"
    );
    b.client
        .execute(
            "document.getElementById('spec-text').value = arguments[0];",
            vec![json!(SPEC)],
        )
        .await
        .unwrap();
    click(&b, "#submit-spec").await;

    // The pipeline page: a 2 × 2 grid whose chips change state live.
    present(&b, "#grid [data-job]").await;
    let hash = js(&b, "return location.hash;").await;
    let pipeline: i64 = hash
        .as_str()
        .unwrap()
        .trim_start_matches("#/pipelines/")
        .parse()
        .unwrap();
    // Set on this very page: a reload would lose it.
    js(&b, "window.__sameDocument = true; return true;").await;
    let first = chip_states(&b).await;
    assert_eq!(first.len(), 8, "one chip per job: {first:?}");
    // Jobs that have not started say why they wait, as `assay explain` does.
    present(&b, "#waiting td.why").await;
    let why = js(
        &b,
        "return [...document.querySelectorAll('#waiting td.why')].map(e => e.textContent);",
    )
    .await;
    let why = why.as_array().unwrap();
    assert!(
        why.iter().all(|w| {
            let w = w.as_str().unwrap();
            w.contains("waiting for upstream job(s) generate[")
                || w.contains("waiting for a free worker slot")
        }),
        "{why:?}"
    );
    wait_for(
        "a chip to turn completed",
        Duration::from_secs(30),
        || async { chip_states(&b).await.iter().any(|(_, s)| s == "completed") },
    )
    .await;
    screenshot(&b, "pipeline-running").await;

    // Kill the server mid-run; the page's stream reconnects to the new one by itself.
    server.kill9();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _server = cluster.server("500ms").await;
    let detail = cluster
        .wait_finished(pipeline, Duration::from_secs(60))
        .await;
    assert_eq!(
        detail.pipeline.state,
        assay::domain::PipelineState::Completed
    );
    wait_for(
        "every chip to show completed",
        Duration::from_secs(30),
        || async { chip_states(&b).await.iter().all(|(_, s)| s == "completed") },
    )
    .await;
    assert_eq!(
        js(&b, "return window.__sameDocument === true;").await,
        json!(true),
        "the page was never reloaded"
    );
    // The page received every event of the pipeline exactly once, in order, across the
    // kill; its log shows the state changes among them.
    let stored = cluster
        .client
        .events(pipeline, 0, 10_000)
        .await
        .unwrap()
        .events;
    let ids = |v: Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let all: Vec<i64> = stored.iter().map(|e| e.id).collect();
    let logged: Vec<i64> = stored
        .iter()
        .filter(|e| e.kind != "job_progress")
        .map(|e| e.id)
        .collect();
    wait_for("the page to catch up", Duration::from_secs(30), || async {
        ids(js(&b, "return window.assaySeen;").await) == all
    })
    .await;
    let shown = ids(js(
        &b,
        "return [...document.querySelectorAll('#event-log [data-event]')].map(e => Number(e.dataset.event));",
    )
    .await);
    assert_eq!(shown, logged);
    screenshot(&b, "pipeline-finished").await;

    // A job's page: attempts, explanation, artifacts.
    let job = first[0].0;
    b.client
        .goto(&format!("{}/#/jobs/{job}", cluster.url))
        .await
        .unwrap();
    // Read through the page, not an element handle: the page re-renders as events arrive.
    wait_for("the job's explanation", Duration::from_secs(20), || async {
        js(
            &b,
            "const e = document.getElementById('why'); return e ? e.textContent : '';",
        )
        .await
        .as_str()
        .is_some_and(|why| why.contains("completed"))
    })
    .await;
    present(&b, "#attempts tbody tr").await;
    // Its timeline: the states it went through and the steps it reported, in order.
    present(&b, "#timeline [data-kind='job_progress']").await;
    let timeline = js(&b, "return [...document.querySelectorAll('#timeline [data-event]')].map(e => [Number(e.dataset.event), e.textContent]);").await;
    let timeline = timeline.as_array().unwrap();
    let ids: Vec<i64> = timeline.iter().map(|t| t[0].as_i64().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, none twice");
    let text: Vec<&str> = timeline.iter().map(|t| t[1].as_str().unwrap()).collect();
    assert!(text.iter().any(|t| t.contains("→ running")), "{text:?}");
    assert!(text.last().unwrap().contains("→ completed"), "{text:?}");
    assert!(text.iter().any(|t| t.contains("step sleeping")), "{text:?}");
    screenshot(&b, "job").await;

    // Back to the list: the pipeline is there, completed, once.
    b.client.goto(&format!("{}/", cluster.url)).await.unwrap();
    b.client
        .wait()
        .for_element(Locator::Css(&format!(
            "#pipelines tr[data-pipeline='{pipeline}']"
        )))
        .await
        .unwrap();
    let rows = js(
        &b,
        "return document.querySelectorAll('#pipelines tbody tr').length;",
    )
    .await;
    assert_eq!(rows, json!(1));
    screenshot(&b, "pipelines").await;
    b.client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_results_page_filters_sorts_and_opens_findings() {
    let app = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/apps/todo-api-sqli");
    let spec = format!(
        r#"[pipeline]
name = "results"
[[stage]]
name = "static"
kind = "static"
[stage.params]
app = "{app}"
tools = ["ruff", "bandit"]
cache = false
[[stage]]
name = "performance"
kind = "performance"
[stage.params]
app = "{app}"
users = 2
duration = "1s"
warmup = "200ms"
cache = false
"#,
        app = app.display()
    );
    let cluster = Cluster::new();
    let _server = cluster.server("500ms").await;
    let _worker = cluster.worker("w1", 2, &["--app-root", &examples_apps()]);
    let pipeline = cluster.submit(&spec).await;
    let detail = cluster
        .wait_finished(pipeline, Duration::from_secs(180))
        .await;
    assert_eq!(
        detail.pipeline.state,
        assay::domain::PipelineState::Completed,
        "{}",
        cluster.logs()
    );
    let b = browser().await;
    b.client
        .goto(&format!("{}/#/pipelines/{pipeline}/results", cluster.url))
        .await
        .unwrap();
    click(&b, "#apps tbody tr a").await;
    present(&b, "#findings tr.finding").await;
    let count = |b: &Browser| {
        let c = b.client.clone();
        async move {
            c.find(Locator::Id("finding-count"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let all = count(&b).await;
    let total: usize = all
        .split(" of ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total >= 2, "the planted SQL injection and more: {all}");
    // Every tool that ran is listed with its status and version.
    let tools = js(&b, "return [...document.querySelectorAll('#tools tbody tr td:first-child')].map(e => e.textContent);").await;
    for tool in ["ruff", "bandit", "assay-load"] {
        assert!(
            tools.as_array().unwrap().iter().any(|t| t == tool),
            "{tool}: {tools}"
        );
    }
    // Filter by severity: only those rows remain.
    b.client
        .execute(
            "const s = document.getElementById('filter-severity'); s.value = 'high'; s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap();
    let severities = js(&b, "return [...document.querySelectorAll('#findings tr.finding .sev')].map(e => e.textContent);").await;
    let severities = severities.as_array().unwrap();
    assert!(
        !severities.is_empty() && severities.iter().all(|s| s == "high"),
        "{severities:?}"
    );
    assert_ne!(count(&b).await, all);
    // Open a finding: its snippet and every tool that reported it.
    click(&b, "#findings tr.finding").await;
    let opened = b
        .client
        .find(Locator::Css("#findings tr.detail:not([hidden])"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(opened.contains("Reported by"), "{opened}");
    // Sorting by file orders the rows by path.
    b.client
        .execute(
            "const s = document.getElementById('filter-severity'); s.value = ''; s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap();
    js(&b, "[...document.querySelectorAll('#findings th')].find(e => e.textContent.startsWith('file')).click(); return true;").await;
    let files = js(&b, "return [...document.querySelectorAll('#findings tr.finding td:nth-child(5)')].map(e => e.textContent.split(':')[0]);").await;
    let files: Vec<String> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    // Performance figures with a latency chart.
    b.client
        .find(Locator::Css("#latency-chart rect"))
        .await
        .expect("a latency chart with bars");
    screenshot(&b, "app-results").await;
    b.client.close().await.unwrap();
}

/// The sample apps' folder, which the analyzing workers are given as their app root.
fn examples_apps() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/apps").to_string()
}

/// Two "models" that are two real example apps, analyzed by real tools: enough for a
/// ranking, a chart and a heatmap.
fn compare_spec() -> String {
    let apps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/apps");
    format!(
        r#"[pipeline]
name = "compare"
[[stage]]
name = "static"
kind = "static"
matrix = {{ model = ["todo-api-sqli", "notes-auth-leaky"], template = ["example"] }}
[stage.params]
app = "{apps}/{{{{ model }}}}"
tools = ["ruff", "bandit"]
cache = false
"#,
        apps = apps.display()
    )
}

/// `assay export` into `to`; its exit status must be 0.
fn cli_export(args: &[&str], to: &std::path::Path) {
    let out = Command::new(BIN)
        .arg("export")
        .args(args)
        .arg("-o")
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "assay export {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_ranks_models_between_runs_and_the_html_report_opens_offline() {
    let cluster = Cluster::new();
    let mut server = cluster.server("500ms").await;
    let _worker = cluster.worker("w1", 2, &["--app-root", &examples_apps()]);
    // A run that holds a worker slot: the workers page shows it running, and its stage's
    // breaker.
    let hold = cluster
        .submit("[pipeline]\nname = \"hold\"\n[[stage]]\nname = \"hold\"\nkind = \"sleep\"\nbreaker = 3\n[stage.params]\nms = 120000\n")
        .await;
    let b = browser().await;
    b.client
        .goto(&format!("{}/#/workers", cluster.url))
        .await
        .unwrap();
    present(&b, &format!("#breakers tr[data-breaker='{hold}/hold']")).await;
    wait_for("the worker to run the held job", Duration::from_secs(30), || async {
        js(&b, "const r = document.querySelector(\"#workers tr[data-worker='w1']\"); return r ? r.cells[3].textContent : '';")
            .await
            == json!("1")
    })
    .await;
    let breaker = js(&b, &format!("return [...document.querySelector(\"#breakers tr[data-breaker='{hold}/hold']\").cells].map(c => c.textContent);")).await;
    assert_eq!(
        breaker,
        json!([format!("#{hold} hold"), "hold", "sleep", "0", "3", "closed"])
    );
    screenshot(&b, "workers").await;

    let spec = compare_spec();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let id = cluster.submit(&spec).await;
        let detail = cluster.wait_finished(id, Duration::from_secs(180)).await;
        assert_eq!(
            detail.pipeline.state,
            assay::domain::PipelineState::Completed,
            "{}",
            cluster.logs()
        );
        runs.push(id);
    }
    let (first, second) = (runs[0], runs[1]);
    cluster.client.cancel_pipeline(hold).await.unwrap();

    b.client
        .goto(&format!("{}/#/pipelines/{second}/compare", cluster.url))
        .await
        .unwrap();
    present(&b, "#ranking tbody tr").await;
    let ranked = js(
        &b,
        "return [...document.querySelectorAll('#ranking tbody tr')].map(r => r.dataset.model);",
    )
    .await;
    let ranked = ranked.as_array().unwrap();
    assert_eq!(ranked.len(), 2, "{ranked:?}");
    // Every view shows the same numbers: this page, the HTML report, the models CSV and
    // `assay compare` (which renders the standings the JSON export carries).
    let shown = js(
        &b,
        "return [...document.querySelectorAll('#ranking tbody tr')].map(r => [r.dataset.model, r.querySelector('td.security').textContent, r.querySelector('td.quality').textContent]);",
    )
    .await;
    let export = |format| cluster.client.export(second, format);
    let exported: Value =
        serde_json::from_slice(&export(assay::report::ExportFormat::Json).await.unwrap()).unwrap();
    let models: Vec<assay::ranking::ModelStanding> =
        serde_json::from_value(exported["models"].clone()).unwrap();
    let table = assay::ranking::render(&models);
    let html = String::from_utf8(export(assay::report::ExportFormat::Html).await.unwrap()).unwrap();
    let csv = String::from_utf8(
        export(assay::report::ExportFormat::ModelsCsv)
            .await
            .unwrap(),
    )
    .unwrap();
    for (row, m) in shown.as_array().unwrap().iter().zip(&models) {
        let security = assay::ranking::with_interval(m.security_score, m.security_ci);
        let quality = assay::ranking::with_interval(m.quality_score, m.quality_ci);
        assert_eq!(
            row,
            &json!([m.model, security, quality]),
            "the page and the standings"
        );
        assert!(
            table.contains(&security) && table.contains(&quality),
            "{table}"
        );
        assert!(
            html.contains(&format!(">{security}<")) && html.contains(&format!(">{quality}<")),
            "the HTML report shows {security} and {quality}"
        );
        let line = csv
            .lines()
            .find(|l| l.split(',').nth(1) == Some(m.model.as_str()))
            .unwrap();
        assert!(
            line.contains(&format!(",{},", m.security_score))
                && line.contains(&format!(",{},", m.quality_score)),
            "{line}"
        );
    }
    present(&b, "#severity-chart rect.bar").await;
    let heat = js(
        &b,
        "return document.querySelectorAll('#heatmap td[data-score]').length;",
    )
    .await;
    assert_eq!(heat, json!(2), "one heatmap cell per model and template");
    // The same spec's earlier run is offered; picking it shows what changed.
    b.client
        .execute(
            "const s = document.getElementById('compare-with'); s.value = arguments[0]; s.dispatchEvent(new Event('change'));",
            vec![json!(first.to_string())],
        )
        .await
        .unwrap();
    present(&b, "#app-changes tbody tr").await;
    let changes = js(&b, "return [...document.querySelectorAll('#app-changes tbody tr')].map(r => [...r.cells].map(c => c.textContent));").await;
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    for row in changes {
        // The same code analyzed twice: nothing fixed, nothing new.
        assert_eq!((&row[3], &row[4]), (&json!("0"), &json!("0")), "{row:?}");
    }
    let model_rows = js(
        &b,
        "return document.querySelectorAll('#model-changes tbody tr').length;",
    )
    .await;
    assert_eq!(model_rows, json!(2));
    screenshot(&b, "compare").await;

    // Download the HTML report from the page.
    click(&b, "[data-export='report.html']").await;
    let report = b
        .downloads
        .path()
        .join(format!("assay-pipeline-{second}-report.html"));
    wait_for(
        "the report to download",
        Duration::from_secs(30),
        || async {
            report.is_file()
                && std::fs::read_dir(b.downloads.path())
                    .unwrap()
                    .flatten()
                    .all(|e| !e.file_name().to_string_lossy().ends_with(".crdownload"))
        },
    )
    .await;
    // And the same exports from the command line, from the server and from its data.
    let cli_dir = tempfile::tempdir().unwrap();
    let from_server = cli_dir.path().join("server.html");
    cli_export(
        &[&second.to_string(), "--server", &cluster.url],
        &from_server,
    );
    let zip_path = cli_dir.path().join("sarif.zip");
    cli_export(
        &[
            &second.to_string(),
            "--server",
            &cluster.url,
            "--format",
            "sarif-zip",
        ],
        &zip_path,
    );
    let zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    assert_eq!(zip.len(), 2, "one SARIF file per app");

    // Offline: the server is gone and the report still opens, whole.
    server.kill9();
    let from_data = cli_dir.path().join("data.html");
    cli_export(
        &[
            &second.to_string(),
            "--data-dir",
            cluster.dir.path().to_str().unwrap(),
        ],
        &from_data,
    );
    let count_findings = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .matches("<details class=\"finding\"")
            .count()
    };
    let html = std::fs::read_to_string(&report).unwrap();
    for outside in [
        "src=\"http",
        "href=\"http",
        "src=\"/",
        "href=\"/",
        "url(",
        "<script",
        "<link",
        "@import",
    ] {
        assert!(
            !html.contains(outside),
            "the report refers outside itself: {outside}"
        );
    }
    let in_report = count_findings(&report);
    assert!(in_report >= 2, "the report holds the findings");
    assert_eq!(count_findings(&from_server), in_report);
    assert_eq!(count_findings(&from_data), in_report);

    b.client
        .goto(&format!("file://{}", report.display()))
        .await
        .unwrap();
    present(&b, "#ranking").await;
    present(&b, "#severity-chart rect title").await;
    let fetched = js(
        &b,
        "return performance.getEntriesByType('resource').map(e => e.name);",
    )
    .await;
    assert_eq!(fetched, json!([]), "the report loads nothing from anywhere");
    // Open a finding: its body shows the code and the tools that reported it.
    let shown = js(
        &b,
        "const d = document.querySelector('details.finding'); d.querySelector('summary').click(); d.scrollIntoView({block: 'start'}); \
         return [d.open, d.innerText];",
    )
    .await;
    assert_eq!(shown[0], json!(true));
    let text = shown[1].as_str().unwrap();
    assert!(text.contains("bandit") || text.contains("ruff"), "{text}");
    screenshot(&b, "report").await;
    b.client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_job_pipeline_opens_folded_and_a_chip_lists_its_apps_jobs() {
    let cluster = Cluster::new();
    // No worker: the jobs stay available, and the page is timed on an idle server.
    let _server = cluster.server("500ms").await;
    let list = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| format!("\"{prefix}{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let spec = format!(
        "[pipeline]\nname = \"big\"\n[[stage]]\nname = \"analyze\"\nkind = \"noop\"\n\
         matrix = {{ model = [{}], template = [{}], tool = [{}] }}\n",
        list("model-", 10),
        list("template-", 100),
        list("tool-", 10)
    );
    let small = cluster
        .submit("[pipeline]\nname = \"small\"\n[[stage]]\nname = \"analyze\"\nkind = \"noop\"\nmatrix = { model = [\"model-0\"], template = [\"template-0\"], tool = [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\"] }\n")
        .await;
    let pipeline = cluster.submit(&spec).await;
    let b = browser().await;
    b.client.goto(&format!("{}/", cluster.url)).await.unwrap();
    present(&b, "#pipelines").await;
    // Printed, not asserted: from the link to the drawn grid, in the already loaded page.
    let open = |id: i64, css: &'static str| {
        let b = &b;
        async move {
            let t = std::time::Instant::now();
            js(
                b,
                &format!("location.hash = '#/pipelines/{id}'; return true;"),
            )
            .await;
            present(b, css).await;
            t.elapsed().as_secs_f64() * 1000.0
        }
    };
    let small_ms = open(small, "#grid td.cell").await;
    let big_ms = open(pipeline, "#grid-folded").await;
    println!("pipeline page drawn: 10 jobs in {small_ms:.0} ms, 10,000 jobs in {big_ms:.0} ms");
    let cells = js(
        &b,
        "return document.querySelectorAll('#grid td.cell').length;",
    )
    .await;
    assert_eq!(cells, json!(1000), "a cell per app");
    let chips = js(
        &b,
        "return document.querySelectorAll('#grid a.chip').length;",
    )
    .await;
    assert_eq!(chips, json!(1000), "one chip per app's stage, not per job");
    screenshot(&b, "pipeline-10000").await;
    // A folded chip opens its app's jobs: the ten tools of that model and template.
    let href = js(&b, "const a = document.querySelector(\"#grid td[data-model='model-3'][data-template='template-42'] a.chip\"); return a.getAttribute('href');").await;
    b.client
        .goto(&format!("{}/{}", cluster.url, href.as_str().unwrap()))
        .await
        .unwrap();
    present(&b, "#jobs tbody tr").await;
    let keys = js(&b, "return [...document.querySelectorAll('#jobs tbody tr td:nth-child(2)')].map(e => e.textContent);").await;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(
        keys.iter().all(|k| {
            let k = k.as_str().unwrap();
            k.contains("model=model-3") && k.contains("template=template-42")
        }),
        "{keys:?}"
    );
    b.client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_the_dashboard_logs_in_with_a_token_and_keeps_only_a_session() {
    let cluster = Cluster::new();
    let _server = cluster.server_with("1s", &["--auth"]).await;
    let token = create_token(&cluster, "submit", "browser");
    let b = browser().await;
    b.client.goto(&format!("{}/", cluster.url)).await.unwrap();
    present(&b, "[data-login=form]").await;
    screenshot(&b, "login").await;
    // A wrong token is refused on the page.
    b.client
        .execute(
            "document.querySelector('[data-login=token]').value = 'assay_wrong';",
            vec![],
        )
        .await
        .unwrap();
    click(&b, "[data-login=form] button").await;
    present(&b, "[data-login=form] .error").await;
    b.client
        .execute(
            "document.querySelector('[data-login=token]').value = arguments[0];",
            vec![json!(token)],
        )
        .await
        .unwrap();
    click(&b, "[data-login=form] button").await;
    present(&b, "#new-pipeline").await;
    // The page holds a session, never the token: the cookie is HttpOnly.
    let cookies = js(&b, "return document.cookie;").await;
    assert!(!cookies.as_str().unwrap().contains("assay_session"));
    let page_text = js(&b, "return document.documentElement.outerHTML;").await;
    assert!(!page_text.as_str().unwrap().contains(&token));
    // A change made with the cookie alone (what a forged form would send) is refused;
    // the dashboard's own requests carry the CSRF header.
    let without = js(
        &b,
        "return fetch('/api/v1/pipelines', {method: 'POST', headers: {'content-type': 'application/json'}, body: '{}'}).then(r => r.status);",
    )
    .await;
    assert_eq!(without, json!(403));
    let with = js(
        &b,
        "return fetch('/api/v1/pipelines', {method: 'POST', headers: {'content-type': 'application/json', 'x-assay-csrf': '1'}, body: JSON.stringify({spec: '[pipeline]\\nname = \"x\"\\n[[stage]]\\nname = \"a\"\\nkind = \"noop\"\\n'})}).then(r => r.status);",
    )
    .await;
    assert_eq!(with, json!(201), "{}", cluster.logs());
    // Logging out ends the session: the page asks for the token again.
    js(
        &b,
        "return fetch('/api/v1/session', {method: 'DELETE', headers: {'x-assay-csrf': '1'}}).then(r => r.status);",
    )
    .await;
    b.client.refresh().await.unwrap();
    present(&b, "[data-login=form]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_assay_run_prints_logs_one_browser_in_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("hold.toml");
    std::fs::write(
        &spec,
        "[pipeline]\nname = \"hold\"\n[[stage]]\nname = \"hold\"\nkind = \"sleep\"\n[stage.params]\nms = 120000\n",
    )
    .unwrap();
    let stderr = dir.path().join("run.stderr");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut run = Proc {
        child: Command::new(BIN)
            .arg("run")
            .arg(&spec)
            .args(["--plain", "--listen", &listen, "--data-dir"])
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
        name: "run".into(),
    };
    let printed = || std::fs::read_to_string(&stderr).unwrap_or_default();
    wait_for("the dashboard's link", Duration::from_secs(60), || async {
        printed().contains("?login=")
    })
    .await;
    let text = printed();
    let link = text
        .split_whitespace()
        .find(|w| w.contains("?login="))
        .unwrap()
        .to_string();
    let b = browser().await;
    b.client.goto(&link).await.unwrap();
    // Logged in, on the run's pipeline, and the code is gone from the address bar.
    present(&b, "#grid").await;
    let href = js(&b, "return location.href;").await;
    assert_eq!(
        href,
        json!(format!("http://{listen}/#/pipelines/1")),
        "{text}"
    );
    screenshot(&b, "run-login").await;
    // Without the session the link it made opens nothing again: the page says so.
    b.client.delete_all_cookies().await.unwrap();
    b.client.goto(&link).await.unwrap();
    present(&b, "[data-login=form]").await;
    let page = js(
        &b,
        "return document.querySelector('[data-login=form]').textContent;",
    )
    .await;
    assert!(page.as_str().unwrap().contains("used already"), "{page}");
    b.client.close().await.unwrap();
    run.sigterm();
    assert_eq!(run.wait_exit(Duration::from_secs(60)), Some(130));
}
