"use strict";
// Load generator for the WS-Hub benchmarks, built on the official socket.io-client 4.8.
//
//   node bench/loadgen/loadgen.js --scenario dm-closed --url http://127.0.0.1:8000 [options]
//
// Scenarios: dm-closed, dm-rate, broadcast-closed, broadcast-rate, idle, connect.
// Prints its report as one JSON line on stdout at the end. With --marks it also prints
// `MARK name` lines before that, each answered by one line on stdin from bench/run.py once it
// has sampled the server's CPU and RSS, so the measurement windows are exactly the loadgen's own
// windows. Without --marks the JSON line is the only output. Everything is bounded: a hard
// timeout ends the process.
//
// Kept cheap per message: no per-message logging, latencies go into preallocated typed arrays,
// all clients live in this one process (one core), WebSocket transport only.

const { io } = require("socket.io-client");
const fs = require("fs");
const readline = require("readline");
const { performance } = require("perf_hooks");

// ---------------------------------------------------------------- options
const DEFAULTS = {
  scenario: "",
  url: "",
  marks: false,
  deflate: null, // null: scenario default (idle offers it, as browsers do; others do not)
  ca: null, // PEM file to trust for wss (the bench's self-signed cert)
  pairs: 50, // dm-*
  rate: 2000, // dm-rate: msgs/s in total; broadcast-rate: broadcasts/s
  receivers: 500, // broadcast-*: receivers besides the sender
  conns: 1000, // idle
  concurrency: 50, // how many connections are opened at once while setting up
  connectConcurrency: 8, // connect: parallel connect/setData/disconnect loops
  warmup: 1.5, // s, run but not recorded
  duration: 5, // s, the measured window
  drain: 3, // s, max wait for in-flight messages after the window
  settle: 1.5, // s, idle: wait after all connected before sampling RSS
  hbWindow: 5, // s, idle: heartbeat window
  connectTimeout: 15, // s, per connection
  maxConnects: 20000, // connect: hard cap per run (ephemeral ports)
  hardTimeout: 180, // s, the whole process
  // Where each kind of client connects (comma lists, taken round-robin); empty: --url.
  urlSenders: "", // dm-*: the senders; broadcast-*: the sender
  urlReceivers: "", // dm-*: the receivers; broadcast-*: the receivers, spread over the list
  urlBystanders: "", // dm-*, broadcast-*: idle named clients, `bystanders` on each URL
  bystanders: 0,
  idleWindow: 0, // s, dm-*/broadcast-*: MARK idle-start/idle-end with every client connected, no load
  localAddresses: "", // comma list of loopback source addresses the clients bind, round-robin
  // crowd / polite / lister (driven by commands on stdin, see controlled())
  namePrefix: "", // crowd: client names are <prefix><i>; default i<i>-<runId>-
  ack: "on", // crowd: answer heartbeats (on) or not (off) from the start
  pingInterval: 100, // ms, polite: one client-ping every this often
  listRate: 20, // lister: system:clients requests per second
  stormConcurrency: 0, // crowd storm: reconnects in flight at once (0: all at once)
  stormRetries: 0, // crowd storm: attempts after a failed one (socket.io-client's backoff)
  nameRetries: 40, // crowd storm: setData retries (every 250 ms) while the old name is still held
};

function parseArgs(argv) {
  const opts = { ...DEFAULTS };
  for (let i = 2; i < argv.length; i++) {
    const raw = argv[i];
    if (!raw.startsWith("--")) throw new Error(`unexpected argument ${raw}`);
    const key = raw.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in DEFAULTS)) throw new Error(`unknown option ${raw}`);
    if (key === "marks") {
      opts.marks = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`missing value for ${raw}`);
    if (key === "deflate") opts.deflate = value === "on" || value === "true" || value === "1";
    else if (typeof DEFAULTS[key] === "number") opts[key] = Number(value);
    else opts[key] = value;
  }
  if (!opts.scenario || !opts.url) throw new Error("--scenario and --url are required");
  const list = (v) => (v ? String(v).split(",").filter(Boolean) : []);
  opts.sendersUrls = list(opts.urlSenders).length ? list(opts.urlSenders) : [opts.url];
  opts.receiversUrls = list(opts.urlReceivers).length ? list(opts.urlReceivers) : [opts.url];
  opts.bystanderUrls = list(opts.urlBystanders);
  opts.localAddressList = list(opts.localAddresses);
  return opts;
}

