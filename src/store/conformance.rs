//! The behaviour every [`Store`] backend must have, written once and run against each
//! backend by [`store_conformance_tests!`](crate::store_conformance_tests). Time is passed
//! in explicitly, so nothing here sleeps.

use super::*;
use crate::domain::{FailureClass, MICROS_PER_MS, MICROS_PER_SEC};
use crate::spec;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub const T0: Micros = 1_700_000_000 * MICROS_PER_SEC;

pub fn policy() -> LeasePolicy {
    LeasePolicy {
        heartbeat_ms: 1_000,
        lease_ms: 3_000,
        quarantine_after: 3,
        quarantine_ms: 10_000,
        max_lost_attempts: MAX_LOST_ATTEMPTS,
    }
}

/// A job may be lost only once here, so that tests of what follows a job's death by loss
/// reach it in one step.
fn lose_once() -> LeasePolicy {
    LeasePolicy {
        max_lost_attempts: 1,
        ..policy()
    }
}

pub fn new_pipeline(toml: &str, key: Option<&str>) -> NewPipeline {
    let spec = spec::parse("test.toml", toml).expect("test spec parses");
    let plan = spec.plan().expect("test spec plans");
    NewPipeline {
        source: toml.to_string(),
        idempotency_key: key.map(String::from),
        spec_hash: format!("{:x}", toml.len())
            + &toml
                .chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>(),
        spec,
        plan,
    }
}

fn stage_toml(name: &str, extra: &str) -> String {
    format!("[[stage]]\nname = \"{name}\"\nkind = \"noop\"\n{extra}\n")
}

fn pipeline_toml(stages: &[String]) -> String {
    format!("[pipeline]\nname = \"t\"\n{}", stages.concat())
}

async fn worker(store: &dyn Store, id: &str) {
    store
        .register_worker(
            &WorkerRegistration {
                id: id.into(),
                name: id.into(),
                kinds: vec!["noop".into()],
            },
            T0,
        )
        .await
        .unwrap();
}

async fn claim(store: &dyn Store, worker: &str, limit: i64, now: Micros) -> Vec<ClaimedJob> {
    store
        .claim(
            &ClaimRequest {
                worker_id: worker.into(),
                kinds: vec!["noop".into()],
                limit,
            },
            &policy(),
            now,
        )
        .await
        .unwrap()
}

fn completed(c: &ClaimedJob, worker: &str, result: Value) -> Report {
    Report {
        job_id: c.job_id,
        attempt: c.attempt,
        token: c.token.clone(),
        worker_id: worker.into(),
        outcome: ReportOutcome::Completed {
            result,
            artifacts: vec![],
        },
    }
}

fn failed(c: &ClaimedJob, worker: &str, failure: Failure) -> Report {
    Report {
        job_id: c.job_id,
        attempt: c.attempt,
        token: c.token.clone(),
        worker_id: worker.into(),
        outcome: ReportOutcome::Failed {
            failure,
            artifacts: vec![],
        },
    }
}

/// One heartbeat from `worker` for the attempt `c`, having waited `waited_ms` for providers.
async fn beat(
    store: &dyn Store,
    worker: &str,
    c: &ClaimedJob,
    now: Micros,
    waited_ms: i64,
) -> HeartbeatReply {
    store
        .heartbeat(
            &Heartbeat {
                worker_id: worker.into(),
                leases: vec![HeldLease {
                    job_id: c.job_id,
                    token: c.token.clone(),
                    progress: None,
                    finished: false,
                    waited_ms,
                }],
            },
            &policy(),
            now,
        )
        .await
        .unwrap()
}

async fn report(store: &dyn Store, reports: Vec<Report>, now: Micros) -> Vec<ReportAck> {
    store.report(&reports, &policy(), now).await.unwrap()
}

async fn job_by_key(store: &dyn Store, pipeline: i64, key: &str) -> Job {
    store
        .jobs(&JobFilter {
            pipeline_id: Some(pipeline),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.key == key)
        .unwrap_or_else(|| panic!("no job {key}"))
}

pub async fn idempotent_pipeline_creation(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "items = [1, 2, 3]")]);
    let new = new_pipeline(&toml, Some("key-1"));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, new) = (store.clone(), new.clone());
        tasks.push(tokio::spawn(async move {
            store.create_pipeline(&new, T0).await.unwrap()
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let (id, fresh) = t.await.unwrap();
        ids.insert(id);
        created += fresh as i32;
    }
    assert_eq!(
        ids.len(),
        1,
        "concurrent submissions made several pipelines"
    );
    assert_eq!(created, 1);
    let id = *ids.iter().next().unwrap();
    assert_eq!(store.pipeline(id).await.unwrap().unwrap().counts.total(), 3);
    assert_eq!(store.pipelines(100).await.unwrap().len(), 1);

    let other = new_pipeline(&pipeline_toml(&[stage_toml("b", "")]), Some("key-1"));
    match store.create_pipeline(&other, T0).await {
        Err(StoreError::IdempotencyConflict(k)) => assert_eq!(k, "key-1"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let (second, fresh) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    assert!(fresh && second != id);
}

pub async fn duplicate_job_keys_are_refused_atomically(store: Arc<dyn Store>) {
    let mut new = new_pipeline(&pipeline_toml(&[stage_toml("a", "items = [1, 2]")]), None);
    new.plan.jobs[1].key = new.plan.jobs[0].key.clone();
    assert!(store.create_pipeline(&new, T0).await.is_err());
    assert!(
        store.pipelines(10).await.unwrap().is_empty(),
        "a half-created pipeline was left"
    );
}

pub async fn claims_are_exclusive(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml(
        "a",
        "items = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]",
    )]);
    store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    for w in ["w1", "w2", "w3", "w4"] {
        worker(&*store, w).await;
    }
    let mut tasks = Vec::new();
    for w in ["w1", "w2", "w3", "w4"] {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = claim(&*store, w, 3, T0).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|c| c.job_id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 20, "every job claimed once");
    assert_eq!(unique.len(), 20, "no job claimed twice");
    let noop = ["noop".to_string()];
    assert!(!store.has_claimable(&noop, T0).await.unwrap(), "all taken");
    store
        .create_pipeline(
            &new_pipeline(&pipeline_toml(&[stage_toml("b", "")]), None),
            T0,
        )
        .await
        .unwrap();
    assert!(store.has_claimable(&noop, T0).await.unwrap());
    assert!(!store
        .has_claimable(&["sleep".to_string()], T0)
        .await
        .unwrap());
}

pub async fn fencing_rejects_late_reports(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "max_attempts = 5")]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w1").await;
    worker(&*store, "w2").await;
    let first = claim(&*store, "w1", 1, T0).await.pop().unwrap();
    // w1 goes silent: its lease expires and the job becomes claimable again.
    let later = T0 + 4 * MICROS_PER_SEC;
    let stats = store.reconcile(&policy(), later).await.unwrap();
    assert_eq!(stats.leases_expired, 1);
    let job = store.job(first.job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Retrying);
    let second = claim(&*store, "w2", 1, later + 10 * MICROS_PER_SEC)
        .await
        .pop()
        .unwrap();
    assert_eq!(second.job_id, first.job_id);
    assert_ne!(second.token, first.token);
    assert_eq!(second.attempt, 2);

    let late = report(
        &*store,
        vec![completed(&first, "w1", json!({"by": "w1"}))],
        later + 11 * MICROS_PER_SEC,
    )
    .await;
    assert_eq!(late, vec![ReportAck::Superseded]);
    let hb = store
        .heartbeat(
            &Heartbeat {
                worker_id: "w1".into(),
                leases: vec![HeldLease {
                    job_id: first.job_id,
                    token: first.token.clone(),
                    progress: None,
                    finished: false,
                    waited_ms: 0,
                }],
            },
            &policy(),
            later + 11 * MICROS_PER_SEC,
        )
        .await
        .unwrap();
    assert_eq!(
        hb.stop,
        vec![StopOrder {
            job_id: first.job_id,
            token: first.token.clone(),
            reason: StopReason::LeaseLost
        }]
    );

    let ok = report(
        &*store,
        vec![completed(&second, "w2", json!({"by": "w2"}))],
        later + 12 * MICROS_PER_SEC,
    )
    .await;
    assert_eq!(ok, vec![ReportAck::Accepted]);
    // The same report again (a retried upload) is harmless and acknowledged.
    let again = report(
        &*store,
        vec![completed(&second, "w2", json!({"by": "w2"}))],
        later + 13 * MICROS_PER_SEC,
    )
    .await;
    assert_eq!(again, vec![ReportAck::Accepted]);
    let job = store.job(first.job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.result, Some(json!({"by": "w2"})));
    let attempts = store.attempts(first.job_id).await.unwrap();
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![AttemptOutcome::Superseded, AttemptOutcome::Completed]
    );
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(
        p.state,
        PipelineState::Completed,
        "finalized by the last report, no reconcile needed"
    );
}

pub async fn downstream_jobs_stream(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[
        stage_toml("gen", "items = [\"a\", \"b\"]"),
        stage_toml(
            "check",
            "after = [\"gen\"]\nmatrix = { item = [\"a\", \"b\"], tool = [\"x\", \"y\"] }",
        ),
        stage_toml("sum", "after = [\"check\"]\nwait = \"stage\""),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let gens = claim(&*store, "w", 10, T0).await;
    assert_eq!(gens.len(), 2, "only the generate jobs are ready");
    let a = gens.iter().find(|c| c.key == "gen[item=a]").unwrap();
    report(&*store, vec![completed(a, "w", json!({}))], T0 + 1).await;
    let next = claim(&*store, "w", 10, T0 + 2).await;
    let keys: HashSet<_> = next.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        keys,
        HashSet::from(["check[item=a,tool=x]", "check[item=a,tool=y]"])
    );
    let sum = job_by_key(&*store, pid, "sum").await;
    assert_eq!(sum.state, JobState::Waiting);
    assert_eq!(store.dependencies(sum.id, 100).await.unwrap().len(), 4);
    assert_eq!(store.dependencies(sum.id, 3).await.unwrap().len(), 3);
    let (first, total) = store.unfinished_upstream(sum.id, 2).await.unwrap();
    assert_eq!(total, 4);
    assert_eq!(first, vec!["check[item=a,tool=x]", "check[item=a,tool=y]"]);
    let check = next
        .iter()
        .find(|c| c.key == "check[item=a,tool=x]")
        .unwrap();
    report(&*store, vec![completed(check, "w", json!({}))], T0 + 3).await;
    let (first, total) = store.unfinished_upstream(sum.id, 10).await.unwrap();
    assert_eq!(total, 3, "a finished upstream job no longer counts");
    assert_eq!(first.len(), 3);
    assert!(!first.contains(&"check[item=a,tool=x]".to_string()));
}

