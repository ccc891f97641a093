// The mesh lab's service map: the control plane's graph (GET /api/v1/graph, streamed over
// server-sent events), laid out in columns by call depth, redrawn in place as numbers change;
// a side panel per node and edge; operations that show the YAML they apply and ask first.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 190, NODE_H = 46, COL_W = 450, ROW_H = 110, PAD = 40;
// Above this many edges, numbers are drawn only on the selected node's or edge's edges (the
// panel has them all): thousands of text runs relaid every second would not stay interactive.
const LABELS_UP_TO = 150;
const state = { graph: null, selected: null, csrf: null, window: "60s", es: null, nodes: new Map(), edges: new Map(), lastEvent: 0 };
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, text) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const h = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};
const fmt = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
const edgeKey = (e) => `${e.source}|${e.destination}|${e.service || ""}|${e.protocol}`;

// ---- API ----------------------------------------------------------------------------------
async function api(method, path, body, headers = {}) {
  const h2 = { ...headers };
  if (method !== "GET") h2["X-CSRF-Token"] = state.csrf;
  const r = await fetch(path, { method, body, headers: h2, credentials: "same-origin" });
  let data = null;
  try { data = await r.json(); } catch { /* not JSON */ }
  if (!r.ok) {
    const msg = data && (data.error || (data.errors && data.errors.join("; "))) || `${r.status} ${r.statusText}`;
    throw new Error(msg);
  }
  return data;
}

// ---- layout -------------------------------------------------------------------------------
// Columns by call depth: a node's column is one more than the deepest caller's (callers
// first, cycles cut where they close); rows in a column ordered by name. A service map is
// close to a DAG from the gateway outwards, which this reads left to right.
function layout(nodes, edges) {
  const out = new Map(nodes.map((n) => [n.id, []]));
  const indeg = new Map(nodes.map((n) => [n.id, 0]));
  for (const e of edges) {
    if (!out.has(e.source) || !out.has(e.destination) || e.source === e.destination) continue;
    out.get(e.source).push(e.destination);
    indeg.set(e.destination, indeg.get(e.destination) + 1);
  }
  const depth = new Map();
  const queue = nodes.filter((n) => indeg.get(n.id) === 0).map((n) => n.id);
  for (const id of queue) depth.set(id, 0);
  const seen = new Set();
  // Kahn's order; nodes left in a cycle get placed after their first placed caller.
  const left = new Map(indeg);
  while (queue.length) {
    const id = queue.shift();
    seen.add(id);
    for (const d of out.get(id)) {
      depth.set(d, Math.max(depth.get(d) || 0, depth.get(id) + 1));
      left.set(d, left.get(d) - 1);
      if (left.get(d) === 0) queue.push(d);
    }
  }
  for (const n of nodes) if (!depth.has(n.id)) depth.set(n.id, 1);
  const cols = new Map();
  for (const n of nodes) {
    const c = depth.get(n.id);
    if (!cols.has(c)) cols.set(c, []);
    cols.get(c).push(n);
  }
  const pos = new Map();
  let maxRows = 0;
  for (const [c, list] of cols) {
    list.sort((a, b) => label(a).localeCompare(label(b)));
    list.forEach((n, i) => pos.set(n.id, { x: PAD + c * COL_W, y: PAD + i * ROW_H }));
    maxRows = Math.max(maxRows, list.length);
  }
  const width = PAD * 2 + (Math.max(0, ...cols.keys()) + 1) * COL_W;
  return { pos, width, height: PAD * 2 + maxRows * ROW_H };
}

function label(n) {
  if (n.kind === "external") return n.service || n.id;
  return n.version && n.version !== "unknown" ? `${n.workload}` : n.workload || n.id;
}