const opts = parseArgs(process.argv);
const hardTimer = setTimeout(() => {
  process.stdout.write(`${JSON.stringify({ scenario: opts.scenario, error: "hard timeout" })}\n`);
  process.exit(2);
}, opts.hardTimeout * 1000);

// ---------------------------------------------------------------- helpers
const now = () => performance.now();
const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
const runId = Math.random().toString(36).slice(2, 8);
const caPem = opts.ca ? fs.readFileSync(opts.ca) : null;

const waiters = [];
if (opts.marks) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    const w = waiters.shift();
    if (w) w(line);
  });
  rl.on("close", () => process.exit(3)); // the runner went away
}
const markTimes = {};
async function mark(name) {
  markTimes[name] = now();
  if (!opts.marks) return;
  process.stdout.write(`MARK ${name}\n`);
  await new Promise((r) => waiters.push(r));
}

function percentiles(arr, n) {
  if (n === 0) return { n: 0, p50: null, p90: null, p99: null, p999: null, max: null, mean: null };
  const a = arr.subarray(0, n).slice().sort();
  const q = (p) => a[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += a[i];
  const r3 = (x) => Math.round(x * 1000) / 1000;
  return { n, p50: r3(q(0.5)), p90: r3(q(0.9)), p99: r3(q(0.99)), p999: r3(q(0.999)), max: r3(a[n - 1]), mean: r3(sum / n) };
}

// Counters shared by every client of the run.
const C = {
  dropped: 0, // disconnects we did not ask for
  connectErrors: 0,
  serverErrors: 0, // system:error events
  failedReplies: 0, // dataSet / directSent / generalSent with success:false
  heartbeats: 0,
  heartbeatAcks: 0,
  heartbeatWarnings: 0,
  nameRetries: 0,
  deflateNegotiated: 0,
};
// Whether clients answer system:heartbeat (crowd: `ack off` stops it).
let acking = true;
let closing = false;
const errorSamples = []; // the first few system:error payloads, for the report

function deflateFor(scenario) {
  if (opts.deflate !== null) return opts.deflate;
  return scenario === "idle";
}

let addressTurn = 0;
function clientOptions(deflate) {
  const o = {
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    timeout: opts.connectTimeout * 1000,
    // engine.io-client hands this to the `ws` WebSocket, which then sends
    // `Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits` like a browser.
    perMessageDeflate: deflate ? { threshold: 1024 } : false,
  };
  if (caPem) {
    o.ca = caPem;
    o.rejectUnauthorized = true;
  }
  if (opts.localAddressList.length) {
    // engine.io-client hands `localAddress` to `ws`, which binds the client socket to it: each
    // source address has its own ephemeral ports.
    o.localAddress = opts.localAddressList[addressTurn++ % opts.localAddressList.length];
  }
  return o;
}

// Connect one client, set its username, resolve once `system:dataSet` {success:true} arrived.
// `extra.url`: where (default --url); `extra.nameRetries`: how often to ask again, every 250 ms,
// while the server still holds the name (a reconnect racing its own old connection's cleanup).
function connectClient(name, deflate, onReady, extra = {}) {
  return new Promise((resolve, reject) => {
    const socket = io(extra.url || opts.url, clientOptions(deflate));
    socket.benchName = name;
    socket.benchT0 = now();
    let retries = extra.nameRetries || 0;
    let done = false;
    // One timer bounds connect + setData: a server that never answers setData fails the client.
    const timer = setTimeout(() => fail("no system:dataSet in time"), opts.connectTimeout * 1000);
    const fail = (why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.benchClosing = true;
      socket.close();
      reject(new Error(`${name}: ${why}`));
    };
    socket.on("connect_error", (err) => {
      C.connectErrors++;
      // The transport's own error says why (engine.io-client's "websocket error" alone does not).
      const cause = err && err.description && (err.description.message || err.description.error);
      fail(`connect_error ${err && err.message}${cause ? ` (${cause})` : ""}`);
    });
    socket.on("disconnect", (reason) => {
      if (!closing && !socket.benchClosing) C.dropped++;
      if (!done) fail(`disconnected before ready: ${reason}`);
    });
    socket.on("system:error", (d) => {
      C.serverErrors++;
      if (!snapshot && errorSamples.length < 5) errorSamples.push(d);
    });
    socket.on("system:heartbeat", (d) => {
      C.heartbeats++;
      if (socket.benchOnHeartbeat) socket.benchOnHeartbeat(d);
      if (!acking) return;
      C.heartbeatAcks++;
      socket.emit("system:heartbeat-ack", { id: d && d.id });
    });
    socket.on("system:heartbeat-warning", () => {
      C.heartbeatWarnings++;
    });
    socket.on("connect", () => {
      socket.benchConnectedAt = now();
      const ws = socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.ws;
      socket.benchDeflate = !!(ws && typeof ws.extensions === "string" && ws.extensions.includes("permessage-deflate"));
      if (socket.benchDeflate) C.deflateNegotiated++;
      socket.emit("system:setData", { username: name });
    });
    socket.on("system:dataSet", (d) => {
      if (done) return;
      if (!d || d.success !== true) {
        if (retries > 0 && d && /taken/i.test(String(d.error))) {
          retries--;
          C.nameRetries++;
          setTimeout(() => socket.connected && socket.emit("system:setData", { username: name }), 250);
          return;
        }
        C.failedReplies++;
        fail(`dataSet refused: ${d && d.error}`);
        return;
      }
      done = true;
      clearTimeout(timer);
      if (onReady) onReady(socket);
      resolve(socket);
    });
  });
}

// Open `n` clients, `concurrency` at a time; `setup(socket, i)` adds handlers before connecting.
// Client i connects to urls[i % urls.length] (default: --url).
async function connectMany(n, prefix, deflate, setup, urls = [opts.url]) {
  const sockets = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      const name = `${prefix}${i}-${runId}`;
      sockets[i] = await connectClient(name, deflate, (s) => setup && setup(s, i), { url: urls[i % urls.length] });
    }
  };
  const workers = [];
  for (let w = 0; w < Math.min(opts.concurrency, n); w++) workers.push(worker());
  await Promise.all(workers);
  return sockets;
}

