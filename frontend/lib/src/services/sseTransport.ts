// The SSE fallback: every subscribed project on one multi-project stream (docs/protocol.md §5,
// `GET /api/stream?projects=a,b&clientId=C&after=a:5,b:9`), acks and publishes over HTTP.
//
// The stream is read with fetch rather than EventSource: EventSource hides what this transport
// needs — the HTTP status of a refusal (401 ends the client, 503 is retried), the `: keep-alive`
// comments (a stream gone silent behind a proxy is noticed within 2 keep-alives), the end-of-stream
// comment `: closed CODE: reason` (docs/protocol.md), and it can only send the token in the URL.
// Its automatic reconnect is not wanted either: the client reconnects with its own positions.
import { createParser } from 'eventsource-parser';
import { CloseCode } from '../types/codes.js';
import type { ClientMessage, Event } from '../types/websocket.js';
import { errorOf, truncationOf } from './errors.js';
import { HttpChannel, type ProjectPosition } from './httpChannel.js';
import { randomId } from './platform.js';
import { ABNORMAL_CLOSURE, type Transport, type TransportFactory, type TransportOptions } from './transport.js';

export interface SseOptions {
  fetch?: typeof fetch;
  /** The service's keep-alive interval (HERALD_SSE_KEEPALIVE_MS, 15000): the client drops a stream
   * silent for twice this. */
  keepAliveMs?: number;
  /** The service takes at most 100 projects per stream; more are split over several streams. */
  projectsPerStream?: number;
  minRetryMs?: number;
  maxRetryMs?: number;
}

/** How long the handshake waits for a stream's first bytes (the service sends `retry:` at once). */
const FIRST_BYTES_MS = 10_000;

/** One message of an event stream, as the WHATWG "dispatch the event" step hands it over. */
export interface SseMessage {
  /** The stream's last event ID: it stands until another `id:` line comes. */
  id: string | null;
  event: string;
  data: string;
}

/**
 * The event-stream format, incrementally (eventsource-parser): `feed` text as it arrives, split
 * anywhere; each complete message goes to `onMessage`, each comment line (without its colon) to
 * `onComment`. Lines end with CRLF, LF or CR.
 */
export function sseParser(
  onMessage: (message: SseMessage) => void,
  onComment: (text: string) => void,
): { feed(text: string): void } {
  // eventsource-parser reports only a message's own `id:`; the vector of a message without one is
  // the last one seen, as EventSource's lastEventId would be.
  let lastId: string | null = null;
  return createParser({
    onEvent: ({ id, event, data }) => {
      if (id !== undefined) lastId = id;
      onMessage({ id: lastId, event: event ?? 'message', data });
    },
    onComment,
    // `retry` is EventSource's reconnect delay, ignored: the client has its own backoff.
  });
}

/** `a:5,b:9` as a map; malformed parts are skipped. */
export function parseVector(text: string | null): Map<string, number> {
  const vector = new Map<string, number>();
  for (const part of (text ?? '').split(',')) {
    const colon = part.lastIndexOf(':');
    const seq = Number(part.slice(colon + 1));
    if (colon > 0 && Number.isSafeInteger(seq) && seq >= 0) vector.set(part.slice(0, colon), seq);
  }
  return vector;
}

/** The SSE transport over `fetch` (the global one by default). */
export function sseTransport(options: SseOptions = {}): TransportFactory {
  return (transportOptions) => new SseTransport(options, transportOptions);
}

class SseTransport implements Transport {
  readonly kind = 'sse';
  private readonly channel: HttpChannel;
  private readonly keepAliveMs: number;
  private readonly perStream: number;
  private readonly clientId: string;
  private readonly projects = new Map<string, ProjectPosition>();
  /** The current streams' controller: replaced (and the old streams aborted) at every reopen. */
  private streams: AbortController | null = null;
  private reopening = false;
  private welcomed = false;
  private idle: ReturnType<typeof setInterval> | null = null;

  constructor(options: SseOptions, transport: TransportOptions) {
    this.keepAliveMs = options.keepAliveMs ?? 15_000;
    this.perStream = options.projectsPerStream ?? 100;
    this.clientId = transport.clientId;
    this.channel = new HttpChannel({
      ...transport,
      fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      minRetryMs: options.minRetryMs,
      maxRetryMs: options.maxRetryMs,
      onEnd: () => {
        this.streams?.abort();
        this.streams = null;
        this.stopIdle();
      },
    });
  }

  send(message: ClientMessage): void {
    this.channel.dispatch(message, {
      authenticated: (first, projects) => {
        if (first) {
          void this.welcome(projects[0] ?? null);
          return;
        }
        // A new token: the streams opened with the old one end when it expires; reopen with this one.
        this.scheduleReopen();
      },
      subscribe: (projectId, after) => {
        this.projects.set(projectId, { seq: after, announced: false });
        this.scheduleReopen();
      },
      unsubscribe: (projectId) => {
        if (this.projects.delete(projectId)) this.scheduleReopen();
      },
    });
  }

