-- A tick announces its head only to followers (issue 11).
--
-- Every tick that gave seqs sent {"seq": <head>} on channel pgfeed, for other
-- instances that follow the leader. With no other instance (the usual case) it
-- was heard by nobody but the leader itself, and cost each tick the
-- notification queue's commit lock, which it then waited for behind writers
-- waking the leader (pg_stat_activity showed ticks in Lock:object), an entry in
-- the queue, and a wake-up of the leader's own connection.
--
-- A follower now holds advisory lock (0x70676665 'pgfe', 3) shared in its
-- listening session, taken after LISTEN and before it first reads the log. A
-- tick tries the same lock exclusively for its own transaction: granted, no
-- session follows, and it sends nothing; refused, it announces as before. A
-- follower whose shared lock waits behind a tick that took it is granted it
-- when that tick has committed, so its first read of the log sees that tick:
-- every tick either is in that read or announces to it.

CREATE OR REPLACE FUNCTION pgfeed.tick() RETURNS bigint
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
        SELECT previous.last_seq + row_number() OVER (ORDER BY last_id), tx, size FROM transactions
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
