-- The tables `pgfeed bench write` measures, one per write path. Each gets the
-- same transaction (an insert and an update of the row) from the same writers.
--
--   plain        no trigger: what the database does without any feed.
--   bare_notify  a per-row pg_notify of the row as JSON: the at-most-once design
--                of pg_eventserv and postgres-websockets (the reference).
--   tracked      pgfeed.track(): pgfeed's write path as installed.
--
-- And prototypes of other write paths (issue 11), each the writer's side only:
--
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
