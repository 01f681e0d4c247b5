// Stand-ins for the browser and the service, for the client's unit tests (fake timers, no sockets).
import type { Platform } from '../src/services/platform';
import type { WebSocketLike } from '../src/services/transport';
import type { AgentRunProgress, ClientMessage, Event, ServerMessage } from '../src/types/websocket';

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

/** An agent_run_progress event of `projectId` at `seq` (a wire Event, and a WebSocketMessage). */
export function event(projectId: string, seq: number): Event & { type: 'agent_run_progress'; data: AgentRunProgress } {
  return {
    type: 'agent_run_progress',
    projectId,
    seq,
    messageId: `${projectId}-${seq}`,
    timestamp: '2026-01-01T00:00:00.000Z',
    data: { runId: 'r', status: 'running', progress: seq },
  };
}

/** Lets pending promise callbacks run (no timers move). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i += 1) await Promise.resolve();
}
