// @vitest-environment node
// The connection's life against a fake socket and fake timers, seen through the client as an
// application sees it: states, backoff, close codes, the network and the page, the heartbeat.
// fallback.test.ts covers the transport ladder; tests/client.integration.test.ts the real service.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { connectedClient, settle, socketClient } from '../../../tests/fakes.js';
import { RETRY_CLOSE_CODES, TERMINAL_CLOSE_CODES } from '../types/codes.js';
import type { WebSocketState } from '../types/websocket.js';

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date('2026-01-01T00:00:00Z'));
});
afterEach(() => {
  vi.useRealTimers();
});

describe('connecting', () => {
  it('goes disconnected -> connecting -> connected, authenticating first, one state object per change', () => {
    const { client, fake } = socketClient();
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


  it('uses wss: for an https: service and asks a token function before every connection', async () => {
    const token = vi.fn(async () => `t${token.mock.calls.length}`);
    const { client, fake } = socketClient({ baseUrl: 'https://herald.example', token });
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
    const { client, fake } = connectedClient({ random: () => 0.5 });
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
    const { client, fake, net } = connectedClient();
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
    const { client, fake } = socketClient({ random: () => 0.999_999, minReconnectDelayMs: 500, maxReconnectDelayMs: 20_000 });
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
    const { client, fake } = socketClient({ heartbeatMs: 1000 });
    client.connect();
    fake.last.open();
    vi.advanceTimersByTime(1999);
    expect(fake.last.closedWith).toBeNull();
    vi.advanceTimersByTime(1);
    expect(fake.last.closedWith?.code).toBe(4408);
    expect(client.getState()).toMatchObject({ status: 'connecting', reconnectAttempts: 1 });
  });

  it('never reconnects after close(), and ignores the closed socket', () => {
    const { client, fake, net } = connectedClient();
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
    const { client, fake, net } = connectedClient();
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
    const { client, fake, net } = connectedClient();
    net.goOffline();
    net.goOnline();
    net.goOffline();
    vi.advanceTimersByTime(60_000);
    expect(fake.sockets).toHaveLength(2);
    expect(client.getState()).toMatchObject({ online: false, nextRetryAt: null });
  });

  it('starts offline without a socket when the browser says so', () => {
    const { client, fake, net } = socketClient();
    net.goOffline();
    client.connect();
    expect(fake.sockets).toHaveLength(0);
    expect(client.getState()).toMatchObject({ status: 'connecting', online: false });
    net.goOnline();
    expect(fake.sockets).toHaveLength(1);
  });

  it('retries at once when the page becomes visible during a backoff wait', () => {
    const { client, fake, net } = connectedClient({ random: () => 0.999_999 });
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
    const { fake } = connectedClient();
    fake.last.receive({ type: 'ping', ts: 1234.5 });
    expect(fake.last.frames('pong')).toEqual([{ type: 'pong', ts: 1234.5 }]);
  });

  it('stays while anything arrives, and reconnects after 2 x heartbeatMs of silence', () => {
    const { client, fake } = socketClient();
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
