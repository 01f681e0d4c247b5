// The dashboard's state: one Project per loaded project, started from the state snapshot
// (`GET /api/projects/{id}/state`) and kept current by the live events from `after = snapshot.seq`.
// A zustand vanilla store, framework-agnostic; React reads it through store/react.ts.
//
// The fold is the server's (service/state.py, docs/protocol.md "The state snapshot"): each list
// holds the latest event of each subject, newest first, at most `limit` of them; `notifications`
// holds the latest pr_notification events. Every handler is idempotent and order-safe: an item is
// replaced only by an event of its subject with a higher seq, so a replayed or late event changes
// nothing, and any order of the same events folds to the same Project.
import { createStore, type StoreApi } from 'zustand/vanilla';
import { backoff } from '../services/backoff.js';
import type { HeraldClient } from '../services/client.js';
import { HeraldError } from '../services/errors.js';
import { browserStorage, type KeyValueStorage } from '../services/platform.js';
import type { Event, EventType, ProjectState, Resync, WebSocketMessage } from '../types/websocket.js';

/** An agent run: its latest `agent_run_progress` event (the run is `data.runId`). */
export type AgentRun = WebSocketMessage<'agent_run_progress'>;
/** A pull request: its latest `pr_notification` event (`data.repo`, `data.number`). */
export type PullRequest = WebSocketMessage<'pr_notification'>;
/** A validation: its latest `validation_update` event (`data.name`, `data.headSha`). */
export type Validation = WebSocketMessage<'validation_update'>;
/** A notification: one `pr_notification` event. */
export type Notification = WebSocketMessage<'pr_notification'>;

/**
 * Why the project was reloaded from a fresh snapshot under the user's eyes, shown quietly until
 * dismissed: `history_truncated`, the events after what the store held were pruned (`oldest` is
 * the oldest kept, when the service said); `reset`, the service's log no longer reaches what the
 * store held (its database was reset, restored from an older backup, or failed over to a standby that
 * had not received the last events: `history_rewritten`).
 */
export type Notice = { kind: 'history_truncated'; oldest: number | null } | { kind: 'reset' };

export interface Project {
  id: string;
  /** 'loading' until the snapshot is in (`error` says why it is taking long); 'error' when it was
   * refused for good (forbidden, not found). */
  status: 'loading' | 'ready' | 'error';
  error?: string;
  /** The highest seq folded in: the snapshot's, then each live event's. */
  seq: number;
  /** The most items each list holds (the snapshot's `limit`). */
  limit: number;
  /** Newest first (by the seq of each item's latest event). */
  agentRuns: AgentRun[];
  pullRequests: PullRequest[];
  validations: Validation[];
  notifications: Notification[];
  /** Notifications with seq ≤ readSeq are read (`markRead`). */
  readSeq: number;
  /** The notifications held that are not read. */
  unread: number;
  /** Set when the project was reloaded because its history could not be followed (`dismissNotice`). */
  notice?: Notice;
}

// --- the fold: pure, one handler per event type -------------------------------------------------------

/** A project before its snapshot. */
export function emptyProject(id: string, limit: number, readSeq = 0): Project {
  return {
    id,
    status: 'loading',
    seq: 0,
    limit,
    agentRuns: [],
    pullRequests: [],
    validations: [],
    notifications: [],
    readSeq,
    unread: 0,
  };
}

/**
 * Puts `item` in `list` (newest first, at most `limit`) unless the list has its subject at the same
 * or a higher seq. Returns `list` itself when nothing changes: a replay, a late event, or one too
 * old to be among the newest `limit` (it would drop out at once, as in the server's fold).
 */
function upsert<T extends { seq: number }>(list: T[], item: T, same: (other: T) => boolean, limit: number): T[] {
  const index = list.findIndex(same);
  if (index !== -1 && list[index].seq >= item.seq) return list;
  const rest = index === -1 ? list : list.filter((_, i) => i !== index);
  let at = rest.findIndex((other) => other.seq < item.seq);
  if (at === -1) at = rest.length;
  if (at >= limit) return list;
  return [...rest.slice(0, at), item, ...rest.slice(at, limit - 1)];
}

/** The subject of a pull request, as the server keys it: repo case-insensitively, and number. */
function samePullRequest(a: PullRequest, b: PullRequest): boolean {
  return a.data.number === b.data.number && a.data.repo.toLowerCase() === b.data.repo.toLowerCase();
}

/** The subject of a validation: name and headSha (an absent headSha is a subject of its own). */
function sameValidation(a: Validation, b: Validation): boolean {
  return a.data.name === b.data.name && (a.data.headSha ?? null) === (b.data.headSha ?? null);
}

