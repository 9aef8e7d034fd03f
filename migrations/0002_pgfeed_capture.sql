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

CREATE SCHEMA pgfeed;

-- One row per row change. `tx` ties it to its transaction; the transaction's
-- commit position lives in pgfeed.commits.
CREATE TABLE pgfeed.events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_name  text NOT NULL,
    prefix      text NOT NULL,
    op          text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    new         jsonb,
    old         jsonb,
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

CREATE TABLE pgfeed.tracked_tables (
    table_name  regclass PRIMARY KEY,
    prefix      text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z][a-z0-9_]*$'),
    tracked_at  timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW pgfeed.tracked AS
    SELECT table_name, prefix, tracked_at FROM pgfeed.tracked_tables ORDER BY table_name::text;

-- Row trigger on every tracked table (and statement trigger for TRUNCATE).
-- TG_ARGV[0] is the event prefix. The first event of a (sub)transaction sets
-- pgfeed.queued, so assign_commit_seq is queued once per transaction, not once
-- per row; a rolled-back savepoint resets the setting together with its rows.
CREATE FUNCTION pgfeed.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    tbl   text := CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                       ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END;
    who   text := NULLIF(pg_catalog.current_setting('pgfeed.actor', true), '');
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgfeed.events (table_name, prefix, op, new, actor)
        VALUES (tbl, TG_ARGV[0], 'INSERT', pg_catalog.to_jsonb(NEW), who);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO pgfeed.events (table_name, prefix, op, new, old, actor)
        VALUES (tbl, TG_ARGV[0], 'UPDATE', pg_catalog.to_jsonb(NEW), pg_catalog.to_jsonb(OLD), who);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgfeed.events (table_name, prefix, op, old, actor)
        VALUES (tbl, TG_ARGV[0], 'DELETE', pg_catalog.to_jsonb(OLD), who);
    ELSE
        INSERT INTO pgfeed.events (table_name, prefix, op, actor)
        VALUES (tbl, TG_ARGV[0], 'TRUNCATE', who);
    END IF;
    IF pg_catalog.current_setting('pgfeed.queued', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.set_config('pgfeed.queued', 'on', true);
    END IF;
    RETURN NULL;
END;
$$;

-- Fired at commit (or at statement end under SET CONSTRAINTS ALL IMMEDIATE).
-- The first firing takes the commit lock and the next seq; any later firing in
-- the same transaction (rows written after the first, e.g. by another deferred
-- trigger) announces only the rows not announced yet, under the same seq.
--
-- Commits of notifying transactions are serialized by Postgres anyway, and the
-- commit lock is held through the commit, so everything that does not need the
-- seq happens before the lock: the notification bodies are built first and
-- only get their "seq" prefixed under the lock.
--
-- A transaction of up to 100 rows gets one notification per row, carrying
-- the row; a larger one gets a single summary with "fetch": true and the
-- listener pages the log. A row notification of 8000 bytes or more (Postgres'
-- limit) is sent without new/old and with "fetch": true.
CREATE FUNCTION pgfeed.assign_commit_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    this_tx     xid8 := pg_catalog.pg_current_xact_id();
    commit_seq  bigint := NULLIF(pg_catalog.current_setting('pgfeed.seq', true), '')::bigint;
    announced   bigint := COALESCE(NULLIF(pg_catalog.current_setting('pgfeed.announced', true), '')::bigint, 0);
    before      integer := COALESCE(NULLIF(pg_catalog.current_setting('pgfeed.size', true), '')::integer, 0);
    fresh       integer;
    last_id     bigint;
    total       integer;
    bodies      text[];
    body        text;
BEGIN
    -- Up to 101 rows with their notification bodies (all but the seq).
    SELECT pg_catalog.count(*), pg_catalog.max(e.id),
           pg_catalog.array_agg(e.body ORDER BY e.id)
      INTO fresh, last_id, bodies
      FROM (SELECT e.id, pg_catalog.json_build_object(
                       'id', e.id, 'table', e.table_name, 'prefix', e.prefix, 'op', e.op,
                       'new', e.new, 'old', e.old, 'actor', e.actor,
                       'at', pg_catalog.to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                       'tx_index', 0)::text AS body
              FROM pgfeed.events e
             WHERE e.tx = this_tx AND e.id > announced
             ORDER BY e.id
             LIMIT 101) e;
    IF fresh = 0 THEN
        RETURN NULL;
    END IF;
    IF fresh > 100 THEN
        SELECT pg_catalog.count(*), pg_catalog.max(e.id) INTO fresh, last_id
          FROM pgfeed.events e WHERE e.tx = this_tx AND e.id > announced;
    END IF;
    total := before + fresh;
    PERFORM pg_catalog.set_config('pgfeed.announced', last_id::text, true);
    PERFORM pg_catalog.set_config('pgfeed.size', total::text, true);

    IF commit_seq IS NULL THEN
        -- 0x706766656564 is 'pgfeed' in ASCII: the one commit-order lock.
        PERFORM pg_catalog.pg_advisory_xact_lock(123589090198884);
        commit_seq := pg_catalog.nextval('pgfeed.commit_seq');
        INSERT INTO pgfeed.commits (seq, tx, size) VALUES (commit_seq, this_tx, total);
        PERFORM pg_catalog.set_config('pgfeed.seq', commit_seq::text, true);
    ELSE
        UPDATE pgfeed.commits SET size = total WHERE seq = commit_seq;
    END IF;

    IF fresh > 100 THEN
        PERFORM pg_catalog.pg_notify('pgfeed', pg_catalog.json_build_object(
            'seq', commit_seq, 'tx_index', before, 'tx_size', total,
            'count', fresh, 'fetch', true)::text);
        RETURN NULL;
    END IF;
    FOR i IN 1 .. fresh LOOP
        -- Each body ends in "tx_index" : 0}: put the real index, the size and the seq in.
        body := '{"seq" : ' || commit_seq || ', '
             || pg_catalog.left(pg_catalog.substr(bodies[i], 2), -2)
             || (before + i - 1) || ', "tx_size" : ' || total || '}';
        IF pg_catalog.octet_length(body) >= 8000 THEN
            body := (pg_catalog.jsonb_set(body::jsonb - 'new' - 'old', '{fetch}', 'true'))::text;
        END IF;
        PERFORM pg_catalog.pg_notify('pgfeed', body);
    END LOOP;
    RETURN NULL;
