-- Schema changes are events; renames are followed; partitioned tables are
-- captured under their own name (issue 26).
--
-- A DBA's ALTER TABLE on a tracked table changed the rows' shape, or the name
-- events carry, and nothing in the stream said so: a client holding a
-- snapshot or a typed model could not know when to re-read, and a client
-- subscribed to a renamed table silently received nothing more.
--
-- Now an event trigger on `ddl_command_end` compares each altered tracked
-- table's shape (its name, its columns by attribute number, its partitions)
-- with the shape recorded when it was tracked or last changed, and writes one
-- `SCHEMA` row into the log, in the DDL's own transaction, at its place among
-- the rows:
--
--   {"table": "instruments", "previous_table": "equipment",   (after a rename)
--    "change": "rename_table",                                 (the first change)
--    "changes": [{"change": "rename_table", "from": "equipment", "to": "instruments"},
--                {"change": "add_column", "column": "serial"},
--                {"change": "drop_column", "column": "notes"},
--                {"change": "rename_column", "column": "model", "from": "kind"},
--                {"change": "alter_type", "column": "qty", "from": "integer", "to": "bigint"},
--                {"change": "set_not_null" | "drop_not_null", "column": "name"},
--                {"change": "attach_partition" | "detach_partition" | "drop_partition",
--                 "partition": "measurements_2026_12"},
--                {"change": "drop_table"}],
--    "columns": [{"name": "id", "type": "integer", "nullable": false}, ...]}
--
-- Columns left out of capture are left out here too: a change to one of them
-- alone writes nothing, and renaming one renames it in the exclusion (its
-- values never leave the table under the new name either). A DDL that changes
-- no name, column or partition (an index, a constraint, a default) writes
-- nothing: the rows a client holds still have the shape it knows.
--
-- A table is followed by its identity (regclass), so its events carry its
-- current name; the names it had are kept in pgfeed.renames, which a server
-- reads to resolve a subscription that names a table by a name it no longer
-- has.
--
-- Row triggers on a partitioned table are cloned onto its partitions, present
-- and future, and there `TG_TABLE_NAME` is the partition's: a partitioned
-- table is captured by pgfeed.capture_partition(), which names the row after
-- the partition tree's root. Tracking a partition alone is refused.
--
-- Event triggers take a superuser to create (as capture/0009's): installed by
-- another role, pgfeed goes without them and says so.

-- The log takes schema changes. Every existing row passes the wider check:
-- NOT VALID spares a scan of the whole log under its lock.
ALTER TABLE pgfeed.events DROP CONSTRAINT events_op_check;
ALTER TABLE pgfeed.events ADD CONSTRAINT events_op_check
    CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'SCHEMA')) NOT VALID;

-- A table's shape as schema changes compare it: its name, its columns by
-- attribute number (a rename or retype keeps the number), its partitions.
CREATE FUNCTION pgfeed.table_shape(target regclass) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'table', pgfeed.table_label(target),
        'columns', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'num', a.attnum, 'name', a.attname,
                       'type', format_type(a.atttypid, a.atttypmod),
                       'nullable', NOT a.attnotnull) ORDER BY a.attnum)
              FROM pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
        'partitions', COALESCE((
            SELECT jsonb_agg(jsonb_build_object('oid', p.relid::oid, 'name', pgfeed.table_label(p.relid))
                             ORDER BY p.relid::oid)
              FROM pg_partition_tree(target) p
             WHERE p.relid <> target), '[]'));
$$;

-- The shape each tracked table had when it was tracked or last changed.
ALTER TABLE pgfeed.tracked_tables ADD COLUMN shape jsonb;
UPDATE pgfeed.tracked_tables t SET shape = pgfeed.table_shape(t.table_name)
 WHERE pgfeed.table_label(t.table_name) IS NOT NULL;

