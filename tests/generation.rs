//! Generating apps against a local fake OpenAI-compatible server: steps, continuation of
//! cut-off answers, the strict re-ask, untrusted paths, the scaffold, and a generated app
//! that really starts and answers its health check.

mod fake_llm;

use assay::analysis::apps::{load_manifest, PortAllocator, RunningApp};
use assay::analysis::catalog;
use assay::generation::extract::Limits;
use assay::generation::generate::{generate_app, GenerationError, GenerationParams};
use assay::generation::provider::{chat, ProviderConfig};
use fake_llm::{served_model, FakeLlm, Scripted};
use std::path::PathBuf;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn params() -> GenerationParams {
    GenerationParams {
        model: "vendor/model-a".into(),
        temperature: 0.2,
        seed: Some(42),
        max_tokens: Some(8_000),
    }
}

fn provider(llm: &FakeLlm) -> ProviderConfig {
    ProviderConfig {
        name: "fake".into(),
        base_url: llm.base_url.clone(),
        api_key_env: Some("ASSAY_TEST_NO_KEY".into()),
        timeout: Duration::from_secs(5),
    }
}

fn sample_backend() -> String {
    std::fs::read_to_string(repo().join("examples/apps/todo-api-sqli/backend/app.py")).unwrap()
}

async fn generate(
    llm: &FakeLlm,
    template: &str,
    dir: &std::path::Path,
) -> Result<assay::generation::generate::GenerationRecord, GenerationError> {
    let catalog = catalog::load_dir(&catalog::builtin_dir()).unwrap();
    let template = catalog.get(template).unwrap().clone();
    let config = provider(llm);
    generate_app(&template, &params(), dir, &Limits::default(), |req| {
        let config = config.clone();
        async move { chat(&config, &req).await }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_app_is_scaffolded_recorded_and_really_runs() {
    let answer = format!(
        "Here is the backend.\n\n```python backend/app.py\n{}```\n",
        sample_backend()
    );
    let llm = FakeLlm::start(vec![Scripted::Text(answer)]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let record = generate(&llm, "todo-api", &app).await.unwrap();
    assert_eq!(record.model_resolved, served_model("vendor/model-a"));
    assert_eq!(record.calls, 1);
    assert!(record.prompt_hashes.contains_key("backend"));
    assert_eq!(
        record.files,
        vec![
            "assay-app.toml",
            "backend/app.py",
            "backend/requirements.txt"
        ]
    );
    let manifest = load_manifest(&app).unwrap();
    assert_eq!(manifest.template.as_deref(), Some("todo-api"));
    let sent = &llm.requests()[0];
    assert_eq!(sent["seed"], 42);
    let prompt = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("GET /api/todos") && prompt.contains("backend-1"),
        "the prompt lists endpoints and requirement ids: {prompt}"
    );
    // The generated app starts and is healthy (Flask from the tools' virtualenv).
    if std::env::var_os("ASSAY_APP_PATH").is_none() {
        unsafe { std::env::set_var("ASSAY_APP_PATH", repo().join(".tools/venv/bin")) };
    }
    // The sandbox's system-call filter is installed by the `assay` binary.
    unsafe { std::env::set_var("ASSAY_SUPERVISOR", env!("CARGO_BIN_EXE_assay")) };
    let ports = PortAllocator::new(dir.path().join("ports"), 28_600, 28_650);
    let running = RunningApp::start(&app, &ports, &dir.path().join("app.log"))
        .await
        .unwrap();
    assert!(reqwest::get(format!("{}/health", running.base_url))
        .await
        .unwrap()
        .status()
        .is_success());
}

/// The model's name in `assay-app.toml` is what the provider says it served: a name that
/// closes its string and opens a `[run]` table writes no recipe.
#[tokio::test]
async fn a_model_name_from_the_provider_cannot_write_the_run_recipe() {
    let answer = format!("```python backend/app.py\n{}```\n", sample_backend());
    let llm = FakeLlm::start(vec![Scripted::Text(answer)]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let catalog = catalog::load_dir(&catalog::builtin_dir()).unwrap();
    let template = catalog.get("todo-api").unwrap().clone();
    let config = provider(&llm);
    let hostile = "m\\\"\n[run]\ncommand = [\"sh\", \"-c\", \"id\"]\n#";
    let params = GenerationParams {
        model: hostile.into(),
        ..params()
    };
    generate_app(&template, &params, &app, &Limits::default(), |req| {
        let config = config.clone();
        async move { chat(&config, &req).await }
    })
    .await
    .unwrap();
    let manifest = load_manifest(&app).unwrap();
    assert_eq!(
        manifest.model.as_deref(),
        Some(served_model(hostile).as_str())
    );
    assert_eq!(
        manifest.run.unwrap().command,
        vec!["python3", "backend/app.py"]
    );
}

#[tokio::test]
async fn cut_off_answers_are_continued() {
    let code = "from flask import Flask\napp = Flask(__name__)\n\n@app.get('/health')\ndef health():\n    return {'status': 'ok'}\n";
    let (first, second) = code.split_at(40);
    let llm = FakeLlm::start(vec![
        Scripted::Finish(
            format!("```python backend/app.py\n{first}"),
            "length".into(),
        ),
        Scripted::Text(format!("{second}```\n")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let record = generate(&llm, "todo-api", dir.path()).await.unwrap();
    assert_eq!(record.calls, 2);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("backend/app.py")).unwrap(),
        code
    );
    let continuation = &llm.requests()[1]["messages"];
    let last = continuation.as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last.contains("cut off"), "{last}");
}

#[tokio::test]
async fn an_answer_without_code_is_asked_again_once_strictly() {
    let llm = FakeLlm::start(vec![
        Scripted::text("Sure! I would build it with Flask and SQLite."),
        Scripted::text("```python backend/app.py\nprint('ok')\n```"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let record = generate(&llm, "todo-api", dir.path()).await.unwrap();
    assert_eq!(record.calls, 2);
    let strict = llm.requests()[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(strict.contains("no code block"), "{strict}");

    let llm = FakeLlm::start(vec![Scripted::text("No."), Scripted::text("Still no.")]).await;
    let err = generate(&llm, "todo-api", tempfile::tempdir().unwrap().path())
        .await
        .unwrap_err();
    assert!(matches!(err, GenerationError::NoCode { .. }), "{err}");
    assert_eq!(
        err.to_failure().class,
        assay::domain::FailureClass::Permanent
    );
}

#[tokio::test]
async fn paths_that_try_to_escape_fail_permanently_and_write_nothing() {
    let llm = FakeLlm::start(vec![Scripted::text(
        "```python ../../outside.py\nimport os\n```",
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let err = generate(&llm, "todo-api", &app).await.unwrap_err();
    assert!(matches!(err, GenerationError::Untrusted { .. }), "{err}");
    assert_eq!(
        err.to_failure().class,
        assay::domain::FailureClass::Permanent
    );
    assert!(
        !dir.path().join("outside.py").exists() && !app.exists(),
        "nothing was written"
    );
}

#[tokio::test]
async fn apps_with_a_frontend_are_generated_in_two_steps_with_the_api_as_context() {
    let llm = FakeLlm::start(vec![
        Scripted::text("```python backend/app.py\nprint('api')\n```"),
        Scripted::text("```html frontend/index.html\n<p>hi</p>\n```\n```javascript frontend/app.js\nfetch('/api/cities')\n```"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let record = generate(&llm, "weather-dashboard", dir.path())
        .await
        .unwrap();
    assert_eq!(record.calls, 2);
    assert!(record.files.contains(&"frontend/app.js".to_string()));
    let second = &llm.requests()[1]["messages"];
    let msgs = second.as_array().unwrap();
    assert!(
        msgs.iter()
            .any(|m| m["role"] == "assistant"
                && m["content"].as_str().unwrap().contains("print('api')")),
        "the backend is context for the frontend"
    );
    assert!(msgs.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .contains("GET /api/cities"));
}
