// @vitest-environment node
// The polling fallback against a fake service over fetch: the handshake, a round of reads per
// project (following `next`), its pings, the start of a project without a position, refusals, a
// truncated history and a position beyond the head.
import { describe, expect, it, vi } from 'vitest';
import { event, fakeHttp, json } from '../../../tests/fakes.js';
import type { Event, ServerMessage } from '../types/websocket.js';
import { pollingTransport } from './pollingTransport.js';

/** A polling transport on a fake service whose log is `logs` (per project). */
function setup(logs: Record<string, Event[]>, intervalMs = 40) {
  const http = fakeHttp();
  http.route((request) =>
    request.url.pathname === '/api/projects' ? json(200, { projects: Object.keys(logs).map((id) => ({ id })) }) : undefined,
  );
  http.route((request) => {
    const match = /^\/api\/projects\/([^/]+)\/events$/.exec(request.url.pathname);
    if (match === null || request.method !== 'GET') return undefined;
    const log = logs[match[1]];
    if (log === undefined) return json(403, { error: 'forbidden', message: `not granted: ${match[1]}` });
    const query = request.url.searchParams;
    if (query.get('order') === 'desc') return json(200, { events: log.slice(-1), next: null });
    const after = Number(query.get('after'));
    const page = log.filter((e) => e.seq > after).slice(0, 2); // small pages, so `next` is followed
    const more = log.some((e) => e.seq > (page.at(-1)?.seq ?? Infinity));
    return json(200, { events: page, next: more ? page.at(-1)!.seq : null });
  });
  const received: ServerMessage[] = [];
  const closed: { code: number; reason: string }[] = [];
  const transport = pollingTransport({ fetch: http.fetch, intervalMs })({
    baseUrl: 'http://herald.test',
    clientId: 'c1',
    handlers: {
      onOpen: () => transport.send({ type: 'auth', token: 'tok' }),
      onMessage: (message) => received.push(message),
      onClose: (close) => closed.push(close),
    },
  });
  const frames = <T extends ServerMessage['type']>(type: T) =>
    received.filter((message): message is ServerMessage & { type: T } => message.type === type);
  const seqs = (projectId: string) =>
    received.flatMap((m) => (m.type === 'agent_run_progress' && m.projectId === projectId ? [m.seq] : []));
  return { http, transport, received, closed, frames, seqs };
}

const log = (projectId: string, to: number) => Array.from({ length: to }, (_, i) => event(projectId, i + 1));

