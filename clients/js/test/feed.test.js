// pgfeed's JavaScript client in Node against a real server and Postgres.
// Run by tests/js.rs, which starts both and sets PGFEED_URL (the server's /ws),
// DATABASE_URL and PGFEED_PSQL.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import WebSocket from "ws";

import { connect } from "../dist/index.js";

const URL = process.env.PGFEED_URL;
const DATABASE_URL = process.env.DATABASE_URL;
const PSQL = process.env.PGFEED_PSQL ?? "psql";

/** Runs SQL as any writer would (psql); returns its unaligned output. */
function sql(text) {
  return execFileSync(PSQL, [DATABASE_URL, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", text], {
    encoding: "utf8",
  }).trim();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check, what, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} never happened`);
    await sleep(20);
  }
}

test("every event once, in commit order, across dropped connections", async () => {
  sql("CREATE TABLE IF NOT EXISTS js_notes (id serial PRIMARY KEY, n int NOT NULL); SELECT pgfeed.track('js_notes', 'js_note');");
  const feed = connect(URL, { tables: ["js_notes"], WebSocket });
  const events = [];
  feed.on("*", (event) => events.push(event));
  await until(() => feed.state === "connected", "connecting");
  for (let i = 0; i < 60; i++) {
    sql(`INSERT INTO js_notes (n) VALUES (${i}); UPDATE js_notes SET n = n WHERE n = ${i};`);
    if (i % 15 === 7) feed.drop();
  }
  await until(() => events.filter((e) => e.op === "INSERT").length >= 60 && feed.state === "connected", "every insert");
  await sleep(200);
  feed.close();
  const seqs = events.map((e) => e.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "commit order");
  const keys = new Set(events.map((e) => `${e.seq}.${e.tx_index}`));
  assert.equal(keys.size, events.length, "no duplicates");
  const log = JSON.parse(
    sql(`SELECT json_object_agg(c.seq, c.size) FROM pgfeed.commits c JOIN pgfeed.events e USING (tx)
          WHERE e.table_name = 'js_notes' AND c.seq BETWEEN ${seqs[0]} AND ${seqs.at(-1)}`),
  );
  const received = {};
  for (const e of events) received[e.seq] = (received[e.seq] ?? 0) + 1;
  assert.deepEqual(received, Object.fromEntries(Object.entries(log).map(([k, v]) => [k, v])), "every transaction whole");
  assert.deepEqual(events.filter((e) => e.op === "INSERT").map((e) => e.data.n), [...Array(60).keys()]);
});

test("a live table equals the table after writes, drops and a reset", async () => {
  sql(`CREATE TABLE IF NOT EXISTS js_gauges (id serial PRIMARY KEY, reading int);
       SELECT pgfeed.track('js_gauges', 'js_gauge');
       INSERT INTO js_gauges (reading) SELECT g FROM generate_series(1, 5) g;`);
  const feed = connect(URL, { tables: ["js_gauges"], WebSocket });
  const gauges = await feed.liveTable("js_gauges");
  let changes = 0;
  gauges.on("change", () => (changes += 1));
  for (let i = 0; i < 30; i++) {
    sql(`INSERT INTO js_gauges (reading) VALUES (${i * 10});
         UPDATE js_gauges SET reading = reading + 1 WHERE id % 3 = ${i % 3};
         DELETE FROM js_gauges WHERE id = (SELECT min(id) FROM js_gauges) AND ${i} % 4 = 0;`);
    if (i % 10 === 5) feed.drop();
  }
  const table = () => JSON.parse(sql("SELECT json_agg(t ORDER BY id) FROM js_gauges t"));
  let marker = Number(sql("INSERT INTO js_gauges (reading) VALUES (-1) RETURNING id"));
  await until(() => gauges.get(marker) !== undefined, "the marker");
  assert.deepEqual(gauges.rows, table());
  assert.ok(changes > 0, "change handlers ran");

  // A position the server cannot continue (as one from before a reinstall):
  // refresh_needed, then the live table is read again and exact.
  let reset = null;
  feed.on("reset", (r) => (reset = r));
  feed.position = { whole: "1.deadbeef", open: null, skip: 0 };
  feed.drop();
  sql("INSERT INTO js_gauges (reading) VALUES (7)");
  await until(() => reset !== null, "a reset");
  assert.ok(["history_changed", "pruned"].includes(reset.reason), reset.reason);
  marker = Number(sql("INSERT INTO js_gauges (reading) VALUES (-2) RETURNING id"));
  await until(() => gauges.get(marker) !== undefined, "the second marker");
  assert.deepEqual(gauges.rows, table());
  gauges.close();
  feed.close();
});