pub async fn retries_back_off_then_die(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[
        stage_toml(
            "a",
            "max_attempts = 2\nbackoff = \"10s\"\nbackoff_max = \"10s\"",
        ),
        stage_toml("b", "after = [\"a\"]"),
        stage_toml("c", "after = [\"b\"]"),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let first = claim(&*store, "w", 1, T0).await.pop().unwrap();
    report(
        &*store,
        vec![failed(
            &first,
            "w",
            Failure::retryable("flaky", "try again"),
        )],
        T0,
    )
    .await;
    let job = store.job(first.job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Retrying);
    assert!(job.run_after >= T0 + 5 * MICROS_PER_SEC && job.run_after <= T0 + 10 * MICROS_PER_SEC);
    assert!(
        claim(&*store, "w", 1, T0 + MICROS_PER_SEC).await.is_empty(),
        "claimed during backoff"
    );
    assert_eq!(store.next_retry_at().await.unwrap(), Some(job.run_after));
    let second = claim(&*store, "w", 1, job.run_after).await.pop().unwrap();
    report(
        &*store,
        vec![failed(&second, "w", Failure::retryable("flaky", "again"))],
        job.run_after,
    )
    .await;
    let job = store.job(first.job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.last_error.unwrap().code, "flaky");
    let b = job_by_key(&*store, pid, "b").await;
    let c = job_by_key(&*store, pid, "c").await;
    assert_eq!((b.state, c.state), (JobState::Skipped, JobState::Skipped));
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::Failed);

    // A person retries the dead job: it and its skipped dependents come back.
    let revived = store
        .retry_dead(&RetryTarget::Pipeline(pid), T0 + 100 * MICROS_PER_SEC)
        .await
        .unwrap();
    assert_eq!(revived, 1);
    assert_eq!(
        store.job(first.job_id).await.unwrap().unwrap().state,
        JobState::Available
    );
    assert_eq!(job_by_key(&*store, pid, "c").await.state, JobState::Waiting);
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Running
    );
    let third = claim(&*store, "w", 1, T0 + 100 * MICROS_PER_SEC)
        .await
        .pop()
        .unwrap();
    assert_eq!(
        third.attempt, 3,
        "attempt numbers keep counting across a manual retry"
    );
}

pub async fn permanent_failures_are_not_retried(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "max_attempts = 5\nitems = [1, 2]")]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let claimed = claim(&*store, "w", 2, T0).await;
    report(
        &*store,
        vec![
            failed(
                &claimed[0],
                "w",
                Failure::permanent("bad_input", "no such template"),
            ),
            completed(&claimed[1], "w", json!(1)),
        ],
        T0,
    )
    .await;
    let job = store.job(claimed[0].job_id).await.unwrap().unwrap();
    assert_eq!((job.state, job.failed_attempts), (JobState::Dead, 1));
    assert_eq!(job.last_error.unwrap().class, FailureClass::Permanent);
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::PartialSuccess);
}

pub async fn breaker_fails_the_rest_fast(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml(
        "a",
        "breaker = 2\nmax_attempts = 9\nitems = [1,2,3,4,5,6]\nconcurrency = 2",
    )]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let claimed = claim(&*store, "w", 10, T0).await;
    assert_eq!(claimed.len(), 2, "the concurrency limit holds");
    report(
        &*store,
        claimed
            .iter()
            .map(|c| failed(c, "w", Failure::retryable("down", "service down")))
            .collect(),
        T0,
    )
    .await;
    let jobs = store
        .jobs(&JobFilter {
            pipeline_id: Some(pid),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(jobs.iter().all(|j| j.state == JobState::Dead), "{jobs:#?}");
    let tripped = jobs
        .iter()
        .filter(|j| j.last_error.as_ref().unwrap().code == "breaker_open")
        .count();
    assert!(tripped >= 4, "untried jobs fail with the breaker's reason");
    let stages = store.stages(pid).await.unwrap();
    assert!(stages[0].breaker_open);
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Failed
    );
    let events = store.events(Some(pid), 0, 1_000).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "breaker_opened"));
}

/// A model out of credits or a reached budget says nothing about the stage's other jobs or
/// the worker: such failures open no breaker and quarantine no worker.
pub async fn external_failures_open_no_breaker_and_quarantine_no_worker(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml(
        "a",
        "breaker = 2\nmax_attempts = 9\nbackoff = \"1ms\"\nitems = [1,2,3,4,5,6,7,8]",
    )]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let mut now = T0;
    // More external failures in a row than the breaker (2) and the quarantine (3) allow.
    for round in 0..4 {
        let claimed = claim(&*store, "w", 2, now).await;
        assert_eq!(
            claimed.len(),
            2,
            "round {round}: the worker still gets work"
        );
        let failure = if round == 0 {
            Failure::permanent("quota_exhausted", "no credits left").external()
        } else {
            Failure::retryable("rate_limited", "429").external()
        };
        report(
            &*store,
            claimed
                .iter()
                .map(|c| failed(c, "w", failure.clone()))
                .collect(),
            now,
        )
        .await;
        now += 10 * MICROS_PER_SEC;
    }
    let stages = store.stages(pid).await.unwrap();
    assert!(!stages[0].breaker_open, "{stages:?}");
    let workers = store.workers().await.unwrap();
    assert_eq!(workers[0].quarantined_until, None, "{workers:?}");
    let jobs = store
        .jobs(&JobFilter {
            pipeline_id: Some(pid),
            ..Default::default()
        })
        .await
        .unwrap();
    let dead: Vec<_> = jobs.iter().filter(|j| j.state == JobState::Dead).collect();
    assert_eq!(dead.len(), 2, "only the permanently failed jobs are dead");
    assert!(dead
        .iter()
        .all(|j| j.last_error.as_ref().unwrap().code == "quota_exhausted"));
}

pub async fn failing_workers_are_quarantined(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml(
        "a",
        "breaker = 0\nmax_attempts = 20\nbackoff = \"1ms\"\nitems = [1,2,3,4,5]",
    )]);
    store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "bad").await;
    let mut now = T0;
    for _ in 0..3 {
        let c = claim(&*store, "bad", 1, now).await.pop().unwrap();
        report(
            &*store,
            vec![failed(&c, "bad", Failure::retryable("oom", "crashed"))],
            now,
        )
        .await;
        now += MICROS_PER_SEC;
    }
    assert!(
        claim(&*store, "bad", 1, now).await.is_empty(),
        "a quarantined worker gets no work"
    );
    let w = store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == "bad")
        .unwrap();
    assert!(w.quarantined_until.unwrap() > now);
    assert_eq!(
        claim(&*store, "bad", 1, now + 11 * MICROS_PER_SEC)
            .await
            .len(),
        1,
        "the cool-down ends"
    );
}

/// Time an attempt spends waiting for a model provider's slot, as its heartbeats report
/// it, moves its deadline out by as much.
pub async fn waiting_for_a_provider_extends_the_attempt_deadline(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("gen", "timeout = \"5s\"\nmax_attempts = 1")]);
    store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let c = claim(&*store, "w", 1, T0).await.pop().unwrap();
    let hb = |now, waited_ms| beat(&*store, "w", &c, now, waited_ms);
    // Waited 4 s by 3 s, 6 s by 7 s (reported again: counted once).
    hb(T0 + 3 * MICROS_PER_SEC, 4_000).await;
    hb(T0 + 7 * MICROS_PER_SEC, 6_000).await;
    hb(T0 + 9 * MICROS_PER_SEC, 6_000).await;
    // 5 s + 6 s waited + 3 s of grace = 14 s: at 13.5 s the attempt still runs.
    hb(T0 + 12 * MICROS_PER_SEC, 6_000).await;
    let stats = store
        .reconcile(&policy(), T0 + 13_500 * MICROS_PER_MS)
        .await
        .unwrap();
    assert_eq!(stats.attempts_timed_out, 0, "{stats:?}");
    hb(T0 + 14 * MICROS_PER_SEC, 6_000).await;
    let stats = store
        .reconcile(&policy(), T0 + 14_500 * MICROS_PER_MS)
        .await
        .unwrap();
    assert_eq!(stats.attempts_timed_out, 1, "{stats:?}");
}

pub async fn deadlines_are_enforced(store: Arc<dyn Store>) {
    let toml = "[pipeline]\nname = \"t\"\ndeadline = \"60s\"\n".to_string()
        + &stage_toml("slow", "timeout = \"5s\"\nmax_attempts = 1")
        + &stage_toml("later", "after = [\"slow\"]");
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let c = claim(&*store, "w", 1, T0).await.pop().unwrap();
    assert_eq!(c.timeout_ms, 5_000);
    // The worker keeps heartbeating but never finishes: the server takes the attempt back.
    let hb = |now| beat(&*store, "w", &c, now, 0);
    assert!(hb(T0 + 2 * MICROS_PER_SEC).await.stop.is_empty());
    hb(T0 + 7 * MICROS_PER_SEC).await;
    // Past the 5 s timeout plus the grace of one lease (3 s), with the lease still fresh.
    let stats = store
        .reconcile(&policy(), T0 + 8_500 * MICROS_PER_MS)
        .await
        .unwrap();
    assert_eq!(stats.attempts_timed_out, 1, "{stats:?}");
    let job = store.job(c.job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(
        store.attempts(c.job_id).await.unwrap()[0].outcome,
        AttemptOutcome::TimedOut
    );
    assert_eq!(
        hb(T0 + 9 * MICROS_PER_SEC).await.stop[0].reason,
        StopReason::LeaseLost
    );
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Failed
    );

    // A pipeline deadline ends everything that is left.
    let toml = "[pipeline]\nname = \"t2\"\ndeadline = \"10s\"\n".to_string()
        + &stage_toml("a", "items = [1, 2]");
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    let c = claim(&*store, "w", 1, T0).await.pop().unwrap();
    store
        .reconcile(&policy(), T0 + 11 * MICROS_PER_SEC)
        .await
        .unwrap();
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::Failed);
    assert_eq!(p.counts.dead, 2);
    assert_eq!(
        report(
            &*store,
            vec![completed(&c, "w", json!({}))],
            T0 + 12 * MICROS_PER_SEC
        )
        .await,
        vec![ReportAck::Superseded]
    );
}

pub async fn cancellation_reaches_running_jobs(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[
        stage_toml("a", "items = [1, 2, 3]"),
        stage_toml("b", "after = [\"a\"]"),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let c = claim(&*store, "w", 1, T0).await.pop().unwrap();
    store.cancel_pipeline(pid, T0 + 1).await.unwrap();
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::Running, "one job still runs");
    assert_eq!(p.counts.cancelled + p.counts.skipped, 3);
    let hb = store
        .heartbeat(
            &Heartbeat {
                worker_id: "w".into(),
                leases: vec![HeldLease {
                    job_id: c.job_id,
                    token: c.token.clone(),
                    progress: None,
                    finished: false,
                    waited_ms: 0,
                }],
            },
            &policy(),
            T0 + 2,
        )
        .await
        .unwrap();
    assert_eq!(
        hb.stop,
        vec![StopOrder {
            job_id: c.job_id,
            token: c.token.clone(),
            reason: StopReason::Cancelled
        }]
    );
    assert!(claim(&*store, "w", 5, T0 + 3).await.is_empty());
    let ack = store
        .report(
            &[Report {
                job_id: c.job_id,
                attempt: c.attempt,
                token: c.token.clone(),
                worker_id: "w".into(),
                outcome: ReportOutcome::Cancelled,
            }],
            &policy(),
            T0 + 4,
        )
        .await
        .unwrap();
    assert_eq!(ack, vec![ReportAck::Accepted]);
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::Cancelled);
    assert!(store.cancel_pipeline(9_999, T0).await.is_err());
}

