// The seam between the client and the wire. The client speaks the frames of docs/protocol.md §4 in
// both directions; a transport carries them. The WebSocket transport passes them through; the
// fallbacks translate them (sseTransport.ts, pollingTransport.ts: subscribe -> a stream or a poll,
// ack and publish -> HTTP requests, their answers -> `subscribed`, `published`, `error` frames).
import type { ClientMessage, ServerMessage } from '../types/websocket.js';
import type { TransportKind } from '../types/state.js';

/**
 * The WebSocket's own close codes (RFC 6455), which the service's table (codes.ts) leaves out: a
 * close either side asked for, and a connection lost without one (the fallbacks end with it for a
 * failed request too, so the client retries). Neither is terminal.
 */
export const NORMAL_CLOSURE = 1000;
export const ABNORMAL_CLOSURE = 1006;

export interface TransportHandlers {
  /** The transport is ready for the `auth` message. */
  onOpen(): void;
  onMessage(message: ServerMessage): void;
  /** The transport ended without the client asking (called at most once, never after `close`). */
  onClose(close: { code: number; reason: string }): void;
}

export interface Transport {
  readonly kind: TransportKind;
  /** How often a polling transport reads the history (shown in the client's state). */
  readonly pollIntervalMs?: number;
  /** Sends one frame; frames sent before `onOpen` or after the end are dropped. */
  send(message: ClientMessage): void;
  /** Ends the transport; no handler is called after this. */
  close(code: number, reason: string): void;
}

export interface TransportOptions {
  /** The service's HTTP origin, e.g. `https://herald.example`. */
  baseUrl: string;
  clientId: string;
  handlers: TransportHandlers;
}

export type TransportFactory = (options: TransportOptions) => Transport;

// Bivariant, as DOM typings declare handlers: the browser's WebSocket and the `ws` package's
// both fit, though their event classes differ.
type Handler<E> = { bivarianceHack(event: E): void }['bivarianceHack'];

/** The part of the WebSocket API the client uses: the browser's and the `ws` package's fit it. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

const OPEN = 1;

/** `/ws?clientId=…` on the service's origin, with the scheme turned into ws: or wss:. */
export function webSocketUrl(baseUrl: string, clientId: string): string {
  const url = new URL('/ws', baseUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('clientId', clientId);
  return url.toString();
}

function isServerMessage(value: unknown): value is ServerMessage {
  return typeof value === 'object' && value !== null && typeof (value as { type?: unknown }).type === 'string';
}

/** The WebSocket transport over the given constructor (the browser's, or `ws` in Node). */
export function webSocketTransport(WebSocketImpl: WebSocketConstructor): TransportFactory {
  return ({ baseUrl, clientId, handlers }) => {
    const socket = new WebSocketImpl(webSocketUrl(baseUrl, clientId));
    let ended = false;
    socket.onopen = () => {
      if (!ended) handlers.onOpen();
    };
    socket.onmessage = (event) => {
      if (ended || typeof event.data !== 'string') return;
      let message: unknown;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // the service sends only JSON text; anything else is noise, not a reason to drop it
      }
      if (isServerMessage(message)) handlers.onMessage(message);
    };
    socket.onclose = (event) => {
      if (ended) return;
      ended = true;
      handlers.onClose({ code: event.code, reason: event.reason });
    };
    // Every error is followed by a close event, which carries what there is to know. The handler
    // stays set: the `ws` package throws an error event that has no listener.
    socket.onerror = () => {};
    return {
      kind: 'websocket',
      send(message) {
        if (!ended && socket.readyState === OPEN) socket.send(JSON.stringify(message));
      },
      close(code, reason) {
        ended = true;
        try {
          socket.close(code, reason);
        } catch {
          // Already closing, or a code the implementation refuses: the socket is let go either way.
        }
      },
    };
  };
}