function countUnread(notifications: Notification[], readSeq: number): number {
  return notifications.filter((notification) => notification.seq > readSeq).length;
}

type Handler<K extends EventType> = (project: Project, event: WebSocketMessage<K>) => Project;

/** One handler per event type: each returns `project` itself when the event changes nothing. */
export const handlers: { [K in EventType]: Handler<K> } = {
  agent_run_progress(project, event) {
    const agentRuns = upsert(project.agentRuns, event, (run) => run.data.runId === event.data.runId, project.limit);
    return agentRuns === project.agentRuns ? project : { ...project, agentRuns };
  },
  pr_notification(project, event) {
    const pullRequests = upsert(project.pullRequests, event, (pr) => samePullRequest(pr, event), project.limit);
    const notifications = upsert(project.notifications, event, (other) => other.seq === event.seq, project.limit);
    if (pullRequests === project.pullRequests && notifications === project.notifications) return project;
    return { ...project, pullRequests, notifications, unread: countUnread(notifications, project.readSeq) };
  },
  validation_update(project, event) {
    const validations = upsert(project.validations, event, (other) => sameValidation(other, event), project.limit);
    return validations === project.validations ? project : { ...project, validations };
  },
};

/** Folds one event into the project (the handler of its type); returns `project` when nothing changes. */
export function applyEvent(project: Project, event: WebSocketMessage | Event): Project {
  const handler = handlers[event.type] as Handler<EventType> | undefined;
  if (handler === undefined) return project; // a type newer than this code: not shown
  const next = handler(project, event as WebSocketMessage);
  if (event.seq <= next.seq) return next;
  return { ...next, seq: event.seq };
}

// The service validated every event's `data` against its type's schema when it appended it.
function typed<T extends WebSocketMessage>(events: Event[], limit: number): T[] {
  return events.slice(0, limit) as unknown as T[];
}

/** The project as the snapshot says (its items are events, so live events fold on top of them). */
export function fromSnapshot(snapshot: ProjectState, limit: number, readSeq: number): Project {
  const notifications = typed<Notification>(snapshot.notifications, limit);
  return {
    ...emptyProject(snapshot.projectId, limit, readSeq),
    status: 'ready',
    seq: snapshot.seq,
    agentRuns: typed<AgentRun>(snapshot.agentRuns, limit),
    pullRequests: typed<PullRequest>(snapshot.pullRequests, limit),
    validations: typed<Validation>(snapshot.validations, limit),
    notifications,
    unread: countUnread(notifications, readSeq),
  };
}

// --- selectors for cards (memoized per Project object, so React sees stable results) -----------------

function memo<T>(compute: (project: Project) => T): (project: Project) => T {
  const cache = new WeakMap<Project, T>();
  return (project) => {
    let value = cache.get(project);
    if (value === undefined) {
      value = compute(project);
      cache.set(project, value);
    }
    return value;
  };
}

const ACTIVE: ReadonlySet<string> = new Set(['queued', 'running']);

/** Runs still going (queued, running) first, then the finished ones; newest first within each. */
export const runsByActivity = memo((project: Project): AgentRun[] => [
  ...project.agentRuns.filter((run) => ACTIVE.has(run.data.status)),
  ...project.agentRuns.filter((run) => !ACTIVE.has(run.data.status)),
]);

/**
 * The validations of each pull request (key `repo#number`, repo lowercased), newest first, one per
 * name: those of the pull request's head commit (`headSha`), else, when the pull request's head is
 * not known, those naming its number.
 */
export const validationsByPullRequest = memo((project: Project): Map<string, Validation[]> => {
  const result = new Map<string, Validation[]>();
  for (const pr of project.pullRequests) {
    const head = pr.data.headSha ?? null;
    const names = new Set<string>();
    const mine: Validation[] = [];
    for (const validation of project.validations) {
      const { headSha, prNumber, name } = validation.data;
      const matches = head !== null ? headSha === head : prNumber === pr.data.number;
      if (matches && !names.has(name)) {
        names.add(name);
        mine.push(validation);
      }
    }
    result.set(pullRequestKey(pr), mine);
  }
  return result;
});

/** `owner/name#number`, the repo lowercased: how pull requests are told apart. */
export function pullRequestKey(pr: PullRequest): string {
  return `${pr.data.repo.toLowerCase()}#${pr.data.number}`;
}

/** The unread notifications of every loaded project. */
export function totalUnread(state: ProjectStoreState): number {
  let total = 0;
  for (const project of Object.values(state.projects)) total += project.unread;
  return total;
}

// --- the store ---------------------------------------------------------------------------------------

