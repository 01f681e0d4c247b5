// @vitest-environment node
// The client and its store against the real service when the log under them was rewritten at their
// position (docs/protocol.md §7.5): a failover to a standby that had not received the last events,
// whose seqs were then reissued to other events. The database behind the client's address becomes
// another whose project reaches the client's seq with other events: a resume by seq alone would go on
// from there and miss what changed; with the hash of its last event the client is told
// `history_rewritten`, and the store reloads the snapshot and resubscribes after its seq.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { HeraldClient, createProjectStore, memoryStorage, type Resync } from '@herald/client';
import { fakePlatform } from './fakes';
import { Service, redirect, until } from './service';

/** The primary the client starts on, and the promoted standby whose log diverges from it. */
let primary: Service;
let standby: Service;

beforeAll(async () => {
  [primary, standby] = await Promise.all([Service.start(), Service.start()]);
}, 60_000);

afterAll(async () => {
  await Promise.all([primary?.dispose(), standby?.dispose()]);
}, 60_000);

async function publish(service: Service, projectId: string, count: number): Promise<void> {
  for (let i = 0; i < count; i += 1) await service.publish(projectId, `${projectId}-${Math.random()}`);
}

it('sends afterHash on its resume and reloads on history_rewritten, then misses and repeats nothing', async () => {
  const id = 'rewritten';
  await Promise.all([primary.createProject(id), standby.createProject(id)]);
  await publish(primary, id, 4);
  await publish(standby, id, 6); // the new primary: seqs 1..6, none of them the events the client has

  const target = { service: primary };
  const sent: Record<string, unknown>[] = [];
  const redirected = redirect(primary, target, sent);
  const net = fakePlatform();
  const client = new HeraldClient({
    token: () => target.service.token,
    baseUrl: primary.baseUrl,
    WebSocket: redirected.WebSocket,
    fallbacks: [],
    fetch: redirected.fetch,
    platform: net.platform,
    storage: memoryStorage(),
    minReconnectDelayMs: 20,
    maxReconnectDelayMs: 200,
  });
  const store = createProjectStore({ client, storage: memoryStorage() });
  const delivered: number[] = [];
  const hashes = new Map<number, string>();
  client.on('message', (event) => {
    delivered.push(event.seq);
    hashes.set(event.seq, (event as unknown as { hash: string }).hash);
  });
  const resyncs: Resync[] = [];
  client.on('resync', (resync) => resyncs.push(resync));
  client.connect();
  await until(() => client.getState().status === 'connected', 20_000, 'connected');
  await store.getState().loadProject(id);
  expect(store.getState().projects[id].seq).toBe(4);
  await publish(primary, id, 2);
  await until(() => store.getState().projects[id].seq === 6, 20_000, 'seq 6 folded');

  sent.length = 0;
  net.goOffline();
  target.service = standby; // the failover: the address now reaches the promoted standby
  net.goOnline();
  await until(() => resyncs.length > 0, 20_000, 'the resync');
  expect(sent.filter((frame) => frame.type === 'subscribe')[0]).toEqual({
    type: 'subscribe',
    projectId: id,
    after: 6,
    afterHash: hashes.get(6),
  });
  expect(resyncs).toEqual([{ projectId: id, code: 'history_rewritten', seq: 6, stateSeq: 6 }]);
  await until(() => store.getState().projects[id].notice !== undefined, 20_000, 'the reload');
  expect(store.getState().projects[id]).toMatchObject({ seq: 6, notice: { kind: 'reset' } });

  await publish(standby, id, 2);
  await until(() => store.getState().projects[id].seq === 8, 20_000, 'seq 8 folded');
  expect(delivered).toEqual([5, 6, 7, 8]);
  expect(resyncs).toHaveLength(1);
  store.dispose();
  client.close();
}, 60_000);
