// pgfeed's browser client: an ES module, no build step.
//
//   import { connect } from "/client.js";
//   const feed = connect("ws://localhost:8000/ws", { tables: ["studies"] });
//   feed.on("study_*", (event) => console.log(event.seq, event.data));
//   feed.on("state", (state) => console.log(state)); // connecting, connected, reconnecting, offline
//
// It reconnects by itself (1, 2, 4, 8, 16, 30 s plus jitter) and resumes from
// where the delivered stream stands: every event once, in commit order, none
// missed. While the socket is down it polls GET /api/v1/<table> every 30 s and
// hands the rows to `on("poll")`, so a view can stay roughly current.

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
    /** The seq of the last event delivered, and how many events of it were. */
    this.position = { seq: options.after ?? null, delivered: 0, skip: 0 };
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
    return new Promise((resolve, reject) => {
      this.pending.set(table, [resolve, reject]);
      this.#send({ action: "snapshot", table });
    });
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
    this.#setState(this.failures === 0 && this.position.seq === null ? "connecting" : this.state);
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
        const subscription = { action: "subscribe" };
        for (const key of ["tables", "types", "where"]) {
          if (this.options[key]) subscription[key] = this.options[key];
        }
        this.#send(subscription);
        return;
      }
      case "subscribed": {
        const { seq, delivered } = this.position;
        if (seq !== null) {
          // Continue from the transaction of the last event delivered, dropping what of it was.
          this.position.skip = delivered;
          this.#send({ action: "resume", after: delivered > 0 ? seq - 1 : seq });
        } else {
          this.position.seq = message.seq;
          this.#live();
        }
        return;
      }
      case "resumed":
        this.#live();
        return;
      case "snapshot": {
        const waiting = this.pending.get(message.table);
        this.pending.delete(message.table);
        if (waiting) waiting[0]({ rows: message.rows, seq: message.seq });
        return;
      }
      case "pong":
        return;
      case "error": {
        for (const [table, [, reject]] of this.pending) {
          if (message.code === "not_found" || message.code === "forbidden") {
            reject(new Error(message.message));
            this.pending.delete(table);
          }
        }
        this.#emit("error", message);
        return;
      }
      case "refresh_needed":
        this.#emit("refresh_needed", message);
        return;
    }
    if (message.seq === undefined || message.table === undefined) return;
    const position = this.position;
    if (message.seq === position.seq && position.skip > 0) {
      position.skip -= 1;
      return;
    }
    if (message.seq === position.seq) position.delivered += 1;
    else Object.assign(position, { seq: message.seq, delivered: 1, skip: 0 });
    this.#dispatch(message);
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