export interface ProjectStoreState {
  /** Every loaded project, by id. */
  projects: Readonly<Record<string, Project>>;
  /**
   * Loads the project (reference-counted, like `subscribe`): its snapshot, then its live events
   * through the client from `after = snapshot.seq`. Resolves once the snapshot is in; a snapshot
   * that cannot be read (network, 5xx) is asked again with backoff; one refused (403, 404) rejects
   * and leaves the project in status 'error'.
   */
  loadProject(projectId: string): Promise<void>;
  /** Drops one reference; the last one unsubscribes and forgets the project. */
  unloadProject(projectId: string): void;
  /** Folds one event into its project (if loaded); idempotent. The client's events come here. */
  apply(event: WebSocketMessage): void;
  /**
   * Reloads the project (if loaded and subscribed) from a fresh snapshot, replacing what was folded,
   * resubscribes after its seq and sets its `notice`. The client's `resync`s come here. Rejects (and
   * leaves status 'error') when the snapshot is refused.
   */
  resync(resync: Resync): Promise<void>;
  /** Marks every notification of the project as read (kept in storage across reloads). */
  markRead(projectId: string): void;
  /** Clears the project's `notice`. */
  dismissNotice(projectId: string): void;
}

/** What the store needs of the client (a HeraldClient fits). */
export type ProjectSource = Pick<
  HeraldClient,
  'on' | 'subscribe' | 'unsubscribe' | 'resubscribe' | 'readState' | 'readEvents' | 'position'
>;

export interface ProjectStoreOptions {
  client: ProjectSource;
  /** Items per list: the snapshot's `limit` (1–1000, default 50). */
  limit?: number;
  /** Where read markers live (default: localStorage, else memory). */
  storage?: KeyValueStorage;
  minRetryDelayMs?: number;
  maxRetryDelayMs?: number;
}

export type ProjectStore = StoreApi<ProjectStoreState> & {
  /** Stops listening to the client and unsubscribes every loaded project. */
  dispose(): void;
};

interface Load {
  refs: number;
  promise: Promise<void>;
  /** Events that came before the snapshot, folded on top of it (null once it is in). */
  early: WebSocketMessage[] | null;
  /** The client subscription is made (so unloading must end it). */
  subscribed: boolean;
  cancelled: boolean;
  /** A reload after a `resync` is under way. */
  reloading: boolean;
}

const READ_KEY = (projectId: string) => `herald.read.${projectId}`;
const REFUSED: ReadonlySet<string> = new Set(['unauthorized', 'forbidden', 'not_found', 'invalid_data']);

/**
 * A project store fed by `client`. Unread: a notification (a pr_notification event) is unread when
 * its seq is above the project's read marker; `markRead` moves the marker to the project's seq and
 * stores it (`herald.read.<projectId>`). A project loaded for the first time on this storage starts
 * with the marker at its snapshot's seq, so only what arrives afterwards counts as unread.
 */
