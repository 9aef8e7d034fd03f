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

-- Unlogged: a stamp is needed only until a tick has sequenced its transaction,
-- and writing WAL for it cost the writers a fifth of their throughput. After a
-- crash the stamps of transactions committed and not yet sequenced are gone;
-- those few are ordered by their last log row, as before this migration.
CREATE UNLOGGED TABLE pgfeed.stamps (
    tx          xid8 PRIMARY KEY DEFAULT pg_current_xact_id(),
    stamp       bigint NOT NULL,
    -- When the transaction committed: how long it has waited for a seq (capture/0008).
    stamped_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Runs at commit: the transaction's stamp.
CREATE FUNCTION pgfeed.stamp_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO pgfeed.stamps (stamp) VALUES (nextval('pgfeed.commit_stamp'));
    RETURN NULL;
END;
$$;

-- Queued by the first log row of a transaction only: capture() notes that the
-- transaction's stamp is queued right after its first row (a rolled-back
-- savepoint takes the note and the queued stamp back together). The WHEN is a
-- built-in call: a function of our own evaluated for every row cost the
-- writers 8% (pgbench, 8 writers, an insert and an update per transaction).
CREATE CONSTRAINT TRIGGER stamp_commit
    AFTER INSERT ON pgfeed.events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (pg_catalog.current_setting('pgfeed.stamp_queued', true) IS DISTINCT FROM 'yes')
    EXECUTE FUNCTION pgfeed.stamp_commit();

-- As capture/0002, noting after the transaction's first row that its stamp is queued.
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
    IF pg_catalog.current_setting('pgfeed.stamp_queued', true) IS DISTINCT FROM 'yes' THEN
        PERFORM pg_catalog.set_config('pgfeed.stamp_queued', 'yes', true);
    END IF;
    -- 0x70676665 is 'pgfe': the listener holds (pgfe, 1) while it waits for
    -- work. Sharing it means it is ticking and will see this transaction.
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885824613, 1) THEN
        PERFORM pg_catalog.pg_notify('pgfeed', '');
    END IF;
    RETURN NULL;
END;
$$;

-- A tick numbers the transactions it finds by their stamps: capture/0007
-- (which this release applies with this one) replaces pgfeed.tick() so.

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
