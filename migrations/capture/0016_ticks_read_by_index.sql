-- A tick reads the log only through its indexes, and sets up only the scans
-- it runs (issue 28). A tick is on the path of every delivery: what it costs,
-- each event waits for.
--
-- And it adopts a log written by another cluster once (capture/0007), as it
-- was meant to. Since the log rotates (capture/0012), moving a foreign row's
-- id above 2^62 moves it into another unit, which inserts it there: each
-- moved row queued a stamp for the tick's own transaction, and with two rows
-- or more the tick's commit failed on the stamps' key, on every tick, so a
-- restored log stopped the feed for good. And the ids it had moved were
-- foreign again to the next tick (at or above every snapshot's xmax), so a
-- log adopted with one row was moved on every tick, its ids climbing until
-- they all met at the top of the xid8 range as one transaction. The check
-- and the move now leave the adopted range alone, and the move queues no
-- stamp (tests/capture.rs, a_foreign_log_is_adopted_once_and_sequencing_goes_on).
--
-- 1. Its plan is generic and kept for the session (capture/0005) until
--    something invalidates it (an ANALYZE, a new unit). Planned while a unit
--    was small, the look for the transactions the previous tick saw in
--    progress (`tx = ANY (xip)`) scanned that unit whole, and the overflow
--    unit besides, on every tick, empty or not, however large they had grown
--    since: on a database whose overflow unit held 3,000 rows, 0.21 ms of a
--    0.26 ms statement (auto_explain, `pgfeed serve` at 100 tx/s). A tick
--    touches a handful of rows by key: it never scans a table now
--    (enable_seqscan = off), and each transaction then in progress is one
--    probe of the unit that can hold it.
--
-- 2. The executor sets up a scan of every unit for each branch of a statement
--    whose units are not known before it runs, taken or not: the in-progress
--    look, the foreign-log branch (a one-time filter, never taken but set up
--    on every tick) and the newest-tx check (a merge of every unit's index).
--    A tick after one that saw nothing in progress, which is every tick of a
--    quiet feed, now runs one range of the key, whose units are pruned before
--    they are set up, and the foreign-log check looks only in the units that
--    could hold a foreign row. Measured on one database (pgbench -r, one
--    round trip as the listener sends it, 3 runs alternating): a productive
--    tick with its read 0.68-0.82 ms against 0.79-1.04; an empty tick
--    0.27-0.30 ms against 0.32-0.35.
CREATE OR REPLACE FUNCTION pgfeed.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET jit = off SET max_parallel_workers_per_gather = 0 AS $$
DECLARE
    previous     pgfeed.sequencer;
    now_seen     pg_snapshot := pg_current_snapshot();
    foreign_log  boolean;
    given        bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'repeatable read' THEN
        RAISE EXCEPTION 'pgfeed.tick() needs a REPEATABLE READ transaction that first locks pgfeed.sequencer';
    END IF;
    SELECT * INTO previous FROM pgfeed.sequencer;
    -- A visible row of a transaction this cluster has not begun yet (below
    -- the ids an adopted log was moved to), or a previous tick ahead of this
    -- cluster: the log was written elsewhere. (By index, in the units that can
    -- hold such a row: the others are pruned before the executor sets up
    -- their scans.)
    foreign_log := pg_snapshot_xmax(previous.seen) > pg_snapshot_xmax(now_seen)
        OR EXISTS (SELECT FROM pgfeed.events e
                    WHERE e.tx >= pg_snapshot_xmax(now_seen) AND e.tx < '4611686018427387904');
    IF foreign_log THEN
        -- Moved into the adopted unit, a row is inserted there: not a write
        -- of this transaction's own, it queues no stamp.
        PERFORM set_config('pgfeed.stamp_queued', 'yes', true);
        UPDATE pgfeed.events SET tx = (tx::text::numeric + 4611686018427387904)::text::xid8
         WHERE tx >= pg_snapshot_xmax(now_seen) AND tx < '4611686018427387904';
        UPDATE pgfeed.commits SET tx = (tx::text::numeric + 4611686018427387904)::text::xid8
         WHERE tx >= pg_snapshot_xmax(now_seen) AND tx < '4611686018427387904';
        UPDATE pgfeed.stamps SET tx = (tx::text::numeric + 4611686018427387904)::text::xid8
         WHERE tx >= pg_snapshot_xmax(now_seen) AND tx < '4611686018427387904';
        RAISE WARNING 'pgfeed: the log was written by another cluster (a restore?); its transactions are kept apart and sequencing goes on';
    END IF;
    -- Visible now and not to the previous tick: begun after it (from its
    -- xmax), or in progress then (its xip).
    IF NOT foreign_log AND NOT EXISTS (SELECT FROM pg_snapshot_xip(previous.seen)) THEN
        -- Nothing was in progress at the previous tick (always so on a quiet
        -- feed): one range of the log's key, in the units that hold it. A
        -- statement of its own, as the executor sets up every branch of a
        -- statement, taken or not.
        WITH transactions AS (
            SELECT e.tx, count(*)::integer AS size, max(e.id) AS last_id FROM pgfeed.events e
             WHERE e.tx >= pg_snapshot_xmax(previous.seen)
               AND e.tx < pg_snapshot_xmax(now_seen)
             GROUP BY e.tx
        ), given AS (
            INSERT INTO pgfeed.commits (seq, tx, size)
            SELECT previous.last_seq + row_number() OVER (ORDER BY
                       (SELECT s.stamp FROM pgfeed.stamps s WHERE s.tx = t.tx) NULLS FIRST, t.last_id),
                   t.tx, t.size
              FROM transactions t
            RETURNING seq
        )
        SELECT count(*) INTO given FROM given;
    ELSE
        -- Each transaction then in progress is looked up by its own key, in the
        -- one unit that can hold it. A foreign log: every visible row without a
        -- seq (all of them are committed). The branch not taken is a one-time
        -- filter: never scanned.
        WITH fresh AS (
            SELECT e.tx, e.id FROM pgfeed.events e
             WHERE NOT foreign_log
               AND e.tx >= pg_snapshot_xmax(previous.seen)
               AND e.tx < pg_snapshot_xmax(now_seen)
            UNION ALL
            SELECT e.tx, e.id
              FROM pg_snapshot_xip(previous.seen) AS x (tx)
             CROSS JOIN LATERAL (SELECT e.tx, e.id FROM pgfeed.events e WHERE e.tx = x.tx OFFSET 0) e
             WHERE NOT foreign_log
            UNION ALL
            SELECT e.tx, e.id FROM pgfeed.events e
             WHERE foreign_log
               AND NOT EXISTS (SELECT 1 FROM pgfeed.commits c WHERE c.tx = e.tx)
        ), transactions AS (
            SELECT tx, count(*)::integer AS size, max(id) AS last_id FROM fresh GROUP BY tx
        ), given AS (
            -- Each transaction's stamp looked up by its key: a join could hash the
            -- whole stamps table in the generic plan.
            INSERT INTO pgfeed.commits (seq, tx, size)
            SELECT previous.last_seq + row_number() OVER (ORDER BY
                       (SELECT s.stamp FROM pgfeed.stamps s WHERE s.tx = t.tx) NULLS FIRST, t.last_id),
                   t.tx, t.size
              FROM transactions t
            RETURNING seq
        )
        SELECT count(*) INTO given FROM given;
    END IF;
    IF given = 0 AND NOT foreign_log THEN
        RETURN previous.last_seq;
    END IF;
    UPDATE pgfeed.sequencer SET last_seq = previous.last_seq + given, seen = now_seen;
    -- Followers share (pgfe, 3) from before they read the log until they
    -- stop following; taking it alone means nobody would hear this.
    IF given > 0 AND NOT pg_try_advisory_xact_lock(1885824613, 3) THEN
        PERFORM pg_notify('pgfeed', '{"seq":' || (previous.last_seq + given) || '}');
    END IF;
    RETURN previous.last_seq + given;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgfeed.tick() FROM PUBLIC;
