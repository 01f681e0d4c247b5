// The project's event log, newest first, a page at a time, filtered by type. On the newest page,
// events that arrive live are added at the top as they come.
import { useContext, useEffect, useState } from 'react';
import { readPage } from '../../api';
import { HeraldContext } from '../../hooks/useWebSocket';
import type { Event, EventPage, EventType } from '../../types/websocket';
import { EmptyState } from '../EmptyState';
import { ExternalLink } from '../ExternalLink';
import { RelativeTime } from '../RelativeTime';
import { StatusBadge } from '../dashboard/status';
import { TYPE_NAMES, describeEvent } from './describe';

export const PAGE_SIZE = 25;

const TYPES = Object.keys(TYPE_NAMES) as EventType[];

interface Loaded {
  key: string;
  page: EventPage | null;
  error: string | null;
}

function Row({ event }: { event: Event }) {
  const line = describeEvent(event);
  return (
    <li className="history-row" data-seq={event.seq} data-type={event.type}>
      <span className="history-seq mono">#{event.seq}</span>
      <span className="history-type">{TYPE_NAMES[event.type] ?? event.type}</span>
      <StatusBadge look={line.look} className="history-status" />
      <span className="history-subject">
        <ExternalLink href={line.url}>{line.subject}</ExternalLink>
        {line.detail !== '' && <span className="muted"> · {line.detail}</span>}
      </span>
      <RelativeTime iso={event.timestamp} className="time history-time" />
    </li>
  );
}

export function History({ projectId, token }: { projectId: string; token: string }) {
  const client = useContext(HeraldContext);
  const [type, setType] = useState<EventType | null>(null);
  /** The `before` of each page seen, newest first: the last one is the page shown (null: the newest). */
  const [pages, setPages] = useState<(number | null)[]>([null]);
  const [loaded, setLoaded] = useState<Loaded>({ key: '', page: null, error: null });
  /** Events that arrived live while the newest page is shown, newest first. */
  const [live, setLive] = useState<{ key: string; events: Event[] }>({ key: '', events: [] });
  const [attempt, setAttempt] = useState(0);

  const before = pages[pages.length - 1];
  const key = `${projectId}|${type ?? ''}|${before ?? ''}|${attempt}`;

  useEffect(() => {
    const controller = new AbortController();
    readPage({ projectId, before, limit: PAGE_SIZE, type, since: null, until: null, subject: null }, { token, signal: controller.signal }).then(
      (page) => setLoaded({ key, page, error: null }),
      (error: unknown) => {
        if (!controller.signal.aborted) setLoaded({ key, page: null, error: error instanceof Error ? error.message : String(error) });
      },
    );
    return () => controller.abort();
  }, [projectId, before, type, token, key]);

  useEffect(() => {
    if (client === null || before !== null) return undefined;
    return client.on('message', (message) => {
      if (message.projectId !== projectId || (type !== null && message.type !== type)) return;
      const event = message as unknown as Event;
      setLive((current) => ({ key, events: [event, ...(current.key === key ? current.events : [])].slice(0, PAGE_SIZE) }));
    });
  }, [client, projectId, type, before, key]);

  const page = loaded.key === key ? loaded.page : null;
  const error = loaded.key === key ? loaded.error : null;
  const arrived = live.key === key ? live.events : [];
  let events: Event[] = page?.events ?? [];
  let next = page?.next ?? null;
  if (page !== null && arrived.length > 0) {
    const seen = new Set<number>();
    const merged = [...arrived, ...events]
      .filter((event) => !seen.has(event.seq) && seen.add(event.seq))
      .sort((a, b) => b.seq - a.seq);
    events = merged.slice(0, PAGE_SIZE);
    if (merged.length > PAGE_SIZE) next = events[events.length - 1].seq;
  }

  const choose = (value: string) => {
    setType(value === '' ? null : (value as EventType));
    setPages([null]);
  };

  return (
    <section className="panel history" aria-labelledby="history-title">
      <header className="panel-head">
        <h2 id="history-title">Event history</h2>
        <label className="filter">
          <span>Type</span>
          <select value={type ?? ''} onChange={(event) => choose(event.target.value)}>
            <option value="">All events</option>
            {TYPES.map((each) => (
              <option key={each} value={each}>
                {TYPE_NAMES[each]}
              </option>
            ))}
          </select>
        </label>
      </header>
      {error !== null ? (
        <div className="panel-note tone-failure" role="alert">
          Could not read the history: {error}{' '}
          <button type="button" className="link-button" onClick={() => setAttempt((n) => n + 1)}>
            Try again
          </button>
        </div>
      ) : page === null ? (
        <p className="panel-note">Loading…</p>
      ) : events.length === 0 ? (
        <EmptyState title={type === null ? 'No events yet' : `No ${TYPE_NAMES[type].toLowerCase()} events`} />
      ) : (
        <ol className="history-list" aria-label="Events, newest first">
          {events.map((event) => (
            <Row key={event.seq} event={event} />
          ))}
        </ol>
      )}
      <nav className="pager" aria-label="History pages">
        <button type="button" className="button button-small" disabled={pages.length === 1} onClick={() => setPages([null])}>
          Newest
        </button>
        <button type="button" className="button button-small" disabled={pages.length === 1} onClick={() => setPages((p) => p.slice(0, -1))}>
          ← Newer
        </button>
        <span className="pager-where muted">
          {events.length > 0 ? `#${events[0].seq} – #${events[events.length - 1].seq}` : ''}
        </span>
        <button type="button" className="button button-small" disabled={next === null} onClick={() => next !== null && setPages((p) => [...p, next])}>
          Older →
        </button>
      </nav>
    </section>
  );
}