  close(): void {
    this.channel.close();
  }

  /**
   * `welcome` only once an event stream is seen to flow (its first bytes, `retry: 2000`, arrive):
   * HTTP alone says nothing of a proxy that refuses or buffers `text/event-stream`, and a transport
   * that welcomes and then cannot stream would keep the client from falling back to polling. The
   * stream asked is one project's (any the token names), without a clientId, so no cursor is
   * touched; it is dropped as soon as it answers.
   */
  private async welcome(projectId: string | null): Promise<void> {
    if (projectId !== null) {
      let flowing = false;
      try {
        const response = await this.channel.request(`/api/projects/${encodeURIComponent(projectId)}/stream`, {
          headers: { Accept: 'text/event-stream' },
        });
        const type = response.headers.get('Content-Type') ?? '';
        if (response.ok && type.startsWith('text/event-stream') && response.body !== null) {
          const reader = response.body.getReader();
          // A proxy that buffers the stream holds even its first bytes: give up on it soon.
          const timer = setTimeout(() => void reader.cancel().catch(() => {}), FIRST_BYTES_MS);
          flowing = !(await reader.read()).done;
          clearTimeout(timer);
          await reader.cancel().catch(() => {});
        } else {
          await response.body?.cancel().catch(() => {});
        }
      } catch {
        // Refused on the way, or the transport ended: not flowing.
      }
      if (!this.channel.open) return;
      if (!flowing) return this.channel.fail(ABNORMAL_CLOSURE, 'no event stream gets through');
    }
    this.welcomed = true;
    this.channel.emit({
      type: 'welcome',
      clientId: this.clientId,
      connectionId: `sse-${randomId()}`,
      heartbeatMs: this.keepAliveMs,
    });
    this.scheduleReopen();
  }

  // Frames come in bursts (every subscription is re-sent after `welcome`): one reopen for a burst.
  private scheduleReopen(): void {
    if (this.reopening) return;
    this.reopening = true;
    queueMicrotask(() => {
      this.reopening = false;
      if (this.welcomed && this.channel.open) this.reopen();
    });
  }

  /** Ends the current streams and opens new ones from the positions held: nothing lost, nothing twice. */
  private reopen(): void {
    this.streams?.abort();
    this.stopIdle();
    const ids = [...this.projects.keys()];
    if (ids.length === 0) {
      // Nothing to stream, so nothing proves the service alive: and nothing depends on it either.
      this.streams = null;
      this.idle = setInterval(() => this.channel.emit({ type: 'ping', ts: Date.now() }), this.keepAliveMs);
      return;
    }
    const controller = new AbortController();
    this.streams = controller;
    for (let i = 0; i < ids.length; i += this.perStream) {
      void this.stream(ids.slice(i, i + this.perStream), controller);
    }
  }

  private stopIdle(): void {
    if (this.idle !== null) clearInterval(this.idle);
    this.idle = null;
  }

  private streamUrl(ids: string[]): string {
    const query = new URLSearchParams({ projects: ids.join(','), clientId: this.clientId });
    const after = ids.flatMap((id) => {
      const seq = this.projects.get(id)?.seq;
      return seq === null || seq === undefined ? [] : [`${id}:${seq}`];
    });
    // Projects without a position resume from this client's durable cursor, else the head (docs/protocol.md §5).
    if (after.length > 0) query.set('after', after.join(','));
    return `/api/stream?${query.toString()}`;
  }

  private async stream(ids: string[], controller: AbortController): Promise<void> {
    const current = () => this.streams === controller && this.channel.open;
    let response: Response;
    try {
      // The channel's end aborts `streams` too (onEnd).
      response = await this.channel.request(this.streamUrl(ids), {
        headers: { Accept: 'text/event-stream' },
        signal: controller.signal,
      });
    } catch {
      if (current()) this.channel.fail(ABNORMAL_CLOSURE, 'the event stream could not be opened');
      return;
    }
    if (!current()) {
      await response.body?.cancel().catch(() => {});
      return;
    }
    if (!response.ok || response.body === null) {
      await this.refused(response, ids, controller);
      return;
    }
    for (const id of ids) {
      const position = this.projects.get(id);
      if (position !== undefined && position.seq !== null && !position.announced) {
        position.announced = true;
        this.channel.emit({ type: 'subscribed', projectId: id, after: position.seq, head: position.seq });
      }
    }
    let closed: { code: number; reason: string } | null = null;
    // A project refused after the stream started (`event: error`, e.g. history_truncated): the
    // service ends the stream, which then reopens without it rather than failing the transport (the
    // client would reconnect from the same position, and be refused again).
    let refused = false;
    const parser = sseParser(
      (message) => {
        if (!current()) return;
        if (message.event === 'error') refused = this.streamError(message) || refused;
        else this.received(message);
      },
      (comment) => {
        if (!current()) return;
        const end = /^closed (\d+)(?:: ?(.*))?$/.exec(comment);
        if (end !== null) closed = { code: Number(end[1]), reason: end[2] ?? '' };
        else this.channel.emit({ type: 'ping', ts: Date.now() }); // `: keep-alive`: the stream lives
      },
    );
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch {
      // Aborted by a reopen or close, or the connection broke: told apart below.
    }
    if (!current()) return;
    if (refused) return this.reopen();
    const end = closed as { code: number; reason: string } | null;
    this.channel.fail(end?.code ?? ABNORMAL_CLOSURE, end?.reason || 'the event stream ended');
  }

