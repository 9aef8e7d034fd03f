-- A unit is attached under the log's own lock (issue 26).
--
-- capture/0012 attached the next unit taking only the lock ATTACH PARTITION
-- needs, which writers do not wait for. A writer whose statement had routed
-- its row to the overflow before the attach committed then found the
-- overflow's partition constraint changed under it and failed: "new row for
-- relation events_overflow violates partition constraint". 0012 made it rare
-- (a new unit starts `min_width` ids above the newest id in use), not
-- impossible: an attach during which the cluster spent more ids than the gap
-- still failed writers (tests/retention.rs rotation_never_fails_a_writer
-- failed writers within a second with a gap of one id).
--
-- Now add_unit first takes both parents' ACCESS EXCLUSIVE lock (the parents
-- only), as dropping a unit does. No insert into the log runs while it is held: one that started
-- before has committed (its row, if it fell in the new range, makes the
-- attach fail, and prune places the unit above it next time), and one that
-- starts after the attach routes by the new partitions. The lock is waited
-- for at most pgfeed.rotation.lock_timeout (prune sets it), so writers wait at
-- most that long, once per unit made (about four times per `keep`), and only
-- while no long transaction holds the log: then prune leaves the unit to its
-- next round and writers go on into the current unit or the overflow.
--
-- With the race gone, so is 0012's gap: a new unit starts where the newest
-- ends (0012 started it `min_width` ids above the newest id in use, and the
-- ids in between went to the overflow, to be deleted row by row: measured,
-- `pgfeed bench retention` trimmed 2 M rows with 95 MB of WAL instead of
-- 0.3 MB, since its units were as narrow as `min_width`). add_unit moves a
-- unit up past anything already in the overflow, found under the lock.

CREATE OR REPLACE FUNCTION pgfeed.add_unit(lo xid8, hi xid8) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events   text := 'events_' || lo::text;
    commits  text := 'commits_' || lo::text;
    above    xid8;
BEGIN
    BEGIN
        -- The order the sequencer takes them in (it reads events, then
        -- writes commits), so a tick waits rather than deadlocks. ONLY the
        -- parents: every insert and read goes through them, and a lock on
        -- every unit would wait for autovacuum on any of them (measured: most
        -- units were never made while a bench filled the log, and it was
        -- trimmed row by row).
        LOCK TABLE ONLY pgfeed.events, ONLY pgfeed.commits IN ACCESS EXCLUSIVE MODE;
    EXCEPTION WHEN deadlock_detected THEN
        RAISE EXCEPTION 'pgfeed.add_unit: the log is busy' USING ERRCODE = 'lock_not_available';
    END;
    -- Above what the overflow holds: an attach over it would fail.
    above := GREATEST(pgfeed.xid_plus((SELECT max(e.tx) FROM pgfeed.events_overflow e), 1),
                      pgfeed.xid_plus((SELECT max(c.tx) FROM pgfeed.commits_overflow c), 1));
    IF above > lo THEN
        hi := pgfeed.xid_plus(above, hi::text::numeric - lo::text::numeric);
        lo := above;
        events := 'events_' || lo::text;
        commits := 'commits_' || lo::text;
    END IF;
    EXECUTE format('CREATE TABLE pgfeed.%I (LIKE pgfeed.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', events);
    EXECUTE format('ALTER TABLE pgfeed.events ATTACH PARTITION pgfeed.%I FOR VALUES FROM (%L) TO (%L)', events, lo, hi);
    EXECUTE format('CREATE TABLE pgfeed.%I (LIKE pgfeed.commits INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', commits);
    EXECUTE format('ALTER TABLE pgfeed.commits ATTACH PARTITION pgfeed.%I FOR VALUES FROM (%L) TO (%L)', commits, lo, hi);
    INSERT INTO pgfeed.log_units (hi, lo, events, commits)
    VALUES (hi, lo, 'pgfeed.' || quote_ident(events), 'pgfeed.' || quote_ident(commits));
END;
$$;