// ---- drawing ------------------------------------------------------------------------------
function render(graph) {
  state.graph = graph;
  const svg = $("map");
  const { pos, width, height } = layout(graph.nodes, graph.edges);
  // Set only when changed: setting the root's size even to the same value relays and repaints
  // the whole map (100 ms of a frame at 2,000 edges, against 1 ms for the numbers).
  const w = String(Math.max(width, 600)), hgt = String(Math.max(height, 400));
  if (svg.getAttribute("width") !== w) svg.setAttribute("width", w);
  if (svg.getAttribute("height") !== hgt) svg.setAttribute("height", hgt);
  $("empty").hidden = graph.nodes.length > 0;
  let edgesG = svg.querySelector("g.edges"), nodesG = svg.querySelector("g.nodes"), groupsG = svg.querySelector("g.groups");
  if (!edgesG) {
    groupsG = el("g", { class: "groups" }); edgesG = el("g", { class: "edges" }); nodesG = el("g", { class: "nodes" });
    svg.append(groupsG, edgesG, nodesG);
  }
  drawServices(groupsG, graph, pos);

  const liveNodes = new Set();
  for (const n of graph.nodes) {
    liveNodes.add(n.id);
    let v = state.nodes.get(n.id);
    if (!v) {
      const g = el("g", { class: `node ${n.kind}`, tabindex: 0, "data-id": n.id });
      const rect = el("rect", { width: NODE_W, height: NODE_H });
      const name = el("text", { x: 10, y: 19 });
      const kind = el("text", { x: 10, y: 36, class: "kind" });
      g.append(rect, name, kind);
      g.addEventListener("click", () => select({ node: n.id }));
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select({ node: n.id }); });
      nodesG.append(g);
      v = { g, name, kind };
      state.nodes.set(n.id, v);
    }
    const p = pos.get(n.id);
    const at = `translate(${p.x},${p.y})`;
    if (v.at !== at) { v.g.setAttribute("transform", at); v.at = at; }
    const name = label(n);
    if (v.name.textContent !== name) v.name.textContent = name;
    const kind = n.kind === "external" ? "outside the mesh" : `${n.kind} · ${n.namespace}${n.version && n.version !== "unknown" ? " · " + n.version : ""}`;
    if (v.kind.textContent !== kind) v.kind.textContent = kind;
    v.g.classList.toggle("selected", state.selected && state.selected.node === n.id);
  }
  for (const [id, v] of state.nodes) if (!liveNodes.has(id)) { v.g.remove(); state.nodes.delete(id); }

  const liveEdges = new Set();
  const allLabels = graph.edges.length <= LABELS_UP_TO;
  const setText = (t, v) => { if (t.textContent !== v) t.textContent = v; };
  // Several edges between one pair (HTTP and TCP, say) bend apart instead of lying on each other.
  const pairs = new Map();
  for (const e of graph.edges) {
    const key = edgeKey(e);
    const a = pos.get(e.source), b = pos.get(e.destination);
    if (!a || !b) continue;
    liveEdges.add(key);
    let v = state.edges.get(key);
    if (!v) {
      const g = el("g", { class: "edge", tabindex: 0 });
      const hit = el("path", { class: "hit" });
      const line = el("path", { class: "line", "marker-end": "url(#arrow)" });
      const t1 = el("text", { "text-anchor": "middle" }), t2 = el("text", { "text-anchor": "middle" });
      const t3 = el("text", { class: "sec", "text-anchor": "middle" });
      // A padlock (drawn: emoji fonts are not everywhere) beside "mTLS".
      const lock = el("path", { class: "lock", d: "M1,5 h8 v6 h-8 z M2.5,5 v-2 a2.5,2.5 0 0 1 5,0 v2" });
      g.append(hit, line, t1, t2, lock, t3);
      g.addEventListener("click", () => select({ edge: key }));
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select({ edge: key }); });
      edgesG.append(g);
      v = { g, hit, line, t1, t2, t3, lock };
      state.edges.set(key, v);
    }
    const pair = `${e.source}|${e.destination}`;
    const nth = pairs.get(pair) || 0;
    pairs.set(pair, nth + 1);
    const bend = nth * 48;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const mx = (x1 + x2) / 2;
    const d = `M${x1},${y1} C${mx},${y1 + bend * 1.4} ${mx},${y2 + bend * 1.4} ${x2 - 6},${y2}`;
    if (v.d !== d) { v.line.setAttribute("d", d); v.hit.setAttribute("d", d); v.d = d; }
    const lx = mx, ly = (y1 + y2) / 2 - 8 + bend;
    const succ = e.successRate === null ? "–" : fmt(e.successRate * 100, 1) + "%";
    const l1 = e.protocol === "tcp" ? `${fmt(e.rps, 2)} conn/s` : `${fmt(e.rps, 1)}/s · ${succ} · p99 ${fmt(e.latencyMs.p99, 1)} ms`;
    const share = e.proxyShareOfP50 === null || e.proxyShareOfP50 === undefined ? "" : ` (${fmt(e.proxyShareOfP50 * 100, 0)}% of p50)`;
    const l2 = e.protocol === "tcp" ? "" : `proxies ${fmt(e.proxyMs.p50, 2)} ms${share}`;
    // "unknown": the request never reached an upstream (no route, no endpoint): no channel.
    const refused = e.plaintextReason === "RefusedStrict";
    const insecure = !e.mtls && e.security !== "unknown" && !refused;
    const l3 = e.mtls ? "mTLS" : refused ? "✕ refused: plaintext under STRICT" : insecure ? `⚠ insecure channel: cleartext${e.plaintextReason ? " (" + e.plaintextReason + ")" : ""}` : "no upstream connection";
    const sel = state.selected;
    const shown = allLabels || (sel && (sel.edge === key || sel.node === e.source || sel.node === e.destination));
    if (v.lx !== lx || v.ly !== ly) {
      v.t1.setAttribute("x", lx); v.t1.setAttribute("y", ly - 16);
      v.t2.setAttribute("x", lx); v.t2.setAttribute("y", ly - 3);
      v.t3.setAttribute("x", lx); v.t3.setAttribute("y", ly + 11);
      v.lock.setAttribute("transform", `translate(${lx - 30},${ly + 2})`);
      v.lx = lx; v.ly = ly;
    }
    setText(v.t1, shown ? l1 : "");
    setText(v.t2, shown ? l2 : "");
    // Plaintext keeps its warning even unlabelled: the red dashes are never the only signal.
    setText(v.t3, shown || insecure || refused ? l3 : "");
    const lockShown = e.mtls && shown;
    if (v.lockShown !== lockShown) { v.lock.style.display = lockShown ? "" : "none"; v.lockShown = lockShown; }
    v.g.classList.toggle("insecure", insecure);
    v.g.classList.toggle("unrouted", !e.mtls && !insecure && !refused);
    v.g.classList.toggle("refused", refused);
    const aria = `${e.source} to ${e.destination}: ${l1}; ${l3}`;
    if (v.aria !== aria) { v.g.setAttribute("aria-label", aria); v.aria = aria; }
    v.g.classList.toggle("selected", state.selected && state.selected.edge === key);
  }
  for (const [k, v] of state.edges) if (!liveEdges.has(k)) { v.g.remove(); state.edges.delete(k); }
  if (!svg.querySelector("defs")) {
    const defs = el("defs");
    const m = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse", orient: "auto" });
    m.append(el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#57606a" }));
    defs.append(m);
    svg.prepend(defs);
  }
  if (state.selected) refreshPanel();
}

