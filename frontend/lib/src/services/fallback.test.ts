// @vitest-environment node
// The client's fallback ladder with fake transports and fake timers: WebSocket -> SSE -> polling
// when attempts fail, back up to the WebSocket in the background, positions carried across every
// switch (nothing missed, nothing twice), and the state a dashboard shows.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { event, fakePlatform, fakeSockets, fakeTransports, hashOf, settle } from '../../../tests/fakes.js';
import type { TransportKind, WebSocketMessage } from '../types/websocket.js';
import { HeraldClient, type ClientOptions } from './client.js';
import { memoryStorage } from './platform.js';

function setup(options: Partial<ClientOptions> = {}) {
  const ws = fakeSockets();
  const sse = fakeTransports('sse');
  const polling = fakeTransports('polling', 5000);
  const net = fakePlatform();
  const client = new HeraldClient({
    token: 'tok',
    baseUrl: 'http://herald.test',
    WebSocket: ws.WebSocket,
    fallbacks: [sse.factory, polling.factory],
    platform: net.platform,
    storage: memoryStorage(),
    random: () => 0,
    ...options,
  });
  const received: WebSocketMessage[] = [];
  client.on('message', (message) => received.push(message));
  const seqs = (projectId: string) => received.filter((m) => m.projectId === projectId).map((m) => m.seq);
  const kinds: (TransportKind | null)[] = [];
  client.on('state', (state) => {
    if (state.status === 'connected' && kinds.at(-1) !== state.transport) kinds.push(state.transport);
  });
  return { client, ws, sse, polling, net, seqs, kinds };
}

