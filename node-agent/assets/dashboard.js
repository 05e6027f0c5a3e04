// drove dashboard: plain JS, no dependencies, served by every agent at `/`.
// Reads /api/cluster and /api/cluster/jobs (every node's jobs and migrations, merged by the agent;
// polled) and /api/events (SSE, live);
// migrates with POST /api/jobs/:id/migrate and the cluster key as a bearer token.
// Every piece of data goes into the page through textContent / createTextNode, never as markup.
"use strict";

const KEY_NAME = "drove-cluster-key";
const POLL_MS = 3000;
const state = { cluster: null, jobs: [], unreachable: [], migrations: [], job: null, to: null, dragging: false };

const $ = (id) => document.getElementById(id);

// el("td", {class: "num"}, "text", childNode, ...): children as text nodes or elements.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "title") e.title = String(v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// Rebuilds a select's options only when they changed, so an open drop-down survives a refresh.
function setOptions(sel, options, value) {
  const sig = JSON.stringify(options);
  if (sel.dataset.sig !== sig) {
    sel.replaceChildren(...options.map(([v, text]) => el("option", { value: v }, text)));
    sel.dataset.sig = sig;
  }
  sel.value = value;
}

function mib(bytes) {
  const m = 1 << 20;
  if (!bytes) return "0M";
  if (bytes >= 10 * 1024 * m) return (bytes / (1024 * m)).toFixed(0) + "G";
  if (bytes >= 1024 * m) return (bytes / (1024 * m)).toFixed(1) + "G";
  return Math.floor(bytes / m) + "M";
}

// Image sizes: KiB below a MiB, so a small job does not show as 0M.
function size(bytes) {
  const b = Number(bytes) || 0;
  if (b < 1 << 20) return Math.ceil(b / 1024) + "K";
  return mib(b);
}

function heard(node, self) {
  if (node.number === self) return "self";
  const ms = node.last_heard_ms;
  if (ms === null || ms === undefined) return "never";
  if (ms < 10000) return (ms / 1000).toFixed(1) + "s ago";
  if (ms < 120000) return Math.floor(ms / 1000) + "s ago";
  if (ms < 7200000) return Math.floor(ms / 60000) + "m ago";
  return Math.floor(ms / 3600000) + "h ago";
}

function when(ms) {
  if (!ms) return "?";
  const d = new Date(ms);
  return d.toLocaleTimeString();
}