// A Service's versions (workloads of one app in one namespace) inside one box named after it,
// with the requests it takes in all: the canary's v1 and v2 side by side under "inventory".
function drawServices(layer, graph, pos) {
  const apps = new Map();
  for (const n of graph.nodes) {
    if (n.kind !== "workload" || !n.app || n.app === "unknown") continue;
    const k = `${n.namespace}/${n.app}`;
    if (!apps.has(k)) apps.set(k, []);
    apps.get(k).push(n);
  }
  const want = new Set();
  for (const [k, members] of apps) {
    if (members.length < 2) continue;
    want.add(k);
    const ps = members.map((m) => pos.get(m.id));
    const x = Math.min(...ps.map((p) => p.x)) - 12, y = Math.min(...ps.map((p) => p.y)) - 26;
    const w = Math.max(...ps.map((p) => p.x)) + NODE_W + 12 - x, hgt = Math.max(...ps.map((p) => p.y)) + NODE_H + 12 - y;
    const ids = new Set(members.map((m) => m.id));
    const rps = graph.edges.filter((e) => ids.has(e.destination) && !ids.has(e.source)).reduce((a, e) => a + e.rps, 0);
    let g = layer.querySelector(`g[data-app="${CSS.escape(k)}"]`);
    if (!g) {
      g = el("g", { class: "service", "data-app": k });
      g.append(el("rect", { rx: 10 }), el("text", {}));
      layer.append(g);
    }
    const [rect, text] = g.children;
    rect.setAttribute("x", x); rect.setAttribute("y", y); rect.setAttribute("width", w); rect.setAttribute("height", hgt);
    text.setAttribute("x", x + 10); text.setAttribute("y", y + 17);
    const label = `Service ${members[0].app} · ${members.length} versions · ${fmt(rps, 1)} req/s in`;
    if (text.textContent !== label) text.textContent = label;
  }
  for (const g of [...layer.children]) if (!want.has(g.getAttribute("data-app"))) g.remove();
}

