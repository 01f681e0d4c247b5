// @vitest-environment node
// The project store against the real service: a randomized session (publishes over HTTP and from
// the client, some queued offline; the network dropping; /ws blocked for a while, then SSE too, so
// the client runs on SSE, then polls, then comes back) ends with every project equal to the
// server's fold of its log.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HeraldClient,
  createProjectStore,
  fromSnapshot,
  memoryStorage,
  type EventType,
  type OutgoingMessage,
  type Project,
  type ProjectState,
} from '@herald/client';
import { fakePlatform } from './fakes';
import { gates, Service, until } from './service';

let service: Service;
const PROJECTS = ['s1', 's2'];
const LIMIT = 4; // small, so subjects drop out of the lists and come back

beforeAll(async () => {
  service = await Service.start();
  for (const id of PROJECTS) await service.createProject(id);
}, 60_000);

afterAll(async () => {
  await service?.dispose();
}, 60_000);

/** A deterministic PRNG: the seed is in the test's name, so a failure can be replayed. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomEvent(projectId: string, i: number, random: () => number): OutgoingMessage {
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)];
  const type = pick<EventType>(['agent_run_progress', 'pr_notification', 'validation_update']);
  if (type === 'agent_run_progress') {
    const status = pick(['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const);
    return { type, projectId, data: { runId: pick(['r1', 'r2', 'r3', 'r4', 'r5', 'r6']), status, progress: i % 101 } };
  }
  if (type === 'pr_notification') {
    const repo = pick(['octo/demo', 'Octo/Demo', 'octo/other']);
    const number = pick([1, 2, 3, 4]);
    return { type, projectId, data: { action: 'synchronize', number, title: `t${i}`, url: 'u', repo, headSha: pick(['a', 'b']) } };
  }
  const headSha = pick(['a', 'b', '', undefined]);
  const status = pick(['queued', 'in_progress', 'completed'] as const);
  return { type, projectId, data: { name: pick(['ci', 'lint', 'e2e']), status, ...(headSha === undefined ? {} : { headSha }) } };
}

const connectedVia = (client: HeraldClient, transport: string) =>
  client.getState().status === 'connected' && client.getState().transport === transport;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function shown(project: Project | undefined) {
  if (project === undefined) return undefined;
  const { seq, agentRuns, pullRequests, validations, notifications } = project;
  return { seq, agentRuns, pullRequests, validations, notifications };
}

describe('the project store against the real service', () => {
  it('ends identical to the fold of the log after a randomized session with disconnects (seed 7)', async () => {
    const random = prng(7);
    // Some history before the store loads, so the snapshots are not empty.
    for (let i = 0; i < 30; i += 1) {
      const message = randomEvent(PROJECTS[i % 2], i, random);
      await service.request('POST', `/api/projects/${message.projectId}/events`, { type: message.type, data: message.data });
    }
    const net = fakePlatform();
    const gate = await gates(service);
    const client = new HeraldClient({
      token: service.token,
      baseUrl: service.baseUrl,
      WebSocket: gate.WebSocket,
      fetch: gate.fetch,
      platform: net.platform,
      storage: memoryStorage(),
      minReconnectDelayMs: 20,
      maxReconnectDelayMs: 200,
      pollIntervalMs: 200,
    });
    const store = createProjectStore({ client, limit: LIMIT, storage: memoryStorage() });
    client.connect();
    await Promise.all(PROJECTS.map((id) => store.getState().loadProject(id)));
    const transports = new Set<string>();
    client.on('state', (state) => {
      if (state.status === 'connected' && state.transport !== null) transports.add(state.transport);
    });

    const pending: Promise<unknown>[] = [];
    for (let i = 30; i < 230; i += 1) {
      const message = randomEvent(PROJECTS[Math.floor(random() * 2)], i, random);
      const roll = random();
      if (roll < 0.5) {
        pending.push(client.sendMessage(message)); // queued while offline, sent once back
      } else {
        await service.request('POST', `/api/projects/${message.projectId}/events`, { type: message.type, data: message.data });
      }
      if (i === 80) {
        // The socket dies and cannot come back for a while: SSE takes over.
        gate.blocked.ws = true;
        net.goOffline();
        net.goOnline();
        await until(() => connectedVia(client, 'sse'), 20_000, 'the SSE fallback');
      }
      if (i === 110) {
        // Then SSE too: the client polls.
        gate.blocked.sse = true;
        net.goOffline();
        net.goOnline();
        await until(() => connectedVia(client, 'polling'), 20_000, 'polling');
      }
      if (i === 150) {
        // And both come back: the client climbs back to the WebSocket in the background.
        gate.blocked.ws = false;
        gate.blocked.sse = false;
      }
      if (roll > 0.97) {
        net.goOffline(); // the network drops for a moment
        await sleep(30 * random());
        net.goOnline();
      }
      if (i % 10 === 0) await sleep(10 * random());
    }
    await Promise.all(pending);
    for (const id of PROJECTS) {
      const { body: head } = await service.request<ProjectState>('GET', `/api/projects/${id}/state?limit=1`);
      await until(() => store.getState().projects[id]?.seq === head.seq, 20_000, `${id} to reach ${head.seq}`);
      const { body } = await service.request<ProjectState>('GET', `/api/projects/${id}/state?limit=${LIMIT}`);
      expect(shown(store.getState().projects[id])).toEqual(shown(fromSnapshot(body, LIMIT, 0)));
    }
    expect([...transports].sort()).toEqual(['polling', 'sse', 'websocket']);
    await until(() => connectedVia(client, 'websocket'), 20_000, 'the WebSocket again');
    store.dispose();
    client.close();
  }, 60_000);
});