pub async fn released_jobs_do_not_count_as_failures(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "max_attempts = 1")]);
    store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let c = claim(&*store, "w", 1, T0).await.pop().unwrap();
    store
        .report(
            &[Report {
                job_id: c.job_id,
                attempt: c.attempt,
                token: c.token.clone(),
                worker_id: "w".into(),
                outcome: ReportOutcome::Released,
            }],
            &policy(),
            T0 + 1,
        )
        .await
        .unwrap();
    let again = claim(&*store, "w", 1, T0 + 2)
        .await
        .pop()
        .expect("released job is claimable at once");
    assert_eq!(again.attempt, 2);
    report(&*store, vec![completed(&again, "w", json!({}))], T0 + 3).await;
    assert_eq!(
        store.job(c.job_id).await.unwrap().unwrap().state,
        JobState::Completed
    );
}

pub async fn events_resume_by_id(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "items = [1, 2]")]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let claimed = claim(&*store, "w", 2, T0).await;
    let progress = Progress {
        step: "halfway".into(),
        percent: Some(50.0),
        message: None,
    };
    store
        .heartbeat(
            &Heartbeat {
                worker_id: "w".into(),
                leases: vec![HeldLease {
                    job_id: claimed[0].job_id,
                    token: claimed[0].token.clone(),
                    progress: Some(progress.clone()),
                    finished: false,
                    waited_ms: 0,
                }],
            },
            &policy(),
            T0 + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .job(claimed[0].job_id)
            .await
            .unwrap()
            .unwrap()
            .progress,
        Some(progress)
    );
    report(
        &*store,
        claimed
            .iter()
            .map(|c| completed(c, "w", json!({})))
            .collect(),
        T0 + 2,
    )
    .await;
    let all = store.events(Some(pid), 0, 1_000).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    let kinds: Vec<_> = all.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"pipeline_created"));
    assert_eq!(kinds.last(), Some(&"pipeline_finished"));
    assert!(kinds.contains(&"job_progress"));
    let resumed = store.events(Some(pid), all[2].id, 1_000).await.unwrap();
    assert_eq!(resumed, all[3..].to_vec());
}

pub async fn reconciler_finalizes_stragglers(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "items = [1, 2]\nmax_attempts = 1")]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let claimed = claim(&*store, "w", 2, T0).await;
    report(&*store, vec![completed(&claimed[0], "w", json!({}))], T0).await;
    // The other worker dies: the lease expires, the job may not be lost again, the
    // pipeline ends.
    let stats = store
        .reconcile(&lose_once(), T0 + 10 * MICROS_PER_SEC)
        .await
        .unwrap();
    assert_eq!((stats.leases_expired, stats.pipelines_finalized), (1, 1));
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::PartialSuccess);
    assert!(p.finished_at.is_some());
    let job = store.job(claimed[1].job_id).await.unwrap().unwrap();
    let error = job.last_error.unwrap();
    assert_eq!(error.code, "worker_lost");
    assert!(error.message.contains("lost 1 times"), "{}", error.message);
    assert_eq!(
        store.attempts(job.id).await.unwrap()[0].outcome,
        AttemptOutcome::Lost
    );
}

pub async fn artifacts_are_recorded(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "")]);
    store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let c = claim(&*store, "w", 1, T0).await.pop().unwrap();
    let art = ArtifactRef {
        name: "out.json".into(),
        sha256: "ab".repeat(32),
        size: 12,
    };
    store
        .report(
            &[Report {
                job_id: c.job_id,
                attempt: c.attempt,
                token: c.token,
                worker_id: "w".into(),
                outcome: ReportOutcome::Completed {
                    result: json!({}),
                    artifacts: vec![art.clone()],
                },
            }],
            &policy(),
            T0 + MICROS_PER_MS,
        )
        .await
        .unwrap();
    let stored = store.artifacts(c.job_id).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].name.as_str(), stored[0].size, stored[0].attempt),
        ("out.json", 12, 1)
    );
    // Blob collection keeps what an artifact names, and only that.
    let unnamed = "cd".repeat(32);
    let referenced = store
        .referenced_blobs(&["ab".repeat(32), unnamed.clone()])
        .await
        .unwrap();
    assert_eq!(
        referenced.into_iter().collect::<Vec<_>>(),
        vec!["ab".repeat(32)]
    );
    assert!(store.referenced_blobs(&[]).await.unwrap().is_empty());
}

pub async fn retry_revives_only_what_can_run(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[
        stage_toml("a", "max_attempts = 1"),
        stage_toml("b", "max_attempts = 1"),
        stage_toml("c", "after = [\"a\", \"b\"]"),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let ab = claim(&*store, "w", 2, T0).await;
    report(
        &*store,
        ab.iter()
            .map(|c| failed(c, "w", Failure::permanent("bad", "no")))
            .collect(),
        T0,
    )
    .await;
    assert_eq!(job_by_key(&*store, pid, "c").await.state, JobState::Skipped);
    let a = job_by_key(&*store, pid, "a").await;
    // Retrying only `a`: `c` still waits on the dead `b`, so it must not be left waiting forever.
    store
        .retry_dead(&RetryTarget::Job(a.id), T0 + 1)
        .await
        .unwrap();
    assert_eq!(job_by_key(&*store, pid, "c").await.state, JobState::Skipped);
    let again = claim(&*store, "w", 5, T0 + 2).await;
    assert_eq!(again.len(), 1);
    report(&*store, vec![completed(&again[0], "w", json!({}))], T0 + 3).await;
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::PartialSuccess
    );
    // Retrying `b` as well brings `c` back, and everything completes.
    store
        .retry_dead(&RetryTarget::Pipeline(pid), T0 + 4)
        .await
        .unwrap();
    assert_eq!(job_by_key(&*store, pid, "c").await.state, JobState::Waiting);
    let b = claim(&*store, "w", 5, T0 + 5).await;
    assert_eq!(b.len(), 1);
    report(&*store, vec![completed(&b[0], "w", json!({}))], T0 + 6).await;
    let c = claim(&*store, "w", 5, T0 + 7).await;
    assert_eq!(c.len(), 1, "c runs once both upstream jobs completed");
    report(&*store, vec![completed(&c[0], "w", json!({}))], T0 + 8).await;
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Completed
    );
    let events = store.events(Some(pid), 0, 1_000).await.unwrap();
    let states: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "job_state" && e.data["key"] == "a")
        .map(|e| e.data["state"].as_str().unwrap().to_string())
        .collect();
    assert!(
        states.windows(2).any(|w| w == ["dead", "available"]),
        "the retry announces the real new state: {states:?}"
    );
}

pub async fn cancellation_survives_release_failure_and_loss(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "items = [1, 2, 3]\nmax_attempts = 5")]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let running = claim(&*store, "w", 3, T0).await;
    for c in &running {
        store.cancel_job(c.job_id, T0 + 1).await.unwrap();
    }
    let released = Report {
        job_id: running[0].job_id,
        attempt: 1,
        token: running[0].token.clone(),
        worker_id: "w".into(),
        outcome: ReportOutcome::Released,
    };
    store.report(&[released], &policy(), T0 + 2).await.unwrap();
    report(
        &*store,
        vec![failed(&running[1], "w", Failure::retryable("flaky", "x"))],
        T0 + 2,
    )
    .await;
    // The third job's worker vanishes: its lease expires.
    store
        .reconcile(&policy(), T0 + 10 * MICROS_PER_SEC)
        .await
        .unwrap();
    for c in &running {
        assert_eq!(
            store.job(c.job_id).await.unwrap().unwrap().state,
            JobState::Cancelled,
            "job {} came back after cancel",
            c.key
        );
    }
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Failed
    );
}

pub async fn lost_workers_do_not_open_the_breaker(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml(
        "a",
        "items = [1, 2, 3, 4]\nbreaker = 2\nmax_attempts = 3",
    )]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    assert_eq!(claim(&*store, "w", 3, T0).await.len(), 3);
    let stats = store
        .reconcile(&policy(), T0 + 10 * MICROS_PER_SEC)
        .await
        .unwrap();
    assert_eq!(stats.leases_expired, 3);
    let stages = store.stages(pid).await.unwrap();
    assert!(
        !stages[0].breaker_open,
        "a crashed worker is not the stage's fault"
    );
    assert_eq!(stages[0].counts.dead, 0);
}

/// A worker that claims every job and never heartbeats (the attack that killed 296 of 300
/// jobs of someone else's pipeline): each job loses one attempt that does not count against
/// it, the worker and every worker id of its token are quarantined, and an honest worker
/// then does all the work.
pub async fn a_worker_that_claims_and_vanishes_kills_no_job(store: Arc<dyn Store>) {
    use crate::domain::Scope;
    let toml = pipeline_toml(&[stage_toml(
        "a",
        "matrix = { n = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }\nmax_attempts = 1\nbreaker = 3",
    )]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    let rogue_token = store
        .create_token("rogue", "ee55", &[Scope::Worker], T0)
        .await
        .unwrap();
    for id in ["rogue", "rogue-2"] {
        worker(&*store, id).await;
        store
            .bind_worker(id, rogue_token, &ids_policy(10), T0)
            .await
            .unwrap();
    }
    assert_eq!(claim(&*store, "rogue", 100, T0).await.len(), 10);
    let now = T0 + 10 * MICROS_PER_SEC;
    let policy = policy();
    let stats = store.reconcile(&policy, now).await.unwrap();
    assert_eq!(stats.leases_expired, 10);
    let stages = store.stages(pid).await.unwrap();
    assert_eq!(stages[0].counts.dead, 0, "no job is dead of it");
    assert!(!stages[0].breaker_open);
    for id in ["rogue", "rogue-2"] {
        assert!(
            claim(&*store, id, 100, now).await.is_empty(),
            "{id}: quarantined with its token"
        );
    }
    worker(&*store, "honest").await;
    let jobs = claim(&*store, "honest", 100, now).await;
    assert_eq!(jobs.len(), 10, "every job runs again at once");
    assert!(jobs.iter().all(|j| j.attempt == 2));
    report(
        &*store,
        jobs.iter()
            .map(|j| completed(j, "honest", json!({})))
            .collect(),
        now,
    )
    .await;
    store.reconcile(&policy, now + 1).await.unwrap();
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::Completed);
    // The quarantine ends.
    let later = now + (policy.quarantine_ms + 1) * MICROS_PER_MS;
    let toml2 = pipeline_toml(&[stage_toml("b", "")]);
    store
        .create_pipeline(&new_pipeline(&toml2, None), later)
        .await
        .unwrap();
    assert_eq!(claim(&*store, "rogue-2", 1, later).await.len(), 1);
}

