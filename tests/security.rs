//! Security tests: the probes an attacker on the network would try, against real `assay`
//! processes, each asserting the refusal.

mod common;

use assay::api::API_PREFIX;
use assay::client::Client;
use assay::domain::{PipelineState, Scope};
use common::*;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

fn token_file(c: &Cluster, token: &str) -> String {
    let path = c.path(&format!("token-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

/// Wait, asking through `client` (with its token), for the pipeline to complete.
async fn assert_completes(c: &Cluster, client: &Client, id: i64) {
    let start = std::time::Instant::now();
    loop {
        let p = client.pipeline(id).await.unwrap().pipeline;
        if p.state.is_terminal() {
            assert_eq!(p.state, PipelineState::Completed, "{}", c.logs());
            return;
        }
        assert!(start.elapsed() < MIN, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code(e: &assay::client::ClientError) -> Option<&'static str> {
    e.code().map(|c| c.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_nothing_is_read_submitted_or_claimed() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &["--auth"]).await;
    // The health check and the dashboard's page are open; they hold no data.
    assert!(c.client.health().await.is_ok());
    let page = reqwest::get(format!("{}/", c.url)).await.unwrap();
    assert_eq!(page.status(), 200);

    let e = c.client.submit(&request(ONE_NOOP)).await.unwrap_err();
    assert_eq!(code(&e), Some("unauthorized"), "{e}");
    assert!(
        e.to_string().contains("assay token create"),
        "says how: {e}"
    );
    let e = c.client.pipelines(10).await.unwrap_err();
    assert_eq!(code(&e), Some("unauthorized"));
    let bogus = Client::with_token(&c.url, Some("assay_0000"));
    let e = bogus.pipelines(10).await.unwrap_err();
    assert_eq!(code(&e), Some("unauthorized"));

    // Every route, by every method, refuses a request without a token.
    let http = reqwest::Client::new();
    for (method, path) in [
        ("POST", "/pipelines"),
        ("POST", "/pipelines/1/cancel"),
        ("POST", "/jobs/1/retry"),
        ("GET", "/jobs"),
        ("GET", "/workers"),
        ("POST", "/workers/register"),
        ("POST", "/workers/claim"),
        ("POST", "/workers/report"),
        ("POST", "/workers/w/stopped"),
        ("PUT", "/blobs/00"),
        ("GET", "/blobs/00"),
        ("PUT", "/llm/answers/k"),
        ("GET", "/stream"),
        ("DELETE", "/pipelines/1"),
    ] {
        let url = format!("{}{API_PREFIX}{path}", c.url);
        let resp = http
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }

    // A worker without a token says so and stops, instead of retrying forever.
    let mut w = c.worker("w", 1, &[]);
    let exited = w.wait_exit(MIN);
    assert_eq!(exited, Some(1), "{}", c.logs());
    assert!(
        c.logs().contains("the server refused this worker"),
        "{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_does_only_what_its_scopes_allow() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &["--auth"]).await;
    let reader = Client::with_token(&c.url, Some(&create_token(&c, "read", "dashboard")));
    let submitter = Client::with_token(&c.url, Some(&create_token(&c, "submit", "ci")));
    let worker_token = create_token(&c, "worker", "worker-1");
    let worker_client = Client::with_token(&c.url, Some(&worker_token));

    let me = reader.whoami().await.unwrap();
    assert!(me.auth);
    assert_eq!(
        (me.name.as_deref(), me.scopes),
        (Some("dashboard"), vec![Scope::Read])
    );
    assert!(reader.pipelines(10).await.unwrap().is_empty());
    let e = reader.submit(&request(ONE_NOOP)).await.unwrap_err();
    assert_eq!(code(&e), Some("forbidden"), "{e}");
    assert!(e.to_string().contains("submit"), "names the scope: {e}");
    // A worker's token is not a person's, nor the other way round.
    let e = worker_client.pipelines(10).await.unwrap_err();
    assert_eq!(code(&e), Some("forbidden"));
    let e = submitter
        .register(&assay::store::WorkerRegistration {
            id: "impostor".into(),
            name: "x".into(),
            kinds: vec!["noop".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("forbidden"));
    // A person's token cannot run a worker either.
    let mut w = c.worker(
        "person",
        1,
        &[
            "--token-file",
            &token_file(&c, &create_token(&c, "admin", "root")),
        ],
    );
    assert_eq!(w.wait_exit(MIN), Some(1));
    assert!(
        c.logs().contains("lacks the `worker` scope"),
        "{}",
        c.logs()
    );

    // The right tokens run a pipeline end to end.
    let id = submitter
        .submit(&request(ONE_NOOP))
        .await
        .unwrap()
        .pipeline_id;
    let _w = c.worker("w", 1, &["--token-file", &token_file(&c, &worker_token)]);
    assert_completes(&c, &reader, id).await;
}

/// One token floods the server (a runaway script, a hostile worker): past its rate it
/// gets 429 with `Retry-After`, and the other tokens are served as before, so a worker
/// with its own token still runs a pipeline to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_token_is_slowed_and_the_others_are_not() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &["--auth", "--rate-limit", "20"]).await;
    let flood = create_token(&c, "read", "flood");
    let reader = Client::with_token(&c.url, Some(&create_token(&c, "read", "dashboard")));
    let submitter = Client::with_token(&c.url, Some(&create_token(&c, "submit", "ci")));
    let worker_token = create_token(&c, "worker", "worker-1");
    let _w = c.worker("w", 2, &["--token-file", &token_file(&c, &worker_token)]);

    let http = reqwest::Client::new();
    let url = format!("{}{API_PREFIX}/pipelines", c.url);
    let sent = (0..200).map(|_| {
        http.get(&url)
            .header("authorization", format!("Bearer {flood}"))
            .send()
    });
    let started = std::time::Instant::now();
    let answers = futures::future::join_all(sent).await;
    let took = started.elapsed().as_secs_f64();
    let mut limited = 0;
    for answer in answers {
        let answer = answer.unwrap();
        if answer.status() == 429 {
            limited += 1;
            let retry: u64 = answer.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "{retry}");
            let body: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("`flood`") && message.contains("--rate-limit"),
                "{message}"
            );
        } else {
            assert_eq!(answer.status(), 200);
        }
    }
    // A burst is twice the rate: the 40 of the burst and what the rate refilled meanwhile
    // got through, no more.
    let served = 200 - limited;
    let most = 40 + (20.0 * took).ceil() as usize + 1;
    assert!(
        (40..=most).contains(&served),
        "{served} of 200 served in {took:.2} s"
    );
    assert!(
        reader.pipelines(10).await.is_ok(),
        "another token is slowed too"
    );
    let id = submitter
        .submit(&request(ONE_NOOP))
        .await
        .unwrap()
        .pipeline_id;
    assert_completes(&c, &reader, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_and_tokens_are_kept_hashed() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &["--auth"]).await;
    let token = create_token(&c, "read", "laptop");
    let client = Client::with_token(&c.url, Some(&token));
    assert!(client.pipelines(1).await.is_ok());
    let listed = std::process::Command::new(BIN)
        .args(["token", "list", "--json", "--data-dir"])
        .arg(c.path("server"))
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("laptop") && !listed.contains(&token));
    let id = client.whoami().await.unwrap().token_id.unwrap();
    let revoked = std::process::Command::new(BIN)
        .args(["token", "revoke", &id.to_string(), "--data-dir"])
        .arg(c.path("server"))
        .status()
        .unwrap();
    assert!(revoked.success());
    wait_for(
        "the revocation to take effect",
        Duration::from_secs(10),
        || async {
            client
                .pipelines(1)
                .await
                .is_err_and(|e| e.code().map(|c| c.as_str()) == Some("unauthorized"))
        },
    )
    .await;
    // Nothing on disk holds the token itself.
    for entry in walk(&c.path("server")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{} holds the token",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn a_server_beyond_loopback_without_authentication_refuses_to_start() {
    use assay::server::{start, ServerConfig, ServerError};
    let dir = tempfile::tempdir().unwrap();
    let beyond: std::net::SocketAddr = "0.0.0.0:0".parse().unwrap();
    let config = ServerConfig::new(dir.path().to_path_buf(), beyond);
    assert!(
        config.require_auth,
        "beyond loopback, tokens are required by default"
    );
    // Told not to require them, it refuses before it binds: nothing listens.
    let mut open = config.clone();
    open.require_auth = false;
    let refused = start(open, tokio_util::sync::CancellationToken::new()).await;
    let Err(e @ ServerError::AuthRequired(_)) = refused else {
        panic!("a server beyond loopback without authentication started");
    };
    assert!(
        e.to_string().contains("--insecure-no-auth"),
        "says how: {e}"
    );
    assert!(
        !ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap()).require_auth,
        "on loopback tokens are asked for with --auth"
    );
    let out = std::process::Command::new(BIN)
        .args([
            "server",
            "--listen",
            "0.0.0.0:0",
            "--insecure-no-auth",
            "--auth",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the two flags conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_sites_change_nothing_and_foreign_host_names_are_refused() {
    let c = Cluster::new();
    // On loopback without tokens: what a page in the user's own browser could reach.
    let _server = c.server("1s").await;
    let spec = "[pipeline]\nname = \"long\"\n[[stage]]\nname = \"a\"\nkind = \"sleep\"\n[stage.params]\nms = 60000\n";
    let id = c.submit(spec).await;
    c.client
        .register(&assay::store::WorkerRegistration {
            id: "victim".into(),
            name: "victim".into(),
            kinds: vec!["noop".into()],
        })
        .await
        .unwrap();
    let job = c.jobs(id).await.remove(0).id;
    let http = reqwest::Client::new();
    let cancel = format!("{}{API_PREFIX}/pipelines/{id}/cancel", c.url);
    // Every route that changes something, body-less ones included (a form post or a
    // `fetch` with `no-cors` sends those without a preflight).
    for (method, path) in [
        ("POST", format!("/pipelines/{id}/cancel")),
        ("POST", format!("/pipelines/{id}/retry")),
        ("POST", format!("/jobs/{job}/cancel")),
        ("POST", format!("/jobs/{job}/retry")),
        ("POST", "/workers/victim/stopped".to_string()),
        ("POST", "/workers/register".to_string()),
        ("POST", "/workers/claim".to_string()),
        ("POST", "/workers/heartbeat".to_string()),
        ("POST", "/workers/report".to_string()),
        ("POST", "/session".to_string()),
        ("DELETE", "/session".to_string()),
        ("POST", "/llm/acquire".to_string()),
        ("POST", "/llm/calls".to_string()),
        ("PUT", format!("/blobs/{}", "0".repeat(64))),
    ] {
        let resp = http
            .request(
                method.parse().unwrap(),
                format!("{}{API_PREFIX}{path}", c.url),
            )
            .header("origin", "http://localhost:9999")
            .header("content-type", "text/plain")
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "foreign_origin", "{method} {path}");
    }
    let workers = c.client.workers().await.unwrap();
    assert!(
        workers.iter().any(|w| w.id == "victim" && !w.stopped),
        "{workers:?}"
    );
    // A page on another port of localhost, and one on another site.
    for (header, value) in [
        ("origin", "http://localhost:9999".to_string()),
        ("origin", "null".to_string()),
        ("sec-fetch-site", "cross-site".to_string()),
        ("sec-fetch-site", "same-site".to_string()),
    ] {
        let resp = http
            .post(&cancel)
            .header(header, &value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{header}: {value}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "foreign_origin");
    }
    let e = reqwest::Client::new()
        .post(format!("{}{API_PREFIX}/pipelines", c.url))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(e.status(), 403);
    assert_eq!(
        c.client.pipeline(id).await.unwrap().pipeline.state,
        PipelineState::Running,
        "nothing was cancelled"
    );
    assert_eq!(
        c.client.pipelines(10).await.unwrap().len(),
        1,
        "nothing was submitted"
    );

    // DNS rebinding: a page whose name now resolves to this server still names itself.
    let rebound = http
        .get(format!("{}{API_PREFIX}/pipelines", c.url))
        .header("host", format!("evil.example:{}", c.port))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    assert!(rebound.text().await.unwrap().contains("--public-host"));

    // The dashboard itself, from its own origin, may.
    let own = http
        .post(&cancel)
        .header("origin", &c.url)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);

    // Every response tells browsers not to frame, sniff or run it.
    for path in ["/".to_string(), format!("{API_PREFIX}/pipelines")] {
        let resp = http.get(format!("{}{path}", c.url)).send().await.unwrap();
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("script-src 'unsafe-inline'"), "{path}: {csp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_tokens_travel_encrypted_and_a_worker_runs_jobs() {
    let c = Cluster::new();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (c.path("cert.pem"), c.path("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());

    // A missing key is said, not served around.
    let mut bad = c.start_server(
        "1s",
        &["--tls-cert", cert_arg, "--tls-key", "/nonexistent/key.pem"],
    );
    assert_eq!(bad.wait_exit(MIN), Some(1));
    assert!(c.logs().contains("--tls-key"), "{}", c.logs());

    let _server = c.start_server(
        "1s",
        &["--auth", "--tls-cert", cert_arg, "--tls-key", key_arg],
    );
    let https = format!("https://127.0.0.1:{}", c.port);
    let ca = std::fs::read(&cert_path).unwrap();
    let anonymous = Client::with_options(&https, None, Some(&ca)).unwrap();
    wait_for("the HTTPS server", MIN, || async {
        anonymous.health().await.is_ok()
    })
    .await;
    let admin = create_token(&c, "submit", "ci");
    let client = Client::with_options(&https, Some(&admin), Some(&ca)).unwrap();
    assert_eq!(client.whoami().await.unwrap().name.as_deref(), Some("ci"));
    // Without the CA the certificate is not trusted; in clear, nothing is served.
    let untrusting = Client::with_token(&https, Some(&admin));
    assert!(untrusting.health().await.is_err());
    assert!(
        c.client.health().await.is_err(),
        "plain HTTP on the TLS port"
    );

    let id = client.submit(&request(ONE_NOOP)).await.unwrap().pipeline_id;
    let worker_token = token_file(&c, &create_token(&c, "worker", "w"));
    let _w = c.worker_at(
        &https,
        "w",
        "spool-w",
        1,
        &["--token-file", &worker_token, "--ca-file", cert_arg],
    );
    assert_completes(&c, &client, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_id_cannot_be_taken_over_by_another_token() {
    use assay::api::ClaimBody;
    use assay::store::{Heartbeat, WorkerRegistration};
    let c = Cluster::new();
    let _server = c.server_with("1s", &["--auth"]).await;
    let owner_token = create_token(&c, "worker", "rightful");
    let submitter = Client::with_token(&c.url, Some(&create_token(&c, "submit", "ci")));
    let spec = "[pipeline]\nname = \"long\"\n[[stage]]\nname = \"a\"\nkind = \"sleep\"\n[stage.params]\nms = 60000\n";
    let id = submitter.submit(&request(spec)).await.unwrap().pipeline_id;
    let _w = c.worker(
        "victim",
        1,
        &["--token-file", &token_file(&c, &owner_token)],
    );
    wait_for("the job to run on its worker", MIN, || async {
        submitter
            .pipeline(id)
            .await
            .is_ok_and(|d| d.pipeline.counts.running == 1)
    })
    .await;
    // Another worker token, with the id read from GET /workers.
    let attacker = Client::with_token(&c.url, Some(&create_token(&c, "worker", "rogue")));
    let victim = submitter.workers().await.unwrap()[0].id.clone();
    assert_eq!(victim, "victim");
    let e = attacker
        .register(&WorkerRegistration {
            id: victim.clone(),
            name: "rogue".into(),
            kinds: vec!["sleep".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("forbidden"), "{e}");
    assert!(e.to_string().contains("belongs to another token"));
    let e = attacker
        .heartbeat(
            &Heartbeat {
                worker_id: victim.clone(),
                leases: vec![],
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("forbidden"));
    let e = attacker
        .claim(&ClaimBody {
            worker_id: victim.clone(),
            kinds: vec!["sleep".into()],
            limit: 1,
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("forbidden"));
    let e = attacker.worker_stopped(&victim).await.unwrap_err();
    assert_eq!(code(&e), Some("forbidden"));
    // Nor may it take model slots for the victim's job, or record calls (and spending) on it.
    let job_id = submitter
        .jobs(&assay::store::JobFilter {
            pipeline_id: Some(id),
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .id;
    let rogue = create_token(&c, "worker", "rogue-2");
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "/llm/acquire",
            serde_json::json!({"job_id": job_id, "provider": "p", "model": "m", "hold_ms": 600000}),
        ),
        (
            "/llm/calls",
            serde_json::json!({"call": {"call_id": "evil", "job_id": job_id, "attempt": 1,
                "provider": "p", "model": "m", "result": "paid", "cost_usd": 1000000.0}}),
        ),
    ] {
        let resp = http
            .post(format!("{}{API_PREFIX}{path}", c.url))
            .bearer_auth(&rogue)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
    }
    assert_eq!(
        submitter.usage(id).await.unwrap().usage.total.calls,
        0,
        "no call was recorded"
    );
    // Its job runs on, untouched.
    let detail = submitter.pipeline(id).await.unwrap();
    assert_eq!(detail.pipeline.counts.running, 1, "{}", c.logs());
    let jobs = submitter
        .jobs(&assay::store::JobFilter {
            pipeline_id: Some(id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs[0].failed_attempts, 0);
}

/// A token cannot bind worker ids without end: past its share it is refused, naming the
/// limit, until one of its workers stops; others' workers run on. A revoked token's worker
/// id passes to the token that asks next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ids_are_bounded_per_token_and_pass_on_when_revoked() {
    use assay::store::WorkerRegistration;
    let c = Cluster::new();
    let _server = c
        .server_with("1s", &["--auth", "--worker-ids-per-token", "3"])
        .await;
    let registration = |id: &str| WorkerRegistration {
        id: id.into(),
        name: "rogue".into(),
        kinds: vec!["noop".into()],
    };
    let rogue = Client::with_token(&c.url, Some(&create_token(&c, "worker", "rogue")));
    for n in 0..3 {
        rogue
            .register(&registration(&format!("r-{n}")))
            .await
            .unwrap();
    }
    let e = rogue.register(&registration("r-3")).await.unwrap_err();
    assert_eq!(code(&e), Some("too_many_worker_ids"), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("token `rogue` owns 3 worker ids")
            && message.contains("--worker-ids-per-token"),
        "{message}"
    );
    // Another token's worker is not limited by the rogue's share.
    let honest = create_token(&c, "worker", "honest");
    let _w = c.worker("honest-1", 1, &["--token-file", &token_file(&c, &honest)]);
    let submitter = Client::with_token(&c.url, Some(&create_token(&c, "submit", "ci")));
    let id = submitter
        .submit(&request(ONE_NOOP))
        .await
        .unwrap()
        .pipeline_id;
    assert_completes(&c, &submitter, id).await;
    // A stopped worker's id makes room.
    rogue.worker_stopped("r-0").await.unwrap();
    rogue.register(&registration("r-3")).await.unwrap();

    // Revoked, the rogue's ids are free for the next token; its own requests fail.
    let rogue_id = rogue.whoami().await.unwrap().token_id.unwrap();
    let revoked = std::process::Command::new(BIN)
        .args(["token", "revoke", &rogue_id.to_string(), "--data-dir"])
        .arg(c.path("server"))
        .status()
        .unwrap();
    assert!(revoked.success());
    let heir = Client::with_token(&c.url, Some(&create_token(&c, "worker", "heir")));
    heir.register(&registration("r-1")).await.unwrap();
    wait_for("the revocation to take effect", MIN, || async {
        rogue
            .register(&registration("r-1"))
            .await
            .is_err_and(|e| code(&e) == Some("unauthorized"))
    })
    .await;
    heir.register(&registration("r-1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_no_program_a_spec_chooses_unless_allowed() {
    let c = Cluster::new();
    // As `assay server` starts by default.
    let _server = c.server_with("1s", &[]).await;
    let rce = "[pipeline]\nname = \"rce\"\n[[stage]]\nname = \"pwn\"\nkind = \"command\"\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"id\"]\n";
    let e = c.client.submit(&request(rce)).await.unwrap_err();
    assert_eq!(code(&e), Some("kind_not_allowed"), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("stage `pwn`") && message.contains("--allow-kinds"),
        "{message}"
    );
    assert!(c.client.pipelines(10).await.unwrap().is_empty());
    // Other kinds run as before.
    c.submit(ONE_NOOP).await;
}

/// The attack seen: a rogue worker claimed a `noop` job and reported its own `app.tar`,
/// which a `dynamic` stage with `app_from` naming that stage then ran. Only stages of a kind
/// that makes apps can be named (and a worker checks the upstream job's kind again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_taken_only_from_a_stage_that_makes_apps() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &[]).await;
    let spec = "[pipeline]\nname = \"rogue\"\n[[stage]]\nname = \"gen\"\nkind = \"noop\"\n\
        [[stage]]\nname = \"probe\"\nkind = \"dynamic\"\nafter = [\"gen\"]\n\
        [stage.params]\napp_from = \"gen\"\ntemplate = \"todo-api\"\n";
    let e = c.client.submit(&request(spec)).await.unwrap_err();
    assert_eq!(code(&e), Some("invalid_spec"), "{e}");
    assert!(
        e.to_string()
            .contains("a `noop` stage, which makes no apps"),
        "{e}"
    );
    assert!(c.client.pipelines(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_in_a_spec_are_refused_and_the_server_keeps_answering() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &[]).await;
    let axes: Vec<String> = (0..9)
        .map(|a| format!("a{a} = [0,1,2,3,4,5,6,7,8,9]"))
        .collect();
    let fan_out = format!(
        "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"huge\"\nkind = \"noop\"\nmatrix = {{ {} }}\n",
        axes.join(", ")
    );
    let template = "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"b\"\nkind = \"noop\"\nitems = [1]\n\
        [stage.params]\nv = \"{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}\"\n";
    // 100 MB, doubled until it is 6.4 GB: each `~` is within the fuel and renders nothing.
    let memory = format!(
        "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"m\"\nkind = \"noop\"\nitems = [1]\n\
         [stage.params]\nv = \"{{% set a = 'x' * 100000000 %}}{}{{{{ a | length }}}}\"\n",
        "{% set a = a ~ a %}".repeat(6)
    );
    let mut chain = String::from("[pipeline]\nname = \"x\"\n");
    for i in 0..5_000 {
        let after = if i == 0 {
            String::new()
        } else {
            format!("after = [\"s{}\"]\n", i - 1)
        };
        chain += &format!("[[stage]]\nname = \"s{i}\"\nkind = \"noop\"\n{after}");
    }
    for (what, spec, says) in [
        ("fan-out", fan_out.as_str(), "at most 1,000,000"),
        ("template", template, "steps to render"),
        ("memory", memory.as_str(), "GiB of memory"),
        ("stages", chain.as_str(), "at most 200"),
    ] {
        let e = c.client.submit(&request(spec)).await.unwrap_err();
        assert_eq!(code(&e), Some("invalid_spec"), "{what}: {e}");
        assert!(e.to_string().contains(says), "{what}: {e}");
        assert!(c.client.health().await.is_ok(), "{what}");
    }
    assert!(c.client.pipelines(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_in_an_app_folder_are_not_followed_into_findings_or_exports() {
    use assay::report::ExportFormat;
    let c = Cluster::new();
    let _server = c.server_with("1s", &[]).await;
    let app = c.path("app");
    std::fs::create_dir_all(app.join("backend")).unwrap();
    std::fs::write(
        app.join("backend/app.py"),
        "import os\nos.system(input())\n",
    )
    .unwrap();
    let secret = c.path("secret.txt");
    std::fs::write(&secret, "SECRET-LINE-4711\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", app.join("backend/passwd.py")).unwrap();
    std::os::unix::fs::symlink(&secret, app.join("backend/secret.py")).unwrap();
    std::fs::hard_link(&secret, app.join("backend/linked.py")).unwrap();
    // A 20 MB file of one line: read per finding before, it froze the analysis for minutes.
    let mut huge = b"x = 1\n".repeat(10);
    huge.extend(std::iter::repeat_n(b'#', 20_000_000));
    std::fs::write(app.join("backend/huge.py"), huge).unwrap();
    let spec = format!(
        "[pipeline]\nname = \"links\"\n[[stage]]\nname = \"static\"\nkind = \"static\"\nitems = [1]\n\
         [stage.params]\napp = \"{}\"\ntools = [\"bandit\", \"ruff\"]\n",
        app.display()
    );
    let id = c.submit(&spec).await;
    let root = c.dir.path().to_str().unwrap();
    let _w = c.worker("w", 1, &["--no-cache", "--app-root", root]);
    let detail = c.wait_finished(id, 3 * MIN).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{}",
        c.logs()
    );
    let job = c.jobs(id).await.remove(0);
    let result = serde_json::to_string(&job.result).unwrap();
    let mut everything = result.clone();
    for format in [
        ExportFormat::Json,
        ExportFormat::FindingsCsv,
        ExportFormat::Html,
    ] {
        everything += &String::from_utf8_lossy(&c.client.export(id, format).await.unwrap());
    }
    let sarif = c.client.export(id, ExportFormat::SarifZip).await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(sarif)).unwrap();
    assert!(!zip.is_empty());
    for i in 0..zip.len() {
        std::io::Read::read_to_string(&mut zip.by_index(i).unwrap(), &mut everything).unwrap();
    }
    // Every artifact of the job: its SARIF, the tools' own outputs, its log.
    let artifacts = c.client.explain(job.id).await.unwrap().artifacts;
    assert!(
        artifacts.iter().any(|a| a.name.ends_with(".sarif")),
        "{artifacts:?}"
    );
    for a in &artifacts {
        let to = c.path(&format!("artifact-{}", a.name));
        c.client
            .download_artifact(job.id, &a.name, &to)
            .await
            .unwrap();
        everything += &String::from_utf8_lossy(&std::fs::read(&to).unwrap());
    }
    for leaked in ["root:x:0:0", "SECRET-LINE-4711"] {
        assert!(!everything.contains(leaked), "{leaked} reached the results");
    }
    // The app's own code was analyzed, and what was left out is reported against the model.
    assert!(result.contains("backend/app.py"), "{result}");
    for (path, rule) in [
        ("backend/passwd.py", "assay/symlink"),
        ("backend/secret.py", "assay/symlink"),
        ("backend/linked.py", "assay/hard-link"),
        ("backend/huge.py", "assay/file-too-large"),
    ] {
        let findings = job.result.as_ref().unwrap()["findings"].as_array().unwrap();
        assert!(
            findings
                .iter()
                .any(|f| f["location"]["path"] == path && f["rule"] == rule),
            "{path}: {result}"
        );
    }
}

/// `assay run` in the background on `listen`, its stderr (where it prints the dashboard's
/// link) in `stderr`.
fn background_run(
    spec: &std::path::Path,
    data: &std::path::Path,
    listen: &str,
    stderr: &std::path::Path,
) -> Proc {
    let child = std::process::Command::new(BIN)
        .arg("run")
        .arg(spec)
        .args([
            "--plain",
            "--workers",
            "2",
            "--listen",
            listen,
            "--data-dir",
        ])
        .arg(data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        name: "run".into(),
    }
}

/// A spec whose one `command` job creates `marker`.
fn command_spec(marker: &std::path::Path) -> String {
    format!(
        "[pipeline]\nname = \"pwn\"\n[[stage]]\nname = \"pwn\"\nkind = \"command\"\n[stage.params]\n\
         program = \"sh\"\nargs = [\"-c\", \"touch {}\"]\n",
        marker.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assay_run_serves_no_one_without_its_token_and_runs_no_foreign_command() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("hold.toml");
    std::fs::write(
        &spec,
        "[pipeline]\nname = \"hold\"\n[[stage]]\nname = \"hold\"\nkind = \"sleep\"\n[stage.params]\nms = 120000\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let stderr = dir.path().join("run.stderr");
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let mut run = background_run(&spec, &data, &listen, &stderr);
    let reader = run_client(&data, &listen, "read").await;
    let logs = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let seen = wait_for_opt(MIN, || async {
        reader.pipelines(10).await.is_ok_and(|p| p.len() == 1)
    })
    .await;
    assert!(
        seen,
        "the run's own pipeline never showed: {:?}\n{}",
        reader.pipelines(10).await,
        logs()
    );

    // A local process without the token (an analyzed app, another user) gets nothing.
    let anonymous = Client::new(&url);
    let marker = dir.path().join("pwned");
    let e = anonymous
        .submit(&request(&command_spec(&marker)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("unauthorized"), "{e}");
    let e = anonymous.pipelines(10).await.unwrap_err();
    assert_eq!(code(&e), Some("unauthorized"), "{e}");
    let http = reqwest::Client::new();
    for (method, path) in [
        ("POST", "/pipelines"),
        ("GET", "/pipelines"),
        ("GET", "/jobs/1"),
        ("POST", "/pipelines/1/cancel"),
        ("POST", "/workers/register"),
        ("POST", "/workers/claim"),
        ("GET", "/stream"),
    ] {
        let resp = http
            .request(method.parse().unwrap(), format!("{url}{API_PREFIX}{path}"))
            .json(&serde_json::json!({"spec": command_spec(&marker)}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }
    let bogus = Client::with_token(&url, Some("assay_0000"));
    assert_eq!(
        code(
            &bogus
                .submit(&request(&command_spec(&marker)))
                .await
                .unwrap_err()
        ),
        Some("unauthorized")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !marker.exists(),
        "a command submitted without the token ran"
    );
    assert_eq!(
        reader.pipelines(10).await.unwrap().len(),
        1,
        "nothing was added"
    );

    // The same spec with a token the user made does run: the refusal above was the token's.
    let submitter = run_client(&data, &listen, "submit").await;
    let id = submitter
        .submit(&request(&command_spec(&dir.path().join("allowed"))))
        .await
        .unwrap()
        .pipeline_id;
    assert_completes_run(&submitter, id, &logs).await;
    assert!(dir.path().join("allowed").exists());

    // The dashboard's link logs one browser in, once.
    let text = logs();
    let link = text
        .split_whitespace()
        .find(|w| w.contains("?login="))
        .unwrap_or_else(|| panic!("no login link: {text}"));
    assert!(
        link.starts_with(&format!("{url}/#/pipelines/1?login=")),
        "{link}"
    );
    let code_text = link.split("?login=").nth(1).unwrap();
    let resp = http
        .post(format!("{url}{API_PREFIX}/session"))
        .json(&serde_json::json!({"token": code_text}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = http
        .get(format!("{url}{API_PREFIX}/pipelines"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the session reads");
    let again = http
        .post(format!("{url}{API_PREFIX}/session"))
        .json(&serde_json::json!({"token": code_text}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401, "a used link opens nothing");
    assert!(again.text().await.unwrap().contains("used already"));
    // Nothing printed is a token: the link's code is all.
    assert!(
        text.match_indices(assay::server::auth::TOKEN_PREFIX)
            .all(|(i, _)| text[i..].starts_with(assay::server::auth::LOGIN_PREFIX)),
        "{text}"
    );

    run.sigterm();
    assert_eq!(run.wait_exit(MIN), Some(130), "{}", logs());
}

/// Wait, asking through `client`, for the pipeline to complete.
async fn assert_completes_run(client: &Client, id: i64, logs: &dyn Fn() -> String) {
    let start = std::time::Instant::now();
    loop {
        let p = client.pipeline(id).await.unwrap().pipeline;
        if p.state.is_terminal() {
            assert_eq!(p.state, PipelineState::Completed, "{}", logs());
            return;
        }
        assert!(start.elapsed() < MIN, "{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_and_runs_only_app_folders_inside_its_roots() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &[]).await;
    let root = c.path("apps");
    let good = root.join("good");
    std::fs::create_dir_all(good.join("backend")).unwrap();
    std::fs::write(
        good.join("backend/app.py"),
        "import os\nos.system(input())\n",
    )
    .unwrap();
    // Outside the root: a folder with a secret and a run recipe that leaves a mark, and a
    // link to it from inside the root.
    let outside = c.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.py"), "KEY = 'SECRET-LINE-4711'\n").unwrap();
    let marker = c.path("recipe-ran");
    std::fs::write(
        outside.join("assay-app.toml"),
        format!(
            "template = \"todo-api\"\n[run]\ncommand = [\"sh\", \"-c\", \"touch {}\"]\nport_env = \"PORT\"\nhealth = \"/\"\n",
            marker.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let stage = |name: &str, kind: &str, app: &std::path::Path, extra: &str| {
        format!(
            "[[stage]]\nname = \"{name}\"\nkind = \"{kind}\"\nmax_attempts = 3\nbackoff = \"100ms\"\n\
             [stage.params]\napp = \"{}\"\ncache = false\n{extra}",
            app.display()
        )
    };
    let spec = format!(
        "[pipeline]\nname = \"roots\"\n{}{}{}{}{}",
        stage(
            "etc",
            "static",
            std::path::Path::new("/etc"),
            "tools = [\"ruff\"]\n"
        ),
        stage(
            "link",
            "static",
            &root.join("escape"),
            "tools = [\"ruff\"]\n"
        ),
        stage(
            "recipe",
            "performance",
            &root.join("escape"),
            "duration = \"1s\"\n"
        ),
        stage("dotdot", "dynamic", &root.join("good/../../outside"), ""),
        stage("good", "static", &good, "tools = [\"ruff\"]\n"),
    );
    let id = c.submit(&spec).await;
    let _w = c.worker("w", 2, &["--app-root", root.to_str().unwrap()]);
    let detail = c.wait_finished(id, 3 * MIN).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::PartialSuccess,
        "{}",
        c.logs()
    );
    let canonical_root = root.canonicalize().unwrap().display().to_string();
    for job in c.jobs(id).await {
        if job.stage == "good" {
            assert_eq!(job.state, assay::domain::JobState::Completed, "{job:?}");
            let result = serde_json::to_string(&job.result).unwrap();
            assert!(result.contains("backend/app.py"), "{result}");
            continue;
        }
        assert_eq!(
            job.state,
            assay::domain::JobState::Dead,
            "{}: {job:?}",
            job.stage
        );
        assert_eq!(
            job.attempts, 1,
            "{}: refused once, never retried",
            job.stage
        );
        let error = job.last_error.as_ref().unwrap();
        assert_eq!(error.code, "app_not_allowed", "{}: {error:?}", job.stage);
        assert_eq!(error.class, assay::domain::FailureClass::Permanent);
        assert!(
            error.message.contains(&canonical_root) && error.message.contains("--app-root"),
            "{}: names the roots and the fix: {}",
            job.stage,
            error.message
        );
    }
    let etc = c
        .jobs(id)
        .await
        .into_iter()
        .find(|j| j.stage == "etc")
        .unwrap();
    assert!(etc.last_error.unwrap().message.contains("`/etc`"));
    assert!(
        !marker.exists(),
        "the recipe of a folder outside the roots ran"
    );
    let everything = String::from_utf8_lossy(
        &c.client
            .export(id, assay::report::ExportFormat::Json)
            .await
            .unwrap(),
    )
    .to_string();
    assert!(!everything.contains("SECRET-LINE-4711"));
}

/// A listener of the attacker's: it counts the connections it gets and keeps what they
/// send.
struct Listener {
    url: String,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

async fn attackers_listener() -> Listener {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, bytes) = (connections.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    Listener {
        url,
        connections,
        received,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_cannot_send_a_workers_keys_anywhere_or_pick_a_provider_nobody_configured() {
    const OPENROUTER_SECRET: &str = "sk-or-v1-security-test-never-send-me";
    const AWS_SECRET: &str = "aws-secret-security-test-never-send-me";
    let attacker = attackers_listener().await;
    let c = Cluster::new();
    let providers = c.path("providers.toml");
    std::fs::write(
        &providers,
        "[providers.local]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"LOCAL_KEY\"\n",
    )
    .unwrap();
    let providers = providers.to_str().unwrap();
    let _server = c.server_with("1s", &["--providers", providers]).await;
    let _worker = c.worker_with_env(
        "w",
        &["--kinds", "generate,static", "--providers", providers],
        &[
            ("OPENROUTER_API_KEY", OPENROUTER_SECRET),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ],
    );
    let spec = |provider: &str, fan_out: &str| {
        format!(
            "[pipeline]\nname = \"steal\"\n[[stage]]\nname = \"generate\"\nkind = \"generate\"\n{fan_out}\n\
             [stage.params]\nmodel = \"m\"\ntemplate = \"todo-api\"\nprovider = {provider}\n"
        )
    };
    let url = &attacker.url;
    for provider in [
        format!("{{ name = \"openrouter\", base_url = \"{url}\" }}"),
        format!("{{ base_url = \"{url}\", api_key_env = \"AWS_SECRET_ACCESS_KEY\" }}"),
        "{ name = \"local\", api_key_env = \"AWS_SECRET_ACCESS_KEY\" }".to_string(),
    ] {
        let e = c
            .client
            .submit(&request(&spec(&provider, "")))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some("provider_in_spec"), "{provider}: {e}");
        let message = e.to_string();
        assert!(
            message.contains("--providers") && message.contains("provider = \"local\""),
            "says what to do instead: {message}"
        );
    }
    for (provider, fan_out, name) in [
        ("\"attacker\"", "", "attacker"),
        // A templated name is checked as each job has it.
        (
            "\"{{ provider }}\"",
            "matrix = { provider = [\"openrouter\", \"elsewhere\"] }",
            "elsewhere",
        ),
    ] {
        let e = c
            .client
            .submit(&request(&spec(provider, fan_out)))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some("unknown_provider"), "{provider}: {e}");
        let message = e.to_string();
        assert!(
            message.contains(&format!("provider `{name}`"))
                && message.contains("known here: local, openrouter")
                && message.contains("--providers"),
            "{message}"
        );
    }
    assert!(c.client.pipelines(10).await.unwrap().is_empty());

    // A pipeline that is past submission all the same (one stored before providers were
    // named): the worker refuses its jobs before calling anything.
    let store = assay::server::open_store(&c.path("server")).await.unwrap();
    let source = spec("\"openrouter\"", "items = [1, 2]");
    let parsed = assay::spec::parse("old.toml", &source).unwrap();
    let mut plan = parsed.plan().unwrap();
    plan.jobs[0].params["provider"] = serde_json::json!({
        "name": "openrouter", "base_url": url, "api_key_env": "AWS_SECRET_ACCESS_KEY"
    });
    plan.jobs[1].params["provider"] = serde_json::json!("attacker");
    let (id, _) = store
        .create_pipeline(
            &assay::store::NewPipeline {
                idempotency_key: None,
                spec_hash: "old".into(),
                source,
                spec: parsed,
                plan,
            },
            assay::domain::now_micros(),
        )
        .await
        .unwrap();
    let detail = c.wait_finished(id, MIN).await;
    assert_eq!(detail.pipeline.state, PipelineState::Failed, "{}", c.logs());
    let mut codes: Vec<(String, i64)> = c
        .jobs(id)
        .await
        .iter()
        .map(|j| (j.last_error.as_ref().unwrap().code.clone(), j.attempts))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("provider_in_spec".to_string(), 1),
            ("unknown_provider".to_string(), 1)
        ],
        "refused for good, not retried"
    );

    // Nothing reached the attacker: no connection, let alone a key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        attacker
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(attacker.received.lock().unwrap().is_empty());
    let logs = c.logs();
    assert!(!logs.contains(OPENROUTER_SECRET) && !logs.contains(AWS_SECRET));
}

/// A worker token made for some kinds registers and claims only those: a machine given a
/// `static`-only token is never handed a `command` job, whatever its worker asks for.
/// On a shared server, a token may be allowed to submit analyses but not generation (which
/// spends the lab's provider credit): a spec with another kind of stage is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_token_limited_to_kinds_submits_nothing_else() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &["--auth"]).await;
    let token = create_token_with(
        &c.path("server"),
        "submit,read",
        "analyses-only",
        &["--kinds", "static,noop"],
    );
    let student = Client::with_token(&c.url, Some(&token));
    let generate = "[pipeline]\nname = \"g\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\n\
        [[stage]]\nname = \"gen\"\nkind = \"generate\"\n[stage.params]\nmodel = \"m\"\n\
        template = \"todo-api\"\nprovider = \"openrouter\"\n";
    let e = student.submit(&request(generate)).await.unwrap_err();
    assert_eq!(code(&e), Some("kind_not_allowed"), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("stage `gen` uses kind `generate`")
            && message.contains("token `analyses-only`")
            && message.contains("static, noop"),
        "{message}"
    );
    assert!(student.pipelines(10).await.unwrap().is_empty());
    student.submit(&request(ONE_NOOP)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_token_limited_to_kinds_claims_nothing_else() {
    let c = Cluster::new();
    let _server = c
        .server_with("1s", &["--auth", "--allow-kinds", "all"])
        .await;
    let token = create_token_with(
        &c.path("server"),
        "worker",
        "static-only",
        &["--kinds", "static,noop"],
    );
    let worker = Client::with_token(&c.url, Some(&token));
    let registration = |kinds: &[&str]| assay::store::WorkerRegistration {
        id: "limited".into(),
        name: "limited".into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
    };
    let e = worker
        .register(&registration(&["static", "command"]))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("forbidden"), "{e}");
    assert!(
        e.to_string().contains("may not claim command") && e.to_string().contains("static, noop"),
        "{e}"
    );
    worker.register(&registration(&["static"])).await.unwrap();
    let claim = |kinds: &[&str]| assay::api::ClaimBody {
        worker_id: "limited".into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        limit: 1,
        wait_ms: 0,
    };
    let e = worker.claim(&claim(&["command"])).await.unwrap_err();
    assert_eq!(code(&e), Some("forbidden"), "{e}");
    assert!(worker.claim(&claim(&["noop"])).await.is_ok());
    // An unknown kind is refused when the token is made.
    let out = std::process::Command::new(common::BIN)
        .args(["token", "create", "--data-dir"])
        .arg(c.path("server"))
        .args(["--scope", "worker", "--kinds", "comand"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`comand` is not a job kind"));
}

/// A connection from `source` to `server` that has sent `sent` and nothing more.
async fn connection_from(
    source: &str,
    server: std::net::SocketAddr,
    sent: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

/// Whether the server closes `stream` (within `within`), reading what it says first.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Slowloris: one address opens connections and sends its headers a byte at a time, or
/// not at all. It holds at most its share of connections, each for the header read
/// timeout; clients at other addresses are served throughout, and SIGTERM's soft stop is
/// not held up by a half-sent request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_cannot_hold_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        assay::server::ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.connections_per_peer = 20;
    config.header_read_timeout = Duration::from_secs(1);
    let server = in_process(config).await;
    let addr = server.running.addr;
    let half_sent = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a";

    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connection_from("127.0.0.2", addr, half_sent).await);
    }
    let mut one_too_many = connection_from("127.0.0.2", addr, b"").await;
    assert!(
        closed_by_server(&mut one_too_many, Duration::from_secs(10)).await,
        "a 21st connection from one address was kept"
    );
    server
        .client
        .health()
        .await
        .expect("another address is served");
    for stream in &mut held {
        assert!(
            closed_by_server(stream, Duration::from_secs(20)).await,
            "a half-sent request held its connection past the header read timeout"
        );
    }
    // Places given back: the address is served again.
    let mut again = connection_from(
        "127.0.0.2",
        addr,
        b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut again, &mut answer)
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    server.stop().await;

    // The default header timeout is long; a half-sent request does not hold up a stop.
    let dir = tempfile::tempdir().unwrap();
    let server = in_process(assay::server::ServerConfig::new(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await;
    let _slow = connection_from("127.0.0.1", server.running.addr, half_sent).await;
    let _idle = connection_from("127.0.0.1", server.running.addr, b"").await;
    // Both taken by the server (each answered once it is whole) before the stop.
    let mut answered = connection_from(
        "127.0.0.1",
        server.running.addr,
        b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    let mut buf = [0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut answered, &mut buf)
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::timeout(Duration::from_secs(15), server.stop())
        .await
        .expect("the server stopped with a half-sent request open");
}

/// Uploads are bounded one by one and in all, over HTTP, and a blob no report names (a
/// cut-off worker's, or a hostile one filling the disk) is deleted once it is older than
/// the grace, giving its room back; a blob a result names stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_uploads_are_bounded_and_unreferenced_blobs_are_collected() {
    use assay::store::{ArtifactRef, Report, ReportOutcome, WorkerRegistration};
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        assay::server::ServerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.max_blob_bytes = 1_000;
    config.blob_quota = Some(2_500);
    config.blob_gc = assay::server::BlobGc {
        every: Duration::from_millis(200),
        grace: Duration::from_secs(2),
    };
    let server = in_process(config).await;
    let client = &server.client;
    let blob = |name: &str, size: usize| {
        let bytes: Vec<u8> = name.bytes().cycle().take(size).collect();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        (hex::encode(sha2::Sha256::digest(&bytes)), path)
    };

    let (digest, path) = blob("too-large", 1_001);
    let e = client.put_blob(&digest, &path).await.unwrap_err();
    assert_eq!(code(&e), Some("too_large"), "{e}");
    assert!(e.to_string().contains("--max-blob-bytes"), "{e}");

    // A result that names its artifact.
    let id = client.submit(&request(ONE_NOOP)).await.unwrap().pipeline_id;
    client
        .register(&WorkerRegistration {
            id: "w".into(),
            name: "w".into(),
            kinds: vec!["noop".into()],
        })
        .await
        .unwrap();
    let (jobs, _) = client
        .claim(&assay::api::ClaimBody {
            worker_id: "w".into(),
            kinds: vec!["noop".into()],
            limit: 1,
            wait_ms: 0,
        })
        .await
        .unwrap();
    let (kept, kept_path) = blob("kept", 1_000);
    client.put_blob(&kept, &kept_path).await.unwrap();
    client
        .report(vec![Report {
            job_id: jobs[0].job_id,
            attempt: jobs[0].attempt,
            token: jobs[0].token.clone(),
            worker_id: "w".into(),
            outcome: ReportOutcome::Completed {
                result: serde_json::json!(null),
                artifacts: vec![ArtifactRef {
                    name: "out.txt".into(),
                    sha256: kept.clone(),
                    size: 1_000,
                }],
            },
        }])
        .await
        .unwrap();

    // Uploads nobody reports, until the quota is reached.
    let (orphan, orphan_path) = blob("orphan", 1_000);
    client.put_blob(&orphan, &orphan_path).await.unwrap();
    let (over, over_path) = blob("over", 1_000);
    let e = client.put_blob(&over, &over_path).await.unwrap_err();
    assert!(
        matches!(&e, assay::client::ClientError::Api { status: 507, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("--blob-quota"), "{e}");

    // Collected after its grace; the quota has room again.
    let start = std::time::Instant::now();
    while client.has_blob(&orphan).await.unwrap() {
        assert!(
            start.elapsed() < MIN,
            "the unreferenced blob was never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        client.has_blob(&kept).await.unwrap(),
        "a referenced blob was deleted"
    );
    client.put_blob(&over, &over_path).await.unwrap();
    assert_eq!(
        client.pipeline(id).await.unwrap().pipeline.state,
        PipelineState::Completed
    );
    server.stop().await;
}

/// A judge's endpoint is each worker's own setting, which the server cannot check: a
/// worker of one token files a verdict for a request, and a worker of another token that
/// asks the same request of the same endpoint label does not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_verdict_filed_by_one_token_is_never_served_to_another() {
    let c = Cluster::new();
    let _server = c.server_with("1s", &["--auth"]).await;
    let admin = Client::with_token(&c.url, Some(&create_token(&c, "admin", "admin")));
    let spec = "[pipeline]\nname = \"judged\"\n[[stage]]\nname = \"judge\"\nkind = \"ai\"\n\
        items = [1, 2]\n[stage.params]\napp = \"/srv/apps/todo\"\n";
    admin.submit(&request(spec)).await.unwrap();
    let http = reqwest::Client::new();
    let mut workers = Vec::new();
    for name in ["planter", "victim"] {
        let token = create_token(&c, "worker", name);
        let client = Client::with_token(&c.url, Some(&token));
        client
            .register(&assay::store::WorkerRegistration {
                id: name.into(),
                name: name.into(),
                kinds: vec!["ai".into()],
            })
            .await
            .unwrap();
        let (jobs, _) = client
            .claim(&assay::api::ClaimBody {
                worker_id: name.into(),
                kinds: vec!["ai".into()],
                limit: 1,
                wait_ms: 0,
            })
            .await
            .unwrap();
        workers.push((token, jobs[0].job_id));
    }
    let label = "judge:http://judge.example/v1";
    let asked = serde_json::json!({"model": "j", "messages": [{"role": "user", "content": "rate this app"}]});
    let (planter, planter_job) = &workers[0];
    let filed = http
        .post(format!("{}{API_PREFIX}/llm/calls", c.url))
        .bearer_auth(planter)
        .json(&serde_json::json!({
            "call": {
                "call_id": uuid::Uuid::new_v4().to_string(),
                "job_id": planter_job, "attempt": 1, "provider": label, "model": "j",
                "model_resolved": "j", "result": "paid", "prompt_tokens": 10,
                "completion_tokens": 10, "cost_usd": 0.0,
            },
            "answer": {"request": asked, "answer": {"verdict": "flawless, score 10"}},
        }))
        .send()
        .await
        .unwrap();
    assert!(
        filed.status().is_success(),
        "{}",
        filed.text().await.unwrap()
    );
    let lookup = |token: &str, job: i64| {
        let client = Client::with_token(&c.url, Some(token));
        let asked = asked.clone();
        async move {
            client
                .cached_answer(&assay::api::AnswerLookup {
                    job_id: job,
                    provider: label.into(),
                    request: asked,
                })
                .await
                .unwrap()
        }
    };
    assert!(
        lookup(planter, *planter_job).await.is_some(),
        "kept for its own token"
    );
    let (victim, victim_job) = &workers[1];
    assert_eq!(
        lookup(victim, *victim_job).await,
        None,
        "served to another token"
    );
}
