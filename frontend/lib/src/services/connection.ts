// The client's connection: one transport at a time, taken from a ladder (the WebSocket, then SSE,
// then polling) when attempts fail and probed back up while on a fallback; backoff between attempts,
// a heartbeat watchdog, the network and visibility signals; and the client's state, which changes
// in one place (`setState`). Frames about the connection itself (welcome, ping, pong) end here;
// every other frame goes to the client (client.ts), which routes it to the subscriptions and the
// publish queue. The state machine and the ladder are in docs/client.md.
import { CloseCode, TERMINAL_CLOSE_CODES } from '../types/codes.js';
import type {
  ClientMessage,
  PingMessage,
  PongMessage,
  ServerMessage,
  WebSocketState,
  WelcomeMessage,
} from '../types/websocket.js';
import type { Platform } from './platform.js';
import { NORMAL_CLOSURE, type Transport, type TransportFactory } from './transport.js';

/** The frames the connection hands on: events, and the answers to subscribes, acks and publishes. */
export type RoutedMessage = Exclude<ServerMessage, WelcomeMessage | PingMessage | PongMessage>;

/** What the connection tells the client. */
export interface ConnectionHandlers {
  /** Every change of the state (a new object each time). */
  state(state: WebSocketState): void;
  /** A transport was welcomed (`connected` is true): whatever should be on it is to be sent now. */
  welcomed(): void;
  /** A frame of the main transport that is not about the connection itself. */
  frame(message: RoutedMessage): void;
  /** The main transport is gone or being replaced: nothing sent before reaches the service now. */
  disconnected(): void;
}

export interface ConnectionOptions {
  baseUrl: string;
  clientId: string;
  /** A token, or a function giving one: called before every attempt. */
  token: string | (() => string | Promise<string>);
  /** The transports, best first. */
  ladder: TransportFactory[];
  platform: Platform;
  /** Until a `welcome` says otherwise. */
  heartbeatMs: number;
  /** Consecutive attempts of one rung that end before `welcome` before the next rung is tried. */
  fallbackAfter: number;
  /** The backoff before retry number `step + 1` (backoff.ts). */
  delay(step: number): number;
  /** Unanswered publishes when the client starts (the state's `queued`). */
  queued: number;
  handlers: ConnectionHandlers;
}

/** One try of a transport: the main connection, or a probe of a better transport in the background. */
interface Attempt {
  /** Its place in the ladder (0 = the best). */
  level: number;
  transport: Transport | null;
}

/**
 * Between `connect()` and `close()` (or a terminal close code) the connection keeps a transport
 * open, or is waiting to open the next one. `send` reaches the service only while `connected`.
 */
export class Connection {
  private readonly options: ConnectionOptions;
  private readonly handlers: ConnectionHandlers;
  private state: WebSocketState;

  /** The user wants a connection: between `connect()` and `close()` or a terminal close. */
  private wanted = false;
  /** The main connection (or the try at one); a callback of any other attempt is ignored. */
  private current: Attempt | null = null;
  /** The current transport got its `welcome`. */
  private welcomed = false;
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

  constructor(options: ConnectionOptions) {
    this.options = options;
    this.handlers = options.handlers;
    this.heartbeatMs = options.heartbeatMs;
    this.state = {
      status: 'disconnected',
      reconnectAttempts: 0,
      transport: null,
      nextRetryAt: null,
      queued: options.queued,
      online: options.platform.online(),
      pollIntervalMs: null,
    };
  }

  /** The current state; a new object after every change (so it can be compared by identity). */
  getState(): WebSocketState {
    return this.state;
  }

  /** The current transport was welcomed: frames sent now reach the service. */
  get connected(): boolean {
    return this.welcomed;
  }

  /** Sends a frame on the main transport; dropped when there is none. */
  send(frame: ClientMessage): void {
    this.transport?.send(frame);
  }

