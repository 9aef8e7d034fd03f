// The page of tests/browser.rs's React test: a component with a live table of
// studies, rendered into #react-root, on the server the page came from.
import { createElement as h, StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { FeedProvider, useLiveTable } from "../dist/index.js";

function Studies() {
  const { rows, loading, error } = useLiveTable("studies");
  if (error) return h("p", { id: "react-error" }, String(error));
  if (loading) return h("p", { id: "react-loading" }, "loading");
  return h(
    "ul",
    { id: "react-studies" },
    rows.map((row) => h("li", { key: row.id, "data-id": row.id }, row.study_label)),
  );
}

const root = document.createElement("div");
root.id = "react-root";
document.body.prepend(root);
const url = location.origin.replace(/^http/, "ws") + "/ws";
createRoot(root).render(h(StrictMode, null, h(FeedProvider, { url, options: { tables: ["studies"] } }, h(Studies))));