END;
$$;

-- Queued for the first event row of a transaction, and for every row written
-- after the seq was assigned. The WHEN clause is evaluated when the row is
-- inserted, before capture() sets pgfeed.queued.
CREATE CONSTRAINT TRIGGER assign_commit_seq
    AFTER INSERT ON pgfeed.events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (pg_catalog.current_setting('pgfeed.queued', true) IS DISTINCT FROM 'on'
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
-- _updated, _deleted and _truncated. Calling it again changes the prefix.
CREATE FUNCTION pgfeed.track(target regclass, event_prefix text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF event_prefix IS NULL OR event_prefix !~ '^[a-z][a-z0-9_]*$' THEN
        RAISE EXCEPTION 'pgfeed.track: event prefix % must match ^[a-z][a-z0-9_]*$', event_prefix;
    END IF;
    PERFORM pgfeed.drop_capture_triggers(target);
    EXECUTE format('CREATE TRIGGER pgfeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION pgfeed.capture(%L)', target, event_prefix);
    EXECUTE format('CREATE TRIGGER pgfeed_capture_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.capture(%L)', target, event_prefix);
    INSERT INTO pgfeed.tracked_tables (table_name, prefix) VALUES (target, event_prefix)
    ON CONFLICT (table_name) DO UPDATE SET prefix = excluded.prefix, tracked_at = now();
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
CREATE FUNCTION pgfeed.prune(keep interval) RETURNS bigint
LANGUAGE plpgsql AS $$
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
