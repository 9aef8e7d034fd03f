export type ConnectionState = "connecting" | "connected" | "reconnecting" | "offline";
/** A WebSocket class: the browser's, or one for Node (the `ws` package). */
export type WebSocketClass = new (url: string) => WebSocketLike;
export interface WebSocketLike {
    readonly readyState: number;
    onmessage: ((message: {
        data: unknown;
    }) => void) | null;
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
type Message = {
    type?: string;
    [key: string]: any;
};
/** Opens a feed. */
export declare function connect(url: string, options?: FeedOptions): Feed;
export declare class Feed {
    readonly url: URL;
    readonly options: FeedOptions;
    state: ConnectionState;
    /**
     * Where the delivered stream stands: `whole`, the checked position after
     * which nothing is missing; `open`, the transaction being delivered (its
     * seq, its position, how many of its events were delivered); `skip`, how
     * many of the open transaction's events a resume brings again.
     */
    position: {
        whole: string | number | null;
        open: {
            seq: number;
            position: string | number;
            delivered: number;
        } | null;
        skip: number;
    };
    /** The tables whose snapshot the application asked for: re-read on `refresh_needed`. */
    snapshots: Set<string>;
    private handlers;
    private failures;
    private pending;
    private closed;
    private socket;
    private retry;
    private poller;
    constructor(url: string, options?: FeedOptions);
    /** Calls `fn` for events of `pattern`: a type, a prefix ending in `*`, `*`, or `state`/`poll`/`error`/`refresh_needed`/`reset`. Returns a function that stops it. */
    on(pattern: "state", fn: (state: ConnectionState) => void): () => void;
    on(pattern: "poll", fn: (result: PollResult) => void): () => void;
    on(pattern: "error" | "refresh_needed", fn: (message: Message) => void): () => void;
    on(pattern: "reset", fn: (reset: Reset) => void): () => void;
    on(pattern: string, fn: (event: FeedEvent) => void): () => void;
    /** The rows of `table` and the seq they reflect; events after it follow (exact handoff). */
    snapshot<Row = Record<string, unknown>>(table: string): Promise<Snapshot<Row>>;
    /**
     * The rows of `table` kept current: an exact snapshot, then every event after
     * it, in order, across reconnects; read again after `refresh_needed` and after
     * a schema change.
     */
    liveTable<Row = Record<string, unknown>>(table: string, options?: LiveTableOptions): Promise<LiveTable<Row>>;
    /** The checked position after which every event was delivered (what a resume names). */
    get resumePosition(): string | number | null;
    /** Reconnects now. */
    reconnect(): void;
    /** Drops the connection as a network failure would; the feed reconnects and resumes. */
    drop(): void;
    close(): void;
    private emit;
    private dispatch;
    private setState;
    private send;
    private open;
    private onMessage;
    /** Notes an event in the delivered stream; true when it was delivered already. */
    private seen;
    /**
     * The server cannot continue from where the stream stood: it goes on after
     * `message.position`. The application's snapshots are read again and handed
     * over with `reset`, so what it shows is exact again.
     */
    private recover;
    private live;
    private startPolling;
}
/** A table kept current from a feed (`feed.liveTable`). */
export declare class LiveTable<Row = Record<string, unknown>> {
    readonly table: string;
    readonly key: string;
    readonly where: Record<string, unknown> | undefined;
    /** The seq the rows reflect; null while they are being read. */
    seq: number | null;
    /** Resolves once the first snapshot is in. */
    readonly ready: Promise<LiveTable<Row>>;
    private map;
    private loadedOnce;
    private handlers;
    private feed;
    private stops;
    constructor(feed: Feed, table: string, key: string, where?: Record<string, unknown>);
    /** The current rows, ordered by key. */
    get rows(): Row[];
    get(id: unknown): Row | undefined;
    /** Calls `fn(table)` after every change; returns a function that stops it. */
    on(kind: "change", fn: (table: LiveTable<Row>) => void): () => void;
    close(): void;
    private reload;
    private apply;
    private changed;
}
export {};
