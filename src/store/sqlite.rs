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
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

const UNFINISHED: &str = "('waiting','available','running','retrying')";

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
    let sql = format!("SELECT {BRIEF_COLUMNS} FROM jobs WHERE {condition} ORDER BY id");
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

/// Make a job terminal with `state` (dead, cancelled or skipped) and skip everything that
/// waits on it, transitively.
async fn finish_unsuccessfully(
    conn: &mut SqliteConnection,
    jobs: &[Brief],
    state: JobState,
    failure: Option<&Failure>,
    now: Micros,
) -> StoreResult<()> {
    let mut frontier: Vec<Brief> = Vec::new();
    for job in jobs {
        if job.state.is_terminal() {
            continue;
        }
        sqlx::query(
            "UPDATE jobs SET state = ?2, last_error = COALESCE(?3, last_error), finished_at = ?4, \
             lease_token = NULL, lease_expires_at = NULL, attempt_deadline_at = NULL, \
             cancel_requested = 0 WHERE id = ?1",
        )
        .bind(job.id)
        .bind(state.as_str())
        .bind(failure.map(to_json))
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if job.state == JobState::Running {
            let outcome = if state == JobState::Dead {
                AttemptOutcome::Failed
            } else {
                AttemptOutcome::Cancelled
            };
            close_attempt(conn, job.id, job.attempts, outcome, failure, now).await?;
        }
        let extra = match failure {
            Some(f) => json!({"error": f}),
            None => json!({}),
        };
        emit_job_state(conn, job, state, extra, now).await?;
        frontier.push(job.clone());
    }
    // Walk the dependency graph breadth-first: a skipped job's dependents are skipped too.
    while !frontier.is_empty() {
        let upstream: Vec<i64> = frontier.iter().map(|j| j.id).collect();
        let reasons: HashMap<i64, String> =
            frontier.iter().map(|j| (j.id, j.key.clone())).collect();
        let rows = sqlx::query(
            "SELECT d.job_id, d.upstream_id FROM job_deps d JOIN jobs j ON j.id = d.job_id \
             WHERE d.upstream_id IN (SELECT value FROM json_each(?1)) AND j.state = 'waiting'",
        )
        .bind(ids_json(upstream))
        .fetch_all(&mut *conn)
        .await?;
        let mut cause: HashMap<i64, String> = HashMap::new();
        for row in &rows {
            let job_id: i64 = row.try_get("job_id")?;
            let up: i64 = row.try_get("upstream_id")?;
            cause.entry(job_id).or_insert_with(|| reasons[&up].clone());
        }
        let ids: Vec<i64> = cause.keys().copied().collect();
        let dependents = briefs_by_ids(conn, &ids).await?;
        frontier.clear();
        for dep in dependents {
            let failure = Failure::permanent(
                "upstream_failed",
                format!("upstream job `{}` did not complete", cause[&dep.id]),
            );
            sqlx::query(
                "UPDATE jobs SET state = 'skipped', last_error = ?2, finished_at = ?3 WHERE id = ?1",
            )
            .bind(dep.id)
            .bind(to_json(&failure))
            .bind(now)
            .execute(&mut *conn)
            .await?;
            emit_job_state(
                conn,
                &dep,
                JobState::Skipped,
                json!({"error": failure}),
                now,
            )
            .await?;
            frontier.push(dep);
        }
    }
    Ok(())
}

