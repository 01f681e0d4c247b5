// @vitest-environment node
// The subscriptions against a fake socket, a fake history and fake timers: reference counts,
// resuming from each project's position, order, dedupe, gaps filled from the history, acks, and
// the parked subscription of a position the service will not resume from.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { connectedClient, event, hashOf, settle, socketClient } from '../../../tests/fakes.js';

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date('2026-01-01T00:00:00Z'));
});
afterEach(() => {
  vi.useRealTimers();
});

describe('subscriptions', () => {
  it('counts references: one server subscription however many subscribers', () => {
    const { client, fake } = connectedClient();
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
    const { client, fake } = socketClient();
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
    const { client, fake, seqs } = connectedClient();
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
      { type: 'subscribe', projectId: 'p1', after: 2, afterHash: hashOf(2) },
      { type: 'subscribe', projectId: 'p2', after: 11, afterHash: hashOf(11) },
      { type: 'subscribe', projectId: 'p3' }, // never confirmed: the durable cursor decides
    ]);
    expect(seqs('p1')).toEqual([1, 2]);
    expect(seqs('p2')).toEqual([11]);
  });

  it('resumes a project unsubscribed and subscribed again where it stopped', () => {
    const { client, fake } = connectedClient();
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
      { type: 'subscribe', projectId: 'p1', after: 1, afterHash: hashOf(1) },
    ]);
    const received: number[] = [];
    client.on('message', (message) => received.push(message.seq));
    fake.last.receive(event('p1', 3));
    expect(received).toEqual([3]);
  });

  it('asks again with backoff when subscribing meets `unavailable`', () => {
    const { client, fake } = connectedClient({ random: () => 0 });
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
    const { client, fake, seqs } = connectedClient();
    client.subscribe('p1');
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 3 });
    for (const seq of [1, 2, 2, 1, 3, 3]) fake.last.receive(event('p1', seq));
    expect(seqs('p1')).toEqual([1, 2, 3]);
    expect(client.getState().lastMessage?.seq).toBe(3);
  });

  it('keeps projects apart: the same seq in two projects is two events', () => {
    const { client, fake, seqs } = connectedClient();
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
    const { client, fake, fetch, history, seqs } = connectedClient();
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
    const { client, fake, history, seqs } = connectedClient();
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
    const { client, fake, seqs } = connectedClient();
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
    const env = connectedClient();
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
      { type: 'ack', projectId: 'p1', seq: 10, hash: hashOf(10) },
      { type: 'ack', projectId: 'p2', seq: 1, hash: hashOf(1) },
    ]);
    vi.advanceTimersByTime(1000);
    expect(fake.last.frames('ack')).toHaveLength(2);
  });

  it('acks at once when 50 events are waiting', () => {
    const { fake } = subscribedTo('p1');
    for (let seq = 1; seq <= 49; seq += 1) fake.last.receive(event('p1', seq));
    expect(fake.last.frames('ack')).toEqual([]);
    fake.last.receive(event('p1', 50));
    expect(fake.last.frames('ack')).toEqual([{ type: 'ack', projectId: 'p1', seq: 50, hash: hashOf(50) }]);
  });

  it('flushes on close(), before the socket closes', () => {
    const { client, fake } = subscribedTo('p1');
    fake.last.receive(event('p1', 1));
    client.close();
    expect(fake.last.frames('ack')).toEqual([{ type: 'ack', projectId: 'p1', seq: 1, hash: hashOf(1) }]);
  });

  it('acks before unsubscribing', () => {
    const { client, fake } = subscribedTo('p1');
    fake.last.receive(event('p1', 1));
    client.unsubscribe('p1');
    expect(fake.last.sent.slice(-2)).toEqual([
      { type: 'ack', projectId: 'p1', seq: 1, hash: hashOf(1) },
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
    expect(fake.last.frames('ack')).toEqual([{ type: 'ack', projectId: 'p1', seq: 1, hash: hashOf(1) }]);
  });
});

