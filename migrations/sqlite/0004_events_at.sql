-- Pruning old events of finished pipelines reads them by age.
CREATE INDEX events_at ON events (at);
