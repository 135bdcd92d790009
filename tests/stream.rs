//! The live event stream (server-sent events) over real HTTP: every durable event carries
//! its id, and a client that reconnects with `Last-Event-ID`, also to a restarted server,
//! gets exactly the events it has not seen: none lost, none twice.

mod common;

use assay::api::SubmitRequest;
use assay::client::Client;
use assay::server::{self, ServerConfig};
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SPEC: &str = r#"
[pipeline]
name = "streamed"
[[stage]]
name = "a"
kind = "sleep"
items = [1, 2, 3, 4, 5]
[stage.params]
ms = 10
"#;

#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// Read SSE messages from `url` until `until` says stop (or 20 s pass).
async fn read_stream(
    url: &str,
    last_event_id: Option<i64>,
    mut until: impl FnMut(&[Message]) -> bool,
) -> Vec<Message> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = resp.bytes_stream();
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !until(&messages) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the stream delivered in time")
            .expect("the stream stayed open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut m = Message {
                id: None,
                event: "message".into(),
                data: Value::Null,
            };
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    m.id = Some(v.trim().parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    m.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            m.data = serde_json::from_str(&data).unwrap();
            messages.push(m);
        }
    }
    messages
}

fn durable(messages: &[Message]) -> Vec<i64> {
    messages.iter().filter_map(|m| m.id).collect()
}

async fn start(dir: &std::path::Path, port: u16) -> (server::RunningServer, CancellationToken) {
    let listen = format!("127.0.0.1:{port}").parse().unwrap();
    let s = common::in_process(ServerConfig::new(dir.to_path_buf(), listen)).await;
    (s.running, s.stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_resumes_from_the_last_event_it_saw_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (running, stop) = start(dir.path(), 0).await;
    let port = running.addr.port();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new(&base);
    let pipeline = client
        .submit(&SubmitRequest {
            spec: SPEC.into(),
            file_name: None,
            idempotency_key: None,
        })
        .await
        .unwrap()
        .pipeline_id;
    let url = format!("{base}/api/v1/stream?pipeline={pipeline}");
    let all_events = |c: Client| async move {
        c.events(pipeline, 0, 10_000)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.id)
            .collect::<Vec<i64>>()
    };
    let stored = all_events(client.clone()).await;
    assert!(!stored.is_empty());

    // First connection: everything so far, in order, then a progress snapshot.
    let first = read_stream(&url, None, |m| {
        durable(m).len() >= stored.len() && m.iter().any(|m| m.event == "progress")
    })
    .await;
    assert_eq!(durable(&first), stored);
    let created = first.iter().find(|m| m.id == Some(stored[0])).unwrap();
    assert_eq!(created.data["pipeline_id"], pipeline);
    let seen = *stored.last().unwrap();

    // While disconnected, things happen.
    let jobs = client
        .jobs(&assay::store::JobFilter {
            pipeline_id: Some(pipeline),
            ..Default::default()
        })
        .await
        .unwrap();
    client.cancel_job(jobs[0].id).await.unwrap();
    client.cancel_job(jobs[1].id).await.unwrap();
    let stored = all_events(client.clone()).await;
    let missed: Vec<i64> = stored.iter().copied().filter(|id| *id > seen).collect();
    assert!(missed.len() >= 2, "{stored:?}");

    // Reconnecting with Last-Event-ID: exactly the missed events, none twice.
    let second = read_stream(&url, Some(seen), |m| durable(m).len() >= missed.len()).await;
    assert_eq!(durable(&second), missed);
    let seen = *missed.last().unwrap();

    // The server restarts; more happens; the client resumes where it was.
    stop.cancel();
    running.wait().await;
    let (running, stop) = start(dir.path(), port).await;
    client.cancel_pipeline(pipeline).await.unwrap();
    let stored = all_events(client.clone()).await;
    let missed: Vec<i64> = stored.iter().copied().filter(|id| *id > seen).collect();
    assert!(!missed.is_empty());
    let third = read_stream(&url, Some(seen), |m| durable(m).len() >= missed.len()).await;
    assert_eq!(durable(&third), missed);
    assert!(
        third
            .iter()
            .any(|m| m.event == "pipeline_finished" || m.data["data"]["state"] == "cancelled"),
        "{third:?}"
    );

    // A page that opens starts from recent history, not all of it: `tail` replays the
    // newest events only, and never starts later than `after` (its snapshot's event).
    let stored = all_events(client.clone()).await;
    let tail = read_stream(&format!("{url}&tail=2"), None, |m| durable(m).len() >= 2).await;
    assert_eq!(durable(&tail), stored[stored.len() - 2..]);
    let from = stored[1];
    let bounded = read_stream(&format!("{url}&tail=2&after={from}"), None, |m| {
        durable(m).len() >= stored.len() - 2
    })
    .await;
    assert_eq!(
        durable(&bounded),
        stored[2..],
        "`after` wins when it is earlier"
    );

    // The workers page's stream: id-less snapshots of the workers (heartbeats are not
    // events) pushed by the server, again after a while, without the client asking.
    client
        .register(&assay::store::WorkerRegistration {
            id: "w-snap".into(),
            name: "snapshots".into(),
            kinds: vec!["sleep".into()],
        })
        .await
        .unwrap();
    let workers_url = format!("{base}/api/v1/stream?tail=0&workers=true");
    let snapshots = read_stream(&workers_url, None, |m| {
        m.iter().filter(|m| m.event == "workers").count() >= 2
    })
    .await;
    let snaps: Vec<&Message> = snapshots.iter().filter(|m| m.event == "workers").collect();
    assert!(
        snaps.iter().all(|m| m.id.is_none()),
        "snapshots carry no id"
    );
    let listed: Vec<&str> = snaps[1].data["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"w-snap"), "{listed:?}");
    assert!(snaps[1].data["breakers"].is_array());
    assert!(snaps[1].data["now"].as_i64().unwrap() > snaps[0].data["now"].as_i64().unwrap());
    stop.cancel();
    running.wait().await;
}

/// A server keeps the events of finished pipelines for its retention period only; a
/// running pipeline keeps its whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_pipelines_old_events_are_pruned_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let start_keeping = |keep: Option<Duration>| {
        let mut config =
            ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
        config.event_retention = keep;
        common::in_process(config)
    };
    let server = start_keeping(None).await;
    let client = server.client.clone();
    let submit = |name: &str| {
        let client = client.clone();
        let spec = SPEC.replace("streamed", name);
        async move {
            client
                .submit(&SubmitRequest {
                    spec,
                    file_name: None,
                    idempotency_key: None,
                })
                .await
                .unwrap()
                .pipeline_id
        }
    };
    let (finished, running_one) = (submit("finished").await, submit("running").await);
    client.cancel_pipeline(finished).await.unwrap();
    let events =
        |c: Client, id: i64| async move { c.events(id, 0, 10_000).await.unwrap().events.len() };
    assert!(events(client.clone(), finished).await > 0);
    let live = events(client.clone(), running_one).await;
    server.stop().await;

    // Restarted keeping nothing older than now: the first pass prunes at once.
    let server = start_keeping(Some(Duration::ZERO)).await;
    let client = server.client.clone();
    let gone = common::wait_for_opt(Duration::from_secs(20), || {
        let client = client.clone();
        async move { events(client, finished).await == 0 }
    })
    .await;
    assert!(gone, "the finished pipeline's events were pruned");
    assert_eq!(events(client.clone(), running_one).await, live);
    server.stop().await;
}
