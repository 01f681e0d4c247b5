import type { Event, EventPage } from '../types/websocket';

export interface HistoryRequest {
  fetch: typeof fetch;
  baseUrl: string;
  token: string;
  projectId: string;
  /** Events with after < seq < before, ascending. */
  after: number;
  before: number;
}

/**
 * Reads a range of a project's log over HTTP (`GET /api/projects/{id}/events`), following `next`
 * until the range is complete. Throws on a network failure or a non-200 answer.
 */
export async function readHistory(request: HistoryRequest): Promise<Event[]> {
  const events: Event[] = [];
  let after = request.after;
  for (;;) {
    const url = new URL(`/api/projects/${encodeURIComponent(request.projectId)}/events`, request.baseUrl);
    url.search = new URLSearchParams({ after: String(after), before: String(request.before), limit: '1000' }).toString();
    const response = await request.fetch(url, { headers: { Authorization: `Bearer ${request.token}` } });
    if (!response.ok) {
      throw new Error(`history of ${request.projectId}: HTTP ${response.status}`);
    }
    const page = (await response.json()) as EventPage;
    events.push(...page.events);
    if (page.next === null) return events;
    after = page.next;
  }
}
