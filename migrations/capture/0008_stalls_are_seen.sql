-- No hung leader stops the feed (issue 25).
--
-- The leader is elected by a session lock on its connection. A leader that is
-- alive but hung (its process stopped, its host frozen) keeps that lock, so no
-- other instance may tick: measured before, a leader stopped with SIGSTOP for
-- 25 s stopped every instance's feed for 25 s while /readyz said ready.
--
-- A stall is now visible in the database: how long the oldest committed
-- transaction has waited for its seq, from the moment it took its stamp at
-- commit (capture/0006). A follower that sees it pass its bound ends the
-- leader's backend (pgfeed.leader_pid(), then pg_terminate_backend: the
-- same role may end its own sessions), which lets go of the lead; the
-- follower takes it. The old leader, when it runs again, finds its
-- connection gone and comes back as a follower.

-- How long the oldest committed transaction has waited for a seq; zero when
-- none waits. Only stamps the last tick had not seen (its xmax and later, or
-- in progress then) are looked at: an index range.
CREATE FUNCTION pgfeed.unsequenced_age() RETURNS interval
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(clock_timestamp() - min(s.stamped_at), interval '0')
      FROM (SELECT s.tx, s.stamped_at FROM pgfeed.stamps s
             WHERE s.tx >= (SELECT pg_snapshot_xmax(q.seen) FROM pgfeed.sequencer q)
            UNION ALL
            SELECT s.tx, s.stamped_at FROM pgfeed.stamps s
             WHERE s.tx = ANY (ARRAY(SELECT pg_snapshot_xip(q.seen) FROM pgfeed.sequencer q))) s
     WHERE NOT EXISTS (SELECT 1 FROM pgfeed.commits c WHERE c.tx = s.tx);
$$;

-- The backend holding the lead (advisory lock 'pgfe', 2 in this database), if any.
CREATE FUNCTION pgfeed.leader_pid() RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT l.pid FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
       AND l.classid::bigint = 1885824613 AND l.objid::bigint = 2 AND l.objsubid = 2
     LIMIT 1;
$$;
