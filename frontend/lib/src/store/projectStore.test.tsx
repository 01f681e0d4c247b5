// The project store: every handler idempotent and order-safe (any order of the same events, with
// replays, folds to the server's fold), snapshot + live = the fold of the whole log, the store's
// load/subscribe/unload cycle, the reload after a resync, unread counts, and the selectors.
// react.test.tsx covers the hooks.
import { describe, expect, it, vi } from 'vitest';
import { fakeProjectSource, hashOf, prEvent, projectState } from '../../../tests/fakes.js';
import { HeraldError } from '../services/errors.js';
import { memoryStorage } from '../services/platform.js';
import type { Event, ProjectState, WebSocketMessage } from '../types/websocket.js';
import {
  applyEvent,
  createProjectStore,
  emptyProject,
  fromSnapshot,
  handlers,
  runsByActivity,
  totalUnread,
  validationsByPullRequest,
  type Project,
} from './projectStore.js';

// --- a log, and the server's fold of it written out plainly (service/state.py) ---------------------

/** A deterministic PRNG, so a failing case can be replayed from its seed. */
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

function randomLog(projectId: string, length: number, random: () => number): Event[] {
  const pick = <T,>(items: readonly T[]) => items[Math.floor(random() * items.length)];
  return Array.from({ length }, (_, i): Event => {
    const seq = i + 1;
    const base = { projectId, seq, messageId: `m${seq}`, timestamp: '2026-01-01T00:00:00.000Z', hash: hashOf(seq) };
    const kind = pick(['run', 'pr', 'validation'] as const);
    if (kind === 'run') {
      const status = pick(['queued', 'running', 'succeeded', 'failed', 'cancelled']);
      const runId = pick(['r1', 'r2', 'r3', 'r4', 'r5', 'r6']);
      return { ...base, type: 'agent_run_progress', data: { runId, status, progress: seq % 101 } };
    }
    if (kind === 'pr') {
      const repo = pick(['octo/demo', 'Octo/Demo', 'octo/other']); // one subject whatever the case
      const data = { action: 'opened', number: pick([1, 2, 3]), title: 't', url: 'u', repo, headSha: pick(['a', 'b']) };
      return { ...base, type: 'pr_notification', data };
    }
    const data: Record<string, unknown> = { name: pick(['ci', 'lint', 'e2e']), status: pick(['queued', 'completed']) };
    const headSha = pick(['a', 'b', '', null]); // absent and '' are two subjects
    if (headSha !== null) data.headSha = headSha;
    if (random() < 0.5) data.prNumber = pick([1, 2, 3]);
    return { ...base, type: 'validation_update', data };
  });
}

function subject(event: Event): string | null {
  const data = event.data as Record<string, unknown>;
  if (event.type === 'agent_run_progress') return JSON.stringify([data.runId]);
  if (event.type === 'pr_notification') return JSON.stringify([String(data.repo).toLowerCase(), data.number]);
  return JSON.stringify([data.name, data.headSha ?? null]);
}

function serverFold(projectId: string, events: Event[], limit: number): ProjectState {
  const latest = new Map<string, Event>();
  const notifications: Event[] = [];
  const seen = new Set<number>();
  for (const event of [...events].sort((a, b) => a.seq - b.seq)) {
    if (seen.has(event.seq)) continue;
    seen.add(event.seq);
    latest.set(`${event.type} ${subject(event)}`, event);
    if (event.type === 'pr_notification') notifications.push(event);
  }
  const newest = (items: Event[]) => [...items].sort((a, b) => b.seq - a.seq).slice(0, limit);
  const of = (type: string) => newest([...latest.values()].filter((event) => event.type === type));
  return {
    projectId,
    seq: Math.max(0, ...seen),
    agentRuns: of('agent_run_progress'),
    pullRequests: of('pr_notification'),
    validations: of('validation_update'),
    notifications: newest(notifications),
  };
}

function lists(project: Project) {
  const { seq, agentRuns, pullRequests, validations, notifications } = project;
  return { seq, agentRuns, pullRequests, validations, notifications };
}

