// A load client for the fake APNs, to show it is not the bottleneck: HTTP/2 POSTs of `{}` as
// fast as possible over a few sessions with a bounded number of streams in flight.
//
//   node load_apns.mjs --port P --ca ca.pem [--count 100000] [--sessions 4] [--in-flight 1000]
//
// Prints one JSON line: {"count": n, "ok": n200, "seconds": s, "rate": pushes per second}.

import http2 from "node:http2";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const port = Number(option("port"));
const ca = readFileSync(option("ca"));
const total = Number(option("count", "100000"));
const sessionCount = Number(option("sessions", "4"));
const inFlight = Number(option("in-flight", "1000"));
const token = "ab".repeat(32);

function connect() {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://127.0.0.1:${port}`, {
      ca,
      settings: { initialWindowSize: 2 ** 31 - 1 },
    });
    session.once("error", reject);
    session.once("connect", () => {
      session.setLocalWindowSize(1 << 30);
      resolve(session);
    });
  });
}

const sessions = await Promise.all(Array.from({ length: sessionCount }, connect));
let started = 0;
let ok = 0;
const body = Buffer.from("{}");

function push(session) {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ":method": "POST",
      ":path": `/3/device/${token}`,
      "apns-topic": "pass.bench",
      "content-length": "2",
    });
    req.on("response", (headers) => {
      if (headers[":status"] === 200) ok += 1;
    });
    req.on("error", reject);
    req.on("close", resolve);
    req.resume();
    req.end(body);
  });
}

async function lane(index) {
  const session = sessions[index % sessions.length];
  while (started < total) {
    started += 1;
    await push(session);
  }
}

const t0 = performance.now();
await Promise.all(Array.from({ length: inFlight }, (_, i) => lane(i)));
const seconds = (performance.now() - t0) / 1000;
for (const session of sessions) session.close();
process.stdout.write(
  JSON.stringify({ count: total, ok, seconds, rate: total / seconds }) + "\n",
);
