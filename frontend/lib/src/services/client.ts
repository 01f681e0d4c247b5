// Herald's browser client: one connection for every project, resumable, observable; the WebSocket
// first, SSE and then polling when it cannot connect, and back to the WebSocket when it can.
// Framework-agnostic: React binds to it through useSyncExternalStore (hooks/useWebSocket.ts).
//
// HeraldClient is the public face of three parts, split as centrifuge-js splits its client: the
// connection (connection.ts: the state, the transport ladder, backoff, heartbeat), the subscriptions
// (subscription.ts: positions, dedupe, gaps, acks) and the publish queue (publishQueue.ts). It wires
// them together and routes the service's frames between them. The semantics (state machine, fallback
// ladder, what is guaranteed, the close-code policy) are in docs/client.md.
import type {
  ErrorMessage,
  Event,
  ProjectState,
  PublishedMessage,
  WebSocketMessage,
  WebSocketState,
} from '../types/websocket.js';
import type { OutgoingMessage, Resync, SubscribeOptions } from '../types/state.js';
import { backoff } from './backoff.js';
import { Connection, type RoutedMessage } from './connection.js';
import { readHistory, readState } from './history.js';
import { indexedDbQueue } from './indexedDbQueue.js';
import { browserPlatform, browserStorage, randomId, type KeyValueStorage, type Platform } from './platform.js';
import { pollingTransport } from './pollingTransport.js';
import { PublishQueue } from './publishQueue.js';
import { memoryQueue, type SendQueue } from './sendQueue.js';
import { sseTransport } from './sseTransport.js';
import { Subscriptions } from './subscription.js';
import { webSocketTransport, type TransportFactory, type WebSocketConstructor } from './transport.js';

export { HeraldError, HISTORY_REWRITTEN, HISTORY_TRUNCATED, INVALID_CURSOR } from './errors.js';

/** Protocol tunables and their defaults. */
export const defaults = {
  /** Backoff floor and ceiling: every retry waits within [min, max], the ceiling doubling per failure. */
  minReconnectDelayMs: 500,
  maxReconnectDelayMs: 20_000,
  /** Until the service's `welcome` says otherwise; 2 × this of silence means the connection is dead. */
  heartbeatMs: 15_000,
  /** Acks go out this often, or as soon as this many events are unacked. */
  ackIntervalMs: 100,
  ackBatchSize: 50,
  /** Consecutive attempts of one transport that fail before `welcome` before the next is tried. */
  fallbackAfter: 3,
  /** The polling fallback reads each project's history this often. */
  pollIntervalMs: 5000,
  /** The service's SSE keep-alive (HERALD_SSE_KEEPALIVE_MS): a stream silent for 2 × this is dropped. */
  sseKeepAliveMs: 15_000,
} as const;

const CLIENT_ID_KEY = 'herald.clientId';

export interface ClientOptions {
  /** A token, or a function giving one: called before every connection and every history read. */
  token: string | (() => string | Promise<string>);
  /** The service's HTTP origin (default: the page's). The socket is `/ws` there. */
  baseUrl?: string;
  /** The WebSocket constructor (default: the global one; `ws` in Node). */
  WebSocket?: WebSocketConstructor;
  /** Replaces the WebSocket transport (tests). */
  transport?: TransportFactory;
  /**
   * The transports tried, in order, when the one before cannot connect (default: SSE, then polling,
   * over `fetch`; `[]` for none). While on a fallback the client keeps trying the ones above it.
   */
  fallbacks?: TransportFactory[];
  fetch?: typeof fetch;
  /** Where the clientId lives (default: localStorage, else memory). */
  storage?: KeyValueStorage;
  /** Network and visibility signals (default: the browser's). */
  platform?: Platform;
  /** Unanswered publishes (default: IndexedDB where there is one, else memory). */
  queue?: SendQueue;
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  heartbeatMs?: number;
  ackIntervalMs?: number;
  ackBatchSize?: number;
  fallbackAfter?: number;
  pollIntervalMs?: number;
  sseKeepAliveMs?: number;
  /** The jitter's source of randomness, in [0, 1). */
  random?: () => number;
}

/** What `on()` can listen to. */
export interface ClientEvents {
  /** Every change of `getState()`. */
  state: WebSocketState;
  /** Every event, once, in seq order per project. */
  message: WebSocketMessage;
  /** An `error` frame that no `sendMessage` promise took (a subscription refused, an ack refused, a
   * publish queued by an earlier page refused...). */
  error: ErrorMessage;
  /** Every publish the service made durable, including those queued by an earlier page. */
  published: PublishedMessage;
  /**
   * A subscription the service will not resume from this client's position: its history was pruned
   * below it (`history_truncated`), its event there is another since a database failover
   * (`history_rewritten`), or the log no longer reaches it (`invalid_cursor`). The
   * subscription is parked until `resubscribe` (its `error` frame goes to `error` listeners too).
   */
  resync: Resync;
}

