// @vitest-environment node
// The fallbacks and the offline queue against the real service: offline publishes delivered once
// after a reload and a reconnect; with /ws blocked the client runs on SSE and comes back to the
// WebSocket; with SSE blocked too it polls, and comes back; nothing is missed or repeated.
import { IDBFactory } from 'fake-indexeddb';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  HeraldClient,
  indexedDbQueue,
  memoryStorage,
  type ClientOptions,
  type Event,
  type EventPage,
  type KeyValueStorage,
  type TransportKind,
  type WebSocketLike,
  type WebSocketMessage,
} from '@herald/client';
import { fakePlatform } from './fakes';
import { gates, Service, until } from './service';

let service: Service;
const clients: HeraldClient[] = [];

beforeAll(async () => {
  service = await Service.start();
  for (const id of ['q1', 'q2', 'f1', 'f2', 'g1']) await service.createProject(id);
}, 60_000);

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

afterAll(async () => {
  await service?.dispose();
}, 60_000);

/** A real socket whose `published` answers are lost on the way (as when the connection drops first). */
class DeafToAnswers implements WebSocketLike {
  onopen: WebSocketLike['onopen'] = null;
  onmessage: WebSocketLike['onmessage'] = null;
  onclose: WebSocketLike['onclose'] = null;
  onerror: WebSocketLike['onerror'] = null;
  private readonly socket: WebSocket;

  constructor(url: string) {
    this.socket = new WebSocket(url);
    this.socket.onopen = (event) => this.onopen?.(event);
    this.socket.onmessage = (event) => {
      const frame = JSON.parse(String(event.data)) as { type: string };
      if (frame.type !== 'published') this.onmessage?.(event);
    };
    this.socket.onclose = (event) => this.onclose?.(event);
    this.socket.onerror = (event) => this.onerror?.(event);
  }

  get readyState(): number {
    return this.socket.readyState;
  }

  send(data: string): void {
    this.socket.send(data);
  }

  close(code?: number, reason?: string): void {
    this.socket.close(code, reason);
  }
}

function makeClient(options: Partial<ClientOptions> = {}) {
  const client = new HeraldClient({
    token: service.token,
    baseUrl: service.baseUrl,
    WebSocket,
    storage: memoryStorage(),
    minReconnectDelayMs: 50,
    maxReconnectDelayMs: 300,
    pollIntervalMs: 200,
    ...options,
  });
  clients.push(client);
  const received: WebSocketMessage[] = [];
  client.on('message', (message) => received.push(message));
  const seqs = (projectId: string) => received.filter((m) => m.projectId === projectId).map((m) => m.seq);
  const kinds: (TransportKind | null)[] = [];
  client.on('state', (state) => {
    if (state.status === 'connected' && kinds.at(-1) !== state.transport) kinds.push(state.transport);
  });
  return { client, received, seqs, kinds };
}

