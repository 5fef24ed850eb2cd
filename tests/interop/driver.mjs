// Drives official socket.io-client sockets for a Python test, one JSON command per stdin line,
// one JSON answer per stdout line (tests/support/jsclient.py is the other end).
//
// Commands: {cmd: "open", name, url, opts?}  {cmd: "emit", name, event, payload, ack?}
//   {cmd: "drop", name}: the transport dies under the socket (no close frame); it reconnects
//   {cmd: "cut", name}: the client gives up on its transport (as on a network change); it
//                       reconnects at once
//   {cmd: "wait", name, event, count, timeoutMs}
//   {cmd: "waitConnect", name, index, timeoutMs}: the index-th connect (0 is the first)
//   {cmd: "seen", name}   {cmd: "state", name}   {cmd: "close", name}   {cmd: "quit"}
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const sockets = new Map();

function open({ name, url, opts = {} }) {
  const socket = io(url, {
    path: "/socket.io",
    transports: ["websocket"],
    reconnectionDelay: 100,
    reconnectionDelayMax: 100,
    randomizationFactor: 0,
    rejectUnauthorized: false,
    ...opts,
  });
  const entry = { socket, events: [], connects: [] };
  // Every event with all its arguments: the offset (connection state recovery) included.
  socket.onAny((event, ...args) => entry.events.push({ event, args }));
  socket.on("connect", () => entry.connects.push({ id: socket.id, recovered: socket.recovered }));
  socket.on("connect_error", (err) => entry.events.push({ event: "connect_error", args: [err.message] }));
  socket.on("disconnect", (reason) => entry.events.push({ event: "disconnect", args: [reason] }));
  sockets.set(name, entry);
  return waitConnect({ name, index: 0, timeoutMs: 5000 });
}

function until(check, timeoutMs) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      const found = check();
      if (found !== undefined) return resolve(found);
      if (Date.now() - started > timeoutMs) return reject(new Error("timed out"));
      setTimeout(poll, 10);
    };
    poll();
  });
}

function waitConnect({ name, index, timeoutMs = 5000 }) {
  const entry = sockets.get(name);
  return until(() => entry.connects[index], timeoutMs);
}

const commands = {
  open,
  async emit({ name, event, payload, ack }) {
    const { socket } = sockets.get(name);
    if (ack) return socket.timeout(5000).emitWithAck(event, payload);
    socket.emit(event, payload);
    return null;
  },
  drop({ name }) {
    // What a dead network does to the socket: no close frame, the connection is just gone.
    sockets.get(name).socket.io.engine.transport.ws._socket.destroy();
    return null;
  },
  cut({ name }) {
    sockets.get(name).socket.io.engine.close();
    return null;
  },
  wait({ name, event, count = 1, timeoutMs = 5000 }) {
    const entry = sockets.get(name);
    return until(() => {
      const matching = entry.events.filter((e) => e.event === event);
      return matching.length >= count ? matching : undefined;
    }, timeoutMs);
  },
  waitConnect,
  seen({ name }) {
    return sockets.get(name).events;
  },
  state({ name }) {
    const { socket, connects } = sockets.get(name);
    return { connected: socket.connected, recovered: socket.recovered, id: socket.id, connects };
  },
  close({ name }) {
    sockets.get(name).socket.disconnect();
    return null;
  },
  quit() {
    for (const { socket } of sockets.values()) socket.disconnect();
    setTimeout(() => process.exit(0), 50);
    return null;
  },
};

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const command = JSON.parse(line);
  try {
    const result = await commands[command.cmd](command);
    process.stdout.write(`${JSON.stringify({ ok: true, result: result ?? null })}\n`);
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ ok: false, error: String(err && err.message) })}\n`);
  }
});
// A test that dies must not leave this process behind: it ends after its lifetime (seconds, the
// first argument; 120 by default).
const lifetimeS = Number(process.argv[2] ?? 120);
setTimeout(() => process.exit(3), lifetimeS * 1000).unref();
