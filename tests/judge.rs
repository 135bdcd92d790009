//! The LLM judge against a fake OpenAI-compatible server: answer validation, quote
//! verification, the one re-ask, and how HTTP failures are classified.

mod common;
mod fake_llm;

use assay::analysis::catalog::{self, Template};
use assay::analysis::judge::{
    judge_app, Direct, JudgeConfig, JudgeError, JudgeStatus, Verdict, CRITERIA, ENV_API_KEY,
    ENV_BASE_URL, ENV_MODEL,
};
use assay::domain::FailureClass;
use fake_llm::{served_model, FakeLlm, Scripted};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "sk-test-key-0123456789";
const MODEL: &str = "judge-model";
/// Occurs verbatim in examples/apps/notes-auth-leaky/backend/app.py.
const REAL_QUOTE: &str = "return hashlib.md5((SECRET_KEY + password).encode()).hexdigest()";
/// Occurs in app.py, but across two lines with different indentation.
const REFLOWED_QUOTE: &str =
    "if user_id is None: return jsonify({\"error\": \"Authentication required\"}), 401";
/// Occurs nowhere.
const INVENTED_QUOTE: &str = "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())";

fn template() -> Template {
    catalog::load_file(&catalog::builtin_dir().join("notes-auth.toml")).unwrap()
}

fn app_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/apps/notes-auth-leaky"
    ))
}

fn config(llm: &FakeLlm) -> JudgeConfig {
    let mut c = JudgeConfig::new(&llm.base_url, MODEL);
    c.api_key = Some(KEY.to_string());
    c.timeout = Duration::from_secs(10);
    c
}

fn direct() -> std::sync::Arc<dyn assay::analysis::judge::Gate> {
    std::sync::Arc::new(Direct)
}

fn verdict_for(id: &str) -> &'static str {
    match id {
        "backend-2" => "not_met",
        "backend-4" => "partial",
        _ => "met",
    }
}

/// A well-formed answer for the template: every requirement id once, all criteria.
fn good_answer(template: &Template) -> Value {
    let requirements: Vec<Value> = template
        .requirements
        .numbered()
        .into_iter()
        .map(|r| {
            let evidence = match r.id.as_str() {
                "backend-2" => vec![
                    json!({"file": "backend/app.py", "quote": REAL_QUOTE,
                           "explanation": "MD5 is a fast hash"}),
                    json!({"file": "backend/app.py", "quote": INVENTED_QUOTE,
                           "explanation": "made up"}),
                ],
                "backend-4" => vec![
                    json!({"file": "./backend/app.py", "quote": REFLOWED_QUOTE,
                           "explanation": "the decorator rejects missing tokens"}),
                    // Real text, but the wrong file: not verified.
                    json!({"file": "backend/requirements.txt", "quote": REAL_QUOTE,
                           "explanation": "wrong file"}),
                ],
                _ => vec![],
            };
            json!({"id": r.id, "requirement": r.text, "verdict": verdict_for(&r.id),
                   "evidence": evidence})
        })
        .collect();
    let quality: Vec<Value> = CRITERIA
        .iter()
        .rev()
        .enumerate()
        .map(|(i, c)| json!({"criterion": c, "score": i + 1, "justification": "because"}))
        .collect();
    json!({"requirements": requirements, "quality": quality, "summary": "Mostly there."})
}

