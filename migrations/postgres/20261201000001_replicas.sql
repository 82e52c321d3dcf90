-- Several replicas on one database (docs/architecture.md, "Several replicas"): run leases, the
-- durable step queue, each run's inbox, and control requests for a run's owner.

-- The replica that drives a run holds its lease: `owner`, an `epoch` bumped at every takeover
-- (an append checks it, so a replica whose lease was taken cannot write), and an expiry that its
-- heartbeat pushes forward. A lease is free when it has no owner or its expiry passed.
ALTER TABLE runs
    ADD COLUMN owner            TEXT,
    ADD COLUMN lease_epoch      BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires_at TIMESTAMPTZ;

CREATE INDEX runs_claimable ON runs (lease_expires_at)
    WHERE status NOT IN ('completed', 'failed', 'cancelled');

-- Step attempts ready to run, claimed by any replica's executors (FOR UPDATE SKIP LOCKED). A
-- claim is a lease too: `claim_token` changes at every claim, so an executor whose claim expired
-- and was taken cannot report.
CREATE TABLE step_queue (
    id               BIGSERIAL PRIMARY KEY,
    run_id           TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id          TEXT   NOT NULL,
    attempt          BIGINT NOT NULL,
    job              JSONB  NOT NULL,  -- the StepJob, its trace context included
    enqueued_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by       TEXT,
    claim_token      BIGINT NOT NULL DEFAULT 0,
    lease_expires_at TIMESTAMPTZ
);

CREATE INDEX step_queue_run ON step_queue (run_id, step_id);
CREATE INDEX step_queue_ready ON step_queue (id) WHERE claimed_by IS NULL;

-- What executors send a run's owner: tool events and step reports, in order (id).
CREATE TABLE run_inbox (
    id     BIGSERIAL PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    body   JSONB NOT NULL
);

CREATE INDEX run_inbox_run ON run_inbox (run_id, id);

-- Approve / reject / cancel sent to a replica that does not drive the run: the owner carries it
-- out and writes the answer, which the asking replica waits for.
CREATE TABLE run_control (
    id         BIGSERIAL PRIMARY KEY,
    run_id     TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    request    JSONB NOT NULL,
    answer     JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX run_control_open ON run_control (run_id) WHERE answer IS NULL;
