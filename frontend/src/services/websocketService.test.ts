// @vitest-environment node
// The client's logic against a fake socket and fake timers: states, backoff, heartbeat,
// subscriptions, dedupe, gaps, acks, publishes. tests/websocketService.integration.test.ts runs it
// against the real service.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { event, fakePlatform, fakeSockets, settle } from '../../tests/fakes';
import { RETRY_CLOSE_CODES, TERMINAL_CLOSE_CODES } from '../types/codes';
import type { EventPage, WebSocketMessage, WebSocketState } from '../types/websocket';
import { memoryStorage } from './platform';
import { HeraldClient, HeraldError, type ClientOptions } from './websocketService';

const BASE = 'http://herald.test';

function setup(options: Partial<ClientOptions> = {}) {
  const fake = fakeSockets();
  const net = fakePlatform();
  const history = new Map<string, EventPage>();
  const fetch = vi.fn(async (input: string | URL | Request) => {
    const url = new URL(String(input));
    const page = history.get(url.pathname + url.search);
    if (page === undefined) return { ok: false, status: 503, json: async () => ({}) } as Response;
    return { ok: true, status: 200, json: async () => page } as Response;
  });
  const client = new HeraldClient({
    token: 'tok',
    baseUrl: BASE,
    WebSocket: fake.WebSocket,
    platform: net.platform,
    storage: memoryStorage(),
    fetch: fetch as unknown as typeof globalThis.fetch,
    fallbacks: [], // the WebSocket alone: fallback.test.ts covers the ladder
    ...options,
  });
  const received: WebSocketMessage[] = [];
  client.on('message', (message) => received.push(message));
  const seqs = (projectId: string) => received.filter((m) => m.projectId === projectId).map((m) => m.seq);
  return { client, fake, net, fetch, history, received, seqs };
}

/** A client connected (welcomed) on its first socket. */
function connected(options: Partial<ClientOptions> = {}) {
  const env = setup(options);
  env.client.connect();
  env.fake.last.accept();
  return env;
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date('2026-01-01T00:00:00Z'));
});
afterEach(() => {
  vi.useRealTimers();
});

