// Herald's browser client: one connection for every project, resumable, observable.
// Framework-agnostic: React binds to it through useSyncExternalStore (hooks/useWebSocket.ts).
// The semantics (state machine, what is guaranteed, the close-code policy) are in docs/client.md.
import { TERMINAL_CLOSE_CODES } from '../types/codes';
import type {
  ErrorMessage,
  Event,
  PublishMessage,
  PublishedMessage,
  ServerMessage,
  SubscribeMessage,
  SubscribedMessage,
  UnsubscribedMessage,
  WebSocketMessage,
  WebSocketState,
  WelcomeMessage,
} from '../types/websocket';
import type { OutgoingMessage, SubscribeOptions } from '../types/state';
import { backoff } from './backoff';
import { readHistory } from './history';
import { browserPlatform, browserStorage, randomId, type KeyValueStorage, type Platform } from './platform';
import { memoryQueue, type SendQueue } from './sendQueue';
import { webSocketTransport, type Transport, type TransportFactory, type WebSocketConstructor } from './transport';

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
} as const;

/** PROTOCOL.md §2: a publish over 64 KiB would close the connection with 1009. */
const MAX_MESSAGE_BYTES = 64 * 1024;
const CLIENT_ID_KEY = 'herald.clientId';

export interface ClientOptions {
  /** A token, or a function giving one: called before every connection and every history read. */
  token: string | (() => string | Promise<string>);
  /** The service's HTTP origin (default: the page's). The socket is `/ws` there. */
  baseUrl?: string;
  /** The WebSocket constructor (default: the global one; `ws` in Node). */
  WebSocket?: WebSocketConstructor;
  /** Replaces the WebSocket transport altogether (tests, and the fallbacks to come). */
  transport?: TransportFactory;
  fetch?: typeof fetch;
  /** Where the clientId lives (default: localStorage, else memory). */
  storage?: KeyValueStorage;
  /** Network and visibility signals (default: the browser's). */
  platform?: Platform;
  /** Unanswered publishes (default: in memory). */
  queue?: SendQueue;
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  heartbeatMs?: number;
  ackIntervalMs?: number;
  ackBatchSize?: number;
  /** The jitter's source of randomness, in [0, 1). */
  random?: () => number;
}

/** A publish the service refused (`code` is one of codes.ts's ERROR_CODES), or one too large to send. */
export class HeraldError extends Error {
  readonly code: string;
  readonly ref: string | null;

  constructor(code: string, message: string, ref: string | null = null) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    this.ref = ref;
  }
}

/** What `on()` can listen to. */
export interface ClientEvents {
  /** Every change of `getState()`. */
  state: WebSocketState;
  /** Every event, once, in seq order per project. */
  message: WebSocketMessage;
  /** An `error` frame that no `sendMessage` promise took (a subscription refused, an ack refused...). */
  error: ErrorMessage;
}

type Listener<K extends keyof ClientEvents> = (value: ClientEvents[K]) => void;

/** One project's subscription on this client, shared by every caller of `subscribe`. */
interface Stream {
  refs: number;
  /** The last seq handed to the application (or the start position); null until the service says. */
  position: number | null;
  /** The service confirmed the subscription (`subscribed`) on the current connection. */
  live: boolean;
  /** A gap is being read from the HTTP history; events that arrive meanwhile wait in `held`. */
  filling: boolean;
  held: Event[];
  /** Bumped whenever the subscription restarts, so late work of the old one is dropped. */
  epoch: number;
  /** Consecutive `unavailable` answers to subscribing, for the resubscribe backoff. */
  failures: number;
}

interface Waiter {
  promise: Promise<PublishedMessage>;
  resolve(published: PublishedMessage): void;
  reject(error: HeraldError): void;
}

function defaultBaseUrl(): string {
  if (typeof location === 'undefined') {
    throw new Error('HeraldClient: no page to take the origin from; pass baseUrl');
  }
  return location.origin;
}

/**
 * The client. State changes in one place (`setState`) and is observable (`getState`, `on('state')`).
 * Create it, `connect()`, `subscribe(projectId)`, and listen to `on('message')`.
 */
export class HeraldClient {
  /** Stable per install (localStorage): the service keeps this client's cursors under it. */
  readonly clientId: string;

  private readonly baseUrl: string;
  private readonly token: ClientOptions['token'];
  private readonly factory: TransportFactory;
  private readonly fetch: typeof fetch;
  private readonly platform: Platform;
  private readonly queue: SendQueue;
  private readonly tunables: {
    minReconnectDelayMs: number;
    maxReconnectDelayMs: number;
    ackIntervalMs: number;
    ackBatchSize: number;
    random: () => number;
  };

