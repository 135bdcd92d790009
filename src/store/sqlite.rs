//! The embedded backend: SQLite in WAL mode. One writer connection serializes every state
//! change (SQLite allows one writer anyway; this way nobody waits on `SQLITE_BUSY`), and a
//! small pool serves reads concurrently. Sets of ids travel as one JSON array bound to
//! `json_each(?)`, so each statement's text is constant and stays prepared.

use super::*;
use crate::domain::{
    after_failure, pipeline_outcome, AfterFailure, BreakerPolicy, FailureClass, MICROS_PER_MS,
};
use serde_json::json;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

const UNFINISHED: &str = "('waiting','available','running','retrying')";

/// Statements that run on every claim, report or reconciler tick, or page through a
/// large pipeline. Each reads through an index, however many jobs and events the
/// database holds (`tests::hot_statements_read_through_indexes` checks their plans): a
/// scan here is what makes claims slow down as a study's queue grows.
mod hot {
    use super::JOB_COLUMNS;
    use crate::store::JobFilter;

    /// One kind's claimable jobs in id order, straight from the claimable index (a list
    /// of kinds in one statement would sort every claimable job of those kinds first).
    pub const CLAIM_CANDIDATES: &str = "SELECT id, pipeline_id, stage FROM jobs \
         WHERE kind = ?1 AND state IN ('available','retrying') AND run_after <= ?2 \
           AND EXISTS (SELECT 1 FROM pipelines p WHERE p.id = jobs.pipeline_id \
               AND p.state = 'running' AND p.cancel_requested = 0) \
           AND NOT EXISTS (SELECT 1 FROM json_each(?3) f \
               WHERE f.value ->> 0 = jobs.pipeline_id AND f.value ->> 1 = jobs.stage) \
           AND id BETWEEN ?5 AND ?6 \
         ORDER BY id LIMIT ?4";
    pub const NEXT_RETRY: &str = "SELECT MIN(run_after) FROM jobs WHERE state = 'retrying'";
    pub const ANY_UNFINISHED: &str = "SELECT 1 FROM jobs WHERE pipeline_id = ?1 \
         AND state IN ('waiting','available','running','retrying') LIMIT 1";
    /// Every state but `completed`, listed: a few index seeks, not a scan of the stage.
    pub const ANY_NOT_COMPLETED_IN_STAGE: &str = "SELECT 1 FROM jobs WHERE pipeline_id = ?1 \
         AND stage = ?2 AND state IN ('waiting','available','running','retrying','dead','cancelled','skipped') LIMIT 1";
    /// One pass over the dependents of jobs that completed: count each down by its
    /// completed upstream jobs, and make those with nothing left to wait for available.
    pub const COUNT_DOWN_DEPENDENTS: &str = "UPDATE jobs SET pending_deps = pending_deps - c.n, \
           state = CASE WHEN state = 'waiting' AND pending_deps - c.n <= 0 THEN 'available' ELSE state END, \
           run_after = CASE WHEN state = 'waiting' AND pending_deps - c.n <= 0 THEN ?2 ELSE run_after END \
         FROM (SELECT job_id, COUNT(*) AS n FROM job_deps \
               WHERE upstream_id IN (SELECT value FROM json_each(?1)) GROUP BY job_id) c \
         WHERE jobs.id = c.job_id RETURNING jobs.id, jobs.state";
    /// The waiting jobs that wait one by one on any of `?1` (a JSON list of job ids), each
    /// with the key of one of them.
    pub const WAITING_BY_EDGE: &str = "SELECT d.job_id AS id, MIN(u.key) AS cause FROM job_deps d \
         JOIN jobs j ON j.id = d.job_id JOIN jobs u ON u.id = d.upstream_id \
         WHERE d.upstream_id IN (SELECT value FROM json_each(?1)) AND j.state = 'waiting' \
         GROUP BY d.job_id";
    /// The waiting jobs of stages with an unreleased barrier on the stage of any of `?1`.
    /// CROSS JOIN keeps the order: the few jobs, their barriers, then the waiting jobs of
    /// those stages only (any other order reads every job of the pipeline).
    pub const WAITING_BY_BARRIER: &str = "SELECT j.id AS id, f.cause AS cause FROM \
           (SELECT pipeline_id, stage, MIN(key) AS cause FROM jobs \
            WHERE id IN (SELECT value FROM json_each(?1)) GROUP BY pipeline_id, stage) f \
         CROSS JOIN stage_waits w ON w.pipeline_id = f.pipeline_id AND w.upstream_stage = f.stage \
           AND w.released = 0 \
         CROSS JOIN jobs j ON j.pipeline_id = w.pipeline_id AND j.stage = w.stage AND j.state = 'waiting'";
    pub const QUIESCENT_WITH_WAITING: &str =
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = ?1 AND state = 'waiting') \
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = ?1 AND state IN ('available','running','retrying'))";
    /// Forced: with no bound on the index's own column (or with `ORDER BY id`) the planner
    /// would rather scan every job than the few that run.
    pub const RUNNING_JOBS: &str = "jobs INDEXED BY jobs_running";
    pub const LEASE_EXPIRED: &str = "state = 'running' AND lease_expires_at < ?1";
    pub const ATTEMPT_OVERDUE: &str = "state = 'running' AND attempt_deadline_at + ?1 < ?2";
    /// A pipeline's events by its own index; `(?1 IS NULL OR pipeline_id = ?1)` would
    /// make them a scan of everyone's.
    pub const EVENTS_OF_PIPELINE: &str = "SELECT id, pipeline_id, job_id, at, kind, data \
         FROM events WHERE pipeline_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
    pub const EVENTS_OF_ALL: &str = "SELECT id, pipeline_id, job_id, at, kind, data \
         FROM events WHERE ?1 IS NULL AND id > ?2 ORDER BY id LIMIT ?3";
    pub const EVENT_BACK_OF_PIPELINE: &str =
        "SELECT id FROM events WHERE pipeline_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2";
    pub const EVENT_BACK_OF_ALL: &str =
        "SELECT id FROM events WHERE ?1 IS NULL ORDER BY id DESC LIMIT 1 OFFSET ?2";

    /// One page of jobs in id order. Only the filters that are set are in the statement,
    /// so each combination reads through the index made for it (a pipeline's jobs, by
    /// state or by stage) instead of scanning every job from the page's start.
    pub fn jobs_page(filter: &JobFilter, state: Option<&str>) -> String {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id > ?1");
        if filter.pipeline_id.is_some() {
            sql += " AND pipeline_id = ?2";
        }
        if filter.stage.is_some() {
            sql += " AND stage = ?3";
        }
        if state.is_some() {
            sql += " AND state = ?4";
        }
        if filter.model.is_some() {
            sql += " AND json_extract(item, '$.model') = ?5";
        }
        if filter.template.is_some() {
            sql += " AND json_extract(item, '$.template') = ?6";
        }
        sql + " AND pipeline_id NOT IN (SELECT id FROM pipelines WHERE state = 'creating') \
                ORDER BY id LIMIT ?7"
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if needed) the database file and bring its schema up to date.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a crash of the process (kill -9) without losing a
            // committed transaction; only an OS crash or power loss can drop the last ones.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }
}

fn ids_json(ids: impl IntoIterator<Item = i64>) -> String {
    serde_json::to_string(&ids.into_iter().collect::<Vec<_>>()).expect("ids serialize")
}

fn parse_json<T: serde::de::DeserializeOwned>(text: Option<String>) -> StoreResult<Option<T>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{e}: {t}"))))
        .transpose()
}

fn event_from_row(row: &SqliteRow) -> StoreResult<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        pipeline_id: row.try_get("pipeline_id")?,
        job_id: row.try_get("job_id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        data: parse_json(Some(row.try_get("data")?))?.unwrap_or(Value::Null),
    })
}

fn parse_enum<T: FromStr>(text: &str) -> StoreResult<T>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("value serializes")
}

const JOB_COLUMNS: &str = "id, pipeline_id, stage, key, kind, item, params, state, attempts, \
    failed_attempts, pending_deps, run_after, worker_id, lease_expires_at, attempt_deadline_at, \
    cancel_requested, result, last_error, progress, created_at, started_at, finished_at";