function showError(text) {
  const f = $("error");
  if (text) {
    f.textContent = text;
    f.hidden = false;
  } else {
    f.hidden = true;
  }
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// ---- rendering ----

function renderCluster() {
  const c = state.cluster;
  // Tables are not rebuilt under a drag in progress (that would drop the dragged row).
  if (!c || state.dragging) return;
  $("cluster-name").textContent = c.cluster;
  const nodes = c.nodes || [];
  const count = (s) => nodes.filter((n) => n.state === s).length;
  $("summary").textContent = nodes.length + " nodes, " + count("up") + " up, " + count("suspect") +
    " suspect, " + count("down") + " down; seen from node " + c.self;
  replaceRows($("nodes-body"), nodes.map((n) => {
    const st = ["up", "down", "suspect"].includes(n.state) ? n.state : "unknown";
    const load = Number(n.load) || 0;
    const bar = el("span", { class: "bar" + (load > 1 ? " over" : "") }, el("span"));
    bar.firstChild.style.width = Math.min(100, Math.max(0, load * 100)) + "%";
    const classes = [st];
    if (n.number === c.self) classes.push("self");
    if (n.number === state.to) classes.push("selected");
    return el("tr", {
      class: classes.join(" "),
      "data-number": n.number,
      title: n.conflict ? "conflict: " + (typeof n.conflict === "string" ? n.conflict : JSON.stringify(n.conflict)) : "click to pick as migration target",
      onclick: () => pickNode(n.number),
      // Dropping a job on a node migrates it there.
      ondragover: (e) => e.preventDefault(),
      ondrop: (e) => {
        e.preventDefault();
        state.dragging = false;
        const id = e.dataTransfer.getData("text/plain");
        if (!id) return;
        pickJob(id);
        pickNode(n.number);
        migrate(String(n.number));
      },
    },
      el("td"),
      el("td", { class: "num" }, n.number),
      el("td", {}, n.name || ""),
      el("td", {}, n.addr || ""),
      el("td", {}, el("span", { class: "lamp " + st }), " ", n.state, n.conflict ? " (conflict)" : ""),
      el("td", { class: "num" }, load.toFixed(2), bar),
      el("td", { class: "num" }, (Number(n.speed) || 0).toFixed(0)),
      el("td", { class: "num" }, mib(n.mem_free) + "/" + mib(n.mem_total)),
      el("td", { class: "num" }, n.jobs ?? 0),
      el("td", { class: "num" }, n.guest_jobs ?? 0),
      el("td", {}, heard(n, c.self)));
  }));
  // Target select: every node plus "home".
  const sel = $("migrate-to");
  setOptions(sel, [["home", "home"], ...nodes.map((n) => [String(n.number),
    n.number + " " + (n.name || n.addr) + (n.state === "up" ? "" : " (" + n.state + ")")])],
    state.to !== null ? String(state.to) : "home");
}

function nodeName(number) {
  const n = state.cluster && (state.cluster.nodes || []).find((x) => x.number === number);
  return n ? number + " " + (n.name || n.addr) : String(number);
}

function renderJobs() {
  if (state.dragging) return;
  $("jobs-silent").textContent = state.unreachable.length === 0 ? "" :
    "not answering, their jobs are missing or stale: " +
    state.unreachable.map((u) => nodeName(u.number) + " (" + u.error + ")").join(", ");
  replaceRows($("jobs-body"), state.jobs.map((j) => {
    const exit = j.exit_code !== null && j.exit_code !== undefined ? j.exit_code : (j.signal || "-");
    const classes = [];
    if (j.id === state.job) classes.push("selected");
    if (j.stale) classes.push("stale");
    return el("tr", {
      class: classes.length ? classes.join(" ") : undefined,
      "data-id": j.id,
      title: "click to pick this job, or drag it onto a node",
      draggable: j.state === "exited" ? undefined : "true",
      ondragstart: (e) => { e.dataTransfer.setData("text/plain", j.id); state.dragging = true; },
      ondragend: () => { state.dragging = false; },
      onclick: () => pickJob(j.id),
    },
      el("td", {}, j.id),
      el("td", {}, j.state),
      el("td", {}, nodeName(j.home)),
      el("td", { title: j.stale ? "the node it went to did not answer" : undefined },
        j.state === "exited" ? "-" : nodeName(j.node) + (j.stale ? " ?" : "")),
      el("td", { class: "num" }, j.migrations ?? 0),
      el("td", { class: "num" }, exit),
      el("td", {}, (j.cmd || []).join(" ")));
  }));
  const sel = $("migrate-job");
  const movable = state.jobs.filter((j) => j.state !== "exited");
  setOptions(sel, [["", "(pick a job)"], ...movable.map((j) => [j.id, j.id + " " + (j.cmd || []).join(" ").slice(0, 40)])],
    state.job && movable.some((j) => j.id === state.job) ? state.job : "");
}

function renderMigrations() {
  const list = [...state.migrations].sort((a, b) => (b.at_ms || 0) - (a.at_ms || 0)).slice(0, 50);
  replaceRows($("migrations-body"), list.map((m) => el("tr", { title: m.error || "" },
    el("td", {}, when(m.at_ms)),
    el("td", {}, m.job),
    el("td", {}, nodeName(m.from)),
    el("td", {}, nodeName(m.to)),
    el("td", {}, m.reason),
    el("td", { class: "num" }, m.freeze_ms + " ms"),
    el("td", { class: "num" }, m.total_ms + " ms"),
    el("td", { class: "num" }, size(m.bytes)),
    el("td", { class: "outcome-" + m.outcome }, m.outcome, m.error ? ": " + m.error : ""))));
}

function pickJob(id) {
  state.job = id;
  renderJobs();
}

function pickNode(number) {
  state.to = number;
  renderCluster();
}

// ---- fetching ----

async function refreshCluster() {
  state.cluster = await getJson("/api/cluster");
  renderCluster();
}

async function refreshJobs() {
  const j = await getJson("/api/cluster/jobs");
  state.jobs = j.jobs || [];
  state.unreachable = j.unreachable || [];
  state.migrations = j.migrations || [];
  renderJobs();
  renderMigrations();
}

async function refresh() {
  try {
    await refreshCluster();
    await refreshJobs();
    showError(null);
  } catch (e) {
    showError("cannot read the agent: " + e.message + " (retrying every " + POLL_MS / 1000 + " s)");
  }
}

// ---- the cluster key ----

function key(ask) {
  let k = sessionStorage.getItem(KEY_NAME);
  if (!k && ask) {
    k = window.prompt("Cluster key (64 hex digits, the <cluster>.key file) to change things:");
    k = k ? k.trim() : "";
    if (k) sessionStorage.setItem(KEY_NAME, k);
  }
  return k || null;
}

// POST with the key; a 401 forgets it and asks once more.
async function postWithKey(path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const k = key(true);
    if (!k) return null;
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + k },
      body: JSON.stringify(body),
    });
    if (r.status === 401) {
      sessionStorage.removeItem(KEY_NAME);
      showError("the agent refused the cluster key; enter it again");
      continue;
    }
    let data = null;
    try { data = await r.json(); } catch (_) { /* not JSON */ }
    return { status: r.status, data };
  }
  return null;
}

