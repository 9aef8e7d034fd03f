-- pgfeed's own reads cost the same however long the log is (issue 28).
--
-- 1. pgfeed.unsequenced_age() (capture/0008) asked which stamped transactions
--    had no commit row with NOT EXISTS, which the planner turns into an anti
--    join. Estimating thousands of candidate stamps, it hashed every commit
--    row of every unit first: measured on the followers bench's primary
--    (24 k commit rows), 6.6 ms per call, growing with the log. Every quiet
--    check, every follower's check on the primary, /readyz and /metrics paid
--    it; on a log of millions of rows it would take seconds. Each candidate
--    is now looked up by the commits' tx index, one probe in the unit that
--    holds it (run-time pruning): 0.07 ms on the same log. A scalar subquery
--    is never turned into a join.
--
-- 2. JIT compilation is off in pgfeed's functions. Their plans are small and
--    their estimates large (a function's default cost of 100 a call, 500 rows
--    from pg_partition_tree, a third of the log from an open range), so
--    Postgres compiled them: pgfeed.capture_state(), read by every /metrics
--    scrape and `pgfeed status`, took 160-265 ms on a database with one
--    tracked table, 200 ms of it JIT (EXPLAIN ANALYZE: "Inlining 65.9 ms,
--    Optimization 77.2 ms, Emission 55.5 ms"), and a follower's once-a-second
--    check on the primary spent 170 ms of a backend's CPU in 10 s whenever
--    a plan crossed jit_above_cost. With 2 M rows in the current unit, a
--    tick took 29.6 ms, 28.9 ms of it compiling (0.36 ms without). None of
--    these runs long enough to gain from compiled code.
--
-- 3. Nor from parallel workers: with 37 k commit rows, read_log()'s generic
--    plan launched two workers to scan the commits in parallel, 15 ms a call
--    where the index takes 0.37 ms.
CREATE OR REPLACE FUNCTION pgfeed.unsequenced_age() RETURNS interval
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET jit = off SET max_parallel_workers_per_gather = 0 AS $$
    SELECT COALESCE(clock_timestamp() - min(s.stamped_at), interval '0')
      FROM (SELECT s.tx, s.stamped_at FROM pgfeed.stamps s
             WHERE s.tx >= (SELECT pg_snapshot_xmax(q.seen) FROM pgfeed.sequencer q)
            UNION ALL
            SELECT s.tx, s.stamped_at FROM pgfeed.stamps s
             WHERE s.tx = ANY (ARRAY(SELECT pg_snapshot_xip(q.seen) FROM pgfeed.sequencer q))) s
     WHERE (SELECT true FROM pgfeed.commits c WHERE c.tx = s.tx LIMIT 1) IS NULL;
$$;

ALTER FUNCTION pgfeed.capture_state() SET jit = off SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION pgfeed.tick() SET jit = off SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION pgfeed.read_log(bigint, bigint, bigint) SET jit = off SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION pgfeed.snapshot(text) SET jit = off SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION pgfeed.prune(interval) SET jit = off SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION pgfeed.leader_pid() SET jit = off SET max_parallel_workers_per_gather = 0;
