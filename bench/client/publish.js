// Publish throughput: durable events/s into Herald, over HTTP or over WebSocket publish messages.
//
//   node publish.js --url http://127.0.0.1:PORT --token T --via http|batch|ws --projects 1|100
//                   [--concurrency 64] [--batch 100] [--connections 32] [--window 4] --duration S --out result.json
//
// http: `concurrency` requests in flight (keep-alive), each POST waits for its 201.
// batch: the same, each request `POST /api/projects/P/events/batch` with `batch` events for one project.
// ws:   `connections` sockets, each with `window` publish messages in flight; an event counts when its
//       `published` answer arrives (the append committed, synchronous_commit on).
// Events go round-robin over projects bench-0..bench-(P-1) (or `bench` for one). Every acknowledged
// (project, seq) is kept, so the result says whether each project's acknowledged seqs are exactly 1..n.

import { writeFileSync } from "node:fs";
import WebSocket from "ws";
import { Producer, Samples, now, parseArgs, say, sleep } from "./common.js";

const args = parseArgs(process.argv.slice(2), {
  url: "http://127.0.0.1:8000",
  token: "",
  via: "http",
  projects: 1,
  concurrency: 64,
  batch: 100,
  connections: 32,
  window: 4,
  duration: 10,
  warmup: 1,
  out: "",
});

const projects = args.projects === 1 ? ["bench"] : Array.from({ length: args.projects }, (_, i) => `bench-${i}`);
const run = `p${process.pid}`;
const seqs = new Map(projects.map((p) => [p, []]));
const latency = new Samples();
let counter = 0, acked = 0, failed = 0, measuredAcked = 0;
let measuring = false, stopping = false;
const failures = {};

function body(k, withProject) {
  const project = projects[k % projects.length];
  const event = {
    type: "agent_run_progress",
    messageId: `${run}-${k}`,
    data: { runId: run, status: "running", progress: 50, step: String(k) },
  };
  if (withProject) event.projectId = project;
  return { project, text: JSON.stringify(event) };
}

function record(project, seq, started) {
  acked++;
  seqs.get(project).push(seq);
  if (measuring) {
    measuredAcked++;
    latency.push(now() - started);
  }
}

function fail(reason) {
  failed++;
  failures[reason] = (failures[reason] || 0) + 1;
}

async function overHttp() {
  const producer = new Producer(args.url, args.token, args.concurrency);
  async function lane() {
    while (!stopping) {
      const k = counter++;
      const { project, text } = body(k, false);
      const started = now();
      const res = await producer.post(`/api/projects/${project}/events`, text);
      if (res.status === 201) record(project, JSON.parse(res.body).seq, started);
      else fail(`http ${res.status}`);
    }
  }
  return { lanes: Array.from({ length: args.concurrency }, lane), close: () => producer.close() };
}

async function overHttpBatches() {
  const producer = new Producer(args.url, args.token, args.concurrency);
  async function lane() {
    while (!stopping) {
      const first = counter;
      counter += args.batch;
      const project = projects[Math.floor(first / args.batch) % projects.length];
      const events = Array.from({ length: args.batch }, (_, i) => {
        const { text } = body(first + i, false);
        return text;
      });
      const started = now();
      const res = await producer.post(`/api/projects/${project}/events/batch`, `{"events":[${events.join(",")}]}`);
      if (res.status === 201) for (const e of JSON.parse(res.body).events) record(project, e.seq, started);
      else fail(`http ${res.status}`);
    }
  }
  return { lanes: Array.from({ length: args.concurrency }, lane), close: () => producer.close() };
}

async function overWebSocket() {
  const wsUrl = args.url.replace(/^http/, "ws") + `/ws?token=${encodeURIComponent(args.token)}`;
  const sockets = await Promise.all(
    Array.from({ length: args.connections }, () =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
        ws.once("message", () => resolve(ws)); // welcome
        ws.once("error", reject);
      }),
    ),
  );
  const lanes = sockets.map(
    (ws) =>
      new Promise((resolve) => {
        const inFlight = new Map(); // messageId -> [project, started]
        const sendOne = () => {
          const k = counter++;
          const { project, text } = body(k, true);
          inFlight.set(`${run}-${k}`, [project, now()]);
          ws.send(text);
        };
        ws.on("message", (buf) => {
          const msg = JSON.parse(buf);
          if (msg.type === "published") {
            const [project, started] = inFlight.get(msg.messageId);
            inFlight.delete(msg.messageId);
            record(project, msg.seq, started);
          } else if (msg.type === "error") {
            inFlight.delete(msg.ref);
            fail(`ws ${msg.code}`);
          } else if (msg.type === "ping") {
            ws.send(JSON.stringify({ type: "pong", ts: msg.ts }));
            return;
          } else return;
          if (!stopping) sendOne();
          else if (inFlight.size === 0) resolve();
        });
        ws.on("close", () => resolve());
        for (let i = 0; i < args.window; i++) sendOne();
      }),
  );
  return { lanes, close: () => sockets.forEach((ws) => ws.terminate()) };
}

const transports = { http: overHttp, batch: overHttpBatches, ws: overWebSocket };
const { lanes, close } = await transports[args.via]();
await sleep(args.warmup * 1000);
const ackedAtStart = acked;
measuring = true;
const started = now();
say("measuring");
await sleep(args.duration * 1000);
measuring = false;
const elapsed = (now() - started) / 1000;
stopping = true;
await Promise.race([Promise.all(lanes), sleep(10000)]);
close();

// Each project's acknowledged seqs must be exactly 1..n: no gap, no duplicate.
let contiguous = true;
for (const list of seqs.values()) {
  list.sort((a, b) => a - b);
  for (let i = 0; i < list.length; i++) if (list[i] !== i + 1) contiguous = false;
}
const result = {
  via: args.via,
  projects: projects.length,
  concurrency: args.via === "ws" ? args.connections * args.window : args.concurrency,
  batch: args.via === "batch" ? args.batch : null,
  connections: args.via === "ws" ? args.connections : null,
  window: args.via === "ws" ? args.window : null,
  durationS: elapsed,
  eventsPerS: measuredAcked / elapsed,
  acked,
  ackedBeforeMeasuring: ackedAtStart,
  failed,
  failures,
  latencyMs: latency.summary(),
  ackedSeqsContiguous: contiguous,
  heads: Object.fromEntries([...seqs].map(([p, list]) => [p, list.length])),
};
if (args.out) writeFileSync(args.out, JSON.stringify(result, null, 2));
say("done", { eventsPerS: result.eventsPerS, failed });
process.exit(0);
