-- Event names of a table's own (issue 27).
--
-- A table's events were always <prefix>_created, _updated, _deleted,
-- _truncated and _schema_changed. An application whose clients expect other
-- names (HyCON's `equipment_update` for every change of its equipment table)
-- names them here: `event_names` maps an operation's verb (`created`,
-- `updated`, `deleted`, `truncated`, `schema_changed`) to the name its events
-- carry, one name serving several verbs if wanted; a verb left out keeps
-- <prefix>_<verb>. The servers apply names as they encode events: a change
-- reaches them at once (a notification on channel `pgfeed`, `{"tracked":
-- true}`), and events encoded from then on carry the new names.

ALTER TABLE pgfeed.tracked_tables
    ADD COLUMN event_names jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(event_names) = 'object');

CREATE OR REPLACE VIEW pgfeed.tracked AS
    SELECT pgfeed.table_label(table_name) AS table_name, prefix, exclude, tracked_at, event_names
      FROM pgfeed.tracked_tables
     WHERE pgfeed.table_label(table_name) IS NOT NULL
     ORDER BY 1;

-- Names the events of tracked table `target`: `names` maps verbs to names,
-- e.g. '{"created": "equipment_update", "updated": "equipment_update"}'.
-- An empty object restores <prefix>_<verb>.
CREATE FUNCTION pgfeed.name_events(target regclass, names jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    wrong  text;
BEGIN
    IF names IS NULL OR jsonb_typeof(names) <> 'object' THEN
        RAISE EXCEPTION 'pgfeed.name_events: names must be a JSON object like {"created": "equipment_update"}';
    END IF;
    SELECT string_agg(key, ', ') INTO wrong FROM jsonb_each(names)
     WHERE key NOT IN ('created', 'updated', 'deleted', 'truncated', 'schema_changed');
    IF wrong IS NOT NULL THEN
        RAISE EXCEPTION 'pgfeed.name_events: % is not an operation (created, updated, deleted, truncated, schema_changed)', wrong;
    END IF;
    SELECT string_agg(value::text, ', ') INTO wrong FROM jsonb_each(names)
     WHERE jsonb_typeof(value) <> 'string' OR value #>> '{}' !~ '^[A-Za-z][A-Za-z0-9_.:-]{0,62}$';
    IF wrong IS NOT NULL THEN
        RAISE EXCEPTION 'pgfeed.name_events: % is not an event name (a letter, then letters, digits, _ . : -)', wrong;
    END IF;
    UPDATE pgfeed.tracked_tables SET event_names = names WHERE table_name = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgfeed.name_events: % is not tracked', target;
    END IF;
    PERFORM pg_notify('pgfeed', '{"tracked":true}');
END;
$$;