fn llm_call(job_id: i64, model: &str, result: CallResult) -> LlmCall {
    LlmCall {
        call_id: uuid::Uuid::new_v4().to_string(),
        job_id,
        attempt: 1,
        provider: "openrouter".into(),
        model: model.into(),
        model_resolved: (result != CallResult::Failed).then(|| format!("{model}-2025")),
        result,
        error: (result == CallResult::Failed).then(|| "rate_limited".to_string()),
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_usd: 0.0,
        saved_usd: 0.0,
    }
}

fn paid(job_id: i64, model: &str, prompt: i64, completion: i64, cost: f64) -> LlmCall {
    LlmCall {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cost_usd: cost,
        ..llm_call(job_id, model, CallResult::Paid)
    }
}

fn cached(job_id: i64, model: &str, saved: f64) -> LlmCall {
    LlmCall {
        saved_usd: saved,
        ..llm_call(job_id, model, CallResult::Cached)
    }
}

fn sum<'a>(totals: impl IntoIterator<Item = &'a UsageTotals>) -> UsageTotals {
    let mut sum = UsageTotals::default();
    for t in totals {
        sum.add(t);
    }
    sum
}

pub async fn llm_usage_adds_up_per_model_and_per_job(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "items = [1, 2, 3]")]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    let (other, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    let empty = store.pipeline_usage(pid).await.unwrap();
    assert_eq!(empty.pipeline_id, pid);
    assert_eq!(empty.total, UsageTotals::default());
    assert!(empty.by_model.is_empty() && empty.by_job.is_empty());

    let j1 = job_by_key(&*store, pid, "a[item=1]").await.id;
    let j2 = job_by_key(&*store, pid, "a[item=2]").await.id;
    let elsewhere = job_by_key(&*store, other, "a[item=1]").await.id;
    // Amounts are exact in binary, so sums compare equal whatever their order.
    let calls = [
        paid(j1, "small", 100, 50, 0.5),
        cached(j1, "small", 0.25),
        llm_call(j1, "large", CallResult::Failed),
        paid(j2, "large", 200, 100, 1.0),
        paid(j2, "small", 10, 5, 0.125),
        cached(j2, "large", 0.5),
        // Another pipeline's spending is not this one's.
        paid(elsewhere, "small", 1_000, 1_000, 8.0),
    ];
    for (i, call) in calls.iter().enumerate() {
        store.record_llm_call(call, T0 + i as Micros).await.unwrap();
    }
    // A report delivered twice (its answer was lost) counts once.
    assert!(!store.record_llm_call(&calls[0], T0 + 10).await.unwrap());

    let usage = store.pipeline_usage(pid).await.unwrap();
    assert_eq!(usage.pipeline_id, pid);
    assert_eq!(
        usage.total,
        UsageTotals {
            calls: 6,
            paid_calls: 3,
            cached_calls: 2,
            failed_calls: 1,
            prompt_tokens: 310,
            completion_tokens: 155,
            cost_usd: 1.625,
            saved_usd: 0.75,
        }
    );
    let models: Vec<_> = usage
        .by_model
        .iter()
        .map(|m| (m.provider.as_str(), m.model.as_str()))
        .collect();
    assert_eq!(
        models,
        vec![("openrouter", "large"), ("openrouter", "small")]
    );
    assert_eq!(
        usage.by_model[0].totals,
        UsageTotals {
            calls: 3,
            paid_calls: 1,
            cached_calls: 1,
            failed_calls: 1,
            prompt_tokens: 200,
            completion_tokens: 100,
            cost_usd: 1.0,
            saved_usd: 0.5,
        }
    );
    assert_eq!(
        usage.by_model[1].totals,
        UsageTotals {
            calls: 3,
            paid_calls: 2,
            cached_calls: 1,
            failed_calls: 0,
            prompt_tokens: 110,
            completion_tokens: 55,
            cost_usd: 0.625,
            saved_usd: 0.25,
        }
    );
    let jobs: Vec<_> = usage
        .by_job
        .iter()
        .map(|j| (j.job_id, j.key.as_str()))
        .collect();
    assert_eq!(
        jobs,
        vec![(j1, "a[item=1]"), (j2, "a[item=2]")],
        "only jobs that made calls, with their keys"
    );
    assert_eq!(
        usage.by_job[0].totals,
        UsageTotals {
            calls: 3,
            paid_calls: 1,
            cached_calls: 1,
            failed_calls: 1,
            prompt_tokens: 100,
            completion_tokens: 50,
            cost_usd: 0.5,
            saved_usd: 0.25,
        }
    );
    assert_eq!(
        usage.by_job[1].totals,
        UsageTotals {
            calls: 3,
            paid_calls: 2,
            cached_calls: 1,
            failed_calls: 0,
            prompt_tokens: 210,
            completion_tokens: 105,
            cost_usd: 1.125,
            saved_usd: 0.5,
        }
    );
    assert_eq!(sum(usage.by_model.iter().map(|m| &m.totals)), usage.total);
    assert_eq!(sum(usage.by_job.iter().map(|j| &j.totals)), usage.total);

    let theirs = store.pipeline_usage(other).await.unwrap();
    assert_eq!(theirs.total.calls, 1);
    assert_eq!(theirs.total.cost_usd, 8.0);
    assert_eq!(theirs.by_job.len(), 1);
    assert_eq!(theirs.by_job[0].job_id, elsewhere);

    match store.pipeline_usage(other + 1_000).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected not found for an unknown pipeline, got {other:?}"),
    }
    match store
        .record_llm_call(&paid(elsewhere + 1_000, "small", 1, 1, 1.0), T0 + 100)
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected not found for an unknown job, got {other:?}"),
    }
    assert_eq!(
        store.pipeline_usage(pid).await.unwrap(),
        usage,
        "a refused call changes nothing"
    );
}

pub async fn llm_budget_is_kept_with_the_pipeline(store: Arc<dyn Store>) {
    let stage = stage_toml("a", "");
    let with =
        format!("[pipeline]\nname = \"t\"\nbudget = {{ usd = 2.5, tokens = 1000 }}\n{stage}");
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&with, None), T0)
        .await
        .unwrap();
    let usd_only = format!("[pipeline]\nname = \"t\"\nbudget = {{ usd = 0.01 }}\n{stage}");
    let (usd_pid, _) = store
        .create_pipeline(&new_pipeline(&usd_only, None), T0)
        .await
        .unwrap();
    let (none_pid, _) = store
        .create_pipeline(&new_pipeline(&pipeline_toml(&[stage]), None), T0)
        .await
        .unwrap();

    assert_eq!(
        store.pipeline_usage(pid).await.unwrap().budget,
        Some(Budget {
            usd: Some(2.5),
            tokens: Some(1000),
        })
    );
    assert_eq!(
        store.pipeline_usage(usd_pid).await.unwrap().budget,
        Some(Budget {
            usd: Some(0.01),
            tokens: None,
        })
    );
    assert_eq!(store.pipeline_usage(none_pid).await.unwrap().budget, None);

    // Spending does not change the budget.
    let job = job_by_key(&*store, pid, "a").await.id;
    store
        .record_llm_call(&paid(job, "small", 600, 400, 3.0), T0 + 1)
        .await
        .unwrap();
    let usage = store.pipeline_usage(pid).await.unwrap();
    assert_eq!(usage.budget.unwrap().usd, Some(2.5));
    assert!(usage.budget.unwrap().reached(&usage.total).is_some());
}

pub async fn llm_answers_are_cached_first_one_wins(store: Arc<dyn Store>) {
    let key = "ab".repeat(32);
    let other = "cd".repeat(32);
    assert_eq!(store.cached_answer(&key).await.unwrap(), None);

    let answer = json!({
        "model": "small-2025",
        "content": "fn main() {}\n",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.001},
        "finish_reason": "stop",
        "nested": [1, null, "ü"],
    });
    store.cache_answer(&key, &answer, T0).await.unwrap();
    assert_eq!(
        store.cached_answer(&key).await.unwrap(),
        Some(answer.clone())
    );
    assert_eq!(
        store.cached_answer(&other).await.unwrap(),
        None,
        "another key has no answer"
    );

    store
        .cache_answer(&key, &json!({"content": "a later answer"}), T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        store.cached_answer(&key).await.unwrap(),
        Some(answer),
        "the first answer stored under a key wins"
    );
}

