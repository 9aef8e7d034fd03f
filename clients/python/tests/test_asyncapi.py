"""The server's /asyncapi.json, checked with a real JSON Schema validator: every
message payload is a valid schema, and the events the server sends validate
against the messages it names for them (run by tests/python.rs)."""

import asyncio
import json
import urllib.request

import jsonschema

import pgfeed

from conftest import URL, sql

HTTP = URL.replace("ws://", "http://", 1).rsplit("/ws", 1)[0]


def document():
    with urllib.request.urlopen(HTTP + "/asyncapi.json") as response:
        return json.load(response)


def validator(doc, message_id):
    schema = {"$ref": f"#/components/messages/{message_id}/payload", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def messages_for(doc, table):
    found = {}
    for message_id, message in doc["components"]["messages"].items():
        properties = message.get("payload", {}).get("properties", {})
        if properties.get("table", {}).get("const") == table:
            found[properties["type"]["const"]] = message_id
    return found


def test_the_document_names_each_tables_events_with_the_rows_schema():
    sql(
        "CREATE TABLE IF NOT EXISTS py_instruments (id serial PRIMARY KEY, name text NOT NULL, "
        "serial_key text, weight numeric, active boolean NOT NULL DEFAULT true, "
        "tags text[], settings jsonb, seen_at timestamptz, born date);"
        "SELECT pgfeed.track('py_instruments', 'instrument', ARRAY['serial_key']);"
        "SELECT pgfeed.name_events('py_instruments', '{\"updated\": \"instrument_update\"}');"
    )
    doc = document()
    for message_id, message in doc["components"]["messages"].items():
        if "payload" in message:
            jsonschema.Draft202012Validator.check_schema(message["payload"])
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            assert ref["$ref"].split("/")[-1] in doc["components"]["messages"], ref
    named = messages_for(doc, "py_instruments")
    assert set(named) == {"instrument_created", "instrument_update", "instrument_deleted",
                          "instrument_truncated", "instrument_schema_changed"}
    row = doc["components"]["messages"][named["instrument_created"]]["payload"]["properties"]["data"]
    assert "serial_key" not in row["properties"], "excluded columns are absent"
    assert row["properties"]["id"]["type"] == "integer"
    assert row["properties"]["active"]["type"] == "boolean"
    before = doc

    async def main():
        async with pgfeed.connect(URL, tables=["py_instruments"]) as feed:
            sql(
                "INSERT INTO py_instruments (name, weight, tags, settings, seen_at, born) "
                "VALUES ('scale', 1.5, ARRAY['a','b'], '{\"x\": 1}', now(), '2020-01-02'), ('pipette', NULL, NULL, NULL, NULL, NULL);"
                "UPDATE py_instruments SET active = false WHERE name = 'scale';"
                "DELETE FROM py_instruments WHERE name = 'pipette';"
                "ALTER TABLE py_instruments ADD COLUMN notes text;"
                "INSERT INTO py_instruments (name, notes) VALUES ('centrifuge', 'n');"
            )
            events = []

            async def take():
                async for event in feed:
                    events.append(event)
                    if event.get("data", {}).get("name") == "centrifuge":
                        return

            await asyncio.wait_for(take(), 20)
        return events

    events = asyncio.run(main())
    kinds = [e["type"] for e in events]
    assert kinds == ["instrument_created", "instrument_created", "instrument_update",
                     "instrument_deleted", "instrument_schema_changed", "instrument_created"], kinds
    # Rows before the schema change validate against the document as it was;
    # the document follows the change, and the row after it validates against that.
    change = kinds.index("instrument_schema_changed")
    for event in events[:change]:
        validator(before, named[event["type"]]).validate(event)
    doc = document()
    named = messages_for(doc, "py_instruments")
    for event in events[change:]:
        validator(doc, named[event["type"]]).validate(event)
    assert "notes" in doc["components"]["messages"][named["instrument_created"]]["payload"]["properties"]["data"]["properties"]
    # And an invalid event is refused by the same schema.
    wrong = dict(events[0], data=dict(events[0]["data"], id="not a number"))
    assert list(validator(doc, named["instrument_created"]).iter_errors(wrong))
    # Untracked: gone from the document.
    sql("SELECT pgfeed.untrack('py_instruments')")
    assert messages_for(document(), "py_instruments") == {}