describe('connecting', () => {
  it('goes disconnected -> connecting -> connected, authenticating first, one state object per change', () => {
    const { client, fake } = setup();
    const states: WebSocketState[] = [];
    client.on('state', (state) => states.push(state));
    expect(client.getState()).toMatchObject({ status: 'disconnected', transport: null, reconnectAttempts: 0 });

    client.connect();
    expect(client.getState()).toMatchObject({ status: 'connecting', transport: 'websocket' });
    expect(fake.sockets).toHaveLength(1);
    expect(fake.last.url).toBe(`ws://herald.test/ws?clientId=${client.clientId}`);

    fake.last.accept();
    expect(fake.last.sent[0]).toEqual({ type: 'auth', token: 'tok' });
    expect(client.getState()).toMatchObject({ status: 'connected', reconnectAttempts: 0, nextRetryAt: null });
    expect(states.map((state) => state.status)).toEqual(['connecting', 'connecting', 'connected']);
    expect(new Set(states).size).toBe(states.length);
  });

  it('keeps one clientId per storage', () => {
    const storage = memoryStorage();
    const fake = fakeSockets();
    const first = new HeraldClient({ token: 't', baseUrl: BASE, WebSocket: fake.WebSocket, storage });
    const second = new HeraldClient({ token: 't', baseUrl: BASE, WebSocket: fake.WebSocket, storage });
    expect(first.clientId).toMatch(/^[0-9a-f]{32}$/);
    expect(second.clientId).toBe(first.clientId);
  });

  it('uses wss: for an https: service and asks a token function before every connection', async () => {
    const token = vi.fn(async () => `t${token.mock.calls.length}`);
    const { client, fake } = setup({ baseUrl: 'https://herald.example', token });
    client.connect();
    await settle();
    expect(fake.last.url.startsWith('wss://herald.example/ws?clientId=')).toBe(true);
    fake.last.accept();
    fake.last.drop(1012);
    await vi.advanceTimersByTimeAsync(20_000);
    fake.last.open();
    expect(fake.sockets.map((socket) => socket.sent[0])).toEqual([
      { type: 'auth', token: 't1' },
      { type: 'auth', token: 't2' },
    ]);
  });

  it.each([...RETRY_CLOSE_CODES, 1006])('retries after close code %i with backoff, resuming', (code) => {
    const { client, fake } = connected({ random: () => 0.5 });
    fake.last.drop(code, 'bye');
    const state = client.getState();
    expect(state).toMatchObject({ status: 'connecting', reconnectAttempts: 1, error: expect.stringContaining(`${code}`) });
    // step 0: 500 + randomInt(0, 500) at random 0.5 = 750
    expect(state.nextRetryAt).toBe(Date.now() + 750);
    vi.advanceTimersByTime(749);
    expect(fake.sockets).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(fake.sockets).toHaveLength(2);
    expect(client.getState()).toMatchObject({ status: 'connecting', nextRetryAt: null, reconnectAttempts: 1 });
    fake.last.accept();
    expect(client.getState()).toMatchObject({ status: 'connected', reconnectAttempts: 0, error: undefined });
  });

  it.each([...TERMINAL_CLOSE_CODES])('stops at terminal close code %i and surfaces an error', (code) => {
    const { client, fake, net } = connected();
    fake.last.drop(code, 'no');
    expect(client.getState()).toMatchObject({ status: 'error', nextRetryAt: null });
    expect(client.getState().error).toContain(String(code));
    vi.advanceTimersByTime(120_000);
    net.goOnline();
    net.becomeVisible();
    expect(fake.sockets).toHaveLength(1);
    // Only connect() tries again (e.g. with a new token).
    client.connect();
    expect(fake.sockets).toHaveLength(2);
    expect(client.getState()).toMatchObject({ status: 'connecting', reconnectAttempts: 0, error: undefined });
  });

  it('backs off exponentially while attempts fail, within [min, max], and resets once connected', () => {
    const { client, fake } = setup({ random: () => 0.999_999, minReconnectDelayMs: 500, maxReconnectDelayMs: 20_000 });
    client.connect();
    const delays: number[] = [];
    for (let attempt = 1; attempt <= 8; attempt += 1) {
      fake.last.drop(1006);
      const { nextRetryAt, reconnectAttempts } = client.getState();
      expect(reconnectAttempts).toBe(attempt);
      delays.push((nextRetryAt ?? 0) - Date.now());
      vi.advanceTimersByTime(20_000);
    }
    expect(delays).toEqual([1000, 1500, 2500, 4500, 8500, 16_500, 20_000, 20_000]);
    fake.last.accept();
    fake.last.drop(1001);
    expect(client.getState().nextRetryAt! - Date.now()).toBe(1000);
  });

  it('retries when the handshake hangs: no welcome within 2 heartbeats', () => {
    const { client, fake } = setup({ heartbeatMs: 1000 });
    client.connect();
    fake.last.open();
    vi.advanceTimersByTime(1999);
    expect(fake.last.closedWith).toBeNull();
    vi.advanceTimersByTime(1);
    expect(fake.last.closedWith?.code).toBe(4408);
    expect(client.getState()).toMatchObject({ status: 'connecting', reconnectAttempts: 1 });
  });

  it('never reconnects after close(), and ignores the closed socket', () => {
    const { client, fake, net } = connected();
    const socket = fake.last;
    client.close();
    expect(socket.closedWith).toEqual({ code: 1000, reason: 'client closed' });
    expect(client.getState()).toMatchObject({ status: 'disconnected', transport: null, nextRetryAt: null });
    socket.drop(1006);
    vi.advanceTimersByTime(120_000);
    expect(net.watched).toBe(false);
    expect(fake.sockets).toHaveLength(1);
    expect(client.getState().status).toBe('disconnected');
  });

  it('closes the socket when the network goes, waits, and reconnects at once when it is back', () => {
    const { client, fake, net } = connected();
    net.goOffline();
    expect(fake.last.closedWith?.code).toBe(1000);
    expect(client.getState()).toMatchObject({ status: 'connecting', online: false, nextRetryAt: null });
    vi.advanceTimersByTime(120_000);
    expect(fake.sockets).toHaveLength(1);
    net.goOnline();
    expect(fake.sockets).toHaveLength(2);
    expect(client.getState()).toMatchObject({ status: 'connecting', online: true });
  });

  it('waits for the network instead of retrying when a failure comes while offline', () => {
    const { client, fake, net } = connected();
    net.goOffline();
    net.goOnline();
    net.goOffline();
    vi.advanceTimersByTime(60_000);
    expect(fake.sockets).toHaveLength(2);
    expect(client.getState()).toMatchObject({ online: false, nextRetryAt: null });
  });

  it('starts offline without a socket when the browser says so', () => {
    const { client, fake, net } = setup();
    net.goOffline();
    client.connect();
    expect(fake.sockets).toHaveLength(0);
    expect(client.getState()).toMatchObject({ status: 'connecting', online: false });
    net.goOnline();
    expect(fake.sockets).toHaveLength(1);
  });

  it('retries at once when the page becomes visible during a backoff wait', () => {
    const { client, fake, net } = connected({ random: () => 0.999_999 });
    fake.last.drop(1006);
    fake.last.drop(1006); // no-op: that socket is already gone
    expect(client.getState().nextRetryAt).not.toBeNull();
    net.becomeVisible();
    expect(fake.sockets).toHaveLength(2);
    expect(client.getState()).toMatchObject({ nextRetryAt: null, reconnectAttempts: 1 });
    vi.advanceTimersByTime(5000); // past the cancelled retry (1000 ms), within the handshake's 30 s
    expect(fake.sockets).toHaveLength(2);
  });
});