describe('positions the service will not resume from', () => {
  it('parks a subscription refused as history_truncated: told once, asked no more across reconnects, resumed by resubscribe', () => {
    const { client, fake, seqs } = connectedClient();
    const resyncs: unknown[] = [];
    const errors: unknown[] = [];
    client.on('resync', (resync) => resyncs.push(resync));
    client.on('error', (error) => errors.push(error));
    client.subscribe('p1', { after: 2 });
    const truncated = { type: 'error', code: 'history_truncated', message: 'pruned', ref: 'p1', oldest: 6, stateSeq: 9 } as const;
    fake.last.receive(truncated);
    fake.last.receive(truncated); // a second answer to the same position changes nothing
    expect(resyncs).toEqual([{ projectId: 'p1', code: 'history_truncated', oldest: 6, stateSeq: 9 }]);
    expect(errors).toHaveLength(2); // error frames still reach `error` listeners
    fake.last.receive(event('p1', 10)); // nothing is handed over while parked
    expect(seqs('p1')).toEqual([]);

    fake.last.drop(1012);
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(fake.last.frames('subscribe')).toEqual([]); // not the same too-old position again

    client.resubscribe('p1', 9);
    expect(fake.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'p1', after: 9 }]);
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 9, head: 9 });
    fake.last.receive(event('p1', 10));
    expect(seqs('p1')).toEqual([10]);
    expect(client.position('p1')).toBe(10);
    expect(() => client.resubscribe('p1', -1)).toThrow(RangeError);
  });

  it('parks a subscription refused as invalid_cursor, drops its unsent acks, and unsubscribes it without a frame', () => {
    const { client, fake } = connectedClient();
    const resyncs: unknown[] = [];
    client.on('resync', (resync) => resyncs.push(resync));
    client.subscribe('p1', { after: 0 });
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 5 });
    fake.last.receive(event('p1', 1));
    fake.last.drop(1012); // the ack of 1 is pending
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(fake.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'p1', after: 1, afterHash: hashOf(1) }]);
    fake.last.receive({ type: 'error', code: 'invalid_cursor', message: 'after 1 is beyond the head 0', ref: 'p1' });
    expect(resyncs).toEqual([{ projectId: 'p1', code: 'invalid_cursor' }]);
    vi.advanceTimersByTime(1000);
    expect(fake.last.frames('ack')).toEqual([]); // seq 1 is not in the log the service has now

    // A subscribe with `after` resumes a parked subscription too (the store's load does this).
    client.subscribe('p1', { after: 0 });
    expect(fake.last.frames('subscribe').at(-1)).toEqual({ type: 'subscribe', projectId: 'p1', after: 0 });
    client.unsubscribe('p1');
    client.unsubscribe('p1');
    expect(fake.last.frames('unsubscribe')).toHaveLength(1);

    client.subscribe('p2', { after: 3 });
    fake.last.receive({ type: 'error', code: 'invalid_cursor', message: 'beyond', ref: 'p2' });
    client.unsubscribe('p2'); // parked: the service holds no subscription to end
    expect(fake.last.frames('unsubscribe').map((frame) => frame.projectId)).toEqual(['p1']);
  });

  it('sends the hash of the event it resumes after, and parks on history_rewritten with its seq and stateSeq', () => {
    const { client, fake, seqs } = connectedClient();
    const resyncs: unknown[] = [];
    client.on('resync', (resync) => resyncs.push(resync));
    client.subscribe('p1', { after: 0 });
    expect(fake.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'p1', after: 0 }]); // no event: no hash
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 3 });
    for (const seq of [1, 2, 3]) fake.last.receive(event('p1', seq));
    fake.last.drop(1012); // the ack of 3 is pending
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(fake.last.frames('subscribe')).toEqual([
      { type: 'subscribe', projectId: 'p1', after: 3, afterHash: hashOf(3) },
    ]);
    fake.last.receive({
      type: 'error',
      code: 'history_rewritten',
      message: 'the log’s event at seq 3 is not the one this client had',
      ref: 'p1',
      seq: 3,
      stateSeq: 5,
    });
    expect(resyncs).toEqual([{ projectId: 'p1', code: 'history_rewritten', seq: 3, stateSeq: 5 }]);
    vi.advanceTimersByTime(1000);
    expect(fake.last.frames('ack')).toEqual([]); // 3 names an event the service no longer has
    fake.last.drop(1012);
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(fake.last.frames('subscribe')).toEqual([]); // parked across reconnects

    client.resubscribe('p1', 5); // after the reloaded state: its seq has no event here, so no hash
    expect(fake.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'p1', after: 5 }]);
    fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 5, head: 5 });
    fake.last.receive(event('p1', 6));
    expect(seqs('p1')).toEqual([1, 2, 3, 6]);
    vi.advanceTimersByTime(1000);
    expect(fake.last.frames('ack')).toEqual([{ type: 'ack', projectId: 'p1', seq: 6, hash: hashOf(6) }]);
  });
});