function shuffled<T>(items: T[], random: () => number): T[] {
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [copy[i], copy[j]] = [copy[j], copy[i]];
  }
  return copy;
}

describe('the fold', () => {
  it.each([1, 2, 3, 5, 50])('is order-safe and idempotent: any order, with replays, folds as the server does (limit %i)', (limit) => {
    for (let seed = 1; seed <= 40; seed += 1) {
      const random = prng(seed * 1000 + limit);
      const log = randomLog('p', 60, random);
      const expected = serverFold('p', log, limit);
      const arrivals = shuffled([...log, ...log.filter(() => random() < 0.3)], random);
      let project = emptyProject('p', limit);
      for (const event of arrivals) project = applyEvent(project, event);
      expect({ seed, ...lists(project) }).toEqual({ seed, ...lists(fromSnapshot(expected, limit, 0)) });
      // A replay of anything already folded changes nothing, down to the object.
      for (const event of log) expect(applyEvent(project, event)).toBe(project);
    }
  });

  it('continues a snapshot with the live events to the fold of the whole log', () => {
    for (let seed = 1; seed <= 30; seed += 1) {
      const random = prng(seed);
      const log = randomLog('p', 80, random);
      const cut = Math.floor(random() * log.length);
      let project = fromSnapshot(serverFold('p', log.slice(0, cut), 4), 4, 0);
      // After the snapshot: the live events, plus replays of events it already holds.
      const live = [...log.slice(cut), ...log.slice(0, cut).filter(() => random() < 0.2)];
      for (const event of shuffled(live, random)) project = applyEvent(project, event);
      expect(lists(project)).toEqual(lists(fromSnapshot(serverFold('p', log, 4), 4, 0)));
    }
  });

  it('has one handler per event type, each returning the project itself when nothing changes', () => {
    expect(Object.keys(handlers).sort()).toEqual(['agent_run_progress', 'pr_notification', 'validation_update']);
    const run = (seq: number, status: 'running' | 'succeeded'): WebSocketMessage<'agent_run_progress'> => ({
      type: 'agent_run_progress',
      projectId: 'p',
      seq,
      messageId: `m${seq}`,
      timestamp: 't',
      hash: hashOf(seq),
      data: { runId: 'r', status, progress: 1 },
    });
    const first = applyEvent(emptyProject('p', 50), run(2, 'succeeded'));
    expect(applyEvent(first, run(1, 'running'))).toBe(first); // older: the run stays succeeded
    const later = applyEvent(first, run(3, 'running'));
    expect(later.agentRuns.map((item) => [item.seq, item.data.status])).toEqual([[3, 'running']]);
    expect(later.seq).toBe(3);
  });
});

// --- the store ------------------------------------------------------------------------------------

