-- The pgfeed capture schema (DESIGN §2).
--
-- Every change to a tracked table becomes one row in pgfeed.events, written by
-- the writer's own transaction. When that transaction commits, a deferred
-- constraint trigger gives it the next commit position `seq` (one row in
-- pgfeed.commits) under an advisory lock that is held until the commit is
-- complete, so seq order is commit order: a reader that can see seq N can see
-- every seq below N that will ever exist. Then it announces the transaction
-- on channel `pgfeed`.
--
-- Writers need no grants on this schema: the trigger functions run as their
-- owner (SECURITY DEFINER) and name every object they touch in full.
--
-- This file creates nothing outside schema `pgfeed`; only pgfeed.track()
-- attaches triggers to application tables. `pgfeed migrate` records it in
-- pgfeed.migrations (created just before it, see migrations/README.md).

CREATE SCHEMA IF NOT EXISTS pgfeed;

-- One row per row change. `tx` ties it to its transaction; the transaction's
-- commit position lives in pgfeed.commits.
CREATE TABLE pgfeed.events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_name  text NOT NULL,
    prefix      text NOT NULL,
    op          text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    new         json,
    old         json,
    actor       text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The log is read by transaction, in statement order: one index serves both.
    PRIMARY KEY (tx, id)
);

-- One row per writing transaction. `seq` is strictly increasing in commit order.
-- Written inside the serialized commit section, so it carries as few indexes as
-- possible: the log is read by seq; retention finds old rows through a BRIN
-- index (committed_at grows with seq).
CREATE TABLE pgfeed.commits (
    seq           bigint PRIMARY KEY,
    tx            xid8 NOT NULL,
    size          integer NOT NULL,
    committed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX commits_committed_at_idx ON pgfeed.commits USING brin (committed_at);

CREATE SEQUENCE pgfeed.commit_seq AS bigint;

-- What prune() has removed: a resume from below `pruned_through` cannot be served.
CREATE TABLE pgfeed.retention (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through  bigint NOT NULL DEFAULT 0
);
INSERT INTO pgfeed.retention DEFAULT VALUES;

-- What is tracked. `exclude` names columns that never leave the table: they
-- are left out at capture (never notified nor logged) and from snapshots.
CREATE TABLE pgfeed.tracked_tables (
    table_name  regclass PRIMARY KEY,
    prefix      text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z][a-z0-9_]*$'),
    exclude     text[] NOT NULL DEFAULT '{}',
    tracked_at  timestamptz NOT NULL DEFAULT now()
);