// ---- the live feed -------------------------------------------------------------------------
function connect() {
  if (state.es) state.es.close();
  const es = new EventSource(`/api/v1/ui/events?window=${encodeURIComponent(state.window)}`);
  state.es = es;
  es.addEventListener("graph", (ev) => {
    state.lastEvent = Date.now();
    const live = $("live");
    live.textContent = `live · ${new Date().toLocaleTimeString()}`;
    live.classList.remove("stale");
    const t0 = performance.now();
    render(JSON.parse(ev.data));
    window.__lastRenderMs = performance.now() - t0;
  });
  es.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.add("stale"); };
}

// ---- the side panel -----------------------------------------------------------------------
function select(sel) {
  state.selected = sel;
  for (const [id, v] of state.nodes) v.g.classList.toggle("selected", sel.node === id);
  for (const [k, v] of state.edges) v.g.classList.toggle("selected", sel.edge === k);
  // Large maps label only the selection's edges: those change now.
  if (state.graph && state.graph.edges.length > LABELS_UP_TO) render(state.graph);
  refreshPanel(true);
}

let panelToken = 0;
async function refreshPanel(full) {
  const sel = state.selected, g = state.graph;
  if (!sel || !g) return;
  const panel = $("panel");
  // Numbers refresh every second; the operations (and what the user typed) stay.
  const stats = panel.querySelector(".stats");
  if (!full && stats) { stats.replaceWith(statsTable(sel)); return; }
  const token = ++panelToken;
  panel.replaceChildren();
  if (sel.node) {
    const n = g.nodes.find((x) => x.id === sel.node);
    if (!n) return;
    panel.append(h("h2", {}, label(n)), statsTable(sel));
    if (n.kind === "gateway") panel.append(recentRequests(n));
    if (n.kind === "workload") {
      const extra = await nodeDetails(n);
      if (token !== panelToken) return;
      panel.append(...extra);
    }
  } else {
    const e = g.edges.find((x) => edgeKey(x) === sel.edge);
    if (!e) return;
    panel.append(h("h2", {}, `${nodeName(e.source)} → ${nodeName(e.destination)}`), statsTable(sel), ...edgeOps(e));
  }
}

function nodeName(id) {
  const n = state.graph && state.graph.nodes.find((x) => x.id === id);
  return n ? label(n) : id;
}

