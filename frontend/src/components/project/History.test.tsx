// The history's auditor tools against a fake service: the time and subject filters as the service
// receives them, the export (Bearer header, the filters, bytes received, a file saved by name), and
// "seen by" read only when opened.
import { cleanup, fireEvent, render, screen, within } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Event } from '@herald/client';
import { fakeHttp, json, prEvent, type FakeRequest } from '../../../tests/fakes';
import { History } from './History';

const EVENTS = '/api/projects/p1/events';
const EXPORT = '/api/projects/p1/export';
const ACKS = '/api/projects/p1/acks';

/** The log the fake service pages through: #5 … #1, #3 about pull request 7. */
const LOG: Event[] = [5, 4, 3, 2, 1].map((seq) => prEvent(seq, seq === 3 ? 7 : 1));

function service() {
  const http = fakeHttp();
  http.route((request) => {
    if (request.url.pathname !== EVENTS) return undefined;
    const subject = request.url.searchParams.get('subject');
    return json(200, { events: subject === null ? LOG : LOG.filter((event) => String(event.data.number) === subject), next: null });
  });
  vi.stubGlobal('fetch', http.fetch);
  return http;
}

const seqs = () =>
  screen.queryAllByRole('listitem').flatMap((item) => (item.hasAttribute('data-seq') ? [Number(item.getAttribute('data-seq'))] : []));
/** The history's row of an event, once shown. */
async function row(seq: number): Promise<HTMLElement> {
  return vi.waitFor(() => {
    const found = document.querySelector<HTMLElement>(`li.history-row[data-seq="${seq}"]`);
    if (found === null) throw new Error(`no row #${seq}`);
    return found;
  });
}
const lastQuery = (requests: FakeRequest[]) => Object.fromEntries(requests[requests.length - 1].url.searchParams);

beforeEach(() => {
  vi.stubGlobal('URL', Object.assign(URL, { createObjectURL: vi.fn(() => 'blob:export'), revokeObjectURL: vi.fn() }));
});

afterEach(cleanup);

