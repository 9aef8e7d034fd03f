import type { ReactNode } from "react";
import type { Feed, FeedEvent, FeedOptions } from "@pgfeed/client";
/** A feed for the component's lifetime (closed when it unmounts, or when `url` or the options change). */
export declare function useFeed(url: string, options?: FeedOptions): Feed | null;
/** Gives every `useLiveTable` below it one feed of `url`. */
export declare function FeedProvider(props: {
    url: string;
    options?: FeedOptions;
    children?: ReactNode;
}): import("react").FunctionComponentElement<import("react").ProviderProps<Feed | null>>;
export interface LiveTableState<Row> {
    /** The current rows, ordered by key. */
    rows: Row[];
    /** True until the first snapshot is in. */
    loading: boolean;
    /** Why the table could not be read (not tracked, not allowed). */
    error: Error | null;
}
export interface UseLiveTableOptions {
    /** The feed to use (default: the nearest FeedProvider's). */
    feed?: Feed | null;
    /** The primary key column (default `id`). */
    key?: string;
    /** Only rows whose fields match: `{study_id: [1, 2]}`. */
    where?: Record<string, unknown>;
}
/** The rows of `table`, kept current; the component renders again at every change. */
export declare function useLiveTable<Row = Record<string, unknown>>(table: string, options?: UseLiveTableOptions): LiveTableState<Row>;
/** Calls `fn` for the feed's events of `pattern` (a type, `prefix_*` or `*`) while mounted. */
export declare function useFeedEvents(pattern: string, fn: (event: FeedEvent) => void, feed?: Feed | null): void;