export function createProjectStore(options: ProjectStoreOptions): ProjectStore {
  const { client } = options;
  const limit = options.limit ?? 50;
  const storage = options.storage ?? browserStorage();
  const minDelay = options.minRetryDelayMs ?? 500;
  const maxDelay = options.maxRetryDelayMs ?? 20_000;
  const loads = new Map<string, Load>();

  const storedReadSeq = (projectId: string): number | null => {
    const value = Number(storage.getItem(READ_KEY(projectId)) ?? Number.NaN);
    return Number.isSafeInteger(value) && value >= 0 ? value : null;
  };

  const store = createStore<ProjectStoreState>()((set, get) => {
    const update = (projectId: string, change: (project: Project) => Project) => {
      const project = get().projects[projectId];
      if (project === undefined) return;
      const next = change(project);
      if (next !== project) set({ projects: { ...get().projects, [projectId]: next } });
    };

    /** The snapshot, asked again with backoff until it comes (null: unloaded meanwhile); throws when refused. */
    const readSnapshot = async (projectId: string, entry: Load): Promise<ProjectState | null> => {
      for (let failures = 0; ; failures += 1) {
        try {
          const snapshot = await client.readState(projectId, limit);
          return entry.cancelled ? null : snapshot;
        } catch (error) {
          if (entry.cancelled) return null;
          const message = error instanceof Error ? error.message : String(error);
          if (error instanceof HeraldError && REFUSED.has(error.code)) {
            update(projectId, (project) => ({ ...project, status: 'error', error: `${error.code}: ${message}` }));
            throw error;
          }
          update(projectId, (project) => ({ ...project, error: message }));
          await new Promise((resolve) => setTimeout(resolve, backoff(failures, minDelay, maxDelay)));
          if (entry.cancelled) return null;
        }
      }
    };

    const load = async (projectId: string, entry: Load): Promise<void> => {
      const snapshot = await readSnapshot(projectId, entry);
      if (snapshot === null) return;
      const readSeq = storedReadSeq(projectId) ?? snapshot.seq;
      if (storedReadSeq(projectId) === null) storage.setItem(READ_KEY(projectId), String(readSeq));
      let project = fromSnapshot(snapshot, limit, readSeq);
      for (const event of entry.early ?? []) project = applyEvent(project, event);
      entry.early = null;
      set({ projects: { ...get().projects, [projectId]: project } });
      // Subscribed already by someone else, the client may be past the snapshot: read the gap, so
      // the events it handed over before this load are folded too.
      const position = client.position(projectId);
      client.subscribe(projectId, { after: snapshot.seq });
      entry.subscribed = true;
      if (position !== null && position > snapshot.seq) {
        try {
          const events = await client.readEvents(projectId, snapshot.seq, position + 1);
          if (!entry.cancelled) update(projectId, (current) => events.reduce(applyEvent, current));
        } catch {
          // Only a display gap until the next snapshot; the live events go on regardless.
        }
      }
    };

    /**
     * The client parked the project's subscription (its position cannot be resumed): the folded
     * state is replaced by a fresh snapshot, the subscription restarts after its seq (the client
     * hands over nothing in between, so nothing is folded twice or missed), and the project gets
     * its notice. After a reset the read marker may name seqs of the old log: it moves to the
     * snapshot, so only what arrives afterwards counts as unread.
     */
    const reload = async (resync: Resync): Promise<void> => {
      const { projectId } = resync;
      const entry = loads.get(projectId);
      // Not subscribed by this store yet: its load reads a snapshot and subscribes after it anyway.
      if (entry === undefined || !entry.subscribed || entry.reloading) return;
      entry.reloading = true;
      try {
        const snapshot = await readSnapshot(projectId, entry);
        if (snapshot === null) return;
        const notice: Notice =
          resync.code === 'history_truncated' ? { kind: 'history_truncated', oldest: resync.oldest } : { kind: 'reset' };
        let readSeq = storedReadSeq(projectId) ?? snapshot.seq;
        if (notice.kind === 'reset' && readSeq > snapshot.seq) {
          readSeq = snapshot.seq;
          storage.setItem(READ_KEY(projectId), String(readSeq));
        }
        set({ projects: { ...get().projects, [projectId]: { ...fromSnapshot(snapshot, limit, readSeq), notice } } });
        client.resubscribe(projectId, snapshot.seq);
      } finally {
        entry.reloading = false;
      }
    };

    return {
      projects: {},
      resync: reload,

      loadProject(projectId) {
        const existing = loads.get(projectId);
        if (existing !== undefined) {
          existing.refs += 1;
          return existing.promise;
        }
        const entry: Load = {
          refs: 1,
          promise: Promise.resolve(),
          early: [],
          subscribed: false,
          cancelled: false,
          reloading: false,
        };
        loads.set(projectId, entry);
        set({ projects: { ...get().projects, [projectId]: emptyProject(projectId, limit) } });
        entry.promise = load(projectId, entry);
        return entry.promise;
      },

      unloadProject(projectId) {
        const entry = loads.get(projectId);
        if (entry === undefined) return;
        entry.refs -= 1;
        if (entry.refs > 0) return;
        entry.cancelled = true;
        loads.delete(projectId);
        if (entry.subscribed) client.unsubscribe(projectId);
        const projects = { ...get().projects };
        delete projects[projectId];
        set({ projects });
      },

      apply(event) {
        const entry = loads.get(event.projectId);
        if (entry === undefined) return;
        if (entry.early !== null) {
          entry.early.push(event);
          return;
        }
        update(event.projectId, (project) => applyEvent(project, event));
      },

      markRead(projectId) {
        update(projectId, (project) => {
          const readSeq = Math.max(project.readSeq, project.seq);
          storage.setItem(READ_KEY(projectId), String(readSeq));
          if (readSeq === project.readSeq) return project;
          return { ...project, readSeq, unread: countUnread(project.notifications, readSeq) };
        });
      },

      dismissNotice(projectId) {
        update(projectId, (project) => {
          if (project.notice === undefined) return project;
          const next = { ...project };
          delete next.notice;
          return next;
        });
      },
    };
  });

  const stops = [
    client.on('message', (event) => store.getState().apply(event)),
    client.on('resync', (resync) => {
      store.getState().resync(resync).catch(() => {
        // Refused (forbidden, not found): the project's status says it.
      });
    }),
  ];
  return {
    ...store,
    dispose() {
      for (const stop of stops) stop();
      for (const projectId of [...loads.keys()]) {
        const entry = loads.get(projectId);
        if (entry !== undefined) entry.refs = 1;
        store.getState().unloadProject(projectId);
      }
    },
  };
}