function closeAll(sockets) {
  closing = true;
  for (const s of sockets) if (s) s.close();
}

let snapshot = null; // counters as they were before the bench-only stats query
async function serverStats(socket) {
  snapshot = { ...C };
  try {
    const stats = await socket.timeout(2000).emitWithAck("bench:stats", {});
    return stats && stats.code === undefined ? stats : null;
  } catch (_e) {
    return null; // the gateway does not implement the bench-only event
  }
}

// This process's CPU time (ms) since `start` = {cpu: process.cpuUsage(), t: now()}, and the
// share of one core it used: near 1, the load generator and not the server sets the pace.
function loadgenCpu(start) {
  const u = process.cpuUsage(start.cpu);
  const ms = (u.user + u.system) / 1000;
  return { loadgenCpuMs: Math.round(ms), loadgenCpuUtil: Math.round((ms / (now() - start.t)) * 1000) / 1000 };
}
const cpuStart = () => ({ cpu: process.cpuUsage(), t: now() });

async function waitUntil(pred, maxS) {
  const end = now() + maxS * 1000;
  while (!pred() && now() < end) await sleep(0.01);
  return pred();
}

// ---------------------------------------------------------------- direct messages
async function runDm(closedLoop) {
  const P = opts.pairs;
  const deflate = deflateFor("dm");
  const cap = closedLoop ? 4_000_000 : Math.ceil(opts.rate * (opts.warmup + opts.duration + 1)) + 1000;
  const lat = new Float64Array(Math.min(cap, 4_000_000));
  let nLat = 0;
  let running = false;
  let windowStart = Infinity;
  let windowEnd = Infinity;
  let sent = 0;
  let received = 0;
  let receivedInWindow = 0;
  let acked = 0;
  let outOfOrder = 0;
  const nextSeq = new Int32Array(P); // per pair: next seq to send
  const lastSeq = new Int32Array(P).fill(-1); // per pair: last seq received
  const inFlight = new Uint8Array(P);

  const receivers = await connectMany(P, "r", deflate, (s, i) => {
    s.on("system:direct", (d) => {
      const t = now();
      received++;
      if (d.seq !== lastSeq[i] + 1) outOfOrder++;
      if (d.seq > lastSeq[i]) lastSeq[i] = d.seq;
      if (t >= windowStart && t < windowEnd) receivedInWindow++;
      if (d.sentAt >= windowStart && d.sentAt < windowEnd && nLat < lat.length) lat[nLat++] = t - d.sentAt;
      inFlight[i] = 0;
      if (closedLoop && running) send(i);
    });
  }, opts.receiversUrls);
  const senders = await connectMany(P, "s", deflate, (s) => {
    s.on("system:directSent", (d) => {
      if (d && d.success === true) acked++;
      else C.failedReplies++;
    });
  }, opts.sendersUrls);
  const targets = receivers.map((s) => s.benchName);
  const bystanders = await connectBystanders(deflate);
  await idleWindow();

  function send(i) {
    inFlight[i] = 1;
    sent++;
    senders[i].emit("system:direct", { target: targets[i], type: "chatMessage", seq: nextSeq[i]++, sentAt: now() });
  }

  let timer = null;
  let lagMax = 0;
  const cpu0 = cpuStart();
  running = true;
  if (closedLoop) {
    for (let i = 0; i < P; i++) send(i);
  } else {
    const t0 = now();
    let rr = 0;
    timer = setInterval(() => {
      const t = now();
      const due = Math.floor(((t - t0) * opts.rate) / 1000) - sent;
      // How late the oldest due message leaves compared with its schedule.
      if (due > 0) lagMax = Math.max(lagMax, t - (t0 + ((sent + 1) * 1000) / opts.rate));
      for (let k = 0; k < due && sent < cap; k++) {
        send(rr);
        rr = rr + 1 === P ? 0 : rr + 1;
      }
    }, 1);
  }
  await sleep(opts.warmup);
  await mark("start");
  windowStart = now();
  await sleep(opts.duration);
  windowEnd = now();
  await mark("end");
  running = false;
  if (timer) clearInterval(timer);
  const lg = loadgenCpu(cpu0);
  await waitUntil(() => received >= sent && acked + C.failedReplies >= sent, opts.drain);
  const windowS = (windowEnd - windowStart) / 1000;
  const stats = await serverStats(senders[0]);
  closeAll(receivers.concat(senders, bystanders));
  return {
    pairs: P,
    targetRate: closedLoop ? null : opts.rate,
    deflateOffered: deflate,
    windowS,
    sent,
    received,
    acked,
    receivedInWindow,
    throughput: receivedInWindow / windowS,
    latencyMs: percentiles(lat, nLat),
    lost: sent - received,
    outOfOrder,
    sendLagMaxMs: closedLoop ? null : Math.round(lagMax * 10) / 10,
    bystanders: bystanders.length,
    ...lg,
    serverStats: stats,
  };
}

