-- The tables `pgfeed bench write` measures, one per write path. Each gets the
-- same transaction (an insert and an update of the row) from the same writers.
--
--   plain        no trigger: what the database does without any feed.
--   bare_notify  a per-row pg_notify of the row as JSON: the at-most-once design
--                of pg_eventserv and postgres-websockets (the reference).
--   tracked      pgfeed.track(): pgfeed's write path as installed.
--
-- And other write paths (issue 11), each the writer's side only:
--
--   v01          pgfeed 0.1's write path (capture/0001): a per-row JSON
--                notification, and at commit the seq under a lock held through it.
--   lock_1n      a slim capture (no per-row payload, counter or formatting) with
--                one notification per transaction, seq still taken under the
--                commit-order lock at commit.
--   seq_1n       a post-commit sequencer's writers: log rows plus one notification
--                per transaction (identical payloads collapse), no lock, no seq.
--   seq_poll     a post-commit sequencer that polls: writers only log.

CREATE TABLE bench_plain (id bigserial PRIMARY KEY, label text NOT NULL, n integer NOT NULL DEFAULT 0,
                          updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_bare_notify (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_tracked (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_lock_1n (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_seq_1n (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_seq_poll (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_v01 (LIKE bench_plain INCLUDING ALL);

CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench', json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
                                                 'row', row_to_json(COALESCE(NEW, OLD)))::text);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE OR DELETE ON bench_bare_notify
    FOR EACH ROW EXECUTE FUNCTION bench_notify();

SELECT pgfeed.track('bench_tracked', 'bench');

CREATE SCHEMA bench_proto;
CREATE TABLE bench_proto.events (LIKE pgfeed.events INCLUDING ALL);
CREATE TABLE bench_proto.commits (LIKE pgfeed.commits INCLUDING ALL);
CREATE SEQUENCE bench_proto.commit_seq AS bigint;

CREATE FUNCTION bench_proto.capture_lock_1n() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- 'first' while the transaction's first row is inserted: the WHEN clause of
    -- the commit trigger below queues it once per transaction.
    IF current_setting('pgfeed.open', true) IS DISTINCT FROM '1' THEN
        PERFORM set_config('pgfeed.open', 'first', true);
        INSERT INTO bench_proto.events (table_name, prefix, op, new, old, actor)
        VALUES (TG_TABLE_NAME, TG_ARGV[0], TG_OP, to_json(NEW), CASE WHEN TG_OP <> 'INSERT' THEN to_json(OLD) END,
                NULLIF(current_setting('pgfeed.actor', true), ''));
        PERFORM set_config('pgfeed.open', '1', true);
    ELSE
        INSERT INTO bench_proto.events (table_name, prefix, op, new, old, actor)
        VALUES (TG_TABLE_NAME, TG_ARGV[0], TG_OP, to_json(NEW), CASE WHEN TG_OP <> 'INSERT' THEN to_json(OLD) END,
                NULLIF(current_setting('pgfeed.actor', true), ''));
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION bench_proto.assign_lock_1n() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total  integer;
    s      bigint;
BEGIN
    -- Counted before the lock, so the serialized section holds only lock, seq, row, notify.
    SELECT count(*) INTO total FROM bench_proto.events WHERE tx = pg_current_xact_id();
    PERFORM pg_advisory_xact_lock(123589090198885);
    s := nextval('bench_proto.commit_seq');
    INSERT INTO bench_proto.commits (seq, tx, size) VALUES (s, pg_current_xact_id(), total);
    PERFORM pg_notify('pgfeed', '{"seq":' || s || ',"tx_size":' || total || ',"commit":true}');
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER assign_lock_1n AFTER INSERT ON bench_proto.events DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (current_setting('pgfeed.open', true) = 'first')
    EXECUTE FUNCTION bench_proto.assign_lock_1n();
CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON bench_lock_1n
    FOR EACH ROW EXECUTE FUNCTION bench_proto.capture_lock_1n('bench');

CREATE FUNCTION bench_proto.capture_seq_1n() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_proto.events (table_name, prefix, op, new, old, actor)
    VALUES (TG_TABLE_NAME, TG_ARGV[0], TG_OP, to_json(NEW), CASE WHEN TG_OP <> 'INSERT' THEN to_json(OLD) END,
            NULLIF(current_setting('pgfeed.actor', true), ''));
    -- The same payload every row: Postgres queues it once per transaction.
    PERFORM pg_notify('pgfeed', 'w');
    RETURN NULL;
END $$;
CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON bench_seq_1n
    FOR EACH ROW EXECUTE FUNCTION bench_proto.capture_seq_1n('bench');

CREATE FUNCTION bench_proto.capture_seq_poll() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_proto.events (table_name, prefix, op, new, old, actor)
    VALUES (TG_TABLE_NAME, TG_ARGV[0], TG_OP, to_json(NEW), CASE WHEN TG_OP <> 'INSERT' THEN to_json(OLD) END,
            NULLIF(current_setting('pgfeed.actor', true), ''));
    RETURN NULL;
END $$;
CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON bench_seq_poll
    FOR EACH ROW EXECUTE FUNCTION bench_proto.capture_seq_poll('bench');

-- pgfeed 0.1, as capture/0001 installed it (tables of its own).
CREATE TABLE bench_proto.events_v01 (LIKE pgfeed.events INCLUDING ALL);
CREATE TABLE bench_proto.commits_v01 (LIKE pgfeed.commits INCLUDING ALL);
CREATE SEQUENCE bench_proto.commit_seq_v01 AS bigint;
CREATE FUNCTION bench_proto.capture_v01() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tbl       text := TG_TABLE_NAME;
    who       text := NULLIF(current_setting('pgfeed.actor', true), '');
    n         integer := COALESCE(NULLIF(current_setting('pgfeed.rows', true), '')::integer, 0);
    new_doc   json;
    old_doc   json;
    event_id  bigint;
    at        timestamptz := clock_timestamp();
    payload   text;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN new_doc := to_json(NEW); END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN old_doc := to_json(OLD); END IF;
    PERFORM set_config('pgfeed.rows', (n + 1)::text, true);
    INSERT INTO bench_proto.events_v01 (table_name, prefix, op, new, old, actor, created_at)
    VALUES (tbl, TG_ARGV[0], TG_OP, new_doc, old_doc, who, at)
    RETURNING id INTO event_id;
    IF n < 100 AND NULLIF(current_setting('pgfeed.seq', true), '') IS NULL THEN
        payload := json_build_object(
            'id', event_id, 'table', tbl, 'prefix', TG_ARGV[0], 'op', TG_OP,
            'new', new_doc, 'old', old_doc, 'actor', who,
            'at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'tx_index', n)::text;
        PERFORM pg_notify('pgfeed', payload);
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION bench_proto.assign_v01() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    commit_seq  bigint := NULLIF(current_setting('pgfeed.seq', true), '')::bigint;
    total       integer := COALESCE(NULLIF(current_setting('pgfeed.rows', true), '')::integer, 0);
    announced   integer := COALESCE(NULLIF(current_setting('pgfeed.announced', true), '')::integer, 0);
BEGIN
    IF total <= announced THEN
        RETURN NULL;
    END IF;
    IF commit_seq IS NULL THEN
        PERFORM pg_advisory_xact_lock(123589090198884);
        commit_seq := nextval('bench_proto.commit_seq_v01');
        INSERT INTO bench_proto.commits_v01 (seq, tx, size) VALUES (commit_seq, pg_current_xact_id(), total);
        PERFORM set_config('pgfeed.seq', commit_seq::text, true);
    ELSE
        UPDATE bench_proto.commits_v01 SET size = total WHERE seq = commit_seq;
    END IF;
    PERFORM set_config('pgfeed.announced', total::text, true);
    PERFORM pg_notify('pgfeed', '{"seq":' || commit_seq || ',"tx_size":' || total || ',"commit":true}');
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER assign_v01 AFTER INSERT ON bench_proto.events_v01 DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (current_setting('pgfeed.rows', true) = '1' OR NULLIF(current_setting('pgfeed.seq', true), '') IS NOT NULL)
    EXECUTE FUNCTION bench_proto.assign_v01();
CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON bench_v01
    FOR EACH ROW EXECUTE FUNCTION bench_proto.capture_v01('bench');
