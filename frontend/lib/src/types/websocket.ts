// Generated from service/messages.py by frontend/scripts/gen-types.mjs. Do not edit: run `npm run gen:types`.

/**
 * `GET /api/projects/{id}/acks?seq=N`: every client whose acks reached N, with when they first did.
 */
export interface AckList {
  acks: AckRecord[];
}
export interface AckMessage {
  type: 'ack';
  projectId: string;
  seq: number;
  /**
   * extension: the `hash` of the event at `seq` as the client has it, kept with the durable cursor (else the log's at the time the ack is written); docs/protocol.md §7.5
   */
  hash?: string | null;
}
export interface AckRecord {
  user: string;
  clientId: string;
  /**
   * the cursor's position after the advance that first reached the asked seq
   */
  seq: number;
  /**
   * when that advance was persisted, ISO 8601 UTC
   */
  ackedAt: string;
}
export interface AckRequest {
  clientId: string;
  seq: number;
}
export interface AckResult {
  seq: number;
}
/**
 * Progress of one agent run; the latest event per `runId` is the run's state.
 */
export interface AgentRunProgress {
  runId: string;
  status: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
  progress: number;
  step?: string | null;
  message?: string | null;
}
export interface AuthMessage {
  type: 'auth';
  token: string;
}
/**
 * What became of one event of a batch: its seq, and whether this request appended it (false: its
 * messageId was already in the log, or earlier in the batch; `seq` is then the original's).
 */
export interface BatchItem {
  seq: number;
  messageId: string;
  created: boolean;
}
/**
 * `GET /api/projects/{id}/audit/verify` when a stored event was changed, deleted or reordered.
 */
export interface ChainBroken {
  ok: false;
  /**
   * the first seq whose event does not continue the chain
   */
  firstBad: number;
  reason: string;
}
/**
 * `GET /api/projects/{id}/audit/verify` when every stored event matches the chain.
 */
export interface ChainIntact {
  ok: true;
  /**
   * the last seq verified (the project's head)
   */
  head: number;
  /**
   * the chain's hash at head; 64 zeros for an empty log
   */
  hash: string;
}
/**
 * A signed receipt of the chain at `seq` (`herald audit checkpoint ID`), to be kept outside the
 * database: `herald audit verify ID --checkpoint FILE` proves the log still matches it.
 */
export interface Checkpoint {
  projectId: string;
  seq: number;
  hash: string;
  /**
   * when it was taken, ISO 8601 UTC
   */
  at: string;
  /**
   * which of the service's keys signed it
   */
  keyId: string;
  /**
   * Ed25519 over the canonical form of the other fields, base64url
   */
  signature: string;
}
export type ClientMessage =
  AuthMessage | SubscribeMessage | UnsubscribeMessage | AckMessage | PingMessage | PongMessage | PublishMessage;
export interface Cursor {
  clientId: string;
  user: string;
  seq: number;
  updatedAt: string;
}
export interface CursorList {
  cursors: Cursor[];
}
export interface ErrorBody {
  error: string;
  message: string;
  field?: string | null;
  /**
   * 503 `unavailable` of a publish that may have been written: retry with it
   */
  messageId?: string | null;
  /**
   * the same, for a batch: every event's, in order
   */
  messageIds?: string[] | null;
  /**
   * `history_truncated`: the oldest seq the log keeps
   */
  oldest?: number | null;
  /**
   * `history_truncated`, `history_rewritten`: reload the state (at this seq or later), resume after its seq
   */
  stateSeq?: number | null;
  /**
   * `history_rewritten`: the client's position where the log's event differs
   */
  seq?: number | null;
}
export interface ErrorMessage {
  type: 'error';
  code: string;
  message: string;
  ref?: string | null;
  /**
   * `history_truncated`: the oldest seq the log keeps
   */
  oldest?: number | null;
  /**
   * `history_truncated`, `history_rewritten`: reload the state (at this seq or later), resume after its seq
   */
  stateSeq?: number | null;
  /**
   * `history_rewritten`: the client's position where the log's event differs
   */
  seq?: number | null;
}
/**
 * An appended event, as it appears everywhere (HTTP bodies, WebSocket frames, SSE `data:`).
 *
 * The envelope of the original requirements (type, project_id, data, timestamp, message_id) plus
 * `seq`, the event's position in its project's gap-free sequence.
 */
export interface Event {
  type: 'agent_run_progress' | 'pr_notification' | 'validation_update';
  projectId: string;
  seq: number;
  messageId: string;
  /**
   * ISO 8601 UTC, millisecond precision, ending in Z
   */
  timestamp: string;
  data: {
    [k: string]: unknown;
  };
  /**
   * SHA-256 chaining the project's log: covers the previous event's hash and this event's canonical form (docs/protocol.md, Audit)
   */
  hash: string;
}
export interface EventPage {
  events: Event[];
  /**
   * the after (asc) or before (desc) of the next page, if any
   */
  next: number | null;
}
export interface PingMessage {
  type: 'ping';
  ts?: number | null;
}
export interface PongMessage {
  type: 'pong';
  ts?: number | null;
}
/**
 * Something happened to a pull request (GitHub's `pull_request` action, `merged`, `review_*`).
 */