type Listener<K extends keyof ClientEvents> = (value: ClientEvents[K]) => void;

/** IndexedDB where the page has it (so publishes outlive a reload), else memory. */
function defaultQueue(): SendQueue {
  return typeof indexedDB === 'undefined' ? memoryQueue() : indexedDbQueue();
}

function defaultBaseUrl(): string {
  if (typeof location === 'undefined') {
    throw new Error('HeraldClient: no page to take the origin from; pass baseUrl');
  }
  return location.origin;
}

/**
 * The client. State changes in one place (the connection's `setState`) and is observable
 * (`getState`, `on('state')`). Create it, `connect()`, `subscribe(projectId)`, and listen to
 * `on('message')`.
 */
export class HeraldClient {
  /** Stable per install (localStorage): the service keeps this client's cursors under it. */
  readonly clientId: string;

  private readonly baseUrl: string;
  private readonly token: ClientOptions['token'];
  private readonly fetch: typeof fetch;
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<keyof ClientEvents>>>();
  private readonly connection: Connection;
  private readonly subscriptions: Subscriptions;
  private readonly publishes: PublishQueue;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl ?? defaultBaseUrl();
    this.token = options.token;
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    const WebSocketImpl = options.WebSocket ?? (globalThis.WebSocket as WebSocketConstructor | undefined);
    const first = options.transport ?? (WebSocketImpl === undefined ? null : webSocketTransport(WebSocketImpl));
    const retry = {
      fetch: this.fetch,
      minRetryMs: options.minReconnectDelayMs ?? defaults.minReconnectDelayMs,
      maxRetryMs: options.maxReconnectDelayMs ?? defaults.maxReconnectDelayMs,
    };
    const fallbacks = options.fallbacks ?? [
      sseTransport({ ...retry, keepAliveMs: options.sseKeepAliveMs ?? defaults.sseKeepAliveMs }),
      pollingTransport({ ...retry, intervalMs: options.pollIntervalMs ?? defaults.pollIntervalMs }),
    ];
    // No WebSocket at all: start on the fallbacks.
    const ladder = first === null ? fallbacks : [first, ...fallbacks];
    if (ladder.length === 0) {
      throw new Error('HeraldClient: no WebSocket here and no fallback; pass the WebSocket option (e.g. from ws)');
    }
    const platform = options.platform ?? browserPlatform();
    const queue = options.queue ?? defaultQueue();
    const random = options.random ?? Math.random;
    const delay = (step: number) => backoff(step, retry.minRetryMs, retry.maxRetryMs, random);

    const storage = options.storage ?? browserStorage();
    let clientId = storage.getItem(CLIENT_ID_KEY);
    if (clientId === null) {
      clientId = randomId();
      storage.setItem(CLIENT_ID_KEY, clientId);
    }
    this.clientId = clientId;

