"""pgfeed's Python client against a real server and Postgres.

Run by tests/python.rs, which starts both and sets PGFEED_URL (the server's
/ws), DATABASE_URL (its database, with PEARL's tables tracked) and PGFEED_PSQL.
"""

import asyncio
import json
import random

import pgfeed

from conftest import URL, sql


async def next_events(feed, count, timeout=20):
    events = []

    async def take():
        async for event in feed:
            if event.get("type") in ("refresh_needed", "reset"):
                events.append(event)
                continue
            events.append(event)
            if len([e for e in events if "seq" in e and "table" in e]) >= count:
                return

    await asyncio.wait_for(take(), timeout)
    return events


def test_every_event_once_in_commit_order_across_dropped_connections():
    async def main():
        sql("CREATE TABLE IF NOT EXISTS py_notes (id serial PRIMARY KEY, n int NOT NULL);"
            "SELECT pgfeed.track('py_notes', 'py_note');")
        async with pgfeed.connect(URL, tables=["py_notes"]) as feed:
            async def write():
                for i in range(60):
                    sql(f"INSERT INTO py_notes (n) VALUES ({i}); UPDATE py_notes SET n = n WHERE n = {i};")
                    if i % 15 == 7:
                        await feed.drop()
                    await asyncio.sleep(random.random() * 0.01)

            writer = asyncio.create_task(write())
            events = await next_events(feed, 120)
            await writer
        rows = [e for e in events if e.get("table") == "py_notes"]
        seqs = [e["seq"] for e in rows]
        assert seqs == sorted(seqs), "commit order"
        keys = [(e["seq"], e["tx_index"]) for e in rows]
        assert len(keys) == len(set(keys)), "no duplicates"
        log = sql(
            "SELECT json_agg(json_build_array(c.seq, c.size) ORDER BY c.seq) FROM pgfeed.commits c "
            "JOIN pgfeed.events e USING (tx) WHERE e.table_name = 'py_notes' "
            f"AND c.seq BETWEEN {seqs[0]} AND {seqs[-1]}"
        )
        expected = {seq: size for seq, size in json.loads(log)}
        received = {}
        for e in rows:
            received[e["seq"]] = received.get(e["seq"], 0) + 1
        assert received == expected, "every transaction whole, none missing"
        assert [e["data"]["n"] for e in rows if e["op"] == "INSERT"] == list(range(60))

    asyncio.run(main())


def test_a_live_table_equals_the_table_after_writes_drops_and_a_reset():
    async def main():
        sql("CREATE TABLE IF NOT EXISTS py_gauges (id serial PRIMARY KEY, reading int);"
            "SELECT pgfeed.track('py_gauges', 'py_gauge');"
            "INSERT INTO py_gauges (reading) SELECT g FROM generate_series(1, 5) g;")
        async with pgfeed.connect(URL, tables=["py_gauges"]) as feed:
            gauges = await feed.live_table("py_gauges")
            changes = []
            gauges.on_change(lambda table: changes.append(len(table.rows)))
            for i in range(30):
                sql(f"INSERT INTO py_gauges (reading) VALUES ({i * 10});"
                    f"UPDATE py_gauges SET reading = reading + 1 WHERE id % 3 = {i % 3};"
                    f"DELETE FROM py_gauges WHERE id = (SELECT min(id) FROM py_gauges) AND {i} % 4 = 0;")
                if i % 10 == 5:
                    await feed.drop()
            # A marker row, then the table as SQL has it.
            marker = int(sql("INSERT INTO py_gauges (reading) VALUES (-1) RETURNING id"))

            async def settled():
                while gauges.get(marker) is None:
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(settled(), 20)
            table = json.loads(sql("SELECT json_agg(t ORDER BY id) FROM py_gauges t"))
            assert gauges.rows == table
            assert changes, "on_change was called"

            # A position the server cannot continue (as one from before a
            # reinstall): refresh_needed, then a reset after which the live
            # table is exact again.
            feed._position = {"whole": "1.deadbeef", "open": None, "skip": 0}
            await feed.drop()

            async def reset():
                async for event in feed:
                    if event.get("type") == "reset":
                        return event

            sql("INSERT INTO py_gauges (reading) VALUES (7)")
            event = await asyncio.wait_for(reset(), 40)
            assert event["reason"] in ("history_changed", "pruned")
            marker = int(sql("INSERT INTO py_gauges (reading) VALUES (-2) RETURNING id"))
            await asyncio.wait_for(settled(), 20)
            table = json.loads(sql("SELECT json_agg(t ORDER BY id) FROM py_gauges t"))
            assert gauges.rows == table
            gauges.close()

    asyncio.run(main())
