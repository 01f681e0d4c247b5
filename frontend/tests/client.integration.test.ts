// @vitest-environment node
// The client against the real service (started here, on an embedded PostgreSQL): receive, ack,
// resume by cursor, publish over the socket, two projects apart, and a kill -9 of the service.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { HeraldClient, HeraldError, memoryStorage, type KeyValueStorage, type WebSocketMessage } from '@herald/client';
import { Service, until } from './service';

let service: Service;
const clients: HeraldClient[] = [];

beforeAll(async () => {
  service = await Service.start();
  for (const id of ['alpha', 'p2', 'p3', 'k1', 'k2']) await service.createProject(id);
}, 60_000);

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

afterAll(async () => {
  await service?.dispose();
}, 60_000);

function makeClient(storage: KeyValueStorage = memoryStorage()) {
  const client = new HeraldClient({
    token: service.token,
    baseUrl: service.baseUrl,
    WebSocket,
    storage,
    minReconnectDelayMs: 50,
    maxReconnectDelayMs: 400,
  });
  clients.push(client);
  const received: WebSocketMessage[] = [];
  client.on('message', (message) => received.push(message));
  const seqs = (projectId: string) => received.filter((m) => m.projectId === projectId).map((m) => m.seq);
  return { client, received, seqs };
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('the client against the real service', () => {
  it('receives and acks; a client restarted with the same clientId resumes after its acks', async () => {
    const storage = memoryStorage();
    const first = makeClient(storage);
    first.client.subscribe('alpha', { after: 0 });
    first.client.connect();
    for (const i of range(1, 5)) await service.publish('alpha', `alpha-${i}`);
    await until(() => first.seqs('alpha').length === 5, 5000, 'five events');
    expect(first.seqs('alpha')).toEqual(range(1, 5));
    expect(first.received.map((m) => m.messageId)).toEqual(range(1, 5).map((i) => `alpha-${i}`));
    expect(first.received[0]).toMatchObject({ type: 'agent_run_progress', data: { runId: 'r', progress: 1 } });
    await until(async () => (await service.cursor('alpha', first.client.clientId)) === 5, 5000, 'the acks');
    first.client.close();

    for (const i of range(6, 7)) await service.publish('alpha', `alpha-${i}`);
    const second = makeClient(storage);
    expect(second.client.clientId).toBe(first.client.clientId);
    second.client.subscribe('alpha'); // no `after`: the durable cursor
    second.client.connect();
    await until(() => second.seqs('alpha').length === 2, 5000, 'the two new events');

    // Publishing over the socket: durable on `published`, refused on `error`, idempotent by messageId.
    const published = await second.client.sendMessage({
      type: 'agent_run_progress',
      projectId: 'alpha',
      data: { runId: 'r', status: 'succeeded', progress: 100 },
      messageId: 'from-the-socket',
    });
    expect(published).toEqual({ type: 'published', projectId: 'alpha', messageId: 'from-the-socket', seq: 8 });
    const again = await second.client.sendMessage({
      type: 'agent_run_progress',
      projectId: 'alpha',
      data: { runId: 'r', status: 'succeeded', progress: 100 },
      messageId: 'from-the-socket',
    });
    expect(again.seq).toBe(8);
    const refused = await second.client
      .sendMessage({ type: 'agent_run_progress', projectId: 'alpha', data: { runId: 'r', status: 'running', progress: 101 } })
      .catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(HeraldError);
    expect(refused).toMatchObject({ code: 'invalid_data' });
    await until(() => second.seqs('alpha').length === 3, 5000, 'its own event');
    expect(second.seqs('alpha')).toEqual([6, 7, 8]);
    expect(second.client.getState()).toMatchObject({ status: 'connected', queued: 0, transport: 'websocket' });
  }, 20_000);

  it('keeps two projects apart on one connection, with counted subscriptions', async () => {
    const { client, received, seqs } = makeClient();
    client.subscribe('p2', { after: 0 });
    client.subscribe('p2');
    client.subscribe('p3', { after: 0 });
    client.connect();
    await Promise.all(
      ['p2', 'p3'].map(async (projectId) => {
        for (const i of range(1, 5)) await service.publish(projectId, `${projectId}-${i}`);
      }),
    );
    await until(() => received.length === 10, 5000, 'ten events');
    expect(seqs('p2')).toEqual(range(1, 5));
    expect(seqs('p3')).toEqual(range(1, 5));
    expect(received.every((m) => m.messageId === `${m.projectId}-${m.seq}`)).toBe(true);

    client.unsubscribe('p3');
    client.unsubscribe('p2'); // one of two references: p2 stays
    // A publish on the same socket is handled after the unsubscribe: once it is answered, no p3 event follows.
    await client.sendMessage({
      type: 'agent_run_progress',
      projectId: 'p2',
      data: { runId: 'r', status: 'running', progress: 50 },
    });
    await service.publish('p3', 'p3-6');
    await service.publish('p2', 'p2-7');
    await until(() => seqs('p2').length === 7, 5000, 'p2 to go on');
    expect(seqs('p2')).toEqual(range(1, 7));
    expect(seqs('p3')).toEqual(range(1, 5));
  }, 20_000);

  it('resumes after the service is killed (kill -9) and restarted: nothing missed, nothing twice', async () => {
    const { client, seqs } = makeClient();
    const states: string[] = [];
    client.on('state', (state) => states.push(state.status));
    client.subscribe('k1', { after: 0 });
    client.subscribe('k2', { after: 0 });
    client.connect();
    for (const i of range(1, 10)) await service.publish('k1', `k1-${i}`);
    for (const i of range(1, 5)) await service.publish('k2', `k2-${i}`);
    await until(() => seqs('k1').length === 10 && seqs('k2').length === 5, 5000, 'the first events');

    await service.kill();
    await until(() => client.getState().reconnectAttempts >= 2, 5000, 'failed reconnects');
    expect(client.getState().status).toBe('connecting');
    await service.launch();
    // Published as soon as the service is back, before or while the client reconnects.
    for (const i of range(11, 20)) await service.publish('k1', `k1-${i}`);
    for (const i of range(6, 10)) await service.publish('k2', `k2-${i}`);
    await until(() => seqs('k1').length >= 20 && seqs('k2').length >= 10, 10_000, 'the rest');

    expect(seqs('k1')).toEqual(range(1, 20));
    expect(seqs('k2')).toEqual(range(1, 10));
    expect(client.getState()).toMatchObject({ status: 'connected', reconnectAttempts: 0 });
    expect(states).toContain('connecting');
    await until(async () => (await service.cursor('k1', client.clientId)) === 20, 5000, 'the acks after the restart');
  }, 30_000);
});
