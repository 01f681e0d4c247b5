// Fan-out: N WebSocket clients on one project and an HTTP producer, on one clock.
//
//   node fanout.js --target herald|socketio|broadcast --url http://127.0.0.1:PORT [--token T]
//                  --clients N --mode latency|burst [--rate R --duration S --warmup S]
//                  [--events E --concurrency C] [--idle S] --out result.json
//
// latency: the producer publishes R events/s (open loop: each publish starts on schedule, whatever the
//   previous ones are doing) for warmup + duration seconds; a sample is publish start -> the frame's
//   arrival at one client, both read from this process's performance.now(); warm-up samples are dropped.
// burst:   the producer publishes E events with C requests in flight, as fast as the target answers;
//   deliveries/s = delivered / (last arrival - first publish start): the target's fan-out at saturation.
// idle:    connect, report "connected", hold the connections for --idle seconds, close.
// --workers K: the clients are spread over K child processes (the producer stays here), for when one
//   process cannot read N clients' frames as fast as they come. The publish time travels in the event
//   (data.message) and arrivals are read on the same wall clock at sub-millisecond resolution.
//
// Progress lines (JSON, one per line) go to stdout, so the driver can sample the server at each phase.
// Every client checks its stream: seqs must run on with no gap (Herald's seq; the peers' in-memory
// counter, where concurrent publishes may reorder, so they are counted apart as reordered).

