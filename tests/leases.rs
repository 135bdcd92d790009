//! Leases are honest, measured on real processes with server-side timestamps: a dead
//! worker's jobs are claimable again within two heartbeat intervals of the later of its
//! last heartbeat and the server's start; one heartbeat lost to the network costs no lease;
//! a finished result that arrives after its lease expired is kept when no newer attempt
//! started.

mod common;

use assay::domain::{AttemptOutcome, JobState, PipelineState, MICROS_PER_MS};
use common::*;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);
const HEARTBEAT_MS: i64 = 1_000;

fn one_sleep(ms: u64, extra: &str) -> String {
    format!(
        "[pipeline]\nname = \"lease\"\n[[stage]]\nname = \"s\"\nkind = \"sleep\"\nmax_attempts = 5\n{extra}\n[stage.params]\nms = {ms}\nsteps = 1\n"
    )
}

async fn running_on(c: &Cluster, pipeline: i64, worker: &str) {
    wait_for("the job to run", MIN, || async {
        c.jobs(pipeline)
            .await
            .iter()
            .any(|j| j.state == JobState::Running && j.worker_id.as_deref() == Some(worker))
    })
    .await;
}

async fn last_seen(c: &Cluster, worker: &str) -> i64 {
    c.client
        .workers()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == worker)
        .unwrap()
        .last_seen
}

/// When the server recorded the job's first attempt as lost.
async fn lost_at(c: &Cluster, pipeline: i64) -> i64 {
    let job = c.jobs(pipeline).await.remove(0);
    let started = std::time::Instant::now();
    while started.elapsed() < MIN {
        let e = c.client.explain(job.id).await.unwrap();
        let lost = e
            .attempts
            .first()
            .filter(|a| a.outcome == AttemptOutcome::Lost)
            .and_then(|a| a.finished_at);
        if let Some(at) = lost {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the attempt was never recorded lost\n{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_job_is_claimable_again_within_two_heartbeats_of_its_last() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let mut a = c.worker("a", 1, &[]);
    let id = c.submit(&one_sleep(30_000, "")).await;
    running_on(&c, id, "a").await;
    a.kill9();
    let seen = last_seen(&c, "a").await;
    let lost = lost_at(&c, id).await;
    let after_ms = (lost - seen) / MICROS_PER_MS;
    eprintln!(
        "lost {after_ms} ms after the worker's last heartbeat (bound {} ms)",
        2 * HEARTBEAT_MS
    );
    assert!(
        (0..=2 * HEARTBEAT_MS).contains(&after_ms),
        "noticed {after_ms} ms after the last heartbeat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_server_restart_the_bound_counts_from_the_servers_start() {
    let c = Cluster::new();
    let mut server = c.server("1s").await;
    let mut a = c.worker("a", 1, &[]);
    let id = c.submit(&one_sleep(30_000, "")).await;
    running_on(&c, id, "a").await;
    a.kill9();
    let seen = last_seen(&c, "a").await;
    server.kill9();
    // Down for longer than a lease: the lease ran out while nobody could say so.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let _server = c.server("1s").await;
    let started: i64 = c.client.health().await.unwrap()["started_at"]
        .as_i64()
        .unwrap();
    let lost = lost_at(&c, id).await;
    let from = seen.max(started);
    let after_ms = (lost - from) / MICROS_PER_MS;
    eprintln!(
        "lost {after_ms} ms after the server started (it was down {} ms after the last heartbeat; bound {} ms)",
        (started - seen) / MICROS_PER_MS,
        2 * HEARTBEAT_MS
    );
    assert!(
        (0..=2 * HEARTBEAT_MS).contains(&after_ms),
        "noticed {after_ms} ms after the later of the last heartbeat and the server's start"
    );
}

/// One heartbeat reset by the network (`stall`: false), or held without an answer
/// (`stall`: true), and then the job's lease must still hold.
async fn one_heartbeat_lost(stall: bool) {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let proxy = Proxy::start(c.port, 0.0).await;
    let _w = c.worker_at(&proxy.url, "w", "spool-w", 1, &[]);
    let id = c.submit(&one_sleep(6_000, "")).await;
    running_on(&c, id, "w").await;
    // Past the heartbeat that carried the job's progress: the next one is a plain one,
    // which nothing but a retry would follow within the lease.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    if stall {
        proxy.stall_next_heartbeat();
    } else {
        proxy.drop_next_heartbeat();
    }
    wait_for("a heartbeat to be lost", MIN, || async {
        if stall {
            proxy.heartbeat_stalled()
        } else {
            proxy.heartbeat_dropped()
        }
    })
    .await;
    let detail = c.wait_finished(id, MIN).await;
    assert_eq!(detail.pipeline.state, PipelineState::Completed);
    let job = c.jobs(id).await.remove(0);
    let attempts = c.client.explain(job.id).await.unwrap().attempts;
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![AttemptOutcome::Completed],
        "the heartbeat was tried again within the lease\n{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_heartbeat_lost_to_the_network_costs_no_lease() {
    one_heartbeat_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_heartbeat_left_unanswered_costs_no_lease() {
    one_heartbeat_lost(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_delivered_after_its_lease_expired_is_kept() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let proxy = Proxy::start(c.port, 0.0).await;
    let _w = c.worker_at(&proxy.url, "w", "spool-w", 1, &[]);
    // A lost job is claimable again at once; the only worker holds its result and
    // delivers it before it claims anything.
    let id = c.submit(&one_sleep(1_500, "backoff = \"60s\"")).await;
    running_on(&c, id, "w").await;
    // Cut off while the job finishes: its lease expires, its result waits in the spool.
    proxy.block();
    let job = c.jobs(id).await.remove(0);
    wait_for("the lease to expire", MIN, || async {
        c.client
            .explain(job.id)
            .await
            .is_ok_and(|e| e.job.state == JobState::Retrying)
    })
    .await;
    proxy.unblock();
    let detail = c.wait_finished(id, MIN).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{}",
        c.logs()
    );
    let job = c.client.explain(job.id).await.unwrap().job;
    assert_eq!(job.result.as_ref().unwrap()["slept_ms"], 1_500);
    assert_eq!(job.failed_attempts, 0);
    let attempts = c.client.explain(job.id).await.unwrap().attempts;
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![AttemptOutcome::Completed],
        "the finished attempt was kept, not run again"
    );
}
