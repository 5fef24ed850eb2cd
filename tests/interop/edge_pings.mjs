// The official client against gateways with short, fractional Engine.IO ping intervals: does it
// stay connected across several pings? Prints one JSON array, one entry per target;
// tests/e2e/test_edge_transport.py asserts on it.
// Usage: node edge_pings.mjs DURATION_MS URL websocket|polling [URL websocket|polling ...]
import { io } from "socket.io-client";

const [duration, ...rest] = process.argv.slice(2);
const targets = [];
for (let i = 0; i < rest.length; i += 2) targets.push({ url: rest[i], mode: rest[i + 1] });

function run({ url, mode }) {
  return new Promise((resolve) => {
    const socket = io(url, { path: "/socket.io", transports: [mode], reconnection: false,
                             timeout: 3000, upgrade: false });
    const out = { url, mode, pings: 0, connected: false, disconnect: null, error: null };
    socket.io.on("ping", () => { out.pings += 1; });
    socket.on("connect", () => {
      out.connected = true;
      const engine = socket.io.engine;
      out.pingInterval = engine._pingInterval ?? engine.pingInterval;
      out.pingTimeout = engine._pingTimeout ?? engine.pingTimeout;
      out.transport = engine.transport.name;
    });
    socket.on("connect_error", (err) => { out.error = String(err && err.message || err); });
    let done = false;
    socket.on("disconnect", (reason) => { if (!done) out.disconnect ??= reason; });
    setTimeout(() => {
      done = true;
      out.stillConnected = socket.connected;
      socket.disconnect();
      resolve(out);
    }, Number(duration));
  });
}

process.stdout.write(JSON.stringify(await Promise.all(targets.map(run))));