async function migrate(to) {
  const out = $("migrate-result");
  const id = $("migrate-job").value;
  if (!id) {
    out.className = "err";
    out.textContent = "pick a job first";
    return;
  }
  out.className = "";
  out.textContent = "migrating " + id + " to " + to + " …";
  try {
    const r = await postWithKey("/api/jobs/" + encodeURIComponent(id) + "/migrate", { to: String(to) });
    if (!r) {
      out.className = "err";
      out.textContent = "not sent: no cluster key";
      return;
    }
    showError(null);
    const d = r.data || {};
    if (r.status === 200) {
      out.className = "ok";
      out.textContent = "job " + id + " moved " + d.from + " → " + d.to + ", frozen " + d.freeze_ms + " ms";
    } else if (d.outcome) {
      out.className = "err";
      out.textContent = "job " + id + ": " + d.outcome + (d.error ? ": " + d.error : "");
    } else {
      out.className = "err";
      out.textContent = "HTTP " + r.status + ": " + (d.error || "failed");
    }
  } catch (e) {
    out.className = "err";
    out.textContent = "failed: " + e.message;
  }
  refresh();
}

// ---- live events ----

function addEvent(kind, data) {
  const ol = $("events");
  let d = {};
  try { d = JSON.parse(data); } catch (_) { /* keep {} */ }
  const text = when(d.at_ms) + " node " + d.number + " " + (d.name || "") + " (" + (d.addr || "?") + ") " + kind;
  ol.insertBefore(el("li", { class: "event-" + kind }, text), ol.firstChild);
  while (ol.children.length > 100) ol.removeChild(ol.lastChild);
}

function connectEvents() {
  if (!window.EventSource) return;
  const live = $("live");
  const es = new EventSource("/api/events");
  es.onopen = () => { live.className = "live on"; live.textContent = "events: live"; };
  es.onerror = () => { live.className = "live off"; live.textContent = "events: reconnecting"; };
  for (const kind of ["joined", "left", "down", "up", "conflict", "suspect"]) {
    es.addEventListener(kind, (ev) => {
      addEvent(kind, ev.data);
      refreshCluster().catch(() => {});
    });
  }
}

// ---- wiring ----

$("migrate-job").addEventListener("change", (e) => pickJob(e.target.value || null));
$("migrate-to").addEventListener("change", (e) => {
  const v = e.target.value;
  state.to = v === "home" ? null : Number(v);
  renderCluster();
});
$("migrate-form").addEventListener("submit", (e) => {
  e.preventDefault();
  migrate($("migrate-to").value);
});
$("home-btn").addEventListener("click", () => migrate("home"));
$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_NAME);
  $("migrate-result").textContent = "cluster key forgotten";
});

connectEvents();
refresh();
setInterval(refresh, POLL_MS);
