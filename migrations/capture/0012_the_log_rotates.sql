-- A log that costs nothing to trim (issue 26).
--
-- Retention removed old transactions with DELETE: at 1,000 transactions a
-- second of two rows each, 172 million log rows a day deleted one by one,
-- each with its WAL, its index entries and its share of vacuum, on the
-- primary. Now the log rotates, as PgQ rotates its tables: pgfeed.events and
-- pgfeed.commits are partitioned by transaction id, in units (ranges of ids,
-- the same for both tables, listed in pgfeed.log_units), and retention drops a
-- unit whole: a catalog change, a few hundred bytes of WAL, whatever its size.
--
-- A unit is dropped when every transaction of its range has finished (below
-- the last tick's snapshot xmin: so every committed one has its seq) and its
-- newest commit is older than `keep`; units go oldest first. The retention
-- mark (pruned_through) becomes the newest seq the unit held: a resume from
-- below it gets `refresh_needed`/`pruned`. Every seq above the mark is in a
-- unit still there, with its rows (a unit holds a transaction's rows and its
-- commit row together), so replay across units and the sequencer are as
-- before.
--
-- The next unit is made before writers reach it, sized from the rate at which
-- transaction ids are spent so that a unit covers about a quarter of `keep`
-- (at least pgfeed.rotation.min_width ids). Writers never wait for rotation
-- and never fail for it: a default partition (`*_overflow`) takes any row
-- above the units made so far (after a long stop of every server), and ids
-- moved aside by the adoption of a foreign log (capture/0007) have a
-- partition of their own (`*_adopted`). What is older than `keep` and not in a
-- whole unit (a quiet database whose current unit outlives `keep`, the
-- overflow, adopted logs) is deleted row by row as before; in a busy database
-- nothing is left for it.
--
-- Dropping a partition takes its parent's lock for a moment: prune waits for
-- it at most pgfeed.rotation.lock_timeout, then leaves the unit to its next
-- round, so a long transaction delays retention, never the writers.
--
-- Upgrading: this migration turns the existing log into the first unit, in
-- place. It holds the log's lock while one pass over the old log proves its
-- range (about a tenth of a second per million rows measured here); writers
-- wait for that long. The old log is then dropped whole once its newest
-- commit is older than `keep`.

LOCK TABLE pgfeed.sequencer IN EXCLUSIVE MODE;
LOCK TABLE pgfeed.events, pgfeed.commits IN ACCESS EXCLUSIVE MODE;

-- How retention rotates.
CREATE TABLE pgfeed.rotation (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Fewest transaction ids a new unit covers. It matters only where fewer
    -- than four times as many are spent in `keep` (a quiet database): there
    -- a unit outlives `keep` and its old rows are deleted row by row, which
    -- in a quiet database is cheap. Units stay few either way.
    min_width     bigint NOT NULL DEFAULT 1024 CHECK (min_width > 0),
    -- Most: past it units get more numerous, not larger.
    max_width     bigint NOT NULL DEFAULT 1073741824 CHECK (max_width >= min_width),
    -- Longest prune waits for the lock that dropping a unit takes.
    lock_timeout  interval NOT NULL DEFAULT '100ms'
);
INSERT INTO pgfeed.rotation DEFAULT VALUES;

-- The units of the log, by transaction id: [lo, hi). `lo` NULL: the log
-- from before rotation.
CREATE TABLE pgfeed.log_units (
    hi           xid8 PRIMARY KEY,
    lo           xid8,
    events       text NOT NULL,
    commits      text NOT NULL,
    made_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The newest transaction id when it was made: the rate ids are spent at.
    made_at_xid  xid8 NOT NULL DEFAULT pg_current_xact_id()
);

CREATE FUNCTION pgfeed.xid_plus(x xid8, n numeric) RETURNS xid8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (x::text::numeric + n)::text::xid8;
$$;

-- Makes the unit [lo, hi): a partition of each table, made apart and then
-- attached, which takes only a lock that writers do not wait for.
CREATE FUNCTION pgfeed.add_unit(lo xid8, hi xid8) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events   text := 'events_' || lo::text;
    commits  text := 'commits_' || lo::text;
BEGIN
    EXECUTE format('CREATE TABLE pgfeed.%I (LIKE pgfeed.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', events);
    EXECUTE format('ALTER TABLE pgfeed.events ATTACH PARTITION pgfeed.%I FOR VALUES FROM (%L) TO (%L)', events, lo, hi);
    EXECUTE format('CREATE TABLE pgfeed.%I (LIKE pgfeed.commits INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', commits);
    EXECUTE format('ALTER TABLE pgfeed.commits ATTACH PARTITION pgfeed.%I FOR VALUES FROM (%L) TO (%L)', commits, lo, hi);
    INSERT INTO pgfeed.log_units (hi, lo, events, commits)
    VALUES (hi, lo, 'pgfeed.' || quote_ident(events), 'pgfeed.' || quote_ident(commits));
END;
$$;

DO $$
DECLARE
    -- Every transaction that has logged a row so far has a lower id; one
    -- that logs after this migration commits goes to the unit it falls in.
    bound  xid8 := pg_current_xact_id();
BEGIN
    -- Event ids go on from where the identity column left them.
    CREATE SEQUENCE pgfeed.event_id AS bigint;
    PERFORM setval('pgfeed.event_id', s.last_value, s.is_called) FROM pgfeed.events_id_seq s;
    ALTER TABLE pgfeed.events ALTER COLUMN id DROP IDENTITY;
    DROP TRIGGER stamp_commit ON pgfeed.events;

    ALTER TABLE pgfeed.events RENAME TO events_before_rotation;
    ALTER TABLE pgfeed.events_before_rotation RENAME CONSTRAINT events_pkey TO events_before_rotation_pkey;
    ALTER TABLE pgfeed.commits RENAME TO commits_before_rotation;
    ALTER TABLE pgfeed.commits_before_rotation RENAME CONSTRAINT commits_pkey TO commits_before_rotation_pkey;
    ALTER INDEX pgfeed.commits_tx_idx RENAME TO commits_before_rotation_tx_idx;
    ALTER INDEX pgfeed.commits_committed_at_idx RENAME TO commits_before_rotation_committed_at_idx;

    CREATE TABLE pgfeed.events (
        id          bigint NOT NULL DEFAULT nextval('pgfeed.event_id'),
        tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
        table_name  text NOT NULL,
        prefix      text NOT NULL,
        op          text NOT NULL CONSTRAINT events_op_check
                        CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'SCHEMA')),
        new         json,
        old         json,
        actor       text,
        created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (tx, id)
    ) PARTITION BY RANGE (tx);
    ALTER SEQUENCE pgfeed.event_id OWNED BY pgfeed.events.id;

    -- Seq stays unique (one tick at a time gives them); the key holds tx, as
    -- a partitioned table's keys must.
    CREATE TABLE pgfeed.commits (
        seq           bigint NOT NULL,
        tx            xid8 NOT NULL,
        size          integer NOT NULL,
        committed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (seq, tx)
    ) PARTITION BY RANGE (tx);
    CREATE INDEX commits_tx_idx ON pgfeed.commits (tx);
    CREATE INDEX commits_committed_at_idx ON pgfeed.commits USING brin (committed_at);

    CREATE TABLE pgfeed.events_overflow PARTITION OF pgfeed.events DEFAULT;
    CREATE TABLE pgfeed.commits_overflow PARTITION OF pgfeed.commits DEFAULT;
    CREATE TABLE pgfeed.events_adopted PARTITION OF pgfeed.events
        FOR VALUES FROM ('4611686018427387904') TO (MAXVALUE);
    CREATE TABLE pgfeed.commits_adopted PARTITION OF pgfeed.commits
        FOR VALUES FROM ('4611686018427387904') TO (MAXVALUE);

    -- Rows at or above the bound (an adopted foreign log) leave the old log first.
    INSERT INTO pgfeed.events (id, tx, table_name, prefix, op, new, old, actor, created_at)
    SELECT id, tx, table_name, prefix, op, new, old, actor, created_at
      FROM pgfeed.events_before_rotation WHERE tx >= bound;
    DELETE FROM pgfeed.events_before_rotation WHERE tx >= bound;
    INSERT INTO pgfeed.commits (seq, tx, size, committed_at)
    SELECT seq, tx, size, committed_at FROM pgfeed.commits_before_rotation WHERE tx >= bound;
    DELETE FROM pgfeed.commits_before_rotation WHERE tx >= bound;

    -- One pass over each old table proves its range (and the op check of
    -- capture/0011, NOT VALID until now); attaching then reads nothing more.
    EXECUTE format('ALTER TABLE pgfeed.events_before_rotation DROP CONSTRAINT events_op_check, '
                   'ADD CONSTRAINT events_op_check CHECK (op IN (''INSERT'', ''UPDATE'', ''DELETE'', ''TRUNCATE'', ''SCHEMA'')), '
                   'ADD CONSTRAINT events_before_rotation_range CHECK (tx < %L)', bound);
    EXECUTE format('ALTER TABLE pgfeed.events ATTACH PARTITION pgfeed.events_before_rotation FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    -- Its keys become the parent's (built as it is attached).
    ALTER TABLE pgfeed.commits_before_rotation DROP CONSTRAINT commits_before_rotation_pkey;
    DROP INDEX pgfeed.commits_before_rotation_tx_idx;
    EXECUTE format('ALTER TABLE pgfeed.commits_before_rotation ADD CONSTRAINT commits_before_rotation_range CHECK (tx < %L)', bound);
    EXECUTE format('ALTER TABLE pgfeed.commits ATTACH PARTITION pgfeed.commits_before_rotation FOR VALUES FROM (MINVALUE) TO (%L)', bound);

    INSERT INTO pgfeed.log_units (hi, lo, events, commits)
    VALUES (bound, NULL, 'pgfeed.events_before_rotation', 'pgfeed.commits_before_rotation');
    PERFORM pgfeed.add_unit(bound, pgfeed.xid_plus(bound, (SELECT min_width FROM pgfeed.rotation)));
END;
$$;

-- As capture/0006, on the partitioned log (cloned onto every unit).
CREATE CONSTRAINT TRIGGER stamp_commit
    AFTER INSERT ON pgfeed.events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (pg_catalog.current_setting('pgfeed.stamp_queued', true) IS DISTINCT FROM 'yes')
    EXECUTE FUNCTION pgfeed.stamp_commit();

-- Retention: the log of every transaction committed longer than `keep` ago
-- goes, and never anything newer; whole units first (see above), then row
-- deletes for what is left outside them. Returns the rows removed (for whole
-- units, the planner's estimate). Runs as its owner.
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
    -- left. A unit is never attached over ids a writer may be routing to the
    -- overflow: such a row, routed before the attach, fails the overflow's new
    -- constraint (seen: a writer's insert failed while a restarted server
    -- caught up). So the new unit starts at least `min_width` ids above the
    -- newest id in use; ids in a gap below it stay in the overflow.
    current := pg_current_xact_id();
    SELECT * INTO unit FROM pgfeed.log_units u ORDER BY u.hi DESC LIMIT 1;
    rate := COALESCE((current::text::numeric - unit.made_at_xid::text::numeric)
                     / GREATEST(extract(epoch FROM clock_timestamp() - unit.made_at), 1), 0);
    width := LEAST(GREATEST(rate * extract(epoch FROM keep) / 4, settings.min_width), settings.max_width);
    -- (No unit left: every one was finished, empty or old, and dropped.)
    IF unit.hi IS NULL OR pgfeed.xid_plus(current, width) >= unit.hi THEN
        -- Above anything that went to the overflow (every server was stopped
        -- longer than the newest unit lasted), and above the ids in use.
        lo := GREATEST(unit.hi, pgfeed.xid_plus(current, settings.min_width::numeric),
                       pgfeed.xid_plus((SELECT max(e.tx) FROM pgfeed.events_overflow e), 1),
                       pgfeed.xid_plus((SELECT max(c.tx) FROM pgfeed.commits_overflow c), 1));
        PERFORM set_config('lock_timeout', (extract(epoch FROM settings.lock_timeout) * 1000)::bigint::text, true);
        BEGIN
            PERFORM pgfeed.add_unit(lo, pgfeed.xid_plus(lo, width));
        EXCEPTION WHEN check_violation OR lock_not_available THEN
            -- A writer's row reached the overflow meanwhile, or a lock was busy: next time.
            RAISE NOTICE 'pgfeed.prune: the next unit is made at the next prune';
        END;
        PERFORM set_config('lock_timeout', waited, true);
    END IF;
    RETURN removed;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgfeed.prune(interval) FROM PUBLIC;