describe('heartbeat', () => {
  it('answers pings with the same ts', () => {
    const { fake } = connected();
    fake.last.receive({ type: 'ping', ts: 1234.5 });
    expect(fake.last.frames('pong')).toEqual([{ type: 'pong', ts: 1234.5 }]);
  });

  it('stays while anything arrives, and reconnects after 2 x heartbeatMs of silence', () => {
    const { client, fake } = setup();
    client.connect();
    fake.last.accept(1000);
    for (let i = 0; i < 5; i += 1) {
      vi.advanceTimersByTime(1500);
      fake.last.receive({ type: 'ping', ts: i });
    }
    expect(client.getState().status).toBe('connected');
    vi.advanceTimersByTime(1999);
    expect(client.getState().status).toBe('connected');
    vi.advanceTimersByTime(1);
    expect(fake.sockets[0].closedWith?.code).toBe(4408);
    expect(client.getState()).toMatchObject({ status: 'connecting', reconnectAttempts: 1, error: 'heartbeat timeout' });
  });
});

describe('subscriptions', () => {
  it('counts references: one server subscription however many subscribers', () => {
    const { client, fake } = connected();
    client.subscribe('p1');
    client.subscribe('p1');
    expect(fake.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'p1' }]);
    client.unsubscribe('p1');
    expect(fake.last.frames('unsubscribe')).toEqual([]);
    client.unsubscribe('p1');
    expect(fake.last.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', projectId: 'p1' }]);
    client.unsubscribe('p1'); // one too many: nothing
    expect(fake.last.frames('unsubscribe')).toHaveLength(1);
  });

  it('subscribes on welcome what was asked before, with `after` when given', () => {
    const { client, fake } = setup();
    client.subscribe('p1');
    client.subscribe('p2', { after: 7 });
    client.connect();
    fake.last.accept();
    expect(fake.last.frames('subscribe')).toEqual([
      { type: 'subscribe', projectId: 'p1' },
      { type: 'subscribe', projectId: 'p2', after: 7 },
    ]);
    expect(() => client.subscribe('p3', { after: -1 })).toThrow(RangeError);
  });

  it('resubscribes everything after a reconnect, from the last seq of each', () => {
    const { client, fake, seqs } = connected();
    client.subscribe('p1');
    client.subscribe('p2');
    client.subscribe('p3');
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 0 });
    fake.last.receive({ type: 'subscribed', projectId: 'p2', after: 10, head: 12 });
    fake.last.receive(event('p1', 1));
    fake.last.receive(event('p1', 2));
    fake.last.receive(event('p2', 11));
    fake.last.drop(1012);
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(fake.last.frames('subscribe')).toEqual([
      { type: 'subscribe', projectId: 'p1', after: 2 },
      { type: 'subscribe', projectId: 'p2', after: 11 },
      { type: 'subscribe', projectId: 'p3' }, // never confirmed: the durable cursor decides
    ]);
    expect(seqs('p1')).toEqual([1, 2]);
    expect(seqs('p2')).toEqual([11]);
  });

  it('resumes a project unsubscribed and subscribed again where it stopped', () => {
    const { client, fake } = connected();
    client.subscribe('p1');
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 0 });
    fake.last.receive(event('p1', 1));
    client.unsubscribe('p1');
    fake.last.receive(event('p1', 2)); // in flight before `unsubscribed`: dropped
    client.subscribe('p1');
    fake.last.receive({ type: 'unsubscribed', projectId: 'p1' }); // answers the first unsubscribe
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 1, head: 2 });
    fake.last.receive(event('p1', 2));
    expect(fake.last.frames('subscribe')).toEqual([
      { type: 'subscribe', projectId: 'p1' },
      { type: 'subscribe', projectId: 'p1', after: 1 },
    ]);
    const received: number[] = [];
    client.on('message', (message) => received.push(message.seq));
    fake.last.receive(event('p1', 3));
    expect(received).toEqual([3]);
  });

  it('asks again with backoff when subscribing meets `unavailable`', () => {
    const { client, fake } = connected({ random: () => 0 });
    const errors: string[] = [];
    client.on('error', (error) => errors.push(error.code));
    client.subscribe('p1', { after: 4 });
    fake.last.receive({ type: 'error', code: 'unavailable', message: 'db down', ref: 'p1' });
    expect(errors).toEqual(['unavailable']);
    vi.advanceTimersByTime(499);
    expect(fake.last.frames('subscribe')).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(fake.last.frames('subscribe')).toEqual([
      { type: 'subscribe', projectId: 'p1', after: 4 },
      { type: 'subscribe', projectId: 'p1', after: 4 },
    ]);
  });
});

