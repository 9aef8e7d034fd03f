-- Capture that is off is visible, and replica-role writers are captured (issue 26).
--
-- `ALTER TABLE … DISABLE TRIGGER`, or a session under
-- `session_replication_role = replica` (logical replication's apply, bulk
-- loads that set it), wrote rows that never reached the feed, and nothing
-- said so.
--
-- Decided: the capture triggers fire ALWAYS, in replica mode too. The rows
-- did change in this database, and clients watching it must see them; a
-- logical-replication subscriber of the application tables then feeds its own
-- pgfeed. (`pg_restore --disable-triggers` still turns them off: it disables
-- every trigger by name, and the restored log holds what the dump held.)
-- What remains off (disabled, missing) is listed by pgfeed.capture_state(),
-- which `pgfeed status`, GET /api/v1/status, /readyz and /metrics read.

-- Whether each tracked table's capture trigger fires: `enabled` (also in
-- replica mode), `origin_only` (not in replica mode), `replica_only`,
-- `disabled`, or `missing`.
CREATE FUNCTION pgfeed.capture_state()
RETURNS TABLE (table_name text, prefix text, exclude text[], trigger_state text)
LANGUAGE sql STABLE AS $$
    SELECT pgfeed.table_label(t.table_name), t.prefix, t.exclude,
           CASE (SELECT g.tgenabled FROM pg_catalog.pg_trigger g
                  WHERE g.tgrelid = t.table_name AND g.tgname = 'pgfeed_capture')
               WHEN 'A' THEN 'enabled'
               WHEN 'O' THEN 'origin_only'
               WHEN 'R' THEN 'replica_only'
               WHEN 'D' THEN 'disabled'
               ELSE 'missing'
           END
      FROM pgfeed.tracked_tables t
     WHERE pgfeed.table_label(t.table_name) IS NOT NULL
     ORDER BY 1;
$$;

-- As capture/0001, with the triggers firing always.
CREATE OR REPLACE FUNCTION pgfeed.track(target regclass, event_prefix text, exclude text[] DEFAULT '{}')
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
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER pgfeed_capture, ENABLE ALWAYS TRIGGER pgfeed_capture_truncate', target);
    INSERT INTO pgfeed.tracked_tables (table_name, prefix, exclude) VALUES (target, event_prefix, exclude)
    ON CONFLICT (table_name) DO UPDATE
        SET prefix = excluded.prefix, exclude = excluded.exclude, tracked_at = now();
END;
$$;

-- The tables tracked already fire always too (an enabled trigger only: one a
-- DBA disabled stays as the DBA left it).
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT g.tgrelid::regclass FROM pg_catalog.pg_trigger g
              JOIN pgfeed.tracked_tables k ON k.table_name = g.tgrelid
             WHERE g.tgname = 'pgfeed_capture' AND g.tgenabled = 'O'
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER pgfeed_capture, ENABLE ALWAYS TRIGGER pgfeed_capture_truncate', t);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgfeed: % is captured only outside replica mode until its owner runs pgfeed.track on it again', t;
        END;
    END LOOP;
END;
$$;