    this.connection = new Connection({
      baseUrl: this.baseUrl,
      clientId,
      token: options.token,
      ladder,
      platform,
      heartbeatMs: options.heartbeatMs ?? defaults.heartbeatMs,
      fallbackAfter: options.fallbackAfter ?? defaults.fallbackAfter,
      delay,
      queued: queue.size,
      handlers: {
        state: (state) => this.emit('state', state),
        welcomed: () => {
          this.subscriptions.restartAll();
          this.publishes.sendAll();
        },
        frame: (message) => this.route(message),
        disconnected: () => {
          this.subscriptions.disconnected();
          this.publishes.disconnected();
        },
      },
    });
    const connected = () => this.connection.connected;
    const send = this.connection.send.bind(this.connection);
    this.subscriptions = new Subscriptions(
      {
        connected,
        send,
        readHistory: this.readEvents,
        deliver: (message) => {
          this.connection.setState({ lastMessage: message });
          this.emit('message', message);
        },
        resync: (resync) => this.emit('resync', resync),
        delay,
      },
      {
        ackIntervalMs: options.ackIntervalMs ?? defaults.ackIntervalMs,
        ackBatchSize: options.ackBatchSize ?? defaults.ackBatchSize,
      },
    );
    this.publishes = new PublishQueue(queue, {
      connected,
      send,
      queued: (size) => this.connection.setState({ queued: size }),
      published: (message) => this.emit('published', message),
      refused: (message) => this.emit('error', message),
      delay,
    });
  }

  // --- observing ------------------------------------------------------------------------------------

  /** The current state; a new object after every change (so it can be compared by identity). */
  getState = (): WebSocketState => this.connection.getState();

  /** For useSyncExternalStore: calls `listener` after every state change; returns the unsubscribe. */
  subscribeState = (listener: () => void): (() => void) => this.on('state', listener);

  /** Listens to one kind of event; returns the function that stops listening. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    const entry = listener as Listener<keyof ClientEvents>;
    set.add(entry);
    return () => void set.delete(entry);
  }

  // --- connecting -----------------------------------------------------------------------------------

  /** Starts connecting, and keeps reconnecting until `close()` or a terminal close code. */
  connect = (): void => this.connection.connect();

  /**
   * Stops: flushes pending acks, closes the connection and retries no more. Subscriptions and
   * unanswered publishes are kept for the next `connect()`.
   */
  close = (): void => {
    this.subscriptions.flushAcks();
    this.connection.close();
  };

  /**
   * Fetches the token again and, when connected, sends it (`auth`) so the connection outlives the old
   * one (the SSE fallback reopens its stream with it).
   */
  async refreshToken(): Promise<void> {
    const token = await this.resolveToken();
    if (this.connection.connected) this.connection.send({ type: 'auth', token });
  }

  // --- subscribing ----------------------------------------------------------------------------------

  /**
   * Subscribes to a project's events, from `options.after`, else from where this client left it,
   * else from the durable cursor (or the head). Reference-counted: n calls need n `unsubscribe`s,
   * and share one server subscription and one position.
   */
  subscribe = (projectId: string, options: SubscribeOptions = {}): void => {
    const { after } = options;
    if (after !== undefined && !(Number.isSafeInteger(after) && after >= 0)) {
      throw new RangeError(`subscribe: after must be a non-negative integer, not ${after}`);
    }
    this.subscriptions.subscribe(projectId, after);
  };

  /** Drops one reference; the last one acks what was handed over and ends the server subscription. */
  unsubscribe = (projectId: string): void => this.subscriptions.unsubscribe(projectId);

  /**
   * Moves the project's one position to `after` and restarts its subscription from there: what to
   * call after a `resync`, with the seq of a state snapshot read since. Nothing for a project that
   * is not subscribed.
   */
  resubscribe = (projectId: string, after: number): void => {
    if (!(Number.isSafeInteger(after) && after >= 0)) {
      throw new RangeError(`resubscribe: after must be a non-negative integer, not ${after}`);
    }
    this.subscriptions.resubscribe(projectId, after);
  };

  /** The last seq of the project handed to `message` listeners (or its start), if this client knows it. */
  position = (projectId: string): number | null => this.subscriptions.position(projectId);

  // --- publishing -----------------------------------------------------------------------------------

  /**
   * Publishes an event. Queued (in IndexedDB by default, so it survives a reload) while disconnected
   * and sent, in order, once connected (again after every reconnect until answered: the messageId
   * makes that safe). Resolves with `published` once the event is durable; rejects with a HeraldError
   * on an `error` naming its messageId, except `unavailable` and `rate_limited`, after which it stays
   * queued and goes again with backoff. Sending the same messageId again while it is pending returns
   * the same promise.
   */
  sendMessage = (message: OutgoingMessage): Promise<PublishedMessage> => this.publishes.publish(message);

  // --- reading over HTTP ----------------------------------------------------------------------------

  /** The project's state snapshot (docs/protocol.md), with this client's token; throws a HeraldError. */
  readState = async (projectId: string, limit: number): Promise<ProjectState> => {
    const token = await this.resolveToken();
    return readState({ fetch: this.fetch, baseUrl: this.baseUrl, token, projectId, limit });
  };

  /** The project's events with after < seq < before, ascending, with this client's token. */
  readEvents = async (projectId: string, after: number, before: number): Promise<Event[]> => {
    const token = await this.resolveToken();
    return readHistory({ fetch: this.fetch, baseUrl: this.baseUrl, token, projectId, after, before });
  };

  // --- the service's frames, to the part they concern ----------------------------------------------

  private route(message: RoutedMessage): void {
    switch (message.type) {
      case 'subscribed':
        return this.subscriptions.subscribed(message);
      case 'unsubscribed':
        return this.subscriptions.unsubscribed(message);
      case 'published':
        return this.publishes.published(message);
      case 'error':
        if (this.publishes.refused(message)) return;
        this.subscriptions.refused(message);
        return this.emit('error', message);
      default:
        return this.subscriptions.receive(message);
    }
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as Listener<K>)(value);
      } catch (error) {
        // A listener's bug must not stop delivery to the others: report it outside this loop.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  private async resolveToken(): Promise<string> {
    return typeof this.token === 'string' ? this.token : await this.token();
  }
}

/** A client with the given options; call `connect()` to start. */
export function createClient(options: ClientOptions): HeraldClient {
  return new HeraldClient(options);
}