fn job_from_row(row: &SqliteRow) -> StoreResult<Job> {
    Ok(Job {
        id: row.try_get("id")?,
        pipeline_id: row.try_get("pipeline_id")?,
        stage: row.try_get("stage")?,
        key: row.try_get("key")?,
        kind: row.try_get("kind")?,
        item: parse_json(Some(row.try_get("item")?))?.unwrap_or(Value::Null),
        params: parse_json(Some(row.try_get("params")?))?.unwrap_or(Value::Null),
        state: parse_enum(row.try_get::<&str, _>("state")?)?,
        attempts: row.try_get("attempts")?,
        failed_attempts: row.try_get("failed_attempts")?,
        pending_deps: row.try_get("pending_deps")?,
        run_after: row.try_get("run_after")?,
        worker_id: row.try_get("worker_id")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        attempt_deadline_at: row.try_get("attempt_deadline_at")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        result: parse_json(row.try_get("result")?)?,
        last_error: parse_json(row.try_get("last_error")?)?,
        progress: parse_json(row.try_get("progress")?)?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// The few columns the write paths need to know about a job.
#[derive(Debug, Clone)]
struct Brief {
    id: i64,
    pipeline_id: i64,
    stage: String,
    key: String,
    state: JobState,
    attempts: i64,
    failed_attempts: i64,
    lease_token: Option<String>,
    worker_id: Option<String>,
    cancel_requested: bool,
}

const BRIEF_COLUMNS: &str =
    "id, pipeline_id, stage, key, state, attempts, failed_attempts, lease_token, worker_id, cancel_requested";

fn brief_from_row(row: &SqliteRow) -> StoreResult<Brief> {
    Ok(Brief {
        id: row.try_get("id")?,
        pipeline_id: row.try_get("pipeline_id")?,
        stage: row.try_get("stage")?,
        key: row.try_get("key")?,
        state: parse_enum(row.try_get::<&str, _>("state")?)?,
        attempts: row.try_get("attempts")?,
        failed_attempts: row.try_get("failed_attempts")?,
        lease_token: row.try_get("lease_token")?,
        worker_id: row.try_get("worker_id")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
    })
}

async fn briefs_where(
    conn: &mut SqliteConnection,
    condition: &str,
    binds: &[i64],
) -> StoreResult<Vec<Brief>> {
    briefs_from(conn, "jobs", condition, binds).await
}

/// `from` names the table, and may force an index (`jobs INDEXED BY …`) where the planner
/// would otherwise scan every job.
async fn briefs_from(
    conn: &mut SqliteConnection,
    from: &str,
    condition: &str,
    binds: &[i64],
) -> StoreResult<Vec<Brief>> {
    let sql = format!("SELECT {BRIEF_COLUMNS} FROM {from} WHERE {condition} ORDER BY id");
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = q.bind(*b);
    }
    q.fetch_all(&mut *conn)
        .await?
        .iter()
        .map(brief_from_row)
        .collect()
}

/// A job, unless its pipeline is still being written (then it does not exist yet).
async fn visible_job(conn: &mut SqliteConnection, id: i64) -> StoreResult<Option<Brief>> {
    Ok(briefs_where(
        conn,
        "id = ?1 AND pipeline_id NOT IN (SELECT id FROM pipelines WHERE state = 'creating')",
        &[id],
    )
    .await?
    .pop())
}

async fn briefs_by_ids(conn: &mut SqliteConnection, ids: &[i64]) -> StoreResult<Vec<Brief>> {
    let sql = format!(
        "SELECT {BRIEF_COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id"
    );
    sqlx::query(&sql)
        .bind(ids_json(ids.iter().copied()))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(brief_from_row)
        .collect()
}

async fn emit(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    job_id: Option<i64>,
    kind: &str,
    data: Value,
    now: Micros,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO events (pipeline_id, job_id, at, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(pipeline_id)
    .bind(job_id)
    .bind(now)
    .bind(kind)
    .bind(to_json(&data))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn emit_job_state(
    conn: &mut SqliteConnection,
    job: &Brief,
    state: JobState,
    extra: Value,
    now: Micros,
) -> StoreResult<()> {
    let mut data = json!({"key": job.key, "stage": job.stage, "state": state});
    if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
        d.extend(e);
    }
    emit(conn, job.pipeline_id, Some(job.id), "job_state", data, now).await
}

struct StagePolicy {
    retry: RetryPolicy,
    breaker: BreakerPolicy,
}

async fn stage_policy(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    stage: &str,
) -> StoreResult<StagePolicy> {
    let row = sqlx::query(
        "SELECT max_attempts, backoff_base_ms, backoff_max_ms, breaker_threshold FROM stages \
         WHERE pipeline_id = ?1 AND name = ?2",
    )
    .bind(pipeline_id)
    .bind(stage)
    .fetch_one(&mut *conn)
    .await?;
    Ok(StagePolicy {
        retry: RetryPolicy {
            max_attempts: row.try_get("max_attempts")?,
            backoff_base_ms: row.try_get("backoff_base_ms")?,
            backoff_max_ms: row.try_get("backoff_max_ms")?,
        },
        breaker: BreakerPolicy {
            threshold: row.try_get("breaker_threshold")?,
        },
    })
}

async fn close_attempt(
    conn: &mut SqliteConnection,
    job_id: i64,
    number: i64,
    outcome: AttemptOutcome,
    error: Option<&Failure>,
    now: Micros,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE attempts SET outcome = ?3, error = ?4, finished_at = ?5 \
         WHERE job_id = ?1 AND number = ?2 AND finished_at IS NULL",
    )
    .bind(job_id)
    .bind(number)
    .bind(outcome.as_str())
    .bind(error.map(to_json))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A `job_state` event for each of `ids`, in id order, from its row as it is now (its
/// state, and its last error when `with_error`), merged with `extra`.
async fn emit_states(
    conn: &mut SqliteConnection,
    ids: &[i64],
    extra: Value,
    with_error: bool,
    now: Micros,
) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (pipeline_id, job_id, at, kind, data) \
         SELECT pipeline_id, id, ?2, 'job_state', \
           CASE WHEN ?4 AND last_error IS NOT NULL \
             THEN json_set(json_patch(json_object('key', key, 'stage', stage, 'state', state), ?3), '$.error', json(last_error)) \
             ELSE json_patch(json_object('key', key, 'stage', stage, 'state', state), ?3) END \
         FROM jobs WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
    )
    .bind(ids_json(ids.iter().copied()))
    .bind(now)
    .bind(to_json(&extra))
    .bind(with_error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

const BLOCKED: &str = "('dead','cancelled','skipped')";
/// Every state but `completed`: listed, so that "is anything of this stage not completed"
/// is a few index seeks, not a scan of the stage.
const NOT_COMPLETED: &str =
    "('waiting','available','running','retrying','dead','cancelled','skipped')";

/// Make jobs terminal with `state` (dead, cancelled or skipped) and skip everything that
/// waits on them, transitively.
async fn finish_unsuccessfully(
    conn: &mut SqliteConnection,
    jobs: &[Brief],
    state: JobState,
    failure: Option<&Failure>,
    now: Micros,
) -> StoreResult<()> {
    let live: Vec<&Brief> = jobs.iter().filter(|j| !j.state.is_terminal()).collect();
    if live.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = live.iter().map(|j| j.id).collect();
    let running: Vec<Value> = live
        .iter()
        .filter(|j| j.state == JobState::Running)
        .map(|j| json!([j.id, j.attempts]))
        .collect();
    if !running.is_empty() {
        let outcome = if state == JobState::Dead {
            AttemptOutcome::Failed
        } else {
            AttemptOutcome::Cancelled
        };
        sqlx::query(
            "UPDATE attempts SET outcome = ?2, error = ?3, finished_at = ?4 WHERE finished_at IS NULL \
             AND (job_id, number) IN (SELECT v.value ->> 0, v.value ->> 1 FROM json_each(?1) v)",
        )
        .bind(to_json(&running))
        .bind(outcome.as_str())
        .bind(failure.map(to_json))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE jobs SET state = ?2, last_error = COALESCE(?3, last_error), finished_at = ?4, \
         lease_token = NULL, lease_expires_at = NULL, attempt_deadline_at = NULL, \
         cancel_requested = 0 WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids_json(ids.iter().copied()))
    .bind(state.as_str())
    .bind(failure.map(to_json))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let extra = match failure {
        Some(f) => json!({"error": f}),
        None => json!({}),
    };
    emit_states(conn, &ids, extra, false, now).await?;
    skip_dependents(conn, ids, now).await
}

/// Skip the waiting jobs that wait on any of `upstream` (which can no longer complete), and
/// theirs, breadth-first: by their own dependencies and by the barriers of their stages.
async fn skip_dependents(
    conn: &mut SqliteConnection,
    upstream: Vec<i64>,
    now: Micros,
) -> StoreResult<()> {
    let mut frontier = upstream;
    while !frontier.is_empty() {
        let ids = ids_json(frontier.iter().copied());
        let mut causes: BTreeMap<i64, String> = BTreeMap::new();
        let by_edge = sqlx::query(hot::WAITING_BY_EDGE)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        let by_barrier = sqlx::query(hot::WAITING_BY_BARRIER)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        for row in by_edge.iter().chain(&by_barrier) {
            causes
                .entry(row.try_get("id")?)
                .or_insert(row.try_get("cause")?);
        }
        frontier = skip_with_causes(conn, causes, now).await?;
    }
    Ok(())
}

/// Skip waiting jobs, each because of the named upstream job; returns those skipped.
async fn skip_with_causes(
    conn: &mut SqliteConnection,
    causes: BTreeMap<i64, String>,
    now: Micros,
) -> StoreResult<Vec<i64>> {
    if causes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Value> = causes
        .iter()
        .map(|(id, upstream)| {
            let failure = Failure::permanent(
                "upstream_failed",
                format!("upstream job `{upstream}` did not complete"),
            );
            json!([id, to_json(&failure)])
        })
        .collect();
    let mut skipped: Vec<i64> = sqlx::query_scalar(
        "UPDATE jobs SET state = 'skipped', last_error = v.value ->> 1, finished_at = ?2 \
         FROM json_each(?1) v WHERE jobs.id = v.value ->> 0 AND jobs.state = 'waiting' RETURNING jobs.id",
    )
    .bind(to_json(&rows))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    skipped.sort_unstable();
    emit_states(conn, &skipped, json!({}), true, now).await?;
    Ok(skipped)
}

/// After jobs completed: count down their dependents, release the barriers of stages that
/// have now completed as a whole, and make the ready jobs available.
/// Whether a barrier was released whose stage is left to count down (`finish_releases`).
async fn release_dependents(
    conn: &mut SqliteConnection,
    completed: &[i64],
    now: Micros,
) -> StoreResult<bool> {
    if completed.is_empty() {
        return Ok(false);
    }
    let ids = ids_json(completed.iter().copied());
    // One pass over the dependents: count each down by its completed upstream jobs, and
    // make those with nothing left to wait for available.
    let counted = sqlx::query(hot::COUNT_DOWN_DEPENDENTS)
        .bind(&ids)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    let mut ready = Vec::new();
    for row in &counted {
        if row.try_get::<&str, _>("state")? == JobState::Available.as_str() {
            ready.push(row.try_get::<i64, _>("id")?);
        }
    }
    ready.sort_unstable();
    emit_states(conn, &ready, json!({}), false, now).await?;
    // Stages of these jobs that others wait for as a whole, and that may have completed.
    let awaited = sqlx::query(
        "SELECT DISTINCT w.pipeline_id, w.upstream_stage FROM \
           (SELECT DISTINCT pipeline_id, stage FROM jobs WHERE id IN (SELECT value FROM json_each(?1))) c \
         JOIN stage_waits w ON w.pipeline_id = c.pipeline_id AND w.upstream_stage = c.stage AND w.released = 0",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut more = false;
    for row in &awaited {
        more |= release_barriers_if_complete(
            conn,
            row.try_get("pipeline_id")?,
            &row.try_get::<String, _>("upstream_stage")?,
            now,
        )
        .await?;
    }
    Ok(more)
}

/// If every job of `upstream` has completed, release (once) the barriers of the stages
/// that wait for it: each of their jobs has one thing less to wait for.
async fn release_barriers_if_complete(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    upstream: &str,
    now: Micros,
) -> StoreResult<bool> {
    let unfinished: Option<i64> = sqlx::query_scalar(hot::ANY_NOT_COMPLETED_IN_STAGE)
        .bind(pipeline_id)
        .bind(upstream)
        .fetch_optional(&mut *conn)
        .await?;
    if unfinished.is_some() {
        return Ok(false);
    }
    // Released now; the stage's jobs are counted down from its first id on, a chunk at a
    // time: this transaction does the first chunk, `finish_releases` the rest.
    let released: Vec<String> = sqlx::query_scalar(
        "UPDATE stage_waits SET released = 1, applied_to = (SELECT s.first_job - 1 FROM stages s \
           WHERE s.pipeline_id = stage_waits.pipeline_id AND s.name = stage_waits.stage) \
         WHERE pipeline_id = ?1 AND upstream_stage = ?2 AND released = 0 RETURNING stage",
    )
    .bind(pipeline_id)
    .bind(upstream)
    .fetch_all(&mut *conn)
    .await?;
    let mut more = false;
    for stage in released {
        more |= count_down_barrier(conn, pipeline_id, &stage, upstream, now).await?;
    }
    Ok(more)
}

/// One chunk of a released barrier: the next ids of its stage have one thing less to wait
/// for (every job, whatever its state: a skipped one retried later must not wait for the
/// barrier again), and those with nothing left become available. A stage without an id
/// range (created before ranges were kept) is done in one go. Whether more is left.
async fn count_down_barrier(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    stage: &str,
    upstream: &str,
    now: Micros,
) -> StoreResult<bool> {
    let row = sqlx::query(
        "SELECT w.applied_to, s.last_job FROM stage_waits w JOIN stages s \
           ON s.pipeline_id = w.pipeline_id AND s.name = w.stage \
         WHERE w.pipeline_id = ?1 AND w.stage = ?2 AND w.upstream_stage = ?3 AND w.released = 1",
    )
    .bind(pipeline_id)
    .bind(stage)
    .bind(upstream)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(false) };
    let (applied, last): (Option<i64>, Option<i64>) =
        (row.try_get("applied_to")?, row.try_get("last_job")?);
    let (from, to) = match (applied, last) {
        (Some(applied), Some(last)) if applied >= last => return Ok(false),
        (Some(applied), Some(last)) => (applied + 1, last.min(applied + JOBS_PER_CHUNK as i64)),
        _ => (i64::MIN, i64::MAX),
    };
    sqlx::query(
        "UPDATE jobs SET pending_deps = pending_deps - 1 \
         WHERE id BETWEEN ?3 AND ?4 AND pipeline_id = ?1 AND stage = ?2",
    )
    .bind(pipeline_id)
    .bind(stage)
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    let mut ready: Vec<i64> = sqlx::query_scalar(
        "UPDATE jobs SET state = 'available', run_after = ?5 WHERE id BETWEEN ?3 AND ?4 \
         AND pipeline_id = ?1 AND stage = ?2 AND state = 'waiting' AND pending_deps <= 0 RETURNING id",
    )
    .bind(pipeline_id)
    .bind(stage)
    .bind(from)
    .bind(to)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    ready.sort_unstable();
    emit_states(conn, &ready, json!({}), false, now).await?;
    sqlx::query(
        "UPDATE stage_waits SET applied_to = ?4 WHERE pipeline_id = ?1 AND stage = ?2 AND upstream_stage = ?3",
    )
    .bind(pipeline_id)
    .bind(stage)
    .bind(upstream)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    Ok(last.is_some_and(|last| to < last))
}

/// Released barriers whose stage is not counted down all the way yet.
async fn unfinished_releases(
    conn: &mut SqliteConnection,
) -> StoreResult<Vec<(i64, String, String)>> {
    sqlx::query(
        "SELECT w.pipeline_id, w.stage, w.upstream_stage FROM pipelines p \
         CROSS JOIN stage_waits w ON w.pipeline_id = p.id \
         JOIN stages s ON s.pipeline_id = w.pipeline_id AND s.name = w.stage \
         WHERE p.state = 'running' AND w.released = 1 AND w.applied_to < s.last_job",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("pipeline_id")?,
            r.try_get("stage")?,
            r.try_get("upstream_stage")?,
        ))
    })
    .collect()
}

/// Jobs skipped because of any of `revived` (which can run again) wait again, and theirs,
/// transitively. Returns the stages they belong to.
async fn revive_skipped_dependents(
    conn: &mut SqliteConnection,
    revived: Vec<i64>,
    now: Micros,
) -> StoreResult<BTreeSet<(i64, String)>> {
    let mut stages = BTreeSet::new();
    let mut frontier = revived;
    while !frontier.is_empty() {
        let ids = ids_json(frontier.iter().copied());
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'waiting', finished_at = NULL, last_error = NULL \
             WHERE state = 'skipped' AND (id IN (SELECT job_id FROM job_deps \
                 WHERE upstream_id IN (SELECT value FROM json_each(?1))) \
               OR (pipeline_id, stage) IN (SELECT w.pipeline_id, w.stage FROM stage_waits w \
                 JOIN (SELECT DISTINCT pipeline_id, stage FROM jobs WHERE id IN (SELECT value FROM json_each(?1))) f \
                 ON w.pipeline_id = f.pipeline_id AND w.upstream_stage = f.stage)) \
             RETURNING id, pipeline_id, stage",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        frontier = Vec::with_capacity(rows.len());
        for row in &rows {
            frontier.push(row.try_get("id")?);
            stages.insert((row.try_get("pipeline_id")?, row.try_get("stage")?));
        }
        frontier.sort_unstable();
        emit_states(conn, &frontier, json!({}), false, now).await?;
    }
    Ok(stages)
}

async fn counts(conn: &mut SqliteConnection, pipeline_id: i64) -> StoreResult<StateCounts> {
    let rows =
        sqlx::query("SELECT state, COUNT(*) AS n FROM jobs WHERE pipeline_id = ?1 GROUP BY state")
            .bind(pipeline_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut c = StateCounts::default();
    for row in &rows {
        c.add(
            parse_enum(row.try_get::<&str, _>("state")?)?,
            row.try_get("n")?,
        );
    }
    Ok(c)
}

/// Finalize each running pipeline among `ids` whose jobs are all terminal.
async fn finalize(
    conn: &mut SqliteConnection,
    ids: impl IntoIterator<Item = i64>,
    now: Micros,
) -> StoreResult<i64> {
    let mut finalized = 0;
    for id in ids.into_iter().collect::<BTreeSet<_>>() {
        let unfinished: Option<i64> = sqlx::query_scalar(hot::ANY_UNFINISHED)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        if unfinished.is_some() {
            continue;
        }
        let row = sqlx::query(
            "SELECT cancel_requested FROM pipelines WHERE id = ?1 AND state = 'running'",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { continue };
        let cancel: bool = row.try_get::<i64, _>("cancel_requested")? != 0;
        let c = counts(conn, id).await?;
        let Some(state) = pipeline_outcome(&c, cancel) else {
            continue;
        };
        sqlx::query("UPDATE pipelines SET state = ?2, finished_at = ?3 WHERE id = ?1")
            .bind(id)
            .bind(state.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
        emit(
            conn,
            id,
            None,
            "pipeline_finished",
            json!({"state": state, "counts": c}),
            now,
        )
        .await?;
        finalized += 1;
    }
    Ok(finalized)
}

/// Whether a job, or its pipeline, has been asked to stop for good.
async fn cancel_wanted(conn: &mut SqliteConnection, job: &Brief) -> StoreResult<bool> {
    if job.cancel_requested {
        return Ok(true);
    }
    let pipeline: i64 = sqlx::query_scalar("SELECT cancel_requested FROM pipelines WHERE id = ?1")
        .bind(job.pipeline_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(pipeline != 0)
}

/// Waiting jobs with an upstream job that can no longer complete (dead, cancelled or
/// skipped), by their own dependencies or by a barrier of their stage, are skipped,
/// transitively. Keeps `waiting` honest after manual retries and is part of the
/// reconciler's guard against a job waiting forever.
async fn skip_blocked_waiting(
    conn: &mut SqliteConnection,
    pipeline_ids: &[i64],
    now: Micros,
) -> StoreResult<i64> {
    if pipeline_ids.is_empty() {
        return Ok(0);
    }
    let pipelines = ids_json(pipeline_ids.iter().copied());
    let by_edge = sqlx::query(&format!(
        "SELECT d.job_id AS id, MIN(u.key) AS cause FROM jobs j \
         JOIN job_deps d ON d.job_id = j.id JOIN jobs u ON u.id = d.upstream_id \
         WHERE j.pipeline_id IN (SELECT value FROM json_each(?1)) AND j.state = 'waiting' \
           AND u.state IN {BLOCKED} GROUP BY d.job_id"
    ))
    .bind(&pipelines)
    .fetch_all(&mut *conn)
    .await?;
    let by_barrier = sqlx::query(&format!(
        "SELECT j.id AS id, b.cause AS cause FROM \
           (SELECT w.pipeline_id, w.stage, (SELECT MIN(u.key) FROM jobs u WHERE u.pipeline_id = w.pipeline_id \
               AND u.stage = w.upstream_stage AND u.state IN {BLOCKED}) AS cause \
            FROM stage_waits w WHERE w.pipeline_id IN (SELECT value FROM json_each(?1)) AND w.released = 0) b \
         JOIN jobs j ON j.pipeline_id = b.pipeline_id AND j.stage = b.stage AND j.state = 'waiting' \
         WHERE b.cause IS NOT NULL"
    ))
    .bind(&pipelines)
    .fetch_all(&mut *conn)
    .await?;
    let mut causes: BTreeMap<i64, String> = BTreeMap::new();
    for row in by_edge.iter().chain(&by_barrier) {
        causes
            .entry(row.try_get("id")?)
            .or_insert(row.try_get("cause")?);
    }
    let skipped = skip_with_causes(conn, causes, now).await?;
    let count = skipped.len() as i64;
    skip_dependents(conn, skipped, now).await?;
    Ok(count)
}

/// The reconciler's guard against a pipeline stuck with waiting jobs: one where nothing is
/// available, running or retrying can only be waiting for something that will never
/// happen. It then skips what is blocked, releases barriers whose stage completed, and
/// recounts what each waiting job still waits for. Cheap to check (a few index seeks per
/// running pipeline); it acts only when the pipeline is quiescent, which a correct run
/// never leaves it in.
async fn repair_quiescent(
    conn: &mut SqliteConnection,
    pipeline_ids: &[i64],
    now: Micros,
) -> StoreResult<i64> {
    let mut skipped = 0;
    for &id in pipeline_ids {
        let stuck: bool = sqlx::query_scalar(hot::QUIESCENT_WITH_WAITING)
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        if !stuck {
            continue;
        }
        skipped += skip_blocked_waiting(conn, &[id], now).await?;
        let awaited: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT upstream_stage FROM stage_waits WHERE pipeline_id = ?1 AND released = 0",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        for upstream in &awaited {
            release_barriers_if_complete(conn, id, upstream, now).await?;
        }
        // The recount below counts every released barrier as done.
        sqlx::query(
            "UPDATE stage_waits SET applied_to = (SELECT s.last_job FROM stages s \
               WHERE s.pipeline_id = stage_waits.pipeline_id AND s.name = stage_waits.stage) \
             WHERE pipeline_id = ?1 AND released = 1",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
        let recounted = sqlx::query(
            "UPDATE jobs SET pending_deps = \
               (SELECT COUNT(*) FROM job_deps d JOIN jobs u ON u.id = d.upstream_id \
                  WHERE d.job_id = jobs.id AND u.state != 'completed') + \
               (SELECT COUNT(*) FROM stage_waits w WHERE w.pipeline_id = jobs.pipeline_id \
                  AND w.stage = jobs.stage AND w.released = 0) \
             WHERE pipeline_id = ?1 AND state = 'waiting'",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
        let mut ready: Vec<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'available', run_after = ?2 WHERE pipeline_id = ?1 \
             AND state = 'waiting' AND pending_deps <= 0 RETURNING id",
        )
        .bind(id)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        ready.sort_unstable();
        emit_states(conn, &ready, json!({"reason": "repaired"}), false, now).await?;
        tracing::warn!(
            pipeline = id,
            recounted = recounted.rows_affected(),
            made_ready = ready.len(),
            "a pipeline had waiting jobs and nothing to wait for; repaired"
        );
    }
    Ok(skipped)
}

/// What reopening does to a pipeline's deadline.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// A person retried it: it gets its whole deadline again.
    Fresh,
    /// A late result came back: its time is what it was.
    Keep,
}

/// The id ranges left between `skip`ped ones (inclusive), in order.
fn id_gaps(mut skip: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    skip.sort_unstable();
    let mut gaps = Vec::new();
    let mut from = i64::MIN;
    for (first, last) in skip {
        if first > from {
            gaps.push((from, first - 1));
        }
        from = from.max(last.saturating_add(1));
    }
    gaps.push((from, i64::MAX));
    gaps
}

/// Put pipelines back to running because some of their jobs can run again.
async fn reopen_pipelines(
    conn: &mut SqliteConnection,
    pipeline_ids: &[i64],
    deadline: Deadline,
    now: Micros,
) -> StoreResult<()> {
    for id in pipeline_ids {
        let previous: String = sqlx::query_scalar("SELECT state FROM pipelines WHERE id = ?1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        match deadline {
            Deadline::Fresh => sqlx::query(
                "UPDATE pipelines SET state = 'running', finished_at = NULL, cancel_requested = 0, \
                 deadline_at = CASE WHEN deadline_ms IS NULL THEN NULL ELSE ?2 + deadline_ms * 1000 END \
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(now),
            Deadline::Keep => sqlx::query(
                "UPDATE pipelines SET state = 'running', finished_at = NULL WHERE id = ?1",
            )
            .bind(id),
        }
        .execute(&mut *conn)
        .await?;
        if previous != "running" {
            emit(
                conn,
                *id,
                None,
                "pipeline_reopened",
                json!({"was": previous}),
                now,
            )
            .await?;
        }
    }
    Ok(())
}

const TOKEN_COLUMNS: &str = "id, name, scopes, created_at, revoked_at, kinds";

fn token_from_row(row: &SqliteRow) -> StoreResult<TokenRow> {
    Ok(TokenRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scopes: parse_json(Some(row.try_get("scopes")?))?.unwrap_or_default(),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        kinds: parse_json(row.try_get("kinds")?)?,
    })
}

/// A completed result whose lease expired before it arrived is still the job's result if
/// no newer attempt has started: the attempt was recorded lost (the worker was cut off,
/// not dead), the job waits to run again (or died of that loss alone), and the report
/// carries that attempt's token; not once the job is cancelled or past a deadline.
async fn late_result_acceptable(
    conn: &mut SqliteConnection,
    job: &Brief,
    report: &Report,
    now: Micros,
) -> StoreResult<bool> {
    let waits_again = matches!(
        job.state,
        JobState::Retrying | JobState::Available | JobState::Dead
    );
    if !matches!(report.outcome, ReportOutcome::Completed { .. })
        || job.attempts != report.attempt
        || !waits_again
    {
        return Ok(false);
    }
    let row = sqlx::query(
        "SELECT a.token, a.outcome, json_extract(j.last_error, '$.code') AS code, \
         j.cancel_requested OR p.cancel_requested \
           OR COALESCE(p.deadline_at < ?3, 0) OR COALESCE(s.deadline_at < ?3, 0) AS cancelled \
         FROM attempts a JOIN jobs j ON j.id = a.job_id JOIN pipelines p ON p.id = j.pipeline_id \
         JOIN stages s ON s.pipeline_id = j.pipeline_id AND s.name = j.stage \
         WHERE a.job_id = ?1 AND a.number = ?2",
    )
    .bind(job.id)
    .bind(report.attempt)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(false) };
    let token: Option<String> = row.try_get("token")?;
    let outcome: String = row.try_get("outcome")?;
    let code: Option<String> = row.try_get("code")?;
    let cancelled: bool = row.try_get::<i64, _>("cancelled")? != 0;
    Ok(token.as_deref() == Some(report.token.as_str())
        && outcome == AttemptOutcome::Lost.as_str()
        && !cancelled
        && (job.state != JobState::Dead || code.as_deref() == Some("worker_lost")))
}

/// Cancel up to a chunk of the idle jobs with ids below `below` of a pipeline whose
/// cancellation was asked for, the most downstream first (so that none is skipped instead
/// of cancelled); finalize it once none is left. Where the next chunk starts, if any.
async fn cancel_idle_chunk(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    below: i64,
    now: Micros,
) -> StoreResult<Option<i64>> {
    let idle = briefs_where(
        conn,
        &format!(
            "id IN (SELECT id FROM jobs INDEXED BY jobs_pipeline WHERE pipeline_id = ?1 AND id < ?2 \
             AND state IN ('waiting','available','retrying') ORDER BY id DESC LIMIT {CANCELS_PER_CHUNK})"
        ),
        &[pipeline_id, below],
    )
    .await?;
    finish_unsuccessfully(conn, &idle, JobState::Cancelled, None, now).await?;
    if idle.len() < CANCELS_PER_CHUNK {
        finalize(conn, [pipeline_id], now).await?;
        return Ok(None);
    }
    Ok(idle.iter().map(|j| j.id).min())
}

/// A worker's quarantine, in a `RETURNING` of `workers`: its own, or its token's, whichever
/// ends later (0: none).
const QUARANTINED_UNTIL: &str = "MAX(COALESCE(quarantined_until, 0), COALESCE((SELECT t.quarantined_until \
     FROM worker_owners o JOIN api_tokens t ON t.id = o.token_id WHERE o.worker_id = workers.id), 0)) \
     AS quarantined_until";

/// Record a failed attempt of a running job and decide retry or dead; drives the stage
/// breaker and the worker's quarantine count.
async fn fail_running(
    conn: &mut SqliteConnection,
    job: &Brief,
    outcome: AttemptOutcome,
    failure: &Failure,
    lease: &LeasePolicy,
    now: Micros,
) -> StoreResult<()> {
    let policy = stage_policy(conn, job.pipeline_id, &job.stage).await?;
    close_attempt(conn, job.id, job.attempts, outcome, Some(failure), now).await?;
    // A cancelled job that fails (or whose worker vanished) is done: never retried.
    if cancel_wanted(conn, job).await? {
        return finish_unsuccessfully(
            conn,
            std::slice::from_ref(job),
            JobState::Cancelled,
            None,
            now,
        )
        .await;
    }
    // A lost worker is an infrastructure event, not evidence against the stage's jobs:
    // it must not open the breaker (one crashed worker would otherwise kill a stage).
    // Nor is an external cause (a provider's quota, the budget): one model running out of
    // credits must not stop the other models' jobs.
    let blameless = outcome == AttemptOutcome::Lost || failure.external;
    let increment = i64::from(!blameless);
    let breaker_open: i64 = sqlx::query_scalar(
        "UPDATE stages SET consecutive_failures = consecutive_failures + ?3 \
         WHERE pipeline_id = ?1 AND name = ?2 RETURNING breaker_open",
    )
    .bind(job.pipeline_id)
    .bind(&job.stage)
    .bind(increment)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(worker) = &job.worker_id {
        if failure.class == FailureClass::Retryable && !blameless {
            note_worker_failure(conn, worker, lease, now).await?;
        }
    }
    // A lost attempt is not the job's failure: it does not use up the job's attempts, so a
    // worker that claims and vanishes (crashed, cut off, or hostile) cannot kill other
    // people's jobs. It is retried at once, up to `max_lost_attempts` (or the stage's `max_attempts`, if more) times in all (a job
    // that is lost every time may be what kills its workers).
    let lost = outcome == AttemptOutcome::Lost;
    let (failed_attempts, lost_attempts) = if lost {
        let n: i64 = sqlx::query_scalar(
            "UPDATE jobs SET lost_attempts = lost_attempts + 1 WHERE id = ?1 RETURNING lost_attempts",
        )
        .bind(job.id)
        .fetch_one(&mut *conn)
        .await?;
        (job.failed_attempts, n)
    } else {
        (job.failed_attempts + 1, 0)
    };
    let lost_too_often;
    // Never fewer than the stage's own attempts: losses alone end a job no sooner than
    // they did when they counted as failures.
    let lost_cap = lease.max_lost_attempts.max(policy.retry.max_attempts);
    let lost_too_many = lost && lost_attempts >= lost_cap;
    let failure = if lost_too_many {
        lost_too_often = Failure {
            message: format!(
                "{}; lost {lost_attempts} times in all (every worker running it stopped or was \
                 killed): it may be what kills them; `assay retry` runs it again",
                failure.message
            ),
            ..failure.clone()
        };
        &lost_too_often
    } else {
        failure
    };
    let fate = if breaker_open != 0 || lost_too_many {
        AfterFailure::Dead
    } else if lost {
        AfterFailure::RetryAt(now)
    } else {
        after_failure(&policy.retry, failed_attempts, failure, now, rand::random())
    };
    match fate {
        AfterFailure::RetryAt(at) => {
            sqlx::query(
                "UPDATE jobs SET state = 'retrying', run_after = ?2, failed_attempts = ?3, \
                 last_error = ?4, lease_token = NULL, lease_expires_at = NULL, \
                 attempt_deadline_at = NULL, worker_id = NULL WHERE id = ?1",
            )
            .bind(job.id)
            .bind(at)
            .bind(failed_attempts)
            .bind(to_json(failure))
            .execute(&mut *conn)
            .await?;
            emit_job_state(
                conn,
                job,
                JobState::Retrying,
                json!({"attempt": job.attempts, "error": failure, "run_after": at}),
                now,
            )
            .await?;
        }
        AfterFailure::Dead => {
            sqlx::query("UPDATE jobs SET failed_attempts = ?2 WHERE id = ?1")
                .bind(job.id)
                .bind(failed_attempts)
                .execute(&mut *conn)
                .await?;
            // The attempt was closed above with its real outcome; closing is idempotent.
            finish_unsuccessfully(
                conn,
                std::slice::from_ref(job),
                JobState::Dead,
                Some(failure),
                now,
            )
            .await?;
        }
    }
    let consecutive: i64 = sqlx::query_scalar(
        "SELECT consecutive_failures FROM stages WHERE pipeline_id = ?1 AND name = ?2",
    )
    .bind(job.pipeline_id)
    .bind(&job.stage)
    .fetch_one(&mut *conn)
    .await?;
    if breaker_open == 0 && policy.breaker.should_open(consecutive) {
        open_breaker(conn, job.pipeline_id, &job.stage, consecutive, now).await?;
    }
    Ok(())
}

async fn note_worker_failure(
    conn: &mut SqliteConnection,
    worker: &str,
    lease: &LeasePolicy,
    now: Micros,
) -> StoreResult<()> {
    let failures: Option<i64> = sqlx::query_scalar(
        "UPDATE workers SET consecutive_failures = consecutive_failures + 1 WHERE id = ?1 \
         RETURNING consecutive_failures",
    )
    .bind(worker)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(n) = failures {
        if lease.quarantine_after > 0 && n >= lease.quarantine_after {
            sqlx::query(
                "UPDATE workers SET quarantined_until = ?2, consecutive_failures = 0 WHERE id = ?1",
            )
            .bind(worker)
            .bind(now + lease.quarantine_ms * MICROS_PER_MS)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// A lease of `worker` expired. Enough in a row (without a completed job between them)
/// quarantine the worker and the token that owns it: every worker id of that token stops
/// getting work for the quarantine time. A worker that claims and never heartbeats can so
/// take each job once, not again and again.
async fn note_lease_expired(
    conn: &mut SqliteConnection,
    worker: &str,
    lease: &LeasePolicy,
    now: Micros,
) -> StoreResult<()> {
    let expired: Option<i64> = sqlx::query_scalar(
        "UPDATE workers SET leases_expired = leases_expired + 1 WHERE id = ?1 RETURNING leases_expired",
    )
    .bind(worker)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(n) = expired else { return Ok(()) };
    if lease.quarantine_after > 0 && n >= lease.quarantine_after {
        let until = now + lease.quarantine_ms * MICROS_PER_MS;
        sqlx::query("UPDATE workers SET quarantined_until = ?2, leases_expired = 0 WHERE id = ?1")
            .bind(worker)
            .bind(until)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE api_tokens SET quarantined_until = ?2 \
             WHERE id = (SELECT token_id FROM worker_owners WHERE worker_id = ?1)",
        )
        .bind(worker)
        .bind(until)
        .execute(&mut *conn)
        .await?;
        tracing::warn!(
            worker,
            expired = n,
            "worker quarantined with its token: its leases expired again and again"
        );
    }
    Ok(())
}

/// Open a stage's breaker: every job of the stage that is not running fails now, with the
/// reason, instead of burning attempts one by one.
async fn open_breaker(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    stage: &str,
    consecutive: i64,
    now: Micros,
) -> StoreResult<()> {
    sqlx::query("UPDATE stages SET breaker_open = 1 WHERE pipeline_id = ?1 AND name = ?2")
        .bind(pipeline_id)
        .bind(stage)
        .execute(&mut *conn)
        .await?;
    emit(
        conn,
        pipeline_id,
        None,
        "breaker_opened",
        json!({"stage": stage, "consecutive_failures": consecutive}),
        now,
    )
    .await?;
    let sql = format!(
        "SELECT {BRIEF_COLUMNS} FROM jobs WHERE pipeline_id = ?1 AND stage = ?2 \
         AND state IN ('waiting','available','retrying') ORDER BY id"
    );
    let victims: Vec<Brief> = sqlx::query(&sql)
        .bind(pipeline_id)
        .bind(stage)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(brief_from_row)
        .collect::<StoreResult<_>>()?;
    let failure = Failure::permanent(
        "breaker_open",
        format!("the circuit breaker of stage `{stage}` opened after {consecutive} consecutive failures"),
    );
    finish_unsuccessfully(conn, &victims, JobState::Dead, Some(&failure), now).await
}

/// One page of jobs, in id order (see [`hot::jobs_page`]).
async fn jobs_in_state(
    reader: &SqlitePool,
    filter: &JobFilter,
    state: Option<&str>,
    limit: i64,
) -> StoreResult<Vec<Job>> {
    sqlx::query(&hot::jobs_page(filter, state))
        .bind(filter.after_id.unwrap_or(0))
        .bind(filter.pipeline_id)
        .bind(&filter.stage)
        .bind(state)
        .bind(&filter.model)
        .bind(&filter.template)
        .bind(limit)
        .fetch_all(reader)
        .await?
        .iter()
        .map(job_from_row)
        .collect()
}

fn pipeline_from_row(row: &SqliteRow, counts: StateCounts) -> StoreResult<Pipeline> {
    Ok(Pipeline {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        state: parse_enum(row.try_get::<&str, _>("state")?)?,
        idempotency_key: row.try_get("idempotency_key")?,
        spec_hash: row.try_get("spec_hash")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: row.try_get("created_at")?,
        deadline_at: row.try_get("deadline_at")?,
        finished_at: row.try_get("finished_at")?,
        counts,
    })
}

const PIPELINE_COLUMNS: &str =
    "id, name, state, idempotency_key, spec_hash, cancel_requested, created_at, deadline_at, finished_at";

/// How long a submission waits for another one with the same idempotency key that is
/// still being written.
const SUBMISSION_WAIT: Duration = Duration::from_secs(300);
/// Rows per transaction when a pipeline is written or deleted: each transaction holds the
/// one writer for a few milliseconds, so heartbeats, claims and reports go on in between.
const JOBS_PER_CHUNK: usize = 2_000;
/// Cancelling a job also cancels its attempt and skips what waits on it: smaller chunks.
const CANCELS_PER_CHUNK: usize = 1_000;
const DEPS_PER_CHUNK: usize = 10_000;

enum Begun {
    Existing(i64),
    BeingWritten,
    New { id: i64, first_job: i64 },
}

/// The idempotency check, then the pipeline (still `creating`), its stages and barriers,
/// and a reserved range of job ids, so that jobs and dependencies can be written by id,
/// in this transaction or in later ones.
async fn begin_pipeline(
    conn: &mut SqliteConnection,
    new: &NewPipeline,
    now: Micros,
) -> StoreResult<Begun> {
    if let Some(key) = &new.idempotency_key {
        let existing =
            sqlx::query("SELECT id, spec_hash, state FROM pipelines WHERE idempotency_key = ?1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(row) = existing {
            let hash: String = row.try_get("spec_hash")?;
            if hash != new.spec_hash {
                return Err(StoreError::IdempotencyConflict(key.clone()));
            }
            let state: String = row.try_get("state")?;
            return Ok(if state == "creating" {
                Begun::BeingWritten
            } else {
                Begun::Existing(row.try_get("id")?)
            });
        }
    }
    // Reserve ids for the jobs: AUTOINCREMENT never hands out an id at or below the
    // sequence, so no other pipeline can take one of these meanwhile.
    let last: i64 = sqlx::query_scalar(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0), \
                    COALESCE((SELECT MAX(id) FROM jobs), 0))",
    )
    .fetch_one(&mut *conn)
    .await?;
    let first_job = last + 1;
    let reserved = last + new.plan.jobs.len() as i64;
    let updated = sqlx::query("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'jobs'")
        .bind(reserved)
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() == 0 {
        sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?1)")
            .bind(reserved)
            .execute(&mut *conn)
            .await?;
    }
    // Each stage's jobs come one after the other in the plan, so each has a range of ids.
    let mut ranges: HashMap<&str, (i64, i64)> = HashMap::new();
    for (i, job) in new.plan.jobs.iter().enumerate() {
        let id = first_job + i as i64;
        let range = ranges.entry(job.stage.as_str()).or_insert((id, id));
        range.1 = id;
    }
    let deadline_at = new.spec.deadline_micros().map(|d| now + d);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO pipelines (name, state, idempotency_key, spec_hash, spec, created_at, deadline_ms, deadline_at, budget, \
         first_job, last_job) VALUES (?1, 'creating', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
    )
    .bind(&new.spec.name)
    .bind(&new.idempotency_key)
    .bind(&new.spec_hash)
    .bind(&new.source)
    .bind(now)
    .bind(new.spec.deadline_ms)
    .bind(deadline_at)
    .bind(new.spec.budget.filter(|b| !b.is_unlimited()).map(|b| to_json(&b)))
    .bind(first_job)
    .bind(reserved)
    .fetch_one(&mut *conn)
    .await?;
    let stages: Vec<Value> = new
        .spec
        .stages
        .iter()
        .enumerate()
        .map(|(position, stage)| {
            json!([
                stage.name,
                position,
                stage.kind,
                stage.concurrency,
                stage.timeout_ms,
                stage.retry.max_attempts,
                stage.retry.backoff_base_ms,
                stage.retry.backoff_max_ms,
                stage.breaker.threshold,
                stage.deadline_ms,
                stage.deadline_ms.map(|d| now + d * MICROS_PER_MS),
                ranges.get(stage.name.as_str()).map(|r| r.0),
                ranges.get(stage.name.as_str()).map(|r| r.1)
            ])
        })
        .collect();
    sqlx::query(
        "INSERT INTO stages (pipeline_id, name, position, kind, concurrency, timeout_ms, max_attempts, \
         backoff_base_ms, backoff_max_ms, breaker_threshold, deadline_ms, deadline_at, first_job, last_job) \
         SELECT ?1, v.value ->> 0, v.value ->> 1, v.value ->> 2, v.value ->> 3, v.value ->> 4, v.value ->> 5, \
                v.value ->> 6, v.value ->> 7, v.value ->> 8, v.value ->> 9, v.value ->> 10, \
                v.value ->> 11, v.value ->> 12 FROM json_each(?2) v",
    )
    .bind(id)
    .bind(to_json(&stages))
    .execute(&mut *conn)
    .await?;
    let waits: Vec<Value> = new
        .plan
        .stage_waits
        .iter()
        .map(|w| json!([w.stage, w.upstream]))
        .collect();
    sqlx::query(
        "INSERT INTO stage_waits (pipeline_id, stage, upstream_stage) \
         SELECT ?1, v.value ->> 0, v.value ->> 1 FROM json_each(?2) v",
    )
    .bind(id)
    .bind(to_json(&waits))
    .execute(&mut *conn)
    .await?;
    Ok(Begun::New { id, first_job })
}

/// Insert a run of planned jobs, the first of which is job `first` of the plan, under
/// their reserved ids.
async fn insert_jobs(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    first_job: i64,
    new: &NewPipeline,
    range: std::ops::Range<usize>,
    now: Micros,
) -> StoreResult<()> {
    let plan = &new.plan;
    // Tuples, not `json!` values: the chunk is serialized straight to one string.
    let rows: Vec<_> = plan.jobs[range.clone()]
        .iter()
        .zip(range)
        .map(|(j, i)| {
            let pending = plan.pending(j);
            (
                first_job + i as i64,
                &j.stage,
                &j.key,
                &j.kind,
                to_json(&j.item),
                to_json(&j.params),
                if pending == 0 { "available" } else { "waiting" },
                pending,
            )
        })
        .collect();
    sqlx::query(
        "INSERT INTO jobs (id, pipeline_id, stage, key, kind, item, params, state, pending_deps, run_after, created_at) \
         SELECT v.value ->> 0, ?1, v.value ->> 1, v.value ->> 2, v.value ->> 3, v.value ->> 4, v.value ->> 5, \
                v.value ->> 6, v.value ->> 7, ?2, ?2 FROM json_each(?3) v",
    )
    .bind(pipeline_id)
    .bind(now)
    .bind(to_json(&rows))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_edges(conn: &mut SqliteConnection, edges: &[[i64; 2]]) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO job_deps (job_id, upstream_id) \
         SELECT v.value ->> 0, v.value ->> 1 FROM json_each(?1) v",
    )
    .bind(to_json(&edges))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The plan's job-to-job dependencies under the reserved ids, a chunk at a time.
fn edge_chunks(new: &NewPipeline, first_job: i64) -> Vec<Vec<[i64; 2]>> {
    let mut chunks = vec![Vec::new()];
    for (i, job) in new.plan.jobs.iter().enumerate() {
        let last = chunks.last_mut().expect("one chunk");
        last.extend(
            job.depends_on
                .iter()
                .map(|&u| [first_job + i as i64, first_job + u as i64]),
        );
        if last.len() >= DEPS_PER_CHUNK {
            chunks.push(Vec::new());
        }
    }
    chunks.retain(|c| !c.is_empty());
    chunks
}

/// The last step of a submission: the pipeline becomes visible and its jobs claimable.
async fn publish_pipeline(
    conn: &mut SqliteConnection,
    id: i64,
    new: &NewPipeline,
    now: Micros,
) -> StoreResult<()> {
    let shown =
        sqlx::query("UPDATE pipelines SET state = 'running' WHERE id = ?1 AND state = 'creating'")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    if shown.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!(
            "pipeline {id} was discarded while it was being written"
        )));
    }
    emit(
        conn,
        id,
        None,
        "pipeline_created",
        json!({"name": new.spec.name, "jobs": new.plan.jobs.len()}),
        now,
    )
    .await?;
    if new.plan.jobs.is_empty() {
        finalize(conn, [id], now).await?;
    }
    Ok(())
}

