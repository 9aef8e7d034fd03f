// pgfeed's client, for browsers and Node: an ES module. The server serves its
// build at /client.js (types at /client.d.ts); its source is clients/js.
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

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "offline";

/** A WebSocket class: the browser's, or one for Node (the `ws` package). */
export type WebSocketClass = new (url: string) => WebSocketLike;

export interface WebSocketLike {
  readonly readyState: number;
  onmessage: ((message: { data: unknown }) => void) | null;
  onclose: ((event?: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface FeedOptions {
  /** Only these tables. Also the tables polled while the socket is down. */
  tables?: string[];
  /** Only these event types. */
  types?: string[];
  /** Only rows whose columns equal these values (or one of them, for an array). */
  where?: Record<string, unknown>;
  /** A JWT, when the server requires one. */
  token?: string;
  /** Start after this position (a seq, or a checked position like "1234.9f86d081"), replayed from the log, instead of now. */
  after?: number | string;
  /** Poll interval while disconnected, in ms (default 30000). */
  poll?: number;
  /** The WebSocket class to use (default: the global one; in Node, pass `ws`'s). */
  WebSocket?: WebSocketClass;
}

/** One event, as the server sends it. */
export interface FeedEvent<Row = Record<string, unknown>> {
  type: string;
  data: Row;
  seq: number;
  table: string;
  op: "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE" | "SCHEMA";
  changed?: string[];
  actor: string | null;
  timestamp: string;
  tx_index: number;
  tx_size: number;
  /** The checked position of the event's transaction ("<seq>.<check>"): what a resume names. */
  position?: string;
  unresolved_count?: number;
  derived?: boolean;
}

export interface Snapshot<Row = Record<string, unknown>> {
  rows: Row[];
  /** Every transaction up to this seq is in the rows; events after it follow. */
  seq: number;
  /** The same, as a checked position. */
  position?: string;
}

/** After `refresh_needed`: the application's snapshots, read again; events after them follow. */
export interface Reset {
  /** `history_changed` (reinstall, restore, failover), `pruned`, `ahead` or `log_unavailable`. */
  reason: string;
  /** Where the stream goes on. */
  position: string | number;
  /** Each table the application took a snapshot of, as it is now. */
  snapshots: Record<string, Snapshot>;
}

export interface PollResult<Row = Record<string, unknown>> {
  type: "snapshot";
  table: string;
  seq: number;
  rows: Row[];
}

export interface LiveTableOptions {
  /** The primary key column (default `id`). */
  key?: string;
  /** Only rows whose fields match: `{study_id: [1, 2]}` (`"7"` matches `7`). */
  where?: Record<string, unknown>;
}

type Message = { type?: string; [key: string]: any };
type Handler = (value: any) => void;

const BACKOFF = [1, 2, 4, 8, 16, 30];

/** Opens a feed. */
export function connect(url: string, options: FeedOptions = {}): Feed {
  return new Feed(url, options);
}

export class Feed {
  readonly url: URL;
  readonly options: FeedOptions;
  state: ConnectionState = "connecting";
  /**
   * Where the delivered stream stands: `whole`, the checked position after
   * which nothing is missing; `open`, the transaction being delivered (its
   * seq, its position, how many of its events were delivered); `skip`, how
   * many of the open transaction's events a resume brings again.
   */
  position: {
    whole: string | number | null;
    open: { seq: number; position: string | number; delivered: number } | null;
    skip: number;
  };
  /** The tables whose snapshot the application asked for: re-read on `refresh_needed`. */
  snapshots = new Set<string>();
  private handlers = new Map<string, Set<Handler>>();
  private failures = 0;
  private pending = new Map<string, Array<[(s: Snapshot) => void, (e: Error) => void]>>();
  private closed = false;
  private socket: WebSocketLike | undefined;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private poller: ReturnType<typeof setInterval> | undefined;

  constructor(url: string, options: FeedOptions = {}) {
    const base = typeof location === "undefined" ? undefined : location.href;
    this.url = new URL(url, base);
    if (this.url.protocol === "http:") this.url.protocol = "ws:";
    if (this.url.protocol === "https:") this.url.protocol = "wss:";
    if (this.url.pathname === "/") this.url.pathname = "/ws";
    this.options = options;
    this.position = { whole: options.after ?? null, open: null, skip: 0 };
    this.open();
  }

  /** Calls `fn` for events of `pattern`: a type, a prefix ending in `*`, `*`, or `state`/`poll`/`error`/`refresh_needed`/`reset`. Returns a function that stops it. */
  on(pattern: "state", fn: (state: ConnectionState) => void): () => void;
  on(pattern: "poll", fn: (result: PollResult) => void): () => void;
  on(pattern: "error" | "refresh_needed", fn: (message: Message) => void): () => void;
  on(pattern: "reset", fn: (reset: Reset) => void): () => void;
  on(pattern: string, fn: (event: FeedEvent) => void): () => void;
  on(pattern: string, fn: Handler): () => void {
    if (!this.handlers.has(pattern)) this.handlers.set(pattern, new Set());
    this.handlers.get(pattern)!.add(fn);
    return () => {
      this.handlers.get(pattern)?.delete(fn);
    };
  }

  /** The rows of `table` and the seq they reflect; events after it follow (exact handoff). */
  snapshot<Row = Record<string, unknown>>(table: string): Promise<Snapshot<Row>> {
    this.snapshots.add(table);
    return new Promise((resolve, reject) => {
      // One request per table at a time; every caller gets its answer.
      const waiting = this.pending.get(table);
      const entry: [(s: Snapshot) => void, (e: Error) => void] = [resolve as (s: Snapshot) => void, reject];
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
  async liveTable<Row = Record<string, unknown>>(table: string, options: LiveTableOptions = {}): Promise<LiveTable<Row>> {
    const live = new LiveTable<Row>(this, table, options.key ?? "id", options.where);
    await live.ready;
    return live;
  }

  /** The checked position after which every event was delivered (what a resume names). */
  get resumePosition(): string | number | null {
    return this.position.whole;
  }

  /** Reconnects now. */
  reconnect(): void {
    this.failures = 0;
    clearTimeout(this.retry);
    if (this.socket && this.socket.readyState <= 1) this.socket.close();
    else this.open();
  }

  /** Drops the connection as a network failure would; the feed reconnects and resumes. */
  drop(): void {
    if (this.socket) this.socket.close(4000, "dropped by the client");
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.poller);
    if (this.socket) this.socket.close(1000, "closed by the client");
  }

  private emit(pattern: string, value: unknown): void {
    for (const fn of this.handlers.get(pattern) ?? []) {
      try {
        fn(value);
      } catch (err) {
        console.error("pgfeed handler", err);
      }
    }
  }

  private dispatch(event: FeedEvent): void {
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

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  private send(message: Message | Record<string, unknown>): void {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(message));
  }

  private open(): void {
    if (this.closed) return;
    const url = new URL(this.url);
    if (this.options.token) url.searchParams.set("token", this.options.token);
    this.setState(this.failures === 0 && this.position.whole === null ? "connecting" : this.state);
    const Socket = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
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
      this.retry = setTimeout(() => this.open(), base * 1000 * (1 + Math.random() * 0.2));
    };
  }

  private onMessage(message: Message): void {
    switch (message.type) {
      case "connected": {
        // Snapshots asked for on the lost connection are asked again below.
        const unanswered = [...this.pending.keys()];
        // Subscribe and resume in one message: no live event comes before the replay.
        const subscription: Record<string, unknown> = { action: "subscribe" };
        for (const key of ["tables", "types", "where"] as const) {
          if (this.options[key]) subscription[key] = this.options[key];
        }
        const { whole, open } = this.position;
        if (whole !== null) subscription.after = whole;
        // What of the open transaction was delivered comes again: dropped.
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
        // A snapshot's refusal: not tracked, not allowed, or the database not
        // answering (a reinstall under way). Every waiting caller hears it, so
        // the next request is really sent.
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
    if (message.seq === undefined || message.table === undefined) return;
    const event = message as FeedEvent;
    if (this.seen(event)) return;
    this.dispatch(event);
  }

  /** Notes an event in the delivered stream; true when it was delivered already. */
  private seen(event: FeedEvent): boolean {
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
  private async recover(message: Message): Promise<void> {
    this.emit("refresh_needed", message);
    this.position = { whole: message.position ?? message.seq, open: null, skip: 0 };
    const snapshots: Record<string, Snapshot> = {};
    for (const table of this.snapshots) {
      try {
        snapshots[table] = await this.snapshot(table);
      } catch (err) {
        console.warn("pgfeed: re-reading", table, err);
      }
    }
    this.emit("reset", { reason: message.reason, position: this.position.whole, snapshots });
  }

  private live(): void {
    this.failures = 0;
    clearInterval(this.poller);
    this.poller = undefined;
    this.setState("connected");
  }

  private startPolling(): void {
    if (this.poller || !this.options.tables) return;
    const base = new URL(this.url);
    base.protocol = base.protocol === "wss:" ? "https:" : "http:";
    const tables = this.options.tables;
    const poll = async () => {
      for (const table of tables) {
        try {
          const headers: Record<string, string> = this.options.token ? { Authorization: `Bearer ${this.options.token}` } : {};
          const response = await fetch(new URL(`/api/v1/${table}`, base), { headers });
          if (response.ok) this.emit("poll", await response.json());
        } catch (_) {
          // The server is down; the next poll tries again.
        }
      }
    };
    this.poller = setInterval(poll, this.options.poll ?? 30000);
  }
}

/** The same rule as the server's: equal JSON, or a number and the string of its JSON text. */
function same(a: unknown, b: unknown): boolean {
  if (typeof a === "number" && typeof b === "string") return String(a) === b;
  if (typeof a === "string" && typeof b === "number") return a === String(b);
  return JSON.stringify(a) === JSON.stringify(b);
}

function matches(where: Record<string, unknown> | undefined, row: any): boolean {
  if (!where) return true;
  return Object.entries(where).every(
    ([field, wanted]) =>
      row != null &&
      field in row &&
      (Array.isArray(wanted) ? wanted.some((w) => same(w, row[field])) : same(wanted, row[field])),
  );
}

/** A table kept current from a feed (`feed.liveTable`). */
export class LiveTable<Row = Record<string, unknown>> {
  readonly table: string;
  readonly key: string;
  readonly where: Record<string, unknown> | undefined;
  /** The seq the rows reflect; null while they are being read. */
  seq: number | null = null;
  /** Resolves once the first snapshot is in. */
  readonly ready: Promise<LiveTable<Row>>;
  private map = new Map<unknown, Row>();
  private loadedOnce = false;
  private handlers = new Set<(table: LiveTable<Row>) => void>();
  private feed: Feed;
  private stops: Array<() => void>;

  constructor(feed: Feed, table: string, key: string, where?: Record<string, unknown>) {
    this.feed = feed;
    this.table = table;
    this.key = key;
    this.where = where;
    this.stops = [
      feed.on("*", (event: FeedEvent) => this.apply(event)),
      // Another history, or a gap: the rows are read again; events wait for them.
      feed.on("refresh_needed", () => void this.reload()),
    ];
    this.ready = this.reload();
  }

  /** The current rows, ordered by key. */
  get rows(): Row[] {
    const key = this.key;
    return [...this.map.values()].sort((a: any, b: any) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0));
  }

  get(id: unknown): Row | undefined {
    return this.map.get(id);
  }

  /** Calls `fn(table)` after every change; returns a function that stops it. */
  on(kind: "change", fn: (table: LiveTable<Row>) => void): () => void {
    if (kind !== "change") throw new Error(`LiveTable has only "change" events, not ${kind}`);
    this.handlers.add(fn);
    return () => {
      this.handlers.delete(fn);
    };
  }

  close(): void {
    for (const stop of this.stops) stop();
    this.handlers.clear();
  }

  private async reload(): Promise<LiveTable<Row>> {
    this.seq = null;
    let snapshot: Snapshot<Row>;
    try {
      snapshot = await this.feed.snapshot<Row>(this.table);
    } catch (err) {
      // The first read's failure is `liveTable`'s; a later one (the database
      // not answering during a reinstall) is tried again in a second.
      if (!this.loadedOnce) throw err;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      return this.reload();
    }
    const { rows, seq } = snapshot;
    this.loadedOnce = true;
    this.map = new Map(rows.filter((row) => matches(this.where, row)).map((row: any) => [row[this.key], row]));
    this.seq = seq;
    this.changed();
    return this;
  }

  private apply(event: FeedEvent): void {
    // Events before the snapshot's answer are in it.
    if (this.seq === null || event.derived || event.table !== this.table) return;
    const row = event.data as any;
    if (event.op === "SCHEMA") {
      void this.reload();
      return;
    }
    if (event.op === "TRUNCATE") this.map.clear();
    else if (event.op === "DELETE") this.map.delete(row[this.key]);
    else if (event.op === "INSERT" || event.op === "UPDATE") {
      if (matches(this.where, row)) this.map.set(row[this.key], row as Row);
      else this.map.delete(row[this.key]); // moved out of `where`
    } else return;
    this.changed();
  }

  private changed(): void {
    for (const fn of this.handlers) {
      try {
        fn(this);
      } catch (err) {
        console.error("pgfeed liveTable handler", err);
      }
    }
  }
}
