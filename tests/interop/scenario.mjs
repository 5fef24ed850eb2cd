// Drives the official socket.io-client against a live gateway and prints what it observed as
// one JSON object; tests/interop/test_js_client.py asserts on it.
// Usage: node scenario.mjs URL websocket|polling
import { io } from "socket.io-client";

const [url, mode] = process.argv.slice(2);
const transports = mode === "websocket" ? ["websocket"] : ["polling", "websocket"];
const TIMEOUT_MS = 5000;

function client() {
  const socket = io(url, { path: "/socket.io", transports, reconnection: false,
                           rejectUnauthorized: false, timeout: TIMEOUT_MS });
  socket.seen = {};
  socket.onAny((event, payload) => { (socket.seen[event] ??= []).push(payload); });
  return socket;
}

function next(socket, event) {
  const queued = socket.seen[event];
  if (queued && queued.length) return Promise.resolve(queued.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    const handler = (name) => {
      if (name !== event) return;
      clearTimeout(timer);
      socket.offAny(handler);
      resolve(socket.seen[event].shift());
    };
    socket.onAny(handler);
  });
}

const connected = (socket) => new Promise((resolve, reject) => {
  socket.on("connect", resolve);
  socket.on("connect_error", reject);
});

const out = {};
const alice = client();
const bob = client();
try {
  await Promise.all([connected(alice), connected(bob)]);
  out.welcome = await next(alice, "system:welcome");
  await next(bob, "system:welcome");
  out.setDataAck = await alice.timeout(TIMEOUT_MS).emitWithAck("system:setData",
    { username: "js-alice", profile: { displayName: "Alice" } });
  out.dataSet = await next(alice, "system:dataSet");
  bob.emit("system:setData", { username: "js-bob", following: ["js-alice"] });
  await next(bob, "system:dataSet");
  out.followed = await next(alice, "system:followed");

  alice.emit("system:direct", { target: "js-bob", type: "chatMessage", message: "Hello Bob!" });
  out.direct = await next(bob, "system:direct");
  out.directSent = await next(alice, "system:directSent");

  alice.emit("system:general", { type: "announcement", message: "Hello everyone!" });
  out.generalAtBob = await next(bob, "system:general");
  out.generalAtAlice = await next(alice, "system:general");
  out.generalSent = await next(alice, "system:generalSent");

  alice.emit("system:typingStart", { target: "js-bob" });
  out.typing = await next(bob, "system:typingUpdate");

  alice.emit("system:notification", { type: "post", content: { id: 1 } });
  out.notification = await next(bob, "system:notification");

  alice.emit("system:direct", { target: "ghost", type: "chatMessage" });
  out.directFailed = await next(alice, "system:directSent");
  out.error = await next(alice, "system:error");

  out.clientsAck = await alice.timeout(TIMEOUT_MS).emitWithAck("system:clients");
  out.pongAck = await alice.timeout(TIMEOUT_MS).emitWithAck("client-ping");
  out.config = await alice.timeout(TIMEOUT_MS).emitWithAck("system:getConfig");
  // Give a polling client its chance to upgrade before reporting the transport.
  if (mode !== "websocket") {
    const deadline = Date.now() + TIMEOUT_MS;
    while (alice.io.engine.transport.name !== "websocket" && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  out.transport = alice.io.engine.transport.name;
  out.ids = { alice: alice.id, bob: bob.id };
} catch (err) {
  out.failure = String(err && err.message || err);
} finally {
  alice.disconnect();
  bob.disconnect();
}
process.stdout.write(JSON.stringify(out));
