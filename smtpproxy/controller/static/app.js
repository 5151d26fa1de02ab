/* smtpproxy's web interface: one page over the controller's API.
 *
 * Rules this file keeps:
 * - message text (subjects, senders, symbol options) is written with
 *   textContent only, never parsed as HTML (the server's CSP forbids inline
 *   script too, as a second line);
 * - the password travels in the Password header, as rspamd's web interface
 *   sends it, and is kept in sessionStorage at most (gone with the tab);
 * - requests that change state are POSTs to this same origin (the
 *   controller refuses anything else).
 */
"use strict";

const KEY = "smtpproxy.password";
const ACTIONS = ["reject", "soft reject", "rewrite subject", "add header", "greylist", "no action"];
const COLORS = {
  "reject": "#c62828", "soft reject": "#ef6c00", "rewrite subject": "#8e24aa",
  "add header": "#f9a825", "greylist": "#546e7a", "no action": "#2e7d32",
};
const state = { password: null, readOnly: true, view: "status", descriptions: null, rows: [] };

// ------------------------------------------------------------------ helpers

function $(id) { return document.getElementById(id); }

/* el("td", {class: "num"}, "text", child): attributes set one by one,
 * strings become text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function setText(id, text) { $(id).textContent = text; }

function notice(text, kind) {
  const n = $("notice");
  n.textContent = text || "";
  n.className = "notice" + (kind ? " " + kind : "");
}

function pad(n) { return String(n).padStart(2, "0"); }

function when(unix) {
  const d = new Date(unix * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? `${d} d ` : "") + `${h} h ${m} min`;
}

function score(x) { return (Math.round(x * 100) / 100).toFixed(2); }

class ApiError extends Error {
  constructor(status, text) { super(text); this.status = status; }
}

async function api(path, options) {
  const opts = options || {};
  const headers = {};
  if (state.password !== null) headers["Password"] = state.password;
  let body = opts.body;
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json);
    headers["Content-Type"] = "application/json";
  }
  Object.assign(headers, opts.headers || {});
  const response = await fetch(path, {
    method: opts.method || (body === undefined ? "GET" : "POST"),
    headers, body, credentials: "omit", cache: "no-store",
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 208) return { already: true, error: data && data.error };
  if (!response.ok) {
    const text = (data && data.error) || response.statusText || `HTTP ${response.status}`;
    if (response.status === 403 && path !== "/auth" && state.password !== null &&
        /password/.test(text) && !/enable password/.test(text)) logout("Please log in again.");
    throw new ApiError(response.status, text);
  }
  return data;
}

function failed(err) { notice(err.message || String(err), "error"); }

// ------------------------------------------------------------------ login

async function login(password) {
  state.password = password;
  const auth = await api("/auth");
  state.readOnly = !!auth.read_only;
  if (password !== null) sessionStorage.setItem(KEY, password);
  setText("who-host", auth.hostname || "");
  setText("who-mode", state.readOnly ? "read-only" : "read and write");
  document.body.classList.toggle("read-only", state.readOnly);
  $("view-login").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  notice("");
  show(location.hash.replace("#", "") || "status");
}

function logout(text) {
  state.password = null;
  sessionStorage.removeItem(KEY);
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("view-login").hidden = false;
  $("password").value = "";
  $("password").focus();
  notice(text || "", text ? "error" : "");
}

// ------------------------------------------------------------------ views

const LOADERS = { status: loadStatus, history: loadHistory, scan: () => {}, symbols: loadSymbols };

function show(view) {
  if (!(view in LOADERS)) view = "status";
  state.view = view;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + view;
  for (const b of document.querySelectorAll("#nav button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
  Promise.resolve(LOADERS[view]()).catch(failed);
}

// ------------------------------------------------------------------ status

async function loadStatus() {
  const [stat, health, graph] = await Promise.all([
    api("/stat"), api("/health").catch((e) => ({ error: e.message })), api("/graph?type=daily")]);
  setText("st-host", $("who-host").textContent || "—");
  setText("st-version", stat.version);
  setText("st-uptime", duration(stat.uptime));
  setText("st-scanned", String(stat.scanned));
  const learned = {};
  for (const f of stat.statfiles) learned[f.symbol] = f.revision;
  setText("st-learned-spam", String(learned.BAYES_SPAM || 0));
  setText("st-learned-ham", String(learned.BAYES_HAM || 0));
  for (const [id, part] of [["st-store", "store"], ["st-dns", "dns"]]) {
    const h = health[part];
    const dd = $(id);
    dd.replaceChildren();
    if (!h) { dd.append(el("span", { class: "bad" }, health.error || "unknown")); continue; }
    const where = part === "store" ? h.backend : h.nameserver;
    dd.append(h.ok ? el("span", { class: "good" }, `OK, ${h.ms} ms`)
                   : el("span", { class: "bad" }, `failing: ${h.error}`), ` (${where})`);
  }
  const tbody = $("st-actions").tBodies[0];
  tbody.replaceChildren(...ACTIONS.map((a) => el("tr", {},
    el("th", { scope: "row" }, el("span", { class: "swatch", "data-action": a }), a),
    el("td", { class: "num" }, String((health.day || {})[a] || 0)),
    el("td", { class: "num" }, String(stat.actions[a] || 0)))));
  drawGraph(graph);
}

function drawGraph(series) {
  const W = 720, H = 220, L = 44, R = 8, T = 10, B = 26;
  const box = $("graph");
  const points = series[0] || [];
  const n = points.length;
  // Stacked: each action's rate on top of the ones before it in ACTIONS order.
  const totals = new Array(n).fill(0);
  for (const s of series) s.forEach((p, i) => { totals[i] += p.y; });
  const max = Math.max(1, ...totals);
  const top = niceCeil(max);
  const x = (i) => L + (W - L - R) * (n > 1 ? i / (n - 1) : 0);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart",
    "aria-labelledby": "graph-title graph-summary" });
  const sum = totals.reduce((a, b) => a + b, 0) * 5;
  const desc = svg("desc", { id: "graph-summary" });
  desc.textContent = `About ${Math.round(sum)} messages in the last 24 hours; peak ${score(max)} per minute.`;
  root.append(desc);
  for (let k = 0; k <= 4; k++) {
    const v = top * k / 4;
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    const label = svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = v >= 10 ? String(Math.round(v)) : v.toFixed(1);
    root.append(label);
  }
  for (let i = 0; i < n; i += Math.max(1, Math.floor(n / 6))) {
    const label = svg("text", { x: x(i), y: H - 8, "text-anchor": "middle", class: "axis" });
    const d = new Date(points[i].x * 1000);
    label.textContent = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    root.append(label);
  }
  const base = new Array(n).fill(0);
  const legend = $("graph-legend");
  legend.replaceChildren();
  series.forEach((s, k) => {
    const action = ACTIONS[k];
    if (!s.some((p) => p.y > 0)) return;
    const upper = s.map((p, i) => base[i] + p.y);
    let d = `M ${x(0)} ${y(upper[0])}`;
    for (let i = 1; i < n; i++) d += ` L ${x(i)} ${y(upper[i])}`;
    for (let i = n - 1; i >= 0; i--) d += ` L ${x(i)} ${y(base[i])}`;
    root.append(svg("path", { d: d + " Z", fill: COLORS[action], "fill-opacity": 0.75,
      stroke: COLORS[action], "stroke-width": 1 }));
    upper.forEach((v, i) => { base[i] = v; });
    legend.append(el("span", { class: "key" }, el("span", { class: "swatch", "data-action": action }), action));
  });
  if (!legend.childNodes.length) legend.append("No messages in the last 24 hours.");
  box.replaceChildren(root);
}

function niceCeil(v) {
  const e = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * e) return m * e;
  return 10 * e;
}

// ------------------------------------------------------------------ symbols' descriptions

async function descriptions() {
  if (state.descriptions === null) {
    const map = {};
    try {
      for (const g of await api("/symbols")) for (const r of g.rules) map[r.symbol] = r;
    } catch (e) { /* scanning off: rows still show, without descriptions */ }
    state.descriptions = map;
  }
  return state.descriptions;
}