-- As capture/0012, but for where the next unit starts (step 4).
CREATE OR REPLACE FUNCTION pgfeed.prune(keep interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    settings  pgfeed.rotation;
    finished  xid8;
    horizon   xid8;
    cutoff    timestamptz;
    unit      pgfeed.log_units;
    newest    record;
    removed   bigint := 0;
    deleted   bigint;
    current   xid8;
    rate      numeric;
    width     numeric;
    lo        xid8;
    waited    text := current_setting('lock_timeout');
BEGIN
    -- One prune at a time (every server runs one): the next reads what the
    -- previous one left.
    PERFORM pg_advisory_xact_lock(1885824613, 4);
    SELECT * INTO settings FROM pgfeed.rotation;
    -- Below `finished` every transaction has ended and every committed one
    -- has its seq: the last tick's xmin, or, when nothing it has not seen
    -- logged a row since (a tick with nothing new leaves its snapshot as it
    -- was), the xmin of now.
    finished := (SELECT pg_snapshot_xmin(q.seen) FROM pgfeed.sequencer q);
    horizon := pg_snapshot_xmin(pg_current_snapshot());
    IF NOT EXISTS (SELECT 1 FROM pgfeed.events e
                    WHERE e.tx >= finished AND e.tx < horizon
                      AND NOT EXISTS (SELECT 1 FROM pgfeed.commits c WHERE c.tx = e.tx)) THEN
        finished := GREATEST(finished, horizon);
    END IF;
    cutoff := clock_timestamp() - keep;

    -- 1. Whole units, oldest first.
    PERFORM set_config('lock_timeout', (extract(epoch FROM settings.lock_timeout) * 1000)::bigint::text, true);
    FOR unit IN SELECT * FROM pgfeed.log_units u ORDER BY u.hi LOOP
        EXIT WHEN unit.hi > finished;
        EXECUTE format('SELECT seq, committed_at FROM %s ORDER BY seq DESC LIMIT 1', unit.commits) INTO newest;
        EXIT WHEN newest.committed_at >= cutoff;
        BEGIN
            removed := removed + (SELECT GREATEST(c.reltuples, 0)::bigint FROM pg_class c
                                   WHERE c.oid = unit.events::regclass);
            EXECUTE format('DROP TABLE %s, %s', unit.events, unit.commits);
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'pgfeed.prune: % is busy; its unit is dropped at the next prune', unit.events;
            EXIT;
        END;
        DELETE FROM pgfeed.log_units u WHERE u.hi = unit.hi;
        IF newest.seq IS NOT NULL THEN
            UPDATE pgfeed.retention SET pruned_through = GREATEST(pruned_through, newest.seq);
        END IF;
    END LOOP;
    PERFORM set_config('lock_timeout', waited, true);

    -- 2. What is older than `keep` outside whole units, row by row.
    WITH gone AS (
        DELETE FROM pgfeed.commits WHERE committed_at < cutoff
        RETURNING seq, tx
    ), dropped AS (
        DELETE FROM pgfeed.events e USING gone WHERE e.tx = gone.tx RETURNING 1
    ), mark AS (
        UPDATE pgfeed.retention
           SET pruned_through = GREATEST(pruned_through, (SELECT max(seq) FROM gone))
         WHERE EXISTS (SELECT 1 FROM gone)
    )
    SELECT count(*) INTO deleted FROM dropped;
    removed := removed + deleted;

    -- 3. Stamps order transactions a tick has not seen yet; the rest are spent.
    DELETE FROM pgfeed.stamps WHERE tx < finished;

    -- 4. The next unit, made while the newest still has a unit's width of ids
    -- left, next to it (add_unit moves it above anything the overflow got,
    -- under the log's lock, so no writer can be on its way there). After
    -- writers outran rotation (every server stopped longer than the newest
    -- unit lasted), it starts at the newest id: any older one that has not
    -- logged yet goes to the overflow (a unit placed lower, at the oldest id
    -- still running, could lie wholly in the past behind a long transaction,
    -- and be dropped empty).
    current := pg_current_xact_id();
    SELECT * INTO unit FROM pgfeed.log_units u ORDER BY u.hi DESC LIMIT 1;
    rate := COALESCE((current::text::numeric - unit.made_at_xid::text::numeric)
                     / GREATEST(extract(epoch FROM clock_timestamp() - unit.made_at), 1), 0);
    width := LEAST(GREATEST(rate * extract(epoch FROM keep) / 4, settings.min_width), settings.max_width);
    -- (No unit left: every one was finished, empty or old, and dropped.)
    IF unit.hi IS NULL OR pgfeed.xid_plus(current, width) >= unit.hi THEN
        lo := GREATEST(unit.hi, current);
        PERFORM set_config('lock_timeout', (extract(epoch FROM settings.lock_timeout) * 1000)::bigint::text, true);
        BEGIN
            PERFORM pgfeed.add_unit(lo, pgfeed.xid_plus(lo, width));
        EXCEPTION WHEN check_violation OR lock_not_available THEN
            -- A lock was busy: next time.
            RAISE NOTICE 'pgfeed.prune: the next unit is made at the next prune';
        END;
        PERFORM set_config('lock_timeout', waited, true);
    END IF;
    RETURN removed;
END;
$$;