fn user_message(request: &Value, index: usize) -> String {
    request["messages"][index]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_well_formed_answer_becomes_a_report_with_verified_quotes() {
    let template = template();
    let llm = FakeLlm::start(vec![Scripted::Json(good_answer(&template))]).await;
    let report = judge_app(&config(&llm), &template, &app_dir(), direct())
        .await
        .unwrap();

    assert_eq!(report.status, JudgeStatus::Success);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.template.as_deref(), Some("notes-auth"));
    assert_eq!(report.model.as_deref(), Some(served_model(MODEL).as_str()));
    assert_eq!(report.model_requested.as_deref(), Some(MODEL));

    let ids: Vec<&str> = report.requirements.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "backend-1",
            "backend-2",
            "backend-3",
            "backend-4",
            "backend-5",
            "backend-6"
        ]
    );
    assert_eq!(report.requirements[1].verdict, Verdict::NotMet);
    assert_eq!(report.requirements[3].verdict, Verdict::Partial);
    assert_eq!(
        report.requirements[0].requirement,
        "Persist users and notes in SQLite"
    );
    // (4 × met + 0.5 × partial) / 6
    assert!((report.pass_rate.unwrap() - 0.75).abs() < 1e-9);

    // The real quote and the reflowed one are kept; the invented one and the one in the
    // wrong file are dropped and counted.
    let kept: Vec<&str> = report
        .requirements
        .iter()
        .flat_map(|r| r.evidence.iter().map(|e| e.quote.as_str()))
        .collect();
    assert_eq!(kept, [REAL_QUOTE, REFLOWED_QUOTE]);
    assert_eq!(report.requirements[3].evidence[0].file, "backend/app.py");
    assert_eq!(report.unverified_quotes, 2);
    assert!(report
        .unverified
        .iter()
        .any(|u| u.quote == INVENTED_QUOTE && u.requirement_id == "backend-2"));

    assert_eq!(report.quality.len(), 5);
    assert_eq!(report.quality[0].criterion, "readability");
    assert!(report.quality.iter().all(|q| (1..=5).contains(&q.score)));
    assert_eq!(report.summary, "Mostly there.");
    assert!(report.usage.prompt_tokens > 0 && report.usage.completion_tokens > 0);
    assert_eq!(
        report.usage.total_tokens,
        report.usage.prompt_tokens + report.usage.completion_tokens
    );

    // What was sent: the key as a bearer token, a deterministic JSON-mode request, every
    // requirement id, the app's files but not Assay's manifests.
    assert_eq!(llm.authorizations(), [Some(format!("Bearer {KEY}"))]);
    let request = &llm.requests()[0];
    assert_eq!(request["model"], MODEL);
    assert_eq!(request["temperature"], 0);
    assert_eq!(request["response_format"]["type"], "json_object");
    assert_eq!(request["messages"][0]["role"], "system");
    let prompt = user_message(request, 1);
    for r in template.requirements.numbered() {
        assert!(
            prompt.contains(&format!("{}: {}", r.id, r.text)),
            "{}",
            r.id
        );
    }
    assert!(prompt.contains("===== FILE: backend/app.py ====="));
    assert!(prompt.contains("===== FILE: backend/requirements.txt ====="));
    assert!(!prompt.contains("expected.toml") && !prompt.contains("assay-app.toml"));
    assert_eq!(
        report.sources.files,
        ["backend/app.py", "backend/requirements.txt"]
    );
    assert!(!report.sources.truncated);

    // The raw bodies are kept, without the key.
    assert_eq!(report.exchanges.len(), 1);
    assert_eq!(report.exchanges[0].status, 200);
    assert!(report.exchanges[0].request.contains("backend-1"));
    assert!(report.exchanges[0].response.contains("chatcmpl-fake-1"));
    let serialized = serde_json::to_string(&report).unwrap();
    assert!(!serialized.contains(KEY));
}

#[tokio::test]
async fn a_malformed_answer_is_re_asked_once_with_the_errors() {
    let template = template();
    let llm = FakeLlm::start(vec![
        Scripted::text("not json"),
        Scripted::Json(good_answer(&template)),
    ])
    .await;
    let report = judge_app(&config(&llm), &template, &app_dir(), direct())
        .await
        .unwrap();
    assert_eq!(report.attempts, 2);
    assert_eq!(report.exchanges.len(), 2);
    assert_eq!(report.requirements.len(), 6);

    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1]["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        4,
        "system, user, the bad answer, the re-ask"
    );
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], "not json");
    let reask = user_message(&requests[1], 3);
    assert!(reask.contains("not valid"), "{reask}");
    assert!(reask.contains("the answer is not valid JSON"), "{reask}");
    // Usage adds up over both attempts.
    let first_prompt = (requests[0].to_string().len() as u64).div_ceil(4);
    assert!(report.usage.prompt_tokens > first_prompt);
}

