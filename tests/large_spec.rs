//! The largest spec a server takes, in a test binary of its own: writing a million jobs
//! takes both cores for most of a minute, which would slow the tests beside it past their
//! waits.

mod common;

use common::*;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

/// The largest spec the server takes, a million jobs from 300 bytes: while it is written,
/// the server answers, SIGTERM stops it within its grace, and the half-written pipeline is
/// never seen: the next start discards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_job_spec_is_written_while_the_server_answers_and_sigterm_still_stops_it() {
    let c = Cluster::new();
    let mut server = c.server_with("1s", &[]).await;
    let axes: Vec<String> = (0..6)
        .map(|a| format!("a{a} = [0,1,2,3,4,5,6,7,8,9]"))
        .collect();
    let million = format!(
        "[pipeline]\nname = \"million\"\n[[stage]]\nname = \"m\"\nkind = \"noop\"\nmatrix = {{ {} }}\n",
        axes.join(", ")
    );
    let client = c.client.clone();
    let submitting = tokio::spawn(async move { client.submit(&request(&million)).await });
    wait_for("the million jobs to be written", 5 * MIN, || async {
        c.logs().contains("writing a large pipeline in chunks")
    })
    .await;
    for _ in 0..5 {
        assert!(c.client.health().await.is_ok(), "{}", c.logs());
        assert!(
            c.client.pipelines(10).await.unwrap().is_empty(),
            "seen half written"
        );
    }
    server.sigterm();
    assert!(
        server.wait_exit(Duration::from_secs(30)).is_some(),
        "SIGTERM did not stop the server: {}",
        c.logs()
    );
    assert!(
        submitting.await.unwrap().is_err(),
        "the cut-off submission said it was made"
    );
    let _again = c.server_with("1s", &[]).await;
    assert!(c.client.pipelines(10).await.unwrap().is_empty());
    wait_for("the half-written pipeline to be discarded", MIN, || async {
        c.logs()
            .contains("discarded pipelines whose submission a crash cut short")
    })
    .await;
    c.submit(ONE_NOOP).await;
}
