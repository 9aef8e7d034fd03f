-- A tick and a page of the log run on plans kept across calls (issue 11).
--
-- capture/0003 moved the page read into PL/pgSQL so that its plan would be
-- kept, and bounded the tick's ranges so that a generic plan scans only the
-- log's index. But PL/pgSQL keeps a generic plan only when it costs no more
-- than the custom ones: for `seq >= $1 LIMIT $3` the generic estimate is a
-- third of the commits, far above a custom plan's handful of rows, so both
-- functions were planned anew on every call. Measured with pgbench on 2 cores
-- beside 1,000 one-row commits a second (fsync off, to see the CPU): a tick
-- 0.40 ms, a tick and a page 0.61 ms; with the generic plan, 0.21 ms and
-- 0.30 ms. The generic plans are index scans of the ranges asked for (commits
-- by seq, events by tx), whatever the log's size.
ALTER FUNCTION pgfeed.tick() SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION pgfeed.read_log(bigint, bigint, bigint) SET plan_cache_mode = force_generic_plan;