function statsTable(sel) {
  const g = state.graph, rows = [];
  if (sel.node) {
    const n = g.nodes.find((x) => x.id === sel.node) || {};
    const ins = g.edges.filter((e) => e.destination === sel.node), outs = g.edges.filter((e) => e.source === sel.node);
    const sum = (l) => l.reduce((a, e) => a + e.rps, 0);
    rows.push(["kind", n.kind], ["namespace", n.namespace || "–"], ["app / version", `${n.app || "–"} / ${n.version || "–"}`]);
    rows.push(["inbound", `${fmt(sum(ins), 1)} req/s from ${ins.length} caller(s)`], ["outbound", `${fmt(sum(outs), 1)} req/s to ${outs.length} callee(s)`]);
    const how = (e) => (e.mtls ? "mTLS (locked)" : e.plaintextReason === "RefusedStrict" ? "✕ refused (plaintext under STRICT)" : "⚠ cleartext" + (e.plaintextReason ? " (" + e.plaintextReason + ")" : ""));
    for (const e of ins) rows.push([`from ${nodeName(e.source)} (${e.protocol})`, `${how(e)}${e.protocol === "tcp" ? ` · ${fmt(e.rps, 1)} conn/s` : ` · p99 ${fmt(e.latencyMs.p99, 1)} ms`}`]);
  } else {
    const e = g.edges.find((x) => edgeKey(x) === sel.edge);
    if (e) {
      rows.push(["service", e.service || "–"], ["protocol", e.protocol], ["rate", `${fmt(e.rps, 2)} ${e.protocol === "tcp" ? "conn" : "req"}/s`]);
      rows.push(["success", e.successRate === null ? "–" : `${fmt(e.successRate * 100, 2)}% (${e.errors} errors of ${e.requests})`]);
      rows.push(["latency", `p50 ${fmt(e.latencyMs.p50, 2)} · p95 ${fmt(e.latencyMs.p95, 2)} · p99 ${fmt(e.latencyMs.p99, 2)} ms`]);
      const side = (s) => (s ? `p50 ${fmt(s.p50, 3)} / p99 ${fmt(s.p99, 3)} ms` : "not reported");
      rows.push(["proxy time", `${fmt(e.proxyMs.p50, 3)} ms p50, ${fmt(e.proxyMs.p99, 3)} ms p99`], ["  caller's proxy", side(e.proxyMs.source)], ["  callee's proxy", side(e.proxyMs.destination)]);
      rows.push(["security", e.mtls ? "mutual TLS (locked)" : `⚠ insecure channel: cleartext${e.plaintextReason ? " — " + e.plaintextReason : ""}`]);
      rows.push(["caller identity", (e.principals && e.principals.source) || "none (no client certificate)"], ["callee identity", (e.principals && e.principals.destination) || "–"]);
      rows.push(["bytes", `${e.bytes.request} in, ${e.bytes.response} out`], ["reported by", e.reportedBy.join(", ")]);
    }
  }
  const t = h("table", { class: "stats" });
  for (const [k, v] of rows) t.append(h("tr", {}, h("td", {}, k), h("td", {}, v)));
  const e = sel.edge && g.edges.find((x) => edgeKey(x) === sel.edge);
  if (e && e.latencyBuckets) {
    const wrap = h("div", { class: "stats" }, t, h("h3", {}, "latency histogram (ms)"), histogram(e.latencyBuckets));
    return wrap;
  }
  return t;
}

// Bars per latency bucket (Istio's buckets), the count and the bucket's upper bound under each;
// empty buckets past the last used one are left out.
function histogram(b) {
  const last = b.counts.reduce((at, c, i) => (c > 0 ? i : at), -1);
  const max = Math.max(1, ...b.counts);
  const box = h("div", { class: "histogram", role: "img", "aria-label": b.counts.slice(0, last + 1).map((c, i) => `≤${b.le[i]} ms: ${c}`).join(", ") });
  for (let i = 0; i <= last; i++) {
    const bar = h("div", { class: "bar", title: `≤ ${b.le[i]} ms: ${b.counts[i]}` }, h("span", { class: "fill" }), h("small", {}, String(b.le[i])));
    bar.firstChild.style.height = `${Math.round((b.counts[i] / max) * 60)}px`;
    box.append(bar);
  }
  if (last < 0) box.append("no requests");
  return box;
}

