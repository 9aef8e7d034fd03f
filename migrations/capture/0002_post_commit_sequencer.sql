-- Commit positions are assigned after commit, off the writer's path (issue 11).
--
-- Before: each writing transaction took the commit-order advisory lock in a
-- deferred trigger and held it through its commit, so tracked commits could
-- never share a WAL flush, and every row built and queued a JSON notification.
-- Measured on 2 cores with fsync on, that ran at 0.5-0.7x a bare per-row
-- pg_notify trigger; a lock held through commit costs that much even with no
-- NOTIFY at all (`pgfeed bench write` keeps the prototypes beside it).
--
-- Now writers only log their rows. A tick, `pgfeed.tick()`, gives the next seqs
-- to every transaction that has become visible since the previous tick, in one
-- statement, under one table lock. Its snapshot is the boundary: the
-- transactions a tick sequences are exactly those visible to it and not to the
-- previous tick, so a reader that sees seq N sees every seq below N, and the
-- rows of every transaction up to N. A snapshot read that runs its own tick in
-- the same transaction (`LOCK TABLE pgfeed.sequencer`, then `tick()`, then the
-- rows) reflects exactly the transactions up to the seq it reports.
--
-- Within one tick, transactions are ordered by their last event's id: a
-- transaction that wrote after reading another's committed row (or waited for
-- its row lock) logged later, so every row's changes keep their order.
--
-- The server's listener ticks. While it waits for work it holds the advisory
-- lock below, and a writer that cannot share that lock sends one notification
-- (identical payloads collapse to one per transaction) to wake it. While it is
-- ticking it does not hold the lock, writers share it and send nothing, and
-- their commits group-commit like any other.

-- Drop the write-time path. Dropping the trigger waits for every transaction
-- that has logged a row under it; rows logged from here on wait for a tick.
DROP TRIGGER assign_commit_seq ON pgfeed.events;
DROP FUNCTION pgfeed.assign_commit_seq();

-- Where the last tick stopped: the last seq it gave and the snapshot it saw.
CREATE TABLE pgfeed.sequencer (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq   bigint NOT NULL,
    seen       pg_snapshot NOT NULL
);
-- Everything committed before now already has its seq.
INSERT INTO pgfeed.sequencer (last_seq, seen) VALUES (pgfeed.head(), pg_current_snapshot());

-- A tick looks transactions up by id; seq stays the primary key.
CREATE UNIQUE INDEX commits_tx_idx ON pgfeed.commits (tx);

-- The row trigger: the row as JSON, less its excluded columns, into the log.
-- TG_ARGV[0] is the event prefix; TG_ARGV[1..] are the columns left out.
CREATE OR REPLACE FUNCTION pgfeed.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    new_doc  json;
    old_doc  json;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_doc := pg_catalog.to_json(NEW);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_doc := pg_catalog.to_json(OLD);
    END IF;
    IF TG_NARGS > 1 AND TG_OP <> 'TRUNCATE' THEN
        -- Left out before anything is written: the values never leave the table.
        new_doc := (pg_catalog.to_jsonb(new_doc) OPERATOR(pg_catalog.-) TG_ARGV[1:TG_NARGS - 1])::json;
        old_doc := (pg_catalog.to_jsonb(old_doc) OPERATOR(pg_catalog.-) TG_ARGV[1:TG_NARGS - 1])::json;
    END IF;
    INSERT INTO pgfeed.events (table_name, prefix, op, new, old, actor)
    VALUES (CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                 ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END,
            TG_ARGV[0], TG_OP, new_doc, old_doc,
            NULLIF(pg_catalog.current_setting('pgfeed.actor', true), ''));
    -- 0x70676665 is 'pgfe': the listener holds (pgfe, 1) while it waits for
    -- work. Sharing it means it is ticking and will see this transaction.
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885824613, 1) THEN
        PERFORM pg_catalog.pg_notify('pgfeed', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Gives the next seqs to the transactions that became visible since the last
-- tick and returns the last seq given (the head). Call it in a REPEATABLE READ
-- transaction, right after `LOCK TABLE pgfeed.sequencer IN EXCLUSIVE MODE` and
-- before anything else: its snapshot must be taken after the previous tick
-- committed. (Called otherwise, a concurrent tick makes one of the two fail on
-- the primary key or the sequencer row; nothing is given a seq twice.)
-- Announces what it gave on channel `pgfeed` as {"seq": <head>}.
CREATE FUNCTION pgfeed.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    previous  pgfeed.sequencer;
    given     bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'repeatable read' THEN
        RAISE EXCEPTION 'pgfeed.tick() needs a REPEATABLE READ transaction that first locks pgfeed.sequencer';
    END IF;
    SELECT * INTO previous FROM pgfeed.sequencer;
    -- Visible now and not to the previous tick: in progress then (its xip), or
    -- begun after it (from its xmax). Both are ranges of the log's primary key.
    WITH fresh AS (
        SELECT e.tx, e.id FROM pgfeed.events e WHERE e.tx >= pg_snapshot_xmax(previous.seen)
        UNION ALL
        SELECT e.tx, e.id FROM pgfeed.events e
          JOIN pg_snapshot_xip(previous.seen) AS x (tx) ON e.tx = x.tx
    ), transactions AS (
        SELECT tx, count(*)::integer AS size, max(id) AS last_id FROM fresh GROUP BY tx
    ), given AS (
        INSERT INTO pgfeed.commits (seq, tx, size)
        SELECT previous.last_seq + row_number() OVER (ORDER BY last_id), tx, size FROM transactions
        RETURNING seq
    )
    SELECT count(*) INTO given FROM given;
    IF given = 0 THEN
        RETURN previous.last_seq;
    END IF;
    UPDATE pgfeed.sequencer SET last_seq = previous.last_seq + given, seen = pg_current_snapshot();
    PERFORM pg_notify('pgfeed', '{"seq":' || (previous.last_seq + given) || '}');
    RETURN previous.last_seq + given;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgfeed.tick() FROM PUBLIC;

-- Takes the waiting lock for this session, waiting up to `patience`: the
-- writers that share it are counting on ticks, so it is granted once they have
-- committed. While this waits in the lock's queue, new writers cannot share it
-- and wake the listener instead. False when `patience` ran out (a long
-- transaction still shares it).
CREATE FUNCTION pgfeed.await_writers(patience interval) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', (extract(epoch FROM patience) * 1000)::bigint || 'ms', true);
    PERFORM pg_catalog.pg_advisory_lock(1885824613, 1);
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END;
$$;

-- The head is the sequencer's: one row, no scan of the commits.
CREATE OR REPLACE FUNCTION pgfeed.head() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT GREATEST((SELECT last_seq FROM pgfeed.sequencer),
                    (SELECT pruned_through FROM pgfeed.retention), 0);
$$;
