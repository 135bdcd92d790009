//! Generation on the engine, end to end: `assay run` (embedded server + local workers)
//! generates apps from two models × three templates against a local fake
//! OpenAI-compatible server that scripts faults (429 with Retry-After, 500, a hang, a
//! cut-off answer, an answer without code), streams each app into its analyses, and
//! accounts for every call. Then: a re-run pays nothing; quota exhaustion, untrusted paths
//! and a pipeline budget stop cleanly with their reasons; the API key is never stored.

mod common;
mod fake_llm;

use assay::domain::{AttemptOutcome, JobState};
use assay::store::{Job, JobFilter, Store};
use common::{wait_for, Cluster, BIN};
use fake_llm::{served_model, FakeLlm, Responder, Scripted};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MODELS: [&str; 2] = ["vendor/model-a", "vendor/model-b"];
const TEMPLATES: [&str; 3] = ["todo-api", "url-shortener", "weather-dashboard"];
const SECRET: &str = "sk-assay-test-7f3e9c1d-never-store-me";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A runnable app that also tries to leak the provider's key (it runs as untrusted code
/// on the worker, whose environment holds the key): the key must reach no file.
fn backend_code() -> String {
    let app =
        std::fs::read_to_string(repo().join("examples/apps/todo-api-sqli/backend/app.py")).unwrap();
    format!(
        "import os, sys\nprint('KEY=' + os.environ.get('ASSAY_E2E_KEY', 'none'), file=sys.stderr, flush=True)\n{app}"
    )
}

fn frontend_answer() -> String {
    "```html frontend/index.html\n<!doctype html><html><head><link rel=\"stylesheet\" href=\"style.css\"></head>\
     <body><select id=\"city\"></select><div id=\"out\"></div><script src=\"app.js\"></script></body></html>\n```\n\
     ```javascript frontend/app.js\nfetch('/api/weather?city=Oslo').then(r => r.json()).then(w => {\n  document.getElementById('out').textContent = JSON.stringify(w);\n});\n```\n\
     ```css frontend/style.css\nbody { font-family: sans-serif; }\n```\n"
        .to_string()
}

/// Which step a request is: the last user message tells.
fn step_of(request: &Value) -> &'static str {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    if last.contains("was cut off") {
        "continue"
    } else if last.contains("contained no code block") {
        "strict"
    } else if last.starts_with("Now write the frontend") {
        "frontend"
    } else {
        "backend"
    }
}

