// Types of pgfeed's browser client (/client.js).

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "offline";

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

export declare class Feed {
  readonly state: ConnectionState;
  on(pattern: "state", fn: (state: ConnectionState) => void): () => void;
  on(pattern: "poll", fn: (result: PollResult) => void): () => void;
  on(pattern: "error" | "refresh_needed", fn: (message: { type: string; [key: string]: unknown }) => void): () => void;
  on(pattern: "reset", fn: (reset: Reset) => void): () => void;
  /** The checked position after which every event was delivered. */
  readonly resumePosition: string | number | null;
  /** A type (`study_created`), a prefix (`study_*`) or everything (`*`). */
  on(pattern: string, fn: (event: FeedEvent) => void): () => void;
  snapshot<Row = Record<string, unknown>>(table: string): Promise<Snapshot<Row>>;
  /**
   * The rows of `table` kept current: an exact snapshot, then every event after it, in
   * order, across reconnects; read again after `refresh_needed` and a schema change.
   */
  liveTable<Row = Record<string, unknown>>(table: string, options?: LiveTableOptions): Promise<LiveTable<Row>>;
  reconnect(): void;
  drop(): void;
  close(): void;
}

export interface LiveTableOptions {
  /** The primary key column (default `id`). */
  key?: string;
  /** Only rows whose fields match: `{study_id: [1, 2]}` (`"7"` matches `7`). */
  where?: Record<string, unknown>;
}

export declare class LiveTable<Row = Record<string, unknown>> {
  readonly table: string;
  /** The seq the rows reflect; null while they are being read. */
  readonly seq: number | null;
  /** The current rows, ordered by key. */
  readonly rows: Row[];
  get(id: unknown): Row | undefined;
  on(kind: "change", fn: (table: LiveTable<Row>) => void): () => void;
  close(): void;
}

export declare function connect(url: string, options?: FeedOptions): Feed;
