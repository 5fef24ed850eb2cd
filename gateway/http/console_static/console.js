// WS-Hub console. Plain modern JavaScript, no framework, no build step.
//
// It polls /console/api/state once a second. The server returns cumulative counters; rates and
// the last minutes of history are computed here, so the server keeps no time series.
// Everything that comes from clients (usernames, payloads) is rendered with textContent only.

const POLL_MS = 1000;
const HISTORY_SECONDS = 300;
const MIN_SPAN_SECONDS = 60; // charts show at least this much, growing to HISTORY_SECONDS
const RATE_WINDOW_SECONDS = 5; // rates in the tables and tiles: averaged over this
const LOG_LIMIT = 500;
const TOKEN_KEY = "wshub.console.token";
const PALETTE = ["#2463eb", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#c2255c",
  "#5c7cfa", "#74b816", "#868e96"];

const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let authOn = false;
let viewer = null;
let history = []; // snapshots: {t, uptime, active, events: {name: total}, refused: {...}, errors, rateLimited}
let pollTimer = null;
let lastState = null;
let polling = false;
const colours = new Map();

// -- small helpers ---------------------------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function colourOf(name) {
  if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
  return colours.get(name);
}

function formatRate(value) {
  if (!Number.isFinite(value) || value <= 0) return "0";
  return value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString();
}

function formatCount(value) {
  return Math.round(value || 0).toLocaleString();
}

