// The project's event log, newest first, a page at a time, filtered by type, time and subject. On
// the newest page, events that arrive live (and that the filters take) are added at the top as they
// come. With the audit scope: the export of what the filters match, and who has seen each event.
import { useContext, useEffect, useState } from 'react';
import type { Event, EventPage } from '@herald/client';
import { HeraldContext } from '@herald/client/react';
import { NO_FILTER, readPage, type EventFilter } from '../../api';
import { EmptyState } from '../EmptyState';
import { ExternalLink } from '../ExternalLink';
import { RelativeTime } from '../RelativeTime';
import { StatusBadge } from '../dashboard/status';
import { TYPE_NAMES, describeEvent } from './describe';
import { ExportButton } from './ExportButton';
import { HistoryFilters } from './HistoryFilters';
import { narrowed, takesLive } from './filters';
import { SeenBy } from './SeenBy';

export const PAGE_SIZE = 25;

interface Loaded {
  key: string;
  page: EventPage | null;
  error: string | null;
}

interface HistoryProps {
  projectId: string;
  token: string;
  /** The token has the audit scope: offer the export and "seen by". */
  auditor: boolean;
}

function Row({ event, seenBy }: { event: Event; seenBy: { projectId: string; token: string } | null }) {
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
      {seenBy !== null && <SeenBy projectId={seenBy.projectId} seq={event.seq} token={seenBy.token} />}
    </li>
  );
}

export function History({ projectId, token, auditor }: HistoryProps) {
  const client = useContext(HeraldContext);
  const [filter, setFilter] = useState<EventFilter>(NO_FILTER);
  /** The `before` of each page seen, newest first: the last one is the page shown (null: the newest). */
  const [pages, setPages] = useState<(number | null)[]>([null]);
  const [loaded, setLoaded] = useState<Loaded>({ key: '', page: null, error: null });
  /** Events that arrived live while the newest page is shown, newest first. */
  const [live, setLive] = useState<{ key: string; events: Event[] }>({ key: '', events: [] });
  const [attempt, setAttempt] = useState(0);

  const before = pages[pages.length - 1];
  const key = `${projectId}|${JSON.stringify(filter)}|${before ?? ''}|${attempt}`;

  useEffect(() => {
    const controller = new AbortController();
    readPage({ projectId, before, limit: PAGE_SIZE, ...filter }, { token, signal: controller.signal }).then(
      (page) => setLoaded({ key, page, error: null }),
      (error: unknown) => {
        if (!controller.signal.aborted) setLoaded({ key, page: null, error: error instanceof Error ? error.message : String(error) });
      },
    );
    return () => controller.abort();
  }, [projectId, before, filter, token, key]);

  useEffect(() => {
    if (client === null || before !== null) return undefined;
    return client.on('message', (message) => {
      const event = message as unknown as Event;
      if (message.projectId !== projectId || !takesLive(filter, event)) return;
      setLive((current) => ({ key, events: [event, ...(current.key === key ? current.events : [])].slice(0, PAGE_SIZE) }));
    });
  }, [client, projectId, filter, before, key]);

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

  const choose = (chosen: EventFilter) => {
    setFilter(chosen);
    setPages([null]);
  };
  const { type } = filter;
  const nothing = narrowed(filter)
    ? 'No events match these filters'
    : type === null
      ? 'No events yet'
      : `No ${TYPE_NAMES[type].toLowerCase()} events`;

  return (
    <section className="panel history" aria-labelledby="history-title">
      <header className="panel-head">
        <h2 id="history-title">Event history</h2>
        {auditor && <ExportButton projectId={projectId} token={token} filter={filter} />}
      </header>
      <HistoryFilters filter={filter} onChange={choose} />
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
        <EmptyState title={nothing} />
      ) : (
        <ol className="history-list" aria-label="Events, newest first">
          {events.map((event) => (
            <Row key={event.seq} event={event} seenBy={auditor ? { projectId, token } : null} />
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
