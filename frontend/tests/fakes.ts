// Stand-ins for the browser and the service, for the client's unit tests (fake timers, no sockets).
import { vi } from 'vitest';
import {
  HeraldClient,
  memoryStorage,
  type AgentRunProgress,
  type ClientMessage,
  type ClientOptions,
  type Event,
  type EventPage,
  type Platform,
  type ProjectSource,
  type ProjectState,
  type Resync,
  type ServerMessage,
  type Transport,
  type TransportFactory,
  type TransportHandlers,
  type TransportKind,
  type TransportOptions,
  type WebSocketLike,
  type WebSocketMessage,
} from '@herald/client';

/** A WebSocket the test drives by hand: `open()`, `receive(frame)`, `drop(code)`. */
export class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: WebSocketLike['onopen'] = null;
  onmessage: WebSocketLike['onmessage'] = null;
  onclose: WebSocketLike['onclose'] = null;
  onerror: WebSocketLike['onerror'] = null;
  /** What the client sent, parsed. */
  readonly sent: ClientMessage[] = [];
  /** How the client closed it, if it did. */
  closedWith: { code?: number; reason?: string } | null = null;
  readonly url: string;

  constructor(url: string) {
    this.url = url;
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(data) as ClientMessage);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(message: ServerMessage): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  /** Opens, and welcomes the client as the service does after `auth`. */
  accept(heartbeatMs = 15_000): void {
    this.open();
    this.receive({ type: 'welcome', clientId: 'c', connectionId: 'k', heartbeatMs });
  }

  /** The service or the network ended the connection. */
  drop(code = 1006, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The frames sent of one type. */
  frames<T extends ClientMessage['type']>(type: T): (ClientMessage & { type: T })[] {
    return this.sent.filter((frame): frame is ClientMessage & { type: T } => frame.type === type);
  }
}

/** A WebSocket constructor that records every socket it makes. */
export function fakeSockets() {
  const sockets: FakeSocket[] = [];
  class WebSocket extends FakeSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  return {
    WebSocket,
    sockets,
    get last(): FakeSocket {
      const socket = sockets.at(-1);
      if (socket === undefined) throw new Error('no socket was opened');
      return socket;
    },
  };
}

/** A network and a page the test switches: `goOffline()`, `goOnline()`, `becomeVisible()`. */
export function fakePlatform(online = true) {
  const network = { online };
  let handlers: Parameters<Platform['watch']>[0] | null = null;
  const platform: Platform = {
    online: () => network.online,
    watch(given) {
      handlers = given;
      return () => {
        handlers = null;
      };
    },
  };
  return {
    platform,
    get watched() {
      return handlers !== null;
    },
    goOffline() {
      network.online = false;
      handlers?.offline();
    },
    goOnline() {
      network.online = true;
      handlers?.online();
    },
    becomeVisible() {
      handlers?.visible();
    },
  };
}

/** A stand-in for an event's chain hash (64 lowercase hex, as on the wire), distinct per seq. */
export const hashOf = (seq: number): string => seq.toString(16).padStart(64, '0');

/** An agent_run_progress event of `projectId` at `seq` (a wire Event, and a WebSocketMessage). */
export function event(projectId: string, seq: number): Event & { type: 'agent_run_progress'; data: AgentRunProgress } {
  return {
    type: 'agent_run_progress',
    projectId,
    seq,
    messageId: `${projectId}-${seq}`,
    timestamp: '2026-01-01T00:00:00.000Z',
    hash: hashOf(seq),
    data: { runId: 'r', status: 'running', progress: seq },
  };
}

/** Lets pending promise callbacks run (no timers move). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i += 1) await Promise.resolve();
}

/**
 * A client on fake sockets and a fake network, with the WebSocket alone (fallback.test.ts covers the
 * ladder). The history answers what `history` holds (by `path?query`), else 503. `received` is every
 * event handed over.
 */
