-- When a worker id was bound to its token: a token owns a bounded number of ids, and one
-- bound long ago whose worker never registered (or stopped, or went silent) is the first
-- to be given up when the token needs room for a new one.
ALTER TABLE worker_owners ADD COLUMN bound_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX worker_owners_by_token ON worker_owners (token_id);
