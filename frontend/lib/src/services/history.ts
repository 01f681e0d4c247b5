// Reads of the log over HTTP (docs/protocol.md §3): ranges of the history, and the state snapshot.
import type { Event, EventPage, ProjectState } from '../types/websocket.js';
import { errorOf } from './errors.js';

export interface HttpRead {
  fetch: typeof fetch;
  baseUrl: string;
  token: string;
  projectId: string;
}

export interface HistoryRequest extends HttpRead {
  /** Events with after < seq < before, ascending. */
  after: number;
  before: number;
}

function projectUrl(request: HttpRead, path: string, query: Record<string, string>): URL {
  const url = new URL(`/api/projects/${encodeURIComponent(request.projectId)}/${path}`, request.baseUrl);
  url.search = new URLSearchParams(query).toString();
  return url;
}

async function getJson<T>(request: HttpRead, url: URL): Promise<T> {
  const response = await request.fetch(url, { headers: { Authorization: `Bearer ${request.token}` } });
  if (!response.ok) throw await errorOf(response, request.projectId);
  return (await response.json()) as T;
}

/**
 * Reads a range of a project's log (`GET /api/projects/{id}/events`), following `next` until the
 * range is complete. Throws a HeraldError for a refusal (its `status` says which), a TypeError for
 * a network failure.
 */
export async function readHistory(request: HistoryRequest): Promise<Event[]> {
  const events: Event[] = [];
  let after = request.after;
  for (;;) {
    const query = { after: String(after), before: String(request.before), limit: '1000' };
    const page = await getJson<EventPage>(request, projectUrl(request, 'events', query));
    events.push(...page.events);
    if (page.next === null) return events;
    after = page.next;
  }
}

/**
 * The project's state snapshot (`GET /api/projects/{id}/state?limit=L`, docs/protocol.md): the
 * latest event of each subject, newest first, as of `seq`. Throws as `readHistory` does.
 */
export async function readState(request: HttpRead & { limit: number }): Promise<ProjectState> {
  return getJson<ProjectState>(request, projectUrl(request, 'state', { limit: String(request.limit) }));
}
