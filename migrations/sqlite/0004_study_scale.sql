-- The engine at the size of a study.

-- A large pipeline is written in short transactions. Until its last row is in, it is
-- 'creating': claims, the reconciler and every read skip it, and a server that starts
-- deletes whatever a crash left of one.
CREATE INDEX pipelines_creating ON pipelines (id) WHERE state = 'creating';

-- Barriers: every job of `stage` waits for every job of `upstream_stage` as a whole
-- (wait = "stage"). One row per pair of stages, never one per pair of jobs: each job of
-- `stage` counts the barrier as one in its pending_deps until `upstream_stage` has
-- completed, when the barrier is released (once: `released`).
CREATE TABLE stage_waits (
    pipeline_id    INTEGER NOT NULL,
    stage          TEXT    NOT NULL,
    upstream_stage TEXT    NOT NULL,
    released       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pipeline_id, stage, upstream_stage)
);
CREATE INDEX stage_waits_upstream ON stage_waits (pipeline_id, upstream_stage);

-- The fencing token of each attempt, kept after its lease is gone: a finished result that
-- arrives after its lease expired proves with it which attempt it is, and is accepted if
-- no newer attempt has started.
ALTER TABLE attempts ADD COLUMN token TEXT;

-- Reads that must not grow with the number of jobs in the database: a pipeline's jobs in
-- id order (pages of the jobs list), and the next retry's time (every reconciler tick).
CREATE INDEX jobs_pipeline ON jobs (pipeline_id);
CREATE INDEX jobs_retrying ON jobs (run_after) WHERE state = 'retrying';

-- The range of job ids a pipeline reserved, and each stage's part of it (a plan's jobs are
-- written stage by stage under contiguous ids): claims skip the ranges of pipelines still
-- being written and of stages at their concurrency limit by index range, instead of
-- reading past each of their jobs. NULL for pipelines created before.
ALTER TABLE pipelines ADD COLUMN first_job INTEGER;
ALTER TABLE pipelines ADD COLUMN last_job INTEGER;
ALTER TABLE stages ADD COLUMN first_job INTEGER;
ALTER TABLE stages ADD COLUMN last_job INTEGER;

-- A released barrier counts its stage's jobs down a chunk of ids at a time (each chunk a
-- short transaction; the reconciler finishes one a crash cut short): the last job id
-- counted down so far. NULL until released, or for stages without an id range.
ALTER TABLE stage_waits ADD COLUMN applied_to INTEGER;