describe('order, dedupe and gaps', () => {
  it('hands each (projectId, seq) over once, dropping replays', () => {
    const { client, fake, seqs } = connected();
    client.subscribe('p1');
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 3 });
    for (const seq of [1, 2, 2, 1, 3, 3]) fake.last.receive(event('p1', seq));
    expect(seqs('p1')).toEqual([1, 2, 3]);
    expect(client.getState().lastMessage?.seq).toBe(3);
  });

  it('keeps projects apart: the same seq in two projects is two events', () => {
    const { client, fake, seqs } = connected();
    client.subscribe('a');
    client.subscribe('b');
    fake.last.receive({ type: 'subscribed', projectId: 'a', after: 0, head: 0 });
    fake.last.receive({ type: 'subscribed', projectId: 'b', after: 0, head: 0 });
    for (const seq of [1, 2]) {
      fake.last.receive(event('a', seq));
      fake.last.receive(event('b', seq));
    }
    fake.last.receive(event('c', 1)); // never subscribed
    expect(seqs('a')).toEqual([1, 2]);
    expect(seqs('b')).toEqual([1, 2]);
    expect(seqs('c')).toEqual([]);
  });

  it('fills a gap from the HTTP history, holding later events until it is closed', async () => {
    const { client, fake, fetch, history, seqs } = connected();
    history.set('/api/projects/p1/events?after=3&before=7&limit=1000', {
      events: [event('p1', 4), event('p1', 5), event('p1', 6)],
      next: null,
    });
    client.subscribe('p1', { after: 3 });
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 3, head: 3 });
    fake.last.receive(event('p1', 7));
    fake.last.receive(event('p1', 8));
    expect(seqs('p1')).toEqual([]);
    await settle();
    expect(seqs('p1')).toEqual([4, 5, 6, 7, 8]);
    const [, init] = fetch.mock.calls[0] as unknown as [URL, RequestInit];
    expect(init.headers).toEqual({ Authorization: 'Bearer tok' });
  });

  it('follows `next` through history pages', async () => {
    const { client, fake, history, seqs } = connected();
    history.set('/api/projects/p1/events?after=0&before=4&limit=1000', { events: [event('p1', 1)], next: 1 });
    history.set('/api/projects/p1/events?after=1&before=4&limit=1000', {
      events: [event('p1', 2), event('p1', 3)],
      next: null,
    });
    client.subscribe('p1', { after: 0 });
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 0 });
    fake.last.receive(event('p1', 4));
    await settle();
    expect(seqs('p1')).toEqual([1, 2, 3, 4]);
  });

  it('has the socket replay the gap when the history cannot be read', async () => {
    const { client, fake, seqs } = connected();
    client.subscribe('p1', { after: 3 });
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 3, head: 3 });
    fake.last.receive(event('p1', 6)); // history answers 503
    await settle();
    expect(fake.last.frames('subscribe').at(-1)).toEqual({ type: 'subscribe', projectId: 'p1', after: 3 });
    fake.last.receive(event('p1', 7)); // the old subscription's last frame: the replay brings it
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 3, head: 7 });
    for (const seq of [4, 5, 6, 7]) fake.last.receive(event('p1', seq));
    expect(seqs('p1')).toEqual([4, 5, 6, 7]);
  });
});