async function nodeDetails(n) {
  const out = [];
  const ns = n.namespace;
  try {
    const [proxies, pa, az, tp, routes] = await Promise.all([
      api("GET", "/api/v1/proxies"),
      api("GET", `/api/v1/resources?kind=PeerAuthentication`),
      api("GET", `/api/v1/resources?kind=AuthorizationPolicy&namespace=${ns}`),
      api("GET", `/api/v1/resources?kind=TrafficPolicy&namespace=${ns}`),
      api("GET", `/api/v1/resources?kind=HTTPRoute&namespace=${ns}`),
    ]);
    const mine = proxies.proxies.filter((p) => p.workload === `${ns}/${n.workload}`);
    out.push(h("h3", {}, "identity"));
    const t = h("table");
    if (!mine.length) t.append(h("tr", {}, h("td", {}, "proxy"), h("td", {}, "not connected to the control plane")));
    for (const p of mine) {
      const exp = p.leafNotAfter ? new Date(p.leafNotAfter * 1000) : null;
      t.append(h("tr", {}, h("td", {}, "SPIFFE ID"), h("td", {}, p.identity)));
      t.append(h("tr", {}, h("td", {}, "certificate"), h("td", {}, exp ? `expires ${exp.toLocaleString()} (in ${fmt((exp - Date.now()) / 60000, 0)} min)` : "–")));
      t.append(h("tr", {}, h("td", {}, "config"), h("td", {}, `${p.status} (version ${p.acked})`)));
    }
    out.push(t);
    const selects = (o) => { const m = o.spec.selector && o.spec.selector.matchLabels; return !m || (m.app === n.app || m.app === n.workload); };
    out.push(h("h3", {}, "policies that apply"));
    const list = h("ul");
    const inScope = (o) => o.metadata.namespace === ns || o.metadata.namespace === "meshgate-system";
    for (const o of pa.items.filter(inScope).filter(selects)) list.append(h("li", {}, `PeerAuthentication ${o.metadata.namespace}/${o.metadata.name}: mTLS ${(o.spec.mtls && o.spec.mtls.mode) || "inherit"}`));
    for (const o of az.items.filter(selects)) list.append(h("li", {}, `AuthorizationPolicy ${ns}/${o.metadata.name}: ${o.spec.action || "ALLOW"}`));
    // A TrafficPolicy is its Service's (the workload's app): how callers reach it.
    for (const o of tp.items.filter((o) => o.spec.targetRefs.some((r) => r.name === n.app || r.name === n.workload))) {
      list.append(h("li", {}, `TrafficPolicy ${ns}/${o.metadata.name} → Service ${o.spec.targetRefs.map((r) => r.name).join(", ")}`));
    }
    if (!list.children.length) list.append(h("li", {}, "none: the mesh defaults (mTLS PERMISSIVE, allow all)"));
    out.push(list);
    out.push(recentRequests(n));
    out.push(...mtlsOps(n));
    const splits = routes.items.filter((r) => (r.spec.rules || []).some((rule) => (rule.backendRefs || []).length > 1));
    out.push(h("h3", {}, "traffic splits"));
    if (!splits.length) out.push(h("p", {}, "no route in this namespace splits traffic"));
    for (const r of splits) out.push(splitOp(r));
  } catch (err) {
    out.push(h("p", { class: "error" }, `details: ${err.message}`));
  }
  return out;
}

// The requests a workload's proxies serve for ten seconds, through the control plane's tap
// (each sidecar answers in its telemetry reports, every few seconds).
function recentRequests(n) {
  const box = h("div", { class: "op" });
  const table = h("table", { class: "recent" });
  const note = h("p", {}, "");
  const go = h("button", { type: "button", onclick: async () => {
    go.disabled = true;
    table.replaceChildren();
    try {
      const t = await api("POST", "/api/v1/taps", JSON.stringify({ workload: `${n.namespace}/${n.workload}`, seconds: 10, max: 30 }), { "Content-Type": "application/json" });
      note.textContent = "listening for 10 s…";
      for (;;) {
        await new Promise((r) => setTimeout(r, 1000));
        const got = await api("GET", `/api/v1/taps/${t.id}`);
        table.replaceChildren(h("tr", {}, ...["time", "side", "request", "code", "flags", "ms", "from"].map((x) => h("td", {}, x))));
        for (const r of got.records.slice(-30).reverse()) {
          const from = r.source_workload ? r.source_workload.workload || r.source_workload : r.downstream_peer;
          table.append(h("tr", {},
            h("td", {}, (r.start_time || "").slice(11, 19)), h("td", {}, r.reporter === "destination" ? "in" : "out"),
            h("td", {}, `${r.method || ""} ${r.authority || ""}${r.path || ""}`), h("td", {}, String(r.response_code)),
            h("td", {}, r.response_flags), h("td", {}, fmt(r.duration_ms, 1)), h("td", {}, typeof from === "string" ? from : JSON.stringify(from))));
        }
        note.textContent = got.done ? `${got.records.length} request(s) in 10 s` : `listening… ${got.records.length} so far`;
        if (got.done) break;
      }
    } catch (err) {
      note.textContent = `tap: ${err.message}`;
      note.className = "error";
    }
    go.disabled = false;
  } }, "tap 10 s");
  box.append(go, note, table);
  return h("div", {}, h("h3", {}, "recent requests"), box);
}