describe('the store', () => {
  it('loads the snapshot, subscribes from its seq, folds live events, and unloads (counted)', async () => {
    let release: (snapshot: ProjectState) => void = () => {};
    const { client, source, deliver, listeners } = fakeProjectSource(
      () => new Promise<ProjectState>((resolve) => (release = resolve)),
    );
    const store = createProjectStore({ client: source, limit: 10, storage: memoryStorage() });
    const loading = store.getState().loadProject('p1');
    void store.getState().loadProject('p1');
    expect(client.readState).toHaveBeenCalledTimes(1);
    expect(client.readState).toHaveBeenCalledWith('p1', 10);
    expect(store.getState().projects.p1.status).toBe('loading');
    deliver(prEvent(6)); // already subscribed by someone else: held until the snapshot is in
    release(projectState(5, [prEvent(5)]));
    await loading;
    expect(client.subscribe).toHaveBeenCalledWith('p1', { after: 5 });
    expect(store.getState().projects.p1).toMatchObject({ status: 'ready', seq: 6 });
    expect(store.getState().projects.p1.notifications.map((n) => n.seq)).toEqual([6, 5]);
    deliver(prEvent(7, 2));
    deliver(prEvent(7, 2));
    deliver({ ...prEvent(1), projectId: 'other' }); // not loaded: ignored
    expect(store.getState().projects.p1.pullRequests.map((p) => p.seq)).toEqual([7, 6]);

    store.getState().unloadProject('p1');
    expect(client.unsubscribe).not.toHaveBeenCalled();
    store.getState().unloadProject('p1');
    expect(client.unsubscribe).toHaveBeenCalledWith('p1');
    expect(store.getState().projects.p1).toBeUndefined();
    store.dispose();
    expect(listeners.size).toBe(0);
  });

  it('reads the gap when the client was already past the snapshot', async () => {
    const { client, source } = fakeProjectSource(async () => projectState(5));
    client.position.mockReturnValue(8);
    client.readEvents.mockResolvedValue([prEvent(6), prEvent(7), prEvent(8)]);
    const store = createProjectStore({ client: source, storage: memoryStorage() });
    await store.getState().loadProject('p1');
    await vi.waitFor(() => expect(store.getState().projects.p1.seq).toBe(8));
    expect(client.readEvents).toHaveBeenCalledWith('p1', 5, 9);
  });

  it('asks again for a snapshot that cannot be read, and stops at a refusal', async () => {
    let calls = 0;
    const { source } = fakeProjectSource(async (projectId) => {
      calls += 1;
      if (projectId === 'nope') throw new HeraldError('forbidden', 'not granted', projectId, 403);
      if (calls < 3) throw new TypeError('fetch failed');
      return projectState(2);
    });
    const store = createProjectStore({ client: source, storage: memoryStorage(), minRetryDelayMs: 1, maxRetryDelayMs: 2 });
    await store.getState().loadProject('p1');
    expect(calls).toBe(3);
    expect(store.getState().projects.p1).toMatchObject({ status: 'ready', seq: 2 });
    await expect(store.getState().loadProject('nope')).rejects.toMatchObject({ code: 'forbidden' });
    expect(store.getState().projects.nope).toMatchObject({ status: 'error', error: 'forbidden: not granted' });
  });

  it('counts unread notifications from the first load on, and keeps markRead across reloads', async () => {
    const storage = memoryStorage();
    const first = fakeProjectSource(async () => projectState(5, [prEvent(5), prEvent(3)]));
    const store = createProjectStore({ client: first.source, storage });
    await store.getState().loadProject('p1');
    expect(store.getState().projects.p1).toMatchObject({ unread: 0, readSeq: 5 }); // a first visit: all read
    first.deliver(prEvent(6));
    first.deliver(prEvent(7, 2));
    first.deliver(prEvent(7, 2));
    expect(store.getState().projects.p1.unread).toBe(2);
    expect(totalUnread(store.getState())).toBe(2);
    store.getState().markRead('p1');
    expect(store.getState().projects.p1).toMatchObject({ unread: 0, readSeq: 7 });
    first.deliver(prEvent(8));

    const second = fakeProjectSource(async () => projectState(9, [prEvent(9), prEvent(8), prEvent(7)]));
    const reloaded = createProjectStore({ client: second.source, storage });
    await reloaded.getState().loadProject('p1');
    expect(reloaded.getState().projects.p1).toMatchObject({ unread: 2, readSeq: 7 });
  });

  it('reloads a project whose history was truncated: the fresh snapshot replaces the fold, resubscribed after its seq', async () => {
    let snapshot = projectState(5, [prEvent(5), prEvent(3)]);
    const { client, source, deliver, resync } = fakeProjectSource(async () => snapshot);
    const store = createProjectStore({ client: source, storage: memoryStorage() });
    await store.getState().loadProject('p1');
    deliver(prEvent(6, 2));
    store.getState().markRead('p1');
    snapshot = projectState(40, [prEvent(40, 3), prEvent(6, 2)]);
    resync({ projectId: 'p1', code: 'history_truncated', oldest: 30, stateSeq: 40 });
    resync({ projectId: 'p1', code: 'history_truncated', oldest: 30, stateSeq: 40 }); // one reload at a time
    await vi.waitFor(() => expect(client.resubscribe).toHaveBeenCalledWith('p1', 40));
    expect(client.readState).toHaveBeenCalledTimes(2);
    expect(client.resubscribe).toHaveBeenCalledTimes(1);
    const project = store.getState().projects.p1;
    expect(project).toMatchObject({ status: 'ready', seq: 40, readSeq: 6, unread: 1 });
    expect(project.notice).toEqual({ kind: 'history_truncated', oldest: 30 });
    expect(project).toEqual({ ...fromSnapshot(snapshot, 50, 6), notice: project.notice });
    deliver(prEvent(41, 4));
    expect(store.getState().projects.p1.seq).toBe(41);
    store.getState().dismissNotice('p1');
    expect(store.getState().projects.p1.notice).toBeUndefined();
    expect('notice' in store.getState().projects.p1).toBe(false);
    resync({ projectId: 'other', code: 'invalid_cursor' }); // not loaded: nothing
    expect(client.readState).toHaveBeenCalledTimes(2);
    store.dispose();
  });

  it('reloads a project whose log was reset (invalid_cursor), moving a read marker the new log has not reached', async () => {
    let snapshot = projectState(9, [prEvent(9), prEvent(8)]);
    const storage = memoryStorage();
    const { client, source, resync } = fakeProjectSource(async () => snapshot);
    const store = createProjectStore({ client: source, storage });
    await store.getState().loadProject('p1');
    expect(store.getState().projects.p1.readSeq).toBe(9);
    snapshot = projectState(2, [prEvent(2), prEvent(1)]);
    resync({ projectId: 'p1', code: 'invalid_cursor' });
    await vi.waitFor(() => expect(client.resubscribe).toHaveBeenCalledWith('p1', 2));
    expect(store.getState().projects.p1).toMatchObject({ seq: 2, readSeq: 2, unread: 0, notice: { kind: 'reset' } });
    expect(store.getState().projects.p1.notifications.map((n) => n.seq)).toEqual([2, 1]);
    expect(storage.getItem('herald.read.p1')).toBe('2'); // so notifications 3.. of the new log count as unread
    store.dispose();
  });
});