/// After jobs completed: count down their dependents and make the ready ones available.
async fn release_dependents(
    conn: &mut SqliteConnection,
    completed: &[i64],
    now: Micros,
) -> StoreResult<()> {
    if completed.is_empty() {
        return Ok(());
    }
    let ids = ids_json(completed.iter().copied());
    sqlx::query(
        "UPDATE jobs SET pending_deps = pending_deps - (SELECT COUNT(*) FROM job_deps d \
           WHERE d.job_id = jobs.id AND d.upstream_id IN (SELECT value FROM json_each(?1))) \
         WHERE id IN (SELECT job_id FROM job_deps WHERE upstream_id IN (SELECT value FROM json_each(?1)))",
    )
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    let ready = sqlx::query(
        "UPDATE jobs SET state = 'available', run_after = ?2 \
         WHERE state = 'waiting' AND pending_deps <= 0 AND id IN \
           (SELECT job_id FROM job_deps WHERE upstream_id IN (SELECT value FROM json_each(?1))) \
         RETURNING id, pipeline_id, stage, key",
    )
    .bind(&ids)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for row in &ready {
        let pipeline_id: i64 = row.try_get("pipeline_id")?;
        let job_id: i64 = row.try_get("id")?;
        let data = json!({"key": row.try_get::<String, _>("key")?, "stage": row.try_get::<String, _>("stage")?, "state": "available"});
        emit(conn, pipeline_id, Some(job_id), "job_state", data, now).await?;
    }
    Ok(())
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
        let unfinished: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT 1 FROM jobs WHERE pipeline_id = ?1 AND state IN {UNFINISHED} LIMIT 1"
        ))
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
/// skipped) are skipped, transitively. Keeps `waiting` honest after manual retries and is
/// the reconciler's guard against a job waiting forever.
async fn skip_blocked_waiting(
    conn: &mut SqliteConnection,
    pipeline_ids: &[i64],
    now: Micros,
) -> StoreResult<i64> {
    if pipeline_ids.is_empty() {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT d.job_id, MIN(u.key) AS upstream FROM job_deps d \
         JOIN jobs j ON j.id = d.job_id JOIN jobs u ON u.id = d.upstream_id \
         WHERE j.state = 'waiting' AND u.state IN ('dead', 'cancelled', 'skipped') \
           AND j.pipeline_id IN (SELECT value FROM json_each(?1)) \
         GROUP BY d.job_id",
    )
    .bind(ids_json(pipeline_ids.iter().copied()))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut cause = HashMap::new();
    for row in &rows {
        cause.insert(
            row.try_get::<i64, _>("job_id")?,
            row.try_get::<String, _>("upstream")?,
        );
    }
    let ids: Vec<i64> = cause.keys().copied().collect();
    let blocked = briefs_by_ids(conn, &ids).await?;
    for job in &blocked {
        let failure = Failure::permanent(
            "upstream_failed",
            format!("upstream job `{}` did not complete", cause[&job.id]),
        );
        finish_unsuccessfully(
            conn,
            std::slice::from_ref(job),
            JobState::Skipped,
            Some(&failure),
            now,
        )
        .await?;
    }
    Ok(blocked.len() as i64)
}

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
    let failed_attempts = job.failed_attempts + 1;
    let fate = if breaker_open != 0 {
        AfterFailure::Dead
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

#[async_trait]
impl Store for SqliteStore {
    async fn create_pipeline(&self, new: &NewPipeline, now: Micros) -> StoreResult<(i64, bool)> {
        let mut tx = self.writer.begin().await?;
        if let Some(key) = &new.idempotency_key {
            let existing =
                sqlx::query("SELECT id, spec_hash FROM pipelines WHERE idempotency_key = ?1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(row) = existing {
                let hash: String = row.try_get("spec_hash")?;
                if hash != new.spec_hash {
                    return Err(StoreError::IdempotencyConflict(key.clone()));
                }
                return Ok((row.try_get("id")?, false));
            }
        }
        let deadline_at = new.spec.deadline_micros().map(|d| now + d);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO pipelines (name, state, idempotency_key, spec_hash, spec, created_at, deadline_ms, deadline_at, budget) \
             VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )
        .bind(&new.spec.name)
        .bind(&new.idempotency_key)
        .bind(&new.spec_hash)
        .bind(to_json(&new.spec))
        .bind(now)
        .bind(new.spec.deadline_ms)
        .bind(deadline_at)
        .bind(new.spec.budget.filter(|b| !b.is_unlimited()).map(|b| to_json(&b)))
        .fetch_one(&mut *tx)
        .await?;
        for (position, stage) in new.spec.stages.iter().enumerate() {
            sqlx::query(
                "INSERT INTO stages (pipeline_id, name, position, kind, concurrency, timeout_ms, max_attempts, \
                 backoff_base_ms, backoff_max_ms, breaker_threshold, deadline_ms, deadline_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .bind(id)
            .bind(&stage.name)
            .bind(position as i64)
            .bind(&stage.kind)
            .bind(stage.concurrency)
            .bind(stage.timeout_ms)
            .bind(stage.retry.max_attempts)
            .bind(stage.retry.backoff_base_ms)
            .bind(stage.retry.backoff_max_ms)
            .bind(stage.breaker.threshold)
            .bind(stage.deadline_ms)
            .bind(stage.deadline_ms.map(|d| now + d * MICROS_PER_MS))
            .execute(&mut *tx)
            .await?;
        }
        // Insert all jobs with one statement per chunk, then resolve dependency keys to ids.
        for chunk in new.jobs.chunks(2_000) {
            let rows: Vec<Value> = chunk
                .iter()
                .map(|j| {
                    json!([
                        j.stage,
                        j.key,
                        j.kind,
                        to_json(&j.item),
                        to_json(&j.params),
                        if j.depends_on.is_empty() {
                            "available"
                        } else {
                            "waiting"
                        },
                        j.depends_on.len()
                    ])
                })
                .collect();
            sqlx::query(
                "INSERT INTO jobs (pipeline_id, stage, key, kind, item, params, state, pending_deps, run_after, created_at) \
                 SELECT ?1, v.value ->> 0, v.value ->> 1, v.value ->> 2, v.value ->> 3, v.value ->> 4, \
                        v.value ->> 5, v.value ->> 6, ?2, ?2 FROM json_each(?3) v",
            )
            .bind(id)
            .bind(now)
            .bind(to_json(&rows))
            .execute(&mut *tx)
            .await?;
        }
        let deps: Vec<Value> = new
            .jobs
            .iter()
            .flat_map(|j| j.depends_on.iter().map(move |d| json!([j.key, d])))
            .collect();
        for chunk in deps.chunks(5_000) {
            sqlx::query(
                "INSERT INTO job_deps (job_id, upstream_id) \
                 SELECT a.id, b.id FROM json_each(?2) v \
                 JOIN jobs a ON a.pipeline_id = ?1 AND a.key = v.value ->> 0 \
                 JOIN jobs b ON b.pipeline_id = ?1 AND b.key = v.value ->> 1",
            )
            .bind(id)
            .bind(to_json(&chunk.to_vec()))
            .execute(&mut *tx)
            .await?;
        }
        emit(
            &mut tx,
            id,
            None,
            "pipeline_created",
            json!({"name": new.spec.name, "jobs": new.jobs.len()}),
            now,
        )
        .await?;
        if new.jobs.is_empty() {
            finalize(&mut tx, [id], now).await?;
        }
        match tx.commit().await {
            Ok(()) => Ok((id, true)),
            Err(e) => Err(e.into()),
        }
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
        let failure = Failure::retryable(
            "worker_lost",
            format!("worker `{}` restarted while running this job", w.id),
        );
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
        let worker = sqlx::query(
            "UPDATE workers SET last_seen = ?2 WHERE id = ?1 RETURNING quarantined_until",
        )
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
            "SELECT s.pipeline_id, s.name, s.concurrency - (SELECT COUNT(*) FROM jobs j \
               WHERE j.pipeline_id = s.pipeline_id AND j.stage = s.name AND j.state = 'running') AS room \
             FROM stages s JOIN pipelines p ON p.id = s.pipeline_id \
             WHERE p.state = 'running' AND s.concurrency IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut room: HashMap<(i64, String), i64> = HashMap::new();
        let mut full: Vec<Value> = Vec::new();
        for row in &limited {
            let key = (
                row.try_get::<i64, _>("pipeline_id")?,
                row.try_get::<String, _>("name")?,
            );
            let r: i64 = row.try_get("room")?;
            if r <= 0 {
                full.push(json!([key.0, key.1]));
            }
            room.insert(key, r);
        }
        let candidates = sqlx::query(
            "SELECT id, pipeline_id, stage FROM jobs \
             WHERE state IN ('available','retrying') AND kind IN (SELECT value FROM json_each(?1)) \
               AND run_after <= ?2 \
               AND NOT EXISTS (SELECT 1 FROM pipelines p WHERE p.id = jobs.pipeline_id AND p.cancel_requested = 1) \
               AND NOT EXISTS (SELECT 1 FROM json_each(?3) f \
                   WHERE f.value ->> 0 = jobs.pipeline_id AND f.value ->> 1 = jobs.stage) \
             ORDER BY id LIMIT ?4",
        )
        .bind(to_json(&req.kinds))
        .bind(now)
        .bind(to_json(&full))
        .bind(req.limit * 2)
        .fetch_all(&mut *tx)
        .await?;
        let mut chosen = Vec::with_capacity(req.limit as usize);
        for row in &candidates {
            if chosen.len() as i64 >= req.limit {
                break;
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
            }
            chosen.push(row.try_get::<i64, _>("id")?);
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
            "INSERT INTO attempts (job_id, number, worker_id, started_at, outcome) \
             SELECT id, attempts, ?2, ?3, 'running' FROM jobs WHERE id IN (SELECT value FROM json_each(?1))",
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
        let worker = sqlx::query(
            "UPDATE workers SET last_seen = ?2 WHERE id = ?1 RETURNING quarantined_until",
        )
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
        for report in reports {
            let Some(job) = current.get(&report.job_id) else {
                acks.push(ReportAck::Unknown);
                continue;
            };
            let owns = job.state == JobState::Running
                && job.lease_token.as_deref() == Some(report.token.as_str())
                && seen_in_batch.insert(job.id);
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
                    completed.push(json!([job.id, to_json(result)]));
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
                   lease_token = NULL, lease_expires_at = NULL, attempt_deadline_at = NULL, last_error = NULL \
                 FROM json_each(?1) v WHERE jobs.id = v.value ->> 0",
            )
            .bind(&rows)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE attempts SET outcome = 'completed', finished_at = ?2 \
                 WHERE outcome = 'running' AND (job_id, number) IN \
                   (SELECT id, attempts FROM jobs WHERE id IN (SELECT value FROM json_each(?1)))",
            )
            .bind(&ids)
            .bind(now)
            .execute(&mut *tx)
            .await?;
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
                "UPDATE workers SET consecutive_failures = 0 WHERE consecutive_failures > 0 \
                 AND id IN (SELECT value FROM json_each(?1))",
            )
            .bind(to_json(&succeeded_workers))
            .execute(&mut *tx)
            .await?;
            release_dependents(&mut tx, &completed_ids, now).await?;
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
        Ok(acks)
    }

    async fn reconcile(&self, policy: &LeasePolicy, now: Micros) -> StoreResult<ReconcileStats> {
        let mut stats = ReconcileStats::default();
        let mut tx = self.writer.begin().await?;
        let mut touched = BTreeSet::new();

        // 1. Leases that expired: the worker stopped heartbeating.
        let expired = briefs_where(
            &mut tx,
            "state = 'running' AND lease_expires_at < ?1",
            &[now],
        )
        .await?;
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
                let failure = Failure::retryable(
                    "worker_lost",
                    format!(
                        "worker `{}` stopped heartbeating; its lease expired",
                        job.worker_id.as_deref().unwrap_or("?")
                    ),
                );
                fail_running(&mut tx, job, AttemptOutcome::Lost, &failure, policy, now).await?;
                stats.leases_expired += 1;
            }
        }

        // 2. Attempts past their timeout that the worker did not end itself (a hung
        //    worker keeps heartbeating). The grace lets a healthy worker report first.
        let grace = policy.lease_ms * MICROS_PER_MS;
        let overdue = briefs_where(
            &mut tx,
            "state = 'running' AND attempt_deadline_at + ?1 < ?2",
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

        // 5. The backstop: no job waits on an upstream job that can no longer complete,
        //    and any running pipeline with nothing left to do is finalized.
        let running: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM pipelines WHERE state = 'running'")
                .fetch_all(&mut *tx)
                .await?;
        stats.blocked_jobs_skipped = skip_blocked_waiting(&mut tx, &running, now).await?;
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
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM pipelines WHERE id = ?1")
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
        let idle = briefs_where(
            &mut tx,
            "pipeline_id = ?1 AND state IN ('waiting','available','retrying')",
            &[pipeline_id],
        )
        .await?;
        finish_unsuccessfully(&mut tx, &idle, JobState::Cancelled, None, now).await?;
        finalize(&mut tx, [pipeline_id], now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cancel_job(&self, job_id: i64, now: Micros) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        let job = briefs_by_ids(&mut tx, &[job_id])
            .await?
            .pop()
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
                let found = briefs_by_ids(&mut tx, &[*id]).await?;
                if found.is_empty() {
                    return Err(StoreError::NotFound(format!("job {id}")));
                }
                found
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
        let mut stages: BTreeSet<(i64, String)> = BTreeSet::new();
        for job in &dead {
            let state: String = sqlx::query_scalar(
                "UPDATE jobs SET state = CASE WHEN pending_deps > 0 THEN 'waiting' ELSE 'available' END, \
                 run_after = ?2, failed_attempts = 0, finished_at = NULL WHERE id = ?1 RETURNING state",
            )
            .bind(job.id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let state: JobState = parse_enum(&state)?;
            emit_job_state(
                &mut tx,
                job,
                state,
                json!({"reason": "retried by request"}),
                now,
            )
            .await?;
            stages.insert((job.pipeline_id, job.stage.clone()));
        }
        // Dependents skipped because of these jobs wait again, transitively.
        let mut frontier: Vec<i64> = dead.iter().map(|j| j.id).collect();
        while !frontier.is_empty() {
            let revived = sqlx::query(
                "UPDATE jobs SET state = 'waiting', finished_at = NULL, last_error = NULL \
                 WHERE state = 'skipped' AND id IN (SELECT job_id FROM job_deps \
                   WHERE upstream_id IN (SELECT value FROM json_each(?1))) \
                 RETURNING id, pipeline_id, stage, key",
            )
            .bind(ids_json(frontier.iter().copied()))
            .fetch_all(&mut *tx)
            .await?;
            frontier.clear();
            for row in &revived {
                let id: i64 = row.try_get("id")?;
                let pipeline_id: i64 = row.try_get("pipeline_id")?;
                let stage: String = row.try_get("stage")?;
                let data = json!({"key": row.try_get::<String, _>("key")?, "stage": stage, "state": "waiting"});
                emit(&mut tx, pipeline_id, Some(id), "job_state", data, now).await?;
                stages.insert((pipeline_id, stage));
                frontier.push(id);
            }
        }
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
        for id in &pipelines {
            let previous: String = sqlx::query_scalar("SELECT state FROM pipelines WHERE id = ?1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE pipelines SET state = 'running', finished_at = NULL, cancel_requested = 0, \
                 deadline_at = CASE WHEN deadline_ms IS NULL THEN NULL ELSE ?2 + deadline_ms * 1000 END \
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if previous != "running" {
                emit(
                    &mut tx,
                    *id,
                    None,
                    "pipeline_reopened",
                    json!({"was": previous}),
                    now,
                )
                .await?;
            }
        }
        // A revived job whose other upstream jobs are dead still cannot run.
        skip_blocked_waiting(&mut tx, &pipelines, now).await?;
        finalize(&mut tx, pipelines.iter().copied(), now).await?;
        tx.commit().await?;
        Ok(dead.len() as i64)
    }

    async fn pipeline(&self, id: i64) -> StoreResult<Option<Pipeline>> {
        let mut conn = self.reader.acquire().await?;
        let row = sqlx::query(&format!(
            "SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE id = ?1"
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
             AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?1"
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
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR pipeline_id = ?1) \
             AND (?2 IS NULL OR stage = ?2) AND (?3 IS NULL OR state = ?3) AND id > ?4 \
             AND (?6 = 0 OR state IN ('waiting', 'available', 'retrying')) \
             AND (?7 IS NULL OR json_extract(item, '$.model') = ?7) \
             AND (?8 IS NULL OR json_extract(item, '$.template') = ?8) \
             ORDER BY id LIMIT ?5"
        );
        sqlx::query(&sql)
            .bind(filter.pipeline_id)
            .bind(&filter.stage)
            .bind(filter.state.map(|s| s.as_str()))
            .bind(filter.after_id.unwrap_or(0))
            .bind(filter.limit.unwrap_or(1_000))
            .bind(filter.pending)
            .bind(&filter.model)
            .bind(&filter.template)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
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
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM events WHERE (?1 IS NULL OR pipeline_id = ?1) \
             ORDER BY id DESC LIMIT 1 OFFSET ?2",
        )
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
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
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

    async fn dependencies(&self, job_id: i64) -> StoreResult<Vec<Dependency>> {
        sqlx::query("SELECT j.id, j.key, j.state FROM job_deps d JOIN jobs j ON j.id = d.upstream_id WHERE d.job_id = ?1 ORDER BY j.id")
            .bind(job_id)
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
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT j.key FROM job_deps d JOIN jobs j ON j.id = d.upstream_id \
             WHERE d.job_id = ?1 AND j.state != 'completed' ORDER BY j.id LIMIT ?2",
        )
        .bind(job_id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let total: i64 = if (keys.len() as i64) < limit {
            keys.len() as i64
        } else {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM job_deps d JOIN jobs j ON j.id = d.upstream_id \
                 WHERE d.job_id = ?1 AND j.state != 'completed'",
            )
            .bind(job_id)
            .fetch_one(&mut *conn)
            .await?
        };
        Ok((keys, total))
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
        sqlx::query(
            "SELECT id, pipeline_id, job_id, at, kind, data FROM events \
             WHERE (?1 IS NULL OR pipeline_id = ?1) AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .bind(pipeline_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
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

    async fn next_retry_at(&self) -> StoreResult<Option<Micros>> {
        Ok(
            sqlx::query_scalar("SELECT MIN(run_after) FROM jobs WHERE state = 'retrying'")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn record_llm_call(&self, call: &LlmCall, now: Micros) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO llm_calls (pipeline_id, job_id, attempt, provider, model, model_resolved, result, \
             error, prompt_tokens, completion_tokens, cost_usd, saved_usd, at, call_id) \
             SELECT pipeline_id, id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 FROM jobs WHERE id = ?1 \
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