#[tokio::test]
async fn a_schema_violation_is_quoted_in_the_re_ask() {
    let template = template();
    let mut bad = good_answer(&template);
    bad["requirements"].as_array_mut().unwrap().pop();
    bad["quality"][0]["score"] = json!(9);
    let llm = FakeLlm::start(vec![
        Scripted::Json(bad),
        Scripted::Json(good_answer(&template)),
    ])
    .await;
    let report = judge_app(&config(&llm), &template, &app_dir(), direct())
        .await
        .unwrap();
    assert_eq!(report.attempts, 2);
    let reask = user_message(&llm.requests()[1], 3);
    assert!(
        reask.contains("requirements missing from the answer: backend-6"),
        "{reask}"
    );
    assert!(reask.contains("has score 9"), "{reask}");
}

#[tokio::test]
async fn two_malformed_answers_are_a_malformed_error() {
    let template = template();
    let llm = FakeLlm::start(vec![
        Scripted::text("not json"),
        Scripted::Json(json!({"requirements": [], "quality": []})),
    ])
    .await;
    let err = judge_app(&config(&llm), &template, &app_dir(), direct())
        .await
        .unwrap_err();
    match &err {
        JudgeError::Malformed { errors, exchanges } => {
            assert_eq!(exchanges.len(), 2);
            assert!(errors.iter().any(|e| e.contains("backend-1")), "{errors:?}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(err.to_failure().class, FailureClass::Retryable);
    assert_eq!(llm.requests().len(), 2, "no third request");
}

#[tokio::test]
async fn rate_limiting_is_transient_with_the_servers_retry_after() {
    let llm = FakeLlm::start(vec![Scripted::Status(429, Some(7))]).await;
    let err = judge_app(&config(&llm), &template(), &app_dir(), direct())
        .await
        .unwrap_err();
    match &err {
        JudgeError::Transient {
            retry_after,
            status,
            ..
        } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(7)));
            assert_eq!(*status, Some(429));
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    let failure = err.to_failure();
    assert_eq!(failure.class, FailureClass::Retryable);
    assert_eq!(failure.retry_after_ms, Some(7000));
    assert_eq!(llm.requests().len(), 1, "the judge itself does not retry");
}

#[tokio::test]
async fn server_errors_timeouts_and_refused_connections_are_transient() {
    let llm = FakeLlm::start(vec![Scripted::Status(500, None), Scripted::Hang]).await;
    let mut c = config(&llm);
    c.timeout = Duration::from_millis(300);
    let err = judge_app(&c, &template(), &app_dir(), direct())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            JudgeError::Transient {
                status: Some(500),
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    let err = judge_app(&c, &template(), &app_dir(), direct())
        .await
        .unwrap_err();
    assert!(
        matches!(err, JudgeError::Transient { status: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("within"), "{err}");

    // Nothing listens on this port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = JudgeConfig::new(format!("http://127.0.0.1:{port}/v1"), MODEL);
    c.timeout = Duration::from_secs(5);
    let err = judge_app(&c, &template(), &app_dir(), direct())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn unauthorized_and_not_found_are_permanent_config_errors() {
    let llm = FakeLlm::start(vec![
        Scripted::Status(401, None),
        Scripted::Status(404, None),
    ])
    .await;
    for expected in [401, 404] {
        let err = judge_app(&config(&llm), &template(), &app_dir(), direct())
            .await
            .unwrap_err();
        match &err {
            JudgeError::Config { status, .. } => assert_eq!(*status, Some(expected)),
            other => panic!("expected Config, got {other:?}"),
        }
        assert!(!err.is_retryable());
        assert_eq!(err.to_failure().class, FailureClass::Permanent);
        assert!(!err.to_string().contains(KEY));
    }
}

#[tokio::test]
async fn a_broken_envelope_counts_as_a_malformed_answer() {
    let template = template();
    let llm = FakeLlm::start(vec![
        Scripted::Raw(200, "<html>proxy error</html>".into()),
        Scripted::Json(good_answer(&template)),
    ])
    .await;
    let report = judge_app(&config(&llm), &template, &app_dir(), direct())
        .await
        .unwrap();
    assert_eq!(report.attempts, 2);
    assert!(user_message(&llm.requests()[1], 3).contains("the API response is not JSON"));
}

#[tokio::test]
async fn the_source_cap_truncates_with_a_note() {
    let template = template();
    let llm = FakeLlm::start(vec![Scripted::Json(good_answer(&template))]).await;
    let mut c = config(&llm);
    c.max_source_bytes = 1000;
    let report = judge_app(&c, &template, &app_dir(), direct())
        .await
        .unwrap();
    assert!(report.sources.truncated);
    assert!(report.sources.bytes <= 1000);
    assert_eq!(
        report.sources.cut,
        ["backend/app.py", "backend/requirements.txt"]
    );
    let prompt = user_message(&llm.requests()[0], 1);
    assert!(prompt.contains("[NOTE: file truncated"), "{prompt}");
    assert!(prompt.contains("left out: backend/requirements.txt"));
    // The quotes are still checked against the whole files.
    assert_eq!(report.unverified_quotes, 2);
}

#[tokio::test]
async fn no_key_means_no_authorization_header() {
    let template = template();
    let llm = FakeLlm::start(vec![Scripted::Json(good_answer(&template))]).await;
    let mut c = config(&llm);
    c.api_key = None;
    judge_app(&c, &template, &app_dir(), direct())
        .await
        .unwrap();
    assert_eq!(llm.authorizations(), [None]);
}

#[test]
fn config_comes_from_the_environment_only_with_a_base_url() {
    let lookup = |vars: &[(&str, &str)]| {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        JudgeConfig::from_lookup(move |k| map.get(k).cloned())
    };
    assert!(lookup(&[]).is_none());
    assert!(lookup(&[(ENV_API_KEY, KEY), (ENV_MODEL, MODEL)]).is_none());
    assert!(lookup(&[(ENV_BASE_URL, "  ")]).is_none());

    let c = lookup(&[
        (ENV_BASE_URL, "http://127.0.0.1:9/v1/"),
        (ENV_API_KEY, KEY),
        (ENV_MODEL, MODEL),
    ])
    .unwrap();
    assert_eq!(c.base_url, "http://127.0.0.1:9/v1");
    assert_eq!(c.endpoint(), "http://127.0.0.1:9/v1/chat/completions");
    assert_eq!(c.api_key.as_deref(), Some(KEY));
    assert_eq!(c.model, MODEL);
    assert!(
        !format!("{c:?}").contains(KEY),
        "Debug must not show the key"
    );

    let c = lookup(&[(ENV_BASE_URL, "http://x/v1")]).unwrap();
    assert!(c.api_key.is_none());
    assert!(!c.model.is_empty());
}

#[test]
fn the_skipped_report_names_the_reason() {
    let r = assay::analysis::judge::skipped_report(assay::analysis::judge::NO_ENDPOINT);
    assert_eq!(r.status_line(), "skipped: no LLM endpoint configured");
    assert!(r.requirements.is_empty() && r.pass_rate.is_none());
}

/// The `ai` job kind end to end: skipped without an endpoint, a real verdict with one
/// (the fake server), the exchanges kept as an artifact. One test, because it sets the
/// process environment the kind reads.
#[tokio::test]
async fn the_ai_kind_is_skipped_without_an_endpoint_and_judges_with_one() {
    let run = |out: &std::path::Path| {
        let ctx = assay::kinds::JobContext {
            job_id: 1,
            key: "ai".into(),
            attempt: 1,
            params: json!({"app": app_dir(), "cache": false}),
            item: json!({}),
            output_dir: out.to_path_buf(),
            cancel: tokio_util::sync::CancellationToken::new(),
            progress: tokio::sync::watch::channel(None).0,
            server: None,
            waited_ms: Default::default(),
            providers: Default::default(),
            app_source: None,
        };
        async move { assay::kinds::run("ai", &ctx).await }
    };
    unsafe { std::env::remove_var("ASSAY_LLM_BASE_URL") };
    let out = tempfile::tempdir().unwrap();
    let skipped = run(out.path()).await.unwrap().result;
    assert_eq!(skipped["status"], "skipped: no LLM endpoint configured");
    // Not judged is not covered, and says why.
    assert_eq!(
        skipped["coverage"],
        serde_json::json!([{"part": "judge", "done": false, "why": "no LLM endpoint configured"}])
    );

    let llm = FakeLlm::start(vec![Scripted::Json(good_answer(&template()))]).await;
    unsafe {
        std::env::set_var("ASSAY_LLM_BASE_URL", &llm.base_url);
        std::env::set_var("ASSAY_LLM_MODEL", "judge-model");
    }
    let out = tempfile::tempdir().unwrap();
    let judged = run(out.path()).await;
    unsafe {
        std::env::remove_var("ASSAY_LLM_BASE_URL");
        std::env::remove_var("ASSAY_LLM_MODEL");
    }
    let judged = judged.unwrap().result;
    assert_eq!(judged["status"], "success", "{judged}");
    assert_eq!(judged["coverage"][0]["done"], true, "{judged}");
    assert!(judged["judge"]["pass_rate"].as_f64().is_some(), "{judged}");
    assert_eq!(judged["judge"]["model"], served_model("judge-model"));
    assert!(
        out.path().join("judge-exchanges.json").is_file(),
        "prompt and raw answer are kept"
    );
}

/// On a worker the judge's calls go through the Assay server like generation's: the
/// same request is answered from the server's cache (a retried or resumed job pays once),
/// every call is accounted to the job and its pipeline, and a spent budget stops the
/// judge before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_server_the_judge_is_cached_accounted_and_held_to_the_budget() {
    let jobs = JudgedJobs::start(
        "[pipeline]\nname = \"judged\"\nbudget = { tokens = 1 }\n",
        2,
    )
    .await;
    let llm = FakeLlm::start(vec![
        Scripted::Json(good_answer(&template())),
        Scripted::Json(good_answer(&template())),
    ])
    .await;
    let gate = |i: usize| jobs.gate(i, &llm);

    let first = judge_app(&config(&llm), &template(), &app_dir(), gate(0))
        .await
        .unwrap();
    assert_eq!(llm.requests().len(), 1);
    // The same request again, as a retried attempt would send it: from the cache.
    let again = judge_app(&config(&llm), &template(), &app_dir(), gate(0))
        .await
        .unwrap();
    assert_eq!(llm.requests().len(), 1, "an answer is never paid twice");
    assert_eq!(again.pass_rate, first.pass_rate);

    let usage = jobs.usage().await;
    let total = &usage.usage.total;
    assert_eq!((total.paid_calls, total.cached_calls), (1, 1), "{usage:?}");
    assert!(
        total.prompt_tokens > 0 && total.completion_tokens > 0,
        "{usage:?}"
    );
    assert!(
        usage
            .usage
            .by_job
            .iter()
            .any(|j| j.job_id == jobs.claimed[0].job_id),
        "accounted to the job: {usage:?}"
    );

    // Another request once the 1-token budget is spent: stopped, nothing sent.
    let mut other = config(&llm);
    other.model = "another-judge".into();
    let err = judge_app(&other, &template(), &app_dir(), gate(1))
        .await
        .unwrap_err();
    assert!(matches!(err, JudgeError::Stopped { .. }), "{err:?}");
    let failure = err.to_failure();
    assert_eq!(failure.code, "budget_exhausted");
    assert_eq!(failure.class, FailureClass::Permanent);
    assert!(
        failure.external,
        "a spent budget says nothing about the app or the worker"
    );
    assert_eq!(llm.requests().len(), 1);
    jobs.stop().await;
}

/// A judge job stopped mid-call (cancelled, timed out, its worker shutting down) still
/// accounts the call it paid for, gives the slot back and keeps the valid answer: the
/// retry is answered from the cache and pays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_stopped_mid_call_keeps_what_it_paid_for() {
    let jobs = JudgedJobs::start("[pipeline]\nname = \"stopped\"\n", 1).await;
    let llm = FakeLlm::start(vec![Scripted::Delay(
        Duration::from_millis(800),
        Box::new(Scripted::Json(good_answer(&template()))),
    )])
    .await;
    let gate = jobs.gate(0, &llm);
    // The job is stopped while the answer is on its way: its future is dropped.
    let judged = tokio::time::timeout(
        Duration::from_millis(200),
        judge_app(&config(&llm), &template(), &app_dir(), gate.clone()),
    )
    .await;
    assert!(judged.is_err(), "stopped mid-call");
    let mut paid = 0;
    for _ in 0..100 {
        paid = jobs.usage().await.usage.total.paid_calls;
        if paid == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(paid, 1, "the call it paid for is accounted");
    assert_eq!(llm.requests().len(), 1);
    // The retry: from the cache, nothing paid again.
    let report = judge_app(&config(&llm), &template(), &app_dir(), gate)
        .await
        .unwrap();
    assert!(report.pass_rate.is_some());
    assert_eq!(llm.requests().len(), 1, "not paid twice");
    let total = jobs.usage().await.usage.total;
    assert_eq!((total.paid_calls, total.cached_calls), (1, 1));
    jobs.stop().await;
}

/// A real server (in this process) with a pipeline of `ai` jobs for the sample app, all
/// claimed by worker `w`: their judge calls may go through the server.
struct JudgedJobs {
    client: assay::client::Client,
    pipeline: i64,
    claimed: Vec<assay::store::ClaimedJob>,
    server: common::InProcess,
    _dir: tempfile::TempDir,
}

impl JudgedJobs {
    async fn start(pipeline_toml: &str, jobs: usize) -> JudgedJobs {
        use assay::api::{ClaimBody, SubmitRequest};
        let dir = tempfile::tempdir().unwrap();
        let server = common::in_process(assay::server::ServerConfig::new(
            dir.path().to_path_buf(),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await;
        let client = server.client.clone();
        let items: Vec<String> = (1..=jobs).map(|i| i.to_string()).collect();
        let spec = format!(
            "{pipeline_toml}[[stage]]\nname = \"ai\"\nkind = \"ai\"\nitems = [{}]\n\
             [stage.params]\napp = \"{}\"\ncache = false\n",
            items.join(", "),
            app_dir().display()
        );
        let pipeline = client
            .submit(&SubmitRequest {
                spec,
                file_name: None,
                idempotency_key: None,
            })
            .await
            .unwrap()
            .pipeline_id;
        client
            .register(&assay::store::WorkerRegistration {
                id: "w".into(),
                name: "w".into(),
                kinds: vec!["ai".into()],
            })
            .await
            .unwrap();
        let (claimed, _) = client
            .claim(&ClaimBody {
                worker_id: "w".into(),
                kinds: vec!["ai".into()],
                limit: jobs as i64,
                wait_ms: 0,
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), jobs);
        JudgedJobs {
            client,
            pipeline,
            claimed,
            server,
            _dir: dir,
        }
    }

    /// Job `i`'s calls through the server, to `llm`.
    fn gate(&self, i: usize, llm: &FakeLlm) -> std::sync::Arc<dyn assay::analysis::judge::Gate> {
        std::sync::Arc::new(assay::kinds::judge_gate::ServerGate {
            client: self.client.clone(),
            job_id: self.claimed[i].job_id,
            attempt: self.claimed[i].attempt,
            provider: assay::kinds::judge_gate::provider_label(&llm.base_url),
            timeout: Duration::from_secs(10),
            progress: None,
            waited_ms: Default::default(),
        })
    }

    async fn usage(&self) -> assay::api::UsageResponse {
        self.client.usage(self.pipeline).await.unwrap()
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}
