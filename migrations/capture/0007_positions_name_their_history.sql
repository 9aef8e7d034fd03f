-- A position names its history (issue 25).
--
-- seq N names one transaction of one history. A reinstall, a restore of an
-- older dump, or a failover to a standby that had not received the last
-- commits starts another history, whose seq N is another transaction; a
-- client that resumes after N must be told, not served the new history's
-- events after N as if they followed what it holds.
--
-- A checked position is `<seq>.<check>`: the check is eight hex digits of a
-- hash of the seq and the moment its commit row was written (to the
-- microsecond, by the tick that sequenced it), so two histories' seq N differ
-- in their check however they came about, and a dump restored anywhere keeps
-- the checks of the seqs it holds. `0` is the position before the first seq.
--
-- A dump restored into another cluster brings a log whose transaction ids are
-- that cluster's: a tick looked for new transactions above the old cluster's
-- ids and found none of the new cluster's, so the feed stopped for good. A
-- tick now recognises such a log (the previous tick's snapshot is ahead of the
-- cluster's, or a visible log row has an id the cluster has not handed out),
-- moves the foreign ids out of the cluster's range (+2^62: the log keeps
-- them apart from the ids the new cluster will hand out), sequences whatever
-- of it was committed but not yet sequenced, and goes on.

-- STABLE, as extract() on a timestamptz is: declared IMMUTABLE, its body was
-- not inlined and every row of a page paid a function call (a page of the log
-- took twice as long).
CREATE FUNCTION pgfeed.position_check(seq bigint, committed_at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.hashtextextended(
               seq::text || '@' || (extract(epoch FROM committed_at) * 1000000)::bigint::text, 0)
           & 4294967295), 8, '0');
$$;

-- The checked position of transaction `at_seq`; '0' for 0; NULL for a seq the
-- log does not hold (pruned, or not given yet).
CREATE FUNCTION pgfeed.position(at_seq bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN at_seq = 0 THEN '0' ELSE
        (SELECT c.seq::text || '.' || pgfeed.position_check(c.seq, c.committed_at)
           FROM pgfeed.commits c WHERE c.seq = at_seq) END;
$$;

-- As capture/0003, with each row's checked position last.
DROP FUNCTION pgfeed.read_log(bigint, bigint, bigint);
CREATE FUNCTION pgfeed.read_log(after_seq bigint, after_id bigint, page bigint)
RETURNS TABLE (seq bigint, size integer, id bigint, table_name text, prefix text, op text,
               new text, old text, actor text, written_us bigint, "position" text)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.seq, c.size, e.id, e.table_name, e.prefix, e.op, e.new::text, e.old::text, e.actor,
           (extract(epoch FROM e.created_at) * 1000000)::int8, c.position
      FROM (SELECT k.seq, k.tx, k.size, k.seq::text || '.' || pgfeed.position_check(k.seq, k.committed_at) AS position
              FROM pgfeed.commits k
             WHERE k.seq >= after_seq ORDER BY k.seq LIMIT page) c
      JOIN LATERAL (SELECT * FROM pgfeed.events e
                     WHERE e.tx = c.tx AND (c.seq > after_seq OR (after_id > 0 AND e.id > after_id))) e ON true
     ORDER BY c.seq, e.id
     LIMIT page;
END;
$$;

-- As capture/0004, numbering a tick's transactions by their stamps
-- (capture/0006; those logged before it have none and come first, by last log
-- row), and adopting a log from another cluster (see above).
CREATE OR REPLACE FUNCTION pgfeed.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan AS $$
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
    -- A visible row of a transaction this cluster has not begun yet, or a
    -- previous tick ahead of this cluster: the log was written elsewhere. (The
    -- newest tx is one step down the log's index in any plan; an EXISTS on
    -- `tx >= $1` was a scan of the whole log in the generic plan.)
    foreign_log := pg_snapshot_xmax(previous.seen) > pg_snapshot_xmax(now_seen)
        OR (SELECT max(e.tx) FROM pgfeed.events e) >= pg_snapshot_xmax(now_seen);
    IF foreign_log THEN
        UPDATE pgfeed.events SET tx = (tx::text::numeric + 4611686018427387904)::text::xid8
         WHERE tx >= pg_snapshot_xmax(now_seen);
        UPDATE pgfeed.commits SET tx = (tx::text::numeric + 4611686018427387904)::text::xid8
         WHERE tx >= pg_snapshot_xmax(now_seen);
        UPDATE pgfeed.stamps SET tx = (tx::text::numeric + 4611686018427387904)::text::xid8
         WHERE tx >= pg_snapshot_xmax(now_seen);
        RAISE WARNING 'pgfeed: the log was written by another cluster (a restore?); its transactions are kept apart and sequencing goes on';
    END IF;
    -- Visible now and not to the previous tick: in progress then (its xip), or
    -- begun after it (from its xmax); both are ranges of the log's primary key.
    -- A foreign log: every visible row without a seq (all of them are
    -- committed). The branch not taken is a one-time filter: never scanned.
    WITH fresh AS (
        SELECT e.tx, e.id FROM pgfeed.events e
         WHERE NOT foreign_log
           AND e.tx >= pg_snapshot_xmax(previous.seen)
           AND e.tx < pg_snapshot_xmax(now_seen)
        UNION ALL
        SELECT e.tx, e.id FROM pgfeed.events e
         WHERE NOT foreign_log
           AND e.tx = ANY (ARRAY(SELECT pg_snapshot_xip(previous.seen)))
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
