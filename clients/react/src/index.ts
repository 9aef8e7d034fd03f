// React hooks for pgfeed: a table that stays current in a component.
//
//   const feed = useFeed("ws://localhost:8000/ws", { tables: ["studies"] });
//   const { rows, loading } = useLiveTable("studies", { feed });
//
// or once for a tree: <FeedProvider url="ws://…/ws">…</FeedProvider>, then
// useLiveTable("studies") anywhere below it. The rows come from an exact
// snapshot, then every event in order, across reconnects and `refresh_needed`
// (the client does that: @pgfeed/client's liveTable).

import { createContext, createElement, useContext, useEffect, useState } from "react";
import type { ReactNode } from "react";
import { connect } from "@pgfeed/client";
import type { Feed, FeedEvent, FeedOptions, LiveTable } from "@pgfeed/client";

const FeedContext = createContext<Feed | null>(null);

/** A feed for the component's lifetime (closed when it unmounts, or when `url` or the options change). */
export function useFeed(url: string, options: FeedOptions = {}): Feed | null {
  const [feed, setFeed] = useState<Feed | null>(null);
  const { WebSocket: socketClass, ...plain } = options;
  const key = JSON.stringify(plain);
  useEffect(() => {
    const opened = connect(url, options);
    setFeed(opened);
    return () => opened.close();
    // `options` is compared by value (`key`), not by identity.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [url, key, socketClass]);
  return feed;
}

/** Gives every `useLiveTable` below it one feed of `url`. */
export function FeedProvider(props: { url: string; options?: FeedOptions; children?: ReactNode }) {
  const feed = useFeed(props.url, props.options);
  return createElement(FeedContext.Provider, { value: feed }, props.children);
}

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
export function useLiveTable<Row = Record<string, unknown>>(
  table: string,
  options: UseLiveTableOptions = {},
): LiveTableState<Row> {
  const provided = useContext(FeedContext);
  const feed = options.feed === undefined ? provided : options.feed;
  const [state, setState] = useState<LiveTableState<Row>>({ rows: [], loading: true, error: null });
  const where = JSON.stringify(options.where ?? null);
  useEffect(() => {
    if (!feed) return;
    let live: LiveTable<Row> | null = null;
    let gone = false;
    setState((s) => ({ ...s, loading: true }));
    feed.liveTable<Row>(table, { key: options.key, where: options.where }).then(
      (opened) => {
        if (gone) return opened.close();
        live = opened;
        setState({ rows: opened.rows, loading: false, error: null });
        opened.on("change", (t) => setState({ rows: t.rows, loading: false, error: null }));
      },
      (error: Error) => {
        if (!gone) setState({ rows: [], loading: false, error });
      },
    );
    return () => {
      gone = true;
      live?.close();
    };
    // `where` is compared by value.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [feed, table, options.key, where]);
  return state;
}

/** Calls `fn` for the feed's events of `pattern` (a type, `prefix_*` or `*`) while mounted. */
export function useFeedEvents(pattern: string, fn: (event: FeedEvent) => void, feed?: Feed | null): void {
  const provided = useContext(FeedContext);
  const source = feed === undefined ? provided : feed;
  useEffect(() => (source ? source.on(pattern, fn) : undefined), [source, pattern, fn]);
}