/* The detail of one message as history and scan both show it. `symbols` is
 * {NAME: {score, options, description?}}. */
function detailView(target, title, facts, symbols, learn) {
  const names = Object.keys(symbols).sort((a, b) =>
    Math.abs(symbols[b].score) - Math.abs(symbols[a].score) || a.localeCompare(b));
  const titleId = target.id === "scan-result" ? "sr-title" : "hd-title";
  const rows = names.map((name) => {
    const s = symbols[name];
    const d = (state.descriptions || {})[name];
    return el("tr", { class: s.score > 0 ? "pos" : s.score < 0 ? "neg" : "" },
      el("th", { scope: "row" }, el("code", {}, name)),
      el("td", { class: "num" }, score(s.score)),
      el("td", { class: "options" }, (s.options || []).join(", ")),
      el("td", {}, s.description || (d && d.description) || ""));
  });
  const parts = [
    el("div", { class: "bar" }, el("h3", { id: titleId }, title),
      el("button", { type: "button", class: "close", onclick: () => { target.hidden = true; } }, "Close")),
    el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
  ];
  if (learn) parts.push(learn);
  parts.push(el("div", { class: "table-wrap" }, el("table", { class: "symbols" },
    el("caption", {}, `${names.length} symbols`),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Symbol"), el("th", { scope: "col", class: "num" }, "Score"),
      el("th", { scope: "col" }, "Options"), el("th", { scope: "col" }, "Description"))),
    el("tbody", {}, rows))));
  target.replaceChildren(...parts);
  target.hidden = false;
  target.focus();
}

