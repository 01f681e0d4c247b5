// @vitest-environment node
// The SSE fallback against a fake service over fetch: the event-stream parser, the handshake that
// proves a stream flows, the multi-project stream and its positions, the ends of a stream, and the
// HTTP half (publishes in order, coalesced acks) that polling shares.
import { describe, expect, it, vi } from 'vitest';
import { event, fakeHttp, FakeStream, json } from '../../../tests/fakes.js';
import type { ServerMessage } from '../types/websocket.js';
import { parseVector, sseParser, sseTransport, type SseMessage } from './sseTransport.js';

const BASE = 'http://herald.test';

describe('sseParser', () => {
  it('parses messages however the text is split, with LF, CRLF or CR line ends', () => {
    const text =
      'retry: 2000\n\n: keep-alive\r\nid: 1\r\nevent: agent_run_progress\r\ndata: {"a":1}\r\n\r\n' +
      'data: two\rdata: lines\r\rid: 7\nevent: x\ndata:no-space\n\n: closed 1001: shutting down\n';
    for (const size of [1, 2, 3, 7, text.length]) {
      const messages: SseMessage[] = [];
      const comments: string[] = [];
      const parser = sseParser((message) => messages.push(message), (comment) => comments.push(comment));
      for (let i = 0; i < text.length; i += size) parser.feed(text.slice(i, i + size));
      expect(messages).toEqual([
        { id: '1', event: 'agent_run_progress', data: '{"a":1}' },
        { id: '1', event: 'message', data: 'two\nlines' }, // the last id stands until another comes
        { id: '7', event: 'x', data: 'no-space' },
      ]);
      expect(comments).toEqual(['keep-alive', 'closed 1001: shutting down']);
    }
  });

  it('reads position vectors, skipping malformed parts', () => {
    expect([...parseVector('a:5,b.c-d:0,bad,e:-1,f:x')]).toEqual([
      ['a', 5],
      ['b.c-d', 0],
    ]);
    expect(parseVector(null).size).toBe(0);
  });
});

/** An SSE transport on a fake service that answers the handshake; `streams` are the streams opened. */
function setup(options: { projects?: string[]; keepAliveMs?: number; silent?: boolean; perStream?: number } = {}) {
  const http = fakeHttp();
  const projects = options.projects ?? ['p1'];
  const streams: FakeStream[] = [];
  http.route((request) =>
    request.url.pathname === '/api/projects' ? json(200, { projects: projects.map((id) => ({ id })) }) : undefined,
  );
  http.route((request) => {
    if (!request.url.pathname.endsWith('/stream')) return undefined;
    const stream = new FakeStream(request.signal);
    if (options.silent !== true) stream.write('retry: 2000\n\n');
    streams.push(stream);
    return stream;
  });
  const received: ServerMessage[] = [];
  const closed: { code: number; reason: string }[] = [];
  const transport = sseTransport({
    fetch: http.fetch,
    keepAliveMs: options.keepAliveMs ?? 60_000,
    projectsPerStream: options.perStream,
    minRetryMs: 5,
    maxRetryMs: 5,
  })({
    baseUrl: BASE,
    clientId: 'c1',
    handlers: {
      onOpen: () => transport.send({ type: 'auth', token: 'tok' }),
      onMessage: (message) => received.push(message),
      onClose: (close) => closed.push(close),
    },
  });
  const frames = <T extends ServerMessage['type']>(type: T) =>
    received.filter((message): message is ServerMessage & { type: T } => message.type === type);
  const welcomed = () => vi.waitFor(() => expect(frames('welcome')).toHaveLength(1));
  return { http, transport, received, closed, frames, streams, welcomed };
}