// ---- operations ---------------------------------------------------------------------------
function toYaml(v, indent = "") {
  if (Array.isArray(v)) return v.map((x) => `${indent}- ${toYaml(x, indent + "  ").trimStart()}`).join("\n");
  if (v && typeof v === "object") {
    return Object.entries(v).map(([k, x]) => {
      if (x && typeof x === "object" && Object.keys(x).length) return `${indent}${k}:\n${toYaml(x, indent + "  ")}`;
      return `${indent}${k}: ${JSON.stringify(x)}`;
    }).join("\n");
  }
  return `${indent}${JSON.stringify(v)}`;
}

// Shows what will change and applies it on confirmation; `generation` guards against a
// resource that changed since it was read.
function confirmApply(what, obj, generation, del) {
  const d = $("confirm");
  $("confirm-title").textContent = del ? "Delete this?" : "Apply this?";
  $("confirm-what").textContent = what;
  $("confirm-yaml").textContent = toYaml(obj);
  $("confirm-error").textContent = "";
  d.showModal();
  const apply = $("confirm-apply");
  const onClick = async (ev) => {
    ev.preventDefault();
    try {
      if (del) {
        await api("DELETE", `/api/v1/resources/${obj.kind}/${obj.metadata.namespace}/${obj.metadata.name}`);
      } else {
        const headers = { "Content-Type": "application/yaml", "X-Meshgate-Source": "dashboard" };
        if (generation !== undefined) headers["X-Meshgate-If-Generation"] = String(generation);
        const r = await api("POST", "/api/v1/apply", JSON.stringify(obj), headers);
        $("live").textContent = `applied: ${r.results.map((x) => `${x.object} ${x.action}`).join(", ")}`;
      }
      d.close();
      refreshPanel(true);
    } catch (err) {
      $("confirm-error").textContent = err.message;
    }
  };
  apply.addEventListener("click", onClick);
  d.addEventListener("close", () => apply.removeEventListener("click", onClick), { once: true });
}

function mtlsOps(n) {
  const mode = h("select", { "aria-label": "mTLS mode" }, ...["STRICT", "PERMISSIVE", "DISABLE"].map((m) => h("option", { value: m }, m)));
  const scope = h("select", { "aria-label": "scope" },
    h("option", { value: "workload" }, `workload ${n.app || n.workload}`),
    h("option", { value: "namespace" }, `namespace ${n.namespace}`),
    h("option", { value: "mesh" }, "the whole mesh"));
  const go = h("button", { type: "button", onclick: () => {
    const s = scope.value;
    const obj = {
      apiVersion: "meshgate.io/v1alpha1", kind: "PeerAuthentication",
      metadata: { name: s === "workload" ? `${n.app || n.workload}-mtls` : "default", namespace: s === "mesh" ? "meshgate-system" : n.namespace },
      spec: { ...(s === "workload" ? { selector: { matchLabels: { app: n.app || n.workload } } } : {}), mtls: { mode: mode.value } },
    };
    confirmApply(`Set mTLS ${mode.value} for the ${s === "mesh" ? "whole mesh" : s + " " + (s === "workload" ? n.app || n.workload : n.namespace)}.`, obj);
  } }, "set mTLS…");
  return [h("h3", {}, "mTLS"), h("div", { class: "op" }, h("label", {}, "mode ", mode), h("label", {}, "for ", scope), go)];
}

