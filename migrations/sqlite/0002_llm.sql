-- LLM accounting and the shared response cache.

-- The pipeline's spending limit (JSON `{"usd": .., "tokens": ..}`), NULL when unlimited.
ALTER TABLE pipelines ADD COLUMN budget TEXT;

-- Time the running attempt has spent waiting for a model provider's slot, as its worker
-- last reported: the attempt's clock does not run while it waits its turn.
ALTER TABLE jobs ADD COLUMN waited_ms INTEGER NOT NULL DEFAULT 0;

-- Every call a job made to a model, paid, answered from the cache, or failed.
CREATE TABLE llm_calls (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id           TEXT    NOT NULL UNIQUE,
    pipeline_id       INTEGER NOT NULL,
    job_id            INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    provider          TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    model_resolved    TEXT,
    result            TEXT    NOT NULL,
    error             TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          REAL    NOT NULL,
    saved_usd         REAL    NOT NULL,
    at                INTEGER NOT NULL
);
CREATE INDEX llm_calls_pipeline ON llm_calls (pipeline_id, job_id);

-- Successful answers by request hash (provider, model, messages, parameters). Errors are
-- never stored, so they are always asked again.
CREATE TABLE llm_answers (
    key        TEXT PRIMARY KEY,
    answer     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
