// pgfeed's browser client: an ES module, no build step.
//
//   import { connect } from "/client.js";
//   const feed = connect("ws://localhost:8000/ws", { tables: ["studies"] });
//   feed.on("study_*", (event) => console.log(event.seq, event.data));
//   feed.on("state", (state) => console.log(state)); // connecting, connected, reconnecting, offline
//   const studies = await feed.liveTable("studies"); // studies.rows, always current
//   studies.on("change", (table) => render(table.rows));
//
// It reconnects by itself (1, 2, 4, 8, 16, 30 s plus jitter) and resumes from
// where the delivered stream stands, with one `subscribe {…, after}` message
// naming its checked position: every event once, in commit order, none missed.
// When the server says that position cannot be continued (`refresh_needed`:
// another history after a reinstall, restore or failover; pruned; ahead), it
// re-reads the snapshots the application asked for and emits `reset` with
// them, then goes on from where the server does. While the socket is down it
// polls GET /api/v1/<table> every 30 s and hands the rows to `on("poll")`, so
// a view can stay roughly current.

const BACKOFF = [1, 2, 4, 8, 16, 30];

/** Opens a feed. See client.d.ts for the options and events. */
export function connect(url, options = {}) {
  return new Feed(url, options);
}

export class Feed {
  constructor(url, options = {}) {
    this.url = new URL(url, location.href);
    if (this.url.protocol === "http:") this.url.protocol = "ws:";
    if (this.url.protocol === "https:") this.url.protocol = "wss:";
    if (this.url.pathname === "/") this.url.pathname = "/ws";
    this.options = options;
    this.handlers = new Map();
    this.state = "connecting";
    /**
     * Where the delivered stream stands: `whole`, the checked position after
     * which nothing is missing; `open`, the transaction being delivered (its
     * seq, its position, how many of its events were delivered); `skip`, how
     * many of the open transaction's events a resume brings again.
     */
    this.position = { whole: options.after ?? null, open: null, skip: 0 };
    /** The tables whose snapshot the application asked for: re-read on `refresh_needed`. */
    this.snapshots = new Set();
    this.failures = 0;
    this.pending = new Map(); // snapshot table -> [resolve, reject]
    this.closed = false;
    this.#open();
  }

  /** Calls `fn` for events of `pattern`: a type, a prefix ending in `*`, `*`, or `state`/`poll`/`error`. Returns a function that stops it. */
  on(pattern, fn) {
    if (!this.handlers.has(pattern)) this.handlers.set(pattern, new Set());
    this.handlers.get(pattern).add(fn);
    return () => this.handlers.get(pattern).delete(fn);
  }

  /** The rows of `table` and the seq they reflect; events after it follow (exact handoff). */
  snapshot(table) {
    this.snapshots.add(table);
    return new Promise((resolve, reject) => {
      // One request per table at a time; every caller gets its answer.
      const waiting = this.pending.get(table);
      if (waiting) return waiting.push([resolve, reject]);
      this.pending.set(table, [[resolve, reject]]);
      this.#send({ action: "snapshot", table });
    });
  }

  /**
   * The rows of `table` kept current: an exact snapshot, then every event after
   * it, in order, across reconnects; read again after `refresh_needed` and after
   * a schema change. `key`: the primary key column (`id`); `where`: only rows
   * whose fields match (`{study_id: [1, 2]}`, the server's rule: "7" matches 7).
   */
  async liveTable(table, { key = "id", where } = {}) {
    const live = new LiveTable(this, table, key, where);
    await live.ready;
    return live;
  }

  /** The checked position after which every event was delivered (what a resume names). */
  get resumePosition() {
    return this.position.whole;
  }

  /** Reconnects now (the badge's button). */
  reconnect() {
    this.failures = 0;
    clearTimeout(this.retry);
    if (this.socket && this.socket.readyState <= 1) this.socket.close();
    else this.#open();
  }

