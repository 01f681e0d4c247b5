// The dashboard in jsdom, on the real client and store with a fake socket and a fake HTTP service:
// the auth gate (fragment, stored token, form, 401, expiry), a card fed by the snapshot and then
// live events, an action that shows as queued until the service answers `published`, and the
// project page's audit tools following the token's scopes.
import { act, cleanup, fireEvent, render, screen, within } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ProjectState } from '@herald/client';
import { fakeHttp, fakeSockets, hashOf, json } from '../tests/fakes';
import App from './App';

function base64Url(value: unknown): string {
  return btoa(JSON.stringify(value)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** A token shaped as the service's (the page reads its claims; only the service checks it). */
function token(claims: Record<string, unknown> = {}): string {
  const payload = { sub: 'ada', projects: '*', scopes: ['admin'], exp: Math.floor(Date.now() / 1000) + 3600, ...claims };
  return `${base64Url({ alg: 'HS256', typ: 'JWT' })}.${base64Url(payload)}.signature`;
}

const RUN = {
  type: 'agent_run_progress' as const,
  projectId: 'web',
  seq: 1,
  messageId: 'm1',
  timestamp: new Date().toISOString(),
  hash: hashOf(1),
  data: { runId: 'run-7', status: 'running', progress: 40, step: 'Compile', message: 'Build the app' },
};

function service() {
  const http = fakeHttp();
  http.route((request) => {
    if (request.path === '/api/projects') return json(200, { projects: [{ id: 'web', name: 'Web app', repo: 'octo/web', head: 1 }] });
    if (request.url.pathname === '/api/projects/web/state') {
      const state: ProjectState = { projectId: 'web', seq: 1, agentRuns: [RUN], pullRequests: [], validations: [], notifications: [] };
      return json(200, state);
    }
    return undefined;
  });
  const sockets = fakeSockets();
  vi.stubGlobal('fetch', http.fetch);
  vi.stubGlobal('WebSocket', sockets.WebSocket);
  return { http, sockets };
}

/** The connection indicator (a status region; action states are others). */
function indicator(): HTMLElement {
  const element = document.querySelector<HTMLElement>('[data-connection]');
  if (element === null) throw new Error('no connection indicator');
  return element;
}

beforeEach(() => {
  localStorage.clear();
  window.history.replaceState(null, '', '/');
});

afterEach(cleanup);

describe('signing in', () => {
  it('asks for a token when the page has none, and refuses one that is not shaped like a token', async () => {
    service();
    render(<App />);
    fireEvent.change(screen.getByLabelText('Access token'), { target: { value: 'not a token' } });
    fireEvent.click(screen.getByRole('button', { name: 'Open the dashboard' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/does not look like a Herald token/);
  });

  it('takes the token from #token=, keeps it, and removes it from the address bar', async () => {
    service();
    const given = token();
    window.history.replaceState(null, '', `/#token=${given}`);
    render(<App />);
    expect(localStorage.getItem('herald.token')).toBe(given);
    expect(window.location.hash).toBe('');
    expect(window.location.pathname).toBe('/');
    expect(await screen.findByRole('heading', { name: 'Web app' })).toBeDefined();
  });

  it('brings the form back with a clear message when the service refuses the token (401)', async () => {
    const { http } = service();
    http.route((request) => (request.path === '/api/projects' ? json(401, { error: 'unauthorized', message: 'token expired' }) : undefined));
    localStorage.setItem('herald.token', token());
    render(<App />);
    expect((await screen.findByRole('alert')).textContent).toMatch(/refused this token: token expired/);
    expect(localStorage.getItem('herald.token')).toBeNull();
  });

  it('does not use a stored token that has expired', () => {
    service();
    localStorage.setItem('herald.token', token({ exp: Math.floor(Date.now() / 1000) - 60 }));
    render(<App />);
    expect(screen.getByRole('alert').textContent).toMatch(/expired/);
  });
});

describe('the overview', () => {
  it('shows a project card from the snapshot, then live events, with the connection in words', async () => {
    const { sockets } = service();
    localStorage.setItem('herald.token', token());
    render(<App />);
    const card = await screen.findByRole('article', { name: 'Web app' });
    expect(card.getAttribute('data-project-id')).toBe('web');
    const run = await within(card).findByText('Build the app');
    expect(run.closest('li')?.textContent).toMatch(/Running.*40%.*Compile/);
    expect(indicator().textContent).toMatch(/^Connecting/);

    act(() => sockets.last.accept());
    expect(indicator().textContent).toBe('Connected · via WebSocket');
    await vi.waitFor(() => expect(sockets.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'web', after: 1 }]));
    act(() =>
      sockets.last.receive({ ...RUN, seq: 2, messageId: 'm2', hash: hashOf(2), data: { ...RUN.data, status: 'succeeded', progress: 100, step: 'Done' } }),
    );
    expect(within(card).getByText('Build the app').closest('li')?.textContent).toMatch(/Succeeded.*100%.*Done/);
  });

  it('shows "cancel" as queued until the service answers published', async () => {
    const { sockets } = service();
    localStorage.setItem('herald.token', token());
    render(<App />);
    const card = await screen.findByRole('article', { name: 'Web app' });
    fireEvent.click(await within(card).findByRole('button', { name: 'Cancel run-7' }));
    expect(within(card).getByText('Queued')).toBeDefined();
    expect(indicator().textContent).toMatch(/1 queued/);

    act(() => sockets.last.accept());
    const [publish] = sockets.last.frames('agent_run_progress');
    expect(publish.data).toEqual({ ...RUN.data, status: 'cancelled' });
    expect(within(card).getByText('Sending…')).toBeDefined();
    await act(async () => sockets.last.receive({ type: 'published', projectId: 'web', messageId: publish.messageId ?? '', seq: 2 }));
    expect(within(card).queryByText('Sending…')).toBeNull();
    expect(within(card).getByRole('button', { name: 'Cancel run-7' })).toBeDefined();
  });

  it('offers no actions to a token that cannot publish', async () => {
    service();
    localStorage.setItem('herald.token', token({ scopes: ['subscribe'] }));
    render(<App />);
    const card = await screen.findByRole('article', { name: 'Web app' });
    await within(card).findByText('Build the app');
    expect(within(card).queryByRole('button', { name: /Cancel/ })).toBeNull();
  });
});

describe('the project page', () => {
  /** The service of `service()`, with the project's history and the audit reads. */
  function auditedService(verify: () => Response) {
    const { http } = service();
    http.route((request) => {
      switch (request.url.pathname) {
        case '/api/projects/web/events':
          return json(200, { events: [RUN], next: null });
        case '/api/projects/web/audit/verify':
          return verify();
        case '/api/projects/web/cursors':
          return json(200, { cursors: [] });
        default:
          return undefined;
      }
    });
    window.history.replaceState(null, '', '/projects/web');
  }

  async function waitForRow(history: HTMLElement): Promise<void> {
    await vi.waitFor(() => expect(history.querySelector('li.history-row[data-seq="1"]')).not.toBeNull());
  }

  it('shows an auditor the chain verified, the export and "seen by" on each event', async () => {
    auditedService(() => json(200, { ok: true, head: 1, hash: hashOf(1) }));
    localStorage.setItem('herald.token', token({ scopes: ['audit', 'subscribe'] }));
    render(<App />);
    expect(await screen.findByText('Chain verified through seq 1')).toBeDefined();
    const history = screen.getByRole('region', { name: 'Event history' });
    await within(history).findByRole('button', { name: 'Seen by #1' });
    expect(within(history).getByRole('group', { name: 'Export the events shown' })).toBeDefined();
    expect(screen.queryByRole('region', { name: 'Clients and lag' })).toBeNull(); // audit is not admin
  });

  it('tells a token without the audit scope, quietly, that it cannot verify, and offers no audit tools', async () => {
    auditedService(() => json(403, { error: 'forbidden', message: 'this token lacks the audit scope' }));
    localStorage.setItem('herald.token', token({ scopes: ['subscribe'] }));
    render(<App />);
    expect(await screen.findByText('Cannot verify the chain (needs the audit scope)')).toBeDefined();
    const history = screen.getByRole('region', { name: 'Event history' });
    await waitForRow(history);
    expect(within(history).queryByRole('button', { name: /Seen by/ })).toBeNull();
    expect(within(history).queryByRole('group', { name: 'Export the events shown' })).toBeNull();
  });
});