  /**
   * `event: error` with `{"error", "message", "projectId", ...}` (docs/protocol.md §7.4): the project
   * gets the `error` frame the socket would send (ref = projectId; `oldest` and `stateSeq` kept) and
   * leaves the stream. True when it named a project of this transport.
   */
  private streamError(message: SseMessage): boolean {
    let body: unknown;
    try {
      body = JSON.parse(message.data);
    } catch {
      return false;
    }
    const { error, projectId, message: text } = (typeof body === 'object' && body !== null ? body : {}) as Record<
      string,
      unknown
    >;
    if (typeof error !== 'string' || typeof projectId !== 'string' || !this.projects.delete(projectId)) return false;
    this.channel.emit({
      type: 'error',
      code: error,
      message: typeof text === 'string' ? text : error,
      ref: projectId,
      ...truncationOf(body),
    });
    return true;
  }

  private received(message: SseMessage): void {
    let event: Event;
    try {
      event = JSON.parse(message.data) as Event;
    } catch {
      return;
    }
    if (typeof event !== 'object' || event === null || typeof event.seq !== 'number') return;
    // The id is every project's position on this stream: it tells where the projects subscribed
    // without a position started (their durable cursor, or the head).
    for (const [id, seq] of parseVector(message.id)) {
      const position = this.projects.get(id);
      if (position === undefined || position.announced) continue;
      const start = id === event.projectId ? event.seq - 1 : seq;
      position.seq = start;
      position.announced = true;
      this.channel.emit({ type: 'subscribed', projectId: id, after: start, head: start });
    }
    const position = this.projects.get(event.projectId);
    if (position === undefined) return;
    if (!position.announced) {
      position.announced = true;
      this.channel.emit({ type: 'subscribed', projectId: event.projectId, after: event.seq - 1, head: event.seq - 1 });
    }
    position.seq = event.seq;
    this.channel.emit(event);
  }

  /**
   * The stream was refused before it started. 401: the token (terminal, 4401). 403, 404, 410, 422:
   * one of the projects (not granted, missing, a position below what is kept or beyond its head):
   * each is asked alone, the ones refused get the `error` frame the socket would send (ref =
   * projectId) and leave the stream, which reopens without them. Anything else ends the transport
   * (retry).
   */
  private async refused(response: Response, ids: string[], controller: AbortController): Promise<void> {
    const error = await errorOf(response);
    const current = () => this.streams === controller && this.channel.open;
    if (!current()) return;
    if (response.status === 401) return this.channel.fail(CloseCode.AUTH, `${error.code}: ${error.message}`);
    if (![403, 404, 410, 422].includes(response.status)) {
      return this.channel.fail(ABNORMAL_CLOSURE, `the event stream was refused: ${error.code}: ${error.message}`);
    }
    let culprits = 0;
    for (const id of ids) {
      const seq = this.projects.get(id)?.seq ?? null;
      const query = new URLSearchParams({ clientId: this.clientId });
      if (seq !== null) query.set('after', String(seq));
      let answer: Response;
      try {
        answer = await this.channel.request(`/api/projects/${encodeURIComponent(id)}/stream?${query.toString()}`, {
          headers: { Accept: 'text/event-stream' },
        });
      } catch {
        break;
      }
      if (answer.ok || answer.status === 401 || answer.status >= 500) {
        // A stream that opens is not read: this only asked whether it would.
        await answer.body?.cancel().catch(() => {});
        continue;
      }
      const refusal = await errorOf(answer, id);
      if (!current()) return;
      culprits += 1;
      this.projects.delete(id);
      this.channel.emit({ type: 'error', code: refusal.code, message: refusal.message, ref: id, ...refusal.truncation });
    }
    if (!current()) return;
    if (culprits > 0) this.reopen();
    else this.channel.fail(ABNORMAL_CLOSURE, `the event stream was refused: ${error.code}: ${error.message}`);
  }
}