impl SqliteStore {
    /// Count released barriers' stages down to the end, a chunk per transaction, so that
    /// opening a barrier on a large stage never holds the writer for long.
    async fn finish_releases(&self, now: Micros) -> StoreResult<()> {
        loop {
            let mut tx = self.writer.begin().await?;
            let pending = unfinished_releases(&mut tx).await?;
            let mut more = false;
            for (pipeline, stage, upstream) in &pending {
                more |= count_down_barrier(&mut tx, *pipeline, stage, upstream, now).await?;
            }
            let touched: BTreeSet<i64> = pending.iter().map(|p| p.0).collect();
            finalize(&mut tx, touched, now).await?;
            tx.commit().await?;
            if !more {
                return Ok(());
            }
        }
    }

    /// A plan small enough for one short transaction is written in one.
    fn fits_one_transaction(new: &NewPipeline) -> bool {
        new.plan.jobs.len() <= JOBS_PER_CHUNK && new.plan.dependencies() <= DEPS_PER_CHUNK
    }

    async fn create_at_once(&self, new: &NewPipeline, now: Micros) -> StoreResult<Begun> {
        let mut tx = self.writer.begin().await?;
        let begun = begin_pipeline(&mut tx, new, now).await?;
        if let Begun::New { id, first_job } = begun {
            insert_jobs(&mut tx, id, first_job, new, 0..new.plan.jobs.len(), now).await?;
            for edges in edge_chunks(new, first_job) {
                insert_edges(&mut tx, &edges).await?;
            }
            publish_pipeline(&mut tx, id, new, now).await?;
            tx.commit().await?;
            return Ok(begun);
        }
        tx.commit().await?;
        Ok(begun)
    }