describe('the SSE transport', () => {
  it('welcomes once a stream is seen to flow, with the token in a header', async () => {
    const { http, frames, welcomed, streams } = setup({ keepAliveMs: 15_000 });
    await welcomed();
    expect(frames('welcome')[0]).toMatchObject({ clientId: 'c1', heartbeatMs: 15_000 });
    const [check] = http.to('/api/projects/p1/stream');
    expect(check.headers.get('Authorization')).toBe('Bearer tok');
    expect(check.url.searchParams.has('clientId')).toBe(false); // no cursor is touched by the check
    expect(streams[0].aborted).toBe(true);
  });

  it('ends (1006, retry) without a welcome when no stream gets through, and 4401 when the token is refused', async () => {
    const blocked = setup();
    blocked.http.route((request) => (request.url.pathname.endsWith('/stream') ? json(502, {}) : undefined));
    await vi.waitFor(() => expect(blocked.closed).toHaveLength(1));
    expect(blocked.closed[0].code).toBe(1006);
    expect(blocked.frames('welcome')).toEqual([]);

    const refused = setup();
    refused.http.route((request) =>
      request.url.pathname === '/api/projects' ? json(401, { error: 'unauthorized', message: 'expired' }) : undefined,
    );
    await vi.waitFor(() => expect(refused.closed).toHaveLength(1));
    expect(refused.closed[0]).toEqual({ code: 4401, reason: 'unauthorized: expired' });
  });

  it('gives up a stream whose first bytes never come (a buffering proxy)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const { closed, frames, streams } = setup({ silent: true });
      // (vi.waitFor would move the fake clock: wait for the check's request by hand.)
      for (let i = 0; i < 100 && streams.length === 0; i += 1) await vi.advanceTimersByTimeAsync(0);
      expect(streams).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(9_999);
      expect(closed).toEqual([]);
      await vi.advanceTimersByTimeAsync(1);
      for (let i = 0; i < 100 && closed.length === 0; i += 1) await vi.advanceTimersByTimeAsync(0);
      expect(closed.map((close) => close.code)).toEqual([1006]);
      expect(frames('welcome')).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
  });

  it('splits the projects over several streams beyond the service’s limit per stream', async () => {
    const { http, transport, welcomed } = setup({ perStream: 2 });
    await welcomed();
    for (const id of ['a', 'b', 'c']) transport.send({ type: 'subscribe', projectId: id, after: 0 });
    await vi.waitFor(() => expect(http.to('/api/stream')).toHaveLength(2));
    expect(http.to('/api/stream').map((request) => request.url.searchParams.get('projects'))).toEqual(['a,b', 'c']);
  });

  it('streams every project on one stream from the positions held, learning the unknown ones from the ids', async () => {
    const { http, transport, frames, received, streams, welcomed } = setup();
    await welcomed();
    transport.send({ type: 'subscribe', projectId: 'p1', after: 3 });
    transport.send({ type: 'subscribe', projectId: 'p2' });
    await vi.waitFor(() => expect(http.to('/api/stream')).toHaveLength(1));
    const [request] = http.to('/api/stream');
    expect(Object.fromEntries(request.url.searchParams)).toEqual({ projects: 'p1,p2', clientId: 'c1', after: 'p1:3' });
    expect(request.headers.get('Authorization')).toBe('Bearer tok');
    await vi.waitFor(() => expect(frames('subscribed')).toEqual([{ type: 'subscribed', projectId: 'p1', after: 3, head: 3 }]));

    const stream = streams[1];
    stream.event(event('p2', 8), 'p1:3,p2:8');
    stream.event(event('p1', 4), 'p1:4,p2:8');
    stream.write(': keep-alive\n\n');
    await vi.waitFor(() => expect(frames('ping')).toHaveLength(1));
    expect(received.slice(-4).map((m) => [m.type, 'projectId' in m ? m.projectId : null])).toEqual([
      ['subscribed', 'p2'],
      ['agent_run_progress', 'p2'],
      ['agent_run_progress', 'p1'],
      ['ping', null],
    ]);
    expect(frames('subscribed')[1]).toMatchObject({ projectId: 'p2', after: 7 });

    // A change of the set reopens the stream from the positions reached: nothing lost, nothing twice.
    transport.send({ type: 'unsubscribe', projectId: 'p2' });
    await vi.waitFor(() => expect(http.to('/api/stream')).toHaveLength(2));
    expect(stream.aborted).toBe(true);
    expect(frames('unsubscribed')).toEqual([{ type: 'unsubscribed', projectId: 'p2' }]);
    expect(Object.fromEntries(http.to('/api/stream')[1].url.searchParams)).toMatchObject({ projects: 'p1', after: 'p1:4' });
    stream.event(event('p1', 5), 'p1:5'); // the old stream's: not read any more
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(frames('agent_run_progress').map((m) => m.seq)).toEqual([8, 4]);

    // A new token reopens too, with it.
    transport.send({ type: 'auth', token: 'tok2' });
    await vi.waitFor(() => expect(http.to('/api/stream')).toHaveLength(3));
    expect(http.to('/api/stream')[2].headers.get('Authorization')).toBe('Bearer tok2');
  });

  it('ends with the close code of the `: closed` comment, else 1006', async () => {
    const { transport, closed, streams, welcomed } = setup();
    await welcomed();
    transport.send({ type: 'subscribe', projectId: 'p1', after: 0 });
    await vi.waitFor(() => expect(streams).toHaveLength(2));
    streams[1].write(': closed 4429: too slow a reader\n\n');
    streams[1].end();
    await vi.waitFor(() => expect(closed).toEqual([{ code: 4429, reason: 'too slow a reader' }]));

    const other = setup();
    await other.welcomed();
    other.transport.send({ type: 'subscribe', projectId: 'p1', after: 0 });
    await vi.waitFor(() => expect(other.streams).toHaveLength(2));
    other.streams[1].end();
    await vi.waitFor(() => expect(other.closed.map((close) => close.code)).toEqual([1006]));
  });

  it('finds the project a refused stream names, reports it as the socket would, and streams the others', async () => {
    const { http, transport, frames, welcomed } = setup();
    await welcomed();
    http.route((request) => {
      const { pathname, searchParams } = request.url;
      const forbidden = { error: 'forbidden', message: 'not granted: p2' };
      if (pathname === '/api/stream' && searchParams.get('projects')?.includes('p2')) return json(403, forbidden);
      if (pathname === '/api/projects/p2/stream') return json(403, forbidden);
      return undefined;
    });
    transport.send({ type: 'subscribe', projectId: 'p1', after: 0 });
    transport.send({ type: 'subscribe', projectId: 'p2', after: 0 });
    await vi.waitFor(() => expect(http.to('/api/stream')).toHaveLength(2));
    expect(frames('error')).toEqual([{ type: 'error', code: 'forbidden', message: 'not granted: p2', ref: 'p2' }]);
    expect(http.to('/api/stream')[1].url.searchParams.get('projects')).toBe('p1');
  });

  it('reports a project whose history is truncated (`event: error`) as the socket would, and streams the others', async () => {
    const { http, transport, frames, received, streams, closed, welcomed } = setup();
    await welcomed();
    transport.send({ type: 'subscribe', projectId: 'p1', after: 2 });
    transport.send({ type: 'subscribe', projectId: 'p2', after: 5 });
    await vi.waitFor(() => expect(streams).toHaveLength(2));
    const truncated = { error: 'history_truncated', message: 'pruned', projectId: 'p1', oldest: 6, stateSeq: 9 };
    streams[1].write(`event: error\ndata: ${JSON.stringify(truncated)}\n\n`);
    streams[1].end();
    await vi.waitFor(() => expect(http.to('/api/stream')).toHaveLength(2));
    expect(frames('error')).toEqual([
      { type: 'error', code: 'history_truncated', message: 'pruned', ref: 'p1', oldest: 6, stateSeq: 9 },
    ]);
    // The error's data is no event; the stream reopens without p1, from p2's position; no retry of the transport.
    expect(received.filter((m) => m.type === 'agent_run_progress')).toEqual([]);
    expect(Object.fromEntries(http.to('/api/stream')[1].url.searchParams)).toMatchObject({ projects: 'p2', after: 'p2:5' });
    expect(closed).toEqual([]);
  });

  it('publishes one at a time in order: published, error naming the messageId, retried while 503', async () => {
    const { http, transport, frames, welcomed } = setup();
    await welcomed();
    let busy = 2;
    http.route((request) => {
      if (request.method !== 'POST' || !request.url.pathname.endsWith('/events')) return undefined;
      const { messageId } = request.body as { messageId: string };
      if (messageId === 'bad') return json(422, { error: 'invalid_data', message: 'data.progress', field: 'data.progress' });
      if (messageId === 'm2' && busy-- > 0) return json(503, { error: 'unavailable', message: 'db down' });
      return json(201, { ...event('p1', Number(messageId.slice(1))), messageId });
    });
    const data = { runId: 'r', status: 'running', progress: 1 } as const;
    for (const messageId of ['m1', 'bad', 'm2', 'm3']) {
      transport.send({ type: 'agent_run_progress', projectId: 'p1', data, messageId });
    }
    transport.send({ type: 'agent_run_progress', projectId: 'p1', data, messageId: 'm1' }); // queued already
    await vi.waitFor(() => expect(frames('published')).toHaveLength(3));
    expect(frames('published').map((m) => m.messageId)).toEqual(['m1', 'm2', 'm3']);
    expect(frames('error')).toEqual([{ type: 'error', code: 'invalid_data', message: 'data.progress', ref: 'bad' }]);
    const posted = http.to('/api/projects/p1/events', 'POST').map((request) => (request.body as { messageId: string }).messageId);
    expect(posted).toEqual(['m1', 'bad', 'm2', 'm2', 'm2', 'm3']);
    expect(http.to('/api/projects/p1/events', 'POST')[0].body).toEqual({ type: 'agent_run_progress', data, messageId: 'm1' });
  });

  it('acks over HTTP, coalescing per project, and sends the last ones at close()', async () => {
    const { http, transport, welcomed } = setup();
    await welcomed();
    let release: () => void = () => {};
    http.route((request) => {
      if (!request.url.pathname.endsWith('/ack')) return undefined;
      const { seq } = request.body as { seq: number };
      if (seq === 5) return new Promise<Response>((resolve) => (release = () => resolve(json(200, { seq }))));
      return json(200, { seq });
    });
    transport.send({ type: 'ack', projectId: 'p1', seq: 5 });
    transport.send({ type: 'ack', projectId: 'p1', seq: 6 });
    transport.send({ type: 'ack', projectId: 'p1', seq: 9 });
    await vi.waitFor(() => expect(http.to('/api/projects/p1/ack', 'POST')).toHaveLength(1));
    release();
    await vi.waitFor(() => expect(http.to('/api/projects/p1/ack', 'POST')).toHaveLength(2));
    expect(http.to('/api/projects/p1/ack', 'POST').map((request) => request.body)).toEqual([
      { clientId: 'c1', seq: 5 },
      { clientId: 'c1', seq: 9 },
    ]);
    http.route((request) => (request.url.pathname === '/api/projects/p2/ack' ? json(503, {}) : undefined));
    transport.send({ type: 'ack', projectId: 'p2', seq: 3 });
    await vi.waitFor(() => expect(http.to('/api/projects/p2/ack', 'POST')).toHaveLength(1));
    transport.close(1000, 'bye'); // the failed one goes once more, and nothing is retried after
    await vi.waitFor(() => expect(http.to('/api/projects/p2/ack', 'POST')).toHaveLength(2));
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(http.to('/api/projects/p2/ack', 'POST')).toHaveLength(2);
  });
});