// Idle named clients on each --url-bystanders URL (they receive nothing in the DM scenarios).
async function connectBystanders(deflate) {
  const out = [];
  for (const [k, url] of opts.bystanderUrls.entries()) {
    if (opts.bystanders > 0) out.push(...(await connectMany(opts.bystanders, `y${k}-`, deflate, null, [url])));
  }
  return out;
}

// A window with every client connected and no load: each server's idle CPU, to set apart.
async function idleWindow() {
  if (!(opts.idleWindow > 0)) return;
  await mark("idle-start");
  await sleep(opts.idleWindow);
  await mark("idle-end");
}

// ---------------------------------------------------------------- broadcast fan-out
async function runBroadcast(closedLoop) {
  const R = opts.receivers;
  const deflate = deflateFor("broadcast");
  const perBroadcast = R + 1; // the sender receives its own broadcast too
  const cap = closedLoop ? 200_000 : Math.ceil(opts.rate * (opts.warmup + opts.duration + 1)) + 100;
  const remaining = new Int32Array(cap);
  const sentAt = new Float64Array(cap);
  const lat = new Float64Array(cap);
  let nLat = 0;
  let windowStart = Infinity;
  let windowEnd = Infinity;
  let running = false;
  let seq = 0;
  let deliveries = 0;
  let deliveriesInWindow = 0;
  let completed = 0;
  let outOfOrder = 0;
  let generalSent = 0;
  const lastSeq = new Int32Array(perBroadcast).fill(-1);
  let sender = null;

  function onGeneral(i, d) {
    const t = now();
    deliveries++;
    if (t >= windowStart && t < windowEnd) deliveriesInWindow++;
    const s = d.seq;
    if (s !== lastSeq[i] + 1) outOfOrder++;
    if (s > lastSeq[i]) lastSeq[i] = s;
    if (s >= 0 && s < cap && --remaining[s] === 0) {
      completed++;
      if (sentAt[s] >= windowStart && sentAt[s] < windowEnd) lat[nLat++] = t - sentAt[s];
      if (closedLoop && running) send();
    }
  }
  function send() {
    if (seq >= cap) return;
    const s = seq++;
    remaining[s] = perBroadcast;
    const t = now();
    sentAt[s] = t;
    sender.emit("system:general", { type: "bench", seq: s, sentAt: t });
  }

  const receivers = await connectMany(R, "b", deflate, (s, i) => s.on("system:general", (d) => onGeneral(i, d)), opts.receiversUrls);
  [sender] = await connectMany(1, "bs", deflate, (s) => {
    s.on("system:general", (d) => onGeneral(R, d));
    s.on("system:generalSent", (d) => {
      if (d && d.success === true) generalSent++;
      else C.failedReplies++;
    });
  }, opts.sendersUrls);
  await idleWindow();

  let timer = null;
  let lagMax = 0;
  const cpu0 = cpuStart();
  running = true;
  if (closedLoop) {
    send();
  } else {
    const t0 = now();
    timer = setInterval(() => {
      const t = now();
      const due = Math.floor(((t - t0) * opts.rate) / 1000) - seq;
      if (due > 0) lagMax = Math.max(lagMax, t - (t0 + ((seq + 1) * 1000) / opts.rate));
      for (let k = 0; k < due; k++) send();
    }, 2);
  }
  await sleep(opts.warmup);
  await mark("start");
  windowStart = now();
  await sleep(opts.duration);
  windowEnd = now();
  await mark("end");
  running = false;
  if (timer) clearInterval(timer);
  const lg = loadgenCpu(cpu0);
  await waitUntil(() => deliveries >= seq * perBroadcast && generalSent + C.failedReplies >= seq, opts.drain);
  const windowS = (windowEnd - windowStart) / 1000;
  const stats = await serverStats(sender);
  closeAll(receivers.concat([sender]));
  return {
    receivers: R,
    targetRate: closedLoop ? null : opts.rate,
    deflateOffered: deflate,
    windowS,
    broadcasts: seq,
    completed,
    broadcastsMeasured: nLat,
    deliveries,
    deliveriesInWindow,
    deliveriesPerS: deliveriesInWindow / windowS,
    broadcastsPerS: nLat / windowS,
    lastReceiverMs: percentiles(lat, nLat),
    lost: seq * perBroadcast - deliveries,
    outOfOrder,
    sendLagMaxMs: closedLoop ? null : Math.round(lagMax * 10) / 10,
    ...lg,
    serverStats: stats,
  };
}

