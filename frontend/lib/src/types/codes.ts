// Generated from service/codes.py and service/messages.py by frontend/scripts/gen-types.mjs. Do not edit: run `npm run gen:types`.

/** The `error` of an HTTP error body and the `code` of a WebSocket `error` frame. */
export const ERROR_CODES = [
  'unauthorized',
  'forbidden',
  'not_found',
  'method_not_allowed',
  'exists',
  'invalid_json',
  'invalid_data',
  'invalid_ack',
  'invalid_cursor',
  'history_truncated',
  'history_rewritten',
  'invalid_frame',
  'unknown_type',
  'not_subscribed',
  'rate_limited',
  'too_large',
  'unavailable',
  'internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** WebSocket close codes of docs/protocol.md §4. */
export const CloseCode = {
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  AUTH: 4401,
  ORIGIN: 4403,
  HEARTBEAT_TIMEOUT: 4408,
  SLOW_CONSUMER: 4429,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** Reconnecting cannot help until something changes (a new token, another origin, a smaller message). */
export const TERMINAL_CLOSE_CODES: ReadonlySet<number> = new Set([1009, 4401, 4403]);

/** Reconnect with backoff and resume by cursor: nothing is lost. */
export const RETRY_CLOSE_CODES: ReadonlySet<number> = new Set([1001, 1008, 1012, 1013, 4408, 4429]);

/** A WebSocket message (or an HTTP publish body) over this many bytes is refused: 1009, or 413. */
export const MAX_MESSAGE_BYTES = 65536;

/** At most this many events in one batch publish, in a body of at most MAX_BATCH_BYTES. */
export const MAX_BATCH = 1000;
export const MAX_BATCH_BYTES = 1048576;