describe('selectors', () => {
  it('sort runs with the active ones first, and find the validations of each pull request; memoized', () => {
    const event = (seq: number, type: Event['type'], data: Record<string, unknown>): Event => ({
      type,
      projectId: 'p',
      seq,
      messageId: `m${seq}`,
      timestamp: 't',
      hash: hashOf(seq),
      data,
    });
    const log = [
      event(1, 'agent_run_progress', { runId: 'a', status: 'running', progress: 1 }),
      event(2, 'agent_run_progress', { runId: 'b', status: 'succeeded', progress: 100 }),
      event(3, 'agent_run_progress', { runId: 'c', status: 'failed', progress: 3 }),
      event(4, 'agent_run_progress', { runId: 'd', status: 'queued', progress: 0 }),
      event(5, 'pr_notification', { action: 'opened', number: 1, title: 't', url: 'u', repo: 'Octo/Demo', headSha: 'h1' }),
      event(6, 'pr_notification', { action: 'opened', number: 2, title: 't', url: 'u', repo: 'octo/demo' }),
      event(7, 'validation_update', { name: 'ci', status: 'completed', conclusion: 'success', headSha: 'h1' }),
      event(8, 'validation_update', { name: 'ci', status: 'queued', headSha: 'h0', prNumber: 1 }),
      event(9, 'validation_update', { name: 'lint', status: 'in_progress', prNumber: 2 }),
    ];
    const project = log.reduce(applyEvent, emptyProject('p', 50));
    expect(runsByActivity(project).map((run) => run.data.runId)).toEqual(['d', 'a', 'c', 'b']);
    expect(runsByActivity(project)).toBe(runsByActivity(project));
    const byPr = validationsByPullRequest(project);
    expect([...byPr.keys()]).toEqual(['octo/demo#2', 'octo/demo#1']);
    expect(byPr.get('octo/demo#1')?.map((v) => v.seq)).toEqual([7]); // its head's, not h0's
    expect(byPr.get('octo/demo#2')?.map((v) => v.seq)).toEqual([9]); // no head known: by number
    expect(validationsByPullRequest(project)).toBe(byPr);
  });
});