/// What the dashboard reads: every job narrowly for the grid, the jobs that have not
/// started, and the breakers of running pipelines.
pub async fn dashboard_views_see_every_job_and_breaker(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[
        stage_toml(
            "gen",
            "breaker = 3\nmax_attempts = 9\nmatrix = { model = [\"m1\", \"m2\"], template = [\"t\"] }",
        ),
        stage_toml("check", "after = [\"gen\"]\nmatrix = { model = [\"m1\", \"m2\"], template = [\"t\"], tool = [\"x\"] }"),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let gens = claim(&*store, "w", 1, T0).await;
    assert_eq!(gens.len(), 1);
    report(
        &*store,
        vec![failed(
            &gens[0],
            "w",
            Failure::retryable("down", "service down"),
        )],
        T0 + 1,
    )
    .await;

    let cells = store.job_cells(pid).await.unwrap();
    assert_eq!(cells.len(), 4);
    assert!(cells.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    let failed_cell = cells.iter().find(|c| c.id == gens[0].job_id).unwrap();
    assert_eq!(failed_cell.state, JobState::Retrying);
    assert_eq!(failed_cell.stage, "gen");
    assert!(failed_cell.item.get("model").is_some(), "{failed_cell:?}");
    assert_eq!(
        cells.iter().filter(|c| c.stage == "check").count(),
        2,
        "{cells:?}"
    );

    let groups = store.job_groups(pid).await.unwrap();
    assert_eq!(groups.iter().map(|g| g.count).sum::<i64>(), 4, "{groups:?}");
    assert!(groups.windows(2).all(|w| w[0].first_id < w[1].first_id));
    assert!(groups
        .iter()
        .all(|g| g.model.is_some() && g.template.as_deref() == Some("t")));
    let retrying = groups
        .iter()
        .find(|g| g.state == JobState::Retrying)
        .unwrap();
    assert_eq!(
        (retrying.stage.as_str(), retrying.count, retrying.first_id),
        ("gen", 1, gens[0].job_id)
    );
    let waiting: Vec<&JobGroup> = groups.iter().filter(|g| g.stage == "check").collect();
    assert_eq!(waiting.len(), 2, "one group per app: {groups:?}");
    assert!(waiting
        .iter()
        .all(|g| g.state == JobState::Waiting && g.count == 1));

    let pending = store
        .jobs(&JobFilter {
            pipeline_id: Some(pid),
            pending: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let states: HashSet<JobState> = pending.iter().map(|j| j.state).collect();
    assert_eq!(pending.len(), 4, "nothing has started for good yet");
    assert_eq!(
        states,
        HashSet::from([JobState::Retrying, JobState::Available, JobState::Waiting])
    );
    let next = claim(&*store, "w", 1, T0 + 2).await;
    assert_eq!(next.len(), 1);
    let pending = store
        .jobs(&JobFilter {
            pipeline_id: Some(pid),
            pending: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        pending.iter().all(|j| j.id != next[0].job_id),
        "a running job is not pending"
    );

    let one_app = store
        .jobs(&JobFilter {
            pipeline_id: Some(pid),
            model: Some("m1".into()),
            template: Some("t".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<&str> = one_app.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.contains("model=m1")), "{keys:?}");

    let events = store.events(Some(pid), 0, 1_000).await.unwrap();
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert!(ids.len() >= 4, "{ids:?}");
    let newest = *ids.last().unwrap();
    assert_eq!(store.event_id_back(Some(pid), 0).await.unwrap(), newest);
    assert_eq!(
        store.event_id_back(Some(pid), 2).await.unwrap(),
        ids[ids.len() - 3],
        "a stream after it replays the newest two"
    );
    assert_eq!(store.event_id_back(Some(pid), 10_000).await.unwrap(), 0);
    assert!(store.event_id_back(None, 0).await.unwrap() >= newest);

    let timeline = store.job_events(gens[0].job_id, 100).await.unwrap();
    assert!(!timeline.is_empty());
    assert!(timeline.iter().all(|e| e.job_id == Some(gens[0].job_id)));
    assert!(
        timeline.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first"
    );
    let states: Vec<&str> = timeline
        .iter()
        .filter(|e| e.kind == "job_state")
        .filter_map(|e| e.data["state"].as_str())
        .collect();
    assert_eq!(states.last(), Some(&"retrying"), "{timeline:?}");
    let newest = store.job_events(gens[0].job_id, 1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(
        newest[0].id,
        timeline.last().unwrap().id,
        "the newest, when cut"
    );

    let breakers = store.breakers(100).await.unwrap();
    let gen = breakers
        .iter()
        .find(|b| b.pipeline_id == pid && b.stage == "gen")
        .expect("the gen stage's breaker is listed");
    assert_eq!(
        (gen.threshold, gen.consecutive_failures, gen.open),
        (3, 1, false)
    );
    assert_eq!(gen.pipeline_name, "t");
    assert!(
        breakers.iter().all(|b| b.threshold > 0),
        "stages without a breaker are left out"
    );
    store.cancel_pipeline(pid, T0 + 3).await.unwrap();
    report(
        &*store,
        vec![failed(
            &next[0],
            "w",
            Failure::retryable("down", "service down"),
        )],
        T0 + 4,
    )
    .await;
    store.reconcile(&policy(), T0 + 5).await.unwrap();
    assert_ne!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Running
    );
    assert!(
        store
            .breakers(100)
            .await
            .unwrap()
            .iter()
            .all(|b| b.pipeline_id != pid),
        "a finished pipeline's breakers are not shown"
    );
}

/// The events of pipelines finished long enough ago go; a running pipeline keeps its
/// history.
pub async fn old_events_of_finished_pipelines_are_pruned(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[stage_toml("a", "items = [1, 2]")]);
    let (done, _) = store
        .create_pipeline(&new_pipeline(&toml, Some("done")), T0)
        .await
        .unwrap();
    let (live, _) = store
        .create_pipeline(&new_pipeline(&toml, Some("live")), T0)
        .await
        .unwrap();
    store.cancel_pipeline(done, T0 + 1).await.unwrap();
    store.reconcile(&policy(), T0 + 2).await.unwrap();
    assert_ne!(
        store.pipeline(done).await.unwrap().unwrap().state,
        PipelineState::Running
    );
    let count = |id| {
        let store = store.clone();
        async move { store.events(Some(id), 0, 10_000).await.unwrap().len() as i64 }
    };
    let (done_events, live_events) = (count(done).await, count(live).await);
    assert!(done_events >= 2 && live_events >= 1);

    let finished_at = store
        .pipeline(done)
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .unwrap();
    assert_eq!(
        store.prune_events(finished_at, 1_000).await.unwrap(),
        0,
        "not finished long enough ago yet (its events are older)"
    );
    let later = T0 + 10 * MICROS_PER_SEC;
    assert_eq!(
        store.prune_events(later, 1).await.unwrap(),
        1,
        "a batch at a time"
    );
    assert_eq!(
        store.prune_events(later, 1_000).await.unwrap(),
        done_events - 1
    );
    assert_eq!(count(done).await, 0);
    assert_eq!(
        count(live).await,
        live_events,
        "a running pipeline keeps its history"
    );
    assert_eq!(store.prune_events(later, 1_000).await.unwrap(), 0);
}

pub async fn a_stage_barrier_releases_once_and_skips_on_failure(store: Arc<dyn Store>) {
    let toml = pipeline_toml(&[
        stage_toml("a", "items = [1, 2, 3]\nmax_attempts = 1"),
        stage_toml(
            "b",
            "after = [\"a\"]\nwait = \"stage\"\nitems = [\"x\", \"y\"]",
        ),
        stage_toml("c", "after = [\"b\"]"),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let a = claim(&*store, "w", 10, T0).await;
    assert_eq!(a.len(), 3, "only stage a is ready");
    let b_x = job_by_key(&*store, pid, "b[item=x]").await;
    assert_eq!((b_x.state, b_x.pending_deps), (JobState::Waiting, 1));
    let deps = store.dependencies(b_x.id, 100).await.unwrap();
    assert_eq!(
        deps.len(),
        3,
        "a barrier lists every job of the stage it waits for"
    );
    report(&*store, vec![completed(&a[0], "w", json!({}))], T0 + 1).await;
    report(&*store, vec![completed(&a[1], "w", json!({}))], T0 + 2).await;
    let (pending, total) = store.unfinished_upstream(b_x.id, 10).await.unwrap();
    assert_eq!((pending, total), (vec![a[2].key.clone()], 1));
    assert!(claim(&*store, "w", 10, T0 + 3).await.is_empty());
    report(&*store, vec![completed(&a[2], "w", json!({}))], T0 + 4).await;
    let b = claim(&*store, "w", 10, T0 + 5).await;
    assert_eq!(b.len(), 2, "the whole stage b starts once a has completed");
    report(
        &*store,
        b.iter().map(|c| completed(c, "w", json!({}))).collect(),
        T0 + 6,
    )
    .await;
    let c = claim(&*store, "w", 10, T0 + 7).await;
    assert_eq!(c.len(), 1);
    report(&*store, vec![completed(&c[0], "w", json!({}))], T0 + 8).await;
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Completed
    );

    // One upstream job dies: the waiting stage is skipped (and what waits on it), with the
    // reason; retried, it waits again and runs once the stage it waits for has completed.
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    let a = claim(&*store, "w", 10, T0 + 10).await;
    report(
        &*store,
        vec![
            completed(&a[0], "w", json!({})),
            failed(&a[1], "w", Failure::permanent("bad", "no")),
        ],
        T0 + 11,
    )
    .await;
    for key in ["b[item=x]", "b[item=y]", "c"] {
        let job = job_by_key(&*store, pid, key).await;
        assert_eq!(job.state, JobState::Skipped, "{key}");
        let error = job.last_error.unwrap();
        assert_eq!(error.code, "upstream_failed");
    }
    let b_y = job_by_key(&*store, pid, "b[item=y]").await;
    assert!(
        b_y.last_error.unwrap().message.contains(&a[1].key),
        "names the upstream job that failed"
    );
    report(&*store, vec![completed(&a[2], "w", json!({}))], T0 + 12).await;
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::PartialSuccess
    );
    let dead = job_by_key(&*store, pid, &a[1].key).await;
    store
        .retry_dead(&RetryTarget::Job(dead.id), T0 + 13)
        .await
        .unwrap();
    for key in ["b[item=x]", "b[item=y]", "c"] {
        assert_eq!(
            job_by_key(&*store, pid, key).await.state,
            JobState::Waiting,
            "{key}"
        );
    }
    let again = claim(&*store, "w", 10, T0 + 14).await;
    assert_eq!(again.len(), 1);
    report(&*store, vec![completed(&again[0], "w", json!({}))], T0 + 15).await;
    let b = claim(&*store, "w", 10, T0 + 16).await;
    assert_eq!(b.len(), 2);
    report(
        &*store,
        b.iter().map(|c| completed(c, "w", json!({}))).collect(),
        T0 + 17,
    )
    .await;
    let c = claim(&*store, "w", 10, T0 + 18).await;
    report(&*store, vec![completed(&c[0], "w", json!({}))], T0 + 19).await;
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Completed
    );
}

/// A barrier opening on a stage larger than one write makes all of it available by the
/// time the report that opened it is answered, each job counted down once.
pub async fn a_barrier_opens_on_a_large_stage_all_at_once(store: Arc<dyn Store>) {
    let items: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
    let toml = pipeline_toml(&[
        stage_toml("a", "items = [1, 2]"),
        stage_toml(
            "b",
            &format!(
                "after = [\"a\"]\nwait = \"stage\"\nitems = [{}]",
                items.join(",")
            ),
        ),
        stage_toml("c", "after = [\"b\"]\nwait = \"stage\""),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let a = claim(&*store, "w", 10, T0).await;
    assert_eq!(a.len(), 2);
    report(&*store, vec![completed(&a[0], "w", json!({}))], T0 + 1).await;
    assert_eq!(store.stages(pid).await.unwrap()[1].counts.waiting, 5_000);
    report(&*store, vec![completed(&a[1], "w", json!({}))], T0 + 2).await;
    let stages = store.stages(pid).await.unwrap();
    assert_eq!(stages[1].counts.available, 5_000);
    assert_eq!(stages[2].counts.waiting, 1);
    let b = all_jobs(&*store, pid).await;
    assert!(
        b.iter()
            .filter(|j| j.stage == "b")
            .all(|j| j.pending_deps == 0),
        "each counted down once"
    );
    loop {
        let got = claim(&*store, "w", 2_000, T0 + 3).await;
        if got.is_empty() {
            break;
        }
        report(
            &*store,
            got.iter().map(|c| completed(c, "w", json!({}))).collect(),
            T0 + 3,
        )
        .await;
    }
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Completed
    );
}

pub async fn a_large_pipeline_becomes_visible_and_claimable_at_once(store: Arc<dyn Store>) {
    let items: Vec<String> = (0..12_000).map(|i| i.to_string()).collect();
    let toml = pipeline_toml(&[
        stage_toml("gen", &format!("items = [{}]", items.join(","))),
        stage_toml(
            "check",
            &format!("after = [\"gen\"]\nitems = [{}]", items.join(",")),
        ),
    ]);
    let new = new_pipeline(&toml, None);
    assert_eq!(new.plan.dependencies(), 12_000);
    worker(&*store, "w").await;
    let creating = {
        let store = store.clone();
        tokio::spawn(async move { store.create_pipeline(&new, T0).await.unwrap() })
    };
    // Meanwhile: what is seen is all of it or nothing, and nothing is claimable early.
    let mut saw_partial = false;
    while !creating.is_finished() {
        let claimed = claim(&*store, "w", 50, T0).await;
        for listed in store.pipelines(10).await.unwrap() {
            saw_partial |= listed.counts.total() != 24_000;
        }
        if let Some(c) = claimed.first() {
            let visible = store.pipeline(c.pipeline_id).await.unwrap();
            assert!(
                visible.is_some_and(|p| p.counts.total() == 24_000),
                "a job was claimable before its pipeline was whole"
            );
            report(
                &*store,
                claimed
                    .iter()
                    .map(|c| completed(c, "w", json!({})))
                    .collect(),
                T0,
            )
            .await;
        }
        tokio::task::yield_now().await;
    }
    assert!(!saw_partial, "a pipeline was listed half written");
    let (pid, created) = creating.await.unwrap();
    assert!(created);
    let stages = store.stages(pid).await.unwrap();
    assert_eq!(
        stages[1].counts.waiting
            + stages[1].counts.available
            + stages[1].counts.running
            + stages[1].counts.completed,
        12_000
    );
    // It runs to the end: every check job starts after its own gen job.
    loop {
        let batch = claim(&*store, "w", 2_000, T0 + 1).await;
        if batch.is_empty() {
            break;
        }
        report(
            &*store,
            batch.iter().map(|c| completed(c, "w", json!({}))).collect(),
            T0 + 1,
        )
        .await;
    }
    let p = store.pipeline(pid).await.unwrap().unwrap();
    assert_eq!(
        (p.state, p.counts.completed),
        (PipelineState::Completed, 24_000)
    );
    assert_eq!(store.discard_unfinished_submissions().await.unwrap(), 0);
}

pub async fn a_result_that_arrives_after_its_lease_expired_is_kept_if_no_newer_attempt_exists(
    store: Arc<dyn Store>,
) {
    let toml = pipeline_toml(&[
        stage_toml("a", "items = [1, 2]\nmax_attempts = 3"),
        stage_toml("b", "after = [\"a\"]\nitems = [1, 2]"),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w1").await;
    worker(&*store, "w2").await;
    let first = claim(&*store, "w1", 2, T0).await;
    assert_eq!(first.len(), 2);
    // w1 is cut off: both leases expire; the jobs wait to run again.
    let later = T0 + 4 * MICROS_PER_SEC;
    assert_eq!(
        store
            .reconcile(&policy(), later)
            .await
            .unwrap()
            .leases_expired,
        2
    );
    // Its results arrive: the one with no newer attempt is kept, the other is fenced off.
    let newer = claim(&*store, "w2", 1, later + 10 * MICROS_PER_SEC).await;
    assert_eq!(newer.len(), 1);
    let (taken, untouched) = if newer[0].job_id == first[0].job_id {
        (&first[0], &first[1])
    } else {
        (&first[1], &first[0])
    };
    let acks = report(
        &*store,
        vec![
            completed(taken, "w1", json!({"by": "w1"})),
            completed(untouched, "w1", json!({"by": "w1"})),
        ],
        later + 11 * MICROS_PER_SEC,
    )
    .await;
    assert_eq!(acks, vec![ReportAck::Superseded, ReportAck::Accepted]);
    let kept = store.job(untouched.job_id).await.unwrap().unwrap();
    assert_eq!(kept.state, JobState::Completed);
    assert_eq!(kept.result, Some(json!({"by": "w1"})));
    assert_eq!(
        kept.failed_attempts, 0,
        "the attempt was not lost after all"
    );
    let attempts = store.attempts(untouched.job_id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Completed);
    // Its dependent runs; the same report again is acknowledged and changes nothing.
    let next = claim(&*store, "w2", 5, later + 12 * MICROS_PER_SEC).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].key, untouched.key.replace("a[", "b["));
    let again = report(
        &*store,
        vec![completed(untouched, "w1", json!({"by": "w1"}))],
        later + 13 * MICROS_PER_SEC,
    )
    .await;
    assert_eq!(again, vec![ReportAck::Accepted]);
    let mut rest = newer.clone();
    rest.extend(next);
    while !rest.is_empty() {
        report(
            &*store,
            rest.iter().map(|c| completed(c, "w2", json!({}))).collect(),
            later + 14 * MICROS_PER_SEC,
        )
        .await;
        rest = claim(&*store, "w2", 5, later + 14 * MICROS_PER_SEC).await;
    }
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().state,
        PipelineState::Completed
    );

    // With no attempts left the loss killed the job and skipped its dependent: the late
    // result brings both back, and the finished pipeline is reopened and completes.
    let toml = pipeline_toml(&[
        stage_toml("x", "max_attempts = 1"),
        stage_toml("y", "after = [\"x\"]"),
    ]);
    let (pid2, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    let t = T0 + 100 * MICROS_PER_SEC;
    let x = claim(&*store, "w1", 1, t).await.pop().unwrap();
    store
        .reconcile(&lose_once(), t + 4 * MICROS_PER_SEC)
        .await
        .unwrap();
    assert_eq!(
        store.job(x.job_id).await.unwrap().unwrap().state,
        JobState::Dead
    );
    let p = store.pipeline(pid2).await.unwrap().unwrap();
    assert_eq!(p.state, PipelineState::Failed);
    let acks = report(
        &*store,
        vec![completed(&x, "w1", json!({}))],
        t + 5 * MICROS_PER_SEC,
    )
    .await;
    assert_eq!(acks, vec![ReportAck::Accepted]);
    let y = claim(&*store, "w2", 1, t + 6 * MICROS_PER_SEC).await;
    assert_eq!(y.len(), 1, "the skipped dependent waits again and runs");
    report(
        &*store,
        vec![completed(&y[0], "w2", json!({}))],
        t + 7 * MICROS_PER_SEC,
    )
    .await;
    assert_eq!(
        store.pipeline(pid2).await.unwrap().unwrap().state,
        PipelineState::Completed
    );

    // A result with the wrong token, or a failure, is never taken this way.
    let toml = pipeline_toml(&[stage_toml("z", "max_attempts = 3")]);
    create_and_expire_then(&*store, &toml, t + 10 * MICROS_PER_SEC).await;
}

/// Create a one-job pipeline, lose its first attempt, then report it forged and failed.
async fn create_and_expire_then(store: &dyn Store, toml: &str, t: Micros) {
    let (pid, _) = store
        .create_pipeline(&new_pipeline(toml, None), t)
        .await
        .unwrap();
    let z = claim(store, "w1", 1, t).await.pop().unwrap();
    assert_eq!(z.pipeline_id, pid);
    store
        .reconcile(&policy(), t + 4 * MICROS_PER_SEC)
        .await
        .unwrap();
    let mut forged = completed(&z, "w1", json!({}));
    forged.token = format!("{}x", z.token);
    let failure = failed(&z, "w1", Failure::permanent("bad", "late"));
    let acks = store
        .report(&[forged, failure], &policy(), t + 5 * MICROS_PER_SEC)
        .await
        .unwrap();
    assert_eq!(acks, vec![ReportAck::Superseded, ReportAck::Superseded]);
    assert_eq!(
        store.job(z.job_id).await.unwrap().unwrap().state,
        JobState::Retrying
    );
}

/// A late result revives what was skipped because of its job, but not what another dead job
/// still blocks (by an edge or by a barrier): that stays skipped, and the pipeline is left
/// finished, not reopened with nothing that can run.
pub async fn a_late_result_revives_only_what_can_run(store: Arc<dyn Store>) {
    worker(&*store, "w1").await;
    let t = T0;
    for (shape, waiting) in [
        ("items = [{ k = 1 }]", "z[k=1]"),
        ("items = [1, 2]", "z[item=1]"),
    ] {
        let z_items = if shape.contains('k') {
            "items = [{ k = 1 }]"
        } else {
            "items = [1, 2]"
        };
        let upstream = if shape.contains('k') {
            "items = [{ k = 1 }]\nmax_attempts = 1"
        } else {
            "max_attempts = 1"
        };
        let toml = pipeline_toml(&[
            stage_toml("x", upstream),
            stage_toml("y", upstream),
            stage_toml("z", &format!("after = [\"x\", \"y\"]\n{z_items}")),
        ]);
        let (pid, _) = store
            .create_pipeline(&new_pipeline(&toml, None), t)
            .await
            .unwrap();
        let got = claim(&*store, "w1", 10, t).await;
        let x = got.iter().find(|c| c.stage == "x").unwrap().clone();
        let y = got.iter().find(|c| c.stage == "y").unwrap().clone();
        report(
            &*store,
            vec![failed(&y, "w1", Failure::permanent("bad", "no"))],
            t + MICROS_PER_SEC,
        )
        .await;
        store
            .reconcile(&lose_once(), t + 4 * MICROS_PER_SEC)
            .await
            .unwrap();
        assert_eq!(
            store.pipeline(pid).await.unwrap().unwrap().state,
            PipelineState::Failed
        );
        let acks = report(
            &*store,
            vec![completed(&x, "w1", json!({}))],
            t + 5 * MICROS_PER_SEC,
        )
        .await;
        assert_eq!(acks, vec![ReportAck::Accepted], "{shape}");
        let z = job_by_key(&*store, pid, waiting).await;
        let p = store.pipeline(pid).await.unwrap().unwrap();
        assert_eq!(
            (z.state, p.state),
            (JobState::Skipped, PipelineState::PartialSuccess),
            "{shape}: z still waits for the dead y ({} pending)",
            z.pending_deps
        );
    }
}

/// A late result never moves a running pipeline's deadline, and none is taken once the
/// deadline has passed.
pub async fn a_late_result_keeps_the_deadline(store: Arc<dyn Store>) {
    let toml = format!(
        "[pipeline]\nname = \"t\"\ndeadline = \"10s\"\n{}{}",
        stage_toml("x", "max_attempts = 1"),
        stage_toml("long", "")
    );
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    let deadline = store.pipeline(pid).await.unwrap().unwrap().deadline_at;
    worker(&*store, "w1").await;
    let got = claim(&*store, "w1", 10, T0).await;
    let x = got.iter().find(|c| c.stage == "x").unwrap().clone();
    let long = got.iter().find(|c| c.stage == "long").unwrap().clone();
    let s = MICROS_PER_SEC;
    beat(&*store, "w1", &long, T0 + 2 * s, 0).await;
    store.reconcile(&lose_once(), T0 + 3 * s + 1).await.unwrap();
    assert_eq!(
        store.job(x.job_id).await.unwrap().unwrap().state,
        JobState::Dead
    );
    beat(&*store, "w1", &long, T0 + 4 * s, 0).await;
    let acks = report(&*store, vec![completed(&x, "w1", json!({}))], T0 + 5 * s).await;
    assert_eq!(acks, vec![ReportAck::Accepted]);
    assert_eq!(
        store.pipeline(pid).await.unwrap().unwrap().deadline_at,
        deadline
    );
    for t in [6, 8, 10] {
        beat(&*store, "w1", &long, T0 + t * s, 0).await;
    }
    store.reconcile(&policy(), T0 + 11 * s).await.unwrap();
    assert_eq!(
        store.job(long.job_id).await.unwrap().unwrap().state,
        JobState::Dead,
        "the deadline it always had ended it"
    );

    // Past its deadline a pipeline takes no late result.
    let toml = format!(
        "[pipeline]\nname = \"t\"\ndeadline = \"3500ms\"\n{}",
        stage_toml("only", "max_attempts = 3")
    );
    let t = T0 + 100 * s;
    store
        .create_pipeline(&new_pipeline(&toml, None), t)
        .await
        .unwrap();
    let only = claim(&*store, "w1", 1, t).await.pop().unwrap();
    store.reconcile(&policy(), t + 3_100_000).await.unwrap();
    assert_eq!(
        store.job(only.job_id).await.unwrap().unwrap().state,
        JobState::Retrying
    );
    let acks = report(
        &*store,
        vec![completed(&only, "w1", json!({}))],
        t + 3_600_000,
    )
    .await;
    assert_eq!(acks, vec![ReportAck::Superseded]);
}

/// Nothing reaches into a pipeline that is still being written: its job ids are easy to
/// guess, but it has no jobs yet.
pub async fn a_pipeline_being_written_cannot_be_changed(store: Arc<dyn Store>) {
    let items: Vec<String> = (0..12_000).map(|i| i.to_string()).collect();
    let toml = pipeline_toml(&[
        stage_toml("gen", &format!("items = [{}]", items.join(","))),
        stage_toml(
            "check",
            &format!("after = [\"gen\"]\nitems = [{}]", items.join(",")),
        ),
    ]);
    let new = new_pipeline(&toml, None);
    let first = {
        // The next id the store hands out is one past the highest so far.
        let (probe, _) = store
            .create_pipeline(
                &new_pipeline(&pipeline_toml(&[stage_toml("p", "")]), None),
                T0,
            )
            .await
            .unwrap();
        store
            .jobs(&JobFilter {
                pipeline_id: Some(probe),
                ..Default::default()
            })
            .await
            .unwrap()[0]
            .id
            + 1
    };
    let creating = {
        let store = store.clone();
        tokio::spawn(async move { store.create_pipeline(&new, T0).await.unwrap() })
    };
    while !creating.is_finished() {
        match store.cancel_job(first, T0).await {
            Err(StoreError::NotFound(_)) => {}
            Ok(()) => {
                assert!(
                    creating.is_finished() || store.job(first).await.unwrap().is_some(),
                    "a job of a pipeline being written was cancelled"
                );
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(
            store.retry_dead(&RetryTarget::Job(first), T0).await,
            Err(StoreError::NotFound(_)) | Ok(0)
        ));
        tokio::task::yield_now().await;
    }
    let (pid, _) = creating.await.unwrap();
    let events = store.events(Some(pid), 0, 10).await.unwrap();
    assert_eq!(
        events[0].kind, "pipeline_created",
        "nothing happened to it before"
    );
}

pub async fn tokens_are_found_by_hash_and_revoked_once(store: Arc<dyn Store>) {
    use crate::domain::Scope;
    let a = store
        .create_token("ci", "aa11", &[Scope::Read, Scope::Submit], T0)
        .await
        .unwrap();
    let b = store
        .create_token("worker-1", "bb22", &[Scope::Worker], T0 + 1)
        .await
        .unwrap();
    assert_ne!(a, b);
    let found = store.token_by_hash("aa11").await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.name.as_str(), found.scopes.clone()),
        (a, "ci", vec![Scope::Read, Scope::Submit])
    );
    assert_eq!(found.revoked_at, None);
    assert!(store.token_by_hash("cc33").await.unwrap().is_none());
    assert!(
        store
            .create_token("again", "aa11", &[Scope::Admin], T0)
            .await
            .is_err(),
        "one hash, one token"
    );
    store.revoke_token(a, T0 + 5).await.unwrap();
    store.revoke_token(a, T0 + 9).await.unwrap();
    let revoked = store.token_by_hash("aa11").await.unwrap().unwrap();
    assert_eq!(
        revoked.revoked_at,
        Some(T0 + 5),
        "the first revocation holds"
    );
    assert!(matches!(
        store.revoke_token(a + b + 100, T0).await,
        Err(StoreError::NotFound(_))
    ));
    let listed: Vec<i64> = store.tokens().await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(listed, vec![b, a], "newest first");
    // A worker token may be limited to some kinds.
    assert_eq!(
        store.token_by_hash("bb22").await.unwrap().unwrap().kinds,
        None
    );
    store
        .limit_token_kinds(b, &["static".to_string(), "noop".to_string()])
        .await
        .unwrap();
    assert_eq!(
        store.token_by_hash("bb22").await.unwrap().unwrap().kinds,
        Some(vec!["static".to_string(), "noop".to_string()])
    );
    assert!(matches!(
        store.limit_token_kinds(a + b + 100, &[]).await,
        Err(StoreError::NotFound(_))
    ));
}

fn ids_policy(per_token: i64) -> WorkerIdPolicy {
    WorkerIdPolicy {
        per_token,
        idle_before: T0,
    }
}

/// A worker id belongs to the first token that used it, until that token is revoked; a
/// token owns a bounded number of ids, and gives up those of stopped or silent workers
/// (never one running a job) to make room.
pub async fn worker_ids_are_owned_passed_on_and_bounded(store: Arc<dyn Store>) {
    use crate::domain::Scope;
    use WorkerBinding::{Full, Owner};
    let token = |name: &'static str, hash: &'static str| {
        let store = store.clone();
        async move {
            store
                .create_token(name, hash, &[Scope::Worker], T0)
                .await
                .unwrap()
        }
    };
    let (a, b) = (token("a", "a1").await, token("b", "b1").await);
    let roomy = ids_policy(100);
    let bind = |id: &'static str, token: i64, policy: WorkerIdPolicy| {
        let store = store.clone();
        async move { store.bind_worker(id, token, &policy, T0).await.unwrap() }
    };
    assert_eq!(bind("w-1", b, roomy).await, Owner(b));
    assert_eq!(bind("w-1", a, roomy).await, Owner(b));
    assert_eq!(bind("w-1", b, roomy).await, Owner(b));
    assert_eq!(bind("w-2", a, roomy).await, Owner(a));
    // An owner held only in memory (no stored token) is never revoked.
    assert_eq!(bind("run-1", -2, roomy).await, Owner(-2));
    assert_eq!(bind("run-1", a, roomy).await, Owner(-2));

    // Revoked, its ids pass to the next token that asks.
    store.revoke_token(b, T0 + 1).await.unwrap();
    assert_eq!(bind("w-1", a, roomy).await, Owner(a));
    assert_eq!(bind("w-1", b, roomy).await, Owner(a));

    // At most three ids for `c`: a fourth only once one of its workers is free to give up.
    let c = token("c", "c1").await;
    let three = WorkerIdPolicy {
        per_token: 3,
        idle_before: T0 - 10,
    };
    for id in ["c-1", "c-2", "c-3"] {
        worker(&*store, id).await;
        assert_eq!(bind(id, c, three).await, Owner(c));
    }
    assert_eq!(bind("c-4", c, three).await, Full { owned: 3 });
    // `c-1` stops, but it still runs a job: kept.
    let toml = pipeline_toml(&[stage_toml("s", "")]);
    store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    assert_eq!(claim(&*store, "c-1", 1, T0).await.len(), 1);
    store.worker_stopped("c-1", T0).await.unwrap();
    assert_eq!(bind("c-4", c, three).await, Full { owned: 3 });
    // `c-2` stops and holds nothing: its id is given up, and `c-4` fits.
    store.worker_stopped("c-2", T0).await.unwrap();
    assert_eq!(bind("c-4", c, three).await, Owner(c));
    assert_eq!(bind("c-2", a, roomy).await, Owner(a));
    // Silent since before `idle_before`: `c-3` (seen at T0) is kept while the cut-off is
    // earlier, given up once it is later (and `c-4`, bound then but never registered).
    assert_eq!(bind("c-5", c, three).await, Full { owned: 3 });
    let later = WorkerIdPolicy {
        idle_before: T0 + 1,
        ..three
    };
    assert_eq!(bind("c-5", c, later).await, Owner(c));
    assert_eq!(bind("c-3", a, roomy).await, Owner(a));
    assert_eq!(bind("c-6", c, three).await, Owner(c));
    assert_eq!(bind("c-7", c, three).await, Full { owned: 3 });
    assert_eq!(bind("c-7", c, later).await, Owner(c));
}

/// Claims read past neither the jobs of a stage at its concurrency limit nor those of a
/// pipeline being written, and still find every job they may take.
pub async fn claims_skip_full_stages_and_find_the_rest(store: Arc<dyn Store>) {
    let items: Vec<String> = (0..3_000).map(|i| i.to_string()).collect();
    let toml = pipeline_toml(&[
        stage_toml(
            "limited",
            &format!("items = [{}]\nconcurrency = 2", items.join(",")),
        ),
        stage_toml("free", "items = [1, 2, 3]"),
    ]);
    let (pid, _) = store
        .create_pipeline(&new_pipeline(&toml, None), T0)
        .await
        .unwrap();
    worker(&*store, "w").await;
    let first = claim(&*store, "w", 4, T0).await;
    let stages: Vec<&str> = first.iter().map(|c| c.stage.as_str()).collect();
    assert_eq!(stages, vec!["limited", "limited", "free", "free"]);
    let more = claim(&*store, "w", 10, T0).await;
    assert_eq!(
        more.len(),
        1,
        "the limited stage is full: only the last free job"
    );
    report(&*store, vec![completed(&first[0], "w", json!({}))], T0 + 1).await;
    let again = claim(&*store, "w", 10, T0 + 2).await;
    assert_eq!(again.len(), 1, "one slot of the limited stage came free");
    assert_eq!(again[0].stage, "limited");
    let stages = store.stages(pid).await.unwrap();
    assert_eq!(stages[0].counts.running, 2);
}

/// A model of the engine, checked after every step of random operations on random specs
/// (heterogeneous items, matrices, several upstream stages, barriers mixed with edges,
/// breakers): claims, reports of every outcome, leases expiring, results arriving late,
/// retries and cancellations. Every job's `pending_deps` is what it still waits for, no job
/// runs or waits when it should not, and every run drains to a finished pipeline.
pub async fn random_operations_keep_every_count_honest(store: Arc<dyn Store>) {
    use rand::{Rng, SeedableRng};
    worker(&*store, "w").await;
    let mut now = T0;
    for seed in 0..24u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let toml = random_spec(&mut rng);
        let new = new_pipeline(&toml, None);
        let (pid, _) = store.create_pipeline(&new, now).await.unwrap();
        let ids: Vec<i64> = {
            let listed = all_jobs(&*store, pid).await;
            let by_key: HashMap<&str, i64> =
                listed.iter().map(|j| (j.key.as_str(), j.id)).collect();
            new.plan
                .jobs
                .iter()
                .map(|j| by_key[j.key.as_str()])
                .collect()
        };
        let mut held: Vec<ClaimedJob> = Vec::new();
        let mut lost: Vec<ClaimedJob> = Vec::new();
        let mut log = Vec::new();
        let check = |log: &Vec<String>, problems: Vec<String>| {
            assert!(
                problems.is_empty(),
                "seed {seed}\n{toml}\nlast steps:\n  {}\n{}",
                log[log.len().saturating_sub(10)..].join("\n  "),
                problems.join("\n")
            );
        };
        for _ in 0..100 {
            let roll = rng.gen_range(0..100);
            if roll < 30 {
                let got = claim(&*store, "w", rng.gen_range(1..=4), now).await;
                log.push(format!(
                    "claim {:?}",
                    got.iter().map(|c| &c.key).collect::<Vec<_>>()
                ));
                held.extend(got.into_iter().filter(|c| c.pipeline_id == pid));
            } else if roll < 65 && !held.is_empty() {
                let c = held.remove(rng.gen_range(0..held.len()));
                let r = match rng.gen_range(0..10) {
                    0..=5 => completed(&c, "w", json!({})),
                    6 => failed(&c, "w", Failure::permanent("bad", "no")),
                    7 | 8 => failed(&c, "w", Failure::retryable("flaky", "again")),
                    _ => Report {
                        outcome: ReportOutcome::Released,
                        ..completed(&c, "w", json!({}))
                    },
                };
                let ack = report(&*store, vec![r], now).await;
                log.push(format!("report {} -> {ack:?}", c.key));
            } else if roll < 75 {
                // Some leases expire: the others are heartbeated through it.
                let (gone, kept): (Vec<_>, Vec<_>) =
                    held.drain(..).partition(|_| rng.gen_bool(0.5));
                held = kept;
                now += 2 * MICROS_PER_SEC;
                for c in &held {
                    beat(&*store, "w", c, now, 0).await;
                }
                now += 1_500_000;
                store.reconcile(&policy(), now).await.unwrap();
                for c in &held {
                    beat(&*store, "w", c, now, 0).await;
                }
                log.push(format!(
                    "expire {:?}",
                    gone.iter().map(|c| &c.key).collect::<Vec<_>>()
                ));
                lost.extend(gone);
            } else if roll < 83 && !lost.is_empty() {
                let c = lost.remove(rng.gen_range(0..lost.len()));
                let r = if rng.gen_bool(0.85) {
                    completed(&c, "w", json!({}))
                } else {
                    failed(&c, "w", Failure::permanent("bad", "late"))
                };
                let ack = report(&*store, vec![r], now).await;
                log.push(format!("late {} -> {ack:?}", c.key));
            } else if roll < 90 {
                let target = if rng.gen_bool(0.5) {
                    RetryTarget::Pipeline(pid)
                } else {
                    RetryTarget::Job(ids[rng.gen_range(0..ids.len())])
                };
                let n = store.retry_dead(&target, now).await.unwrap();
                log.push(format!("retry {target:?} -> {n}"));
            } else if roll < 92 {
                let id = ids[rng.gen_range(0..ids.len())];
                store.cancel_job(id, now).await.unwrap();
                log.push(format!("cancel {id}"));
            } else {
                now += MICROS_PER_SEC;
                for c in &held {
                    beat(&*store, "w", c, now, 0).await;
                }
                store.reconcile(&policy(), now).await.unwrap();
                log.push("tick".into());
            }
            check(&log, honesty_problems(&*store, pid, &new.plan, &ids).await);
        }
        // Drain: everything that can run completes, and the pipeline finishes.
        for _ in 0..200 {
            now += 2 * MICROS_PER_SEC;
            let got = claim(&*store, "w", 100, now).await;
            let mut all: Vec<Report> = got.iter().map(|c| completed(c, "w", json!({}))).collect();
            all.extend(held.drain(..).map(|c| completed(&c, "w", json!({}))));
            if !all.is_empty() {
                report(&*store, all, now).await;
            }
            store.reconcile(&policy(), now).await.unwrap();
            if store.pipeline(pid).await.unwrap().unwrap().state != PipelineState::Running {
                break;
            }
        }
        log.push("drained".into());
        check(&log, honesty_problems(&*store, pid, &new.plan, &ids).await);
        assert_ne!(
            store.pipeline(pid).await.unwrap().unwrap().state,
            PipelineState::Running,
            "seed {seed}: still running after the drain\n{toml}"
        );
    }
}

async fn all_jobs(store: &dyn Store, pipeline: i64) -> Vec<Job> {
    store
        .jobs(&JobFilter {
            pipeline_id: Some(pipeline),
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// What the store says that the plan and the jobs' states contradict.
async fn honesty_problems(
    store: &dyn Store,
    pid: i64,
    plan: &spec::Plan,
    ids: &[i64],
) -> Vec<String> {
    let jobs = all_jobs(store, pid).await;
    let by_id: HashMap<i64, &Job> = jobs.iter().map(|j| (j.id, j)).collect();
    let state_of = |i: usize| by_id[&ids[i]].state;
    let blocked =
        |s: JobState| matches!(s, JobState::Dead | JobState::Cancelled | JobState::Skipped);
    let mut stage_done: HashMap<&str, bool> = HashMap::new();
    let mut stage_blocked: HashMap<&str, bool> = HashMap::new();
    for (i, pj) in plan.jobs.iter().enumerate() {
        *stage_done.entry(pj.stage.as_str()).or_insert(true) &= state_of(i) == JobState::Completed;
        *stage_blocked.entry(pj.stage.as_str()).or_insert(false) |= blocked(state_of(i));
    }
    let mut problems = Vec::new();
    for (i, pj) in plan.jobs.iter().enumerate() {
        let job = by_id[&ids[i]];
        let edges = pj
            .depends_on
            .iter()
            .filter(|&&u| state_of(u) != JobState::Completed)
            .count();
        let barriers = plan
            .barriers_of(&pj.stage)
            .filter(|u| !stage_done[u])
            .count();
        let expected = (edges + barriers) as i64;
        let tag = format!("{} ({:?})", pj.key, job.state);
        if job.pending_deps != expected {
            problems.push(format!(
                "{tag}: pending_deps {} but waits for {expected}",
                job.pending_deps
            ));
        }
        let started = matches!(
            job.state,
            JobState::Available | JobState::Running | JobState::Completed
        );
        if started && expected > 0 && job.attempts == 0 {
            problems.push(format!("{tag} with {expected} unfinished upstream"));
        }
        if job.state == JobState::Waiting {
            if expected == 0 {
                problems.push(format!("{tag} with nothing to wait for"));
            }
            let edge_blocked = pj.depends_on.iter().any(|&u| blocked(state_of(u)));
            let barrier_blocked = plan.barriers_of(&pj.stage).any(|u| stage_blocked[u]);
            if edge_blocked || barrier_blocked {
                problems.push(format!("{tag} on an upstream that can no longer complete"));
            }
        }
    }
    let p = store.pipeline(pid).await.unwrap().unwrap();
    let unfinished = jobs.iter().any(|j| !j.state.is_terminal());
    if (p.state == PipelineState::Running) != unfinished {
        problems.push(format!(
            "pipeline {:?} with unfinished jobs: {unfinished}",
            p.state
        ));
    }
    problems
}

/// A small spec of random shape: 2 to 5 stages of single jobs, lists, matrices or
/// heterogeneous items, each after some earlier ones, by item or by stage.
fn random_spec(rng: &mut impl rand::Rng) -> String {
    let n = rng.gen_range(2..=5);
    let mut stages = Vec::new();
    for s in 0..n {
        let mut extra = String::new();
        match rng.gen_range(0..5) {
            0 => {}
            1 => {
                let k = rng.gen_range(1..=3);
                let vals: Vec<String> = (0..k).map(|i| i.to_string()).collect();
                extra += &format!("items = [{}]\n", vals.join(","));
            }
            2 => {
                let mut axes = Vec::new();
                if rng.gen_bool(0.7) {
                    axes.push("m = [\"a\", \"b\"]");
                }
                if rng.gen_bool(0.6) {
                    axes.push("t = [\"x\", \"y\"]");
                }
                if axes.is_empty() {
                    axes.push("u = [1, 2]");
                }
                extra += &format!("matrix = {{ {} }}\n", axes.join(", "));
            }
            _ => {
                let mut items = std::collections::BTreeSet::new();
                for _ in 0..rng.gen_range(1..=4) {
                    let mut parts = Vec::new();
                    if rng.gen_bool(0.5) {
                        parts.push(format!("m = \"{}\"", ["a", "b"][rng.gen_range(0..2)]));
                    }
                    if rng.gen_bool(0.5) {
                        parts.push(format!("t = \"{}\"", ["x", "y"][rng.gen_range(0..2)]));
                    }
                    if parts.is_empty() {
                        parts.push(format!("v = {}", rng.gen_range(0..3)));
                    }
                    items.insert(format!("{{ {} }}", parts.join(", ")));
                }
                extra += &format!(
                    "items = [{}]\n",
                    items.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
        if s > 0 && rng.gen_bool(0.85) {
            let mut after: Vec<String> = (0..s)
                .filter(|_| rng.gen_bool(0.5))
                .map(|u| format!("\"s{u}\""))
                .collect();
            if after.is_empty() {
                after.push(format!("\"s{}\"", s - 1));
            }
            extra += &format!("after = [{}]\n", after.join(", "));
            if rng.gen_bool(0.3) {
                extra += "wait = \"stage\"\n";
            }
        }
        extra += &format!(
            "max_attempts = {}\nbackoff = \"100ms\"\n",
            rng.gen_range(1..=3)
        );
        if rng.gen_bool(0.3) {
            extra += "breaker = 2\n";
        }
        stages.push(stage_toml(&format!("s{s}"), &extra));
    }
    pipeline_toml(&stages)
}

/// Instantiate the whole suite for a backend. `$make` is an async expression producing
/// `(Arc<dyn Store>, guard)`, where the guard keeps the backend's resources alive.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            idempotent_pipeline_creation, duplicate_job_keys_are_refused_atomically,
            claims_are_exclusive, fencing_rejects_late_reports, downstream_jobs_stream,
            retries_back_off_then_die, permanent_failures_are_not_retried,
            breaker_fails_the_rest_fast, failing_workers_are_quarantined,
            deadlines_are_enforced, cancellation_reaches_running_jobs,
            released_jobs_do_not_count_as_failures, events_resume_by_id,
            reconciler_finalizes_stragglers, artifacts_are_recorded,
            retry_revives_only_what_can_run, cancellation_survives_release_failure_and_loss,
            lost_workers_do_not_open_the_breaker, llm_usage_adds_up_per_model_and_per_job,
            llm_budget_is_kept_with_the_pipeline, llm_answers_are_cached_first_one_wins,
            external_failures_open_no_breaker_and_quarantine_no_worker,
            waiting_for_a_provider_extends_the_attempt_deadline,
            dashboard_views_see_every_job_and_breaker,
            old_events_of_finished_pipelines_are_pruned,
            a_stage_barrier_releases_once_and_skips_on_failure,
            a_large_pipeline_becomes_visible_and_claimable_at_once,
            a_result_that_arrives_after_its_lease_expired_is_kept_if_no_newer_attempt_exists,
            a_late_result_revives_only_what_can_run, a_late_result_keeps_the_deadline,
            a_pipeline_being_written_cannot_be_changed,
            claims_skip_full_stages_and_find_the_rest,
            a_barrier_opens_on_a_large_stage_all_at_once,
            random_operations_keep_every_count_honest,
            tokens_are_found_by_hash_and_revoked_once,
            worker_ids_are_owned_passed_on_and_bounded,
            a_worker_that_claims_and_vanishes_kills_no_job);
    };
    (@each $make:expr; $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make.await;
                $crate::store::conformance::$name(store).await;
            }
        )+
    };
}
