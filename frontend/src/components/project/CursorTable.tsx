// The auditor's view (admin tokens): every client's durable cursor on the project and how far it
// lags behind the head (lag = head − seq), refreshed every few seconds.
import { useEffect, useState } from 'react';
import { listProjects, readCursors, type Cursor } from '../../api';
import { EmptyState } from '../EmptyState';
import { RelativeTime } from '../RelativeTime';

const REFRESH_MS = 5000;

interface Reading {
  cursors: Cursor[];
  head: number;
  at: number;
}

export function CursorTable({ projectId, token, clientId }: { projectId: string; token: string; clientId: string | null }) {
  const [reading, setReading] = useState<Reading | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let controller: AbortController | null = null;
    const read = () => {
      controller?.abort();
      const current = new AbortController();
      controller = current;
      const options = { token, signal: current.signal };
      Promise.all([readCursors(projectId, options), listProjects(options)]).then(
        ([cursors, projects]) => {
          const head = projects.find((project) => project.id === projectId)?.head ?? 0;
          setReading({ cursors, head, at: Date.now() });
          setError(null);
        },
        (failure: unknown) => {
          if (!current.signal.aborted) setError(failure instanceof Error ? failure.message : String(failure));
        },
      );
    };
    read();
    const timer = setInterval(() => {
      if (document.visibilityState === 'visible') read();
    }, REFRESH_MS);
    return () => {
      clearInterval(timer);
      controller?.abort();
    };
  }, [projectId, token]);

  const rows = (reading?.cursors ?? [])
    .map((cursor) => ({ ...cursor, lag: Math.max(0, (reading?.head ?? 0) - cursor.seq) }))
    .sort((a, b) => b.lag - a.lag || b.updatedAt.localeCompare(a.updatedAt));

  return (
    <section className="panel cursors" aria-labelledby="cursors-title">
      <header className="panel-head">
        <h2 id="cursors-title">Clients and lag</h2>
        {reading !== null && <span className="muted">head #{reading.head} · refreshed every {REFRESH_MS / 1000} s</span>}
      </header>
      {error !== null && (
        <p className="panel-note tone-failure" role="alert">
          Could not read the cursors: {error}
        </p>
      )}
      {reading === null && error === null ? (
        <p className="panel-note">Loading…</p>
      ) : rows.length === 0 && reading !== null ? (
        <EmptyState title="No client has acknowledged anything yet" />
      ) : (
        <div className="table-scroll">
          <table className="table">
            <thead>
              <tr>
                <th scope="col">Client</th>
                <th scope="col">User</th>
                <th scope="col" className="num">
                  Acked
                </th>
                <th scope="col" className="num">
                  Lag
                </th>
                <th scope="col">Updated</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <tr key={`${row.user}\u0000${row.clientId}`} data-client-id={row.clientId} data-lag={row.lag}>
                  <td className="mono" title={row.clientId}>
                    {row.clientId.length > 14 ? `${row.clientId.slice(0, 12)}…` : row.clientId}
                    {row.clientId === clientId && <span className="tag">this browser</span>}
                  </td>
                  <td>{row.user}</td>
                  <td className="num mono">#{row.seq}</td>
                  <td className={`num ${row.lag === 0 ? 'tone-success' : row.lag > 100 ? 'tone-failure' : 'tone-waiting'}`}>
                    {row.lag === 0 ? 'up to date' : `${row.lag} behind`}
                  </td>
                  <td>
                    <RelativeTime iso={row.updatedAt} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
