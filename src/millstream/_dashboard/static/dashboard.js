// millstream dashboard: reads /api/job once, then a snapshot per server-sent event.
// Plain DOM and SVG; no framework, nothing from the network but this server.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const HISTORY = 600; // chart points kept (about 10 minutes at one per second)
  const CHART_SERIES = 6;
  const COLORS = ["#2f6fbd", "#d1495b", "#2a9d8f", "#e9a23b", "#7b5ea7", "#5c8001"];
  const NODE_W = 184, NODE_H = 62, COL_W = 236, ROW_H = 84, PAD = 16, BAND_GAP = 36;

  const state = { job: null, last: null, updates: 0, history: [], lastT: 0, status: "unknown", busy: false };
  const $ = (id) => document.getElementById(id);

  // -- small helpers ----------------------------------------------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  function fmtInt(v) { return isNum(v) ? Math.round(v).toLocaleString("en-US") : "–"; }
  function fmtRate(v) {
    if (!isNum(v)) return "–";
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return v >= 10 ? v.toFixed(0) : v.toFixed(1);
  }
  function fmtPct(v) { return isNum(v) ? Math.round(v * 100) + "%" : "–"; }
  function fmtSeconds(v) {
    if (!isNum(v)) return "–";
    const a = Math.abs(v);
    if (a < 1) return (v * 1000).toFixed(a < 0.01 ? 2 : 0) + " ms";
    if (a < 120) return v.toFixed(1) + " s";
    if (a < 7200) return (v / 60).toFixed(1) + " min";
    if (a < 172800) return (v / 3600).toFixed(1) + " h";
    return (v / 86400).toFixed(1) + " d";
  }
  function fmtBytes(v) {
    if (!isNum(v)) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
  }
  function fmtTime(ms) {
    if (!isNum(ms)) return "–";
    return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
  }
  function short(text, n) { return text.length > n ? text.slice(0, n - 1) + "…" : text; }
  function sum(values) { return values.reduce((a, b) => a + (isNum(b) ? b : 0), 0); }
  function maxOf(values) {
    const xs = values.filter(isNum);
    return xs.length ? Math.max(...xs) : null;
  }

  // busy 0..1 -> grey-blue (idle) through amber to red (busy), as Flink's web UI colours vertices
  function busyColor(b) {
    if (!isNum(b)) return "hsl(215 15% 80%)";
    const t = Math.max(0, Math.min(1, b));
    const lerp = (a, c, f) => a + (c - a) * f;
    let h, s, l;
    if (t < 0.5) { const f = t / 0.5; h = lerp(215, 40, f); s = lerp(22, 80, f); l = lerp(64, 58, f); }
    else { const f = (t - 0.5) / 0.5; h = lerp(40, 0, f); s = lerp(80, 78, f); l = lerp(58, 50, f); }
    return `hsl(${h.toFixed(0)} ${s.toFixed(0)}% ${l.toFixed(0)}%)`;
  }

  function problem(text) {
    const p = $("problem");
    p.textContent = text || "";
    p.hidden = !text;
  }

  // -- the figures of a plan node (summed over workers; a fused chain reports under its last step)
  function nodeFigures(snap, name) {
    const own = snap.steps.filter((s) => s.step === name);
    const rows = own.length ? own : snap.steps.filter((s) => (s.fused || []).includes(name));
    if (!rows.length) return null;
    return {
      chainedInto: own.length ? null : rows[0].step,
      inRate: sum(rows.map((s) => s.records_in_per_s)),
      outRate: sum(rows.map((s) => s.records_out_per_s)),
      busy: maxOf(rows.map((s) => s.busy)),
      bp: maxOf(rows.map((s) => s.backpressured)),
      ended: rows.every((s) => s.ended),
    };
  }

  // -- the graph --------------------------------------------------------------------------
  // Columns are topological depths, left to right. A plan deeper than the page is wide continues in a
  // band below (edges between bands run through the gap), so that the text never shrinks unreadably.
  function layout(graph, avail) {
    const perBand = Math.max(2, Math.floor((avail - 2 * PAD + (COL_W - NODE_W)) / COL_W));
    const bands = Math.ceil(graph.depth / perBand);
    const bandRows = new Array(bands).fill(0);
    for (const n of graph.nodes) {
      const b = Math.floor(n.depth / perBand);
      bandRows[b] = Math.max(bandRows[b], n.row + 1);
    }
    const bandTop = [];
    let y = PAD;
    for (let b = 0; b < bands; b += 1) { bandTop.push(y); y += bandRows[b] * ROW_H + BAND_GAP; }
    const pos = {};
    for (const n of graph.nodes) {
      const b = Math.floor(n.depth / perBand);
      pos[n.id] = { x: PAD + (n.depth % perBand) * COL_W, y: bandTop[b] + n.row * ROW_H, band: b, node: n };
    }
    const cols = Math.min(perBand, graph.depth);
    return { pos, bandTop, bandRows, width: cols * COL_W - (COL_W - NODE_W) + 2 * PAD,
      height: y - BAND_GAP - (ROW_H - NODE_H) + PAD };
  }

  function edgePath(a, b, lay) {
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 2, y2 = b.y + NODE_H / 2;
    if (a.band === b.band && x2 > x1) {
      const mx = (x1 + x2) / 2;
      return { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, lx: mx, ly: (y1 + y2) / 2 - 4 };
    }
    // into a later band: out to the right, down into the gap above the target's band, back to its left
    const gapY = lay.bandTop[b.band] - BAND_GAP / 2;
    const right = x1 + 14, left = b.x - 16;
    return { d: `M${x1},${y1} H${right} V${gapY} H${left} V${y2} H${x2}`, lx: (right + left) / 2, ly: gapY - 4 };
  }

  function drawGraph(graph) {
    const g = $("graph");
    g.replaceChildren();
    const box = g.parentElement;
    const lay = layout(graph, Math.max(600, box ? box.clientWidth : 1200));
    g.setAttribute("viewBox", `0 0 ${lay.width} ${lay.height}`);
    g.setAttribute("width", lay.width);
    g.setAttribute("height", lay.height);
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }));
    defs.append(marker);
    g.append(defs);
    const pos = lay.pos;
    const edges = svg("g", { class: "edges" });
    const labels = svg("g", { class: "edge-labels" });
    for (const e of graph.edges) {
      const a = pos[e.from], b = pos[e.to];
      const p = edgePath(a, b, lay);
      const late = b.node.kind === "late";
      edges.append(svg("path", { d: p.d, class: "edge" + (late ? " late" : ""), "marker-end": "url(#arrow)",
        "data-from": a.node.name, "data-to": b.node.name }));
      labels.append(svg("text", { class: "edge-label", x: p.lx, y: p.ly, "text-anchor": "middle",
        "data-from": a.node.name }, ""));
    }
    g.append(edges);
    for (const n of graph.nodes) {
      const p = pos[n.id];
      const node = svg("g", { class: "node", transform: `translate(${p.x},${p.y})`, "data-step": n.name,
        tabindex: 0, role: "img", "aria-label": `${n.name} (${n.kind})` });
      const title = svg("title", {}, `${n.name} — ${n.kind}${n.detail ? "\n" + n.detail : ""}` +
        `${n.location ? "\ndefined at " + n.location : ""}`);
      node.append(title);
      node.append(svg("rect", { class: "box", width: NODE_W, height: NODE_H, rx: 7, fill: busyColor(null) }));
      node.append(svg("text", { class: "name", x: 10, y: 18 }, short(n.name, 22)));
      node.append(svg("text", { class: "kind", x: 10, y: 34 }, short(n.kind + (n.detail ? ": " + n.detail : ""), 26)));
      node.append(svg("text", { class: "figures", x: 10, y: 52 }, "–"));
      node.append(svg("text", { class: "badge", x: NODE_W - 8, y: 16, "text-anchor": "end" }, ""));
      g.append(node);
    }
    g.append(labels);
    if (state.last) updateGraph(state.last);
  }

  function updateGraph(snap) {
    const g = $("graph");
    for (const node of g.querySelectorAll(".node")) {
      const name = node.getAttribute("data-step");
      const f = nodeFigures(snap, name);
      const rect = node.querySelector("rect.box");
      const figs = node.querySelector("text.figures");
      const badge = node.querySelector("text.badge");
      if (!f) { figs.textContent = "no figures"; continue; }
      const fill = busyColor(f.busy);
      rect.setAttribute("fill", fill);
      const dark = isNum(f.busy) && f.busy > 0.62;
      for (const t of node.querySelectorAll("text")) t.setAttribute("fill", dark ? "#ffffff" : "#141a24");
      const bp = isNum(f.bp) && f.bp >= 0.5;
      node.classList.toggle("bp", bp);
      badge.textContent = bp ? "BP" : (f.ended ? "ended" : "");
      figs.textContent = f.chainedInto
        ? `→ chain of ${short(f.chainedInto, 13)} · ${fmtPct(f.busy)}`
        : `busy ${fmtPct(f.busy)} · bp ${fmtPct(f.bp)} · ${fmtRate(f.inRate)}/s`;
      node.setAttribute("aria-label", `${name}: busy ${fmtPct(f.busy)}, backpressured ${fmtPct(f.bp)}, ` +
        `${fmtRate(f.inRate)} records/s in` + (bp ? ", backpressured" : ""));
    }
    for (const label of g.querySelectorAll(".edge-label")) {
      const f = nodeFigures(snap, label.getAttribute("data-from"));
      label.textContent = f && !f.chainedInto ? fmtRate(f.outRate) + "/s" : "";
    }
  }

  // -- tables and lists -------------------------------------------------------------------
  function cell(text, cls) { return el("td", cls ? { class: cls } : {}, text); }

  function updateSteps(snap) {
    const body = $("steps").querySelector("tbody");
    const rows = [];
    for (const s of snap.steps) {
      const tr = el("tr", { "data-step": s.step, "data-worker": s.worker });
      const th = el("th", { scope: "row" }, s.step);
      if (s.fused && s.fused.length > 1) th.title = "fused chain: " + s.fused.join(" → ");
      tr.append(th, cell(s.kind), cell(s.worker));
      tr.append(cell(fmtInt(s.records_in), "num records-in"), cell(fmtRate(s.records_in_per_s), "num"));
      tr.append(cell(fmtInt(s.records_out), "num records-out"), cell(fmtRate(s.records_out_per_s), "num"));
      tr.append(cell(fmtPct(s.busy), "num" + (s.busy >= 0.8 ? " hot" : "")));
      tr.append(cell(fmtPct(s.backpressured), "num" + (s.backpressured >= 0.5 ? " hot" : "")));
      tr.append(cell(s.ended ? "ended (+∞)" : fmtTime(s.watermark_ms)), cell(fmtSeconds(s.watermark_lag_s), "num"));
      tr.append(cell(fmtInt(s.late), "num"), cell(fmtInt(s.skipped), "num"), cell(fmtInt(s.dead_lettered), "num"));
      const lat = s.ingestion_latency_s;
      const latCell = cell(lat ? fmtSeconds(lat.p95) : "–", "num");
      if (s.event_latency_s) latCell.title = "event-time latency p95: " + fmtSeconds(s.event_latency_s.p95);
      tr.append(latCell);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function summaryItem(label, value) {
    const d = el("div");
    d.append(el("dt", {}, label), el("dd", {}, value));
    return d;
  }

  function updateSummary(snap) {
    const read = sum(snap.steps.filter((s) => s.role === "source").map((s) => s.records_out));
    const written = sum(snap.steps.filter((s) => s.role === "sink").map((s) => s.records_in));
    const inRate = sum(snap.steps.filter((s) => s.role === "source").map((s) => s.records_out_per_s));
    const t = snap.totals || {};
    $("summary").replaceChildren(
      summaryItem("uptime", fmtSeconds(snap.uptime_s)),
      summaryItem("records read", fmtInt(read)),
      summaryItem("read per second", fmtRate(inRate)),
      summaryItem("records written", fmtInt(written)),
      summaryItem("late", fmtInt(t.late)),
      summaryItem("skipped", fmtInt(t.skipped)),
      summaryItem("dead-lettered", fmtInt(t.dead_lettered)),
      summaryItem("restarts", fmtInt(snap.restarts)),
      summaryItem("checkpoints", fmtInt(snap.checkpoints ? snap.checkpoints.completed : 0)),
      summaryItem("state", snap.state_bytes === null ? "–" : fmtBytes(snap.state_bytes)),
    );
  }

  function updateCheckpoints(snap) {
    const ck = snap.checkpoints;
    const body = $("checkpoints").querySelector("tbody");
    if (!ck) { $("ck-summary").textContent = "no checkpoints in this run"; body.replaceChildren(); return; }
    const parts = [`${fmtInt(ck.completed)} completed`];
    if (ck.last_id !== null) {
      parts.push(`latest #${ck.last_id}: ${fmtSeconds(ck.last_duration_s)}, ${fmtBytes(ck.last_size_bytes)}`);
      parts.push(`longest ${fmtSeconds(ck.max_duration_s)}`);
      parts.push(`alignment ${fmtSeconds(ck.last_alignment_s)}`);
    }
    if (ck.restored_from !== null) parts.push(`resumed from #${ck.restored_from}`);
    $("ck-summary").textContent = parts.join(" · ");
    const rows = ck.history.slice(-20).reverse().map((h) => {
      const tr = el("tr");
      tr.append(cell("#" + h.id, "num"), cell(fmtSeconds(h.duration_s), "num"), cell(fmtBytes(h.size_bytes), "num"),
        cell(h.finished ? "final" : ""));
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function updateMessages(snap) {
    $("restarts").textContent = snap.restarts
      ? `${snap.restarts} restart${snap.restarts === 1 ? "" : "s"} from the latest checkpoint after a failure`
      : "no restarts";
    const items = (snap.messages || []).slice().reverse().map((m) => {
      const li = el("li", { class: m.level });
      li.append(el("span", { class: "level" }, m.level.toLowerCase()),
        el("time", { datetime: new Date(m.time * 1000).toISOString() }, new Date(m.time * 1000).toLocaleTimeString()),
        document.createTextNode(" " + m.message));
      return li;
    });
    if (!items.length) items.push(el("li", { class: "muted" }, "no warnings or errors"));
    $("messages").replaceChildren(...items);
  }

  function showConfig(config) {
    const dl = $("config");
    const items = [];
    for (const [k, v] of Object.entries(config)) {
      const text = v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v);
      items.push(el("dt", {}, k), el("dd", {}, text));
    }
    if (!items.length) items.push(el("dt", {}, "–"), el("dd", {}, "no configuration given"));
    dl.replaceChildren(...items);
  }

  // -- status and control -----------------------------------------------------------------
  function setStatus(status, savepoint) {
    state.status = status;
    const s = $("status");
    s.textContent = status + (savepoint ? ` · savepoint: ${savepoint}` : "");
    s.className = "status status-" + status;
    document.body.dataset.status = status;
    const job = state.job;
    const enabled = Boolean(job && job.control) && status === "running" && !state.busy;
    $("stop").disabled = !enabled;
    $("stop-savepoint").disabled = !enabled;
    if (job && !job.control) $("control-note").textContent = job.control_reason || "";
  }

  async function stop(savepoint) {
    state.busy = true;
    setStatus(state.status);
    $("control-note").textContent = savepoint ? "stopping with a savepoint…" : "stopping…";
    try {
      const r = await fetch("/api/stop", {
        method: "POST", credentials: "same-origin", cache: "no-store",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ savepoint }),
      });
      const body = await r.json().catch(() => ({}));
      $("control-note").textContent = r.ok ? `stop requested (${body.status || "stopping"})`
        : `refused: ${body.error || r.status}`;
      if (r.ok) setStatus(body.status || "stopping");
    } catch (err) {
      $("control-note").textContent = "the request failed: " + err;
    } finally {
      state.busy = false;
      setStatus(state.status);
    }
  }

  // -- charts -----------------------------------------------------------------------------
  function addPoint(snap) {
    if (snap.taken_at <= state.lastT) return;
    state.lastT = snap.taken_at;
    const lag = {}, rate = {};
    for (const s of snap.steps) {
      const key = s.step + "@" + s.worker;
      if (isNum(s.watermark_lag_s)) lag[key] = s.watermark_lag_s;
      if (s.role === "source") rate[key] = s.records_out_per_s;
      else if (s.role === "sink") rate[key] = s.records_in_per_s;
    }
    state.history.push({ t: snap.taken_at, lag_s: lag, rate });
    if (state.history.length > HISTORY) state.history.splice(0, state.history.length - HISTORY);
  }

  function drawChart(root, field, format) {
    const W = 600, H = 200, L = 56, R = 10, B = 22;
    root.replaceChildren();
    const hist = state.history;
    const keys = [];
    for (const p of hist) for (const k of Object.keys(p[field] || {})) if (!keys.includes(k)) keys.push(k);
    // sources and sinks: where a watermark enters and leaves, what comes in and goes out
    const ends = state.last ? new Set(state.last.steps.filter((s) => s.role !== "operator")
      .map((s) => s.step + "@" + s.worker)) : new Set();
    const preferred = keys.filter((k) => ends.has(k));
    const shown = (preferred.length ? preferred : keys).slice(0, CHART_SERIES);
    const points = shown.map((k) => hist.filter((p) => isNum((p[field] || {})[k])).map((p) => [p.t, p[field][k]]));
    const all = points.flat();
    if (all.length < 2) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "waiting for data…"));
      return;
    }
    let lx = L, ly = 6;
    shown.forEach((k, i) => {  // the legend, wrapped: the plot starts below it
      const label = short(k.endsWith("@0") ? k.slice(0, -2) : k, 18);
      const w = 24 + label.length * 6.2;
      if (lx + w > W - R && lx > L) { lx = L; ly += 14; }
      const color = COLORS[i % COLORS.length];
      root.append(svg("rect", { x: lx, y: ly, width: 10, height: 10, fill: color }));
      root.append(svg("text", { x: lx + 14, y: ly + 9 }, label));
      lx += w;
    });
    const T = ly + 22;
    const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
    let lo = Math.min(0, ...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
    if (hi <= lo) hi = lo + 1;
    hi += (hi - lo) * 0.08;
    const x = (t) => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    for (let i = 0; i <= 4; i += 1) {
      const v = lo + ((hi - lo) * i) / 4;
      root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "axis" }));
      root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
    }
    root.append(svg("text", { x: L, y: H - 6 }, `${fmtSeconds(t1 - t0)} ago`));
    root.append(svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now"));
    shown.forEach((k, i) => {
      const pts = points[i];
      if (!pts.length) return;
      const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      root.append(svg("path", { d, class: "series", stroke: COLORS[i % COLORS.length], "data-series": k }));
    });
  }

  // -- the live feed ----------------------------------------------------------------------
  function update(snap) {
    state.updates += 1;
    state.last = snap;
    document.body.dataset.updates = String(state.updates);
    $("mode").textContent = snap.mode ? `${snap.mode} mode` : "";
    setStatus(snap.status, snap.savepoint_path);
    updateGraph(snap);
    updateSteps(snap);
    updateSummary(snap);
    updateCheckpoints(snap);
    updateMessages(snap);
    addPoint(snap);
    drawChart($("lag-chart"), "lag_s", fmtSeconds);
    drawChart($("rate-chart"), "rate", fmtRate);
    $("updated").textContent = new Date(snap.taken_at * 1000).toLocaleTimeString();
  }

  function connect() {
    const es = new EventSource("/api/events");
    es.addEventListener("metrics", (e) => {
      $("connection").textContent = "live";
      problem("");
      try { update(JSON.parse(e.data)); } catch (err) { problem("could not show an update: " + err); }
    });
    es.addEventListener("error", () => {
      const ended = ["finished", "stopped", "failed"].includes(state.status);
      $("connection").textContent = ended ? "the job has ended" : "reconnecting…";
      if (!ended && state.updates) problem("lost the connection to the job; retrying…");
    });
  }

  async function start() {
    $("stop").addEventListener("click", () => stop(false));
    $("stop-savepoint").addEventListener("click", () => stop(true));
    let job;
    try {
      const r = await fetch("/api/job", { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
      job = await r.json();
    } catch (err) {
      problem("could not load the job: " + err.message);
      return;
    }
    state.job = job;
    document.title = `${job.flow} · millstream`;
    $("flow-name").textContent = job.flow;
    drawGraph(job.graph);
    showConfig(job.config);
    for (const p of job.history || []) {
      if (p.t > state.lastT) { state.history.push(p); state.lastT = p.t; }
    }
    setStatus(job.status, job.savepoint_path);
    document.body.dataset.ready = "1";
    connect();
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (state.job) drawGraph(state.job.graph); }, 150);
  });

  document.addEventListener("DOMContentLoaded", start);
})();