-- The name events carry in "table": bare for schema public, else schema.table.
CREATE FUNCTION pgfeed.table_label(target regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = target;
$$;

CREATE VIEW pgfeed.tracked AS
    SELECT pgfeed.table_label(table_name) AS table_name, prefix, exclude, tracked_at
      FROM pgfeed.tracked_tables ORDER BY 1;

-- Notifications on channel `pgfeed` (what the listener reads):
--
--   a row:    {"id", "table", "prefix", "op", "new", "old", "actor", "at", "tx_index"}
--             sent by the row's own trigger, at write time, for the first 100 rows
--             of a transaction; "fetch": true (and no new/old) when the row would
--             make the payload 8000 bytes or more, Postgres' limit.
--   a commit: {"seq", "tx_size", "commit": true}, sent at commit after the rows.
--
-- Postgres delivers one transaction's notifications together, in the order they
-- were sent, and the commits of notifying transactions one after another, so a
-- listener sees each transaction's rows followed by its commit. Whatever does
-- not add up (fewer rows than tx_size, a fetch, a gap in seq) is read from the
-- log instead. Building the row payloads at write time keeps them out of the
-- serialized commit section, which then holds only the lock, the seq, the
-- commits row and one short notification.

-- Row trigger on every tracked table (and statement trigger for TRUNCATE).
-- TG_ARGV[0] is the event prefix; TG_ARGV[1..] are the columns left out. pgfeed.rows counts the transaction's events
-- (a rolled-back savepoint rolls it back with its rows); the first event of a
-- transaction queues assign_commit_seq.
CREATE FUNCTION pgfeed.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    tbl       text := CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                           ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END;
    who       text := NULLIF(pg_catalog.current_setting('pgfeed.actor', true), '');
    n         integer := COALESCE(NULLIF(pg_catalog.current_setting('pgfeed.rows', true), '')::integer, 0);
    new_doc   json;
    old_doc   json;
    event_id  bigint;
    at        timestamptz := pg_catalog.clock_timestamp();
    payload   text;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_doc := pg_catalog.to_json(NEW);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_doc := pg_catalog.to_json(OLD);
    END IF;
    IF TG_NARGS > 1 AND TG_OP <> 'TRUNCATE' THEN
        -- Left out before anything is written or sent: the values never leave the table.
        new_doc := (pg_catalog.to_jsonb(new_doc) OPERATOR(pg_catalog.-) TG_ARGV[1:TG_NARGS - 1])::json;
        old_doc := (pg_catalog.to_jsonb(old_doc) OPERATOR(pg_catalog.-) TG_ARGV[1:TG_NARGS - 1])::json;
    END IF;
    -- Counted before the log row is written: the commit trigger may fire right
    -- after that insert (SET CONSTRAINTS ALL IMMEDIATE) and must see it.
    PERFORM pg_catalog.set_config('pgfeed.rows', (n + 1)::text, true);
    INSERT INTO pgfeed.events (table_name, prefix, op, new, old, actor, created_at)
    VALUES (tbl, TG_ARGV[0], TG_OP, new_doc, old_doc, who, at)
    RETURNING id INTO event_id;
    -- Rows written after the commit position was assigned are left to the log.
    IF n < 100 AND NULLIF(pg_catalog.current_setting('pgfeed.seq', true), '') IS NULL THEN
        payload := pg_catalog.json_build_object(
            'id', event_id, 'table', tbl, 'prefix', TG_ARGV[0], 'op', TG_OP,
            'new', new_doc, 'old', old_doc, 'actor', who,
            'at', pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'tx_index', n)::text;
        IF pg_catalog.octet_length(payload) >= 8000 THEN
            payload := pg_catalog.json_build_object(
                'id', event_id, 'table', tbl, 'prefix', TG_ARGV[0], 'op', TG_OP, 'actor', who,
                'at', pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'tx_index', n, 'fetch', true)::text;
        END IF;
        PERFORM pg_catalog.pg_notify('pgfeed', payload);
    END IF;
    RETURN NULL;
END;
$$;

-- Fired at commit (or at statement end under SET CONSTRAINTS ALL IMMEDIATE).
-- The first firing takes the commit lock and the next seq; a later firing in
-- the same transaction (rows written after the first, e.g. by another deferred
-- trigger) only updates the size and announces it again; the listener reads
-- such a transaction from the log.
CREATE FUNCTION pgfeed.assign_commit_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    commit_seq  bigint := NULLIF(pg_catalog.current_setting('pgfeed.seq', true), '')::bigint;
    total       integer := COALESCE(NULLIF(pg_catalog.current_setting('pgfeed.rows', true), '')::integer, 0);
    announced   integer := COALESCE(NULLIF(pg_catalog.current_setting('pgfeed.announced', true), '')::integer, 0);
BEGIN
    IF total <= announced THEN
        RETURN NULL;
    END IF;
    IF commit_seq IS NULL THEN
        -- 0x706766656564 is 'pgfeed' in ASCII: the one commit-order lock, held
        -- until the commit is complete.
        PERFORM pg_catalog.pg_advisory_xact_lock(123589090198884);
        commit_seq := pg_catalog.nextval('pgfeed.commit_seq');
        INSERT INTO pgfeed.commits (seq, tx, size) VALUES (commit_seq, pg_catalog.pg_current_xact_id(), total);
        PERFORM pg_catalog.set_config('pgfeed.seq', commit_seq::text, true);
    ELSE
        UPDATE pgfeed.commits SET size = total WHERE seq = commit_seq;
    END IF;
    PERFORM pg_catalog.set_config('pgfeed.announced', total::text, true);
    PERFORM pg_catalog.pg_notify('pgfeed',
        '{"seq":' || commit_seq || ',"tx_size":' || total || ',"commit":true}');
    RETURN NULL;
END;
$$;

-- Queued for the first event row of a transaction, and for every row written
-- after the seq was assigned. The WHEN clause is evaluated when the row is
-- inserted, after capture() counted it.
CREATE CONSTRAINT TRIGGER assign_commit_seq
    AFTER INSERT ON pgfeed.events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (pg_catalog.current_setting('pgfeed.rows', true) = '1'
          OR NULLIF(pg_catalog.current_setting('pgfeed.seq', true), '') IS NOT NULL)
    EXECUTE FUNCTION pgfeed.assign_commit_seq();

-- The newest commit position (0 before the first write).
CREATE FUNCTION pgfeed.head() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT GREATEST((SELECT max(seq) FROM pgfeed.commits),
                    (SELECT pruned_through FROM pgfeed.retention), 0);
$$;

-- Drops pgfeed's capture triggers from `target`, if it has them.
CREATE FUNCTION pgfeed.drop_capture_triggers(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text;
BEGIN
    FOR name IN SELECT tgname FROM pg_catalog.pg_trigger
                 WHERE tgrelid = target AND tgname IN ('pgfeed_capture', 'pgfeed_capture_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', name, target);
    END LOOP;
END;
$$;

-- Tracks `target`: its writes become events named <event_prefix>_created,
-- _updated, _deleted and _truncated, without the columns in `exclude`.
-- Calling it again changes the prefix and the excluded columns.
CREATE FUNCTION pgfeed.track(target regclass, event_prefix text, exclude text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing  text;
    args     text;
BEGIN
    IF event_prefix IS NULL OR event_prefix !~ '^[a-z][a-z0-9_]*$' THEN
        RAISE EXCEPTION 'pgfeed.track: event prefix % must match ^[a-z][a-z0-9_]*$', event_prefix;
    END IF;
    exclude := COALESCE(exclude, '{}');
    SELECT string_agg(x, ', ') INTO missing
      FROM unnest(exclude) x
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = target AND a.attname = x AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pgfeed.track: % has no column %', target, missing;
    END IF;
    SELECT string_agg(pg_catalog.quote_literal(a), ', ') INTO args
      FROM unnest(ARRAY[event_prefix] || exclude) a;
    PERFORM pgfeed.drop_capture_triggers(target);
    EXECUTE format('CREATE TRIGGER pgfeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION pgfeed.capture(%s)', target, args);
    EXECUTE format('CREATE TRIGGER pgfeed_capture_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.capture(%s)', target, args);
    INSERT INTO pgfeed.tracked_tables (table_name, prefix, exclude) VALUES (target, event_prefix, exclude)
    ON CONFLICT (table_name) DO UPDATE
        SET prefix = excluded.prefix, exclude = excluded.exclude, tracked_at = now();
END;
$$;

-- Stops tracking `target`; its past events stay in the log until pruned.
CREATE FUNCTION pgfeed.untrack(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgfeed.drop_capture_triggers(target);
    DELETE FROM pgfeed.tracked_tables WHERE table_name = target;
END;
$$;

-- Retention: removes the log of every transaction committed longer than `keep`
-- ago, and never anything newer. Returns the number of event rows removed.
-- Runs as its owner, so the server's role needs no DELETE on the log.
CREATE FUNCTION pgfeed.prune(keep interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    removed  bigint;
BEGIN
    WITH gone AS (
        DELETE FROM pgfeed.commits WHERE committed_at < clock_timestamp() - keep
        RETURNING seq, tx
    ), dropped AS (
        DELETE FROM pgfeed.events e USING gone WHERE e.tx = gone.tx RETURNING 1
    ), mark AS (
        UPDATE pgfeed.retention
           SET pruned_through = GREATEST(pruned_through, (SELECT max(seq) FROM gone))
         WHERE EXISTS (SELECT 1 FROM gone)
    )
    SELECT count(*) INTO removed FROM dropped;
    RETURN removed;
END;
$$;

-- The rows of tracked table `target` (named as in events: `studies`,
-- `lab.equipment`) without its excluded columns, ordered by id, with the
-- watermark they reflect. Call it in a REPEATABLE READ transaction: both come
-- from the one snapshot, so the rows hold exactly the transactions up to the
-- watermark. No row when `target` is not tracked. Runs as its owner, so the
-- server's role reads tracked tables without SELECT on them; only roles
-- granted EXECUTE may call it.
CREATE FUNCTION pgfeed.snapshot(target text, OUT watermark bigint, OUT rows json)
RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    relation  regclass;
    left_out  text[];
BEGIN
    SELECT t.table_name, t.exclude INTO relation, left_out
      FROM pgfeed.tracked_tables t WHERE pgfeed.table_label(t.table_name) = target;
    IF relation IS NULL THEN
        RETURN;
    END IF;
    watermark := pgfeed.head();
    -- With search_path pinned, a regclass prints schema-qualified and quoted.
    EXECUTE format('SELECT COALESCE(jsonb_agg(to_jsonb(t) - $1 ORDER BY to_jsonb(t)->''id''), ''[]'')::json FROM %s t',
                   relation)
       INTO rows USING left_out;
    RETURN NEXT;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgfeed.snapshot(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgfeed.prune(interval) FROM PUBLIC;