function learnButtons(learn, note) {
  if (state.readOnly) {
    return el("p", { class: "hint" }, "Learning needs the enable password.");
  }
  const out = el("p", { class: "learn-result", role: "status" });
  const go = (cls) => async (ev) => {
    const buttons = ev.target.parentNode.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const r = await learn(cls);
      out.textContent = r && r.already ? (r.error || `Already learned as ${cls}.`) : `Learned as ${cls}.`;
      out.className = "learn-result good";
    } catch (e) {
      out.textContent = e.message;
      out.className = "learn-result bad";
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  return el("div", { class: "learn" },
    el("button", { type: "button", class: "learn-spam", onclick: go("spam") }, "Learn as spam"),
    el("button", { type: "button", class: "learn-ham", onclick: go("ham") }, "Learn as ham"),
    note ? el("span", { class: "hint" }, note) : null, out);
}

// ------------------------------------------------------------------ history

async function loadHistory() {
  const f = {
    q: $("hf-q").value, action: $("hf-action").value, from: $("hf-from").value,
    rcpt: $("hf-rcpt").value, limit: Number($("hf-limit").value),
  };
  const [data] = await Promise.all([api("/history", { json: f }), descriptions()]);
  state.rows = data.rows;
  const tbody = $("history-table").tBodies[0];
  tbody.replaceChildren(...data.rows.map((row, i) => el("tr", { "data-action": row.action },
    el("td", { class: "time" }, when(row.unix_time)),
    el("td", { class: "addr" }, row.sender_smtp || row.sender_mime || "<>"),
    el("td", { class: "addr" }, (row.rcpt_smtp || []).join(", ")),
    el("td", { class: "subject" }, el("button", { type: "button", class: "open-row link",
      "data-index": i, onclick: () => openRow(i) }, row.subject || "(no subject)")),
    el("td", { class: "num" }, score(row.score)),
    el("td", {}, el("span", { class: "action", "data-action": row.action }, row.action)))));
  setText("history-count", data.rows.length ? `${data.rows.length} messages, newest first.`
    : "No messages match.");
}

// One policy daemon decision of a row: "bob@example.net: greylist passed, delayed 300 s".
function policyText(p) {
  const parts = [];
  if (p.whitelisted) parts.push(`whitelisted (${p.whitelisted})`);
  if (p.greylist) {
    let g = `greylist ${p.greylist}`;
    if (p.delayed_s !== undefined) g += `, delayed ${p.delayed_s} s`;
    else if (p.wait_s !== undefined) g += `, wait ${p.wait_s} s`;
    parts.push(g);
  }
  if (p.ratelimit) parts.push(`rate limit ${p.ratelimit}: ${p.action || ""}`);
  return `${p.rcpt}: ${parts.join(", ") || "—"}`;
}

function openRow(i) {
  const row = state.rows[i];
  const facts = [
    ["Time", when(row.unix_time)], ["Host", row.host], ["Client", `${row.client_name || "unknown"} [${row.ip}] HELO ${row.helo}`],
    ["Envelope sender", row.sender_smtp || "<>"], ["Recipients", (row.rcpt_smtp || []).join(", ")],
    ["From", row.sender_mime], ["Subject", row.subject], ["Message-ID", row["message-id"]],
    ["Size", `${row.size} bytes`], ["Score", `${score(row.score)} / ${score(row.required_score)}`],
    ["Action", row.action], ["Reply", row.reply], ["Queue id", row.qid || "—"],
    ["Reference", row.ref || "—"], ["Scan time", `${Math.round(row.time_real * 1000)} ms`],
  ];
  if ((row.policy || []).length) facts.push(["Policy", row.policy.map(policyText).join("; ")]);
  const learn = row.kept
    ? learnButtons((cls) => api("/learnhistory", { json: { seq: row.seq, class: cls } }))
    : el("p", { class: "hint" }, "This host no longer keeps this message: learn it from the mailbox, or paste it under Scan.");
  detailView($("history-detail"), row.subject || "(no subject)", facts, row.symbols || {}, learn);
}

// ------------------------------------------------------------------ scan

async function scanMessage() {
  let raw = $("scan-text").value;
  const file = $("scan-file").files[0];
  if (file) raw = await file.arrayBuffer();
  if (!(raw.byteLength || raw.length)) { notice("Paste a message or choose a file.", "error"); return; }
  const headers = {};
  for (const [id, name] of [["scan-ip", "IP"], ["scan-helo", "Helo"], ["scan-from", "From"]]) {
    if ($(id).value.trim()) headers[name] = $(id).value.trim();
  }
  const rcpts = $("scan-rcpt").value.split(",").map((r) => r.trim()).filter(Boolean);
  if (rcpts.length) headers["Rcpt"] = rcpts.join(", ");
  await descriptions();
  const r = await api("/checkv2", { body: raw, headers });
  notice("");
  const facts = [["Score", `${score(r.score)} / ${score(r.required_score)}`], ["Action", r.action],
    ["Message-ID", r["message-id"] || "—"], ["Scan time", `${Math.round(r.time_real * 1000)} ms`]];
  for (const [k, v] of Object.entries(r.messages || {})) facts.push([k, String(v)]);
  const learn = learnButtons((cls) => api(cls === "spam" ? "/learnspam" : "/learnham", { body: raw }));
  detailView($("scan-result"), "Result", facts, r.symbols || {}, learn);
}

// ------------------------------------------------------------------ symbols

let symbolGroups = null;

async function loadSymbols() {
  if (symbolGroups === null) symbolGroups = await api("/symbols");
  const q = $("sy-q").value.trim().toLowerCase();
  const list = $("symbols-list");
  list.replaceChildren();
  for (const g of symbolGroups) {
    const rules = g.rules.filter((r) => !q || r.symbol.toLowerCase().includes(q) ||
      (r.description || "").toLowerCase().includes(q) || g.group.toLowerCase().includes(q));
    if (!rules.length) continue;
    const body = rules.map((r) => el("tr", { class: r.weight > 0 ? "pos" : r.weight < 0 ? "neg" : "" },
      el("th", { scope: "row" }, el("code", {}, r.symbol)),
      el("td", { class: "num" }, r.force_action ? `${score(r.weight)} (${r.force_action})` : score(r.weight)),
      el("td", {}, r.description || "")));
    const head = el("tr", {}, el("th", { scope: "col" }, "Symbol"),
      el("th", { scope: "col", class: "num" }, "Score"), el("th", { scope: "col" }, "Description"));
    const table = el("table", { class: "symbols" }, el("thead", {}, head), el("tbody", {}, body));
    list.append(el("section", { class: "card wide" },
      el("h3", {}, `${g.group} (${rules.length})`), el("div", { class: "table-wrap" }, table)));
  }
  if (!list.childNodes.length) list.append(el("p", { class: "hint" }, "No symbol matches."));
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  for (const a of ACTIONS) $("hf-action").append(el("option", { value: a }, a));
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    login($("password").value).catch((e) => {
      state.password = null;
      notice(e.status === 403 ? "Wrong password." : e.message, "error");
      $("password").select();
    });
  });
  $("logout").addEventListener("click", () => logout());
  for (const b of document.querySelectorAll("#nav button")) {
    b.addEventListener("click", () => show(b.dataset.view));
  }
  $("status-refresh").addEventListener("click", () => loadStatus().catch(failed));
  $("history-refresh").addEventListener("click", () => loadHistory().catch(failed));
  $("history-filter").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory().catch(failed); });
  $("scan-form").addEventListener("submit", (ev) => { ev.preventDefault(); scanMessage().catch(failed); });
  $("symbols-filter").addEventListener("submit", (ev) => ev.preventDefault());
  $("sy-q").addEventListener("input", () => loadSymbols().catch(failed));
  const saved = sessionStorage.getItem(KEY);
  if (saved !== null) {
    login(saved).catch(() => logout());
  } else {
    // Reads may be open (no controller.password): try without one.
    login(null).catch(() => logout());
  }
});
