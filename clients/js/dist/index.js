const BACKOFF = [1, 2, 4, 8, 16, 30];
function connect(url, options = {}) {
  return new Feed(url, options);
}
class Feed {
  url;
  options;
  state = "connecting";
  /**
   * Where the delivered stream stands: `whole`, the checked position after
   * which nothing is missing; `open`, the transaction being delivered (its
   * seq, its position, how many of its events were delivered); `skip`, how
   * many of the open transaction's events a resume brings again.
   */
  position;
  /** The tables whose snapshot the application asked for: re-read on `refresh_needed`. */
  snapshots = /* @__PURE__ */ new Set();
  handlers = /* @__PURE__ */ new Map();
  failures = 0;
  pending = /* @__PURE__ */ new Map();
  closed = false;
  socket;
  retry;
  poller;
  constructor(url, options = {}) {
    const base = typeof location === "undefined" ? void 0 : location.href;
    this.url = new URL(url, base);
    if (this.url.protocol === "http:") this.url.protocol = "ws:";
    if (this.url.protocol === "https:") this.url.protocol = "wss:";
    if (this.url.pathname === "/") this.url.pathname = "/ws";
    this.options = options;
    this.position = { whole: options.after ?? null, open: null, skip: 0 };
    this.open();
  }
  on(pattern, fn) {
    if (!this.handlers.has(pattern)) this.handlers.set(pattern, /* @__PURE__ */ new Set());
    this.handlers.get(pattern).add(fn);
    return () => {
      this.handlers.get(pattern)?.delete(fn);
    };
  }
  /** The rows of `table` and the seq they reflect; events after it follow (exact handoff). */
  snapshot(table) {
    this.snapshots.add(table);
    return new Promise((resolve, reject) => {
      const waiting = this.pending.get(table);
      const entry = [resolve, reject];
      if (waiting) {
        waiting.push(entry);
        return;
      }
      this.pending.set(table, [entry]);
      this.send({ action: "snapshot", table });
    });
  }
  /**
   * The rows of `table` kept current: an exact snapshot, then every event after
   * it, in order, across reconnects; read again after `refresh_needed` and after
   * a schema change.
   */
  async liveTable(table, options = {}) {
    const live = new LiveTable(this, table, options.key ?? "id", options.where);
    await live.ready;
    return live;
  }
  /** The checked position after which every event was delivered (what a resume names). */
  get resumePosition() {
    return this.position.whole;
  }
  /** Reconnects now. */
  reconnect() {
    this.failures = 0;
    clearTimeout(this.retry);
    if (this.socket && this.socket.readyState <= 1) this.socket.close();
    else this.open();
  }
  /** Drops the connection as a network failure would; the feed reconnects and resumes. */
  drop() {
    if (this.socket) this.socket.close(4e3, "dropped by the client");
  }
  close() {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.poller);
    if (this.socket) this.socket.close(1e3, "closed by the client");
  }
  emit(pattern, value) {
    for (const fn of this.handlers.get(pattern) ?? []) {
      try {
        fn(value);
      } catch (err) {
        console.error("pgfeed handler", err);
      }
    }
  }
  dispatch(event) {
    this.emit(event.type, event);
    for (const [pattern, fns] of this.handlers) {
      if (pattern.endsWith("*") && pattern !== "*" && event.type.startsWith(pattern.slice(0, -1))) {
        for (const fn of fns) {
          try {
            fn(event);
          } catch (err) {
            console.error(err);
          }
        }
      }
    }
    this.emit("*", event);
  }
  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }
  send(message) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(message));
  }
  open() {
    if (this.closed) return;
    const url = new URL(this.url);
    if (this.options.token) url.searchParams.set("token", this.options.token);
    this.setState(this.failures === 0 && this.position.whole === null ? "connecting" : this.state);
    const Socket = this.options.WebSocket ?? globalThis.WebSocket;
    if (!Socket) throw new Error("pgfeed: no WebSocket here; pass options.WebSocket (in Node: the ws package's)");
    const socket = new Socket(url.toString());
    this.socket = socket;
    socket.onmessage = (message) => this.onMessage(JSON.parse(String(message.data)));
    socket.onclose = () => {
      if (this.socket !== socket || this.closed) return;
      this.failures += 1;
      const offline = typeof navigator !== "undefined" && navigator.onLine === false;
      this.setState(this.failures > 3 || offline ? "offline" : "reconnecting");
      this.startPolling();
      const base = BACKOFF[Math.min(this.failures - 1, BACKOFF.length - 1)];
      this.retry = setTimeout(() => this.open(), base * 1e3 * (1 + Math.random() * 0.2));
    };
  }
  onMessage(message) {
    switch (message.type) {
      case "connected": {
        const unanswered = [...this.pending.keys()];
        const subscription = { action: "subscribe" };
        for (const key of ["tables", "types", "where"]) {
          if (this.options[key]) subscription[key] = this.options[key];
        }
        const { whole, open } = this.position;
        if (whole !== null) subscription.after = whole;
        this.position.skip = open ? open.delivered : 0;
        this.send(subscription);
        for (const table of unanswered) this.send({ action: "snapshot", table });
        return;
      }
      case "subscribed":
        if (this.position.whole === null) this.position.whole = message.position ?? message.seq;
        this.live();
        return;
      case "resumed":
        this.live();
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
          if (message.code === "not_found" || message.code === "forbidden" || message.code === "unavailable") {
            for (const [, reject] of waiting) reject(new Error(message.message));
            this.pending.delete(table);
          }
        }
        this.emit("error", message);
        return;
      }
      case "refresh_needed":
        void this.recover(message);
        return;
    }
    if (message.seq === void 0 || message.table === void 0) return;
    const event = message;
    if (this.seen(event)) return;
    this.dispatch(event);
  }
  /** Notes an event in the delivered stream; true when it was delivered already. */
  seen(event) {
    const position = this.position;
    const open = position.open;
    if (open && open.seq === event.seq) {
      if (position.skip > 0) {
        position.skip -= 1;
        return true;
      }
      open.delivered += 1;
    } else {
      if (open) position.whole = open.position;
      position.open = { seq: event.seq, position: event.position ?? event.seq, delivered: 1 };
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
  async recover(message) {
    this.emit("refresh_needed", message);
    this.position = { whole: message.position ?? message.seq, open: null, skip: 0 };
    const snapshots = {};
    for (const table of this.snapshots) {
      try {
        snapshots[table] = await this.snapshot(table);
      } catch (err) {
        console.warn("pgfeed: re-reading", table, err);
      }
    }
    this.emit("reset", { reason: message.reason, position: this.position.whole, snapshots });
  }
  live() {
    this.failures = 0;
    clearInterval(this.poller);
    this.poller = void 0;
    this.setState("connected");
  }
  startPolling() {
    if (this.poller || !this.options.tables) return;
    const base = new URL(this.url);
    base.protocol = base.protocol === "wss:" ? "https:" : "http:";
    const tables = this.options.tables;
    const poll = async () => {
      for (const table of tables) {
        try {
          const headers = this.options.token ? { Authorization: `Bearer ${this.options.token}` } : {};
          const response = await fetch(new URL(`/api/v1/${table}`, base), { headers });
          if (response.ok) this.emit("poll", await response.json());
        } catch (_) {
        }
      }
    };
    this.poller = setInterval(poll, this.options.poll ?? 3e4);
  }
}
function same(a, b) {
  if (typeof a === "number" && typeof b === "string") return String(a) === b;
  if (typeof a === "string" && typeof b === "number") return a === String(b);
  return JSON.stringify(a) === JSON.stringify(b);
}
function matches(where, row) {
  if (!where) return true;
  return Object.entries(where).every(
    ([field, wanted]) => row != null && field in row && (Array.isArray(wanted) ? wanted.some((w) => same(w, row[field])) : same(wanted, row[field]))
  );
}
class LiveTable {
  table;
  key;
  where;
  /** The seq the rows reflect; null while they are being read. */
  seq = null;
  /** Resolves once the first snapshot is in. */
  ready;
  map = /* @__PURE__ */ new Map();
  loadedOnce = false;
  handlers = /* @__PURE__ */ new Set();
  feed;
  stops;
  constructor(feed, table, key, where) {
    this.feed = feed;
    this.table = table;
    this.key = key;
    this.where = where;
    this.stops = [
      feed.on("*", (event) => this.apply(event)),
      // Another history, or a gap: the rows are read again; events wait for them.
      feed.on("refresh_needed", () => void this.reload())
    ];
    this.ready = this.reload();
  }
  /** The current rows, ordered by key. */
  get rows() {
    const key = this.key;
    return [...this.map.values()].sort((a, b) => a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0);
  }
  get(id) {
    return this.map.get(id);
  }
  /** Calls `fn(table)` after every change; returns a function that stops it. */
  on(kind, fn) {
    if (kind !== "change") throw new Error(`LiveTable has only "change" events, not ${kind}`);
    this.handlers.add(fn);
    return () => {
      this.handlers.delete(fn);
    };
  }
  close() {
    for (const stop of this.stops) stop();
    this.handlers.clear();
  }
  async reload() {
    this.seq = null;
    let snapshot;
    try {
      snapshot = await this.feed.snapshot(this.table);
    } catch (err) {
      if (!this.loadedOnce) throw err;
      await new Promise((resolve) => setTimeout(resolve, 1e3));
      return this.reload();
    }
    const { rows, seq } = snapshot;
    this.loadedOnce = true;
    this.map = new Map(rows.filter((row) => matches(this.where, row)).map((row) => [row[this.key], row]));
    this.seq = seq;
    this.changed();
    return this;
  }
  apply(event) {
    if (this.seq === null || event.derived || event.table !== this.table) return;
    const row = event.data;
    if (event.op === "SCHEMA") {
      void this.reload();
      return;
    }
    if (event.op === "TRUNCATE") this.map.clear();
    else if (event.op === "DELETE") this.map.delete(row[this.key]);
    else if (event.op === "INSERT" || event.op === "UPDATE") {
      if (matches(this.where, row)) this.map.set(row[this.key], row);
      else this.map.delete(row[this.key]);
    } else return;
    this.changed();
  }
  changed() {
    for (const fn of this.handlers) {
      try {
        fn(this);
      } catch (err) {
        console.error("pgfeed liveTable handler", err);
      }
    }
  }
}
export {
  Feed,
  LiveTable,
  connect
};
