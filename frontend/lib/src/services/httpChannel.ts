// The HTTP half of the fallback transports (SSE and polling): what the WebSocket carries as frames
// (the token, publishes, acks, pings) carried as the requests of docs/protocol.md §3, and the answers
// turned back into frames, so the client cannot tell the difference.
import { CloseCode } from '../types/codes.js';
import type { ClientMessage, Event, ProjectList, PublishMessage, ServerMessage } from '../types/websocket.js';
import { backoff } from './backoff.js';
import { errorOf, isTransientStatus } from './errors.js';
import { ABNORMAL_CLOSURE, type TransportOptions } from './transport.js';

export interface HttpChannelOptions extends TransportOptions {
  fetch: typeof fetch;
  /** The retry delays of a publish or an ack the service could not take (503, 429, network). */
  minRetryMs?: number;
  maxRetryMs?: number;
  /** Called once when the transport ends, whoever ends it: stop streams and timers. */
  onEnd(): void;
}

/** A project an HTTP transport reads: its position (null until the service says where it starts)
 *  and whether its `subscribed` frame went out. */
export interface ProjectPosition {
  seq: number | null;
  announced: boolean;
}

/** What a transport does with the frames that differ between SSE and polling. */
export interface FrameHandlers {
  /** The token was accepted (first `auth`, with the ids of the projects it names) or replaced (a later
   * one: `projects` is empty). */
  authenticated(first: boolean, projects: string[]): void;
  subscribe(projectId: string, after: number | null): void;
  unsubscribe(projectId: string): void;
}

type Publish = PublishMessage & { messageId: string };

interface AckState {
  /** The highest seq to send next, or null when nothing is waiting. */
  pending: number | null;
  sending: boolean;
  failures: number;
}

/**
 * One transport's HTTP session. Frames go to the client asynchronously (never from inside `send`),
 * in order; after `close()` none goes. Publishes are sent one at a time, in the order given, so the
 * log keeps the client's order; one the service could not take (5xx, 429, a network failure) is
 * sent again with backoff before the next. Acks are cumulative and coalesced per project; those
 * still waiting when the transport closes go once more, with `keepalive` (they outlive the page).
 */
export class HttpChannel {
  token: string | null = null;
  private readonly options: HttpChannelOptions;
  private readonly controller = new AbortController();
  /** No new frame for the client: the transport ended (or is ending), from either side. */
  private silenced = false;
  /** The client closed the transport: not even frames already on their way reach it. */
  private dropped = false;
  private ended = false;
  private authenticated = false;
  private readonly outbox: Publish[] = [];
  private publishing = false;
  private readonly acks = new Map<string, AckState>();

  constructor(options: HttpChannelOptions) {
    this.options = options;
    queueMicrotask(() => {
      if (!this.silenced) options.handlers.onOpen();
    });
  }

  get open(): boolean {
    return !this.ended;
  }

  /** Hands a frame to the client, after the current call stack (frames keep their order). */
  emit(message: ServerMessage): void {
    if (this.silenced) return;
    queueMicrotask(() => {
      if (!this.dropped) this.options.handlers.onMessage(message);
    });
  }

  /** Ends the transport from this side: the client hears `onClose(code)` after the frames before it. */
  fail(code: number, reason: string): void {
    if (this.silenced) return;
    this.silenced = true;
    this.finish();
    queueMicrotask(() => {
      if (!this.dropped) this.options.handlers.onClose({ code, reason });
    });
  }

  /** The client closed the transport: nothing more reaches it; acks still waiting go out once. */
  close(): void {
    const wasOpen = !this.silenced;
    this.silenced = true;
    this.dropped = true;
    this.finish();
    if (!wasOpen) return;
    // Those in flight or waiting to retry get one last try when their turn comes.
    for (const [projectId, state] of this.acks) {
      if (state.pending !== null && !state.sending) void this.sendAcks(projectId, state);
    }
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.controller.abort(); // ends every request in flight and every sleep
    this.options.onEnd();
  }

