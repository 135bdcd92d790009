//! The provider client against a local fake OpenAI-compatible server: answers, failure
//! classification for scheduling, and the response cache.

mod fake_llm;

use assay::domain::FailureClass;
use assay::generation::limiter::CallOutcome;
use assay::generation::provider::*;
use fake_llm::{served_model, FakeLlm, Scripted};
use std::time::Duration;

fn config(llm: &FakeLlm) -> ProviderConfig {
    ProviderConfig {
        name: "fake".into(),
        base_url: llm.base_url.clone(),
        api_key_env: Some("ASSAY_TEST_NO_SUCH_KEY".into()),
        timeout: Duration::from_secs(2),
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "vendor/model-a".into(),
        messages: vec![
            Message::system("You write Flask apps."),
            Message::user("Write a todo API."),
        ],
        temperature: 0.0,
        max_tokens: Some(4_000),
        seed: Some(7),
    }
}

#[tokio::test]
async fn answers_carry_content_usage_and_the_resolved_model() {
    let llm = FakeLlm::start(vec![
        Scripted::text("```python backend/app.py\nprint(1)\n```"),
        Scripted::Finish("```python\nx = ".into(), "length".into()),
    ])
    .await;
    let resp = chat(&config(&llm), &request()).await.unwrap();
    assert!(resp.content.contains("backend/app.py"));
    assert_eq!(resp.model, served_model("vendor/model-a"));
    assert_eq!(resp.finish_reason, "stop");
    assert!(!resp.cached);
    let cut = chat(&config(&llm), &request()).await.unwrap();
    assert_eq!(
        cut.finish_reason, "length",
        "a truncated answer is recognizable"
    );
    let sent = &llm.requests()[0];
    assert_eq!(sent["model"], "vendor/model-a");
    assert_eq!(sent["seed"], 7);
}

#[tokio::test]
async fn failures_are_classified_for_the_scheduler_and_the_job() {
    let llm = FakeLlm::start(vec![
        Scripted::Status(429, Some(7)),
        Scripted::Status(500, None),
        Scripted::Status(402, None),
        Scripted::Status(401, None),
        Scripted::Hang,
    ])
    .await;
    let c = config(&llm);
    let e = chat(&c, &request()).await.unwrap_err();
    assert_eq!(
        e,
        ProviderError::RateLimited {
            retry_after_ms: Some(7_000)
        }
    );
    assert_eq!(
        e.outcome(),
        Some(CallOutcome::RateLimited {
            retry_after_ms: Some(7_000)
        })
    );
    assert_eq!(e.to_failure().retry_after_ms, Some(7_000));
    let e = chat(&c, &request()).await.unwrap_err();
    assert_eq!(
        (e.clone(), e.to_failure().class),
        (
            ProviderError::Server { status: 500 },
            FailureClass::Retryable
        )
    );
    let e = chat(&c, &request()).await.unwrap_err();
    assert!(matches!(e, ProviderError::QuotaExhausted { .. }), "{e}");
    assert!(matches!(
        e.outcome(),
        Some(CallOutcome::QuotaExhausted { .. })
    ));
    assert_eq!(
        e.to_failure().class,
        FailureClass::Permanent,
        "no endless retries on exhausted credits"
    );
    let e = chat(&c, &request()).await.unwrap_err();
    assert!(
        matches!(e, ProviderError::Refused { status: 401, .. }),
        "{e}"
    );
    assert_eq!(
        e.outcome(),
        None,
        "a refused request says nothing about the provider's load"
    );
    let e = chat(&c, &request()).await.unwrap_err();
    assert_eq!(e, ProviderError::Timeout(2));
    assert_eq!(e.outcome(), Some(CallOutcome::Timeout));
}

#[tokio::test]
async fn the_response_cache_never_pays_twice_and_never_caches_errors() {
    let llm = FakeLlm::start(vec![
        Scripted::Status(500, None),
        Scripted::text("answer one"),
        Scripted::text("answer two"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = ResponseCache::new(dir.path().to_path_buf());
    let c = config(&llm);
    assert!(cache.chat(&c, &request()).await.is_err());
    let first = cache.chat(&c, &request()).await.unwrap();
    assert_eq!(
        (first.content.as_str(), first.cached),
        ("answer one", false),
        "the error was not cached"
    );
    let again = cache.chat(&c, &request()).await.unwrap();
    assert_eq!((again.content.as_str(), again.cached), ("answer one", true));
    assert_eq!(llm.requests().len(), 2, "the cached answer cost no request");
    let mut other = request();
    other.temperature = 0.7;
    assert_eq!(
        cache.chat(&c, &other).await.unwrap().content,
        "answer two",
        "other parameters, other answer"
    );
}

#[tokio::test]
async fn openrouter_without_a_key_is_a_clear_permanent_error() {
    let mut c = ProviderConfig::openrouter();
    c.api_key_env = Some("ASSAY_TEST_NO_SUCH_KEY".into());
    let e = chat(&c, &request()).await.unwrap_err();
    assert_eq!(e, ProviderError::NoKey("ASSAY_TEST_NO_SUCH_KEY".into()));
    assert_eq!(e.to_failure().class, FailureClass::Permanent);
}

#[tokio::test]
async fn models_are_listed_with_prices_and_cached() {
    let llm = FakeLlm::start(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let (models, cached) = models_cached(&config(&llm), dir.path(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(!cached);
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].id, "vendor/model-a");
    assert_eq!(models[0].context_length, Some(128_000));
    assert_eq!(models[0].prompt_price, Some(0.000001));
    assert_eq!(models[1].prompt_price, None);
    let (again, cached) = models_cached(&config(&llm), dir.path(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(cached);
    assert_eq!(again, models);
    let calls = llm
        .recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/v1/models")
        .count();
    assert_eq!(calls, 1, "the second listing came from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assay_models_lists_a_providers_models() {
    let llm = FakeLlm::start(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = llm.base_url.clone();
    let cache = dir.path().join("analysis");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_assay"))
            .args(["models", "--base-url", &url, "--filter", "model-a"])
            .env("ASSAY_CACHE_DIR", cache)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("vendor/model-a") && stdout.contains("128000") && stdout.contains("$1.00"),
        "{stdout}"
    );
    assert!(!stdout.contains("model-b"), "filtered: {stdout}");
}