describe('the polling transport', () => {
  it('welcomes with heartbeatMs = 2 x the interval, reads every page, and pings after each round', async () => {
    const logs = { p1: log('p1', 5) };
    const { http, transport, frames, seqs } = setup(logs);
    expect(transport.pollIntervalMs).toBe(40);
    await vi.waitFor(() => expect(frames('welcome')).toHaveLength(1));
    expect(frames('welcome')[0].heartbeatMs).toBe(80);
    transport.send({ type: 'subscribe', projectId: 'p1', after: 1 });
    await vi.waitFor(() => expect(seqs('p1')).toEqual([2, 3, 4, 5]));
    expect(frames('subscribed')).toEqual([{ type: 'subscribed', projectId: 'p1', after: 1, head: 1 }]);
    expect(http.to('/api/projects/p1/events')[0].headers.get('Authorization')).toBe('Bearer tok');
    await vi.waitFor(() => expect(frames('ping').length).toBeGreaterThan(0));

    logs.p1.push(event('p1', 6), event('p1', 7));
    await vi.waitFor(() => expect(seqs('p1')).toEqual([2, 3, 4, 5, 6, 7]));
    expect(frames('subscribed')).toHaveLength(1);
    transport.send({ type: 'unsubscribe', projectId: 'p1' });
    await vi.waitFor(() => expect(frames('unsubscribed')).toHaveLength(1));
    logs.p1.push(event('p1', 8));
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(seqs('p1')).toEqual([2, 3, 4, 5, 6, 7]);
    transport.close(1000, 'done');
  });

  it('starts a project without a position at its head', async () => {
    const logs = { p1: log('p1', 4) };
    const { transport, frames, seqs } = setup(logs);
    await vi.waitFor(() => expect(frames('welcome')).toHaveLength(1));
    transport.send({ type: 'subscribe', projectId: 'p1' });
    await vi.waitFor(() => expect(frames('subscribed')).toEqual([{ type: 'subscribed', projectId: 'p1', after: 4, head: 4 }]));
    logs.p1.push(event('p1', 5));
    await vi.waitFor(() => expect(seqs('p1')).toEqual([5]));
    transport.close(1000, 'done');
  });

  it('reports a refused project as the socket would and reads the others; ends on 5xx (1006) and 401 (4401)', async () => {
    const logs = { p1: log('p1', 2) };
    const { http, transport, frames, seqs, closed } = setup(logs);
    await vi.waitFor(() => expect(frames('welcome')).toHaveLength(1));
    transport.send({ type: 'subscribe', projectId: 'nope', after: 0 });
    transport.send({ type: 'subscribe', projectId: 'p1', after: 0 });
    await vi.waitFor(() => expect(seqs('p1')).toEqual([1, 2]));
    expect(frames('error')).toEqual([{ type: 'error', code: 'forbidden', message: 'not granted: nope', ref: 'nope' }]);
    http.route(() => json(503, { error: 'unavailable', message: 'db down' }));
    await vi.waitFor(() => expect(closed).toEqual([{ code: 1006, reason: 'unavailable: db down' }]));

    const other = setup({ p1: [] });
    await vi.waitFor(() => expect(other.frames('welcome')).toHaveLength(1));
    other.http.route(() => json(401, { error: 'unauthorized', message: 'expired' }));
    other.transport.send({ type: 'subscribe', projectId: 'p1', after: 0 });
    await vi.waitFor(() => expect(other.closed.map((close) => close.code)).toEqual([4401]));
  });

  it('reports a truncated history (410) with oldest and stateSeq as the socket would, and reads it no more', async () => {
    const logs = { p1: log('p1', 9), p2: log('p2', 2) };
    const { http, transport, frames, seqs, closed } = setup(logs);
    http.route((request) =>
      request.url.pathname === '/api/projects/p1/events' && request.url.searchParams.get('after') === '2'
        ? json(410, { error: 'history_truncated', message: 'pruned below 6', oldest: 6, stateSeq: 9 })
        : undefined,
    );
    await vi.waitFor(() => expect(frames('welcome')).toHaveLength(1));
    transport.send({ type: 'subscribe', projectId: 'p1', after: 2 });
    transport.send({ type: 'subscribe', projectId: 'p2', after: 0 });
    await vi.waitFor(() => expect(seqs('p2')).toEqual([1, 2]));
    expect(frames('error')).toEqual([
      { type: 'error', code: 'history_truncated', message: 'pruned below 6', ref: 'p1', oldest: 6, stateSeq: 9 },
    ]);
    const reads = http.to('/api/projects/p1/events').length;
    await vi.waitFor(() => expect(frames('ping').length).toBeGreaterThan(2));
    expect(http.to('/api/projects/p1/events')).toHaveLength(reads);
    expect(seqs('p1')).toEqual([]);
    expect(closed).toEqual([]);
  });

  it('refuses a position beyond the head as the socket does (invalid_cursor): the log is not the one read', async () => {
    const logs = { p1: log('p1', 3) };
    const { transport, frames, seqs, closed } = setup(logs);
    await vi.waitFor(() => expect(frames('welcome')).toHaveLength(1));
    transport.send({ type: 'subscribe', projectId: 'p1', after: 7 });
    await vi.waitFor(() => expect(frames('error')).toHaveLength(1));
    expect(frames('error')[0]).toEqual({
      type: 'error',
      code: 'invalid_cursor',
      message: 'after 7 is beyond the head 3',
      ref: 'p1',
    });
    expect(frames('subscribed')).toEqual([]);
    // Subscribed again from a position the log has: read as usual.
    transport.send({ type: 'subscribe', projectId: 'p1', after: 1 });
    await vi.waitFor(() => expect(seqs('p1')).toEqual([2, 3]));
    expect(closed).toEqual([]);
  });
});
