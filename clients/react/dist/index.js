import { createContext, createElement, useContext, useEffect, useState } from "react";
import { connect } from "@pgfeed/client";
const FeedContext = createContext(null);
function useFeed(url, options = {}) {
  const [feed, setFeed] = useState(null);
  const { WebSocket: socketClass, ...plain } = options;
  const key = JSON.stringify(plain);
  useEffect(() => {
    const opened = connect(url, options);
    setFeed(opened);
    return () => opened.close();
  }, [url, key, socketClass]);
  return feed;
}
function FeedProvider(props) {
  const feed = useFeed(props.url, props.options);
  return createElement(FeedContext.Provider, { value: feed }, props.children);
}
function useLiveTable(table, options = {}) {
  const provided = useContext(FeedContext);
  const feed = options.feed === void 0 ? provided : options.feed;
  const [state, setState] = useState({ rows: [], loading: true, error: null });
  const where = JSON.stringify(options.where ?? null);
  useEffect(() => {
    if (!feed) return;
    let live = null;
    let gone = false;
    setState((s) => ({ ...s, loading: true }));
    feed.liveTable(table, { key: options.key, where: options.where }).then(
      (opened) => {
        if (gone) return opened.close();
        live = opened;
        setState({ rows: opened.rows, loading: false, error: null });
        opened.on("change", (t) => setState({ rows: t.rows, loading: false, error: null }));
      },
      (error) => {
        if (!gone) setState({ rows: [], loading: false, error });
      }
    );
    return () => {
      gone = true;
      live?.close();
    };
  }, [feed, table, options.key, where]);
  return state;
}
function useFeedEvents(pattern, fn, feed) {
  const provided = useContext(FeedContext);
  const source = feed === void 0 ? provided : feed;
  useEffect(() => source ? source.on(pattern, fn) : void 0, [source, pattern, fn]);
}
export {
  FeedProvider,
  useFeed,
  useFeedEvents,
  useLiveTable
};
