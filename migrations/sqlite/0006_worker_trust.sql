-- A worker that claims jobs and lets their leases expire (crashed, cut off, or hostile)
-- must not use up other people's jobs. Lost attempts are counted apart from failed ones
-- (they say nothing against the job), and expired leases in a row quarantine the worker
-- and the token that owns it.
ALTER TABLE jobs ADD COLUMN lost_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN leases_expired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_tokens ADD COLUMN quarantined_until INTEGER;

-- Blob garbage collection asks which stored blobs an artifact still names.
CREATE INDEX artifacts_sha256 ON artifacts (sha256);