export interface PrNotification {
  action: string;
  number: number;
  title: string;
  url: string;
  repo: string;
  author?: string | null;
  headSha?: string | null;
}
export interface Project {
  id: string;
  name: string;
  repo: string | null;
  head: number;
}
export interface ProjectCreate {
  id: string;
  name: string;
  repo?: string | null;
  /**
   * the secret of the project's own GitHub hook (/webhooks/github/ID); never returned
   */
  webhookSecret?: string | null;
}
export interface ProjectList {
  projects: Project[];
}
/**
 * The body of `GET /api/projects/{id}/state`: the project as a dashboard shows it, as of `seq`.
 *
 * Every item is the latest event of its subject, newest first, at most `limit` per list. Folding
 * these events with the events after `seq` gives the state at any later point (docs/protocol.md).
 */
export interface ProjectState {
  projectId: string;
  /**
   * the log position this state reflects: subscribe with after = seq
   */
  seq: number;
  /**
   * the latest agent_run_progress event of each runId
   */
  agentRuns: Event[];
  /**
   * the latest pr_notification event of each (repo, number)
   */
  pullRequests: Event[];
  /**
   * the latest validation_update event of each (name, headSha)
   */
  validations: Event[];
  /**
   * the latest pr_notification events
   */
  notifications: Event[];
}
/**
 * The body of `POST /api/projects/{id}/events/batch`: events appended together, in this order,
 * all or none (an extension, docs/protocol.md).
 */
export interface PublishBatchRequest {
  /**
   * @minItems 1
   * @maxItems 1000
   */
  events: [PublishRequest, ...PublishRequest[]];
}
export interface PublishBatchResult {
  projectId: string;
  events: BatchItem[];
}
/**
 * An event-shaped message: publish `data` as an event of `type` to `projectId`.
 */
export interface PublishMessage {
  type: 'agent_run_progress' | 'pr_notification' | 'validation_update';
  projectId: string;
  data?: unknown;
  messageId?: string | null;
  timestamp?: unknown;
  seq?: unknown;
}
/**
 * The body of `POST /api/projects/{id}/events`. `timestamp`, `seq` (and a matching `projectId`)
 * may be present, as when a client re-sends an event it holds, and are ignored.
 */
export interface PublishRequest {
  type: string;
  data?: unknown;
  messageId?: string | null;
  projectId?: string | null;
  timestamp?: unknown;
  seq?: unknown;
}
export interface PublishedMessage {
  type: 'published';
  projectId: string;
  messageId: string;
  seq: number;
}
export type ServerMessage =
  | WelcomeMessage
  | SubscribedMessage
  | UnsubscribedMessage
  | Event
  | PublishedMessage
  | PingMessage
  | PongMessage
  | ErrorMessage;
export interface SubscribeMessage {
  type: 'subscribe';
  projectId: string;
  after?: number | null;
  /**
   * extension: the `hash` of the event at `after` as the client has it; a log whose event there has another hash answers `history_rewritten` (docs/protocol.md §7.5)
   */
  afterHash?: string | null;
}
export interface SubscribedMessage {
  type: 'subscribed';
  projectId: string;
  after: number;
  head: number;
}
export interface UnsubscribeMessage {
  type: 'unsubscribe';
  projectId: string;
}
export interface UnsubscribedMessage {
  type: 'unsubscribed';
  projectId: string;
}
/**
 * A check, workflow or status context; keyed by `name` and `headSha` in the state snapshot.
 */
export interface ValidationUpdate {
  name: string;
  status: 'queued' | 'in_progress' | 'completed';
  conclusion?:
    | (
        | 'success'
        | 'failure'
        | 'neutral'
        | 'cancelled'
        | 'skipped'
        | 'timed_out'
        | 'action_required'
        | 'stale'
        | 'startup_failure'
        | 'error'
      )
    | null;
  url?: string | null;
  prNumber?: number | null;
  headSha?: string | null;
}
export interface WelcomeMessage {
  type: 'welcome';
  clientId: string;
  connectionId: string;
  heartbeatMs: number;
}

// --- the typed event envelope (from x-herald-event-data) ---

/** The schema of each event type's `data` (docs/protocol.md §2). */
export interface EventDataByType {
  agent_run_progress: AgentRunProgress;
  pr_notification: PrNotification;
  validation_update: ValidationUpdate;
}

export type EventType = keyof EventDataByType;

/**
 * An event as the client hands it to the application: the envelope of the original requirements
 * (type, projectId, data, timestamp, messageId) plus `seq`, with `data` typed by `type`.
 */
export type WebSocketMessage<T extends EventType = EventType> = {
  [K in T]: Omit<Event, 'type' | 'data'> & { type: K; data: EventDataByType[K] };
}[T];

// The client's own (hand-written) types: WebSocketState, UseWebSocketReturn, ...
export * from './state.js';
