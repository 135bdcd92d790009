-- The engine's schema. Timestamps are microseconds since the Unix epoch; JSON is TEXT.

CREATE TABLE pipelines (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    idempotency_key  TEXT    UNIQUE,
    spec_hash        TEXT    NOT NULL,
    spec             TEXT    NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    deadline_ms      INTEGER,
    deadline_at      INTEGER,
    finished_at      INTEGER
);
CREATE INDEX pipelines_running ON pipelines (id) WHERE state = 'running';

CREATE TABLE stages (
    pipeline_id          INTEGER NOT NULL REFERENCES pipelines (id),
    name                 TEXT    NOT NULL,
    position             INTEGER NOT NULL,
    kind                 TEXT    NOT NULL,
    concurrency          INTEGER,
    timeout_ms           INTEGER NOT NULL,
    max_attempts         INTEGER NOT NULL,
    backoff_base_ms      INTEGER NOT NULL,
    backoff_max_ms       INTEGER NOT NULL,
    breaker_threshold    INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    breaker_open         INTEGER NOT NULL DEFAULT 0,
    deadline_ms          INTEGER,
    deadline_at          INTEGER,
    PRIMARY KEY (pipeline_id, name)
);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id         INTEGER NOT NULL REFERENCES pipelines (id),
    stage               TEXT    NOT NULL,
    key                 TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    item                TEXT    NOT NULL,
    params              TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    failed_attempts     INTEGER NOT NULL DEFAULT 0,
    pending_deps        INTEGER NOT NULL DEFAULT 0,
    run_after           INTEGER NOT NULL DEFAULT 0,
    worker_id           TEXT,
    lease_token         TEXT,
    lease_expires_at    INTEGER,
    attempt_deadline_at INTEGER,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    result              TEXT,
    last_error          TEXT,
    progress            TEXT,
    created_at          INTEGER NOT NULL,
    started_at          INTEGER,
    finished_at         INTEGER,
    -- The guarantee against duplicate jobs: one job per stage + fan-out item.
    UNIQUE (pipeline_id, key)
);
CREATE INDEX jobs_claimable ON jobs (kind, id) WHERE state IN ('available', 'retrying');
CREATE INDEX jobs_running ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_pipeline_state ON jobs (pipeline_id, state);
CREATE INDEX jobs_pipeline_stage ON jobs (pipeline_id, stage, state);

CREATE TABLE job_deps (
    job_id      INTEGER NOT NULL,
    upstream_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, upstream_id)
);
CREATE INDEX job_deps_upstream ON job_deps (upstream_id);

CREATE TABLE attempts (
    job_id      INTEGER NOT NULL,
    number      INTEGER NOT NULL,
    worker_id   TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT    NOT NULL,
    error       TEXT,
    PRIMARY KEY (job_id, number)
);

CREATE TABLE artifacts (
    job_id  INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    name    TEXT    NOT NULL,
    sha256  TEXT    NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, name)
);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id INTEGER NOT NULL,
    job_id      INTEGER,
    at          INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    data        TEXT    NOT NULL
);
CREATE INDEX events_pipeline ON events (pipeline_id, id);

CREATE TABLE workers (
    id                   TEXT PRIMARY KEY,
    name                 TEXT    NOT NULL,
    kinds                TEXT    NOT NULL,
    started_at           INTEGER NOT NULL,
    last_seen            INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    quarantined_until    INTEGER,
    stopped              INTEGER NOT NULL DEFAULT 0
);