describe('acks', () => {
  function subscribedTo(...projects: string[]) {
    const env = connected();
    for (const projectId of projects) {
      env.client.subscribe(projectId);
      env.fake.last.receive({ type: 'subscribed', projectId, after: 0, head: 0 });
    }
    return env;
  }

  it('batches: one cumulative ack per project after 100 ms', () => {
    const { fake } = subscribedTo('p1', 'p2');
    for (let seq = 1; seq <= 10; seq += 1) fake.last.receive(event('p1', seq));
    fake.last.receive(event('p2', 1));
    vi.advanceTimersByTime(99);
    expect(fake.last.frames('ack')).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(fake.last.frames('ack')).toEqual([
      { type: 'ack', projectId: 'p1', seq: 10 },
      { type: 'ack', projectId: 'p2', seq: 1 },
    ]);
    vi.advanceTimersByTime(1000);
    expect(fake.last.frames('ack')).toHaveLength(2);
  });

  it('acks at once when 50 events are waiting', () => {
    const { fake } = subscribedTo('p1');
    for (let seq = 1; seq <= 49; seq += 1) fake.last.receive(event('p1', seq));
    expect(fake.last.frames('ack')).toEqual([]);
    fake.last.receive(event('p1', 50));
    expect(fake.last.frames('ack')).toEqual([{ type: 'ack', projectId: 'p1', seq: 50 }]);
  });

  it('flushes on close(), before the socket closes', () => {
    const { client, fake } = subscribedTo('p1');
    fake.last.receive(event('p1', 1));
    client.close();
    expect(fake.last.frames('ack')).toEqual([{ type: 'ack', projectId: 'p1', seq: 1 }]);
  });

  it('acks before unsubscribing', () => {
    const { client, fake } = subscribedTo('p1');
    fake.last.receive(event('p1', 1));
    client.unsubscribe('p1');
    expect(fake.last.sent.slice(-2)).toEqual([
      { type: 'ack', projectId: 'p1', seq: 1 },
      { type: 'unsubscribe', projectId: 'p1' },
    ]);
  });

  it('sends acks pending at a disconnect once resubscribed', () => {
    const { fake } = subscribedTo('p1');
    fake.last.receive(event('p1', 1));
    fake.last.drop(1006);
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(fake.last.frames('ack')).toEqual([]);
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 1, head: 1 });
    expect(fake.last.frames('ack')).toEqual([{ type: 'ack', projectId: 'p1', seq: 1 }]);
  });
});

