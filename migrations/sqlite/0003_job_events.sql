-- A job's own events (its state changes and progress steps), for the job page's timeline.
CREATE INDEX events_job ON events (job_id, id) WHERE job_id IS NOT NULL;
