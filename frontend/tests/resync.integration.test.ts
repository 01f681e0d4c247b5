// @vitest-environment node
// The project store against the real service when its history cannot be followed from where it is,
// on each transport: the service's log reset under it (a position beyond the head: invalid_cursor)
// and the events it missed pruned (history_truncated). Either way the store reloads the snapshot,
// resubscribes after its seq, shows its notice, and then gets every new event exactly once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HeraldClient,
  createProjectStore,
  fromSnapshot,
  memoryStorage,
  pollingTransport,
  sseTransport,
  type Project,
  type ProjectState,
  type TransportFactory,
  type TransportKind,
} from '@herald/client';
import { fakePlatform } from './fakes';
import { Service, redirect, until } from './service';

/** The service the test starts with, and another with a fresh database behind the same address. */
let first: Service;
let fresh: Service;

beforeAll(async () => {
  [first, fresh] = await Promise.all([Service.start(), Service.start()]);
}, 60_000);

afterAll(async () => {
  await Promise.all([first?.dispose(), fresh?.dispose()]);
}, 60_000);

function shown(project: Project | undefined) {
  if (project === undefined) return undefined;
  const { seq, agentRuns, pullRequests, validations, notifications } = project;
  return { seq, agentRuns, pullRequests, validations, notifications };
}

async function publish(service: Service, projectId: string, count: number): Promise<void> {
  for (let i = 0; i < count; i += 1) await service.publish(projectId, `${projectId}-${Math.random()}`);
}

async function stateOf(service: Service, projectId: string): Promise<ProjectState> {
  return (await service.request<ProjectState>('GET', `/api/projects/${projectId}/state?limit=50`)).body;
}

/**
 * A client and store on `first`'s address, over `kind`, whose requests go to `target.service`
 * (switching it is the database behind the address changing), with a network the test turns off.
 */
function session(kind: TransportKind, target: { service: Service }) {
  const redirected = redirect(first, target);
  const retry = { fetch: redirected.fetch, minRetryMs: 20, maxRetryMs: 200 };
  const transports: Record<TransportKind, TransportFactory | undefined> = {
    websocket: undefined,
    sse: sseTransport({ ...retry, keepAliveMs: 15_000 }),
    polling: pollingTransport({ ...retry, intervalMs: 100 }),
  };
  const net = fakePlatform();
  const client = new HeraldClient({
    token: () => target.service.token,
    baseUrl: first.baseUrl,
    WebSocket: redirected.WebSocket,
    transport: transports[kind],
    fallbacks: [],
    fetch: redirected.fetch,
    platform: net.platform,
    storage: memoryStorage(),
    minReconnectDelayMs: 20,
    maxReconnectDelayMs: 200,
  });
  const store = createProjectStore({ client, storage: memoryStorage() });
  /** Every seq handed to the application, per project. */
  const delivered = new Map<string, number[]>();
  client.on('message', (event) => delivered.set(event.projectId, [...(delivered.get(event.projectId) ?? []), event.seq]));
  const resyncs: string[] = [];
  client.on('resync', (resync) => resyncs.push(resync.code));
  client.connect();
  const connected = () => client.getState().status === 'connected' && client.getState().transport === kind;
  return { client, store, net, delivered, resyncs, connected };
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe.each<TransportKind>(['websocket', 'sse', 'polling'])('over %s, the store', (kind) => {
  it('reloads the snapshot when the service’s log was reset under it (invalid_cursor), then misses and repeats nothing', async () => {
    const id = `reset-${kind}`;
    await Promise.all([first.createProject(id), fresh.createProject(id)]);
    await publish(first, id, 6);
    await publish(fresh, id, 2); // the restored log: its head (2) is below what the store will hold
    const target = { service: first };
    const { client, store, net, delivered, resyncs, connected } = session(kind, target);
    await until(connected, 20_000, `connected over ${kind}`);
    await store.getState().loadProject(id);
    expect(store.getState().projects[id].seq).toBe(6);
    await publish(first, id, 2);
    await until(() => store.getState().projects[id].seq === 8, 20_000, 'seq 8 folded');

    net.goOffline();
    target.service = fresh; // the database behind the address is now another, shorter one
    net.goOnline();
    await until(() => store.getState().projects[id].notice !== undefined, 20_000, 'the reload');
    expect(resyncs).toEqual(['invalid_cursor']);
    expect(store.getState().projects[id]).toMatchObject({ seq: 2, notice: { kind: 'reset' } });

    await publish(fresh, id, 3);
    await until(() => store.getState().projects[id].seq === 5, 20_000, 'seq 5 folded');
    expect(delivered.get(id)).toEqual([7, 8, 3, 4, 5]);
    expect(shown(store.getState().projects[id])).toEqual(shown(fromSnapshot(await stateOf(fresh, id), 50, 0)));
    expect(resyncs).toEqual(['invalid_cursor']);
    store.dispose();
    client.close();
  }, 60_000);

  it('reloads the snapshot when the events it missed were pruned (history_truncated), then misses and repeats nothing', async () => {
    const id = `pruned-${kind}`;
    await first.createProject(id);
    await publish(first, id, 4);
    const { client, store, net, delivered, resyncs, connected } = session(kind, { service: first });
    await until(connected, 20_000, `connected over ${kind}`);
    await store.getState().loadProject(id);
    await publish(first, id, 2);
    await until(() => store.getState().projects[id].seq === 6, 20_000, 'seq 6 folded');

    net.goOffline(); // away while the project moves on and its older events are pruned
    await publish(first, id, 6);
    first.prune(id, 10); // 7..9 are gone: the store, at 6, cannot resume
    net.goOnline();
    await until(() => store.getState().projects[id].notice !== undefined, 20_000, 'the reload');
    expect(resyncs).toEqual(['history_truncated']);
    expect(store.getState().projects[id]).toMatchObject({ seq: 12, notice: { kind: 'history_truncated', oldest: 10 } });

    await publish(first, id, 3);
    await until(() => store.getState().projects[id].seq === 15, 20_000, 'seq 15 folded');
    expect(delivered.get(id)).toEqual([...range(5, 6), ...range(13, 15)]);
    expect(shown(store.getState().projects[id])).toEqual(shown(fromSnapshot(await stateOf(first, id), 50, 0)));
    expect(resyncs).toEqual(['history_truncated']);
    store.dispose();
    client.close();
  }, 60_000);
});