function splitOp(route) {
  const box = h("div", { class: "op" }, h("b", {}, `HTTPRoute ${route.metadata.namespace}/${route.metadata.name}`));
  (route.spec.rules || []).forEach((rule, i) => {
    const refs = rule.backendRefs || [];
    if (refs.length < 2) return;
    const inputs = refs.map((b) => h("input", { type: "number", min: 0, max: 100, value: b.weight === undefined ? 1 : b.weight, "aria-label": `weight of ${b.name}` }));
    refs.forEach((b, j) => box.append(h("label", {}, `${b.name} `, inputs[j])));
    const err = h("p", { class: "error", role: "alert" });
    box.append(err, h("button", { type: "button", onclick: () => {
      const weights = inputs.map((x) => Number(x.value));
      const bad = weights.findIndex((w) => !Number.isInteger(w) || w < 0 || w > 100);
      if (bad >= 0) { err.textContent = `weight of ${refs[bad].name}: a whole number from 0 to 100, not ${inputs[bad].value}`; return; }
      err.textContent = "";
      const copy = JSON.parse(JSON.stringify(route));
      delete copy.status;
      const generation = copy.metadata.generation;
      delete copy.metadata.generation;
      copy.spec.rules[i].backendRefs = refs.map((b, j) => ({ ...b, weight: weights[j] }));
      confirmApply(`Move the split of rule ${i}: ${refs.map((b, j) => `${b.name} ${weights[j]}`).join(", ")}.`, copy, generation);
    } }, "apply weights…"));
  });
  return box;
}

function edgeOps(e) {
  const src = state.graph.nodes.find((x) => x.id === e.source), dst = state.graph.nodes.find((x) => x.id === e.destination);
  const principal = e.principals && e.principals.source;
  if (!dst || dst.kind !== "workload") return [];
  const out = [h("h3", {}, "calls")];
  if (!principal) {
    out.push(h("p", {}, "The caller has no identity (plaintext, no client certificate): deny by identity is not possible; set mTLS STRICT on the callee to refuse it."));
    return out;
  }
  const name = `deny-${(src && (src.app || src.workload)) || "caller"}`.replace(/[^a-z0-9-]/g, "-").slice(0, 60);
  const obj = {
    apiVersion: "meshgate.io/v1alpha1", kind: "AuthorizationPolicy",
    metadata: { name, namespace: dst.namespace },
    spec: { selector: { matchLabels: { app: dst.app || dst.workload } }, action: "DENY", rules: [{ from: [{ source: { principals: [principal.replace(/^spiffe:\/\//, "")] } }] }] },
  };
  out.push(h("div", { class: "op" },
    h("button", { type: "button", onclick: () => confirmApply(`Deny calls from ${nodeName(e.source)} to ${nodeName(e.destination)}.`, obj) }, "deny these calls…"), " ",
    h("button", { type: "button", onclick: () => confirmApply(`Allow them again: remove AuthorizationPolicy ${dst.namespace}/${name}.`, obj, undefined, true) }, "allow again…")));
  return out;
}

// ---- start --------------------------------------------------------------------------------
async function main() {
  try {
    const s = await api("GET", "/api/v1/ui/session");
    state.csrf = s.csrf;
  } catch (err) {
    $("live").textContent = `not signed in: ${err.message}`;
    return;
  }
  $("window").addEventListener("change", (ev) => { state.window = ev.target.value; connect(); });
  $("mesh-mtls").addEventListener("click", () => {
    const panel = $("panel");
    panel.replaceChildren(h("h2", {}, "mesh-wide mTLS"), ...mtlsOps({ kind: "mesh", namespace: "meshgate-system", workload: "mesh" }).slice(1));
    state.selected = null;
  });
  connect();
  setInterval(() => {
    if (state.lastEvent && Date.now() - state.lastEvent > 5000) { $("live").textContent = "no update for 5 s"; $("live").classList.add("stale"); }
  }, 1000);
}
window.meshgate = { state, render, layout };
main();