  /** Drops the connection as a network failure would; the feed reconnects and resumes. */
  drop() {
    if (this.socket) this.socket.close(4000, "dropped by the client");
  }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.poller);
    if (this.socket) this.socket.close(1000, "closed by the client");
  }

  #emit(pattern, value) {
    for (const fn of this.handlers.get(pattern) ?? []) {
      try { fn(value); } catch (err) { console.error("pgfeed handler", err); }
    }
  }

  #dispatch(event) {
    this.#emit(event.type, event);
    for (const [pattern, fns] of this.handlers) {
      if (pattern.endsWith("*") && pattern !== "*" && event.type.startsWith(pattern.slice(0, -1))) {
        for (const fn of fns) { try { fn(event); } catch (err) { console.error(err); } }
      }
    }
    this.#emit("*", event);
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.#emit("state", state);
  }

  #send(message) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(message));
  }

  #open() {
    if (this.closed) return;
    const url = new URL(this.url);
    if (this.options.token) url.searchParams.set("token", this.options.token);
    this.#setState(this.failures === 0 && this.position.whole === null ? "connecting" : this.state);
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onmessage = (message) => this.#onMessage(JSON.parse(message.data));
    socket.onclose = () => {
      if (this.socket !== socket || this.closed) return;
      this.failures += 1;
      this.#setState(this.failures > 3 || navigator.onLine === false ? "offline" : "reconnecting");
      this.#startPolling();
      const base = BACKOFF[Math.min(this.failures - 1, BACKOFF.length - 1)];
      this.retry = setTimeout(() => this.#open(), base * 1000 * (1 + Math.random() * 0.2));
    };
  }

  #onMessage(message) {
    switch (message.type) {
      case "connected": {
        // Snapshots asked for on the lost connection are asked again below.
        const unanswered = [...this.pending.keys()];
        // Subscribe and resume in one message: no live event comes before the replay.
        const subscription = { action: "subscribe" };
        for (const key of ["tables", "types", "where"]) {
          if (this.options[key]) subscription[key] = this.options[key];
        }
        const { whole, open } = this.position;
        if (whole !== null) subscription.after = whole;
        // What of the open transaction was delivered comes again: dropped.
        this.position.skip = open ? open.delivered : 0;
        this.#send(subscription);
        for (const table of unanswered) this.#send({ action: "snapshot", table });
        return;
      }
      case "subscribed":
        if (this.position.whole === null) this.position.whole = message.position ?? message.seq;
        this.#live();
        return;
      case "resumed":
        this.#live();
        return;
      case "snapshot": {
        const waiting = this.pending.get(message.table) ?? [];
        this.pending.delete(message.table);
        for (const [resolve] of waiting) resolve({ rows: message.rows, seq: message.seq, position: message.position });
        return;
      }
      case "pong":
        return;
      case "error": {
        for (const [table, waiting] of this.pending) {
          if (message.code === "not_found" || message.code === "forbidden") {
            for (const [, reject] of waiting) reject(new Error(message.message));
            this.pending.delete(table);
          }
        }
        this.#emit("error", message);
        return;
      }
      case "refresh_needed":
        this.#recover(message);
        return;
    }
    if (message.seq === undefined || message.table === undefined) return;
    if (this.#seen(message)) return;
    this.#dispatch(message);
  }

  /** Notes an event in the delivered stream; true when it was delivered already. */
  #seen(event) {
    const position = this.position;
    const open = position.open;
    if (open && open.seq === event.seq) {
      if (position.skip > 0) {
        position.skip -= 1;
        return true;
      }
      open.delivered += 1;
    } else {
      // A new transaction: the one before it is done (what of it is missing was filtered out).
      if (open) position.whole = open.position ?? open.seq;
      position.open = { seq: event.seq, position: event.position, delivered: 1 };
      position.skip = 0;
    }
    if (event.tx_index + 1 === event.tx_size) {
      position.whole = event.position ?? event.seq;
      position.open = null;
    }
    return false;
  }

  /**
   * The server cannot continue from where the stream stood: it goes on after
   * `message.position`. The application's snapshots are read again and handed
   * over with `reset`, so what it shows is exact again.
   */
  async #recover(message) {
    this.#emit("refresh_needed", message);
    this.position = { whole: message.position ?? message.seq, open: null, skip: 0 };
    const snapshots = {};
    for (const table of this.snapshots) {
      try {
        snapshots[table] = await this.snapshot(table);
      } catch (err) {
        console.warn("pgfeed: re-reading", table, err);
      }
    }
    this.#emit("reset", { reason: message.reason, position: this.position.whole, snapshots });
  }

  #live() {
    this.failures = 0;
    clearInterval(this.poller);
    this.poller = undefined;
    this.#setState("connected");
  }

  #startPolling() {
    if (this.poller || !this.options.tables) return;
    const base = new URL(this.url);
    base.protocol = base.protocol === "wss:" ? "https:" : "http:";
    const poll = async () => {
      for (const table of this.options.tables) {
        try {
          const headers = this.options.token ? { Authorization: `Bearer ${this.options.token}` } : {};
          const response = await fetch(new URL(`/api/v1/${table}`, base), { headers });
          if (response.ok) this.#emit("poll", await response.json());
        } catch (_) {
          // The server is down; the next poll tries again.
        }
      }
    };
    this.poller = setInterval(poll, this.options.poll ?? 30000);
  }
}

