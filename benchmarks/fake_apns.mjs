// A fast fake APNs for benchmarks: HTTP/2 over TLS (ALPN h2) on 127.0.0.1, Node's built-in
// http2 module only (no npm dependencies).
//
//   node fake_apns.mjs --cert server.pem --key server-key.pem [--port 0]
//
// Every `POST /3/device/<token>` is answered 200 with the request's `apns-id` echoed (a fresh
// UUID when absent) and NO body: aioapns parses any DATA frame as JSON. Anything else is 404.
// Once both listeners are up it prints one line on stdout and nothing else afterwards:
//
//   LISTENING <h2 port> CONTROL <control port>
//
// The control port is plain HTTP/1.1 on 127.0.0.1:
//   GET  /count  -> {"count": n, "first_ms": epoch ms of the first push or null, "last_ms": ...}
//   POST /reset  -> zeroes the count and forgets first/last (answers the same JSON, before reset)
// Times are epoch milliseconds with sub-millisecond precision (performance.timeOrigin + now()).
// It exits on SIGTERM / SIGINT, or when its stdin closes (so it cannot outlive its parent).

import http from "node:http";
import http2 from "node:http2";
import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  if (at >= 0 && at + 1 < process.argv.length) return process.argv[at + 1];
  if (fallback === undefined) {
    process.stderr.write(`fake_apns: --${name} is required\n`);
    process.exit(2);
  }
  return fallback;
}

const WINDOW = 1 << 30; // connection-level receive window: never a limit on a benchmark
let count = 0;
let firstMs = null;
let lastMs = null;

const now = () => performance.timeOrigin + performance.now();

const server = http2.createSecureServer({
  cert: readFileSync(option("cert")),
  key: readFileSync(option("key")),
  ALPNProtocols: ["h2"],
  allowHTTP1: false,
  maxSessionMemory: 512, // MB; the default 10 MB can refuse streams under a burst
  settings: {
    maxConcurrentStreams: 1000, // what Apple advertises; aioapns sizes its stream pool by it
    initialWindowSize: 2 ** 31 - 1, // per-stream receive window (the maximum)
    maxHeaderListSize: 65536,
  },
});

server.on("session", (session) => {
  session.setLocalWindowSize(WINDOW);
  session.on("error", () => {}); // a client going away mid-stream is not our concern
});

function answer(stream, headers) {
  if (stream.destroyed || stream.closed) return;
  count += 1;
  const t = now();
  if (firstMs === null) firstMs = t;
  lastMs = t;
  stream.respond(
    { ":status": 200, "apns-id": headers["apns-id"] || randomUUID() },
    { endStream: true },
  );
}

server.on("stream", (stream, headers) => {
  stream.on("error", () => {});
  const path = headers[":path"] || "";
  if (headers[":method"] !== "POST" || !path.startsWith("/3/device/")) {
    stream.respond({ ":status": 404 }, { endStream: true });
    stream.resume();
    return;
  }
  // Answer once the request body is in (as Apple does), so the stream closes cleanly on both
  // sides and no RST_STREAM follows the answer.
  if (stream.readableEnded || stream.endAfterHeaders) {
    answer(stream, headers);
  } else {
    stream.on("end", () => answer(stream, headers));
    stream.resume(); // discard the body ({})
  }
});

server.on("sessionError", () => {});

const control = http.createServer((req, res) => {
  const body = JSON.stringify({ count, first_ms: firstMs, last_ms: lastMs });
  if (req.url === "/count" && req.method === "GET") {
    res.writeHead(200, { "content-type": "application/json" }).end(body);
  } else if (req.url === "/reset" && req.method === "POST") {
    count = 0;
    firstMs = null;
    lastMs = null;
    res.writeHead(200, { "content-type": "application/json" }).end(body);
  } else {
    res.writeHead(404).end();
  }
});

function listen(target, port) {
  return new Promise((resolve, reject) => {
    target.once("error", reject);
    target.listen(port, "127.0.0.1", () => resolve(target.address().port));
  });
}

const h2Port = await listen(server, Number(option("port", "0")));
const controlPort = await listen(control, 0);
process.stdout.write(`LISTENING ${h2Port} CONTROL ${controlPort}\n`);

function stop() {
  server.close();
  control.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.on("error", stop);
process.stdin.resume();