function formatDuration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${seconds % 60} s`;
  return `${seconds} s`;
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString();
}

function sum(values) {
  return Object.values(values || {}).reduce((a, b) => a + b, 0);
}

function replaceRows(tbody, rows, columns, emptyText) {
  if (!rows.length) {
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    const tr = el("tr");
    tr.append(td);
    tbody.replaceChildren(tr);
    return;
  }
  tbody.replaceChildren(...rows);
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      tr.append(cell);
    } else {
      const [text, className] = Array.isArray(cell) ? cell : [cell, ""];
      tr.append(el("td", text, className));
    }
  }
  return tr;
}

// -- authentication --------------------------------------------------------------------------

function showLogin(message) {
  stopPolling();
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("auth-badge").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  clearData();
  $("token-input").focus();
}

function clearData() {
  // Nothing of the last session stays in the page once the token is gone.
  disconnectTryIt();
  history = [];
  lastState = null;
  for (const id of ["events-table", "errors-table", "clients-table", "tls-reloads"]) {
    $(id).querySelector("tbody").replaceChildren();
  }
  $("event-log").replaceChildren();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) return;
  token = value;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  $("login-error").textContent = "Checking…";
  startPolling();
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  showLogin("Signed out.");
});

// -- polling ---------------------------------------------------------------------------------

function startPolling() {
  stopPolling();
  polling = true;
  poll();
}

function stopPolling() {
  polling = false;
  clearTimeout(pollTimer);
}

function pollSoon(delay) {
  clearTimeout(pollTimer);
  if (polling) pollTimer = setTimeout(poll, delay);
}

async function poll() {
  const query = $("client-search").value.trim();
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let response;
  try {
    response = await fetch(`/console/api/state?q=${encodeURIComponent(query)}`, {
      headers,
      cache: "no-store",
    });
  } catch {
    banner("Cannot reach the gateway; retrying.");
    pollSoon(POLL_MS);
    return;
  }
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    const hadToken = Boolean(token);
    if (hadToken) sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    showLogin(hadToken ? `Refused: ${body.error || response.statusText}` : "");
    return;
  }
  if (!response.ok) {
    banner(`The state endpoint answered ${response.status}; retrying.`);
    pollSoon(POLL_MS);
    return;
  }
  const state = await response.json();
  banner(null);
  // Search results must match the box as it is now, not as it was when the request left.
  if (query === $("client-search").value.trim()) {
    render(state);
  }
  pollSoon(POLL_MS);
}

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

// -- rendering -------------------------------------------------------------------------------

function render(state) {
  lastState = state;
  $("login").hidden = true;
  $("console").hidden = false;
  renderHeader(state);
  record(state);
  renderFigures(state);
  renderClients(state);
  renderTls(state.tls);
}

function renderHeader(state) {
  const server = state.server;
  authOn = server.auth;
  viewer = state.viewer;
  $("app-name").textContent = server.app;
  document.title = `${server.app} console`;
  const parts = [`v${server.version}`, server.environment, `${server.backend} store`,
    `up ${formatDuration(server.uptime)}`];
  if (server.draining) parts.push("DRAINING");
  $("server-line").textContent = parts.join(" · ");
  const badge = $("auth-badge");
  badge.hidden = false;
  if (authOn) {
    badge.className = "badge secured";
    badge.textContent = `Admin: ${viewer ? viewer.username : "?"}`;
    $("sign-out").hidden = false;
  } else {
    badge.className = "badge open";
    badge.textContent = "Authentication off: this console is open to anyone who can reach the "
      + "gateway (development default)";
    $("sign-out").hidden = true;
  }
  $("try-token-label").hidden = !authOn;
  $("try-auth-note").hidden = !authOn;
  $("try-username").disabled = authOn;
  if (authOn && viewer) $("try-username").value = viewer.username;
}

function record(state) {
  const last = history[history.length - 1];
  if (last && state.server.uptime < last.uptime) history = []; // the server restarted
  const events = {};
  const refused = {};
  for (const [name, outcomes] of Object.entries(state.events)) {
    events[name] = sum(outcomes);
    refused[name] = events[name] - (outcomes.ok || 0);
  }
  history.push({
    t: state.time,
    uptime: state.server.uptime,
    active: state.connections.active ?? state.connections.local,
    events,
    refused,
    errors: { ...state.errors },
    rateLimited: state.rateLimited,
  });
  const oldest = state.time - HISTORY_SECONDS - RATE_WINDOW_SECONDS;
  while (history.length > 2 && history[0].t < oldest) history.shift();
}

// Per-second rate of a counter between two snapshots; negative (a reset) counts as zero.
function rate(older, newer, pick) {
  const dt = newer.t - older.t;
  if (dt <= 0) return 0;
  return Math.max(0, ((pick(newer) || 0) - (pick(older) || 0)) / dt);
}

function windowStart() {
  const now = history[history.length - 1];
  for (const snap of history) {
    if (now.t - snap.t <= RATE_WINDOW_SECONDS) return snap;
  }
  return now;
}

function rateSeries(pick) {
  const points = [];
  for (let i = 1; i < history.length; i += 1) {
    points.push({ t: history[i].t, v: rate(history[i - 1], history[i], pick) });
  }
  return points;
}

function renderFigures(state) {
  const now = history[history.length - 1];
  const start = windowStart();
  const connections = state.connections;

  $("fig-active").textContent = formatCount(now.active);
  $("fig-active-sub").textContent = connections.total !== undefined
    ? `${formatCount(connections.total)} since start · ${formatCount(connections.local)} on this worker`
    : `${formatCount(connections.local)} on this worker`;
  const eventsTotal = (snap) => sum(snap.events);
  const errorsTotal = (snap) => sum(snap.errors);
  $("fig-events-rate").textContent = formatRate(rate(start, now, eventsTotal));
  $("fig-events-total").textContent = `${formatCount(eventsTotal(now))} in all`;
  $("fig-errors-rate").textContent = formatRate(rate(start, now, errorsTotal));
  $("fig-errors-total").textContent = `${formatCount(errorsTotal(now))} in all`;
  $("fig-rate-limited").textContent = formatCount(now.rateLimited);
  $("fig-rate-limited-sub").textContent =
    `${formatRate(rate(start, now, (s) => s.rateLimited))} per second`;

  const eventNames = Object.keys(now.events).sort();
  const codes = Object.keys(now.errors).sort();
  // A fresh page has seconds of history, not minutes: the time axis grows with it.
  const span = Math.min(HISTORY_SECONDS, Math.max(MIN_SPAN_SECONDS, now.t - history[0].t));
  const axis = { end: now.t, span };
  $("history-span").textContent = spanLabel(span);
  drawChart($("chart-connections"), [{
    name: "active", points: history.map((s) => ({ t: s.t, v: s.active })),
  }], axis);
  drawChart($("chart-events"), eventNames.map((name) => ({
    name, points: rateSeries((s) => s.events[name]),
  })), axis);
  drawChart($("chart-errors"), codes.map((code) => ({
    name: code, points: rateSeries((s) => s.errors[code]),
  })), axis);
  drawChart($("chart-rate-limited"), [{
    name: "rate-limited", points: rateSeries((s) => s.rateLimited),
  }], axis);
  legend($("legend-events"), eventNames);
  legend($("legend-errors"), codes);

  replaceRows($("events-table").querySelector("tbody"), eventNames.map((name) => {
    const tr = row([
      [name, "mono"],
      [formatRate(rate(start, now, (s) => s.events[name])), "num"],
      [formatCount(now.events[name]), "num total"],
      [formatCount(now.refused[name]), "num"],
    ]);
    tr.dataset.event = name;
    return tr;
  }), 4, "No events yet");
  replaceRows($("errors-table").querySelector("tbody"), codes.map((code) => {
    const tr = row([
      [code, "mono"],
      [formatRate(rate(start, now, (s) => s.errors[code])), "num"],
      [formatCount(now.errors[code]), "num total"],
    ]);
    tr.dataset.code = code;
    return tr;
  }), 3, "No errors");
}

function legend(list, names) {
  list.replaceChildren(...names.map((name) => {
    const item = el("li");
    const swatch = el("span", null, "swatch");
    swatch.style.background = colourOf(name); // CSSOM, allowed by the page's CSP
    item.append(swatch, el("span", name));
    return item;
  }));
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function spanLabel(seconds) {
  return seconds >= 60 ? `${+(seconds / 60).toFixed(1)} min` : `${Math.round(seconds)} s`;
}

// A line chart of the last axis.span seconds: x is time (now at the right), y starts at zero.
function drawChart(canvas, series, axis) {
  const { end: now, span } = axis;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const pad = { left: 38, right: 8, top: 8, bottom: 16 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  let max = 0;
  for (const s of series) for (const p of s.points) max = Math.max(max, p.v);
  max = niceCeiling(max);
  const x = (t) => pad.left + plotW * (1 - (now - t) / span);
  const y = (v) => pad.top + plotH * (1 - v / max);

  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.strokeStyle = cssVar("--line");
  ctx.fillStyle = cssVar("--muted");
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of [0, max / 2, max]) {
    ctx.beginPath();
    ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
    ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.fillText(formatAxis(v), pad.left - 4, y(v));
  }
  ctx.textBaseline = "top";
  for (const [seconds, label] of [[span, `-${spanLabel(span)}`], [0, "now"]]) {
    ctx.textAlign = seconds ? "left" : "right";
    ctx.fillText(label, x(now - seconds), height - pad.bottom + 3);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(pad.left, pad.top - 1, plotW, plotH + 2);
  ctx.clip();
  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  for (const s of series) {
    if (!s.points.length) continue;
    ctx.strokeStyle = colourOf(s.name);
    ctx.beginPath();
    s.points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
    ctx.stroke();
  }
  ctx.restore();
}

function niceCeiling(value) {
  if (value <= 1) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * magnitude) return step * magnitude;
  }
  return 10 * magnitude;
}

function formatAxis(value) {
  if (value >= 1000) return `${+(value / 1000).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function renderClients(state) {
  const tbody = $("clients-table").querySelector("tbody");
  if (state.storeError) {
    $("clients-error").hidden = false;
    $("clients-error").textContent = state.storeError;
    return;
  }
  $("clients-error").hidden = true;
  const clients = state.clients;
  const query = $("client-search").value.trim();
  $("clients-count").textContent = query
    ? `(${clients.matched} of ${clients.total} match)`
    : `(${clients.total})`;
  const rows = clients.list.map((client) => {
    const name = el("td");
    if (client.username === null) {
      name.append(el("span", "(no username)", "anonymous"));
    } else {
      const button = el("button", client.username, "linkish");
      button.type = "button";
      button.title = "Use as the try-it target";
      button.addEventListener("click", () => setTarget(client.username));
      name.append(button);
    }
    const connected = new Date(client.connectTime);
    const ago = formatDuration((state.time * 1000 - connected.getTime()) / 1000);
    const tr = row([
      name,
      `${formatTime(client.connectTime)} (${ago} ago)`,
      [client.following, "num"],
      client.transport,
      [client.id, "mono"],
    ]);
    tr.dataset.username = client.username ?? "";
    return tr;
  });
  if (clients.matched > clients.list.length) {
    const more = el("td", `… and ${clients.matched - clients.list.length} more: refine the search`, "empty");
    more.colSpan = 5;
    const tr = el("tr");
    tr.append(more);
    rows.push(tr);
  }
  replaceRows(tbody, rows, 5, query ? "No client matches" : "No clients connected");
}

$("client-search").addEventListener("input", () => pollSoon(150));

// As `openssl x509 -serial` and the gateway's logs print it: upper-case hex, even length.
function serialHex(decimal) {
  const hex = BigInt(decimal).toString(16).toUpperCase();
  return hex.length % 2 ? `0${hex}` : hex;
}

function renderTls(tls) {
  $("tls-off").hidden = Boolean(tls);
  $("tls-on").hidden = !tls;
  if (!tls) return;
  const cert = tls.certificate;
  $("tls-subject").textContent = cert.subject || "(empty)";
  $("tls-sans").textContent = cert.sans.length ? cert.sans.join(", ") : "(none)";
  $("tls-serial").textContent = cert.serial_hex;
  $("tls-not-after").textContent = new Date(cert.not_after).toLocaleString();
  $("tls-days-left").textContent = cert.days_left.toFixed(1);
  $("tls-days-left").className = cert.days_left < tls.expiryWarnDays ? "days-low" : "";
  $("tls-counts").textContent = `${tls.reloadsOk} applied, ${tls.reloadsRejected} refused`
    + (tls.watching ? "" : " · file watcher NOT running")
    + (tls.lastError ? ` · last refusal: ${tls.lastError}` : "");
  const rows = [...tls.reloads].reverse().map((reload) => row([
    formatTime(reload.time),
    reload.trigger,
    [reload.outcome, `outcome-${reload.outcome}`],
    [reload.serial === null ? "–" : serialHex(reload.serial), "mono"],
    [reload.clientsTold ?? "–", "num"],
    reload.reason ?? "",
  ]));
  replaceRows($("tls-reloads").querySelector("tbody"), rows, 6, "No reloads yet");
}

// -- try it ----------------------------------------------------------------------------------

let socket = null;
let lastTemplate = "";

const TEMPLATES = {
  "system:direct": (t) => ({ target: t, type: "chatMessage", message: `Hello ${t}!` }),
  "system:general": () => ({ type: "announcement", message: "Hello everyone!" }),
  "system:typingStart": (t) => ({ target: t }),
  "system:typingStop": (t) => ({ target: t }),
  "system:notification": (t) => ({
    type: "friendRequest", content: { message: "I would like to add you as a friend" }, targets: [t],
  }),
  "system:setData": (t) => ({
    username: $("try-username").value.trim(), following: t ? [t] : [], profile: {},
  }),
  "system:clients": null,
  "client-ping": null,
  "system:getConfig": null,
};

function fillTemplate(force) {
  const payload = $("try-payload");
  if (!force && payload.value !== lastTemplate) return; // keep what the user typed
  const make = TEMPLATES[$("try-event").value];
  const target = $("try-target").value.trim() || "someone";
  lastTemplate = make ? JSON.stringify(make(target), null, 2) : "";
  payload.value = lastTemplate;
}

function setTarget(username) {
  $("try-target").value = username;
  fillTemplate(false);
}

$("try-event").addEventListener("change", () => fillTemplate(true));
$("try-target").addEventListener("input", () => fillTemplate(false));
fillTemplate(true);

function setStatus(text, className) {
  $("try-status").textContent = text;
  $("try-status").className = `status ${className || ""}`;
  const connected = className === "connected";
  $("try-send").disabled = !connected;
  $("try-disconnect").disabled = !socket;
  $("try-connect").disabled = Boolean(socket);
}

function logEntry(kind, name, payload, hasPayload, offset = null) {
  const symbols = { in: "←", out: "→", ack: "↩", note: "•" };
  const item = el("li", null, kind);
  item.dataset.event = name;
  item.dataset.direction = kind;
  const head = el("div", null, "head");
  head.append(el("span", new Date().toLocaleTimeString(), "time"), el("span", symbols[kind], "dir"),
    el("span", name, "name"));
  if (offset) head.append(el("span", `offset ${offset}`, "offset"));
  item.append(head);
  if (hasPayload) item.append(el("pre", JSON.stringify(payload, null, 2)));
  applyFilter(item);
  const list = $("event-log");
  list.prepend(item);
  while (list.children.length > LOG_LIMIT) list.lastElementChild.remove();
}

// With connection state recovery the gateway adds the event's offset as a last argument;
// the log shows the payload, and the offset in the entry's head.
function payloadOf(args) {
  const trimmed = offsetOf(args) ? args.slice(0, -1) : args;
  return trimmed.length === 1 ? trimmed[0] : trimmed;
}

function offsetOf(args) {
  const last = args[args.length - 1];
  return args.length > 1 && typeof last === "string" && /^[0-9a-f]{6}\.[0-9a-f]+$/.test(last) ? last : null;
}

function applyFilter(item) {
  const needle = $("log-filter").value.trim().toLowerCase();
  item.hidden = Boolean(needle) && !item.dataset.event.toLowerCase().includes(needle);
}

$("log-filter").addEventListener("input", () => {
  for (const item of $("event-log").children) applyFilter(item);
});
$("log-clear").addEventListener("click", () => $("event-log").replaceChildren());

$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (socket) return;
  if (typeof io !== "function") {
    $("try-error").textContent = "The Socket.IO client did not load (/socket.io/socket.io.min.js).";
    return;
  }
  const username = $("try-username").value.trim();
  const options = {
    path: "/socket.io",
    forceNew: true,
    reconnection: false,
    transports: $("try-websocket-only").checked ? ["websocket"] : ["polling", "websocket"],
  };
  if (authOn) options.auth = { token: $("try-token").value.trim() || token };
  socket = io(window.location.origin, options);
  setStatus("connecting…", "");
  socket.onAny((name, ...args) => logEntry("in", name, payloadOf(args), args.length > 0, offsetOf(args)));
  socket.onAnyOutgoing((name, ...args) => {
    const data = args.filter((arg) => typeof arg !== "function"); // drop an ack callback
    logEntry("out", name, payloadOf(data), data.length > 0);
  });
  socket.on("connect", () => {
    setStatus(`connected (${socket.io.engine.transport.name})`, "connected");
    socket.io.engine.on("upgrade", (transport) => setStatus(`connected (${transport.name})`, "connected"));
    logEntry("note", "connect", { id: socket.id }, true);
    if (!authOn && username) socket.emit("system:setData", { username });
  });
  socket.on("system:heartbeat", (beat) => {
    // A real app answers heartbeats; without this the gateway would drop the page after a few.
    if ($("try-auto-ack").checked && beat && beat.id) socket.emit("system:heartbeat-ack", { id: beat.id });
  });
  socket.on("connect_error", (error) => {
    logEntry("note", "connect_error", { message: error.message }, true);
    closeSocket(`refused: ${error.message}`, "failed");
  });
  socket.on("disconnect", (reason) => {
    logEntry("note", "disconnect", { reason }, true);
    closeSocket(`disconnected (${reason})`, "");
  });
});