// ---------------------------------------------------------------- idle connections
async function runIdle() {
  const N = opts.conns;
  const deflate = deflateFor("idle");
  // A few connections first, so that code paths run and modules load before the "before" RSS.
  const warm = await connectMany(5, "w", deflate, null);
  for (const s of warm) {
    s.benchClosing = true;
    s.close();
  }
  await sleep(0.5);
  await mark("before");
  const t0 = now();
  const sockets = await connectMany(N, "i", deflate, null);
  const connectS = (now() - t0) / 1000;
  await sleep(opts.settle);
  await mark("connected");
  const hb0 = C.heartbeats;
  await mark("hb-start");
  const w0 = now();
  await sleep(opts.hbWindow);
  const windowS = (now() - w0) / 1000;
  await mark("hb-end");
  const heartbeatsInWindow = C.heartbeats - hb0;
  const stats = await serverStats(sockets[0]);
  let open = 0;
  let negotiated = 0;
  for (const s of sockets) {
    if (s.connected) open++;
    if (s.benchDeflate) negotiated++;
  }
  closeAll(sockets);
  return {
    conns: N,
    deflateOffered: deflate,
    deflateNegotiated: negotiated,
    connectS,
    windowS,
    heartbeatsInWindow,
    heartbeatCyclesInWindow: heartbeatsInWindow / N,
    stillOpen: open,
    serverStats: stats,
  };
}