async function log(projectId: string): Promise<Event[]> {
  const { body } = await service.request<EventPage>('GET', `/api/projects/${projectId}/events?limit=1000`);
  return body.events;
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const progress = (i: number) => ({ runId: `run-${i % 3}`, status: 'running', progress: i }) as const;

describe('the offline queue against the real service', () => {
  it('delivers publishes made offline exactly once, in order, after a reload and a reconnect', async () => {
    const indexedDB = new IDBFactory();
    const storage: KeyValueStorage = memoryStorage();
    const net = fakePlatform(false);
    // The first page: offline, five publishes queue up; the page goes away with them unanswered.
    const firstQueue = indexedDbQueue({ indexedDB });
    const first = makeClient({ platform: net.platform, storage, queue: firstQueue });
    first.client.connect();
    for (const i of range(1, 5)) {
      void first.client.sendMessage({ type: 'agent_run_progress', projectId: 'q1', data: progress(i), messageId: `q1-${i}` });
    }
    expect(first.client.getState()).toMatchObject({ status: 'connecting', online: false, queued: 5 });
    await firstQueue.flush(); // (a page that closes within the write's few ms loses what it was writing)
    first.client.close();

    // The reloaded page finds them, and one more is published while it is still offline.
    const queue = indexedDbQueue({ indexedDB });
    const second = makeClient({ platform: net.platform, storage, queue });
    await queue.ready;
    expect(second.client.getState().queued).toBe(5);
    const sixth = second.client.sendMessage({ type: 'agent_run_progress', projectId: 'q1', data: progress(6), messageId: 'q1-6' });
    const published: string[] = [];
    second.client.on('published', (message) => published.push(message.messageId));
    second.client.connect();
    net.goOnline();
    await expect(sixth).resolves.toMatchObject({ messageId: 'q1-6', seq: 6 });
    await until(() => second.client.getState().queued === 0, 20_000, 'the queue to drain');
    expect(published).toEqual(range(1, 6).map((i) => `q1-${i}`));
    expect((await log('q1')).map((event) => event.messageId)).toEqual(range(1, 6).map((i) => `q1-${i}`));

    // Nothing is left for a third page.
    await queue.flush();
    const third = indexedDbQueue({ indexedDB });
    await third.ready;
    expect(third.size).toBe(0);
  }, 90_000);

  it('never duplicates a publish whose answer was lost: the resend after a reload is the same event', async () => {
    const indexedDB = new IDBFactory();
    const storage = memoryStorage();
    const firstQueue = indexedDbQueue({ indexedDB });
    // The first page's socket loses every `published` answer: all 20 are appended, none is answered.
    const first = makeClient({ storage, queue: firstQueue, WebSocket: DeafToAnswers });
    first.client.connect();
    await until(() => first.client.getState().status === 'connected', 20_000, 'the first connection');
    for (const i of range(1, 20)) {
      void first.client.sendMessage({ type: 'agent_run_progress', projectId: 'q2', data: progress(i), messageId: `q2-${i}` });
    }
    await until(async () => (await log('q2')).length === 20, 20_000, 'the appends');
    await firstQueue.flush();
    expect(first.client.getState().queued).toBe(20);
    first.client.close();

    const queue = indexedDbQueue({ indexedDB });
    const second = makeClient({ storage, queue });
    const published: number[] = [];
    second.client.on('published', (message) => published.push(message.seq));
    await queue.ready;
    second.client.connect();
    await until(() => second.client.getState().queued === 0, 20_000, 'the queue to drain');
    expect(published).toEqual(range(1, 20)); // the originals, answered again
    const events = await log('q2');
    expect(events.map((event) => event.messageId)).toEqual(range(1, 20).map((i) => `q2-${i}`));
  }, 90_000);
});

describe('the fallback ladder against the real service', () => {
  it('runs on SSE while /ws is blocked, publishes and acks over HTTP, and returns to the WebSocket', async () => {
    const net = await gates(service);
    net.blocked.ws = true;
    const { client, seqs, kinds } = makeClient({ WebSocket: net.WebSocket, fetch: net.fetch });
    client.subscribe('f1', { after: 0 });
    client.subscribe('f2', { after: 0 });
    client.connect();
    await until(() => client.getState().transport === 'sse' && client.getState().status === 'connected', 20_000, 'SSE');
    for (const i of range(1, 5)) await service.publish('f1', `f1-${i}`);
    await until(() => seqs('f1').length === 5, 20_000, 'events over SSE');
    const published = await client.sendMessage({ type: 'agent_run_progress', projectId: 'f2', data: progress(1) });
    expect(published.seq).toBe(1);
    await until(() => seqs('f2').length === 1, 20_000, 'its own event over SSE');
    await until(async () => (await service.cursor('f1', client.clientId)) === 5, 20_000, 'acks over HTTP');

    // The WebSocket comes back while events keep coming: the client switches, missing nothing.
    const publishing = (async () => {
      for (const i of range(6, 40)) await service.publish('f1', `f1-${i}`);
    })();
    net.blocked.ws = false;
    await until(() => client.getState().transport === 'websocket', 20_000, 'the WebSocket again');
    await publishing;
    await until(() => seqs('f1').length >= 40, 20_000, 'every event');
    expect(seqs('f1')).toEqual(range(1, 40));
    expect(seqs('f2')).toEqual([1]);
    expect(kinds).toEqual(['sse', 'websocket']);
    await until(async () => (await service.cursor('f1', client.clientId)) === 40, 20_000, 'the acks');
  }, 90_000);

  it('polls when neither /ws nor SSE works, says so, and returns to the WebSocket', async () => {
    const net = await gates(service);
    net.blocked.ws = true;
    net.blocked.sse = true;
    const { client, seqs, kinds } = makeClient({ WebSocket: net.WebSocket, fetch: net.fetch });
    client.subscribe('g1', { after: 0 });
    client.connect();
    await until(() => client.getState().transport === 'polling' && client.getState().status === 'connected', 20_000, 'polling');
    expect(client.getState().pollIntervalMs).toBe(200);
    for (const i of range(1, 5)) await service.publish('g1', `g1-${i}`);
    await until(() => seqs('g1').length === 5, 20_000, 'events by polling');
    await client.sendMessage({ type: 'agent_run_progress', projectId: 'g1', data: progress(6), messageId: 'g1-6' });

    net.blocked.ws = false;
    net.blocked.sse = false;
    await until(() => client.getState().transport === 'websocket', 20_000, 'the WebSocket again');
    for (const i of range(7, 10)) await service.publish('g1', `g1-${i}`);
    await until(() => seqs('g1').length >= 10, 20_000, 'every event');
    expect(seqs('g1')).toEqual(range(1, 10));
    expect(kinds[0]).toBe('polling');
    expect(kinds.at(-1)).toBe('websocket');
    expect(client.getState().pollIntervalMs).toBeNull();
  }, 90_000);
});