/** The same rule as the server's: equal JSON, or a number and the string of its JSON text. */
function same(a, b) {
  if (typeof a === "number" && typeof b === "string") return String(a) === b;
  if (typeof a === "string" && typeof b === "number") return a === String(b);
  return JSON.stringify(a) === JSON.stringify(b);
}

function matches(where, row) {
  if (!where) return true;
  return Object.entries(where).every(([field, wanted]) =>
    row && field in row && (Array.isArray(wanted) ? wanted.some((w) => same(w, row[field])) : same(wanted, row[field])));
}

/** A table kept current from a feed (`feed.liveTable`). */
export class LiveTable {
  constructor(feed, table, key, where) {
    this.table = table;
    this.key = key;
    this.where = where;
    /** The seq the rows reflect; null while they are being read. */
    this.seq = null;
    this.map = new Map();
    this.handlers = new Set();
    this.feed = feed;
    this.stops = [
      feed.on("*", (event) => this.#apply(event)),
      // Another history, or a gap: the rows are read again; events wait for them.
      feed.on("refresh_needed", () => this.#reload()),
    ];
    this.ready = this.#reload();
  }

  /** The current rows, ordered by key. */
  get rows() {
    return [...this.map.values()].sort((a, b) => (a[this.key] < b[this.key] ? -1 : a[this.key] > b[this.key] ? 1 : 0));
  }

  get(id) {
    return this.map.get(id);
  }

  /** Calls `fn(table)` after every change (`"change"`); returns a function that stops it. */
  on(kind, fn) {
    if (kind !== "change") throw new Error(`LiveTable has only "change" events, not ${kind}`);
    this.handlers.add(fn);
    return () => this.handlers.delete(fn);
  }

  close() {
    for (const stop of this.stops) stop();
    this.handlers.clear();
  }

  async #reload() {
    this.seq = null;
    const { rows, seq } = await this.feed.snapshot(this.table);
    this.map = new Map(rows.filter((row) => matches(this.where, row)).map((row) => [row[this.key], row]));
    this.seq = seq;
    this.#changed();
    return this;
  }

  #apply(event) {
    // Events before the snapshot's answer are in it.
    if (this.seq === null || event.derived || event.table !== this.table) return;
    if (event.op === "SCHEMA") {
      this.#reload();
      return;
    }
    if (event.op === "TRUNCATE") this.map.clear();
    else if (event.op === "DELETE") this.map.delete(event.data[this.key]);
    else if (event.op === "INSERT" || event.op === "UPDATE") {
      if (matches(this.where, event.data)) this.map.set(event.data[this.key], event.data);
      else this.map.delete(event.data[this.key]); // moved out of `where`
    } else return;
    this.#changed();
  }

  #changed() {
    for (const fn of this.handlers) {
      try { fn(this); } catch (err) { console.error("pgfeed liveTable handler", err); }
    }
  }
}
