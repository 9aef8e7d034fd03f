// The live dashboard at `/`, built on /client.js: PEARL's studies and trackers
// when they are tracked, any tracked table's rows, and the latest events.
import { connect } from "/client.js";

const token = new URLSearchParams(location.search).get("token") ?? undefined;
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (selector) => document.querySelector(selector);
const escape = (value) =>
  String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

/** Rows of one table kept current from its snapshot and events. */
class LiveTable {
  constructor(table, onChange) {
    this.table = table;
    this.rows = new Map();
    this.changed = new Set();
    this.onChange = onChange;
  }
  load({ rows }) {
    this.rows = new Map(rows.map((row) => [row.id, row]));
    this.onChange();
  }
  apply(event) {
    // A schema change is not a row: the page re-reads the table (below).
    if (event.derived || event.table !== this.table || event.op === "SCHEMA") return;
    if (event.op === "TRUNCATE") this.rows.clear();
    else if (event.op === "DELETE") this.rows.delete(event.data.id);
    else {
      this.rows.set(event.data.id, event.data);
      this.changed.add(event.data.id);
    }
    this.onChange();
  }
  /** Ids changed since the last render, for a brief highlight. */
  takeChanged() {
    const changed = this.changed;
    this.changed = new Set();
    return changed;
  }
}

const info = await fetch("/api/v1", { headers }).then((r) => (r.ok ? r.json() : { tables: [], writes: false }));
const tracked = info.tables.map((t) => t.table);
const feed = connect(location.origin.replace(/^http/, "ws") + "/ws", { token, tables: tracked });
// For tests and the curious: every event this page received, in order.
window.__pgfeed = { feed, events: [] };

const views = new Map();
const has = (table) => tracked.includes(table);
const schedule = (() => {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      render();
    });
  };
})();
for (const table of ["studies", "database_releases", "reporting_effort_item_tracker", "tracker_comments", "reporting_effort_items", "users"]) {
  if (has(table)) views.set(table, new LiveTable(table, schedule));
}
let selected = tracked.includes("studies") ? "studies" : tracked[0];

function render() {
  renderStudies();
  renderTrackers();
  renderSelected();
}

function rowClass(changed, id) {
  return changed.has(id) ? ' class="changed"' : "";
}

function renderStudies() {
  const studies = views.get("studies");
  if (!studies) return;
  $("#studies-panel").hidden = false;
  $("#study-form").hidden = !info.writes;
  const releases = new Map();
  for (const release of views.get("database_releases")?.rows.values() ?? []) {
    releases.set(release.study_id, (releases.get(release.study_id) ?? 0) + 1);
  }
  const changed = studies.takeChanged();
  const actions = (id) =>
    info.writes
      ? `<button data-rename="${id}">Rename</button> <button data-delete="${id}">Delete</button>`
      : "";
  $("#studies tbody").innerHTML = [...studies.rows.values()]
    .sort((a, b) => a.id - b.id)
    .map(
      (s) => `<tr data-id="${s.id}"${rowClass(changed, s.id)}><td>${s.id}</td><td class="label">${escape(s.study_label)}</td>` +
        `<td>${releases.get(s.id) ?? 0}</td><td class="muted">${escape(s.updated_at)}</td><td>${actions(s.id)}</td></tr>`,
    )
    .join("");
}

function renderTrackers() {
  const trackers = views.get("reporting_effort_item_tracker");
  if (!trackers) return;
  $("#trackers-panel").hidden = false;
  const unresolved = new Map();
  for (const c of views.get("tracker_comments")?.rows.values() ?? []) {
    if (c.parent_comment_id === null && !c.is_resolved) unresolved.set(c.tracker_id, (unresolved.get(c.tracker_id) ?? 0) + 1);
  }
  const items = views.get("reporting_effort_items")?.rows ?? new Map();
  const users = views.get("users")?.rows ?? new Map();
  const changed = trackers.takeChanged();
  $("#trackers tbody").innerHTML = [...trackers.rows.values()]
    .sort((a, b) => b.id - a.id)
    .slice(0, 200)
    .map((t) => {
      const count = unresolved.get(t.id) ?? 0;
      const item = items.get(t.reporting_effort_item_id);
      const programmer = users.get(t.production_programmer_id);
      return `<tr data-id="${t.id}"${rowClass(changed, t.id)}><td>${t.id}</td><td>${escape(item?.item_code ?? t.reporting_effort_item_id)}</td>` +
        `<td>${escape(t.production_status)}</td><td>${escape(t.qc_status)}</td><td>${escape(programmer?.username ?? "")}</td>` +
        `<td><span class="count${count ? " open" : ""}">${count}</span></td></tr>`;
    })
    .join("");
}

