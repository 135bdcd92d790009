//! Server-sent events: the event log as a live stream, for the dashboard and anyone else.
//!
//! Every durable event goes out with its id (`id: 42`), so a client that reconnects with
//! `Last-Event-ID` (browsers do this by themselves) or `?after=` gets exactly what it has
//! not seen, also across a server restart: the ids live in the database. Between durable
//! events, the stream carries id-less `progress` snapshots of the running jobs of the
//! pipeline it follows: they are replaced by the next one, so losing one loses nothing.
//! With `?workers=true` it also carries id-less `workers` snapshots (the workers with their
//! heartbeats, and the breakers of running pipelines) every couple of seconds: heartbeats
//! are not events, and the page that shows them must not poll.

use super::AppState;
use crate::domain::JobState;
use crate::store::{Event, JobFilter};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

/// Durable events sent per database read.
const PAGE: i64 = 500;
/// Progress snapshots are sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Workers snapshots are sent this often.
const WORKERS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Follow one pipeline (default: all).
    #[serde(default)]
    pub pipeline: Option<i64>,
    /// Start after this event id, when there is no `Last-Event-ID` header.
    #[serde(default)]
    pub after: Option<i64>,
    /// Replay at most the newest `tail` events before the live ones (never starting later
    /// than `after`): a page opens with recent history, not the whole of it.
    #[serde(default)]
    pub tail: Option<i64>,
    /// Also send `workers` snapshots.
    #[serde(default)]
    pub workers: bool,
}

struct Cursor {
    /// The stream's place among its client's ([`super::caps`]), given back when it ends.
    _slot: super::caps::Slot,
    /// When the last workers snapshot went out, if they are followed.
    workers: Option<Option<tokio::time::Instant>>,
    state: AppState,
    pipeline: Option<i64>,
    after: i64,
    changes: tokio::sync::watch::Receiver<u64>,
    last_progress: Option<tokio::time::Instant>,
    progress_due: bool,
}

fn last_event_id(headers: &HeaderMap) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub async fn stream(
    State(state): State<AppState>,
    caller: Option<axum::Extension<super::auth::Principal>>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, super::routes::ApiError> {
    let slot = state.streams.enter(super::routes::caller_key(&caller))?;
    let after = match (last_event_id(&headers), q.tail) {
        // A reconnect resumes exactly where it was.
        (Some(id), _) => id,
        (None, Some(tail)) => {
            let back = state
                .store
                .event_id_back(q.pipeline, tail)
                .await
                .unwrap_or(0);
            q.after.map_or(back, |after| after.min(back))
        }
        (None, None) => q.after.unwrap_or(0),
    };
    let cursor = Cursor {
        _slot: slot,
        changes: state.signals.events.subscribe(),
        state,
        pipeline: q.pipeline,
        after,
        last_progress: None,
        progress_due: q.pipeline.is_some(),
        workers: q.workers.then_some(None),
    };
    let events = stream::unfold(cursor, next_batch).flat_map(stream::iter);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn to_sse(e: &Event) -> SseEvent {
    SseEvent::default()
        .id(e.id.to_string())
        .event(e.kind.clone())
        .json_data(e)
        .expect("events serialize")
}

/// The next messages to send; `None` ends the stream (server shutting down).
async fn next_batch(mut c: Cursor) -> Option<(Vec<Result<SseEvent, Infallible>>, Cursor)> {
    loop {
        if c.state.shutdown.is_cancelled() {
            return None;
        }
        // Before the events: a busy server must not starve the workers snapshots.
        if let Some(last) = c.workers {
            if last.is_none_or(|t| t.elapsed() >= WORKERS_EVERY) {
                c.workers = Some(Some(tokio::time::Instant::now()));
                if let Some(snapshot) = workers_snapshot(&c).await {
                    return Some((vec![Ok(snapshot)], c));
                }
            }
        }
        c.changes.borrow_and_update();
        match c.state.store.events(c.pipeline, c.after, PAGE).await {
            Ok(events) if !events.is_empty() => {
                c.after = events.last().expect("not empty").id;
                c.progress_due = c.pipeline.is_some();
                let out = events.iter().map(|e| Ok(to_sse(e))).collect();
                return Some((out, c));
            }
            Ok(_) => {}
            Err(e) => {
                // The client reconnects with the last id it saw; nothing is lost.
                tracing::warn!(error = %e, "event stream: reading events failed");
                return None;
            }
        }
        if c.progress_due {
            let ready = c
                .last_progress
                .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
            if ready {
                c.progress_due = false;
                c.last_progress = Some(tokio::time::Instant::now());
                if let Some(snapshot) = progress_snapshot(&c).await {
                    return Some((vec![Ok(snapshot)], c));
                }
                continue;
            }
        }
        let mut wait = match (c.progress_due, c.last_progress) {
            (true, Some(t)) => PROGRESS_EVERY.saturating_sub(t.elapsed()),
            _ => Duration::from_secs(3600),
        };
        if let Some(Some(t)) = c.workers {
            wait = wait.min(WORKERS_EVERY.saturating_sub(t.elapsed()));
        }
        tokio::select! {
            changed = c.changes.changed() => {
                if changed.is_err() {
                    return None;
                }
                c.progress_due = c.pipeline.is_some();
            }
            _ = tokio::time::sleep(wait) => {}
            _ = c.state.shutdown.cancelled() => return None,
        }
    }
}

/// The workers with their heartbeats and running jobs, and the breakers of running pipelines.
async fn workers_snapshot(c: &Cursor) -> Option<SseEvent> {
    let workers = c.state.store.workers().await.ok()?;
    let breakers = c.state.store.breakers(200).await.ok()?;
    Some(
        SseEvent::default()
            .event("workers")
            .json_data(serde_json::json!({
                "now": crate::domain::now_micros(),
                "workers": workers,
                "breakers": breakers,
            }))
            .expect("workers serialize"),
    )
}

/// The running jobs of the followed pipeline with their progress.
async fn progress_snapshot(c: &Cursor) -> Option<SseEvent> {
    let jobs = c
        .state
        .store
        .jobs(&JobFilter {
            pipeline_id: c.pipeline,
            state: Some(JobState::Running),
            limit: Some(500),
            ..Default::default()
        })
        .await
        .ok()?;
    let running: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "job_id": j.id,
                "key": j.key,
                "progress": j.progress,
                "worker_id": j.worker_id,
                "started_at": j.started_at,
            })
        })
        .collect();
    Some(
        SseEvent::default()
            .event("progress")
            .json_data(serde_json::json!({ "running": running }))
            .expect("progress serializes"),
    )
}