/** Fails the next `n` WebSocket attempts (each waits out its backoff first). */
function failSockets(env: ReturnType<typeof setup>, n: number) {
  for (let i = 0; i < n; i += 1) {
    vi.advanceTimersByTime(20_000);
    env.ws.last.drop(1006);
  }
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('the fallback ladder', () => {
  it('goes WebSocket -> SSE -> polling as attempts fail, says so in the state, and climbs back to the WebSocket', () => {
    const env = setup();
    const { client, ws, sse, polling } = env;
    client.connect();
    env.ws.last.drop(1006);
    failSockets(env, 2);
    expect(ws.sockets).toHaveLength(3);
    expect(sse.made).toHaveLength(0);
    expect(client.getState()).toMatchObject({ status: 'connecting', reconnectAttempts: 3 });
    // The next transport is tried soon: its backoff starts over (random 0: the 500 ms floor).
    expect(client.getState().nextRetryAt! - Date.now()).toBe(500);
    vi.advanceTimersByTime(500);
    expect(sse.made).toHaveLength(1);
    expect(client.getState()).toMatchObject({ transport: 'sse', status: 'connecting' });
    for (let i = 0; i < 3; i += 1) {
      sse.last.open();
      expect(sse.last.sent[0]).toEqual({ type: 'auth', token: 'tok' });
      sse.last.drop(1006); // before `welcome`: a failure
      vi.advanceTimersByTime(20_000);
    }
    expect(sse.made).toHaveLength(3);
    expect(polling.made).toHaveLength(1);
    polling.last.accept(10_000);
    expect(client.getState()).toMatchObject({
      status: 'connected',
      transport: 'polling',
      pollIntervalMs: 5000,
      reconnectAttempts: 0,
    });
    expect(env.kinds).toEqual(['polling']);
    // And back to the top: the WebSocket, tried in the background, is welcomed.
    vi.advanceTimersByTime(500);
    ws.last.accept();
    expect(polling.last.closedWith).toEqual({ code: 1000, reason: 'switching transport' });
    expect(client.getState()).toMatchObject({ status: 'connected', transport: 'websocket', pollIntervalMs: null });
    expect(env.kinds).toEqual(['polling', 'websocket']);
  });

  it('starts on SSE when there is no WebSocket at all', () => {
    vi.stubGlobal('WebSocket', undefined);
    const sse = fakeTransports('sse');
    const client = new HeraldClient({
      token: 'tok',
      baseUrl: 'http://herald.test',
      fallbacks: [sse.factory, fakeTransports('polling').factory],
      platform: fakePlatform().platform,
      storage: memoryStorage(),
    });
    client.connect();
    expect(sse.made).toHaveLength(1);
    sse.last.accept(3_600_000);
    expect(client.getState()).toMatchObject({ status: 'connected', transport: 'sse' });
    vi.advanceTimersByTime(120_000);
    expect(sse.made).toHaveLength(1); // nothing better to try
    expect(() => new HeraldClient({ token: 't', baseUrl: 'http://h', fallbacks: [] })).toThrow(/no WebSocket/);
    vi.unstubAllGlobals();
  });

  it('tries the WebSocket in the background while on SSE, and switches back with no gap and no repeat', () => {
    const env = setup();
    const { client, ws, sse, seqs } = env;
    client.subscribe('p1', { after: 0 });
    client.subscribe('p2');
    client.connect();
    env.ws.last.drop(1006);
    failSockets(env, 2);
    vi.advanceTimersByTime(500);
    sse.last.accept();
    expect(sse.last.frames('subscribe')).toEqual([
      { type: 'subscribe', projectId: 'p1', after: 0 },
      { type: 'subscribe', projectId: 'p2' },
    ]);
    sse.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 0 });
    sse.last.receive({ type: 'subscribed', projectId: 'p2', after: 7, head: 7 });
    for (const seq of [1, 2, 3]) sse.last.receive(event('p1', seq));
    sse.last.receive(event('p2', 8));
    void client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: event('p1', 9).data, messageId: 'm' });
    expect(sse.last.frames('agent_run_progress')).toHaveLength(1);

    // The probe: a WebSocket after the backoff, which fails, and another, which is welcomed.
    const socketsBefore = ws.sockets.length;
    vi.advanceTimersByTime(500);
    expect(ws.sockets).toHaveLength(socketsBefore + 1);
    expect(client.getState()).toMatchObject({ status: 'connected', transport: 'sse' }); // the probe is not shown
    ws.last.drop(1006);
    vi.advanceTimersByTime(1000);
    expect(ws.sockets).toHaveLength(socketsBefore + 2);
    sse.last.receive(event('p1', 4)); // SSE goes on meanwhile
    ws.last.accept(3_600_000);
    expect(sse.last.closedWith).toEqual({ code: 1000, reason: 'switching transport' });
    expect(client.getState()).toMatchObject({ status: 'connected', transport: 'websocket', pollIntervalMs: null });
    // Every subscription from where it stands; every unanswered publish again.
    expect(ws.last.frames('subscribe')).toEqual([
      { type: 'subscribe', projectId: 'p1', after: 4, afterHash: hashOf(4) },
      { type: 'subscribe', projectId: 'p2', after: 8, afterHash: hashOf(8) },
    ]);
    expect(ws.last.frames('agent_run_progress').map((frame) => frame.messageId)).toEqual(['m']);
    ws.last.receive({ type: 'subscribed', projectId: 'p1', after: 4, head: 6 });
    for (const seq of [3, 4, 5, 6]) ws.last.receive(event('p1', seq)); // a replay overlapping: deduped
    sse.last.receive(event('p1', 7)); // the closed fallback's last frame: ignored
    expect(seqs('p1')).toEqual([1, 2, 3, 4, 5, 6]);
    expect(seqs('p2')).toEqual([8]);
    expect(env.kinds).toEqual(['sse', 'websocket']);
    vi.advanceTimersByTime(120_000);
    expect(ws.sockets).toHaveLength(socketsBefore + 2); // on the WebSocket: no more probes
  });

  it('probes the WebSocket and SSE in turn while polling, taking whichever is welcomed first', () => {
    const env = setup();
    const { client, ws, sse, polling } = env;
    client.subscribe('p1', { after: 0 });
    client.connect();
    env.ws.last.drop(1006);
    failSockets(env, 2);
    for (let i = 0; i < 3; i += 1) {
      vi.advanceTimersByTime(20_000);
      sse.last.drop(1006);
    }
    vi.advanceTimersByTime(20_000);
    polling.last.accept(10_000);
    polling.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 2 });
    for (const seq of [1, 2]) polling.last.receive(event('p1', seq));
    const [sockets, streams] = [ws.sockets.length, sse.made.length];
    vi.advanceTimersByTime(500);
    expect(ws.sockets).toHaveLength(sockets + 1);
    ws.last.drop(1006);
    vi.advanceTimersByTime(1000);
    expect(sse.made).toHaveLength(streams + 1);
    sse.last.accept();
    expect(polling.last.closedWith?.code).toBe(1000);
    expect(client.getState()).toMatchObject({ transport: 'sse', pollIntervalMs: null });
    expect(sse.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'p1', after: 2, afterHash: hashOf(2) }]);
    // Still below the top: the WebSocket is probed on.
    vi.advanceTimersByTime(500);
    ws.last.accept();
    expect(env.kinds).toEqual(['polling', 'sse', 'websocket']);
  });

  it('gives up a probe that never welcomes, after 2 heartbeats', () => {
    const env = setup();
    env.client.connect();
    env.ws.last.drop(1006);
    failSockets(env, 2);
    vi.advanceTimersByTime(500);
    env.sse.last.accept(3_600_000);
    const sockets = env.ws.sockets.length;
    vi.advanceTimersByTime(500);
    expect(env.ws.sockets).toHaveLength(sockets + 1);
    const probe = env.ws.last;
    probe.open(); // opens, never welcomes
    vi.advanceTimersByTime(29_999);
    expect(probe.closedWith).toBeNull();
    vi.advanceTimersByTime(1);
    expect(probe.closedWith).toEqual({ code: 1000, reason: 'not needed' });
    expect(env.client.getState().transport).toBe('sse');
  });

  it('reconnects a dropped fallback on the same rung, and starts at the top when the network comes back', () => {
    const env = setup();
    const { client, ws, sse } = env;
    client.connect();
    env.ws.last.drop(1006);
    failSockets(env, 2);
    vi.advanceTimersByTime(500);
    sse.last.accept();
    sse.last.drop(1001); // after `welcome`: not a failure to connect
    const sockets = ws.sockets.length;
    vi.advanceTimersByTime(20_000);
    expect(sse.made).toHaveLength(2);
    expect(ws.sockets).toHaveLength(sockets); // the probe stopped with the connection
    sse.last.accept();
    env.net.goOffline();
    expect(sse.last.closedWith?.reason).toBe('offline');
    env.net.goOnline();
    expect(ws.sockets).toHaveLength(sockets + 1);
    expect(client.getState().transport).toBe('websocket');
  });

  it('stops at a terminal close code on a fallback too', () => {
    const env = setup();
    env.client.connect();
    env.ws.last.drop(1006);
    failSockets(env, 2);
    vi.advanceTimersByTime(500);
    env.sse.last.accept();
    env.sse.last.drop(4401, 'unauthorized: expired');
    expect(env.client.getState()).toMatchObject({ status: 'error' });
    const sockets = env.ws.sockets.length;
    vi.advanceTimersByTime(120_000);
    expect(env.ws.sockets).toHaveLength(sockets);
    expect(env.sse.made).toHaveLength(1);
  });
});

describe('publishes the service cannot take yet', () => {
  it('keeps a publish refused as `unavailable` queued and sends it again with backoff', async () => {
    const env = setup();
    env.client.connect();
    env.ws.last.accept();
    const data = { runId: 'r', status: 'running', progress: 1 } as const;
    const promise = env.client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data, messageId: 'm' });
    env.ws.last.receive({ type: 'error', code: 'unavailable', message: 'db down', ref: 'm' });
    expect(env.client.getState().queued).toBe(1);
    vi.advanceTimersByTime(499);
    expect(env.ws.last.frames('agent_run_progress')).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(env.ws.last.frames('agent_run_progress')).toHaveLength(2);
    env.ws.last.receive({ type: 'published', projectId: 'p1', messageId: 'm', seq: 3 });
    await settle();
    await expect(promise).resolves.toMatchObject({ seq: 3 });
    expect(env.client.getState().queued).toBe(0);
  });
});
