import type { ErrorCode } from '../types/codes.js';
import type { ErrorBody } from '../types/websocket.js';

/**
 * A read below the oldest event the service keeps (docs/protocol.md §7.4): an `error` frame over the
 * socket, `event: error` over SSE, 410 over HTTP, each with `oldest` and `stateSeq`. Named here, and
 * checked against codes.ts's generated list, because the client acts on it.
 */
export const HISTORY_TRUNCATED = 'history_truncated' satisfies ErrorCode;
/**
 * The log's event at the client's position is another than the one the client has (its `afterHash`,
 * or the hash kept with its durable cursor, differs): the database failed over and reissued that seq
 * (docs/protocol.md §7.5). The answer carries `seq` (the position) and `stateSeq`.
 */
export const HISTORY_REWRITTEN = 'history_rewritten' satisfies ErrorCode;
/** A position beyond the project's head: the log is not the one the client read (a reset, a restore). */
export const INVALID_CURSOR = 'invalid_cursor' satisfies ErrorCode;

/** What a `history_truncated` answer says besides its code: the oldest seq kept, and the state's seq. */
export interface Truncation {
  oldest: number;
  stateSeq: number;
}

/** `oldest` and `stateSeq` of an error body or frame, when both are there and are seqs. */
export function truncationOf(value: unknown): Truncation | null {
  const { oldest, stateSeq } = (typeof value === 'object' && value !== null ? value : {}) as Partial<Truncation>;
  const isSeq = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;
  return isSeq(oldest) && isSeq(stateSeq) ? { oldest, stateSeq } : null;
}

/** What a `history_rewritten` answer says besides its code: the client's position, and the state's seq. */
export interface Rewrite {
  seq: number;
  stateSeq: number;
}

/** `seq` and `stateSeq` of an error body or frame, when both are there and are seqs. */
export function rewriteOf(value: unknown): Rewrite | null {
  const { seq, stateSeq } = (typeof value === 'object' && value !== null ? value : {}) as Partial<Rewrite>;
  const isSeq = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;
  return isSeq(seq) && isSeq(stateSeq) ? { seq, stateSeq } : null;
}

/**
 * Something the service refused (`code` is one of codes.ts's ERROR_CODES: a publish's `error`
 * frame, an HTTP error body), or a publish too large to send. `ref` names what was refused: a
 * messageId, a projectId, or null.
 */
export class HeraldError extends Error {
  readonly code: string;
  readonly ref: string | null;
  /** The HTTP status, for an answer over HTTP. */
  readonly status: number | null;
  /** For `history_truncated`: the oldest seq kept and the state snapshot's seq. */
  readonly truncation: Truncation | null;

  constructor(
    code: string,
    message: string,
    ref: string | null = null,
    status: number | null = null,
    truncation: Truncation | null = null,
  ) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    this.ref = ref;
    this.status = status;
    this.truncation = truncation;
  }
}

/**
 * The error of a non-2xx HTTP answer: the service's JSON body (`{"error", "message"}`) when there
 * is one, else a code told by the status (a proxy's page, an empty body).
 */
export async function errorOf(response: Response, ref: string | null = null): Promise<HeraldError> {
  let body: Partial<ErrorBody> = {};
  try {
    body = (await response.json()) as Partial<ErrorBody>;
  } catch {
    // Not the service's JSON: the status alone tells what happened.
  }
  const code = typeof body.error === 'string' ? body.error : codeOfStatus(response.status);
  const message = typeof body.message === 'string' ? body.message : `HTTP ${response.status}`;
  return new HeraldError(code, message, ref, response.status, truncationOf(body));
}

function codeOfStatus(status: number): string {
  switch (status) {
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not_found';
    case 410:
      return HISTORY_TRUNCATED;
    case 413:
      return 'too_large';
    case 429:
      return 'rate_limited';
    default:
      return status >= 500 ? 'unavailable' : 'invalid_data';
  }
}

/**
 * Whether a request refused with this status may succeed later, unchanged: a busy or unreachable
 * service (5xx), a rate limit (429), a timeout (408). Any other 4xx is the answer.
 */
export function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408;
}