// ---------------------------------------------------------------- connect rate
async function runConnect() {
  const deflate = deflateFor("connect");
  const cap = opts.maxConnects;
  const lat = new Float64Array(cap);
  let nLat = 0;
  let started = 0;
  let completed = 0;
  let completedInWindow = 0;
  let failures = 0;
  let running = true;
  let windowStart = Infinity;
  let windowEnd = Infinity;
  const cpu0 = cpuStart();

  const loop = async (w) => {
    let k = 0;
    while (running && started < cap) {
      started++;
      const t = now();
      let socket;
      try {
        socket = await connectClient(`c${w}-${k++}-${runId}`, deflate, null);
      } catch (_e) {
        failures++;
        await sleep(0.05);
        continue;
      }
      const t2 = now();
      completed++;
      if (t >= windowStart && t2 < windowEnd) {
        completedInWindow++;
        lat[nLat++] = t2 - t;
      }
      socket.benchClosing = true;
      socket.disconnect();
    }
  };
  const loops = [];
  for (let w = 0; w < opts.connectConcurrency; w++) loops.push(loop(w));
  await sleep(opts.warmup);
  await mark("start");
  windowStart = now();
  await sleep(opts.duration);
  windowEnd = now();
  await mark("end");
  running = false;
  const lg = loadgenCpu(cpu0);
  await Promise.race([Promise.all(loops), sleep(opts.drain)]);
  const windowS = (windowEnd - windowStart) / 1000;
  return {
    concurrency: opts.connectConcurrency,
    tls: opts.url.startsWith("https"),
    deflateOffered: deflate,
    windowS,
    started,
    completed,
    completedInWindow,
    connectsPerS: completedInWindow / windowS,
    connectMs: percentiles(lat, nLat),
    failures,
    // Started but neither done nor failed when the report was written: stalled on the server.
    pending: started - completed - failures,
    capped: started >= cap,
    ...lg,
  };
}

// ---------------------------------------------------------------- controlled processes
// `crowd`, `polite` and `lister` are driven line by line on stdin by a Python runner
// (bench/crowd.py) and report on stdout as `EVT {json}` lines; the final report is the JSON
// line printed on `quit` (or at the hard timeout). Several such processes run side by side: the
// polite client has a process of its own, so that the crowd's heartbeat bursts do not queue on
// its event loop and only the server's delay shows in its round trips.
function evt(name, body = {}) {
  process.stdout.write(`EVT ${JSON.stringify({ evt: name, t: Date.now(), ...body })}\n`);
}

function commands(handlers) {
  const rl = readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => {
    rl.on("line", async (line) => {
      const [cmd, ...args] = line.trim().split(/\s+/);
      if (cmd === "quit") {
        resolve();
        return;
      }
      const h = handlers[cmd];
      if (!h) {
        evt("error", { message: `unknown command ${cmd}` });
        return;
      }
      try {
        await h(...args);
      } catch (err) {
        evt("error", { message: String((err && err.stack) || err) });
      }
    });
    rl.on("close", () => resolve()); // the runner went away
  });
}

// Connect `names` (client i to urls[i % urls.length]) with at most `concurrency` in flight (0: all
// at once); a failure is counted, not fatal. Each one's time from io() to system:dataSet, and to
// the Socket.IO connect.
async function connectTolerant(names, concurrency, urls, extra = {}) {
  const n = names.length;
  const sockets = new Array(n).fill(null);
  const toReady = new Float64Array(n);
  const toConnect = new Float64Array(n);
  let nReady = 0;
  let failed = 0; // still not in after every attempt
  let firstFailed = 0; // failed at the first attempt
  let attempts = 0; // attempts after the first
  const failures = {}; // every failed attempt, by reason
  let next = 0;
  const t0 = now();
  let lastReady = t0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      const t = now();
      // `extra.retries`: after a failed attempt, try again as socket.io-client's reconnection
      // does by default (1 s doubling up to 5 s, randomised by half), this many times; the
      // time to ready then counts from the first attempt.
      for (let attempt = 0; ; attempt++) {
        try {
          const s = await connectClient(names[i], false, null, { url: urls[i % urls.length], ...extra });
          sockets[i] = s;
          toReady[nReady] = now() - t;
          toConnect[nReady] = (s.benchConnectedAt || now()) - t;
          nReady++;
          lastReady = now();
          break;
        } catch (err) {
          const why = String((err && err.message) || err).replace(/^[^:]*: /, "").slice(0, 80);
          failures[why] = (failures[why] || 0) + 1;
          if (attempt === 0) firstFailed++;
          if (attempt >= (extra.retries || 0)) {
            failed++;
            break;
          }
          attempts++;
          const base = Math.min(5, 2 ** attempt);
          await sleep(base * (0.5 + Math.random()));
        }
      }
    }
  };
  const workers = [];
  const width = concurrency > 0 ? Math.min(concurrency, n) : n;
  for (let w = 0; w < width; w++) workers.push(worker());
  await Promise.all(workers);
  return {
    sockets,
    report: {
      asked: n,
      connected: nReady,
      failed,
      firstFailed,
      retries: attempts,
      failures,
      allConnectedS: Math.round(lastReady - t0) / 1000,
      wallS: Math.round(now() - t0) / 1000,
      readyMs: percentiles(toReady, nReady),
      connectMs: percentiles(toConnect, nReady),
      // Every client's time to system:dataSet (0.1 ms), so that the runner can merge processes.
      readyRaw: Array.from(toReady.subarray(0, nReady), (x) => Math.round(x * 10) / 10),
    },
  };
}

