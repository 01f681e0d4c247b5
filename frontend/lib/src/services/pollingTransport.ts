// The last fallback: read each subscribed project's history every few seconds
// (`GET /api/projects/{id}/events?after=N&limit=1000`), acks and publishes over HTTP. Plain
// request-response, so it works through whatever lets the page load at all.
import { CloseCode } from '../types/codes.js';
import type { ClientMessage, EventPage } from '../types/websocket.js';
import { errorOf, INVALID_CURSOR, isTransientStatus } from './errors.js';
import { HttpChannel, type ProjectPosition } from './httpChannel.js';
import { randomId } from './platform.js';
import { ABNORMAL_CLOSURE, type Transport, type TransportFactory, type TransportOptions } from './transport.js';

export interface PollingOptions {
  fetch?: typeof fetch;
  /** The pause between two rounds of reads (default 5000). */
  intervalMs?: number;
  minRetryMs?: number;
  maxRetryMs?: number;
}

/** The polling transport over `fetch` (the global one by default). */
export function pollingTransport(options: PollingOptions = {}): TransportFactory {
  return (transportOptions) => new PollingTransport(options, transportOptions);
}

/**
 * Frames as the socket would send them: `subscribed` once a project's start is known, then its
 * events in seq order, and a `ping` after every round (the client's watchdog sees the transport
 * alive; `welcome` says heartbeatMs = 2 × the interval, so one slow round is tolerated). A round
 * that fails (network, 5xx) ends the transport, and the client retries; a project refused (403,
 * 404) gets the `error` frame the socket would send and is no longer read.
 */
class PollingTransport implements Transport {
  readonly kind = 'polling';
  readonly pollIntervalMs: number;
  private readonly channel: HttpChannel;
  private readonly clientId: string;
  private readonly projects = new Map<string, ProjectPosition>();
  private running = false;
  /** A subscription came during a round: start the next one at once. */
  private again = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private welcomed = false;

  constructor(options: PollingOptions, transport: TransportOptions) {
    this.pollIntervalMs = options.intervalMs ?? 5000;
    this.clientId = transport.clientId;
    this.channel = new HttpChannel({
      ...transport,
      fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      minRetryMs: options.minRetryMs,
      maxRetryMs: options.maxRetryMs,
      onEnd: () => {
        if (this.timer !== null) clearTimeout(this.timer);
        this.timer = null;
      },
    });
  }

  send(message: ClientMessage): void {
    this.channel.dispatch(message, {
      authenticated: (first) => {
        if (!first) return; // every request takes the channel's current token
        this.welcomed = true;
        this.channel.emit({
          type: 'welcome',
          clientId: this.clientId,
          connectionId: `polling-${randomId()}`,
          heartbeatMs: 2 * this.pollIntervalMs,
        });
        this.kick();
      },
      subscribe: (projectId, after) => {
        this.projects.set(projectId, { seq: after, announced: false });
        this.kick();
      },
      unsubscribe: (projectId) => void this.projects.delete(projectId),
    });
  }

  close(): void {
    this.channel.close();
  }

  /** Starts a round now (or right after the current one). */
  private kick(): void {
    if (!this.welcomed || !this.channel.open) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    void this.round();
  }

  private async round(): Promise<void> {
    this.running = true;
    this.again = false;
    try {
      for (const [projectId, position] of [...this.projects]) {
        if (this.projects.get(projectId) !== position) continue; // unsubscribed or restarted meanwhile
        if (!(await this.poll(projectId, position))) return;
      }
      this.channel.emit({ type: 'ping', ts: Date.now() });
    } finally {
      this.running = false;
    }
    if (!this.channel.open) return;
    if (this.again) {
      queueMicrotask(() => this.kick());
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.round();
    }, this.pollIntervalMs);
  }

  /** One project's new events; false when the transport ended. */
  private async poll(projectId: string, position: ProjectPosition): Promise<boolean> {
    const current = () => this.channel.open && this.projects.get(projectId) === position;
    if (!position.announced) {
      // The head: where a project without a position starts (the durable cursor, where the socket
      // would start, can only be read with the admin scope; the store always subscribes with a
      // position), and what a position must not pass. The history answers an `after` beyond the
      // head with nothing, so without this a log reset under the client would go unnoticed.
      const page = await this.read(projectId, { order: 'desc', limit: '1' });
      if (page === 'ended') return false;
      if (page === 'refused' || !current()) return true;
      const head = page.events[0]?.seq ?? 0;
      if (position.seq !== null && position.seq > head) {
        this.projects.delete(projectId);
        const message = `after ${position.seq} is beyond the head ${head}`;
        this.channel.emit({ type: 'error', code: INVALID_CURSOR, message, ref: projectId });
        return true;
      }
      position.seq ??= head;
      position.announced = true;
      this.channel.emit({ type: 'subscribed', projectId, after: position.seq, head: position.seq });
    }
    if (position.seq === null) return true; // not reached: announcing sets it
    for (;;) {
      const page = await this.read(projectId, { after: String(position.seq), limit: '1000' });
      if (page === 'ended') return false;
      if (page === 'refused' || !current()) return true;
      for (const event of page.events) {
        if (event.seq <= position.seq) continue;
        position.seq = event.seq;
        this.channel.emit(event);
      }
      if (page.next === null) return true;
    }
  }

  private async read(projectId: string, query: Record<string, string>): Promise<EventPage | 'refused' | 'ended'> {
    const path = `/api/projects/${encodeURIComponent(projectId)}/events?${new URLSearchParams(query).toString()}`;
    let response: Response;
    try {
      response = await this.channel.request(path);
    } catch {
      if (this.channel.open) this.channel.fail(ABNORMAL_CLOSURE, 'the history could not be read');
      return 'ended';
    }
    if (response.ok) {
      try {
        return (await response.json()) as EventPage;
      } catch {
        this.channel.fail(ABNORMAL_CLOSURE, 'the history answered garbage');
        return 'ended';
      }
    }
    const error = await errorOf(response, projectId);
    if (response.status === 401 || isTransientStatus(response.status)) {
      this.channel.fail(response.status === 401 ? CloseCode.AUTH : ABNORMAL_CLOSURE, `${error.code}: ${error.message}`);
      return 'ended';
    }
    if (this.projects.get(projectId) !== undefined) {
      this.projects.delete(projectId);
      this.channel.emit({ type: 'error', code: error.code, message: error.message, ref: projectId, ...error.truncation });
    }
    return 'refused';
  }
}