import { fork } from "node:child_process";
import { writeFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";
import WebSocket from "ws";
import { Producer, Samples, TARGETS, clock, eventBody, now, parseArgs, say, sentAt, seqOf, sleep, stepOf } from "./common.js";

const args = parseArgs(process.argv.slice(2), {
  target: "herald",
  url: "http://127.0.0.1:8000",
  urls: "", // several processes of one service: clients spread over them, round robin; the producer uses --url
  token: "",
  project: "bench",
  clients: 100,
  clientPrefix: `bench-${process.pid}-`,
  connectConcurrency: 100,
  mode: "latency",
  rate: 10,
  duration: 10,
  warmup: 2,
  events: 500,
  concurrency: 16,
  idle: 0,
  drain: 15,
  pad: 60,
  reportEvery: 0,
  workers: 1,
  out: "",
});

// In a worker process: which share of the clients is ours.
const WORKER = process.env.FANOUT_WORKER === undefined ? null : Number(process.env.FANOUT_WORKER);
const WORKERS = WORKER === null ? Math.max(1, args.workers) : Number(process.env.FANOUT_WORKERS);

const target = TARGETS[args.target];
if (!target) throw new Error(`unknown target ${args.target}`);
const wsBases = (args.urls ? args.urls.split(",") : [args.url]).map((u) => u.replace(/^http/, "ws"));
const pad = "x".repeat(args.pad);
const run = process.env.FANOUT_RUN || `r${process.pid}${Date.now() % 100000}`;
const runBytes = Buffer.from(`"${run}"`);

const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

// --- state shared by every client ------------------------------------------------------------------

let measureFrom = Infinity; // k from which latency samples count (after warm-up)
const latency = new Samples(1 << 20);
let interval = new Samples(1 << 16);
let delivered = 0, gaps = 0, reordered = 0, duplicates = 0, foreign = 0;
let firstArrival = Infinity, lastArrival = 0;
const closes = new Map(); // close code -> count, for connections that closed before the end
let closing = false;

function onEvent(client, buf) {
  const arrival = clock();
  const k = stepOf(buf);
  const seq = seqOf(buf);
  const sent = sentAt(buf);
  if (k < 0 || sent < 0 || buf.indexOf(runBytes) < 0) {
    foreign++; // an event this run did not publish (a leftover); not counted
    return;
  }
  delivered++;
  client.delivered++;
  if (arrival < firstArrival) firstArrival = arrival;
  lastArrival = arrival;
  if (k >= measureFrom) {
    latency.push(arrival - sent);
    interval.push(arrival - sent);
  }
  const last = client.last[args.project];
  if (last !== undefined && seq >= 0) {
    if (seq === last + 1) client.last[args.project] = seq;
    else if (seq > last + 1) {
      if (args.target === "herald") gaps += seq - last - 1;
      else reordered++;
      client.last[args.project] = seq;
    } else if (args.target === "herald") duplicates++;
    else reordered++;
  }
}

function connect(i) {
  return new Promise((resolve) => {
    const client = {
      i, delivered: 0, subscribed: 0, projects: [args.project], last: {}, errors: [], ws: null, isReady: false,
      ready() {
        if (!this.isReady) {
          this.isReady = true;
          resolve(client);
        }
      },
    };
    const wsBase = wsBases[i % wsBases.length];
    const ws = new WebSocket(wsBase + target.path(args, i), { perMessageDeflate: false, handshakeTimeout: 30000 });
    client.ws = ws;
    ws.on("open", () => target.open(ws, client));
    ws.on("message", (buf, isBinary) => {
      if (target.frame(buf, client)) onEvent(client, buf);
    });
    ws.on("close", (code) => {
      if (!closing) closes.set(code, (closes.get(code) || 0) + 1);
      client.closed = true;
      resolve(client);
    });
    ws.on("error", () => {}); // a close follows
  });
}

async function connectAll() {
  const started = now();
  const clients = [];
  const mine = [];
  for (let i = 0; i < args.clients; i++) if (WORKER === null || i % WORKERS === WORKER) mine.push(i);
  let next = 0;
  async function worker() {
    while (next < mine.length) clients.push(await connect(mine[next++]));
  }
  await Promise.all(Array.from({ length: Math.min(args.connectConcurrency, mine.length) }, worker));
  const ready = clients.filter((c) => c.isReady && !c.closed).length;
  return { clients, ready, connectS: (now() - started) / 1000 };
}

// --- the producer --------------------------------------------------------------------------------

const producer = new Producer(args.url, args.token, Math.max(args.concurrency, 64));
const publishMs = new Samples();
let published = 0, publishErrors = 0;
const errorStatuses = {};

async function publish(k) {
  const body = eventBody(args.project, run, k, clock(), pad);
  const res = await producer.post(target.publishPath(args, args.project), body);
  publishMs.push(res.ms);
  if (res.status === 200 || res.status === 201) published++;
  else {
    publishErrors++;
    errorStatuses[res.status] = (errorStatuses[res.status] || 0) + 1;
    if (publishErrors <= 3) console.error(`publish failed: ${res.status} ${res.body.toString().slice(0, 200)}`);
  }
}

async function publishAtRate(rate, seconds, fromK) {
  const total = Math.round(rate * seconds);
  const start = now();
  const inFlight = new Set();
  let lastReport = start;
  for (let j = 0; j < total; j++) {
    const due = start + (j * 1000) / rate;
    const wait = due - now();
    if (wait > 1) await sleep(wait);
    const p = publish(fromK + j);
    inFlight.add(p);
    p.then(() => inFlight.delete(p));
    if (args.reportEvery && now() - lastReport >= args.reportEvery * 1000) {
      lastReport = now();
      say("interval", { delivered, published, latency: interval.summary() });
      interval = new Samples(1 << 16);
    }
  }
  await Promise.all(inFlight);
  return fromK + total;
}

async function publishBurst(events, concurrency) {
  let k = 0;
  async function lane() {
    while (k < events) await publish(k++);
  }
  await Promise.all(Array.from({ length: concurrency }, lane));
  return events;
}

async function drain(clients, expectedPerClient, seconds) {
  const deadline = now() + seconds * 1000;
  const live = clients.filter((c) => !c.closed);
  while (now() < deadline) {
    if (live.every((c) => c.closed || c.delivered >= expectedPerClient)) return true;
    await sleep(20);
  }
  return false;
}

// --- the run ---------------------------------------------------------------------------------------

if (WORKER !== null) await runWorker();
else if (WORKERS > 1) await runWithWorkers();
else await runAlone();

/** A worker: its share of the clients; counts go to the coordinator. */
async function runWorker() {
  const { clients, ready, connectS } = await connectAll();
  process.send({ type: "connected", ready, connectS });
  const cpuBefore = process.cpuUsage();
  const progress = setInterval(() => process.send({ type: "progress", delivered }), 50);
  process.on("message", (m) => {
    if (m.type === "measure") measureFrom = m.from;
    else if (m.type === "finish") {
      clearInterval(progress);
      const cpu = process.cpuUsage(cpuBefore);
      closing = true;
      const live = clients.filter((c) => c.isReady && !c.closed).length;
      const missing = clients.filter((c) => c.isReady).reduce((n, c) => n + Math.max(0, m.published - c.delivered), 0);
      process.send({
        type: "result",
        latencies: Buffer.from(latency.values.buffer, 0, latency.length * 8).toString("base64"),
        delivered, gaps, duplicates, reordered, foreign, missing, live,
        closes: Object.fromEntries(closes),
        errors: clients.reduce((n, c) => n + c.errors.length, 0),
        firstArrival, lastArrival,
        cpuS: (cpu.user + cpu.system) / 1e6,
        loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
        loopDelayMaxMs: loopDelay.max / 1e6,
      }, () => {
        for (const c of clients) c.ws.terminate();
        process.exit(0);
      });
    }
  });
}

/** The coordinator: the producer here, the clients in `WORKERS` child processes. */
async function runWithWorkers() {
  const workers = [];
  const connected = [];
  for (let w = 0; w < WORKERS; w++) {
    const env = { ...process.env, FANOUT_WORKER: String(w), FANOUT_WORKERS: String(WORKERS), FANOUT_RUN: run };
    const child = fork(process.argv[1], process.argv.slice(2), { env, stdio: ["ignore", "ignore", "inherit", "ipc"] });
    child.delivered = 0;
    workers.push(child);
    connected.push(new Promise((resolve) => child.on("message", (m) => {
      if (m.type === "connected") resolve(m);
      else if (m.type === "progress") child.delivered = m.delivered;
      else if (m.type === "result") child.result = m;
    })));
  }
  const states = await Promise.all(connected);
  const ready = states.reduce((n, m) => n + m.ready, 0);
  const connectS = Math.max(...states.map((m) => m.connectS));
  say("connected", { clients: args.clients, ready, connectS });
  const total = () => workers.reduce((n, w) => n + w.delivered, 0);
  const outcome = await produce(ready, (from) => workers.forEach((w) => w.send({ type: "measure", from })),
    async (expected) => {
      const deadline = now() + args.drain * 1000;
      while (now() < deadline) {
        if (total() >= expected) return true;
        await sleep(20);
      }
      return false;
    });
  const results = await Promise.all(workers.map((w) => new Promise((resolve) => {
    w.on("exit", () => resolve(w.result));
    w.send({ type: "finish", published });
  })));
  for (const r of results) {
    const bytes = Buffer.from(r.latencies, "base64");
    const values = new Float64Array(new Uint8Array(bytes).buffer); // a copy: aligned, and not the pool
    for (const x of values) latency.push(x);
    delivered += r.delivered; gaps += r.gaps; duplicates += r.duplicates; reordered += r.reordered;
    foreign += r.foreign;
    for (const [code, n] of Object.entries(r.closes)) closes.set(code, (closes.get(code) || 0) + n);
    firstArrival = Math.min(firstArrival, r.firstArrival);
    lastArrival = Math.max(lastArrival, r.lastArrival);
  }
  report({
    ...outcome, ready, connectS,
    live: results.reduce((n, r) => n + r.live, 0),
    missing: results.reduce((n, r) => n + r.missing, 0),
    errors: results.reduce((n, r) => n + r.errors, 0),
    clientCpuS: outcome.cpuS + results.reduce((n, r) => n + r.cpuS, 0),
    loopDelayP99Ms: Math.max(...results.map((r) => r.loopDelayP99Ms)),
    loopDelayMaxMs: Math.max(...results.map((r) => r.loopDelayMaxMs)),
  });
}

/** One process: the clients and the producer together. */
async function runAlone() {
  const { clients, ready, connectS } = await connectAll();
  say("connected", { clients: args.clients, ready, connectS });
  const outcome = await produce(ready, () => {}, (expected) => drain(clients, expected / Math.max(1, ready), args.drain));
  closing = true;
  report({
    ...outcome, ready, connectS,
    live: clients.filter((c) => c.isReady && !c.closed).length,
    missing: clients.filter((c) => c.isReady).reduce((n, c) => n + Math.max(0, published - c.delivered), 0),
    errors: clients.reduce((n, c) => n + c.errors.length, 0),
    clientCpuS: outcome.cpuS,
    loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    loopDelayMaxMs: loopDelay.max / 1e6,
  });
  for (const c of clients) c.ws.terminate();
}

/** Idle, then publish (latency or burst), then wait until `ready` clients hold everything. */
async function produce(ready, onMeasuring, waitDrained) {
  if (args.idle > 0) {
    await sleep(args.idle * 1000);
    say("idle-done");
  }
  const cpuBefore = process.cpuUsage();
  const started = clock();
  let producedUntil = 0;
  if (args.mode === "latency") {
    const warm = await publishAtRate(args.rate, args.warmup, 0);
    measureFrom = warm;
    onMeasuring(warm);
    say("measuring", { from: warm });
    producedUntil = await publishAtRate(args.rate, args.duration, warm);
  } else if (args.mode === "burst") {
    measureFrom = 0;
    onMeasuring(0);
    say("measuring", { from: 0 });
    producedUntil = await publishBurst(args.events, args.concurrency);
  }
  const publishedAt = clock();
  say("published", { published, publishErrors });
  const drained = producedUntil ? await waitDrained(ready * published) : true;
  const cpu = process.cpuUsage(cpuBefore);
  return { started, publishedAt, drained, cpuS: (cpu.user + cpu.system) / 1e6, elapsed: (clock() - started) / 1000 };
}

function report(o) {
  const expected = o.ready * published;
  const window = (lastArrival - Math.min(o.started, firstArrival)) / 1000;
  const result = {
    target: args.target,
    mode: args.mode,
    clients: args.clients,
    clientProcesses: WORKERS,
    ready: o.ready,
    liveAtEnd: o.live,
    connectS: o.connectS,
    rate: args.mode === "latency" ? args.rate : null,
    durationS: args.mode === "latency" ? args.duration : null,
    events: args.mode === "burst" ? args.events : null,
    concurrency: args.mode === "burst" ? args.concurrency : null,
    published,
    publishErrors,
    errorStatuses,
    publishS: (o.publishedAt - o.started) / 1000,
    expected,
    delivered,
    missing: o.missing,
    deliveredRatio: expected ? delivered / expected : null,
    drained: o.drained,
    gaps,
    duplicates,
    reordered,
    foreign,
    closes: Object.fromEntries(closes),
    errors: o.errors,
    latencyMs: latency.summary(),
    publishMs: publishMs.summary(),
    deliveriesPerS: window > 0 ? delivered / window : null,
    windowS: window,
    client: {
      cpuS: o.clientCpuS,
      cpuShare: o.clientCpuS / o.elapsed,
      loopDelayP99Ms: o.loopDelayP99Ms,
      loopDelayMaxMs: o.loopDelayMaxMs,
    },
  };
  if (args.out) writeFileSync(args.out, JSON.stringify(result, null, 2));
  say("done", { delivered, expected, p99: result.latencyMs.p99 });
  producer.close();
  process.exit(0);
}