function renderSelected() {
  const view = views.get(selected);
  if (!view) return;
  const rows = [...view.rows.values()].sort((a, b) => (a.id > b.id ? -1 : 1)).slice(0, 200);
  const columns = rows.length ? Object.keys(rows[0]) : [];
  const changed = selected === "studies" || selected === "reporting_effort_item_tracker" ? new Set() : view.takeChanged();
  $("#rows thead").innerHTML = `<tr>${columns.map((c) => `<th>${escape(c)}</th>`).join("")}</tr>`;
  $("#rows tbody").innerHTML = rows
    .map((row) => `<tr${rowClass(changed, row.id)}>${columns.map((c) => `<td>${escape(typeof row[c] === "object" ? JSON.stringify(row[c]) : row[c])}</td>`).join("")}</tr>`)
    .join("");
}

async function load(table) {
  if (!views.has(table)) views.set(table, new LiveTable(table, schedule));
  try {
    views.get(table).load(await feed.snapshot(table));
  } catch (err) {
    console.warn("snapshot", table, err);
  }
}

// The table picker: any tracked table.
$("#table-select").innerHTML = tracked.map((t) => `<option${t === selected ? " selected" : ""}>${escape(t)}</option>`).join("");
$("#table-select").addEventListener("change", async (e) => {
  selected = e.target.value;
  await load(selected);
  render();
});

// Connection state.
const labels = { connecting: "Connecting", connected: "Connected", reconnecting: "Reconnecting", offline: "Offline" };
feed.on("state", (state) => {
  const badge = $("#badge");
  badge.textContent = labels[state] ?? state;
  badge.className = `badge ${state}`;
  badge.dataset.state = state;
  if (state === "connected") {
    // After a reconnect the feed resumed; a first connect loads the tables.
    if (!window.__pgfeed.loaded) {
      window.__pgfeed.loaded = true;
      Promise.all([...views.keys()].map(load)).then(render);
    }
  }
});
$("#reconnect").addEventListener("click", () => feed.reconnect());
// The server could not continue from where the feed stood (another history
// after a reinstall, restore or failover; or a gap): the tables are exact again
// from the snapshots the client re-read; tables not yet shown load afresh.
feed.on("reset", ({ snapshots }) => {
  for (const [table, view] of views) {
    if (snapshots[table]) view.load(snapshots[table]);
    else load(table);
  }
  render();
});
feed.on("poll", (snapshot) => views.get(snapshot.table)?.load(snapshot));

// Events: to the views and to the latest-events panel.
feed.on("*", (event) => {
  window.__pgfeed.events.push({ seq: event.seq, tx_index: event.tx_index, type: event.type, derived: !!event.derived, data: event.data });
  views.get(event.table)?.apply(event);
  // The table's columns (or name) changed: its rows are read again in their new shape.
  if (event.op === "SCHEMA" && views.has(event.table)) load(event.table);
  $("#position").textContent = `seq ${event.seq}`;
  const item = document.createElement("li");
  item.innerHTML = `<span class="seq">#${event.seq}</span>${escape(event.type)} ${escape(JSON.stringify(event.data).slice(0, 140))}`;
  const list = $("#events");
  list.prepend(item);
  while (list.children.length > 100) list.lastChild.remove();
});

// Writes, when the server allows them.
async function write(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) {
    const reply = await response.json().catch(() => ({}));
    $("#form-error").textContent = reply.detail ?? `${response.status}`;
  } else {
    $("#form-error").textContent = "";
  }
}
$("#study-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("#study-label");
  await write("POST", "/api/v1/studies", { study_label: input.value });
  input.value = "";
});
$("#studies").addEventListener("click", async (e) => {
  const rename = e.target.dataset.rename;
  const remove = e.target.dataset.delete;
  if (rename) {
    const label = prompt("New label");
    if (label) await write("PUT", `/api/v1/studies/${rename}`, { study_label: label });
  }
  if (remove && confirm("Delete this study and everything under it?")) await write("DELETE", `/api/v1/studies/${remove}`);
});
