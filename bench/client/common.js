// Shared by the bench clients: arguments, percentiles, the targets' wire protocols, an HTTP producer.
//
// The clients are deliberately light: a frame is never turned into a string or parsed as a whole
// when the two numbers the harness needs (the event's seq and the producer's counter, carried in
// data.step) can be found in its bytes.

import http from "node:http";
import { performance } from "node:perf_hooks";

export function parseArgs(argv, defaults) {
  const args = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (!key.startsWith("--")) throw new Error(`unexpected argument ${key}`);
    const name = key.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(name in defaults)) throw new Error(`unknown option ${key}`);
    const value = argv[++i];
    if (value === undefined) throw new Error(`${key} needs a value`);
    args[name] = typeof defaults[name] === "number" ? Number(value) : value;
  }
  return args;
}

export const now = () => performance.now();

export function say(phase, fields = {}) {
  process.stdout.write(JSON.stringify({ phase, t: now(), ...fields }) + "\n");
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function summarize(samples, count = samples.length) {
  if (count === 0) return { count: 0, p50: null, p90: null, p99: null, p999: null, max: null, mean: null };
  const sorted = Float64Array.from(samples.subarray ? samples.subarray(0, count) : samples.slice(0, count)).sort();
  const at = (q) => sorted[Math.min(count - 1, Math.floor(count * q))];
  let sum = 0;
  for (let i = 0; i < count; i++) sum += sorted[i];
  const round = (x) => Math.round(x * 1000) / 1000;
  return {
    count,
    p50: round(at(0.5)),
    p90: round(at(0.9)),
    p99: round(at(0.99)),
    p999: round(at(0.999)),
    max: round(sorted[count - 1]),
    mean: round(sum / count),
  };
}

/** A growable Float64Array of samples. */
export class Samples {
  constructor(capacity = 1 << 16) {
    this.values = new Float64Array(capacity);
    this.length = 0;
  }
  push(x) {
    if (this.length === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[this.length++] = x;
  }
  summary() {
    return summarize(this.values, this.length);
  }
}

// --- reading numbers out of a frame's bytes -----------------------------------------------------------

const QUOTE = 0x22, SPACE = 0x20, COLON = 0x3a, ZERO = 0x30, NINE = 0x39;
const SEQ_KEY = Buffer.from('"seq"');
const STEP_KEY = Buffer.from('"step"');

/** The non-negative integer value of `key` (a quoted JSON key as bytes) in `buf`, quoted or not; -1 if absent. */
export function intField(buf, key, from = 0) {
  let i = buf.indexOf(key, from);
  if (i < 0) return -1;
  i += key.length;
  while (buf[i] === SPACE || buf[i] === COLON || buf[i] === QUOTE) i++;
  let value = 0, digits = 0;
  for (; buf[i] >= ZERO && buf[i] <= NINE; i++, digits++) value = value * 10 + (buf[i] - ZERO);
  return digits ? value : -1;
}

export const seqOf = (buf) => intField(buf, SEQ_KEY);
export const stepOf = (buf) => intField(buf, STEP_KEY);

const MESSAGE_KEY = Buffer.from('"message"');
const DOT = 0x2e;

/** The publish time the producer wrote at the start of data.message ("<epoch ms> <padding>"); -1 if absent. */
export function sentAt(buf) {
  let i = buf.indexOf(MESSAGE_KEY);
  if (i < 0) return -1;
  i += MESSAGE_KEY.length;
  while (buf[i] === SPACE || buf[i] === COLON || buf[i] === QUOTE) i++;
  const start = i;
  while ((buf[i] >= ZERO && buf[i] <= NINE) || buf[i] === DOT) i++;
  return i > start ? Number(buf.toString("latin1", start, i)) : -1;
}

/** Milliseconds on the machine's wall clock, at sub-millisecond resolution: the same clock in every
 * process of the client, so a publish time written by one can be compared with an arrival in another. */
export const clock = () => performance.timeOrigin + performance.now();

const EVENT_PREFIX = Buffer.from('{"type":"agent_run_progress"');
const startsWith = (buf, prefix) => buf.length >= prefix.length && buf.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;

// --- the targets ------------------------------------------------------------------------------------

/**
 * How to speak to each target. `open(ws, client)` runs once the socket is open; `frame(buf, client)`
 * sees every inbound frame and returns true when it was an event (the caller then reads its numbers).
 * `client.ready()` is called when the client is subscribed and will receive every new event.
 */
export const TARGETS = {
  // Herald: token in the query string, subscribe to one project, answer heartbeats.
  herald: {
    path: (a, i) => `/ws?token=${encodeURIComponent(a.token)}&clientId=${a.clientPrefix}${i}`,
    publishPath: (a, project) => `/api/projects/${encodeURIComponent(project)}/events`,
    open() {},
    frame(buf, client) {
      if (startsWith(buf, EVENT_PREFIX)) return true;
      const msg = JSON.parse(buf.toString());
      if (msg.type === "welcome") {
        for (const project of client.projects) {
          const sub = { type: "subscribe", projectId: project };
          if (client.after !== undefined) sub.after = client.after;
          client.ws.send(JSON.stringify(sub));
        }
      } else if (msg.type === "subscribed") {
        client.last[msg.projectId] = msg.after;
        client.head = msg.head;
        if (++client.subscribed === client.projects.length) client.ready();
      } else if (msg.type === "ping") {
        client.ws.send(JSON.stringify({ type: "pong", ts: msg.ts }));
      } else if (msg.type === "error") {
        client.errors.push(msg);
        if (client.errors.length === 1) console.error(`client ${client.i}: ${buf.toString().slice(0, 300)}`);
        // A refused subscribe must not hold the run forever: the client counts as ready, its events as missing.
        if (msg.ref === undefined || client.projects.includes(msg.ref)) client.ready();
      }
      return false;
    },
  },
  // python-socketio (Engine.IO 4 over a bare WebSocket): open packet "0{...}", connect "40", events
  // '42["event",{...}]', server pings "2" answered with "3".
  socketio: {
    path: () => `/socket.io/?EIO=4&transport=websocket`,
    publishPath: () => "/publish",
    open() {},
    frame(buf, client) {
      if (buf[0] === 0x34 && buf[1] === 0x32) return true; // "42": an event
      if (buf[0] === 0x32 && buf.length === 1) client.ws.send("3");
      else if (buf[0] === 0x30) client.ws.send("40"); // engine.io open: connect the default namespace
      else if (buf[0] === 0x34 && buf[1] === 0x30) client.ready(); // "40{sid}": connected
      return false;
    },
  },
  // The bare FastAPI endpoint: connect and receive; its first frame says it registered the client.
  broadcast: {
    path: () => "/ws",
    publishPath: () => "/publish",
    open() {},
    frame(buf, client) {
      if (client.isReady) return true;
      client.ready(); // {"type":"hello"}
      return false;
    },
  },
};

// --- producing over HTTP ------------------------------------------------------------------------------

/** A keep-alive HTTP producer: `post(path, body)` resolves to {status, ms, body}. */
export class Producer {
  constructor(baseUrl, token, maxSockets) {
    this.url = new URL(baseUrl);
    this.agent = new http.Agent({ keepAlive: true, maxSockets });
    this.headers = { "Content-Type": "application/json" };
    if (token) this.headers.Authorization = `Bearer ${token}`;
  }
  post(path, body) {
    const payload = Buffer.from(body);
    const started = now();
    return new Promise((resolve) => {
      const req = http.request(
        {
          host: this.url.hostname,
          port: this.url.port,
          path,
          method: "POST",
          agent: this.agent,
          headers: { ...this.headers, "Content-Length": payload.length },
        },
        (res) => {
          const chunks = [];
          res.on("data", (c) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode, ms: now() - started, body: Buffer.concat(chunks) }));
        },
      );
      req.on("error", (err) => resolve({ status: 0, ms: now() - started, body: Buffer.from(String(err)) }));
      req.end(payload);
    });
  }
  close() {
    this.agent.destroy();
  }
}

/** The publish body: the same agent_run_progress event for every target; data.step carries the counter
 * and data.message the publish time (`clock()`), then padding. */
export function eventBody(project, run, k, sent, pad) {
  return JSON.stringify({
    type: "agent_run_progress",
    projectId: project,
    messageId: `${run}-${k}`,
    data: { runId: run, status: "running", progress: 50, step: String(k), message: `${sent.toFixed(3)} ${pad}` },
  });
}