    /// Write the jobs and their dependencies in short transactions, then make the pipeline
    /// visible in one last one.
    async fn write_plan(
        &self,
        id: i64,
        first_job: i64,
        new: &NewPipeline,
        now: Micros,
    ) -> StoreResult<()> {
        let jobs = new.plan.jobs.len();
        tracing::info!(
            pipeline = id,
            jobs,
            dependencies = new.plan.dependencies(),
            "writing a large pipeline in chunks; it becomes visible when all of it is written"
        );
        for start in (0..jobs).step_by(JOBS_PER_CHUNK) {
            let mut tx = self.writer.begin().await?;
            let range = start..(start + JOBS_PER_CHUNK).min(jobs);
            insert_jobs(&mut tx, id, first_job, new, range, now).await?;
            tx.commit().await?;
        }
        for edges in edge_chunks(new, first_job) {
            let mut tx = self.writer.begin().await?;
            insert_edges(&mut tx, &edges).await?;
            tx.commit().await?;
        }
        let mut tx = self.writer.begin().await?;
        publish_pipeline(&mut tx, id, new, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Delete a pipeline that never became visible, a chunk of jobs at a time.
    async fn discard_pipeline(&self, id: i64) -> StoreResult<()> {
        loop {
            let mut tx = self.writer.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE pipeline_id = ?1 ORDER BY id LIMIT ?2",
            )
            .bind(id)
            .bind(JOBS_PER_CHUNK as i64)
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                break;
            }
            let ids = ids_json(ids);
            sqlx::query("DELETE FROM job_deps WHERE job_id IN (SELECT value FROM json_each(?1))")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        let mut tx = self.writer.begin().await?;
        for table in ["stage_waits", "stages", "events"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE pipeline_id = ?1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM pipelines WHERE id = ?1 AND state = 'creating'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_pipeline(&self, new: &NewPipeline, now: Micros) -> StoreResult<(i64, bool)> {
        let waited = std::time::Instant::now();
        let at_once = Self::fits_one_transaction(new);
        let (id, first_job) = loop {
            let begun = if at_once {
                self.create_at_once(new, now).await?
            } else {
                let mut tx = self.writer.begin().await?;
                let begun = begin_pipeline(&mut tx, new, now).await?;
                tx.commit().await?;
                begun
            };
            match begun {
                Begun::Existing(id) => return Ok((id, false)),
                Begun::New { id, .. } if at_once => return Ok((id, true)),
                Begun::New { id, first_job } => break (id, first_job),
                // Another submission with this key is writing it: answer with its result.
                Begun::BeingWritten if waited.elapsed() < SUBMISSION_WAIT => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Begun::BeingWritten => {
                    return Err(StoreError::Conflict(format!(
                        "a pipeline with idempotency key `{}` is still being written after {} s; try again later",
                        new.idempotency_key.as_deref().unwrap_or_default(),
                        SUBMISSION_WAIT.as_secs()
                    )))
                }
            }
        };
        match self.write_plan(id, first_job, new, now).await {
            Ok(()) => Ok((id, true)),
            Err(e) => {
                if let Err(cleanup) = self.discard_pipeline(id).await {
                    tracing::error!(pipeline = id, error = %cleanup, "cannot delete a pipeline whose writing failed; the next server start will");
                }
                Err(e)
            }
        }
    }

    async fn discard_unfinished_submissions(&self) -> StoreResult<i64> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM pipelines WHERE state = 'creating' ORDER BY id")
                .fetch_all(&self.writer)
                .await?;
        for id in &ids {
            self.discard_pipeline(*id).await?;
        }
        Ok(ids.len() as i64)
    }

    async fn register_worker(&self, w: &WorkerRegistration, now: Micros) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO workers (id, name, kinds, started_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (id) DO UPDATE SET name = ?2, kinds = ?3, last_seen = ?4, stopped = 0",
        )
        .bind(&w.id)
        .bind(&w.name)
        .bind(to_json(&w.kinds))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let sql = format!("SELECT {BRIEF_COLUMNS} FROM jobs WHERE state = 'running' AND worker_id = ?1 ORDER BY id");
        let orphans: Vec<Brief> = sqlx::query(&sql)
            .bind(&w.id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(brief_from_row)
            .collect::<StoreResult<_>>()?;
        let failure = Failure::worker_lost(format!(
            "worker `{}` restarted while running this job",
            w.id
        ));
        for job in &orphans {
            fail_running(
                &mut tx,
                job,
                AttemptOutcome::Lost,
                &failure,
                &LeasePolicy::default(),
                now,
            )
            .await?;
        }
        finalize(&mut tx, orphans.iter().map(|j| j.pipeline_id), now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn grant_startup_grace(&self, until: Micros) -> StoreResult<i64> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ?1 WHERE state = 'running' AND lease_expires_at < ?1",
        )
        .bind(until)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() as i64)
    }

    async fn worker_stopped(&self, worker_id: &str, now: Micros) -> StoreResult<()> {
        sqlx::query("UPDATE workers SET stopped = 1, last_seen = ?2 WHERE id = ?1")
            .bind(worker_id)
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn claim(
        &self,
        req: &ClaimRequest,
        policy: &LeasePolicy,
        now: Micros,
    ) -> StoreResult<Vec<ClaimedJob>> {
        if req.limit <= 0 || req.kinds.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.writer.begin().await?;
        let worker = sqlx::query(&format!(
            "UPDATE workers SET last_seen = ?2 WHERE id = ?1 RETURNING {QUARANTINED_UNTIL}"
        ))
        .bind(&req.worker_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(worker) = worker else {
            return Err(StoreError::NotFound(format!("worker `{}`", req.worker_id)));
        };
        if let Some(until) = worker.try_get::<Option<i64>, _>("quarantined_until")? {
            if until > now {
                tx.commit().await?;
                return Ok(Vec::new());
            }
        }
        // Stages that limit concurrency: how many more jobs each may start.
        let limited = sqlx::query(
            "SELECT s.pipeline_id, s.name, s.first_job, s.last_job, s.concurrency - (SELECT COUNT(*) FROM jobs j \
               WHERE j.pipeline_id = s.pipeline_id AND j.stage = s.name AND j.state = 'running') AS room \
             FROM stages s JOIN pipelines p ON p.id = s.pipeline_id \
             WHERE p.state = 'running' AND s.concurrency IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut room: HashMap<(i64, String), i64> = HashMap::new();
        let mut full: Vec<Value> = Vec::new();
        // Id ranges no claim can take from: stages at their limit, pipelines still written.
        let mut skip: Vec<(i64, i64)> = sqlx::query(
            "SELECT first_job, last_job FROM pipelines WHERE state = 'creating' AND first_job IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("first_job")?, r.try_get("last_job")?)))
        .collect::<StoreResult<_>>()?;
        for row in &limited {
            let key = (
                row.try_get::<i64, _>("pipeline_id")?,
                row.try_get::<String, _>("name")?,
            );
            let r: i64 = row.try_get("room")?;
            if r <= 0 {
                full.push(json!([key.0, key.1]));
                let range: (Option<i64>, Option<i64>) =
                    (row.try_get("first_job")?, row.try_get("last_job")?);
                if let (Some(first), Some(last)) = range {
                    skip.push((first, last));
                }
            }
            room.insert(key, r);
        }
        let ranges: HashMap<(i64, String), (i64, i64)> = limited
            .iter()
            .filter_map(|row| {
                let key = (row.try_get("pipeline_id").ok()?, row.try_get("name").ok()?);
                Some((
                    key,
                    (
                        row.try_get("first_job").ok()?,
                        row.try_get("last_job").ok()?,
                    ),
                ))
            })
            .collect();
        // One read per kind and gap between the skipped ranges, each in id order straight
        // from the claimable index (a list of kinds in one statement would sort every
        // claimable job of those kinds first); a later gap only holds later jobs, so a kind
        // stops once it has enough. A stage that fills up while jobs are chosen is skipped
        // in the next round, so its other jobs do not crowd out everyone else's.
        let mut chosen: Vec<i64> = Vec::with_capacity(req.limit as usize);
        for _round in 0..4 {
            let wanted = ((req.limit - chosen.len() as i64) * 2) as usize;
            let gaps = id_gaps(skip.clone());
            let mut candidates = Vec::new();
            for kind in &req.kinds {
                let mut found = 0;
                for (low, high) in &gaps {
                    let rows = sqlx::query(hot::CLAIM_CANDIDATES)
                        .bind(kind)
                        .bind(now)
                        .bind(to_json(&full))
                        .bind((wanted - found) as i64)
                        .bind(low)
                        .bind(high)
                        .fetch_all(&mut *tx)
                        .await?;
                    found += rows.len();
                    candidates.extend(rows);
                    if found >= wanted {
                        break;
                    }
                }
            }
            candidates.sort_by_key(|row| row.try_get::<i64, _>("id").unwrap_or(i64::MAX));
            let mut filled = false;
            for row in &candidates {
                if chosen.len() as i64 >= req.limit {
                    break;
                }
                let id: i64 = row.try_get("id")?;
                if chosen.contains(&id) {
                    continue;
                }
                let key = (
                    row.try_get::<i64, _>("pipeline_id")?,
                    row.try_get::<String, _>("stage")?,
                );
                if let Some(r) = room.get_mut(&key) {
                    if *r <= 0 {
                        continue;
                    }
                    *r -= 1;
                    if *r == 0 {
                        filled = true;
                        full.push(json!([key.0, key.1]));
                        if let Some(range) = ranges.get(&key) {
                            skip.push(*range);
                        }
                    }
                }
                chosen.push(id);
            }
            let exhausted = candidates.len() < wanted;
            if chosen.len() as i64 >= req.limit || !filled || exhausted {
                break;
            }
        }
        if chosen.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let ids = ids_json(chosen.iter().copied());
        let token_prefix = format!("{:016x}", rand::random::<u64>());
        let lease_until = now + policy.lease_ms * MICROS_PER_MS;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?2, \
               lease_token = ?3 || '.' || id || '.' || (attempts + 1), lease_expires_at = ?4, \
               started_at = COALESCE(started_at, ?5), progress = NULL, cancel_requested = 0, waited_ms = 0, \
               attempt_deadline_at = ?5 + 1000 * (SELECT timeout_ms FROM stages s \
                   WHERE s.pipeline_id = jobs.pipeline_id AND s.name = jobs.stage) \
             WHERE id IN (SELECT value FROM json_each(?1)) \
             RETURNING id, pipeline_id, stage, key, kind, item, params, attempts, lease_token, \
               (attempt_deadline_at - ?5) / 1000 AS timeout_ms",
        )
        .bind(&ids)
        .bind(&req.worker_id)
        .bind(&token_prefix)
        .bind(lease_until)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO attempts (job_id, number, worker_id, started_at, outcome, token) \
             SELECT id, attempts, ?2, ?3, 'running', lease_token FROM jobs WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids)
        .bind(&req.worker_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO events (pipeline_id, job_id, at, kind, data) \
             SELECT pipeline_id, id, ?2, 'job_state', json_object('key', key, 'stage', stage, \
               'state', 'running', 'attempt', attempts, 'worker', ?3) \
             FROM jobs WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
        )
        .bind(&ids)
        .bind(now)
        .bind(&req.worker_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push(ClaimedJob {
                job_id: row.try_get("id")?,
                pipeline_id: row.try_get("pipeline_id")?,
                stage: row.try_get("stage")?,
                key: row.try_get("key")?,
                kind: row.try_get("kind")?,
                item: parse_json(Some(row.try_get("item")?))?.unwrap_or(Value::Null),
                params: parse_json(Some(row.try_get("params")?))?.unwrap_or(Value::Null),
                attempt: row.try_get("attempts")?,
                token: row.try_get("lease_token")?,
                timeout_ms: row.try_get("timeout_ms")?,
                lease_ms: policy.lease_ms,
            });
        }
        claimed.sort_by_key(|c| c.job_id);
        Ok(claimed)
    }

    async fn heartbeat(
        &self,
        hb: &Heartbeat,
        policy: &LeasePolicy,
        now: Micros,
    ) -> StoreResult<HeartbeatReply> {
        let mut tx = self.writer.begin().await?;
        let worker = sqlx::query(&format!(
            "UPDATE workers SET last_seen = ?2 WHERE id = ?1 RETURNING {QUARANTINED_UNTIL}"
        ))
        .bind(&hb.worker_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let quarantined_until = match worker {
            Some(row) => row
                .try_get::<Option<i64>, _>("quarantined_until")?
                .filter(|t| *t > now),
            None => None,
        };
        let ids: Vec<i64> = hb.leases.iter().map(|l| l.job_id).collect();
        let current: HashMap<i64, Brief> = briefs_by_ids(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|b| (b.id, b))
            .collect();
        let mut stop = Vec::new();
        let lease_until = now + policy.lease_ms * MICROS_PER_MS;
        for lease in &hb.leases {
            let owned = current.get(&lease.job_id).filter(|b| {
                b.state == JobState::Running
                    && b.lease_token.as_deref() == Some(lease.token.as_str())
            });
            let Some(job) = owned else {
                stop.push(StopOrder {
                    job_id: lease.job_id,
                    token: lease.token.clone(),
                    reason: StopReason::LeaseLost,
                });
                continue;
            };
            if job.cancel_requested {
                stop.push(StopOrder {
                    job_id: job.id,
                    token: lease.token.clone(),
                    reason: StopReason::Cancelled,
                });
            }
            // Workers send progress only when it changed, so every one is an event.
            let progress = lease.progress.as_ref().map(to_json);
            sqlx::query(
                "UPDATE jobs SET lease_expires_at = ?2, progress = COALESCE(?3, progress), \
                 attempt_deadline_at = CASE WHEN ?4 THEN NULL \
                     ELSE attempt_deadline_at + 1000 * MAX(0, ?5 - waited_ms) END, \
                 waited_ms = MAX(waited_ms, ?5) WHERE id = ?1",
            )
            .bind(job.id)
            .bind(lease_until)
            .bind(&progress)
            .bind(lease.finished)
            .bind(lease.waited_ms)
            .execute(&mut *tx)
            .await?;
            if let Some(p) = &lease.progress {
                let data = json!({"key": job.key, "stage": job.stage, "progress": p});
                emit(
                    &mut tx,
                    job.pipeline_id,
                    Some(job.id),
                    "job_progress",
                    data,
                    now,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(HeartbeatReply {
            stop,
            quarantined_until,
        })
    }

    async fn report(
        &self,
        reports: &[Report],
        policy: &LeasePolicy,
        now: Micros,
    ) -> StoreResult<Vec<ReportAck>> {
        let mut tx = self.writer.begin().await?;
        let ids: Vec<i64> = reports.iter().map(|r| r.job_id).collect();
        let current: HashMap<i64, Brief> = briefs_by_ids(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|b| (b.id, b))
            .collect();
        let mut acks = Vec::with_capacity(reports.len());
        let mut completed: Vec<Value> = Vec::new();
        let mut completed_ids = Vec::new();
        let mut touched = BTreeSet::new();
        let mut artifacts: Vec<Value> = Vec::new();
        let mut succeeded_workers = BTreeSet::new();
        let mut seen_in_batch = BTreeSet::new();
        let mut late = Vec::new();
        let mut late_dead = Vec::new();
        let mut released_barrier = false;
        for report in reports {
            let Some(job) = current.get(&report.job_id) else {
                acks.push(ReportAck::Unknown);
                continue;
            };
            let leased = job.state == JobState::Running
                && job.lease_token.as_deref() == Some(report.token.as_str());
            let arrived_late = !leased && late_result_acceptable(&mut tx, job, report, now).await?;
            let owns = (leased || arrived_late) && seen_in_batch.insert(job.id);
            if owns && arrived_late {
                tracing::info!(job = job.id, attempt = report.attempt, "a result that arrived after its lease expired is accepted: no newer attempt started");
                late.push(job.id);
                if job.state == JobState::Dead {
                    late_dead.push(job.id);
                }
            }
            if !owns {
                // A late report from an attempt that lost its lease: keep the history, change
                // nothing else. Idempotent when the same attempt reports again.
                sqlx::query(
                    "UPDATE attempts SET outcome = 'superseded', finished_at = COALESCE(finished_at, ?3) \
                     WHERE job_id = ?1 AND number = ?2 AND outcome IN ('running', 'lost', 'timed_out')",
                )
                .bind(job.id)
                .bind(report.attempt)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let already_done = job.state == JobState::Completed
                    && matches!(report.outcome, ReportOutcome::Completed { .. })
                    && job.attempts == report.attempt;
                acks.push(if already_done {
                    ReportAck::Accepted
                } else {
                    ReportAck::Superseded
                });
                continue;
            }
            touched.insert(job.pipeline_id);
            let artifact_refs = match &report.outcome {
                ReportOutcome::Completed { artifacts, .. }
                | ReportOutcome::Failed { artifacts, .. } => artifacts.as_slice(),
                _ => &[],
            };
            for a in artifact_refs {
                artifacts.push(json!([job.id, job.attempts, a.name, a.sha256, a.size]));
            }
            match &report.outcome {
                ReportOutcome::Completed { result, .. } => {
                    completed.push(json!([job.id, to_json(result), report.worker_id]));
                    completed_ids.push(job.id);
                    succeeded_workers.insert(report.worker_id.clone());
                }
                ReportOutcome::Failed { failure, .. } => {
                    if job.cancel_requested {
                        finish_unsuccessfully(
                            &mut tx,
                            std::slice::from_ref(job),
                            JobState::Cancelled,
                            None,
                            now,
                        )
                        .await?;
                    } else {
                        fail_running(&mut tx, job, AttemptOutcome::Failed, failure, policy, now)
                            .await?;
                    }
                }
                ReportOutcome::Cancelled => {
                    finish_unsuccessfully(
                        &mut tx,
                        std::slice::from_ref(job),
                        JobState::Cancelled,
                        None,
                        now,
                    )
                    .await?;
                }
                ReportOutcome::Released if cancel_wanted(&mut tx, job).await? => {
                    finish_unsuccessfully(
                        &mut tx,
                        std::slice::from_ref(job),
                        JobState::Cancelled,
                        None,
                        now,
                    )
                    .await?;
                }
                ReportOutcome::Released => {
                    close_attempt(
                        &mut tx,
                        job.id,
                        job.attempts,
                        AttemptOutcome::Cancelled,
                        Some(&Failure::retryable(
                            "released",
                            "the worker shut down and handed the job back",
                        )),
                        now,
                    )
                    .await?;
                    sqlx::query(
                        "UPDATE jobs SET state = 'available', run_after = ?2, lease_token = NULL, \
                         lease_expires_at = NULL, attempt_deadline_at = NULL, worker_id = NULL WHERE id = ?1",
                    )
                    .bind(job.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    emit_job_state(
                        &mut tx,
                        job,
                        JobState::Available,
                        json!({"reason": "released"}),
                        now,
                    )
                    .await?;
                }
            }
            acks.push(ReportAck::Accepted);
        }
        if !completed.is_empty() {
            let rows = to_json(&completed);
            let ids = ids_json(completed_ids.iter().copied());
            sqlx::query(
                "UPDATE jobs SET state = 'completed', result = v.value ->> 1, finished_at = ?2, \
                   worker_id = COALESCE(worker_id, v.value ->> 2), \
                   lease_token = NULL, lease_expires_at = NULL, attempt_deadline_at = NULL, last_error = NULL \
                 FROM json_each(?1) v WHERE jobs.id = v.value ->> 0",
            )
            .bind(&rows)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // A late result's attempt was recorded lost; it was not, after all.
            sqlx::query(
                "UPDATE attempts SET outcome = 'completed', finished_at = ?2, error = NULL \
                 WHERE outcome IN ('running', 'lost') AND (job_id, number) IN \
                   (SELECT id, attempts FROM jobs WHERE id IN (SELECT value FROM json_each(?1)))",
            )
            .bind(&ids)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if !late.is_empty() {
                sqlx::query(
                    "UPDATE jobs SET failed_attempts = MAX(0, failed_attempts - 1) \
                     WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(ids_json(late.iter().copied()))
                .execute(&mut *tx)
                .await?;
            }
            if !late_dead.is_empty() {
                // It died of that lost attempt: what was skipped because of it can run.
                let pipelines: Vec<i64> = late_dead
                    .iter()
                    .map(|id| current[id].pipeline_id)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                revive_skipped_dependents(&mut tx, late_dead.clone(), now).await?;
                reopen_pipelines(&mut tx, &pipelines, Deadline::Keep, now).await?;
                // A revived job that also waits on another dead job still cannot run.
                skip_blocked_waiting(&mut tx, &pipelines, now).await?;
            }
            sqlx::query(
                "INSERT INTO events (pipeline_id, job_id, at, kind, data) \
                 SELECT pipeline_id, id, ?2, 'job_state', json_object('key', key, 'stage', stage, \
                   'state', 'completed', 'attempt', attempts) \
                 FROM jobs WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
            )
            .bind(&ids)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE stages SET consecutive_failures = 0 WHERE consecutive_failures > 0 AND \
                 (pipeline_id, name) IN (SELECT pipeline_id, stage FROM jobs WHERE id IN (SELECT value FROM json_each(?1)))",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE workers SET consecutive_failures = 0, leases_expired = 0 \
                 WHERE (consecutive_failures > 0 OR leases_expired > 0) \
                 AND id IN (SELECT value FROM json_each(?1))",
            )
            .bind(to_json(&succeeded_workers))
            .execute(&mut *tx)
            .await?;
            released_barrier = release_dependents(&mut tx, &completed_ids, now).await?;
        }
        if !artifacts.is_empty() {
            sqlx::query(
                "INSERT OR REPLACE INTO artifacts (job_id, attempt, name, sha256, size) \
                 SELECT v.value ->> 0, v.value ->> 1, v.value ->> 2, v.value ->> 3, v.value ->> 4 FROM json_each(?1) v",
            )
            .bind(to_json(&artifacts))
            .execute(&mut *tx)
            .await?;
        }
        finalize(&mut tx, touched, now).await?;
        tx.commit().await?;
        if released_barrier {
            self.finish_releases(now).await?;
        }
        Ok(acks)
    }

    async fn reconcile(&self, policy: &LeasePolicy, now: Micros) -> StoreResult<ReconcileStats> {
        let mut stats = ReconcileStats::default();
        let mut tx = self.writer.begin().await?;
        let mut touched = BTreeSet::new();

        // 1. Leases that expired: the worker stopped heartbeating.
        let expired = briefs_from(&mut tx, hot::RUNNING_JOBS, hot::LEASE_EXPIRED, &[now]).await?;
        for job in &expired {
            touched.insert(job.pipeline_id);
            if job.cancel_requested {
                finish_unsuccessfully(
                    &mut tx,
                    std::slice::from_ref(job),
                    JobState::Cancelled,
                    None,
                    now,
                )
                .await?;
                stats.cancelled_jobs_closed += 1;
            } else {
                let failure = Failure::worker_lost(format!(
                    "worker `{}` stopped heartbeating; its lease expired",
                    job.worker_id.as_deref().unwrap_or("?")
                ));
                fail_running(&mut tx, job, AttemptOutcome::Lost, &failure, policy, now).await?;
                if let Some(worker) = &job.worker_id {
                    note_lease_expired(&mut tx, worker, policy, now).await?;
                }
                stats.leases_expired += 1;
            }
        }

        // 2. Attempts past their timeout that the worker did not end itself (a hung
        //    worker keeps heartbeating). The grace lets a healthy worker report first.
        let grace = policy.lease_ms * MICROS_PER_MS;
        let overdue = briefs_from(
            &mut tx,
            hot::RUNNING_JOBS,
            hot::ATTEMPT_OVERDUE,
            &[grace, now],
        )
        .await?;
        for job in &overdue {
            touched.insert(job.pipeline_id);
            let failure = Failure::retryable(
                "timeout",
                "the attempt ran past its timeout and was taken back",
            );
            fail_running(
                &mut tx,
                job,
                AttemptOutcome::TimedOut,
                &failure,
                policy,
                now,
            )
            .await?;
            stats.attempts_timed_out += 1;
        }

        // 3. Stage deadlines, then 4. pipeline deadlines: everything unfinished is dead.
        let late_stages = sqlx::query(&format!(
            "SELECT s.pipeline_id, s.name FROM stages s JOIN pipelines p ON p.id = s.pipeline_id \
             WHERE p.state = 'running' AND s.deadline_at < ?1 AND EXISTS (SELECT 1 FROM jobs j \
               WHERE j.pipeline_id = s.pipeline_id AND j.stage = s.name AND j.state IN {UNFINISHED})"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for row in &late_stages {
            let pipeline_id: i64 = row.try_get("pipeline_id")?;
            let stage: String = row.try_get("name")?;
            let sql = format!(
                "SELECT {BRIEF_COLUMNS} FROM jobs WHERE pipeline_id = ?1 AND stage = ?2 AND state IN {UNFINISHED} ORDER BY id"
            );
            let jobs: Vec<Brief> = sqlx::query(&sql)
                .bind(pipeline_id)
                .bind(&stage)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(brief_from_row)
                .collect::<StoreResult<_>>()?;
            let failure = Failure::permanent(
                "stage_deadline",
                format!("stage `{stage}` passed its deadline"),
            );
            stats.deadline_jobs += jobs.len() as i64;
            finish_unsuccessfully(&mut tx, &jobs, JobState::Dead, Some(&failure), now).await?;
            touched.insert(pipeline_id);
        }
        let late_pipelines: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM pipelines WHERE state = 'running' AND deadline_at < ?1",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for pipeline_id in late_pipelines {
            let jobs = briefs_where(
                &mut tx,
                &format!("pipeline_id = ?1 AND state IN {UNFINISHED}"),
                &[pipeline_id],
            )
            .await?;
            let failure =
                Failure::permanent("pipeline_deadline", "the pipeline passed its deadline");
            stats.deadline_jobs += jobs.len() as i64;
            finish_unsuccessfully(&mut tx, &jobs, JobState::Dead, Some(&failure), now).await?;
            touched.insert(pipeline_id);
        }

        // 5. Barriers released and cancellations asked for whose chunks a crash cut short
        //    go on, a chunk per tick.
        for (pipeline, stage, upstream) in unfinished_releases(&mut tx).await? {
            count_down_barrier(&mut tx, pipeline, &stage, &upstream, now).await?;
            touched.insert(pipeline);
        }
        let cancelling: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM pipelines WHERE state = 'running' AND cancel_requested = 1",
        )
        .fetch_all(&mut *tx)
        .await?;
        for id in cancelling {
            cancel_idle_chunk(&mut tx, id, i64::MAX, now).await?;
            touched.insert(id);
        }

        // 6. The backstop: no pipeline is left with waiting jobs and nothing they could
        //    be waiting for, and any running pipeline with nothing left to do is finalized.
        let running: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM pipelines WHERE state = 'running'")
                .fetch_all(&mut *tx)
                .await?;
        stats.blocked_jobs_skipped = repair_quiescent(&mut tx, &running, now).await?;
        touched.extend(running);
        stats.pipelines_finalized = finalize(&mut tx, touched, now).await?;
        tx.commit().await?;
        Ok(stats)
    }

    async fn cancel_pipeline(&self, pipeline_id: i64, now: Micros) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        let found = sqlx::query("UPDATE pipelines SET cancel_requested = 1 WHERE id = ?1 AND state = 'running' RETURNING id")
            .bind(pipeline_id)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM pipelines WHERE id = ?1 AND state != 'creating'",
            )
            .bind(pipeline_id)
            .fetch_optional(&mut *tx)
            .await?;
            return match exists {
                Some(_) => Ok(()),
                None => Err(StoreError::NotFound(format!("pipeline {pipeline_id}"))),
            };
        }
        emit(
            &mut tx,
            pipeline_id,
            None,
            "pipeline_cancel_requested",
            json!({}),
            now,
        )
        .await?;
        sqlx::query(
            "UPDATE jobs SET cancel_requested = 1 WHERE pipeline_id = ?1 AND state = 'running'",
        )
        .bind(pipeline_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // Nothing of it is claimable any more; its idle jobs are cancelled a chunk at a
        // time (a crash in between leaves the rest to the reconciler).
        let mut below = i64::MAX;
        loop {
            let mut tx = self.writer.begin().await?;
            let next = cancel_idle_chunk(&mut tx, pipeline_id, below, now).await?;
            tx.commit().await?;
            match next {
                Some(id) => below = id,
                None => return Ok(()),
            }
        }
    }

    async fn cancel_job(&self, job_id: i64, now: Micros) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        let job = visible_job(&mut tx, job_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))?;
        match job.state {
            JobState::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
            }
            s if s.is_terminal() => {}
            _ => {
                finish_unsuccessfully(
                    &mut tx,
                    std::slice::from_ref(&job),
                    JobState::Cancelled,
                    None,
                    now,
                )
                .await?;
                finalize(&mut tx, [job.pipeline_id], now).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn retry_dead(&self, target: &RetryTarget, now: Micros) -> StoreResult<i64> {
        let mut tx = self.writer.begin().await?;
        let dead = match target {
            RetryTarget::Job(id) => {
                let found = visible_job(&mut tx, *id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
                Some(found)
                    .into_iter()
                    .filter(|b| b.state == JobState::Dead)
                    .collect::<Vec<_>>()
            }
            RetryTarget::Pipeline(id) => {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM pipelines WHERE id = ?1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("pipeline {id}")));
                }
                briefs_where(&mut tx, "pipeline_id = ?1 AND state = 'dead'", &[*id]).await?
            }
        };
        if dead.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let dead_ids: Vec<i64> = dead.iter().map(|j| j.id).collect();
        let mut revived: Vec<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = CASE WHEN pending_deps > 0 THEN 'waiting' ELSE 'available' END, \
             run_after = ?2, failed_attempts = 0, finished_at = NULL \
             WHERE id IN (SELECT value FROM json_each(?1)) RETURNING id",
        )
        .bind(ids_json(dead_ids.iter().copied()))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        revived.sort_unstable();
        emit_states(
            &mut tx,
            &revived,
            json!({"reason": "retried by request"}),
            false,
            now,
        )
        .await?;
        let mut stages: BTreeSet<(i64, String)> = dead
            .iter()
            .map(|j| (j.pipeline_id, j.stage.clone()))
            .collect();
        // Dependents skipped because of these jobs wait again, transitively.
        stages.extend(revive_skipped_dependents(&mut tx, dead_ids, now).await?);
        // Every stage with revived jobs gets a closed breaker and a fresh deadline, or the
        // revived jobs would die again at once.
        for (pipeline_id, stage) in &stages {
            let was_open: i64 = sqlx::query_scalar(
                "SELECT breaker_open FROM stages WHERE pipeline_id = ?1 AND name = ?2",
            )
            .bind(pipeline_id)
            .bind(stage)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE stages SET consecutive_failures = 0, breaker_open = 0, \
                 deadline_at = CASE WHEN deadline_ms IS NULL THEN NULL ELSE ?3 + deadline_ms * 1000 END \
                 WHERE pipeline_id = ?1 AND name = ?2",
            )
            .bind(pipeline_id)
            .bind(stage)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if was_open != 0 {
                emit(
                    &mut tx,
                    *pipeline_id,
                    None,
                    "breaker_closed",
                    json!({"stage": stage}),
                    now,
                )
                .await?;
            }
        }
        let pipelines: Vec<i64> = dead
            .iter()
            .map(|j| j.pipeline_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        reopen_pipelines(&mut tx, &pipelines, Deadline::Fresh, now).await?;
        // A revived job whose other upstream jobs are dead still cannot run.
        skip_blocked_waiting(&mut tx, &pipelines, now).await?;
        finalize(&mut tx, pipelines.iter().copied(), now).await?;
        tx.commit().await?;
        Ok(dead.len() as i64)
    }

    async fn pipeline(&self, id: i64) -> StoreResult<Option<Pipeline>> {
        let mut conn = self.reader.acquire().await?;
        let row = sqlx::query(&format!(
            "SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE id = ?1 AND state != 'creating'"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(row) => {
                let c = counts(&mut conn, id).await?;
                Ok(Some(pipeline_from_row(&row, c)?))
            }
            None => Ok(None),
        }
    }

    async fn list_pipelines(&self, filter: &PipelineFilter) -> StoreResult<Vec<Pipeline>> {
        let mut conn = self.reader.acquire().await?;
        let rows = sqlx::query(&format!(
            "SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE (?2 IS NULL OR state = ?2) \
             AND state != 'creating' AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?1"
        ))
        .bind(filter.limit)
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.before_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let c = counts(&mut conn, row.try_get("id")?).await?;
            out.push(pipeline_from_row(row, c)?);
        }
        Ok(out)
    }

    async fn stages(&self, pipeline_id: i64) -> StoreResult<Vec<StageSummary>> {
        let mut conn = self.reader.acquire().await?;
        let rows = sqlx::query(
            "SELECT name, kind, position, concurrency, timeout_ms, max_attempts, backoff_base_ms, backoff_max_ms, \
             breaker_threshold, consecutive_failures, breaker_open, deadline_at FROM stages \
             WHERE pipeline_id = ?1 ORDER BY position",
        )
        .bind(pipeline_id)
        .fetch_all(&mut *conn)
        .await?;
        let count_rows = sqlx::query(
            "SELECT stage, state, COUNT(*) AS n FROM jobs WHERE pipeline_id = ?1 GROUP BY stage, state",
        )
        .bind(pipeline_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut by_stage: HashMap<String, StateCounts> = HashMap::new();
        for row in &count_rows {
            by_stage.entry(row.try_get("stage")?).or_default().add(
                parse_enum(row.try_get::<&str, _>("state")?)?,
                row.try_get("n")?,
            );
        }
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                Ok(StageSummary {
                    counts: by_stage.remove(&name).unwrap_or_default(),
                    name,
                    kind: row.try_get("kind")?,
                    position: row.try_get("position")?,
                    concurrency: row.try_get("concurrency")?,
                    timeout_ms: row.try_get("timeout_ms")?,
                    retry: RetryPolicy {
                        max_attempts: row.try_get("max_attempts")?,
                        backoff_base_ms: row.try_get("backoff_base_ms")?,
                        backoff_max_ms: row.try_get("backoff_max_ms")?,
                    },
                    breaker_threshold: row.try_get("breaker_threshold")?,
                    consecutive_failures: row.try_get("consecutive_failures")?,
                    breaker_open: row.try_get::<i64, _>("breaker_open")? != 0,
                    deadline_at: row.try_get("deadline_at")?,
                })
            })
            .collect()
    }

    async fn jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        let limit = filter.limit.unwrap_or(1_000);
        let one_state = filter.state.map(|s| s.as_str());
        if !filter.pending || one_state.is_some() {
            return jobs_in_state(&self.reader, filter, one_state, limit).await;
        }
        // Pending is three states: one indexed read of each, merged by id, rather than
        // every pending job of the pipeline sorted to keep the first few.
        let mut out = Vec::new();
        for state in ["waiting", "available", "retrying"] {
            out.extend(jobs_in_state(&self.reader, filter, Some(state), limit).await?);
        }
        out.sort_by_key(|j| j.id);
        out.truncate(limit.max(0) as usize);
        Ok(out)
    }

    async fn prune_events(&self, before: Micros, limit: i64) -> StoreResult<i64> {
        let done = sqlx::query(
            // CROSS JOIN keeps this order: the few pipelines first, then their events by
            // index, never a scan of every event.
            "DELETE FROM events WHERE id IN (SELECT e.id FROM pipelines p \
             CROSS JOIN events e ON e.pipeline_id = p.id \
             WHERE p.finished_at < ?1 AND p.state != 'running' LIMIT ?2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() as i64)
    }

    async fn job_events(&self, job_id: i64, limit: i64) -> StoreResult<Vec<Event>> {
        sqlx::query(
            "SELECT * FROM (SELECT id, pipeline_id, job_id, at, kind, data FROM events \
             WHERE job_id = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )
        .bind(job_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }

    async fn event_id_back(&self, pipeline_id: Option<i64>, back: i64) -> StoreResult<i64> {
        let sql = match pipeline_id {
            Some(_) => hot::EVENT_BACK_OF_PIPELINE,
            None => hot::EVENT_BACK_OF_ALL,
        };
        let id: Option<i64> = sqlx::query_scalar(sql)
            .bind(pipeline_id)
            .bind(back.max(0))
            .fetch_optional(&self.reader)
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn job_cells(&self, pipeline_id: i64) -> StoreResult<Vec<JobCell>> {
        sqlx::query("SELECT id, stage, state, item FROM jobs WHERE pipeline_id = ?1 ORDER BY id")
            .bind(pipeline_id)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| {
                Ok(JobCell {
                    id: row.try_get("id")?,
                    stage: row.try_get("stage")?,
                    state: parse_enum(row.try_get::<&str, _>("state")?)?,
                    item: parse_json(Some(row.try_get("item")?))?.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn job_groups(&self, pipeline_id: i64) -> StoreResult<Vec<JobGroup>> {
        // An app is named only by string model and template, as in `grid::build`.
        sqlx::query(
            "SELECT stage, \
             CASE WHEN json_type(item, '$.model') = 'text' AND json_type(item, '$.template') = 'text' \
                  THEN json_extract(item, '$.model') END AS model, \
             CASE WHEN json_type(item, '$.model') = 'text' AND json_type(item, '$.template') = 'text' \
                  THEN json_extract(item, '$.template') END AS template, \
             state, COUNT(*) AS n, MIN(id) AS first_id \
             FROM jobs WHERE pipeline_id = ?1 \
             GROUP BY stage, model, template, state ORDER BY first_id",
        )
        .bind(pipeline_id)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok(JobGroup {
                stage: row.try_get("stage")?,
                model: row.try_get("model")?,
                template: row.try_get("template")?,
                state: parse_enum(row.try_get::<&str, _>("state")?)?,
                count: row.try_get("n")?,
                first_id: row.try_get("first_id")?,
            })
        })
        .collect()
    }

    async fn breakers(&self, limit: i64) -> StoreResult<Vec<BreakerRow>> {
        sqlx::query(
            "SELECT s.pipeline_id, p.name AS pipeline_name, s.name, s.kind, s.breaker_threshold, \
             s.consecutive_failures, s.breaker_open FROM stages s \
             JOIN pipelines p ON p.id = s.pipeline_id \
             WHERE p.state = 'running' AND s.breaker_threshold > 0 \
             ORDER BY s.breaker_open DESC, s.consecutive_failures DESC, s.pipeline_id DESC, s.position \
             LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok(BreakerRow {
                pipeline_id: row.try_get("pipeline_id")?,
                pipeline_name: row.try_get("pipeline_name")?,
                stage: row.try_get("name")?,
                kind: row.try_get("kind")?,
                threshold: row.try_get("breaker_threshold")?,
                consecutive_failures: row.try_get("consecutive_failures")?,
                open: row.try_get::<i64, _>("breaker_open")? != 0,
            })
        })
        .collect()
    }

    async fn job(&self, id: i64) -> StoreResult<Option<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 \
             AND pipeline_id NOT IN (SELECT id FROM pipelines WHERE state = 'creating')"
        );
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn attempts(&self, job_id: i64) -> StoreResult<Vec<Attempt>> {
        sqlx::query("SELECT job_id, number, worker_id, started_at, finished_at, outcome, error FROM attempts WHERE job_id = ?1 ORDER BY number")
            .bind(job_id)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| {
                Ok(Attempt {
                    job_id: row.try_get("job_id")?,
                    number: row.try_get("number")?,
                    worker_id: row.try_get("worker_id")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                    outcome: parse_enum(row.try_get::<&str, _>("outcome")?)?,
                    error: parse_json(row.try_get("error")?)?,
                })
            })
            .collect()
    }

    async fn dependencies(&self, job_id: i64, limit: i64) -> StoreResult<Vec<Dependency>> {
        sqlx::query(
            "SELECT * FROM (SELECT j.id, j.key, j.state FROM job_deps d JOIN jobs j ON j.id = d.upstream_id \
               WHERE d.job_id = ?1 ORDER BY j.id LIMIT ?2) \
             UNION ALL SELECT * FROM (SELECT u.id, u.key, u.state FROM jobs me \
               JOIN stage_waits w ON w.pipeline_id = me.pipeline_id AND w.stage = me.stage \
               JOIN jobs u ON u.pipeline_id = w.pipeline_id AND u.stage = w.upstream_stage \
               WHERE me.id = ?1 ORDER BY u.id LIMIT ?2) LIMIT ?2",
        )
        .bind(job_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok(Dependency {
                job_id: row.try_get("id")?,
                key: row.try_get("key")?,
                state: parse_enum(row.try_get::<&str, _>("state")?)?,
            })
        })
        .collect()
    }

    async fn unfinished_upstream(
        &self,
        job_id: i64,
        limit: i64,
    ) -> StoreResult<(Vec<String>, i64)> {
        let mut conn = self.reader.acquire().await?;
        // Its own upstream jobs first, then those of the stages it waits for as a whole
        // (barriers already released have nothing left).
        let keys: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT key FROM (SELECT * FROM (SELECT j.key, j.id FROM job_deps d JOIN jobs j ON j.id = d.upstream_id \
               WHERE d.job_id = ?1 AND j.state != 'completed' ORDER BY j.id LIMIT ?2) \
             UNION ALL SELECT * FROM (SELECT u.key, u.id FROM jobs me \
               JOIN stage_waits w ON w.pipeline_id = me.pipeline_id AND w.stage = me.stage AND w.released = 0 \
               JOIN jobs u ON u.pipeline_id = w.pipeline_id AND u.stage = w.upstream_stage AND u.state IN {NOT_COMPLETED} \
               WHERE me.id = ?1 ORDER BY u.id LIMIT ?2)) LIMIT ?2"
        ))
        .bind(job_id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let total: i64 = if (keys.len() as i64) < limit {
            keys.len() as i64
        } else {
            sqlx::query_scalar(&format!(
                "SELECT (SELECT COUNT(*) FROM job_deps d JOIN jobs j ON j.id = d.upstream_id \
                   WHERE d.job_id = ?1 AND j.state != 'completed') + \
                 (SELECT COUNT(*) FROM jobs me \
                   JOIN stage_waits w ON w.pipeline_id = me.pipeline_id AND w.stage = me.stage AND w.released = 0 \
                   JOIN jobs u ON u.pipeline_id = w.pipeline_id AND u.stage = w.upstream_stage AND u.state IN {NOT_COMPLETED} \
                   WHERE me.id = ?1)"
            ))
            .bind(job_id)
            .fetch_one(&mut *conn)
            .await?
        };
        Ok((keys, total))
    }

