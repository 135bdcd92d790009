-- The job kinds a worker token may claim (a JSON list); NULL: every kind the server
-- allows. A machine that should only run static analysis gets a token that can only
-- ever be handed static jobs, whatever its worker asks for.
ALTER TABLE api_tokens ADD COLUMN kinds TEXT;