async function runCrowd() {
  const N = opts.conns;
  const prefix = opts.namePrefix || `i-${runId}-`;
  const names = Array.from({ length: N }, (_, i) => `${prefix}${i}`); // grows with `grow`
  acking = opts.ack !== "off";
  const { sockets: first, report } = await connectTolerant(names, opts.concurrency, [opts.url]);
  let sockets = first;
  evt("ready", report);
  const storms = [];
  const counters = () => ({
    open: sockets.filter((s) => s && s.connected).length,
    ...C,
  });
  await commands({
    ack: (v) => {
      acking = v !== "off";
      evt("ack", { acking });
    },
    stats: () => evt("stats", counters()),
    // `grow N`: N more clients (the names go on from the last), `concurrency` at a time.
    grow: async (more = "0") => {
      const add = Array.from({ length: Number(more) }, (_, i) => `${prefix}${names.length + i}`);
      const { sockets: added, report: r } = await connectTolerant(add, opts.concurrency, [opts.url]);
      names.push(...add);
      sockets = sockets.concat(added);
      evt("grown", r);
    },
    // Every client closes its connection, then, after `pause` s, all connect again with the
    // same names, as fast as this process can (`stormConcurrency` in flight, 0 = all).
    storm: async (pause = "1") => {
      const d0 = C.dropped;
      closing = true;
      for (const s of sockets) {
        if (!s) continue;
        s.benchClosing = true;
        s.close();
      }
      const closedAt = now();
      await sleep(Number(pause));
      closing = false;
      evt("storm-start", { closed: sockets.filter(Boolean).length });
      const e0 = C.connectErrors;
      const r0 = C.nameRetries;
      const { sockets: again, report: r } = await connectTolerant(names, opts.stormConcurrency, [opts.url], {
        nameRetries: opts.nameRetries,
        retries: opts.stormRetries,
      });
      sockets = again;
      const storm = {
        ...r,
        pauseS: Number(pause),
        sinceCloseS: Math.round(now() - closedAt) / 1000,
        connectErrors: C.connectErrors - e0,
        nameRetries: C.nameRetries - r0,
        droppedBefore: d0,
      };
      storms.push(storm);
      evt("storm-done", storm);
    },
  });
  const out = { conns: names.length, initial: report, storms, ...counters() };
  closeAll(sockets);
  return out;
}