    async fn referenced_blobs(&self, digests: &[String]) -> StoreResult<BTreeSet<String>> {
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT sha256 FROM artifacts WHERE sha256 IN (SELECT value FROM json_each(?1))",
        )
        .bind(to_json(&digests))
        .fetch_all(&self.reader)
        .await?;
        Ok(found.into_iter().collect())
    }

    async fn artifacts(&self, job_id: i64) -> StoreResult<Vec<Artifact>> {
        sqlx::query("SELECT job_id, attempt, name, sha256, size FROM artifacts WHERE job_id = ?1 ORDER BY attempt, name")
            .bind(job_id)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| {
                Ok(Artifact {
                    job_id: row.try_get("job_id")?,
                    attempt: row.try_get("attempt")?,
                    name: row.try_get("name")?,
                    sha256: row.try_get("sha256")?,
                    size: row.try_get("size")?,
                })
            })
            .collect()
    }

    async fn events(
        &self,
        pipeline_id: Option<i64>,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>> {
        let sql = match pipeline_id {
            Some(_) => hot::EVENTS_OF_PIPELINE,
            None => hot::EVENTS_OF_ALL,
        };
        sqlx::query(sql)
            .bind(pipeline_id)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn create_token(
        &self,
        name: &str,
        hash: &str,
        scopes: &[crate::domain::Scope],
        now: Micros,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO api_tokens (name, hash, scopes, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
        )
        .bind(name)
        .bind(hash)
        .bind(to_json(&scopes))
        .bind(now)
        .fetch_one(&self.writer)
        .await?)
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = ?1"
        ))
        .bind(hash)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(token_from_row)
        .transpose()
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRow>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id DESC"
        ))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(token_from_row)
        .collect()
    }

    async fn limit_token_kinds(&self, id: i64, kinds: &[String]) -> StoreResult<()> {
        let done = sqlx::query("UPDATE api_tokens SET kinds = ?2 WHERE id = ?1")
            .bind(id)
            .bind(to_json(&kinds))
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("token {id}")));
        }
        Ok(())
    }

    async fn revoke_token(&self, id: i64, now: Micros) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        )
        .bind(id)
        .bind(now)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("token {id}")));
        }
        Ok(())
    }

    async fn bind_worker(
        &self,
        worker_id: &str,
        token_id: i64,
        policy: &WorkerIdPolicy,
        now: Micros,
    ) -> StoreResult<WorkerBinding> {
        let mut tx = self.writer.begin().await?;
        // An owner that is no stored token is one held in memory (`assay run`'s): never
        // revoked.
        let owner: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT o.token_id, t.revoked_at FROM worker_owners o \
             LEFT JOIN api_tokens t ON t.id = o.token_id WHERE o.worker_id = ?1",
        )
        .bind(worker_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((owner, revoked_at)) = owner {
            if owner == token_id || revoked_at.is_none() {
                return Ok(WorkerBinding::Owner(owner));
            }
        }
        const OWNED: &str = "SELECT COUNT(*) FROM worker_owners WHERE token_id = ?1";
        let owned: i64 = sqlx::query_scalar(OWNED)
            .bind(token_id)
            .fetch_one(&mut *tx)
            .await?;
        if owned >= policy.per_token {
            sqlx::query(
                "DELETE FROM worker_owners WHERE token_id = ?1 AND worker_id IN ( \
                   SELECT o.worker_id FROM worker_owners o LEFT JOIN workers w ON w.id = o.worker_id \
                   WHERE o.token_id = ?1 \
                     AND (w.stopped = 1 OR w.last_seen < ?2 OR (w.id IS NULL AND o.bound_at < ?2)) \
                     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'running' AND j.worker_id = o.worker_id) \
                   ORDER BY COALESCE(w.last_seen, o.bound_at) LIMIT 64)",
            )
            .bind(token_id)
            .bind(policy.idle_before)
            .execute(&mut *tx)
            .await?;
            let left: i64 = sqlx::query_scalar(OWNED)
                .bind(token_id)
                .fetch_one(&mut *tx)
                .await?;
            if left >= policy.per_token {
                tx.commit().await?;
                return Ok(WorkerBinding::Full { owned: left });
            }
        }
        sqlx::query(
            "INSERT INTO worker_owners (worker_id, token_id, bound_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (worker_id) DO UPDATE SET token_id = ?2, bound_at = ?3",
        )
        .bind(worker_id)
        .bind(token_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(WorkerBinding::Owner(token_id))
    }

    async fn workers(&self) -> StoreResult<Vec<WorkerRow>> {
        sqlx::query(
            "SELECT w.id, w.name, w.kinds, w.started_at, w.last_seen, w.consecutive_failures, \
             w.quarantined_until, w.stopped, \
             (SELECT COUNT(*) FROM jobs j WHERE j.state = 'running' AND j.worker_id = w.id) AS running \
             FROM workers w ORDER BY w.last_seen DESC LIMIT 500",
        )
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok(WorkerRow {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                kinds: parse_json(Some(row.try_get("kinds")?))?.unwrap_or_default(),
                started_at: row.try_get("started_at")?,
                last_seen: row.try_get("last_seen")?,
                consecutive_failures: row.try_get("consecutive_failures")?,
                quarantined_until: row.try_get("quarantined_until")?,
                stopped: row.try_get::<i64, _>("stopped")? != 0,
                running: row.try_get("running")?,
            })
        })
        .collect()
    }

    async fn has_claimable(&self, kinds: &[String], now: Micros) -> StoreResult<bool> {
        for kind in kinds {
            let found = sqlx::query(hot::CLAIM_CANDIDATES)
                .bind(kind)
                .bind(now)
                .bind("[]")
                .bind(1_i64)
                .bind(i64::MIN)
                .bind(i64::MAX)
                .fetch_optional(&self.reader)
                .await?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn next_retry_at(&self) -> StoreResult<Option<Micros>> {
        Ok(sqlx::query_scalar(hot::NEXT_RETRY)
            .fetch_one(&self.reader)
            .await?)
    }

    async fn record_llm_call(&self, call: &LlmCall, now: Micros) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO llm_calls (pipeline_id, job_id, attempt, provider, model, model_resolved, result, \
             error, prompt_tokens, completion_tokens, cost_usd, saved_usd, at, call_id) \
             SELECT pipeline_id, id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 FROM jobs WHERE id = ?1 \
               AND pipeline_id NOT IN (SELECT id FROM pipelines WHERE state = 'creating') \
             ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(call.job_id)
        .bind(call.attempt)
        .bind(&call.provider)
        .bind(&call.model)
        .bind(&call.model_resolved)
        .bind(call.result.as_str())
        .bind(&call.error)
        .bind(call.prompt_tokens)
        .bind(call.completion_tokens)
        .bind(call.cost_usd)
        .bind(call.saved_usd)
        .bind(now)
        .bind(&call.call_id)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 && self.job(call.job_id).await?.is_none() {
            return Err(StoreError::NotFound(format!("job {}", call.job_id)));
        }
        Ok(done.rows_affected() > 0)
    }

    async fn pipeline_usage(&self, pipeline_id: i64) -> StoreResult<PipelineUsage> {
        let budget: Option<Option<String>> =
            sqlx::query_scalar("SELECT budget FROM pipelines WHERE id = ?1")
                .bind(pipeline_id)
                .fetch_optional(&self.reader)
                .await?;
        let Some(budget) = budget else {
            return Err(StoreError::NotFound(format!("pipeline {pipeline_id}")));
        };
        let rows = sqlx::query(
            "SELECT c.job_id, j.key, c.provider, c.model, \
             COUNT(*) AS calls, \
             SUM(c.result = 'paid') AS paid_calls, \
             SUM(c.result = 'cached') AS cached_calls, \
             SUM(c.result = 'failed') AS failed_calls, \
             SUM(c.prompt_tokens) AS prompt_tokens, \
             SUM(c.completion_tokens) AS completion_tokens, \
             SUM(c.cost_usd) AS cost_usd, SUM(c.saved_usd) AS saved_usd \
             FROM llm_calls c JOIN jobs j ON j.id = c.job_id \
             WHERE c.pipeline_id = ?1 GROUP BY c.job_id, c.provider, c.model ORDER BY c.job_id",
        )
        .bind(pipeline_id)
        .fetch_all(&self.reader)
        .await?;
        let mut usage = PipelineUsage {
            pipeline_id,
            budget: parse_json(budget)?,
            total: UsageTotals::default(),
            by_model: Vec::new(),
            by_job: Vec::new(),
        };
        for row in &rows {
            let totals = UsageTotals {
                calls: row.try_get("calls")?,
                paid_calls: row.try_get("paid_calls")?,
                cached_calls: row.try_get("cached_calls")?,
                failed_calls: row.try_get("failed_calls")?,
                prompt_tokens: row.try_get("prompt_tokens")?,
                completion_tokens: row.try_get("completion_tokens")?,
                cost_usd: row.try_get("cost_usd")?,
                saved_usd: row.try_get("saved_usd")?,
            };
            usage.total.add(&totals);
            let (provider, model): (String, String) =
                (row.try_get("provider")?, row.try_get("model")?);
            match usage
                .by_model
                .iter_mut()
                .find(|m| m.provider == provider && m.model == model)
            {
                Some(m) => m.totals.add(&totals),
                None => usage.by_model.push(ModelUsage {
                    provider,
                    model,
                    totals,
                }),
            }
            let job_id: i64 = row.try_get("job_id")?;
            match usage.by_job.iter_mut().find(|j| j.job_id == job_id) {
                Some(j) => j.totals.add(&totals),
                None => usage.by_job.push(JobUsage {
                    job_id,
                    key: row.try_get("key")?,
                    totals,
                }),
            }
        }
        usage
            .by_model
            .sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        Ok(usage)
    }

    async fn cached_answer(&self, key: &str) -> StoreResult<Option<Value>> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT answer FROM llm_answers WHERE key = ?1")
                .bind(key)
                .fetch_optional(&self.reader)
                .await?;
        parse_json(text)
    }

    async fn cache_answer(&self, key: &str, answer: &Value, now: Micros) -> StoreResult<()> {
        sqlx::query("INSERT INTO llm_answers (key, answer, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(to_json(answer))
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of `sql`, one line per step (`EXPLAIN QUERY PLAN`'s details).
    async fn plan_of(store: &SqliteStore, sql: &str, binds: usize) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = sqlx::query(&explain);
        for i in 0..binds {
            q = q.bind(i as i64 + 1);
        }
        q.fetch_all(&store.reader)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
    }

    #[test]
    fn the_gaps_between_skipped_ranges_cover_everything_else() {
        assert_eq!(id_gaps(vec![]), vec![(i64::MIN, i64::MAX)]);
        assert_eq!(
            id_gaps(vec![(10, 20), (5, 7), (15, 30), (31, 40)]),
            vec![(i64::MIN, 4), (8, 9), (41, i64::MAX)]
        );
        assert_eq!(id_gaps(vec![(i64::MIN, 0)]), vec![(1, i64::MAX)]);
    }

    #[tokio::test]
    async fn hot_statements_read_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("assay.db"))
            .await
            .unwrap();
        let filter = |pipeline: bool, stage: bool| JobFilter {
            pipeline_id: pipeline.then_some(1),
            stage: stage.then(|| "s".to_string()),
            ..Default::default()
        };
        let expired = format!(
            "SELECT {BRIEF_COLUMNS} FROM {} WHERE {} ORDER BY id",
            hot::RUNNING_JOBS,
            hot::LEASE_EXPIRED
        );
        let overdue = format!(
            "SELECT {BRIEF_COLUMNS} FROM {} WHERE {} ORDER BY id",
            hot::RUNNING_JOBS,
            hot::ATTEMPT_OVERDUE
        );
        let statements: Vec<(&str, String, usize)> = vec![
            ("claim candidates", hot::CLAIM_CANDIDATES.into(), 6),
            ("next retry", hot::NEXT_RETRY.into(), 0),
            ("any unfinished", hot::ANY_UNFINISHED.into(), 1),
            ("stage completed", hot::ANY_NOT_COMPLETED_IN_STAGE.into(), 2),
            (
                "count down dependents",
                hot::COUNT_DOWN_DEPENDENTS.into(),
                2,
            ),
            ("quiescent", hot::QUIESCENT_WITH_WAITING.into(), 1),
            ("waiting by edge", hot::WAITING_BY_EDGE.into(), 1),
            ("waiting by barrier", hot::WAITING_BY_BARRIER.into(), 1),
            ("leases expired", expired, 1),
            ("attempts overdue", overdue, 2),
            ("events of a pipeline", hot::EVENTS_OF_PIPELINE.into(), 3),
            ("events of all", hot::EVENTS_OF_ALL.into(), 3),
            (
                "event back, pipeline",
                hot::EVENT_BACK_OF_PIPELINE.into(),
                2,
            ),
            (
                "jobs of a pipeline",
                hot::jobs_page(&filter(true, false), None),
                7,
            ),
            (
                "jobs in a state",
                hot::jobs_page(&filter(true, false), Some("waiting")),
                7,
            ),
            (
                "jobs of a stage",
                hot::jobs_page(&filter(true, true), Some("waiting")),
                7,
            ),
        ];
        // (`EVENT_BACK_OF_ALL` walks the ids down from the newest: it reads `back` rows.)
        for (name, sql, binds) in statements {
            let plan = plan_of(&store, &sql, binds).await;
            for step in &plan {
                let scans_a_table = ["jobs", "events", "job_deps", "attempts", "stage_waits"]
                    .iter()
                    .any(|t| step == &format!("SCAN {t}"));
                let scans_an_index =
                    step.starts_with("SCAN jobs USING") && !step.contains("jobs_running");
                assert!(
                    !scans_a_table && !scans_an_index,
                    "{name} scans: {step}\n{plan:#?}"
                );
            }
            // A pipeline's jobs are many: reading them by pipeline alone is a scan in all
            // but name.
            let by_pipeline_only = plan
                .iter()
                .any(|step| step.starts_with("SEARCH j ") && step.ends_with("(pipeline_id=?)"));
            assert!(
                !by_pipeline_only,
                "{name} reads every job of a pipeline: {plan:#?}"
            );
            let paged =
                name.starts_with("claim") || name.starts_with("jobs") || name.starts_with("events");
            assert!(
                !paged || !plan.iter().any(|s| s.contains("TEMP B-TREE FOR ORDER BY")),
                "{name} sorts what it should read in order: {plan:#?}"
            );
        }
    }
}