function closeSocket(text, className) {
  if (socket) {
    socket.offAny();
    socket.offAnyOutgoing();
    socket.removeAllListeners();
    socket.disconnect();
  }
  socket = null;
  setStatus(text, className);
}

function disconnectTryIt() {
  if (socket) {
    logEntry("note", "disconnect", { reason: "io client disconnect" }, true);
    closeSocket("disconnected", "");
  }
}

$("try-disconnect").addEventListener("click", disconnectTryIt);

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("try-error").textContent = "";
  if (!socket || !socket.connected) return;
  const name = $("try-event").value;
  const text = $("try-payload").value.trim();
  let payload;
  if (text) {
    try {
      payload = JSON.parse(text);
    } catch (error) {
      $("try-error").textContent = `The payload is not valid JSON: ${error.message}`;
      return;
    }
  }
  const args = text ? [payload] : [];
  if (!$("try-ack").checked) {
    socket.emit(name, ...args);
    return;
  }
  try {
    const reply = await socket.timeout(5000).emitWithAck(name, ...args);
    logEntry("ack", `${name} (ack)`, reply, true);
  } catch (error) {
    logEntry("note", `${name} (no ack)`, { message: error.message }, true);
  }
});

// -- start -----------------------------------------------------------------------------------

// Charts are drawn at the canvas's size: redraw the last state when the window changes.
window.addEventListener("resize", () => {
  if (lastState && history.length) renderFigures(lastState);
});

startPolling();