// One named client that sends `client-ping` every `pingInterval` ms and times each
// `client-pong` (a connection delivers in order, so pongs answer pings first in, first out).
// `seg NAME` starts attributing the pings sent from now on to NAME (`seg -`: to none); the
// report has each segment's round trips. It answers heartbeats, and reports each one it gets.
async function runPolite() {
  const socket = await connectClient(`polite-${runId}`, false, (s) => {
    s.benchOnHeartbeat = (d) => evt("hb", { id: d && d.id });
  });
  const segs = {};
  let seg = null;
  const pending = []; // [sentAt, segment]
  let pongs = 0;
  evt("ready");
  socket.on("client-pong", () => {
    const t = now();
    pongs++;
    const p = pending.shift();
    if (!p || !p[1]) return;
    const g = segs[p[1]];
    if (g.n < g.rtt.length) g.rtt[g.n++] = t - p[0];
  });
  const timer = setInterval(() => {
    pending.push([now(), seg]);
    if (seg) segs[seg].sent++;
    socket.emit("client-ping", {});
  }, opts.pingInterval);
  await commands({
    seg: (name) => {
      if (!name || name === "-") seg = null;
      else {
        seg = name;
        if (!segs[name]) segs[name] = { sent: 0, n: 0, rtt: new Float64Array(100000), started: Date.now() };
      }
      evt("seg", { seg });
    },
  });
  clearInterval(timer);
  await waitUntil(() => pending.length === 0, opts.drain);
  const out = { connected: socket.connected, pongs, unanswered: pending.length, segments: {} };
  for (const [name, g] of Object.entries(segs)) {
    out.segments[name] = { sent: g.sent, answered: g.n, rttMs: percentiles(g.rtt, g.n) };
  }
  closeAll([socket]);
  return out;
}

// One named client that asks `system:clients` `listRate` times a second between `start` and
// `stop`, and counts the answers, their bytes and the refusals.
async function runLister() {
  const socket = await connectClient(`lister-${runId}`, false, null);
  evt("ready");
  const L = { asked: 0, answers: 0, bytes: 0, clientsListed: 0, countSeen: 0, errors: 0, errorCodes: {} };
  let counting = false;
  socket.on("system:clients", (d) => {
    L.answers++;
    if (d && Array.isArray(d.clients)) L.clientsListed += d.clients.length;
    if (d && typeof d.count === "number") L.countSeen = d.count;
  });
  socket.on("system:error", (d) => {
    L.errors++;
    const code = String((d && (d.code || d.error)) || "?");
    L.errorCodes[code] = (L.errorCodes[code] || 0) + 1;
  });
  // What the server sent this client, as Engine.IO message text (its size on the wire).
  socket.io.engine.on("data", (data) => {
    if (counting) L.bytes += typeof data === "string" ? data.length : data.byteLength || 0;
  });
  let timer = null;
  let t0 = 0;
  let sentSoFar = 0;
  await commands({
    start: () => {
      counting = true;
      t0 = now();
      sentSoFar = 0;
      timer = setInterval(() => {
        const due = Math.floor(((now() - t0) * opts.listRate) / 1000) - sentSoFar;
        for (let k = 0; k < due; k++) {
          sentSoFar++;
          L.asked++;
          socket.emit("system:clients");
        }
      }, 5);
      evt("started");
    },
    stop: () => {
      if (timer) clearInterval(timer);
      timer = null;
      evt("stopped", { ...L });
    },
  });
  if (timer) clearInterval(timer);
  await sleep(0.5);
  counting = false;
  const out = { ...L, connected: socket.connected };
  closeAll([socket]);
  return out;
}

// ---------------------------------------------------------------- main
async function main() {
  let result;
  switch (opts.scenario) {
    case "dm-closed":
      result = await runDm(true);
      break;
    case "dm-rate":
      result = await runDm(false);
      break;
    case "broadcast-closed":
      result = await runBroadcast(true);
      break;
    case "broadcast-rate":
      result = await runBroadcast(false);
      break;
    case "idle":
      result = await runIdle();
      break;
    case "connect":
      result = await runConnect();
      break;
    case "crowd":
      result = await runCrowd();
      break;
    case "polite":
      result = await runPolite();
      break;
    case "lister":
      result = await runLister();
      break;
    default:
      throw new Error(`unknown scenario ${opts.scenario}`);
  }
  const c = snapshot || C;
  const out = {
    scenario: opts.scenario,
    ...result,
    dropped: c.dropped,
    connectErrors: c.connectErrors,
    serverErrors: c.serverErrors,
    failedReplies: c.failedReplies,
    heartbeatsReceived: c.heartbeats,
    heartbeatAcksSent: c.heartbeatAcks,
    heartbeatWarnings: c.heartbeatWarnings,
    errorSamples,
    marks: markTimes,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
  clearTimeout(hardTimer);
  // Give the close frames a moment to leave, then exit without waiting on anything else.
  setTimeout(() => process.exit(0), 200);
}

main().catch((err) => {
  process.stdout.write(`${JSON.stringify({ scenario: opts.scenario, error: String((err && err.stack) || err) })}\n`);
  process.exit(1);
});