/// The template a request is about, by its title in the first user message.
fn template_of(request: &Value, titles: &HashMap<String, String>) -> String {
    let first_user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    titles
        .iter()
        .find(|(title, _)| first_user.contains(&format!("# {title}\n")))
        .map(|(_, name)| name.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// Scripted answers by (model, template, step), served before the normal ones.
type Faults = Arc<Mutex<HashMap<(String, String, String), VecDeque<Scripted>>>>;

/// Faults for one model, template and step.
fn faults(model: &str, template: &str, step: &str, entries: Vec<Scripted>) -> Faults {
    let f: Faults = Arc::default();
    f.lock()
        .unwrap()
        .insert((model.into(), template.into(), step.into()), entries.into());
    f
}

/// A fake that answers every model and template with a runnable app, after the faults
/// scripted for that model and template.
fn responder(faults: Faults) -> Responder {
    let catalog = assay::analysis::catalog::builtin();
    let titles: HashMap<String, String> = catalog
        .iter()
        .map(|t| (t.title.clone(), t.name.clone()))
        .collect();
    let code = backend_code();
    let second_half = code[code.len() / 2..].to_string();
    Arc::new(move |request: &Value| {
        let model = request["model"].as_str().unwrap_or_default().to_string();
        let template = template_of(request, &titles);
        let step = step_of(request);
        if let Some(fault) = faults
            .lock()
            .unwrap()
            .get_mut(&(model.clone(), template.clone(), step.to_string()))
            .and_then(|q| q.pop_front())
        {
            return fault;
        }
        match step {
            "frontend" => Scripted::Text(frontend_answer()),
            "continue" => Scripted::Text(format!("{second_half}```\n")),
            _ => Scripted::Text(format!(
                "Here is the backend.\n\n```python backend/app.py\n{code}```\n"
            )),
        }
    })
}

fn truncated_backend() -> Scripted {
    let code = backend_code();
    let (first_half, _) = code.split_at(code.len() / 2);
    Scripted::Finish(
        format!("```python backend/app.py\n{first_half}"),
        "length".into(),
    )
}

fn matrix(models: &[&str], templates: &[&str]) -> String {
    let quote = |xs: &[&str]| {
        xs.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{ model = [{}], template = [{}] }}",
        quote(models),
        quote(templates)
    )
}

/// The providers file that names the fake: the only place its URL and key variable are
/// written (a spec picks it by name).
fn providers_file(dir: &Path, llm: &FakeLlm) -> PathBuf {
    let file = dir.join("providers.toml");
    std::fs::write(
        &file,
        format!(
            "[providers.fake]\nbase_url = \"{}\"\napi_key_env = \"ASSAY_E2E_KEY\"\ntimeout = \"3s\"\n",
            llm.base_url
        ),
    )
    .unwrap();
    file
}

/// A server and a worker flag naming the fake's providers file.
fn providers_args(cluster: &Cluster, llm: &FakeLlm) -> Vec<String> {
    let file = providers_file(cluster.dir.path(), llm);
    vec!["--providers".into(), file.to_str().unwrap().into()]
}

fn generate_stage(models: &[&str], templates: &[&str], extra: &str) -> String {
    format!(
        r#"
[[stage]]
name = "generate"
kind = "generate"
matrix = {matrix}
timeout = "2m"
max_attempts = 2
{extra}
[stage.params]
model = "{{{{ model }}}}"
template = "{{{{ template }}}}"
seed = 7
temperature = 0.2
provider = {{ name = "fake", reports_cost = true }}
"#,
        matrix = matrix(models, templates),
    )
}

fn analysis_stages(models: &[&str], templates: &[&str]) -> String {
    let m = matrix(models, templates);
    format!(
        r#"
[[stage]]
name = "static"
kind = "static"
after = ["generate"]
matrix = {m}
timeout = "3m"
[stage.params]
app_from = "generate"
tools = ["ruff", "bandit"]

[[stage]]
name = "dynamic"
kind = "dynamic"
after = ["generate"]
matrix = {m}
timeout = "3m"
max_attempts = 2
[stage.params]
app_from = "generate"
"#
    )
}

/// `args` followed by `more`, as a process's arguments.
fn with<'a>(args: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(more.iter().map(String::as_str))
        .collect()
}

struct RunOutput {
    code: i32,
    output: String,
}