  /** Starts connecting, and keeps reconnecting until `close()` or a terminal close code. */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    const { platform } = this.options;
    this.unwatch = platform.watch({
      online: () => this.networkUp(),
      offline: () => this.networkDown(),
      visible: () => this.retryNow(),
    });
    this.level = 0;
    this.failures = 0;
    this.setState({ status: 'connecting', reconnectAttempts: 0, error: undefined, online: platform.online() });
    if (this.state.online) this.open();
  }

  /** Stops: closes the transport and retries no more. */
  close(): void {
    this.stop();
    this.drop({ code: NORMAL_CLOSURE, reason: 'client closed' });
    this.setState({
      status: 'disconnected',
      transport: null,
      pollIntervalMs: null,
      nextRetryAt: null,
      reconnectAttempts: 0,
      error: undefined,
    });
  }

  /** The one place the state changes: a new object, and `handlers.state`, when anything differs. */
  setState(patch: Partial<WebSocketState>): void {
    const keys = Object.keys(patch) as (keyof WebSocketState)[];
    if (keys.every((key) => Object.is(this.state[key], patch[key]))) return;
    this.state = { ...this.state, ...patch };
    this.handlers.state(this.state);
  }

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
    const source = this.options.token;
    let token: string | Promise<string>;
    try {
      token = typeof source === 'string' ? source : source();
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
      transport = this.options.ladder[attempt.level]({
        baseUrl: this.options.baseUrl,
        clientId: this.options.clientId,
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
    const welcomed = this.welcomed;
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
    if (!this.options.platform.online()) {
      this.setState({ status: 'connecting', online: false, nextRetryAt: null, error: reason });
      return;
    }
    const attempt = this.state.reconnectAttempts;
    let step = attempt;
    const { ladder, fallbackAfter } = this.options;
    if (this.failures >= fallbackAfter && ladder.length > 1) {
      this.level = (this.level + 1) % ladder.length;
      this.failures = 0;
      step = 0; // a transport not tried yet: no reason to wait long for it
    }
    const delay = this.options.delay(step);
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
    if (this.wanted && this.current === null && this.options.platform.online()) this.open();
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
    this.drop({ code: NORMAL_CLOSURE, reason: 'offline' });
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

  /** The main transport is gone: no watchdog, and the client learns that nothing is live. */
  private disconnected(): void {
    this.welcomed = false;
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = null;
    this.handlers.disconnected();
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
          const welcomed = this.welcomed;
          this.drop({ code: CloseCode.HEARTBEAT_TIMEOUT, reason: 'no message from the service for 2 heartbeats' });
          if (!welcomed) this.failures += 1;
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
      case 'ping':
        this.send({ type: 'pong', ts: message.ts });
        return;
      case 'pong':
        return;
      default:
        return this.handlers.frame(message);
    }
  }

  private welcome(message: WelcomeMessage): void {
    this.welcomed = true;
    this.failures = 0;
    this.heartbeatMs = message.heartbeatMs;
    this.armWatchdog();
    this.setState({ status: 'connected', reconnectAttempts: 0, nextRetryAt: null, error: undefined });
    this.handlers.welcomed();
    this.scheduleProbe();
  }

  // --- the way back up the ladder -------------------------------------------------------------------

  /**
   * While connected on a fallback, tries a better transport in the background, with the same backoff
   * as reconnects: from SSE the WebSocket; from polling the WebSocket and SSE in turn. The first one
   * welcomed replaces the fallback (`promote`).
   */
  private scheduleProbe(): void {
    this.stopProbe();
    if (!this.wanted || !this.welcomed || this.level === 0) return;
    const delay = this.options.delay(this.probeFailures);
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      this.openProbe();
    }, delay);
  }

  private openProbe(): void {
    if (!this.wanted || !this.welcomed || this.level === 0 || !this.options.platform.online()) return;
    const attempt: Attempt = { level: this.probeFailures % this.level, transport: null };
    this.probe = attempt;
    // A transport that opens and never welcomes (a proxy holding the upgrade) is given up too, after
    // 2 configured heartbeats: the heartbeat the fallback's `welcome` announced is the fallback's.
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      this.probeEnded(attempt);
    }, 2 * this.options.heartbeatMs);
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
    probe?.transport?.close(NORMAL_CLOSURE, 'not needed');
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
    old?.close(NORMAL_CLOSURE, 'switching transport');
    this.level = attempt.level;
    this.failures = 0;
    this.probeFailures = 0;
    const transport = attempt.transport;
    this.setState({ transport: transport?.kind ?? null, pollIntervalMs: transport?.pollIntervalMs ?? null });
    this.receive(welcome);
  }
}