  /** A request to the service with the token, aborted when the transport ends. */
  request(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.token !== null) headers.set('Authorization', `Bearer ${this.token}`);
    const url = new URL(path, this.options.baseUrl);
    return this.options.fetch(url, { signal: this.controller.signal, ...init, headers });
  }

  /** Waits `ms`; resolves false at once when the transport ends meanwhile. */
  sleep(ms: number): Promise<boolean> {
    const signal = this.controller.signal;
    return new Promise((resolve) => {
      if (signal.aborted) return resolve(false);
      const done = (value: boolean) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', aborted);
        resolve(value);
      };
      const aborted = () => done(false);
      const timer = setTimeout(() => done(true), ms);
      signal.addEventListener('abort', aborted);
    });
  }

  /** Routes a frame from the client: the shared ones here, the others to the transport. */
  dispatch(message: ClientMessage, handlers: FrameHandlers): void {
    if (this.silenced) return;
    if (message.type === 'auth') {
      void this.auth(message.token, handlers);
      return;
    }
    if (!this.authenticated) return; // as on the socket: nothing counts before `auth`
    switch (message.type) {
      case 'subscribe':
        return handlers.subscribe(message.projectId, message.after ?? null);
      case 'unsubscribe':
        handlers.unsubscribe(message.projectId);
        return this.emit({ type: 'unsubscribed', projectId: message.projectId });
      case 'ack':
        return this.ack(message.projectId, message.seq);
      case 'ping':
        return this.emit({ type: 'pong', ts: message.ts ?? null });
      case 'pong':
        return;
      default:
        if (typeof message.messageId === 'string') this.publish(message as Publish);
    }
  }

  /**
   * The first `auth` is checked with `GET /api/projects` (any valid token may), which also proves
   * the service answers over HTTP: 401 ends the transport with 4401 (terminal, as on the socket),
   * another failure with 1006 (retry). A later `auth` replaces the token.
   */
  private async auth(token: string, handlers: FrameHandlers): Promise<void> {
    this.token = token;
    if (this.authenticated) {
      handlers.authenticated(false, []);
      return;
    }
    let response: Response;
    try {
      response = await this.request('/api/projects');
    } catch {
      return this.fail(ABNORMAL_CLOSURE, 'the service is unreachable over HTTP');
    }
    if (!response.ok) {
      const error = await errorOf(response);
      return this.fail(response.status === 401 ? CloseCode.AUTH : ABNORMAL_CLOSURE, `${error.code}: ${error.message}`);
    }
    let projects: string[];
    try {
      projects = ((await response.json()) as ProjectList).projects.map((project) => project.id);
    } catch {
      return this.fail(ABNORMAL_CLOSURE, 'GET /api/projects answered garbage');
    }
    if (this.silenced) return;
    this.authenticated = true;
    handlers.authenticated(true, projects);
  }

  // --- publishes ------------------------------------------------------------------------------------

  private publish(frame: Publish): void {
    if (this.outbox.some((queued) => queued.messageId === frame.messageId)) return;
    this.outbox.push(frame);
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.publishing) return;
    this.publishing = true;
    let failures = 0;
    try {
      while (this.outbox.length > 0 && !this.ended) {
        const done = await this.post(this.outbox[0]);
        if (this.ended) return;
        if (done) {
          this.outbox.shift();
          failures = 0;
        } else if (!(await this.sleep(this.retryDelay(failures++)))) {
          return;
        }
      }
    } finally {
      this.publishing = false;
    }
  }

  /** One publish: true once answered (`published` or `error`), false to try again later. */
  private async post(frame: Publish): Promise<boolean> {
    const { projectId, messageId } = frame;
    let response: Response;
    try {
      response = await this.request(`/api/projects/${encodeURIComponent(projectId)}/events`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ type: frame.type, data: frame.data, messageId }),
      });
    } catch {
      return false; // unreachable, or aborted: the outcome is unknown, and resending is safe
    }
    if (response.ok) {
      let event: Event;
      try {
        event = (await response.json()) as Event;
      } catch {
        return false;
      }
      this.emit({ type: 'published', projectId, messageId, seq: event.seq });
      return true;
    }
    if (response.status === 401) {
      this.fail(CloseCode.AUTH, 'the token was refused');
      return false;
    }
    if (isTransientStatus(response.status)) {
      await response.body?.cancel();
      return false;
    }
    const error = await errorOf(response, messageId);
    this.emit({ type: 'error', code: error.code, message: error.message, ref: messageId });
    return true;
  }

  // --- acks -----------------------------------------------------------------------------------------

  private ack(projectId: string, seq: number): void {
    let state = this.acks.get(projectId);
    if (state === undefined) {
      state = { pending: null, sending: false, failures: 0 };
      this.acks.set(projectId, state);
    }
    state.pending = Math.max(state.pending ?? seq, seq);
    if (!state.sending) void this.sendAcks(projectId, state);
  }

  private async sendAcks(projectId: string, state: AckState): Promise<void> {
    state.sending = true;
    try {
      while (state.pending !== null) {
        const seq = state.pending;
        state.pending = null;
        const final = this.ended; // once the transport has ended, each ack gets one last try
        const outcome = await this.postAck(projectId, seq);
        if (outcome === 'done') {
          state.failures = 0;
        } else if (!final) {
          state.pending = Math.max(state.pending ?? seq, seq);
          if (!this.ended) await this.sleep(this.retryDelay(state.failures++));
        }
      }
    } finally {
      state.sending = false;
    }
  }

  private async postAck(projectId: string, seq: number): Promise<'done' | 'retry'> {
    let response: Response;
    try {
      // Not aborted with the transport: an ack sent at close() must still arrive.
      response = await this.options.fetch(
        new URL(`/api/projects/${encodeURIComponent(projectId)}/ack`, this.options.baseUrl),
        {
          method: 'POST',
          // The last acks, sent as the page may be going, must outlive it. (Only those: a browser
          // that cannot preflight a keepalive request fails it, and then only a replay is lost.)
          keepalive: this.ended,
          headers: { Authorization: `Bearer ${this.token ?? ''}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ clientId: this.options.clientId, seq }),
        },
      );
    } catch {
      return 'retry';
    }
    if (response.ok || !isTransientStatus(response.status)) {
      if (!response.ok && response.status !== 401) {
        // As an `error` frame over the socket would say (invalid_ack, forbidden...): nothing to retry.
        const error = await errorOf(response, projectId);
        this.emit({ type: 'error', code: error.code, message: error.message, ref: projectId });
      } else {
        await response.body?.cancel();
      }
      return 'done';
    }
    await response.body?.cancel();
    return 'retry';
  }

  private retryDelay(failures: number): number {
    return backoff(failures, this.options.minRetryMs ?? 500, this.options.maxRetryMs ?? 20_000);
  }
}
