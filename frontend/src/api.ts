// The HTTP reads the dashboard makes beside the client's (docs/protocol.md §3): the projects a token can
// read, pages of a project's history, and every client's cursor (admin). Each throws a HeraldError
// for a refusal (its `status` says which) and a TypeError when the service cannot be reached.
import { errorOf } from './services/errors';
import type { Cursor, Event, EventPage, EventType, Project } from './types/websocket';

export type ProjectInfo = Project;

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

export interface PageRequest {
  projectId: string;
  /** Only events with seq below this (the `next` of the page before); null for the newest page. */
  before: number | null;
  limit: number;
  type: EventType | null;
}

/** One page of the history, newest first; `next` is the `before` of the following (older) page. */
export async function readPage(request: PageRequest, options: ApiOptions): Promise<EventPage> {
  const query: Record<string, string> = { order: 'desc', limit: String(request.limit) };
  if (request.before !== null) query.before = String(request.before);
  if (request.type !== null) query.type = request.type;
  return getJson<EventPage>(projectPath(request.projectId, 'events'), query, options);
}

/** How far each client has acked the project (admin scope). */
export async function readCursors(projectId: string, options: ApiOptions): Promise<Cursor[]> {
  const body = await getJson<{ cursors: Cursor[] }>(projectPath(projectId, 'cursors'), {}, options);
  return body.cursors;
}

export type { Cursor, Event };
