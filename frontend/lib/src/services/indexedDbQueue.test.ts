// @vitest-environment node
// The persistent offline queue (on fake-indexeddb): order and persistence across a simulated
// reload, one record per messageId, pages sharing a database, no IndexedDB at all; and the client
// sending what an earlier page left, in order, only once the queue is loaded.
import { IDBFactory } from 'fake-indexeddb';
import { describe, expect, it, vi } from 'vitest';
import { fakePlatform, fakeSockets, settle } from '../../../tests/fakes.js';
import type { ErrorMessage, PublishMessage, PublishedMessage } from '../types/websocket.js';
import { HeraldClient } from './client.js';
import { indexedDbQueue } from './indexedDbQueue.js';
import { memoryStorage } from './platform.js';

const publish = (messageId: string, projectId = 'p1'): PublishMessage & { messageId: string } => ({
  type: 'agent_run_progress',
  projectId,
  data: { runId: 'r', status: 'running', progress: 1 },
  messageId,
});

const ids = (queue: { list(): readonly { messageId: string }[] }) => queue.list().map((item) => item.messageId);

/** A new page's queue on the same database, once loaded. */
async function reload(indexedDB: IDBFactory, name?: string) {
  const queue = indexedDbQueue({ indexedDB, name });
  await queue.ready;
  return queue;
}

describe('indexedDbQueue', () => {
  it('keeps its publishes, in order, across a reload; removed ones stay removed', async () => {
    const indexedDB = new IDBFactory();
    const queue = indexedDbQueue({ indexedDB });
    for (const id of ['a', 'b', 'c', 'd']) queue.add(publish(id));
    queue.add(publish('b')); // held once, in its first place
    queue.remove('c');
    expect(ids(queue)).toEqual(['a', 'b', 'd']);
    expect(queue.size).toBe(3);
    await queue.flush();

    const next = await reload(indexedDB);
    expect(ids(next)).toEqual(['a', 'b', 'd']);
    expect(next.list()[0]).toEqual(publish('a'));
    next.remove('a');
    next.add(publish('e'));
    await next.flush();
    expect(ids(await reload(indexedDB))).toEqual(['b', 'd', 'e']);
    expect(ids(await reload(indexedDB, 'another'))).toEqual([]);
  });

  it('puts what a page queues before loading after what earlier pages left, and forgets early removals', async () => {
    const indexedDB = new IDBFactory();
    const first = indexedDbQueue({ indexedDB });
    for (const id of ['a', 'b', 'c']) first.add(publish(id));
    await first.flush();

    const second = indexedDbQueue({ indexedDB });
    second.add(publish('x'));
    second.add(publish('b')); // queued again by this page before it knew
    second.remove('c'); // answered before the load (the same messageId sent by this page)
    await second.ready;
    expect(ids(second)).toEqual(['a', 'b', 'x']);
    second.remove('b'); // both records of b go
    await second.flush();
    expect(ids(await reload(indexedDB))).toEqual(['a', 'x']);
  });

  it('orders the publishes of pages open at once by when they were queued', async () => {
    const indexedDB = new IDBFactory();
    const one = await reload(indexedDB);
    const two = await reload(indexedDB);
    one.add(publish('1a'));
    await one.flush();
    two.add(publish('2a'));
    await two.flush();
    one.add(publish('1b'));
    await one.flush();
    expect(ids(await reload(indexedDB))).toEqual(['1a', '2a', '1b']);
  });

  it('is a memory queue where there is no IndexedDB, or a broken one', async () => {
    const none = indexedDbQueue({ indexedDB: undefined });
    vi.stubGlobal('indexedDB', undefined);
    none.add(publish('a'));
    await none.ready;
    await none.flush();
    expect(ids(none)).toEqual(['a']);
    vi.unstubAllGlobals();

    const broken = indexedDbQueue({
      indexedDB: {
        open() {
          throw new DOMException('blocked', 'SecurityError');
        },
      } as unknown as IDBFactory,
    });
    broken.add(publish('b'));
    await broken.ready;
    broken.add(publish('c'));
    await broken.flush();
    expect(ids(broken)).toEqual(['b', 'c']);
  });
});

describe('the client on a persistent queue', () => {
  it('sends what an earlier page left, oldest first, only once the queue is loaded', async () => {
    const indexedDB = new IDBFactory();
    const storage = memoryStorage();
    const before = indexedDbQueue({ indexedDB });
    for (const id of ['a', 'b', 'bad']) before.add(publish(id));
    await before.flush();

    const fake = fakeSockets();
    const queue = indexedDbQueue({ indexedDB });
    const client = new HeraldClient({
      token: 't',
      baseUrl: 'http://herald.test',
      WebSocket: fake.WebSocket,
      fallbacks: [],
      platform: fakePlatform().platform,
      storage,
      queue,
    });
    const published: PublishedMessage[] = [];
    const errors: ErrorMessage[] = [];
    client.on('published', (message) => published.push(message));
    client.on('error', (message) => errors.push(message));
    client.connect();
    fake.last.accept();
    const data = { runId: 'r', status: 'running', progress: 1 } as const;
    const c = client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data, messageId: 'c' });
    expect(fake.last.frames('agent_run_progress')).toEqual([]); // not before a, b, bad
    await queue.ready;
    await settle();
    expect(client.getState().queued).toBe(4);
    expect(fake.last.frames('agent_run_progress').map((frame) => frame.messageId)).toEqual(['a', 'b', 'bad', 'c']);

    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'a', seq: 1 });
    fake.last.receive({ type: 'error', code: 'invalid_data', message: 'no', ref: 'bad' });
    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'c', seq: 2 });
    await expect(c).resolves.toMatchObject({ seq: 2 });
    expect(published.map((message) => message.messageId)).toEqual(['a', 'c']);
    expect(errors).toEqual([{ type: 'error', code: 'invalid_data', message: 'no', ref: 'bad' }]);
    expect(client.getState().queued).toBe(1);
    await queue.flush();
    expect(ids(await reload(indexedDB))).toEqual(['b']);
    client.close();
  });
});