export function socketClient(options: Partial<ClientOptions> = {}) {
  const fake = fakeSockets();
  const net = fakePlatform();
  const history = new Map<string, EventPage>();
  const fetch = vi.fn(async (input: string | URL | Request) => {
    const url = new URL(String(input));
    const page = history.get(url.pathname + url.search);
    if (page === undefined) return { ok: false, status: 503, json: async () => ({}) } as Response;
    return { ok: true, status: 200, json: async () => page } as Response;
  });
  const client = new HeraldClient({
    token: 'tok',
    baseUrl: 'http://herald.test',
    WebSocket: fake.WebSocket,
    platform: net.platform,
    storage: memoryStorage(),
    fetch: fetch as unknown as typeof globalThis.fetch,
    fallbacks: [],
    ...options,
  });
  const received: WebSocketMessage[] = [];
  client.on('message', (message) => received.push(message));
  const seqs = (projectId: string) => received.filter((m) => m.projectId === projectId).map((m) => m.seq);
  return { client, fake, net, fetch, history, received, seqs };
}

/** A `socketClient` connected (welcomed) on its first socket. */
export function connectedClient(options: Partial<ClientOptions> = {}) {
  const env = socketClient(options);
  env.client.connect();
  env.fake.last.accept();
  return env;
}

/** A pr_notification event of project p1 at `seq`, about pull request `number`. */
export const prEvent = (seq: number, number = 1): Event => ({
  type: 'pr_notification',
  projectId: 'p1',
  seq,
  messageId: `m${seq}`,
  timestamp: 't',
  hash: hashOf(seq),
  data: { action: 'opened', number, title: 't', url: 'u', repo: 'octo/demo', headSha: 'h' },
});

/**
 * A stand-in for the client, as the project store sees it: `readState` answers `snapshot(projectId)`,
 * `deliver(event)` hands an event to the store, `resync(value)` tells it a subscription is parked;
 * the other verbs are spies.
 */
export function fakeProjectSource(snapshot: (projectId: string) => Promise<ProjectState>) {
  const listeners = new Set<(message: WebSocketMessage) => void>();
  const resyncListeners = new Set<(resync: Resync) => void>();
  const client = {
    on: vi.fn((type: string, listener: (value: never) => void) => {
      const set = (type === 'message' ? listeners : type === 'resync' ? resyncListeners : null) as Set<
        (value: never) => void
      > | null;
      set?.add(listener);
      return () => void set?.delete(listener);
    }),
    subscribe: vi.fn(),
    unsubscribe: vi.fn(),
    resubscribe: vi.fn(),
    readState: vi.fn(async (projectId: string) => snapshot(projectId)),
    readEvents: vi.fn(async (): Promise<Event[]> => []),
    position: vi.fn((): number | null => null),
  };
  const deliver = (event: Event) => {
    for (const listener of listeners) listener(event as unknown as WebSocketMessage);
  };
  const resync = (value: Resync) => {
    for (const listener of resyncListeners) listener(value);
  };
  return { client, source: client as unknown as ProjectSource, deliver, resync, listeners };
}

/** Project p1's state snapshot at `seq`, with these notifications (the first also its pull request). */
export const projectState = (seq: number, notifications: Event[] = []): ProjectState => ({
  projectId: 'p1',
  seq,
  agentRuns: [],
  pullRequests: notifications.slice(0, 1),
  validations: [],
  notifications,
});

/** A transport the test drives by hand, as `FakeSocket` is a socket: `open()`, `receive()`, `drop()`. */
export class FakeTransport implements Transport {
  readonly kind: TransportKind;
  readonly pollIntervalMs?: number;
  readonly sent: ClientMessage[] = [];
  closedWith: { code: number; reason: string } | null = null;
  private readonly handlers: TransportHandlers;

  constructor(kind: TransportKind, options: TransportOptions, pollIntervalMs?: number) {
    this.kind = kind;
    this.handlers = options.handlers;
    if (pollIntervalMs !== undefined) this.pollIntervalMs = pollIntervalMs;
  }

