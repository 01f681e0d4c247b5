// Catch-up: one client that is `behind` events behind subscribes and reads until it is current.
//
//   node catchup.js --url http://127.0.0.1:PORT --token T --project P --head H [--after 0] --out result.json
//
// Time runs from sending `subscribe` to the arrival of the event with seq == head; the stream must be
// exactly after+1..head, in order.

import { writeFileSync } from "node:fs";
import WebSocket from "ws";
import { now, parseArgs, say, seqOf } from "./common.js";

const args = parseArgs(process.argv.slice(2), {
  url: "http://127.0.0.1:8000",
  token: "",
  project: "bench",
  head: 100000,
  after: 0,
  timeout: 120,
  out: "",
});

const ws = new WebSocket(args.url.replace(/^http/, "ws") + `/ws?token=${encodeURIComponent(args.token)}`, {
  perMessageDeflate: false,
});
let started = 0, subscribedAt = 0, last = args.after, received = 0, disorder = 0, bytes = 0;
const result = await new Promise((resolve) => {
  const timer = setTimeout(() => resolve({ timedOut: true }), args.timeout * 1000);
  ws.on("message", (buf) => {
    if (buf[0] === 0x7b && buf.indexOf('"seq"') > 0 && buf.indexOf('{"type":"subscribed"') !== 0) {
      const seq = seqOf(buf);
      received++;
      bytes += buf.length;
      if (seq !== last + 1) disorder++;
      last = seq;
      if (seq === args.head) {
        clearTimeout(timer);
        resolve({ timedOut: false });
      }
      return;
    }
    const msg = JSON.parse(buf);
    if (msg.type === "welcome") {
      started = now();
      ws.send(JSON.stringify({ type: "subscribe", projectId: args.project, after: args.after }));
    } else if (msg.type === "subscribed") {
      subscribedAt = now();
    } else if (msg.type === "ping") {
      ws.send(JSON.stringify({ type: "pong", ts: msg.ts }));
    }
  });
});
const seconds = (now() - started) / 1000;
const out = {
  ...result,
  behind: args.head - args.after,
  received,
  disorder,
  complete: last === args.head && disorder === 0 && received === args.head - args.after,
  seconds,
  subscribedMs: subscribedAt - started,
  eventsPerS: received / seconds,
  mibPerS: bytes / 2 ** 20 / seconds,
};
if (args.out) writeFileSync(args.out, JSON.stringify(out, null, 2));
say("done", out);
ws.terminate();
process.exit(0);