-- The names a tracked table had: (`from`, `to`) per rename, with the
-- renaming transaction (its seq is found through pgfeed.commits).
CREATE TABLE pgfeed.renames (
    table_name  oid NOT NULL,
    "from"      text NOT NULL,
    "to"        text NOT NULL,
    tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    renamed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX renames_tx_idx ON pgfeed.renames (tx);

-- A schema change's row in the log, as capture() writes a row change's
-- (the commit stamp queued once per transaction, the sequencer woken).
CREATE FUNCTION pgfeed.log_schema_change(label text, event_prefix text, doc jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO pgfeed.events (table_name, prefix, op, new, actor)
    VALUES (label, event_prefix, 'SCHEMA', doc::json, NULLIF(current_setting('pgfeed.actor', true), ''));
    IF current_setting('pgfeed.stamp_queued', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('pgfeed.stamp_queued', 'yes', true);
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared(1885824613, 1) THEN
        PERFORM pg_notify('pgfeed', '');
    END IF;
END;
$$;

-- What changed from shape `before` to `after`, as the list of changes above,
-- leaving out columns in `left_out`. Empty when nothing a client sees changed.
CREATE FUNCTION pgfeed.shape_changes(before jsonb, after jsonb, left_out text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH b AS (SELECT (c->>'num')::int AS num, c->>'name' AS name, c->>'type' AS type,
                      (c->>'nullable')::boolean AS nullable
                 FROM jsonb_array_elements(before->'columns') c),
         a AS (SELECT (c->>'num')::int AS num, c->>'name' AS name, c->>'type' AS type,
                      (c->>'nullable')::boolean AS nullable
                 FROM jsonb_array_elements(after->'columns') c),
         bp AS (SELECT p->>'oid' AS oid, p->>'name' AS name FROM jsonb_array_elements(before->'partitions') p),
         ap AS (SELECT p->>'oid' AS oid, p->>'name' AS name FROM jsonb_array_elements(after->'partitions') p),
         changes AS (
            SELECT 0 AS k, 0 AS num, jsonb_build_object('change', 'rename_table',
                       'from', before->>'table', 'to', after->>'table') AS change
             WHERE before->>'table' IS DISTINCT FROM after->>'table'
            UNION ALL
            SELECT 1, a.num, jsonb_build_object('change', 'add_column', 'column', a.name)
              FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.num = a.num)
               AND a.name <> ALL (left_out)
            UNION ALL
            SELECT 2, b.num, jsonb_build_object('change', 'drop_column', 'column', b.name)
              FROM b WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.num = b.num)
               AND b.name <> ALL (left_out)
            UNION ALL
            SELECT 3, a.num, jsonb_build_object('change', 'rename_column', 'column', a.name, 'from', b.name)
              FROM a JOIN b USING (num) WHERE a.name <> b.name AND b.name <> ALL (left_out)
            UNION ALL
            SELECT 4, a.num, jsonb_build_object('change', 'alter_type', 'column', a.name,
                                                'from', b.type, 'to', a.type)
              FROM a JOIN b USING (num) WHERE a.type <> b.type AND a.name <> ALL (left_out)
            UNION ALL
            SELECT 5, a.num, jsonb_build_object('change',
                       CASE WHEN a.nullable THEN 'drop_not_null' ELSE 'set_not_null' END, 'column', a.name)
              FROM a JOIN b USING (num) WHERE a.nullable <> b.nullable AND a.name <> ALL (left_out)
            UNION ALL
            SELECT 6, 0, jsonb_build_object('change', 'attach_partition', 'partition', ap.name)
              FROM ap WHERE NOT EXISTS (SELECT 1 FROM bp WHERE bp.oid = ap.oid)
            UNION ALL
            SELECT 7, 0, jsonb_build_object('change', 'detach_partition', 'partition', bp.name)
              FROM bp WHERE NOT EXISTS (SELECT 1 FROM ap WHERE ap.oid = bp.oid))
    SELECT COALESCE(jsonb_agg(change ORDER BY k, num), '[]') FROM changes;
$$;

-- The columns a schema change shows: the shape's, less those left out.
CREATE FUNCTION pgfeed.shown_columns(shape jsonb, left_out text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(jsonb_agg(c - 'num' ORDER BY (c->>'num')::int), '[]')
      FROM jsonb_array_elements(shape->'columns') c
     WHERE c->>'name' <> ALL (left_out);
$$;

-- The capture triggers of `target`, made anew: `pgfeed.capture` on a plain
-- table, `pgfeed.capture_partition` on a partitioned one (its partitions get
-- clones), firing always (capture/0010).
CREATE FUNCTION pgfeed.attach_capture(target regclass, event_prefix text, left_out text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    args  text;
    fn    text := CASE WHEN (SELECT relkind FROM pg_catalog.pg_class WHERE oid = target) = 'p'
                       THEN 'pgfeed.capture_partition' ELSE 'pgfeed.capture' END;
BEGIN
    SELECT string_agg(pg_catalog.quote_literal(a), ', ') INTO args
      FROM unnest(ARRAY[event_prefix] || left_out) a;
    PERFORM pgfeed.drop_capture_triggers(target);
    EXECUTE format('CREATE TRIGGER pgfeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION %s(%s)', target, fn, args);
    EXECUTE format('CREATE TRIGGER pgfeed_capture_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s(%s)', target, fn, args);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER pgfeed_capture, ENABLE ALWAYS TRIGGER pgfeed_capture_truncate', target);
END;
$$;

-- ddl_command_end of ALTER TABLE (and CREATE TABLE … PARTITION OF): one
-- schema change per tracked table whose shape changed.
CREATE FUNCTION pgfeed.follow_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t        record;
    after    jsonb;
    changes  jsonb;
    left_out text[];
    renamed  jsonb;
BEGIN
    FOR t IN SELECT k.table_name, k.prefix, k.exclude, k.shape
               FROM pgfeed.tracked_tables k
              WHERE k.table_name::oid IN (
                    SELECT d.objid FROM pg_event_trigger_ddl_commands() d
                     WHERE d.classid = 'pg_catalog.pg_class'::regclass
                    UNION
                    -- a partition created or attached changes its root's shape
                    SELECT r.relid FROM pg_event_trigger_ddl_commands() d,
                           LATERAL (SELECT pg_partition_root(d.objid) AS relid) r
                     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND r.relid IS NOT NULL)
              ORDER BY k.table_name::oid
    LOOP
        after := pgfeed.table_shape(t.table_name);
        IF t.shape IS NOT DISTINCT FROM after THEN
            CONTINUE;
        END IF;
        left_out := t.exclude;
        -- An excluded column that was renamed stays excluded under its new
        -- name; one that was dropped leaves the exclusion.
        IF cardinality(left_out) > 0 AND t.shape IS NOT NULL THEN
            SELECT COALESCE(array_agg(a->>'name' ORDER BY u.i) FILTER (WHERE a IS NOT NULL), '{}')
              INTO left_out
              FROM unnest(t.exclude) WITH ORDINALITY u(x, i)
              LEFT JOIN jsonb_array_elements(t.shape->'columns') b ON b->>'name' = u.x
              LEFT JOIN jsonb_array_elements(after->'columns') a ON a->'num' = b->'num';
        END IF;
        -- A partition created empty changes no row a client holds: recorded, not announced.
        changes := CASE WHEN t.shape IS NULL THEN '[]' ELSE pgfeed.shape_changes(t.shape, after, t.exclude) END;
        IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() d
                        WHERE d.command_tag = 'ALTER TABLE') THEN
            changes := '[]';
        END IF;
        UPDATE pgfeed.tracked_tables SET shape = after, exclude = left_out WHERE table_name = t.table_name;
        IF left_out IS DISTINCT FROM t.exclude THEN
            PERFORM pgfeed.attach_capture(t.table_name, t.prefix, left_out);
        END IF;
        IF jsonb_array_length(changes) = 0 THEN
            CONTINUE;
        END IF;
        renamed := (SELECT c FROM jsonb_array_elements(changes) c WHERE c->>'change' = 'rename_table');
        IF renamed IS NOT NULL THEN
            INSERT INTO pgfeed.renames (table_name, "from", "to")
            VALUES (t.table_name::oid, renamed->>'from', renamed->>'to');
        END IF;
        PERFORM pgfeed.log_schema_change(after->>'table', t.prefix,
            jsonb_strip_nulls(jsonb_build_object('table', after->>'table',
                                                 'previous_table', renamed->>'from'))
            || jsonb_build_object('change', changes->0->'change', 'changes', changes,
                                  'columns', pgfeed.shown_columns(after, left_out)));
    END LOOP;
END;
$$;

-- As capture/0009, and the drop is announced: a tracked table dropped writes
-- `drop_table`; a partition of a tracked table dropped writes `drop_partition`
-- for its root (its rows are gone from the root's snapshot).
CREATE OR REPLACE FUNCTION pgfeed.forget_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t  record;
BEGIN
    FOR t IN SELECT k.table_name::oid AS relid, k.prefix, k.shape,
                    CASE WHEN d.schema_name = 'public' THEN d.object_name
                         ELSE d.schema_name || '.' || d.object_name END AS label
               FROM pgfeed.tracked_tables k
               JOIN pg_event_trigger_dropped_objects() d
                 ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0 AND d.objid = k.table_name::oid
              ORDER BY 1
    LOOP
        PERFORM pgfeed.log_schema_change(t.label, t.prefix,
            jsonb_build_object('table', t.label, 'change', 'drop_table',
                               'changes', jsonb_build_array(jsonb_build_object('change', 'drop_table')),
                               'columns', '[]'::jsonb));
        DELETE FROM pgfeed.tracked_tables WHERE table_name::oid = t.relid;
    END LOOP;
    -- Partitions of a table still tracked.
    FOR t IN SELECT k.table_name, k.prefix, k.exclude, p->>'name' AS partition
               FROM pgfeed.tracked_tables k
               CROSS JOIN LATERAL jsonb_array_elements(k.shape->'partitions') p
               JOIN pg_event_trigger_dropped_objects() d
                 ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0 AND d.objid = (p->>'oid')::oid
              ORDER BY 1
    LOOP
        UPDATE pgfeed.tracked_tables SET shape = pgfeed.table_shape(t.table_name) WHERE table_name = t.table_name;
        PERFORM pgfeed.log_schema_change(pgfeed.table_label(t.table_name), t.prefix,
            jsonb_build_object('table', pgfeed.table_label(t.table_name), 'change', 'drop_partition',
                               'changes', jsonb_build_array(jsonb_build_object('change', 'drop_partition',
                                                                                'partition', t.partition)),
                               'columns', pgfeed.shown_columns(pgfeed.table_shape(t.table_name), t.exclude)));
    END LOOP;
END;
$$;

DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        CREATE EVENT TRIGGER pgfeed_follow_ddl ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
            EXECUTE FUNCTION pgfeed.follow_ddl();
    ELSE
        RAISE NOTICE 'pgfeed: installed without a superuser, so without the event trigger that announces schema changes of tracked tables';
    END IF;
END;
$$;

-- The row trigger of a partitioned table: as capture() (capture/0006), with
-- the row named after its partition tree's root.
CREATE FUNCTION pgfeed.capture_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    new_doc  json;
    old_doc  json;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_doc := pg_catalog.to_json(NEW);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_doc := pg_catalog.to_json(OLD);
    END IF;
    IF TG_NARGS > 1 AND TG_OP <> 'TRUNCATE' THEN
        new_doc := (pg_catalog.to_jsonb(new_doc) OPERATOR(pg_catalog.-) TG_ARGV[1:TG_NARGS - 1])::json;
        old_doc := (pg_catalog.to_jsonb(old_doc) OPERATOR(pg_catalog.-) TG_ARGV[1:TG_NARGS - 1])::json;
    END IF;
    INSERT INTO pgfeed.events (table_name, prefix, op, new, old, actor)
    VALUES (pgfeed.table_label(COALESCE(pg_catalog.pg_partition_root(TG_RELID), TG_RELID)),
            TG_ARGV[0], TG_OP, new_doc, old_doc,
            NULLIF(pg_catalog.current_setting('pgfeed.actor', true), ''));
    IF pg_catalog.current_setting('pgfeed.stamp_queued', true) IS DISTINCT FROM 'yes' THEN
        PERFORM pg_catalog.set_config('pgfeed.stamp_queued', 'yes', true);
    END IF;
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885824613, 1) THEN
        PERFORM pg_catalog.pg_notify('pgfeed', '');
    END IF;
    RETURN NULL;
END;
$$;

-- As capture/0010: a partition alone is refused, a partitioned table gets the
-- partition trigger, and its shape is recorded (before the triggers are made:
-- their ALTER TABLE then finds nothing changed).
CREATE OR REPLACE FUNCTION pgfeed.track(target regclass, event_prefix text, exclude text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing  text;
BEGIN
    IF event_prefix IS NULL OR event_prefix !~ '^[a-z][a-z0-9_]*$' THEN
        RAISE EXCEPTION 'pgfeed.track: event prefix % must match ^[a-z][a-z0-9_]*$', event_prefix;
    END IF;
    IF (SELECT relispartition FROM pg_catalog.pg_class WHERE oid = target) THEN
        RAISE EXCEPTION 'pgfeed.track: % is a partition of %; track %, which captures every partition under its name',
            target, pg_catalog.pg_partition_root(target), pg_catalog.pg_partition_root(target);
    END IF;
    exclude := COALESCE(exclude, '{}');
    SELECT string_agg(x, ', ') INTO missing
      FROM unnest(exclude) x
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = target AND a.attname = x AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pgfeed.track: % has no column %', target, missing;
    END IF;
    INSERT INTO pgfeed.tracked_tables (table_name, prefix, exclude, shape)
    VALUES (target, event_prefix, exclude, pgfeed.table_shape(target))
    ON CONFLICT (table_name) DO UPDATE
        SET prefix = excluded.prefix, exclude = excluded.exclude, shape = excluded.shape, tracked_at = now();
    PERFORM pgfeed.attach_capture(target, event_prefix, exclude);
END;
$$;

-- A partitioned table captures through its partitions' clones of the
-- trigger: its state is the worst of its own and every leaf's (a plain
-- table has no partition tree: its own).
CREATE OR REPLACE FUNCTION pgfeed.capture_state()
RETURNS TABLE (table_name text, prefix text, exclude text[], trigger_state text)
LANGUAGE sql STABLE AS $$
    SELECT pgfeed.table_label(t.table_name), t.prefix, t.exclude,
           (SELECT (ARRAY['enabled', 'origin_only', 'replica_only', 'disabled', 'missing'])[max(
                       CASE (SELECT g.tgenabled FROM pg_catalog.pg_trigger g
                              WHERE g.tgrelid = p.relid AND g.tgname = 'pgfeed_capture')
                           WHEN 'A' THEN 1 WHEN 'O' THEN 2 WHEN 'R' THEN 3 WHEN 'D' THEN 4 ELSE 5 END)]
              FROM (SELECT t.table_name AS relid
                    UNION
                    SELECT l.relid FROM pg_catalog.pg_partition_tree(t.table_name) l WHERE l.isleaf) p)
      FROM pgfeed.tracked_tables t
     WHERE pgfeed.table_label(t.table_name) IS NOT NULL
     ORDER BY 1;
$$;

-- As capture/0001, a table is found by a name it had when no tracked table has it now.
CREATE OR REPLACE FUNCTION pgfeed.snapshot(target text, OUT watermark bigint, OUT rows json)
RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    relation  regclass;
    left_out  text[];
BEGIN
    SELECT t.table_name, t.exclude INTO relation, left_out
      FROM pgfeed.tracked_tables t WHERE pgfeed.table_label(t.table_name) = target;
    IF relation IS NULL THEN
        SELECT t.table_name, t.exclude INTO relation, left_out
          FROM pgfeed.renames r JOIN pgfeed.tracked_tables t ON t.table_name::oid = r.table_name
         WHERE r."from" = target ORDER BY r.renamed_at DESC, r.tx DESC LIMIT 1;
    END IF;
    IF relation IS NULL THEN
        RETURN;
    END IF;
    watermark := pgfeed.head();
    EXECUTE format('SELECT COALESCE(jsonb_agg(to_jsonb(t) - $1 ORDER BY to_jsonb(t)->''id''), ''[]'')::json FROM %s t',
                   relation)
       INTO rows USING left_out;
    RETURN NEXT;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgfeed.snapshot(text) FROM PUBLIC;