  send(message: ClientMessage): void {
    if (this.closedWith === null) this.sent.push(message);
  }

  close(code: number, reason: string): void {
    this.closedWith = { code, reason };
  }

  open(): void {
    this.handlers.onOpen();
  }

  receive(message: ServerMessage): void {
    this.handlers.onMessage(message);
  }

  /** Opens, and welcomes the client as a transport does after `auth`. */
  accept(heartbeatMs = 15_000): void {
    this.open();
    this.receive({ type: 'welcome', clientId: 'c', connectionId: this.kind, heartbeatMs });
  }

  drop(code = 1006, reason = ''): void {
    this.handlers.onClose({ code, reason });
  }

  frames<T extends ClientMessage['type']>(type: T): (ClientMessage & { type: T })[] {
    return this.sent.filter((frame): frame is ClientMessage & { type: T } => frame.type === type);
  }
}

/** A transport factory of one kind that records every transport it makes. */
export function fakeTransports(kind: TransportKind, pollIntervalMs?: number) {
  const made: FakeTransport[] = [];
  const factory: TransportFactory = (options) => {
    const transport = new FakeTransport(kind, options, pollIntervalMs);
    made.push(transport);
    return transport;
  };
  return {
    factory,
    made,
    get last(): FakeTransport {
      const transport = made.at(-1);
      if (transport === undefined) throw new Error(`no ${kind} transport was made`);
      return transport;
    },
  };
}

/** A request the fake service got. */
export interface FakeRequest {
  method: string;
  url: URL;
  /** `pathname?search`, for matching. */
  path: string;
  headers: Headers;
  body: unknown;
  signal: AbortSignal | null;
}

/** An event-stream response the test writes to by hand; it errors when the request is aborted. */
export class FakeStream {
  readonly response: Response;
  ended = false;
  private controller!: ReadableStreamDefaultController<Uint8Array>;

  constructor(signal: AbortSignal | null) {
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.controller = controller;
      },
      cancel: () => {
        this.ended = true;
      },
    });
    this.response = new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
    signal?.addEventListener('abort', () => {
      if (this.ended) return;
      this.ended = true;
      this.controller.error(new DOMException('aborted', 'AbortError'));
    });
  }

  get aborted(): boolean {
    return this.ended;
  }

  write(text: string): void {
    if (!this.ended) this.controller.enqueue(new TextEncoder().encode(text));
  }

  /** An event as the service frames it. */
  event(event: Event, id: string = String(event.seq)): void {
    this.write(`id: ${id}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.controller.close();
  }
}

type Route = (request: FakeRequest) => Response | Promise<Response> | FakeStream | undefined;

/**
 * A fake service over `fetch`: routes answer requests (the first that returns something wins);
 * unrouted requests get 404. Every request is recorded.
 */
export function fakeHttp() {
  const requests: FakeRequest[] = [];
  const routes: Route[] = [];
  const fetch = async (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(String(input));
    const request: FakeRequest = {
      method: init.method ?? 'GET',
      url,
      path: url.pathname + url.search,
      headers: new Headers(init.headers),
      body: typeof init.body === 'string' ? JSON.parse(init.body) : undefined,
      signal: init.signal ?? null,
    };
    requests.push(request);
    if (request.signal?.aborted) throw new DOMException('aborted', 'AbortError');
    for (const route of routes) {
      const answer = await route(request);
      if (answer instanceof FakeStream) return answer.response;
      if (answer !== undefined) return answer;
    }
    return json(404, { error: 'not_found', message: `no route for ${request.method} ${request.path}` });
  };
  return {
    fetch: fetch as typeof globalThis.fetch,
    requests,
    route(route: Route) {
      routes.unshift(route); // later routes take precedence
    },
    /** The requests to a path (without the query), in order. */
    to(pathname: string, method = 'GET') {
      return requests.filter((request) => request.url.pathname === pathname && request.method === method);
    },
  };
}

export function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}