  private state: WebSocketState;
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<keyof ClientEvents>>>();

  /** The user wants a connection: between `connect()` and `close()` or a terminal close. */
  private wanted = false;
  private transport: Transport | null = null;
  /** Counts transports; a callback of an older one is ignored. */
  private generation = 0;
  /** The current transport got its `welcome`. */
  private connected = false;
  private heartbeatMs: number;
  private lastSeen = 0;
  private watchdog: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private unwatch: (() => void) | null = null;

  private readonly streams = new Map<string, Stream>();
  /** The last seq handed over per project, kept across unsubscribes: the next subscribe resumes there. */
  private readonly positions = new Map<string, number>();
  /** `unsubscribe` frames sent whose `unsubscribed` answer has not come yet, per project. */
  private readonly unsubscribing = new Map<string, number>();
  /** The highest seq per project handed over and not yet acked. */
  private readonly acks = new Map<string, number>();
  private unacked = 0;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly waiters = new Map<string, Waiter>();

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl ?? defaultBaseUrl();
    this.token = options.token;
    const WebSocketImpl = options.WebSocket ?? (globalThis.WebSocket as WebSocketConstructor | undefined);
    if (options.transport === undefined && WebSocketImpl === undefined) {
      throw new Error('HeraldClient: no WebSocket here; pass the WebSocket option (e.g. from the ws package)');
    }
    this.factory = options.transport ?? webSocketTransport(WebSocketImpl as WebSocketConstructor);
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.platform = options.platform ?? browserPlatform();
    this.queue = options.queue ?? memoryQueue();
    this.heartbeatMs = options.heartbeatMs ?? defaults.heartbeatMs;
    this.tunables = {
      minReconnectDelayMs: options.minReconnectDelayMs ?? defaults.minReconnectDelayMs,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? defaults.maxReconnectDelayMs,
      ackIntervalMs: options.ackIntervalMs ?? defaults.ackIntervalMs,
      ackBatchSize: options.ackBatchSize ?? defaults.ackBatchSize,
      random: options.random ?? Math.random,
    };

    const storage = options.storage ?? browserStorage();
    let clientId = storage.getItem(CLIENT_ID_KEY);
    if (clientId === null) {
      clientId = randomId();
      storage.setItem(CLIENT_ID_KEY, clientId);
    }
    this.clientId = clientId;