/// `assay run` of `spec`, with the providers file [`workspace`] wrote next to it.
async fn assay_run(spec: &Path, data: &Path, extra: &[&str]) -> RunOutput {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .arg(spec)
        .args(["--plain", "--workers", "4", "--data-dir"])
        .arg(data)
        .arg("--providers")
        .arg(spec.with_file_name("providers.toml"))
        .args(extra)
        .env("ASSAY_E2E_KEY", SECRET)
        .env("ASSAY_CACHE_DIR", data.join("analysis-cache"))
        .env("RUST_LOG", "debug")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("assay run finished within 10 minutes")
        .unwrap();
    RunOutput {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A temporary folder holding the spec `text` and a providers file naming `llm`: (the
/// folder, its data dir, the spec file).
fn workspace(text: String, llm: &FakeLlm) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, text).unwrap();
    providers_file(dir.path(), llm);
    let data = dir.path().join("data");
    (dir, data, spec)
}

async fn open(data: &Path) -> Arc<dyn Store> {
    assay::server::open_store(&data.join("server"))
        .await
        .unwrap()
}

async fn jobs(store: &Arc<dyn Store>, pipeline: i64, stage: &str) -> Vec<Job> {
    store
        .jobs(&JobFilter {
            pipeline_id: Some(pipeline),
            stage: Some(stage.into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

fn item(job: &Job, field: &str) -> String {
    job.item[field].as_str().unwrap().to_string()
}

/// Every file under `dir` with this name.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_by_three_templates_generate_once_stream_into_analyses_and_add_up() {
    let faults: Faults = Arc::default();
    {
        let mut f = faults.lock().unwrap();
        let mut script = |model: &str, template: &str, entries: Vec<Scripted>| {
            f.insert(
                (model.into(), template.into(), "backend".into()),
                entries.into(),
            );
        };
        script(MODELS[0], "todo-api", vec![Scripted::Status(429, Some(1))]);
        script(
            MODELS[0],
            "url-shortener",
            vec![Scripted::Status(500, None)],
        );
        script(MODELS[0], "weather-dashboard", vec![Scripted::Hang]);
        script(MODELS[1], "todo-api", vec![truncated_backend()]);
        script(
            MODELS[1],
            "url-shortener",
            vec![Scripted::text(
                "Sure! I would build it with Flask and SQLite.",
            )],
        );
        // The slowest app: the others' analyses must not wait for it.
        script(
            MODELS[1],
            "weather-dashboard",
            vec![Scripted::Delay(
                Duration::from_millis(1500),
                Box::new(Scripted::Text(format!(
                    "```python backend/app.py\n{}```\n",
                    backend_code()
                ))),
            )],
        );
    }
    let llm = FakeLlm::start_with(responder(faults.clone())).await;
    let (dir, data, spec) = workspace(
        format!(
            "[pipeline]\nname = \"generate-e2e\"\ndeadline = \"9m\"\n{}{}",
            generate_stage(&MODELS, &TEMPLATES, ""),
            analysis_stages(&MODELS, &TEMPLATES)
        ),
        &llm,
    );

    let run = assay_run(&spec, &data, &[]).await;
    assert_eq!(run.code, 0, "the pipeline completes:\n{}", run.output);
    assert!(
        faults.lock().unwrap().values().all(|q| q.is_empty()),
        "every scripted fault was served"
    );
    let store = open(&data).await;
    let pipeline = store.pipelines(10).await.unwrap()[0].clone();

    // Every app generated once, by the model asked for, reproducibly recorded.
    let generated = jobs(&store, pipeline.id, "generate").await;
    assert_eq!(generated.len(), 6);
    for job in &generated {
        assert_eq!(
            job.state,
            JobState::Completed,
            "{}: {:?}",
            job.key,
            job.last_error
        );
        let completed: Vec<_> = store
            .attempts(job.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.outcome == AttemptOutcome::Completed)
            .collect();
        assert_eq!(completed.len(), 1, "{} completed once", job.key);
        let result = job.result.as_ref().unwrap();
        let model = item(job, "model");
        assert_eq!(result["model_requested"], model.as_str());
        assert_eq!(result["model_resolved"], served_model(&model).as_str());
        assert_eq!(result["template"], item(job, "template").as_str());
        assert_eq!(result["params"]["seed"], 7);
        assert!(result["prompt_hashes"]["backend"].is_string());
        let names: Vec<String> = store
            .artifacts(job.id)
            .await
            .unwrap()
            .iter()
            .map(|a| a.name.clone())
            .collect();
        for expected in ["app.tar", "exchanges.json", "generation.json"] {
            assert!(
                names.contains(&expected.to_string()),
                "{}: {names:?}",
                job.key
            );
        }
    }

    // Every app analyzed once by each analyzer, each analysis fed by its own app.
    let mut first_analysis_start = i64::MAX;
    for stage in ["static", "dynamic"] {
        let analyses = jobs(&store, pipeline.id, stage).await;
        assert_eq!(analyses.len(), 6, "{stage}");
        for job in &analyses {
            assert_eq!(
                job.state,
                JobState::Completed,
                "{}: {:?}",
                job.key,
                job.last_error
            );
            let completed = store
                .attempts(job.id)
                .await
                .unwrap()
                .iter()
                .filter(|a| a.outcome == AttemptOutcome::Completed)
                .count();
            assert_eq!(completed, 1, "{} analyzed once", job.key);
            let deps = store.dependencies(job.id, 10).await.unwrap();
            assert_eq!(deps.len(), 1, "{}", job.key);
            let upstream = generated.iter().find(|g| g.id == deps[0].job_id).unwrap();
            assert_eq!(upstream.item, job.item, "{} analyzes its own app", job.key);
            first_analysis_start = first_analysis_start.min(job.started_at.unwrap());
        }
    }
    let static_results = jobs(&store, pipeline.id, "static").await;
    let findings: usize = static_results
        .iter()
        .map(|j| {
            j.result.as_ref().unwrap()["findings"]
                .as_array()
                .map_or(0, |f| f.len())
        })
        .sum();
    assert!(
        findings > 0,
        "the generated (vulnerable) apps have findings: {:?}",
        static_results[0].result
    );
    let last_generation_end = generated
        .iter()
        .map(|j| j.finished_at.unwrap())
        .max()
        .unwrap();
    assert!(
        first_analysis_start < last_generation_end,
        "analyses started as soon as their app was ready, before the last app was generated"
    );

    // Cost and cache figures add up: what the provider billed is what was recorded.
    let billed = llm.billed.lock().unwrap().clone();
    let usage = store.pipeline_usage(pipeline.id).await.unwrap();
    // Backend once each, the frontend for weather-dashboard, plus one continuation and
    // one strict re-ask.
    assert_eq!(billed.len(), 6 + 2 + 1 + 1, "{billed:?}");
    assert_eq!(usage.total.paid_calls, billed.len() as i64);
    assert_eq!(usage.total.cached_calls, 0);
    assert_eq!(usage.total.failed_calls, 3, "the 429, the 500 and the hang");
    let billed_cost: f64 = billed.iter().map(|b| b.cost).sum();
    assert!((usage.total.cost_usd - billed_cost).abs() < 1e-9);
    let billed_tokens: u64 = billed
        .iter()
        .map(|b| b.prompt_tokens + b.completion_tokens)
        .sum();
    assert_eq!(usage.total.total_tokens(), billed_tokens as i64);
    for model in MODELS {
        let m = usage.by_model.iter().find(|m| m.model == model).unwrap();
        let cost: f64 = billed
            .iter()
            .filter(|b| b.model == model)
            .map(|b| b.cost)
            .sum();
        assert!((m.totals.cost_usd - cost).abs() < 1e-9, "{model}");
    }
    let per_job: f64 = usage.by_job.iter().map(|j| j.totals.cost_usd).sum();
    assert!((per_job - usage.total.cost_usd).abs() < 1e-9);
    for job in &generated {
        let recorded = &job.result.as_ref().unwrap()["usage"];
        let j = usage.by_job.iter().find(|u| u.job_id == job.id).unwrap();
        assert_eq!(
            recorded["prompt_tokens"].as_i64().unwrap()
                + recorded["completion_tokens"].as_i64().unwrap(),
            j.totals.total_tokens(),
            "{}: the job's own record agrees with the accounting",
            job.key
        );
    }

    // The key was sent to the provider and written nowhere.
    let chat_auth: Vec<_> = llm
        .recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.authorization.clone())
        .collect();
    assert!(chat_auth
        .iter()
        .all(|a| a.as_deref() == Some(&format!("Bearer {SECRET}")[..])));
    assert_eq!(
        files_containing(dir.path(), SECRET.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert!(!run.output.contains(SECRET), "the key is not in the output");

    // A fresh run of the same spec pays for nothing and makes the same apps.
    let requests_before = llm.requests().len();
    let again = assay_run(&spec, &data, &["--fresh"]).await;
    assert_eq!(again.code, 0, "{}", again.output);
    assert_eq!(
        llm.requests().len(),
        requests_before,
        "no request reached the provider"
    );
    let pipelines = store.pipelines(10).await.unwrap();
    let second = pipelines.iter().find(|p| p.id != pipeline.id).unwrap();
    let usage2 = store.pipeline_usage(second.id).await.unwrap();
    assert_eq!(usage2.total.paid_calls, 0);
    assert_eq!(usage2.total.cost_usd, 0.0);
    assert_eq!(usage2.total.cached_calls, usage.total.paid_calls);
    assert!((usage2.total.saved_usd - usage.total.cost_usd).abs() < 1e-9);
    let regenerated = jobs(&store, second.id, "generate").await;
    for job in &regenerated {
        let first = generated.iter().find(|g| g.key == job.key).unwrap();
        let tar = |arts: Vec<assay::store::Artifact>| {
            arts.into_iter()
                .find(|a| a.name == "app.tar")
                .unwrap()
                .sha256
        };
        assert_eq!(
            tar(store.artifacts(job.id).await.unwrap()),
            tar(store.artifacts(first.id).await.unwrap()),
            "{}: the same app, byte for byte",
            job.key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exhaustion_stops_the_model_and_escaping_paths_fail_permanently() {
    let faults: Faults = Arc::default();
    let broke = "vendor/broke";
    let evil = "vendor/evil";
    {
        let mut f = faults.lock().unwrap();
        // Should the model be asked more than once, it would keep answering 402.
        f.insert(
            (broke.into(), "todo-api".into(), "backend".into()),
            vec![Scripted::Status(402, None); 3].into(),
        );
        f.insert(
            (evil.into(), "todo-api".into(), "backend".into()),
            vec![Scripted::text(
                "```python ../../outside-the-app.py\nprint('escaped')\n```\n```python backend/app.py\nprint('x')\n```",
            )]
            .into(),
        );
    }
    let llm = FakeLlm::start_with(responder(faults)).await;
    // One generation at a time, so that the first 402 comes before the other calls.
    // The other model shares the stage: a breaker that opens after two failures in a row
    // must not be opened by the broke model's (external) failures.
    let stages = generate_stage(
        &[broke, MODELS[0]],
        &TEMPLATES,
        "concurrency = 1\nbreaker = 2",
    ) + &generate_stage(&[evil], &["todo-api"], "")
        .replace("name = \"generate\"", "name = \"generate-evil\"");
    let (dir, data, spec) = workspace(
        format!("[pipeline]\nname = \"faults\"\ndeadline = \"5m\"\n{stages}"),
        &llm,
    );
    let run = assay_run(&spec, &data, &[]).await;
    assert_ne!(run.code, 0, "{}", run.output);
    let store = open(&data).await;
    let pipeline = store.pipelines(1).await.unwrap()[0].clone();

    let (broke_jobs, good_jobs): (Vec<Job>, Vec<Job>) = jobs(&store, pipeline.id, "generate")
        .await
        .into_iter()
        .partition(|j| item(j, "model") == broke);
    assert_eq!(broke_jobs.len(), 3);
    for job in &good_jobs {
        assert_eq!(
            job.state,
            JobState::Completed,
            "{}: {:?}",
            job.key,
            job.last_error
        );
    }
    assert!(!store.stages(pipeline.id).await.unwrap()[0].breaker_open);
    for job in &broke_jobs {
        assert_eq!(job.state, JobState::Dead, "{}", job.key);
        let err = job.last_error.as_ref().unwrap();
        assert_eq!(err.code, "quota_exhausted", "{}: {err:?}", job.key);
        assert!(
            err.message.contains("scripted status 402"),
            "the provider's reason: {err:?}"
        );
        assert_eq!(job.attempts, 1, "{}: no retries", job.key);
    }
    let asked = llm
        .requests()
        .iter()
        .filter(|r| r["model"] == broke)
        .count();
    assert_eq!(asked, 1, "the stopped model was not asked again");

    let evil_job = &jobs(&store, pipeline.id, "generate-evil").await[0];
    assert_eq!(evil_job.state, JobState::Dead);
    let err = evil_job.last_error.as_ref().unwrap();
    assert_eq!(err.code, "untrusted_output", "{err:?}");
    assert!(err.message.contains("outside-the-app.py"), "{err:?}");
    assert_eq!(evil_job.attempts, 1, "a permanent failure is not retried");
    assert_eq!(
        files_named(dir.path(), "outside-the-app.py"),
        Vec::<PathBuf>::new(),
        "nothing was written from the escaping answer"
    );
    let names: Vec<String> = store
        .artifacts(evil_job.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.name.clone())
        .collect();
    assert!(
        names.contains(&"exchanges.json".to_string()),
        "the raw answer is kept: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_budget_stops_new_calls_with_the_reason() {
    let llm = FakeLlm::start_with(responder(Arc::default())).await;
    let (_dir, data, spec) = workspace(
        format!(
            "[pipeline]\nname = \"budget\"\nbudget = {{ usd = 0.000001 }}\n{}",
            generate_stage(&[MODELS[0]], &TEMPLATES, "concurrency = 1")
        ),
        &llm,
    );
    let run = assay_run(&spec, &data, &[]).await;
    assert_ne!(run.code, 0, "{}", run.output);
    let store = open(&data).await;
    let pipeline = store.pipelines(1).await.unwrap()[0].clone();
    let generated = jobs(&store, pipeline.id, "generate").await;
    let completed = generated
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .count();
    assert_eq!(
        completed, 1,
        "the first app was made before the budget was reached"
    );
    for job in generated.iter().filter(|j| j.state != JobState::Completed) {
        assert_eq!(job.state, JobState::Dead, "{}", job.key);
        let err = job.last_error.as_ref().unwrap();
        assert_eq!(err.code, "budget_exhausted", "{err:?}");
        assert!(err.message.contains("budget of $0.0000"), "{err:?}");
    }
    assert_eq!(
        llm.billed.lock().unwrap().len(),
        1,
        "no call after the budget was reached"
    );
    let usage = store.pipeline_usage(pipeline.id).await.unwrap();
    assert_eq!(usage.total.paid_calls, 1);
    assert!(usage.budget.unwrap().reached(&usage.total).is_some());
}

fn one_generation(model: &str, template: &str) -> String {
    format!(
        r#"[pipeline]
name = "one"
[[stage]]
name = "generate"
kind = "generate"
items = [{{ model = "{model}", template = "{template}" }}]
timeout = "2m"
max_attempts = 3
[stage.params]
model = "{{{{ model }}}}"
template = "{{{{ template }}}}"
provider = {{ name = "fake", timeout = "60s" }}
concurrency = 1     # one call at a time to the model: a dead attempt's slot must come back
max_concurrency = 1
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_model_shows_its_back_off_in_progress_and_explain() {
    let llm = FakeLlm::start_with(responder(faults(
        MODELS[0],
        "todo-api",
        "backend",
        vec![Scripted::Status(429, Some(600))],
    )))
    .await;
    let cluster = Cluster::new();
    let providers = providers_args(&cluster, &llm);
    let _server = cluster
        .server_with("500ms", &with(&["--allow-kinds", "all"], &providers))
        .await;
    // One slot for other work, one for generation: a model backing off must not hold
    // the slot other jobs need.
    let _worker = cluster.worker("w1", 1, &with(&["--generate-concurrency", "1"], &providers));
    let spec = one_generation(MODELS[0], "todo-api")
        + "[[stage]]\nname = \"other\"\nkind = \"sleep\"\n[stage.params]\nms = 10\n";
    let pipeline = cluster.submit(&spec).await;
    let job = cluster.jobs(pipeline).await[0].id;
    wait_for("the back-off to show", Duration::from_secs(60), || async {
        let Ok(e) = cluster.client.explain(job).await else {
            return false;
        };
        let limiter_says = e
            .provider_limits
            .first()
            .is_some_and(|l| l.status.starts_with("backing off until"));
        let progress_says = e
            .job
            .progress
            .as_ref()
            .and_then(|p| p.message.as_deref())
            .is_some_and(|m| m.contains("backing off until"));
        limiter_says && progress_says
    })
    .await;
    wait_for(
        "the other job to finish while generation waits",
        Duration::from_secs(30),
        || async {
            let jobs = cluster.jobs(pipeline).await;
            jobs.iter()
                .any(|j| j.stage == "other" && j.state == JobState::Completed)
                && jobs
                    .iter()
                    .any(|j| j.stage == "generate" && j.state == JobState::Running)
        },
    )
    .await;
    let out = std::process::Command::new(BIN)
        .args(["explain", &job.to_string(), "--server", &cluster.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("model: {} at fake: backing off until", MODELS[0])),
        "{text}"
    );
    assert!(text.contains("1 failed"), "the 429 is accounted: {text}");
    // Waiting is not stuck: cancelling the pipeline ends the job at once.
    cluster.client.cancel_pipeline(pipeline).await.unwrap();
    let detail = cluster
        .wait_finished(pipeline, Duration::from_secs(30))
        .await;
    assert_eq!(
        detail.pipeline.state,
        assay::domain::PipelineState::Cancelled
    );
    assert_eq!(
        llm.requests().len(),
        1,
        "no call was made while backing off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_generation_does_not_pay_twice() {
    let faults: Faults = Arc::default();
    // The frontend call of the first attempt never returns: the worker dies during it.
    faults.lock().unwrap().insert(
        (
            MODELS[0].into(),
            "weather-dashboard".into(),
            "frontend".into(),
        ),
        vec![Scripted::Hang].into(),
    );
    let llm = FakeLlm::start_with(responder(faults)).await;
    let cluster = Cluster::new();
    let providers = providers_args(&cluster, &llm);
    let _server = cluster
        .server_with("300ms", &with(&["--allow-kinds", "all"], &providers))
        .await;
    let mut first = cluster.worker("w1", 2, &with(&[], &providers));
    let pipeline = cluster
        .submit(&one_generation(MODELS[0], "weather-dashboard"))
        .await;
    wait_for("the frontend call", Duration::from_secs(60), || async {
        llm.requests().iter().any(|r| step_of(r) == "frontend")
    })
    .await;
    first.kill9();
    let _second = cluster.worker("w2", 2, &with(&[], &providers));
    let detail = cluster
        .wait_finished(pipeline, Duration::from_secs(90))
        .await;
    assert_eq!(
        detail.pipeline.state,
        assay::domain::PipelineState::Completed,
        "{}",
        cluster.logs()
    );
    let job = &cluster.jobs(pipeline).await[0];
    assert_eq!(
        job.attempts, 2,
        "the killed attempt and the one that finished"
    );
    let steps: Vec<&str> = llm.requests().iter().map(step_of).collect::<Vec<_>>();
    assert_eq!(
        steps,
        vec!["backend", "frontend", "frontend"],
        "the backend answer was paid once and reused"
    );
    let usage = cluster.client.usage(pipeline).await.unwrap().usage;
    assert_eq!(usage.total.paid_calls, 2, "{usage:?}");
    assert_eq!(usage.total.cached_calls, 1, "{usage:?}");
    let billed: f64 = llm.billed.lock().unwrap().iter().map(|b| b.cost).sum();
    assert!((usage.total.cost_usd - billed).abs() < 1e-9);
}

/// Figures, not a check: how fast generation flows through the engine when the provider
/// answers at once (the overhead of the cache lookup, permit, call record and app packing
/// per call), and how fast a re-run is when every answer comes from the cache.
/// `cargo test --release --test generate_pipeline bench_generation -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_generation() {
    let llm = FakeLlm::start_with(responder(Arc::default())).await;
    let models = ["m/one", "m/two", "m/three", "m/four", "m/five"];
    let templates: Vec<String> = assay::analysis::catalog::builtin()
        .names()
        .map(str::to_string)
        .collect();
    let templates: Vec<&str> = templates.iter().map(String::as_str).collect();
    let (_dir, data, spec) = workspace(
        format!(
            "[pipeline]\nname = \"bench\"\n{}",
            generate_stage(&models, &templates, "")
        ),
        &llm,
    );
    for (label, extra) in [
        ("first run", &[][..]),
        ("re-run (all cached)", &["--fresh"][..]),
    ] {
        let before = llm.requests().len();
        let start = std::time::Instant::now();
        let run = assay_run(&spec, &data, extra).await;
        let took = start.elapsed().as_secs_f64();
        assert_eq!(run.code, 0, "{}", run.output);
        let store = open(&data).await;
        let pipeline = store.pipelines(1).await.unwrap()[0].clone();
        let usage = store.pipeline_usage(pipeline.id).await.unwrap();
        println!(
            "{label}: {} apps, {} calls ({} paid, {} cached, {} provider requests) in {took:.2} s: {:.1} apps/s, {:.1} calls/s",
            models.len() * templates.len(),
            usage.total.calls,
            usage.total.paid_calls,
            usage.total.cached_calls,
            llm.requests().len() - before,
            (models.len() * templates.len()) as f64 / took,
            usage.total.calls as f64 / took,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_provider_does_not_count_against_the_attempt_timeout() {
    let llm = FakeLlm::start_with(responder(faults(
        MODELS[0],
        "todo-api",
        "backend",
        vec![Scripted::Status(429, Some(5))],
    )))
    .await;
    let cluster = Cluster::new();
    let providers = providers_args(&cluster, &llm);
    let _server = cluster
        .server_with("500ms", &with(&["--allow-kinds", "all"], &providers))
        .await;
    let _worker = cluster.worker("w1", 1, &with(&[], &providers));
    // A 3 s attempt timeout and one attempt only: the 5 s back-off must not use it up.
    let spec = one_generation(MODELS[0], "todo-api")
        .replace("timeout = \"2m\"", "timeout = \"3s\"")
        .replace("max_attempts = 3", "max_attempts = 1");
    let pipeline = cluster.submit(&spec).await;
    let detail = cluster
        .wait_finished(pipeline, Duration::from_secs(60))
        .await;
    let job = &cluster.jobs(pipeline).await[0];
    assert_eq!(
        detail.pipeline.state,
        assay::domain::PipelineState::Completed,
        "{:?}",
        job.last_error
    );
    assert_eq!(job.attempts, 1);
    assert_eq!(llm.requests().len(), 2, "the 429, then the answer");
}

/// A 200 answer without a message is retried, and what the provider billed for it is
/// accounted all the same: a failed call is not a free one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billed_answer_without_a_message_is_retried_and_still_accounted() {
    let empty = r#"{"model":"vendor/model-a-fake-snapshot","choices":[{"message":{"role":"assistant"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.25}}"#;
    let llm = FakeLlm::start_with(responder(faults(
        MODELS[0],
        "todo-api",
        "backend",
        vec![Scripted::Raw(200, empty.into())],
    )))
    .await;
    let (_dir, data, spec) = workspace(one_generation(MODELS[0], "todo-api"), &llm);
    let run = assay_run(&spec, &data, &[]).await;
    assert_eq!(run.code, 0, "{}", run.output);
    let store = open(&data).await;
    let pipeline = store.pipelines(1).await.unwrap()[0].clone();
    let usage = store.pipeline_usage(pipeline.id).await.unwrap();
    assert_eq!(usage.total.failed_calls, 1, "{usage:?}");
    assert_eq!(
        usage.total.paid_calls, 1,
        "the backend asked again: {usage:?}"
    );
    assert!(
        usage.total.cost_usd >= 0.25,
        "the empty answer's cost counts: {usage:?}"
    );
    assert!(usage.total.prompt_tokens >= 10 && usage.total.completion_tokens >= 5);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `assay analyze` of a tree: once the provider's key is set, generation joins in, for the
/// tree's templates that the catalog has, and each generated app is analyzed in the same
/// run as the tree's and compared with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_generates_apps_too_once_the_providers_key_is_set() {
    let llm = FakeLlm::start_with(responder(Arc::default())).await;
    let dir = tempfile::tempdir().unwrap();
    let providers = providers_file(dir.path(), &llm);
    let tree = dir.path().join("tree");
    let sample = repo().join("examples/apps/todo-api-sqli");
    copy_dir(&sample, &tree.join("old-model/todo-api"));
    copy_dir(&sample, &tree.join("old-model/kanban-board"));
    // Named by their paths, as a tree of someone else's apps is.
    for app in ["todo-api", "kanban-board"] {
        std::fs::remove_file(tree.join("old-model").join(app).join("assay-app.toml")).unwrap();
    }
    let data = dir.path().join("data");
    let analyze = |extra: &[&str], key: bool| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("analyze")
            .arg(&tree)
            .args(["--analyzers", "static", "--plain", "--provider", "fake"])
            .arg("--providers")
            .arg(&providers)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env("ASSAY_GENERATE_MODELS", "vendor/model-a")
            .env("ASSAY_CACHE_DIR", data.join("analysis-cache"))
            .env_remove("ASSAY_E2E_KEY");
        if key {
            cmd.env("ASSAY_E2E_KEY", SECRET);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No key: no generation, and it says how to have it.
    let (code, spec, log) = analyze(&["--print-spec"], false);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("generation: off (set ASSAY_E2E_KEY"), "{log}");
    assert!(!spec.contains("kind = \"generate\""), "{spec}");
    // Asked for by name, it needs no key to be planned.
    let (_, spec, _) = analyze(&["--print-spec", "--generate", "vendor/x,vendor/y"], false);
    let spec: toml::Table = toml::from_str(&spec).unwrap();
    let names: Vec<&str> = spec["stage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["generate", "static", "static-generated"]);

    let (code, stdout, log) = analyze(&[], true);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("generation: 1 apps (vendor/model-a × todo-api) by fake"),
        "{log}"
    );
    assert!(
        log.contains("not for kanban-board (not in the catalog"),
        "{log}"
    );
    let store = open(&data).await;
    let generated = jobs(&store, 1, "generate").await;
    assert_eq!(generated.len(), 1);
    assert_eq!(
        generated[0].state,
        JobState::Completed,
        "{:?}",
        generated[0].last_error
    );
    let analyzed = jobs(&store, 1, "static-generated").await;
    assert_eq!(analyzed.len(), 1);
    assert_eq!(
        analyzed[0].state,
        JobState::Completed,
        "{:?}",
        analyzed[0].last_error
    );
    assert_eq!(item(&analyzed[0], "model"), "vendor/model-a");
    let sqli = analyzed[0].result.as_ref().unwrap()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["cwe"] == 89);
    assert!(
        sqli,
        "the generated app (the SQL-injectable sample) is really analyzed"
    );
    assert_eq!(jobs(&store, 1, "static").await.len(), 2);
    // Compared with the tree's own model.
    assert!(stdout.contains("vendor/model-a") || log.contains("vendor/model-a"));
    assert!(stdout.contains("old-model") || log.contains("old-model"));
    // The key reached no file.
    assert!(files_containing(&data, SECRET.as_bytes()).is_empty());
}
