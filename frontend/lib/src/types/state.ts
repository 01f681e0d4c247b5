// The client's own types, beside the generated wire types (websocket.ts re-exports this file).
import type { EventDataByType, EventType, PublishedMessage, WebSocketMessage } from './websocket.js';

/**
 * - `connecting`: the client means to be connected and is not yet: opening a socket, waiting for the
 *   next retry (`nextRetryAt`), or waiting for the network to come back (`online` false).
 * - `connected`: the service welcomed this connection; subscriptions and publishes flow.
 * - `disconnected`: not connected and not trying (before `connect()`, after `close()`).
 * - `error`: stopped by a terminal close code (4401 auth, 4403 origin, 1009 too big); `error` says
 *   why. Only `connect()` tries again.
 */
export type ConnectionStatus = 'connecting' | 'connected' | 'disconnected' | 'error';

/** How events reach the client: the WebSocket, else SSE, else polling (docs/client.md, "Fallback"). */
export type TransportKind = 'websocket' | 'sse' | 'polling';

/** The observable state of the client: the seed's four fields, and what a connection indicator shows. */
export interface WebSocketState {
  status: ConnectionStatus;
  /** Why the last connection failed or ended (cleared once connected again). */
  error?: string;
  /** The newest event handed to the application. */
  lastMessage?: WebSocketMessage;
  /** Failed attempts since the last successful connection: the retry scheduled now is number n. */
  reconnectAttempts: number;
  /** The transport in use or being tried; null while disconnected. While on 'sse' or 'polling', the
   * client tries the WebSocket again in the background and switches back when it connects. */
  transport: TransportKind | null;
  /** While the transport is 'polling': how often it reads the history (ms); else null. */
  pollIntervalMs: number | null;
  /** When the next attempt starts (ms since the epoch), while one is scheduled. */
  nextRetryAt: number | null;
  /** Publishes not yet answered by the service (queued offline, or in flight), this page's and
   * those earlier pages left in the persistent queue. */
  queued: number;
  /** The browser's idea of the network; while false the client waits instead of retrying. */
  online: boolean;
}

/**
 * The state without `lastMessage`: everything a connection indicator shows, and nothing that changes
 * with every event (useConnectionState re-renders only when this changes).
 */
export type ConnectionState = Omit<WebSocketState, 'lastMessage'>;

/**
 * A publish: an event without the fields the service assigns. An event the client holds (a
 * `WebSocketMessage`) is one too: its `seq` and `timestamp` are ignored, its `messageId` kept.
 */
export type OutgoingMessage = {
  [K in EventType]: {
    type: K;
    projectId: string;
    data: EventDataByType[K];
    /** Makes the publish idempotent: the service appends one event per (projectId, messageId). */
    messageId?: string;
    seq?: number;
    timestamp?: string;
  };
}[EventType];

export interface SubscribeOptions {
  /**
   * Deliver the events after this seq (e.g. a state snapshot's `seq`). Used when the subscription
   * starts; while the project is already subscribed its one position stands.
   */
  after?: number;
}

/**
 * A subscription the service will not resume from this client's position (the client's `resync`
 * event). The subscription is parked: it sends nothing and hands nothing over, across reconnects,
 * until `resubscribe(projectId, after)` (or a `subscribe` with `after`) moves it. The application
 * reloads the state snapshot and resubscribes after its `seq` (the project store does).
 *
 * - `history_truncated`: the position is below the oldest event kept (`oldest`): the events between
 *   were pruned. `stateSeq` is the seq of the state snapshot now (docs/protocol.md §7.4); either is
 *   null if the service did not say.
 * - `history_rewritten`: the project's event at the position (`seq`) is not the one this client
 *   had: the database failed over to a standby that had not received it, and the seq was reissued
 *   (docs/protocol.md §7.5). `stateSeq` as above.
 * - `invalid_cursor`: the position is beyond the project's head: the log is not the one this client
 *   read (the database was reset, or restored from an older backup).
 */
export type Resync =
  | { projectId: string; code: 'history_truncated'; oldest: number | null; stateSeq: number | null }
  | { projectId: string; code: 'history_rewritten'; seq: number | null; stateSeq: number | null }
  | { projectId: string; code: 'invalid_cursor' };

/** What `useWebSocket()` returns (the seed's UseWebSocketReturn). */
export interface UseWebSocketReturn {
  state: WebSocketState;
  /** Publishes; resolves when the event is durable, rejects on an `error` naming its messageId. */
  sendMessage(message: OutgoingMessage): Promise<PublishedMessage>;
  /** Reference-counted: each call needs one `unsubscribe` (one server subscription per project). */
  subscribe(projectId: string, options?: SubscribeOptions): void;
  unsubscribe(projectId: string): void;
}
