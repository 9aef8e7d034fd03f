-- A dropped tracked table is untracked, in the same transaction (issue 26).
--
-- `pgfeed.tracked_tables` names tables by regclass. A tracked table that was
-- dropped left its row behind with a name that no longer resolves:
-- `pgfeed.tracked` listed a null table name, and every read of it (GET
-- /api/v1, `pgfeed uninstall`) failed on the null. An event trigger on
-- `sql_drop` now removes the row of a dropped table in the dropping
-- transaction (its logged events stay replayable until pruned), and the view
-- never shows a row whose table is gone (rows left by earlier drops, or where
-- the event trigger could not be created).
--
-- Creating an event trigger takes a superuser. Installed by another role,
-- pgfeed goes without it and says so; the view still hides dropped tables.

CREATE FUNCTION pgfeed.forget_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM pgfeed.tracked_tables t
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
       AND d.objid = t.table_name::oid;
END;
$$;

DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        CREATE EVENT TRIGGER pgfeed_forget_dropped ON sql_drop
            EXECUTE FUNCTION pgfeed.forget_dropped();
    ELSE
        RAISE NOTICE 'pgfeed: installed without a superuser, so without the event trigger that untracks a dropped table (pgfeed.tracked hides such tables all the same)';
    END IF;
END;
$$;

-- Tables dropped before this migration.
DELETE FROM pgfeed.tracked_tables t
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.table_name::oid);

CREATE OR REPLACE VIEW pgfeed.tracked AS
    SELECT pgfeed.table_label(table_name) AS table_name, prefix, exclude, tracked_at
      FROM pgfeed.tracked_tables
     WHERE pgfeed.table_label(table_name) IS NOT NULL
     ORDER BY 1;