describe('sendMessage', () => {
  const progress = { runId: 'r', status: 'running', progress: 5 } as const;

  it('publishes, and resolves on `published` for its messageId', async () => {
    const { client, fake } = connected();
    const promise = client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'm1' });
    expect(client.getState().queued).toBe(1);
    expect(fake.last.frames('agent_run_progress')).toEqual([
      { type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'm1' },
    ]);
    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'other', seq: 1 });
    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'm1', seq: 2 });
    await expect(promise).resolves.toEqual({ type: 'published', projectId: 'p1', messageId: 'm1', seq: 2 });
    expect(client.getState().queued).toBe(0);
  });

  it('rejects on an `error` whose ref is its messageId; other errors go to on("error")', async () => {
    const { client, fake } = connected();
    const errors: string[] = [];
    client.on('error', (error) => errors.push(error.code));
    const promise = client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'm1' });
    fake.last.receive({ type: 'error', code: 'forbidden', message: 'no', ref: 'p9' });
    fake.last.receive({ type: 'error', code: 'invalid_data', message: 'data.progress: too big', ref: 'm1' });
    const error = await promise.catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(HeraldError);
    expect(error).toMatchObject({ code: 'invalid_data', ref: 'm1' });
    expect(errors).toEqual(['forbidden']);
    expect(client.getState().queued).toBe(0);
  });

  it('queues while disconnected and sends in order once connected, again after a reconnect', async () => {
    const { client, fake } = setup();
    const first = client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'a' });
    client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'b' });
    expect(client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'a' })).toBe(
      first,
    );
    expect(client.getState().queued).toBe(2);
    client.connect();
    fake.last.accept();
    const ids = () => fake.last.frames('agent_run_progress').map((frame) => frame.messageId);
    expect(ids()).toEqual(['a', 'b']);
    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'a', seq: 1 });
    fake.last.drop(1006);
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(ids()).toEqual(['b']); // unanswered: sent again (the messageId makes it idempotent)
    await expect(first).resolves.toMatchObject({ seq: 1 });
  });

  it('makes a messageId when none is given, and refuses a publish over 64 KiB', async () => {
    const { client, fake } = connected();
    void client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress });
    expect(fake.last.frames('agent_run_progress')[0].messageId).toMatch(/^[0-9a-f]{32}$/);
    const huge = client.sendMessage({
      type: 'agent_run_progress',
      projectId: 'p1',
      data: { ...progress, message: 'x'.repeat(70_000) },
    });
    await expect(huge).rejects.toMatchObject({ code: 'too_large' });
    expect(fake.last.frames('agent_run_progress')).toHaveLength(1);
  });

  it('accepts an event the client holds (seq and timestamp are not sent)', () => {
    const { client, fake } = connected();
    const held: WebSocketMessage = event('p1', 3);
    void client.sendMessage(held);
    expect(fake.last.frames('agent_run_progress')).toEqual([
      { type: 'agent_run_progress', projectId: 'p1', data: held.data, messageId: 'p1-3' },
    ]);
  });
});
