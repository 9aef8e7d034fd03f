-- Seq order respects every dependency (issue 25).
--
-- Within one tick, transactions were numbered by their last log row's id. That
-- follows every conflict on tracked rows, but not a dependency that goes only
-- through an untracked table after the last tracked write: two transactions
-- that each log a row and then bump a shared untracked counter (row-locked to
-- commit, so their commit order is the counter's order) were numbered against
-- their commit order (measured before: 168 of 960 such transactions of 8
-- writers out of order).
--
-- Now each logging transaction takes a stamp at commit: a deferred constraint
-- trigger on the log, queued once per transaction by its first log row, takes
-- the next value of a sequence as the transaction commits (after every
-- statement, before the commit record) and keeps it in pgfeed.stamps. If B read
-- A's committed write, or waited for a lock A held, A took its stamp before it
-- committed and B took its own after that, so stamp(A) < stamp(B); a tick
-- numbers the transactions it finds by stamp. Transactions that overlapped may
-- come in either order, as they may commit in either order.
--
-- The deferred trigger is on pgfeed.events, never on an application table: a
-- pending trigger event on a table makes Postgres refuse TRUNCATE and ALTER
-- TABLE on it later in the same transaction, which a DBA's migration may do.
-- A transaction that runs SET CONSTRAINTS ALL IMMEDIATE takes its stamp at that
-- moment instead of at commit: it is still ordered after everything it read.

CREATE SEQUENCE pgfeed.commit_stamp;

CREATE TABLE pgfeed.stamps (
    tx     xid8 PRIMARY KEY DEFAULT pg_current_xact_id(),
    stamp  bigint NOT NULL
);

-- True for the first log row of a transaction (and of a savepoint's retry
-- after a rollback, whose queued stamp was rolled back with it): the stamp is
-- queued once per transaction, not once per row.
CREATE FUNCTION pgfeed.first_log_row() RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT pg_catalog.current_setting('pgfeed.stamp_queued', true) IS DISTINCT FROM 'yes'
       AND pg_catalog.set_config('pgfeed.stamp_queued', 'yes', true) = 'yes';
$$;

-- Runs at commit: the transaction's stamp.
CREATE FUNCTION pgfeed.stamp_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO pgfeed.stamps (stamp) VALUES (nextval('pgfeed.commit_stamp'))
    ON CONFLICT (tx) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER stamp_commit
    AFTER INSERT ON pgfeed.events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (pgfeed.first_log_row())
    EXECUTE FUNCTION pgfeed.stamp_commit();

-- As capture/0004, numbering a tick's transactions by their stamps. Those
-- logged before this migration have none and come first, by last log row.
CREATE OR REPLACE FUNCTION pgfeed.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan AS $$
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
        SELECT e.tx, e.id FROM pgfeed.events e
         WHERE e.tx >= pg_snapshot_xmax(previous.seen)
           AND e.tx < pg_snapshot_xmax(pg_current_snapshot())
        UNION ALL
        SELECT e.tx, e.id FROM pgfeed.events e
         WHERE e.tx = ANY (ARRAY(SELECT pg_snapshot_xip(previous.seen)))
    ), transactions AS (
        SELECT tx, count(*)::integer AS size, max(id) AS last_id FROM fresh GROUP BY tx
    ), given AS (
        INSERT INTO pgfeed.commits (seq, tx, size)
        SELECT previous.last_seq + row_number() OVER (ORDER BY s.stamp NULLS FIRST, t.last_id), t.tx, t.size
          FROM transactions t LEFT JOIN pgfeed.stamps s ON s.tx = t.tx
        RETURNING seq
    )
    SELECT count(*) INTO given FROM given;
    IF given = 0 THEN
        RETURN previous.last_seq;
    END IF;
    UPDATE pgfeed.sequencer SET last_seq = previous.last_seq + given, seen = pg_current_snapshot();
    -- Followers share (pgfe, 3) from before they read the log until they
    -- stop following; taking it alone means nobody would hear this.
    IF NOT pg_try_advisory_xact_lock(1885824613, 3) THEN
        PERFORM pg_notify('pgfeed', '{"seq":' || (previous.last_seq + given) || '}');
    END IF;
    RETURN previous.last_seq + given;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgfeed.tick() FROM PUBLIC;

-- As capture/0001, and the stamps of what it removes.
CREATE OR REPLACE FUNCTION pgfeed.prune(keep interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    removed  bigint;
BEGIN
    WITH gone AS (
        DELETE FROM pgfeed.commits WHERE committed_at < clock_timestamp() - keep
        RETURNING seq, tx
    ), dropped AS (
        DELETE FROM pgfeed.events e USING gone WHERE e.tx = gone.tx RETURNING 1
    ), unstamped AS (
        DELETE FROM pgfeed.stamps s USING gone WHERE s.tx = gone.tx
    ), mark AS (
        UPDATE pgfeed.retention
           SET pruned_through = GREATEST(pruned_through, (SELECT max(seq) FROM gone))
         WHERE EXISTS (SELECT 1 FROM gone)
    )
    SELECT count(*) INTO removed FROM dropped;
    RETURN removed;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgfeed.prune(interval) FROM PUBLIC;