    this.state = {
      status: 'disconnected',
      reconnectAttempts: 0,
      transport: null,
      nextRetryAt: null,
      queued: this.queue.size,
      online: this.platform.online(),
    };
    void this.queue.ready?.then(() => {
      this.setState({ queued: this.queue.size });
      if (this.connected) this.sendQueued();
    });
  }

  // --- observing ------------------------------------------------------------------------------------

  /** The current state; a new object after every change (so it can be compared by identity). */
  getState = (): WebSocketState => this.state;

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
  connect = (): void => {
    if (this.wanted) return;
    this.wanted = true;
    this.unwatch = this.platform.watch({
      online: () => this.networkUp(),
      offline: () => this.networkDown(),
      visible: () => this.retryNow(),
    });
    this.setState({ status: 'connecting', reconnectAttempts: 0, error: undefined, online: this.platform.online() });
    if (this.state.online) this.open();
  };

  /**
   * Stops: flushes pending acks, closes the connection and retries no more. Subscriptions and
   * unanswered publishes are kept for the next `connect()`.
   */
  close = (): void => {
    this.flushAcks();
    this.stop();
    this.drop({ code: 1000, reason: 'client closed' });
    this.setState({ status: 'disconnected', transport: null, nextRetryAt: null, reconnectAttempts: 0, error: undefined });
  };

  /** Fetches the token again and, when connected, sends it (`auth`) so the connection outlives the old one. */
  async refreshToken(): Promise<void> {
    const token = await this.resolveToken();
    if (this.connected) this.transport?.send({ type: 'auth', token });
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
    const existing = this.streams.get(projectId);
    if (existing !== undefined) {
      existing.refs += 1;
      return;
    }
    const stream: Stream = {
      refs: 1,
      position: after ?? this.positions.get(projectId) ?? null,
      live: false,
      filling: false,
      held: [],
      epoch: 0,
      failures: 0,
    };
    this.streams.set(projectId, stream);
    if (this.connected) this.sendSubscribe(projectId, stream);
  };

  /** Drops one reference; the last one acks what was handed over and ends the server subscription. */
  unsubscribe = (projectId: string): void => {
    const stream = this.streams.get(projectId);
    if (stream === undefined) return;
    stream.refs -= 1;
    if (stream.refs > 0) return;
    const seq = this.acks.get(projectId);
    if (seq !== undefined && this.connected && stream.live) {
      this.transport?.send({ type: 'ack', projectId, seq });
    }
    this.acks.delete(projectId);
    this.streams.delete(projectId);
    stream.epoch += 1;
    if (this.connected) {
      this.unsubscribing.set(projectId, (this.unsubscribing.get(projectId) ?? 0) + 1);
      this.transport?.send({ type: 'unsubscribe', projectId });
    }
  };

  // --- publishing -----------------------------------------------------------------------------------

  /**
   * Publishes an event. Queued while disconnected and sent, in order, once connected (again after
   * every reconnect until answered: the messageId makes that safe). Resolves with `published` once
   * the event is durable; rejects with a HeraldError on an `error` naming its messageId. Sending the
   * same messageId again while it is pending returns the same promise.
   */
  sendMessage = (message: OutgoingMessage): Promise<PublishedMessage> => {
    const messageId = message.messageId ?? randomId();
    const pending = this.waiters.get(messageId);
    if (pending !== undefined) return pending.promise;
    const frame: PublishMessage & { messageId: string } = {
      type: message.type,
      projectId: message.projectId,
      data: message.data,
      messageId,
    };
    if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_MESSAGE_BYTES) {
      return Promise.reject(new HeraldError('too_large', 'a publish is at most 64 KiB', messageId));
    }
    let resolve: Waiter['resolve'] = () => {};
    let reject: Waiter['reject'] = () => {};
    const promise = new Promise<PublishedMessage>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.waiters.set(messageId, { promise, resolve, reject });
    this.queue.add(frame);
    this.setState({ queued: this.queue.size });
    if (this.connected) this.transport?.send(frame);
    return promise;
  };

  // --- the connection's life ------------------------------------------------------------------------

  private open(): void {
    this.clearRetry();
    const generation = ++this.generation;
    this.setState({ status: 'connecting', nextRetryAt: null });
    let token: string | Promise<string>;
    try {
      token = typeof this.token === 'string' ? this.token : this.token();
    } catch (error) {
      this.retry(`no token: ${String(error)}`);
      return;
    }
    if (typeof token === 'string') {
      this.start(token, generation);
      return;
    }
    token.then(
      (value) => {
        if (generation === this.generation && this.wanted) this.start(value, generation);
      },
      (error: unknown) => {
        if (generation === this.generation && this.wanted) this.retry(`no token: ${String(error)}`);
      },
    );
  }

  private start(token: string, generation: number): void {
    let transport: Transport;
    try {
      transport = this.factory({
        baseUrl: this.baseUrl,
        clientId: this.clientId,
        handlers: {
          onOpen: () => {
            if (generation === this.generation) this.transport?.send({ type: 'auth', token });
          },
          onMessage: (message) => {
            if (generation === this.generation) this.receive(message);
          },
          onClose: ({ code, reason }) => {
            if (generation === this.generation) this.ended(code, reason);
          },
        },
      });
    } catch (error) {
      this.retry(`cannot open a connection: ${String(error)}`);
      return;
    }
    this.transport = transport;
    this.setState({ transport: transport.kind });
    this.lastSeen = Date.now();
    this.armWatchdog();
  }

  /** The transport ended on its own: retry, unless the close code says retrying cannot help. */
  private ended(code: number, reason: string): void {
    this.drop(null);
    const why = `connection closed (${code}${reason ? `: ${reason}` : ''})`;
    if (TERMINAL_CLOSE_CODES.has(code)) {
      this.stop();
      this.setState({ status: 'error', error: why, nextRetryAt: null });
      return;
    }
    this.retry(why);
  }

  /** Schedules the next attempt with backoff; offline, waits for the `online` event instead. */
  private retry(reason: string): void {
    if (!this.wanted) return;
    this.clearRetry();
    if (!this.platform.online()) {
      this.setState({ status: 'connecting', online: false, nextRetryAt: null, error: reason });
      return;
    }
    const attempt = this.state.reconnectAttempts;
    const { minReconnectDelayMs, maxReconnectDelayMs, random } = this.tunables;
    const delay = backoff(attempt, minReconnectDelayMs, maxReconnectDelayMs, random);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
    this.setState({
      status: 'connecting',
      reconnectAttempts: attempt + 1,
      nextRetryAt: Date.now() + delay,
      error: reason,
    });
  }

  /** Waiting for a retry? Then try now (the network came back, or the page became visible). */
  private retryNow(): void {
    if (this.wanted && this.transport === null && this.platform.online()) this.open();
  }

  private networkUp(): void {
    this.setState({ online: true });
    this.retryNow();
  }

  // An open socket can outlive a lost network unnoticed for minutes: close it and wait for `online`.
  private networkDown(): void {
    this.setState({ online: false });
    if (!this.wanted) return;
    this.clearRetry();
    this.drop({ code: 1000, reason: 'offline' });
    this.setState({ status: 'connecting', nextRetryAt: null, error: 'offline' });
  }

  /** Forgets the current transport (closing it when `close` is given); callbacks from it are ignored. */
  private drop(close: { code: number; reason: string } | null): void {
    this.generation += 1;
    const transport = this.transport;
    this.transport = null;
    this.connected = false;
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = null;
    for (const stream of this.streams.values()) stream.live = false;
    this.unsubscribing.clear();
    if (transport !== null && close !== null) transport.close(close.code, close.reason);
  }

  /** No more retries: `close()` or a terminal close code. */
  private stop(): void {
    this.wanted = false;
    this.clearRetry();
    this.unwatch?.();
    this.unwatch = null;
  }

  private clearRetry(): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  // Anything from the service proves the connection alive; the service pings every heartbeatMs.
  private armWatchdog(): void {
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    const limit = 2 * this.heartbeatMs;
    this.watchdog = setTimeout(
      () => {
        this.watchdog = null;
        if (Date.now() - this.lastSeen >= limit) {
          this.drop({ code: 4408, reason: 'no message from the service for 2 heartbeats' });
          this.retry('heartbeat timeout');
        } else {
          this.armWatchdog();
        }
      },
      Math.max(0, this.lastSeen + limit - Date.now()),
    );
  }

  // --- frames from the service ----------------------------------------------------------------------

  private receive(message: ServerMessage): void {
    this.lastSeen = Date.now();
    switch (message.type) {
      case 'welcome':
        return this.welcome(message);
      case 'subscribed':
        return this.subscribed(message);
      case 'unsubscribed':
        return this.unsubscribed(message);
      case 'published':
        return this.settle(message.messageId, (waiter) => waiter.resolve(message));
      case 'error':
        return this.refused(message);
      case 'ping':
        this.transport?.send({ type: 'pong', ts: message.ts });
        return;
      case 'pong':
        return;
      default:
        return this.onEvent(message);
    }
  }

  private welcome(message: WelcomeMessage): void {
    this.connected = true;
    this.heartbeatMs = message.heartbeatMs;
    this.armWatchdog();
    this.setState({ status: 'connected', reconnectAttempts: 0, nextRetryAt: null, error: undefined });
    for (const [projectId, stream] of this.streams) this.restart(projectId, stream);
    this.sendQueued();
  }

  private subscribed(message: SubscribedMessage): void {
    const stream = this.streams.get(message.projectId);
    if (stream === undefined) return;
    stream.live = true;
    stream.failures = 0;
    if (stream.position === null) {
      stream.position = message.after;
    } else if (message.after > stream.position && !stream.filling) {
      // The service starts past what this client holds (never when it sent `after`): read the gap.
      void this.fill(message.projectId, stream, stream.position, message.after + 1);
    }
    this.flushAcks();
  }

  private unsubscribed(message: UnsubscribedMessage): void {
    const { projectId } = message;
    const expected = this.unsubscribing.get(projectId) ?? 0;
    if (expected > 0) {
      this.unsubscribing.set(projectId, expected - 1);
      return;
    }
    // Not asked for: the service dropped it (a refreshed token no longer grants it; an error said so).
    const stream = this.streams.get(projectId);
    if (stream !== undefined) stream.live = false;
  }

  private refused(message: ErrorMessage): void {
    const ref = message.ref ?? null;
    if (ref !== null && this.queue.has(ref)) {
      this.settle(ref, (waiter) => waiter.reject(new HeraldError(message.code, message.message, ref)));
      return;
    }
    const stream = ref === null ? undefined : this.streams.get(ref);
    if (ref !== null && stream !== undefined && !stream.live && message.code === 'unavailable') {
      // Subscribing failed because the database is down: ask again with backoff.
      const epoch = stream.epoch;
      const { minReconnectDelayMs, maxReconnectDelayMs, random } = this.tunables;
      setTimeout(
        () => {
          if (this.connected && this.streams.get(ref) === stream && stream.epoch === epoch) this.restart(ref, stream);
        },
        backoff(stream.failures++, minReconnectDelayMs, maxReconnectDelayMs, random),
      );
    }
    this.emit('error', message);
  }

  // --- events: order, dedupe, gaps ------------------------------------------------------------------

  private onEvent(event: Event): void {
    const stream = this.streams.get(event.projectId);
    if (stream === undefined) return; // unsubscribed: its last frames were still on the way
    if (stream.filling) {
      stream.held.push(event);
      return;
    }
    const position = stream.position;
    if (position !== null && event.seq <= position) return; // a duplicate (a resume, a replay)
    if (position !== null && event.seq > position + 1) {
      // Not live yet: these are the old subscription's last frames, and the new one replays from
      // `position` anyway. Live: a gap, read from the history before going on.
      if (stream.live) {
        stream.held.push(event);
        void this.fill(event.projectId, stream, position, event.seq);
      }
      return;
    }
    this.deliver(event.projectId, stream, event);
  }

  private deliver(projectId: string, stream: Stream, event: Event): void {
    stream.position = event.seq;
    this.positions.set(projectId, event.seq);
    // The service validated `data` against its type's schema when it appended the event.
    const message = event as unknown as WebSocketMessage;
    this.setState({ lastMessage: message });
    this.emit('message', message);
    this.noteAck(projectId, event.seq);
  }

  /** Reads the events after < seq < before from the HTTP history, then the events held meanwhile. */
  private async fill(projectId: string, stream: Stream, after: number, before: number): Promise<void> {
    stream.filling = true;
    const epoch = stream.epoch;
    const current = () => this.streams.get(projectId) === stream && stream.epoch === epoch;
    let events: Event[] | null = null;
    try {
      const token = await this.resolveToken();
      events = await readHistory({ fetch: this.fetch, baseUrl: this.baseUrl, token, projectId, after, before });
    } catch {
      // Unreachable, or refused: the socket replays the gap instead (below).
    }
    if (!current()) return;
    stream.filling = false;
    for (const event of events ?? []) {
      if (stream.position !== null && event.seq === stream.position + 1) this.deliver(projectId, stream, event);
    }
    if (stream.position !== before - 1) {
      // The history could not close the gap: have the socket replay from where this client is.
      this.restart(projectId, stream);
      return;
    }
    const held = stream.held;
    stream.held = [];
    for (const event of held) this.onEvent(event);
  }

  /** (Re)starts the server subscription from this client's position; work of the old one is dropped. */
  private restart(projectId: string, stream: Stream): void {
    stream.epoch += 1;
    stream.live = false;
    stream.filling = false;
    stream.held = [];
    if (this.connected) this.sendSubscribe(projectId, stream);
  }

  private sendSubscribe(projectId: string, stream: Stream): void {
    const frame: SubscribeMessage = { type: 'subscribe', projectId };
    if (stream.position !== null) frame.after = stream.position;
    this.transport?.send(frame);
  }

  // --- acks -----------------------------------------------------------------------------------------

  private noteAck(projectId: string, seq: number): void {
    this.acks.set(projectId, seq);
    this.unacked += 1;
    if (this.unacked >= this.tunables.ackBatchSize) {
      this.flushAcks();
    } else if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => this.flushAcks(), this.tunables.ackIntervalMs);
    }
  }

  /** Sends the pending acks of live subscriptions; the others go once their `subscribed` comes. */
  private flushAcks(): void {
    if (this.ackTimer !== null) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.unacked = 0;
    if (!this.connected) return;
    for (const [projectId, seq] of this.acks) {
      if (this.streams.get(projectId)?.live !== true) continue;
      this.transport?.send({ type: 'ack', projectId, seq });
      this.acks.delete(projectId);
    }
  }

  // --- publishes ------------------------------------------------------------------------------------

  private sendQueued(): void {
    for (const frame of this.queue.list()) this.transport?.send(frame);
  }

  private settle(messageId: string, outcome: (waiter: Waiter) => void): void {
    if (!this.queue.has(messageId)) return;
    this.queue.remove(messageId);
    const waiter = this.waiters.get(messageId);
    this.waiters.delete(messageId);
    this.setState({ queued: this.queue.size });
    if (waiter !== undefined) outcome(waiter);
  }

  // --- the funnel -----------------------------------------------------------------------------------

  private setState(patch: Partial<WebSocketState>): void {
    const keys = Object.keys(patch) as (keyof WebSocketState)[];
    if (keys.every((key) => Object.is(this.state[key], patch[key]))) return;
    this.state = { ...this.state, ...patch };
    this.emit('state', this.state);
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