describe('the history filters', () => {
  it('send the time range as UTC ISO times and the subject trimmed, and show what the service answers', async () => {
    const http = service();
    render(<History projectId="p1" token="tok" auditor={false} />);
    await row(5);
    expect(seqs()).toEqual([5, 4, 3, 2, 1]);

    fireEvent.change(screen.getByLabelText('Since'), { target: { value: '2026-03-01T09:30' } });
    fireEvent.change(screen.getByLabelText('Until'), { target: { value: '2026-03-02T00:00' } });
    fireEvent.change(screen.getByLabelText('Subject'), { target: { value: ' 7 ' } });
    expect(http.to(EVENTS)).toHaveLength(1); // nothing asked until Apply
    fireEvent.click(screen.getByRole('button', { name: 'Apply' }));
    await vi.waitFor(() => expect(seqs()).toEqual([3]));
    expect(lastQuery(http.to(EVENTS))).toEqual({
      order: 'desc',
      limit: '25',
      // The browser's wall clock, whatever its zone, as the UTC instant the service compares with.
      since: new Date(2026, 2, 1, 9, 30).toISOString(),
      until: new Date(2026, 2, 2, 0, 0).toISOString(),
      subject: '7',
    });

    fireEvent.change(screen.getByLabelText('Type'), { target: { value: 'agent_run_progress' } });
    await vi.waitFor(() => expect(lastQuery(http.to(EVENTS))).toMatchObject({ type: 'agent_run_progress', subject: '7' }));

    fireEvent.click(screen.getByRole('button', { name: 'Clear filters' }));
    await vi.waitFor(() => expect(seqs()).toEqual([5, 4, 3, 2, 1]));
    expect(lastQuery(http.to(EVENTS))).toEqual({ order: 'desc', limit: '25' });
    expect((screen.getByLabelText('Since') as HTMLInputElement).value).toBe('');
  });

  it('refuse a range that ends before it starts, without asking the service', async () => {
    const http = service();
    render(<History projectId="p1" token="tok" auditor={false} />);
    await row(5);
    fireEvent.change(screen.getByLabelText('Since'), { target: { value: '2026-03-02T00:00' } });
    fireEvent.change(screen.getByLabelText('Until'), { target: { value: '2026-03-01T00:00' } });
    fireEvent.click(screen.getByRole('button', { name: 'Apply' }));
    expect(screen.getByRole('alert').textContent).toBe('Since must be before until.');
    expect(http.to(EVENTS)).toHaveLength(1);
  });

  it('say when nothing matches, and show the service’s refusal of a filter', async () => {
    const http = service();
    render(<History projectId="p1" token="tok" auditor={false} />);
    await row(5);
    fireEvent.change(screen.getByLabelText('Subject'), { target: { value: 'no-such-run' } });
    fireEvent.click(screen.getByRole('button', { name: 'Apply' }));
    expect(await screen.findByText('No events match these filters')).toBeDefined();

    http.route((request) =>
      request.url.searchParams.has('since')
        ? json(422, { error: 'invalid_data', message: 'since: not an ISO 8601 time', field: 'since' })
        : undefined,
    );
    fireEvent.change(screen.getByLabelText('Since'), { target: { value: '2026-03-01T09:30' } });
    fireEvent.click(screen.getByRole('button', { name: 'Apply' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/^Could not read the history: since: not an ISO 8601 time/);
  });

  it('offer neither the export nor "seen by" to a token without the audit scope', async () => {
    service();
    render(<History projectId="p1" token="tok" auditor={false} />);
    await row(5);
    expect(screen.queryByRole('group', { name: 'Export the events shown' })).toBeNull();
    expect(screen.queryByRole('button', { name: /Seen by/ })).toBeNull();
  });
});

describe('the export', () => {
  it('fetches with the token and the filters applied, shows the bytes received, and saves PROJECT-events.ndjson', async () => {
    const http = service();
    let body!: ReadableStreamDefaultController<Uint8Array>;
    const stream = new ReadableStream<Uint8Array>({ start: (controller) => void (body = controller) });
    const line = new TextEncoder().encode(`${JSON.stringify(LOG[2])}\n`);
    const headers = { 'Content-Type': 'application/x-ndjson', 'Content-Length': String(2 * line.byteLength) };
    http.route((request) => (request.url.pathname === EXPORT ? new Response(stream, { status: 200, headers }) : undefined));
    const clicked: HTMLAnchorElement[] = [];
    vi.spyOn(HTMLAnchorElement.prototype, 'click').mockImplementation(function (this: HTMLAnchorElement) {
      clicked.push(this);
    });
    render(<History projectId="p1" token="tok" auditor />);
    await row(5);
    fireEvent.change(screen.getByLabelText('Subject'), { target: { value: '7' } });
    fireEvent.click(screen.getByRole('button', { name: 'Apply' }));
    await vi.waitFor(() => expect(seqs()).toEqual([3]));

    fireEvent.click(screen.getByRole('button', { name: 'Export NDJSON' }));
    expect(screen.getByRole('button', { name: 'Export CSV' })).toHaveProperty('disabled', true);
    body.enqueue(line);
    expect(await screen.findByText(`Downloading… ${line.byteLength} B of ${2 * line.byteLength} B`)).toBeDefined();
    body.enqueue(line);
    body.close();

    expect(await screen.findByText(/^Saved p1-events\.ndjson/)).toBeDefined();
    const [request] = http.to(EXPORT);
    expect(request.headers.get('Authorization')).toBe('Bearer tok');
    expect(Object.fromEntries(request.url.searchParams)).toEqual({ format: 'ndjson', subject: '7' });
    expect(clicked.map((link) => [link.download, link.href])).toEqual([['p1-events.ndjson', 'blob:export']]);
    const saved = vi.mocked(URL.createObjectURL).mock.calls[0][0] as Blob;
    expect(saved.type).toBe('application/x-ndjson');
    expect(await saved.text()).toBe(new TextDecoder().decode(line).repeat(2));
  });

  it('says why it could not export', async () => {
    const http = service();
    http.route((request) => (request.url.pathname === EXPORT ? json(403, { error: 'forbidden', message: 'no' }) : undefined));
    render(<History projectId="p1" token="tok" auditor />);
    await row(5);
    fireEvent.click(screen.getByRole('button', { name: 'Export CSV' }));
    expect((await screen.findByRole('alert')).textContent).toBe('Could not export: this token needs the audit scope');
    expect(lastQuery(http.to(EXPORT))).toEqual({ format: 'csv' });
  });
});

describe('seen by', () => {
  it('reads the ack ledger of an event only when opened, and lists who and when', async () => {
    const http = service();
    const ackedAt = new Date(Date.now() - 5 * 60_000).toISOString();
    http.route((request) =>
      request.url.pathname === ACKS
        ? json(
            200,
            request.url.searchParams.get('seq') === '4' ? { acks: [{ user: 'ada', clientId: 'laptop-1', seq: 5, ackedAt }] } : { acks: [] },
          )
        : undefined,
    );
    render(<History projectId="p1" token="tok" auditor />);
    const fourth = await row(4);
    expect(http.to(ACKS)).toHaveLength(0);

    const toggle = within(fourth).getByRole('button', { name: 'Seen by #4' });
    fireEvent.click(toggle);
    expect(toggle.getAttribute('aria-expanded')).toBe('true');
    const list = await within(fourth).findByRole('list', { name: 'Seen by, event #4' });
    expect(within(list).getByRole('listitem').textContent).toBe('adalaptop-15 min ago');
    expect(lastQuery(http.to(ACKS))).toEqual({ seq: '4' });

    const other = await row(5);
    fireEvent.click(within(other).getByRole('button', { name: 'Seen by #5' }));
    expect(await within(other).findByText('Not yet seen by any client.')).toBeDefined();

    fireEvent.click(toggle); // closed, then opened again: read afresh
    expect(within(fourth).queryByRole('list')).toBeNull();
    fireEvent.click(toggle);
    await within(fourth).findByRole('list', { name: 'Seen by, event #4' });
    expect(http.to(ACKS).map((request) => request.url.searchParams.get('seq'))).toEqual(['4', '5', '4']);
  });

  it('shows a failure with a way to try again, and a quiet note without the audit scope', async () => {
    const http = service();
    let fail = true;
    http.route((request) => {
      if (request.url.pathname !== ACKS) return undefined;
      if (request.url.searchParams.get('seq') === '1') return json(403, { error: 'forbidden', message: 'no' });
      return fail ? json(503, { error: 'unavailable', message: 'try later' }) : json(200, { acks: [] });
    });
    render(<History projectId="p1" token="tok" auditor />);
    const second = await row(2);
    fireEvent.click(within(second).getByRole('button', { name: 'Seen by #2' }));
    expect((await within(second).findByRole('alert')).textContent).toMatch(/^Could not read who has seen #2: try later/);
    fail = false;
    fireEvent.click(within(second).getByRole('button', { name: 'Try again' }));
    expect(await within(second).findByText('Not yet seen by any client.')).toBeDefined();

    const first = await row(1);
    fireEvent.click(within(first).getByRole('button', { name: 'Seen by #1' }));
    expect(await within(first).findByText('Cannot tell who has seen it (needs the audit scope).')).toBeDefined();
  });
});
