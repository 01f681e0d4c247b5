// Herald's browser client: one connection for every project, resumable, observable; the WebSocket
// first, SSE and then polling when it cannot connect, and back to the WebSocket when it can.
// Framework-agnostic: React binds to it through useSyncExternalStore (hooks/useWebSocket.ts).
// The semantics (state machine, fallback ladder, what is guaranteed, the close-code policy) are in
// docs/client.md.
import { TERMINAL_CLOSE_CODES } from '../types/codes';
import type {
  ErrorMessage,
  Event,
  ProjectState,
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
import { HeraldError } from './errors';
import { readHistory, readState } from './history';
import { indexedDbQueue } from './indexedDbQueue';
import { browserPlatform, browserStorage, randomId, type KeyValueStorage, type Platform } from './platform';
import { pollingTransport } from './pollingTransport';
import { memoryQueue, type SendQueue } from './sendQueue';
import { sseTransport } from './sseTransport';
import { webSocketTransport, type Transport, type TransportFactory, type WebSocketConstructor } from './transport';

export { HeraldError } from './errors';

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

/** `error` codes of a publish that say "not now" rather than "no": it stays queued and goes again. */
const TRANSIENT_PUBLISH_ERRORS: ReadonlySet<string> = new Set(['unavailable', 'rate_limited']);

/** docs/protocol.md §2: a publish over 64 KiB would close the connection with 1009. */
const MAX_MESSAGE_BYTES = 64 * 1024;
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

/** One try of a transport: the main connection, or a probe of a better transport in the background. */
interface Attempt {
  /** Its place in the ladder (0 = the best). */
  level: number;
  transport: Transport | null;
}

interface Waiter {
  promise: Promise<PublishedMessage>;
  resolve(published: PublishedMessage): void;
  reject(error: HeraldError): void;
}

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
 * The client. State changes in one place (`setState`) and is observable (`getState`, `on('state')`).
 * Create it, `connect()`, `subscribe(projectId)`, and listen to `on('message')`.
 */
export class HeraldClient {
  /** Stable per install (localStorage): the service keeps this client's cursors under it. */
  readonly clientId: string;

  private readonly baseUrl: string;
  private readonly token: ClientOptions['token'];
  /** The transports, best first: the WebSocket (when there is one), then the fallbacks. */
  private readonly ladder: TransportFactory[];
  private readonly fetch: typeof fetch;
  private readonly platform: Platform;
  private readonly queue: SendQueue;
  private readonly tunables: {
    minReconnectDelayMs: number;
    maxReconnectDelayMs: number;
    heartbeatMs: number;
    ackIntervalMs: number;
    ackBatchSize: number;
    fallbackAfter: number;
    random: () => number;
  };

  private state: WebSocketState;
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<keyof ClientEvents>>>();

  /** The user wants a connection: between `connect()` and `close()` or a terminal close. */
  private wanted = false;
  /** The main connection (or the try at one); a callback of any other attempt is ignored. */
  private current: Attempt | null = null;
  /** The current transport got its `welcome`. */
  private connected = false;
  /** The rung of the ladder the main connection uses, and its consecutive failures before `welcome`. */
  private level = 0;
  private failures = 0;
  private heartbeatMs: number;
  private lastSeen = 0;
  private watchdog: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private unwatch: (() => void) | null = null;

  /** While connected on a fallback: a try of a better transport, which replaces it once welcomed. */
  private probe: Attempt | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private probeFailures = 0;

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
  /** The queue holds what earlier pages left: until then nothing is sent, so the order holds. */
  private queueLoaded: boolean;
  /** Publishes the service could not take yet (`unavailable`, `rate_limited`): sent again later. */
  private readonly resends = new Map<string, { timer: ReturnType<typeof setTimeout> | null; failures: number }>();

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
    this.ladder = first === null ? fallbacks : [first, ...fallbacks];
    if (this.ladder.length === 0) {
      throw new Error('HeraldClient: no WebSocket here and no fallback; pass the WebSocket option (e.g. from ws)');
    }
    this.platform = options.platform ?? browserPlatform();
    this.queue = options.queue ?? defaultQueue();
    this.heartbeatMs = options.heartbeatMs ?? defaults.heartbeatMs;
    this.tunables = {
      minReconnectDelayMs: retry.minRetryMs,
      maxReconnectDelayMs: retry.maxRetryMs,
      heartbeatMs: this.heartbeatMs,
      ackIntervalMs: options.ackIntervalMs ?? defaults.ackIntervalMs,
      ackBatchSize: options.ackBatchSize ?? defaults.ackBatchSize,
      fallbackAfter: options.fallbackAfter ?? defaults.fallbackAfter,
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
      pollIntervalMs: null,
    };
    this.queueLoaded = this.queue.ready === undefined;
    void this.queue.ready?.then(() => {
      this.queueLoaded = true;
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
    this.level = 0;
    this.failures = 0;
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
    this.setState({
      status: 'disconnected',
      transport: null,
      pollIntervalMs: null,
      nextRetryAt: null,
      reconnectAttempts: 0,
      error: undefined,
    });
  };

  /**
   * Fetches the token again and, when connected, sends it (`auth`) so the connection outlives the old
   * one (the SSE fallback reopens its stream with it).
   */
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
   * Publishes an event. Queued (in IndexedDB by default, so it survives a reload) while disconnected
   * and sent, in order, once connected (again after every reconnect until answered: the messageId
   * makes that safe). Resolves with `published` once the event is durable; rejects with a HeraldError
   * on an `error` naming its messageId, except `unavailable` and `rate_limited`, after which it stays
   * queued and goes again with backoff. Sending the same messageId again while it is pending returns
   * the same promise.
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
    const queued = this.queue.has(messageId); // left by an earlier page: already on its way
    this.queue.add(frame);
    this.setState({ queued: this.queue.size });
    if (this.connected && this.queueLoaded && !queued) this.transport?.send(frame);
    return promise;
  };

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

  /** The last seq of the project handed to `message` listeners (or its start), if this client knows it. */
  position = (projectId: string): number | null =>
    this.streams.get(projectId)?.position ?? this.positions.get(projectId) ?? null;

  // --- the connection's life ------------------------------------------------------------------------

  /** The transport of the main connection, while there is one. */
  private get transport(): Transport | null {
    return this.current?.transport ?? null;
  }

  private open(): void {
    this.clearRetry();
    const attempt: Attempt = { level: this.level, transport: null };
    this.current = attempt;
    this.setState({ status: 'connecting', nextRetryAt: null });
    this.withToken(
      attempt,
      (token) => this.start(attempt, token),
      (error) => {
        this.current = null;
        this.retry(`no token: ${String(error)}`);
      },
    );
  }

  /** Calls `then` with the token (at once when it is a string), unless the attempt is given up meanwhile. */
  private withToken(attempt: Attempt, then: (token: string) => void, fail: (error: unknown) => void): void {
    let token: string | Promise<string>;
    try {
      token = typeof this.token === 'string' ? this.token : this.token();
    } catch (error) {
      fail(error);
      return;
    }
    if (typeof token === 'string') {
      then(token);
      return;
    }
    const alive = () => this.wanted && (attempt === this.current || attempt === this.probe);
    token.then(
      (value) => {
        if (alive()) then(value);
      },
      (error: unknown) => {
        if (alive()) fail(error);
      },
    );
  }

  /** Opens the attempt's transport; its callbacks count only while it is the main one or the probe. */
  private start(attempt: Attempt, token: string): void {
    let transport: Transport;
    try {
      transport = this.ladder[attempt.level]({
        baseUrl: this.baseUrl,
        clientId: this.clientId,
        handlers: {
          onOpen: () => {
            if (attempt === this.current || attempt === this.probe) attempt.transport?.send({ type: 'auth', token });
          },
          onMessage: (message) => {
            if (attempt === this.current) this.receive(message);
            else if (attempt === this.probe) this.probeReceived(attempt, message);
          },
          onClose: ({ code, reason }) => {
            if (attempt === this.current) this.ended(code, reason);
            else if (attempt === this.probe) this.probeEnded(attempt);
          },
        },
      });
    } catch (error) {
      if (attempt === this.probe) {
        this.probeEnded(attempt);
      } else {
        this.current = null;
        this.failures += 1;
        this.retry(`cannot open a connection: ${String(error)}`);
      }
      return;
    }
    attempt.transport = transport;
    if (attempt !== this.current) return;
    this.setState({ transport: transport.kind, pollIntervalMs: transport.pollIntervalMs ?? null });
    this.lastSeen = Date.now();
    this.armWatchdog();
  }

  /** The transport ended on its own: retry, unless the close code says retrying cannot help. */
  private ended(code: number, reason: string): void {
    const welcomed = this.connected;
    this.drop(null);
    const why = `connection closed (${code}${reason ? `: ${reason}` : ''})`;
    if (TERMINAL_CLOSE_CODES.has(code)) {
      this.stop();
      this.setState({ status: 'error', error: why, nextRetryAt: null });
      return;
    }
    if (!welcomed) this.failures += 1;
    this.retry(why);
  }

  /**
   * Schedules the next attempt with backoff; offline, waits for the `online` event instead. After
   * `fallbackAfter` consecutive attempts of one transport that never reached `welcome`, the next
   * attempt uses the next transport of the ladder (after the last: the first again), soon.
   */
  private retry(reason: string): void {
    if (!this.wanted) return;
    this.clearRetry();
    if (!this.platform.online()) {
      this.setState({ status: 'connecting', online: false, nextRetryAt: null, error: reason });
      return;
    }
    const attempt = this.state.reconnectAttempts;
    let step = attempt;
    if (this.failures >= this.tunables.fallbackAfter && this.ladder.length > 1) {
      this.level = (this.level + 1) % this.ladder.length;
      this.failures = 0;
      step = 0; // a transport not tried yet: no reason to wait long for it
    }
    const { minReconnectDelayMs, maxReconnectDelayMs, random } = this.tunables;
    const delay = backoff(step, minReconnectDelayMs, maxReconnectDelayMs, random);
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
    if (this.wanted && this.current === null && this.platform.online()) this.open();
  }

  // Back online, maybe on another network: the WebSocket may work there, so start at the top again.
  private networkUp(): void {
    this.setState({ online: true });
    if (this.current === null) {
      this.level = 0;
      this.failures = 0;
    }
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

  /**
   * Forgets the main transport (closing it when `close` is given) and any probe; callbacks from them
   * are ignored.
   */
  private drop(close: { code: number; reason: string } | null): void {
    const transport = this.transport;
    this.current = null;
    this.disconnected();
    this.stopProbe();
    if (transport !== null && close !== null) transport.close(close.code, close.reason);
  }

  /** What a connection's end means for the subscriptions and the publishes in flight. */
  private disconnected(): void {
    this.connected = false;
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = null;
    for (const stream of this.streams.values()) stream.live = false;
    this.unsubscribing.clear();
    for (const resend of this.resends.values()) {
      if (resend.timer !== null) clearTimeout(resend.timer);
      resend.timer = null; // every queued publish goes again after the next `welcome` anyway
    }
  }

  /** No more retries: `close()` or a terminal close code. */
  private stop(): void {
    this.wanted = false;
    this.clearRetry();
    this.stopProbe();
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
          const welcomed = this.connected;
          this.drop({ code: 4408, reason: 'no message from the service for 2 heartbeats' });
          if (!welcomed) this.failures += 1;
          this.retry('heartbeat timeout');
        } else {
          this.armWatchdog();
        }
      },
      Math.max(0, this.lastSeen + limit - Date.now()),
    );
  }

  // --- the way back up the ladder -------------------------------------------------------------------

  /**
   * While connected on a fallback, tries a better transport in the background, with the same backoff
   * as reconnects: from SSE the WebSocket; from polling the WebSocket and SSE in turn. The first one
   * welcomed replaces the fallback (`promote`).
   */
  private scheduleProbe(): void {
    this.stopProbe();
    if (!this.wanted || !this.connected || this.level === 0) return;
    const { minReconnectDelayMs, maxReconnectDelayMs, random } = this.tunables;
    const delay = backoff(this.probeFailures, minReconnectDelayMs, maxReconnectDelayMs, random);
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      this.openProbe();
    }, delay);
  }

  private openProbe(): void {
    if (!this.wanted || !this.connected || this.level === 0 || !this.platform.online()) return;
    const attempt: Attempt = { level: this.probeFailures % this.level, transport: null };
    this.probe = attempt;
    // A transport that opens and never welcomes (a proxy holding the upgrade) is given up too.
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      this.probeEnded(attempt);
    }, 2 * this.tunables.heartbeatMs);
    this.withToken(
      attempt,
      (token) => this.start(attempt, token),
      () => this.probeEnded(attempt),
    );
  }

  private probeReceived(attempt: Attempt, message: ServerMessage): void {
    if (message.type === 'welcome') this.promote(attempt, message);
    else if (message.type === 'ping') attempt.transport?.send({ type: 'pong', ts: message.ts });
  }

  private probeEnded(attempt: Attempt): void {
    if (attempt !== this.probe) return;
    this.stopProbe();
    this.probeFailures += 1;
    this.scheduleProbe();
  }

  private stopProbe(): void {
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    const probe = this.probe;
    this.probe = null;
    probe?.transport?.close(1000, 'not needed');
  }

  /**
   * The probe is welcomed: it becomes the main connection and the fallback is closed. Every
   * subscription restarts on it from this client's position (so nothing is missed, and the seq
   * dedupe drops anything the fallback had already handed over), and every unanswered publish goes
   * again (the messageId makes that safe). Acks not yet sent wait for the new subscriptions.
   */
  private promote(attempt: Attempt, welcome: WelcomeMessage): void {
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    this.probe = null;
    const old = this.transport;
    this.disconnected();
    this.current = attempt;
    old?.close(1000, 'switching transport');
    this.level = attempt.level;
    this.failures = 0;
    this.probeFailures = 0;
    const transport = attempt.transport;
    this.setState({ transport: transport?.kind ?? null, pollIntervalMs: transport?.pollIntervalMs ?? null });
    this.receive(welcome);
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
        return this.settle(message.messageId, { published: message });
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
    this.failures = 0;
    this.heartbeatMs = message.heartbeatMs;
    this.armWatchdog();
    this.setState({ status: 'connected', reconnectAttempts: 0, nextRetryAt: null, error: undefined });
    for (const [projectId, stream] of this.streams) this.restart(projectId, stream);
    this.sendQueued();
    this.scheduleProbe();
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
      if (TRANSIENT_PUBLISH_ERRORS.has(message.code)) this.resendLater(ref);
      else this.settle(ref, { error: message });
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
    if (!this.queueLoaded) return; // the ready handler sends them all, the older ones first
    for (const frame of this.queue.list()) this.transport?.send(frame);
  }

  /** The service could not take the publish now: send it again later, unless a reconnect does first. */
  private resendLater(messageId: string): void {
    const resend = this.resends.get(messageId) ?? { timer: null, failures: 0 };
    this.resends.set(messageId, resend);
    if (resend.timer !== null) return;
    const { minReconnectDelayMs, maxReconnectDelayMs, random } = this.tunables;
    resend.timer = setTimeout(
      () => {
        resend.timer = null;
        const frame = this.queue.list().find((queued) => queued.messageId === messageId);
        if (this.connected && frame !== undefined) this.transport?.send(frame);
      },
      backoff(resend.failures++, minReconnectDelayMs, maxReconnectDelayMs, random),
    );
  }

  /** The publish is answered: out of the queue, and its promise settled (or, from an earlier page,
   * its refusal reported to `on('error')`). */
  private settle(messageId: string, outcome: { published: PublishedMessage } | { error: ErrorMessage }): void {
    if (!this.queue.has(messageId)) return;
    this.queue.remove(messageId);
    const resend = this.resends.get(messageId);
    if (resend?.timer != null) clearTimeout(resend.timer);
    this.resends.delete(messageId);
    const waiter = this.waiters.get(messageId);
    this.waiters.delete(messageId);
    this.setState({ queued: this.queue.size });
    if ('published' in outcome) {
      waiter?.resolve(outcome.published);
      this.emit('published', outcome.published);
    } else if (waiter !== undefined) {
      const { code, message } = outcome.error;
      waiter.reject(new HeraldError(code, message, messageId));
    } else {
      this.emit('error', outcome.error);
    }
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
