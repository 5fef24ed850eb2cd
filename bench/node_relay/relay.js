"use strict";
// Reference relay on Node socket.io 4.8: the same events as bench/baseline_relay.py (client-ping
// included), written the straightforward way (stock Server options: permessage-deflate declined,
// as socket.io does by default). Used by bench/run.py for reference when node is installed.
//
//   node bench/node_relay/relay.js --port 8200 [--certfile C --keyfile K] [--heartbeat-interval 30]

const http = require("http");
const https = require("https");
const fs = require("fs");
const crypto = require("crypto");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const args = { host: "127.0.0.1", port: 8200, certfile: null, keyfile: null, heartbeatInterval: 30 };
  for (let i = 2; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[++i];
    if (key === "--host") args.host = value;
    else if (key === "--port") args.port = Number(value);
    else if (key === "--certfile") args.certfile = value;
    else if (key === "--keyfile") args.keyfile = value;
    else if (key === "--heartbeat-interval") args.heartbeatInterval = Number(value);
    else throw new Error(`unknown argument ${key}`);
  }
  return args;
}

const isoNow = () => new Date().toISOString();

function main() {
  const args = parseArgs(process.argv);
  const httpServer = args.certfile
    ? https.createServer({ cert: fs.readFileSync(args.certfile), key: fs.readFileSync(args.keyfile) })
    : http.createServer();
  const io = new Server(httpServer);

  const sidByName = new Map();
  const nameBySid = new Map();
  const pendingHeartbeat = new Map();
  const stats = { connects: 0, deflateOffered: 0, heartbeatsSent: 0, heartbeatAcks: 0 };

  const senderOf = (socket) => ({ id: socket.id, username: nameBySid.get(socket.id) ?? null, profile: {} });

  io.on("connection", (socket) => {
    stats.connects++;
    const ext = socket.request.headers["sec-websocket-extensions"];
    if (ext && ext.includes("permessage-deflate")) stats.deflateOffered++;

    socket.on("disconnect", () => {
      pendingHeartbeat.delete(socket.id);
      const name = nameBySid.get(socket.id);
      nameBySid.delete(socket.id);
      if (name !== undefined && sidByName.get(name) === socket.id) sidByName.delete(name);
    });

    socket.on("system:setData", (data) => {
      const name = data && data.username;
      if (typeof name !== "string" || !name) {
        socket.emit("system:dataSet", { success: false, error: "Invalid username", timestamp: isoNow() });
        return;
      }
      const owner = sidByName.get(name);
      if (owner !== undefined && owner !== socket.id) {
        socket.emit("system:dataSet", { success: false, error: "Username already taken", timestamp: isoNow() });
        return;
      }
      const old = nameBySid.get(socket.id);
      if (old !== undefined && old !== name) sidByName.delete(old);
      sidByName.set(name, socket.id);
      nameBySid.set(socket.id, name);
      socket.emit("system:dataSet", { success: true, updatedFields: ["username"], timestamp: isoNow() });
    });

    socket.on("system:direct", (data) => {
      const now = isoNow();
      const targetSid = sidByName.get(data.target);
      if (targetSid === undefined) {
        socket.emit("system:directSent", { success: false, target: data.target, reason: "User not found", timestamp: now });
        return;
      }
      io.to(targetSid).emit("system:direct", { ...data, sender: senderOf(socket), type: data.type, timestamp: now });
      socket.emit("system:directSent", { success: true, target: data.target, timestamp: now });
    });

    socket.on("system:general", (data) => {
      const now = isoNow();
      io.emit("system:general", { ...data, sender: senderOf(socket), type: data.type, timestamp: now, broadcast: true });
      socket.emit("system:generalSent", { success: true, originalMessage: data, timestamp: now });
    });

    socket.on("client-ping", () => {
      socket.emit("client-pong", { timestamp: isoNow() });
    });

    socket.on("system:heartbeat-ack", (data) => {
      const id = data && data.id;
      if (id !== undefined && pendingHeartbeat.get(socket.id) === id) {
        pendingHeartbeat.set(socket.id, null);
        stats.heartbeatAcks++;
      }
    });

    socket.on("bench:stats", (_data, ack) => {
      if (typeof ack === "function") ack({ server: "node", connected: io.engine.clientsCount, ...stats });
    });
  });

  // Naive heartbeat: one emit per connected client, every interval.
  setInterval(() => {
    for (const socket of io.sockets.sockets.values()) {
      const id = crypto.randomUUID();
      pendingHeartbeat.set(socket.id, id);
      stats.heartbeatsSent++;
      socket.emit("system:heartbeat", { id });
    }
  }, args.heartbeatInterval * 1000);

  httpServer.listen(args.port, args.host);
  const stop = () => {
    io.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main();
