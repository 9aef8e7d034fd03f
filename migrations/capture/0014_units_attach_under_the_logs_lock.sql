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
-- Now add_unit first takes both parents' ACCESS EXCLUSIVE lock, as dropping a
-- unit does. No insert into the log runs while it is held: one that started
-- before has committed (its row, if it fell in the new range, makes the
-- attach fail, and prune places the unit above it next time), and one that
-- starts after the attach routes by the new partitions. The lock is waited
-- for at most pgfeed.rotation.lock_timeout (prune sets it), so writers wait at
-- most that long, once per unit made (about four times per `keep`), and only
-- while no long transaction holds the log: then prune leaves the unit to its
-- next round and writers go on into the current unit or the overflow.

CREATE OR REPLACE FUNCTION pgfeed.add_unit(lo xid8, hi xid8) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events   text := 'events_' || lo::text;
    commits  text := 'commits_' || lo::text;
BEGIN
    BEGIN
        -- The order the sequencer takes them in (it reads events, then
        -- writes commits), so a tick waits rather than deadlocks.
        LOCK TABLE pgfeed.events, pgfeed.commits IN ACCESS EXCLUSIVE MODE;
    EXCEPTION WHEN deadlock_detected THEN
        RAISE EXCEPTION 'pgfeed.add_unit: the log is busy' USING ERRCODE = 'lock_not_available';
    END;
    EXECUTE format('CREATE TABLE pgfeed.%I (LIKE pgfeed.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', events);
    EXECUTE format('ALTER TABLE pgfeed.events ATTACH PARTITION pgfeed.%I FOR VALUES FROM (%L) TO (%L)', events, lo, hi);
    EXECUTE format('CREATE TABLE pgfeed.%I (LIKE pgfeed.commits INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', commits);
    EXECUTE format('ALTER TABLE pgfeed.commits ATTACH PARTITION pgfeed.%I FOR VALUES FROM (%L) TO (%L)', commits, lo, hi);
    INSERT INTO pgfeed.log_units (hi, lo, events, commits)
    VALUES (hi, lo, 'pgfeed.' || quote_ident(events), 'pgfeed.' || quote_ident(commits));
END;
$$;
