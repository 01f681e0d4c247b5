// The HTTP reads the dashboard makes beside the client's (docs/protocol.md §3, §7.3): the projects a
// token can read, pages of a project's history, every client's cursor (admin), and the auditor's
// reads: the chain's verification, the ack ledger and the export. Each throws a HeraldError for a
// refusal (its `status` says which) and a TypeError when the service cannot be reached.
import {
  errorOf,
  type AckRecord,
  type ChainBroken,
  type ChainIntact,
  type Cursor,
  type Event,
  type EventPage,
  type EventType,
  type ProjectInfo,
} from '@herald/client';

export type { ProjectInfo };

export interface ApiOptions {
  token: string;
  /** The service's origin (default: the page's). */
  baseUrl?: string;
  signal?: AbortSignal;
}

async function getJson<T>(path: string, query: Record<string, string>, options: ApiOptions): Promise<T> {
  const url = new URL(path, options.baseUrl ?? window.location.origin);
  url.search = new URLSearchParams(query).toString();
  const response = await fetch(url, { headers: { Authorization: `Bearer ${options.token}` }, signal: options.signal });
  if (!response.ok) throw await errorOf(response);
  return (await response.json()) as T;
}

const projectPath = (projectId: string, rest: string) => `/api/projects/${encodeURIComponent(projectId)}/${rest}`;

/** The projects the token names, with each one's head (latest seq). */
export async function listProjects(options: ApiOptions): Promise<ProjectInfo[]> {
  const body = await getJson<{ projects: ProjectInfo[] }>('/api/projects', {}, options);
  return body.projects;
}

/** Which events a history page or an export holds; null leaves a filter out. */
export interface EventFilter {
  type: EventType | null;
  /** ISO 8601 UTC: only events stamped at or after this time. */
  since: string | null;
  /** ISO 8601 UTC: only events stamped before this time. */
  until: string | null;
  /** A run id, a PR number or a head sha, matched by the service against the event's data. */
  subject: string | null;
}

export const NO_FILTER: EventFilter = { type: null, since: null, until: null, subject: null };

function filterQuery(filter: EventFilter): Record<string, string> {
  const query: Record<string, string> = {};
  if (filter.type !== null) query.type = filter.type;
  if (filter.since !== null) query.since = filter.since;
  if (filter.until !== null) query.until = filter.until;
  if (filter.subject !== null) query.subject = filter.subject;
  return query;
}

export interface PageRequest extends EventFilter {
  projectId: string;
  /** Only events with seq below this (the `next` of the page before); null for the newest page. */
  before: number | null;
  limit: number;
}

/** One page of the history, newest first; `next` is the `before` of the following (older) page. */
export async function readPage(request: PageRequest, options: ApiOptions): Promise<EventPage> {
  const query: Record<string, string> = { order: 'desc', limit: String(request.limit), ...filterQuery(request) };
  if (request.before !== null) query.before = String(request.before);
  return getJson<EventPage>(projectPath(request.projectId, 'events'), query, options);
}

/** How far each client has acked the project (admin scope). */
export async function readCursors(projectId: string, options: ApiOptions): Promise<Cursor[]> {
  const body = await getJson<{ cursors: Cursor[] }>(projectPath(projectId, 'cursors'), {}, options);
  return body.cursors;
}

/** The answer of `GET …/audit/verify` (audit scope): the chain intact through its head, or where it breaks. */
export type ChainReport = ChainIntact | ChainBroken;

/** Recomputes the project's hash chain on the service (audit scope); may take a while on a long log. */
export async function verifyChain(projectId: string, options: ApiOptions): Promise<ChainReport> {
  return getJson<ChainReport>(projectPath(projectId, 'audit/verify'), {}, options);
}

/** Every client whose acks reached `seq`, with when they first did (audit scope). */
export async function readAcks(projectId: string, seq: number, options: ApiOptions): Promise<AckRecord[]> {
  const body = await getJson<{ acks: AckRecord[] }>(projectPath(projectId, 'acks'), { seq: String(seq) }, options);
  return body.acks;
}

export type ExportFormat = 'ndjson' | 'csv';

const EXPORT_TYPES: Record<ExportFormat, string> = { ndjson: 'application/x-ndjson', csv: 'text/csv' };

/**
 * Every event matching `filter`, as one file (`GET …/export`, audit scope). The token is a Bearer
 * token, not a cookie, so the browser cannot fetch this by a plain link: it is read here and handed
 * back as a Blob. `onProgress` is told the bytes received so far, and the total when the service
 * announced one (a streamed export usually has none).
 */
export async function exportEvents(
  projectId: string,
  format: ExportFormat,
  filter: EventFilter,
  options: ApiOptions & { onProgress?: (received: number, total: number | null) => void },
): Promise<Blob> {
  const url = new URL(projectPath(projectId, 'export'), options.baseUrl ?? window.location.origin);
  url.search = new URLSearchParams({ format, ...filterQuery(filter) }).toString();
  const response = await fetch(url, { headers: { Authorization: `Bearer ${options.token}` }, signal: options.signal });
  if (!response.ok) throw await errorOf(response, projectId);
  const type = response.headers.get('Content-Type') ?? EXPORT_TYPES[format];
  const length = Number(response.headers.get('Content-Length'));
  const total = Number.isFinite(length) && length > 0 ? length : null;
  if (response.body === null) return new Blob([await response.arrayBuffer()], { type });
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  let received = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.byteLength;
    options.onProgress?.(received, total);
  }
  return new Blob(chunks, { type });
}

export type { AckRecord, Cursor, Event };
