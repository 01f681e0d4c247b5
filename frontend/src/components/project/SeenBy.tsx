// "Seen by" on a history row (audit scope): who had received the event and when, from the ack
// ledger (`GET …/acks?seq=N`). Read when opened, and again at each opening: acks keep coming.
import { useContext, useEffect, useId, useState } from 'react';
import { HeraldContext } from '@herald/client/react';
import { HeraldError } from '@herald/client';
import { readAcks, type AckRecord } from '../../api';
import { RelativeTime } from '../RelativeTime';

type Ledger =
  { status: 'loading' } | { status: 'read'; acks: AckRecord[] } | { status: 'forbidden' } | { status: 'failed'; message: string };

function useLedger(projectId: string, seq: number, token: string, open: boolean, attempt: number): Ledger {
  const [ledger, setLedger] = useState<{ key: string; ledger: Ledger } | null>(null);
  const key = `${projectId}|${seq}|${attempt}`;
  useEffect(() => {
    if (!open) return undefined;
    const controller = new AbortController();
    readAcks(projectId, seq, { token, signal: controller.signal }).then(
      (acks) => setLedger({ key, ledger: { status: 'read', acks } }),
      (error: unknown) => {
        if (controller.signal.aborted) return;
        const forbidden = error instanceof HeraldError && error.status === 403;
        const message = error instanceof Error ? error.message : String(error);
        setLedger({ key, ledger: forbidden ? { status: 'forbidden' } : { status: 'failed', message } });
      },
    );
    return () => controller.abort();
  }, [projectId, seq, token, open, key]);
  return ledger !== null && ledger.key === key ? ledger.ledger : { status: 'loading' };
}

/** The toggle (a cell of the row) and, when open, the list (a line of its own under the row). */
export function SeenBy({ projectId, seq, token }: { projectId: string; seq: number; token: string }) {
  const client = useContext(HeraldContext);
  const [open, setOpen] = useState(false);
  /** Counts openings and retries: each reads the ledger afresh (and shows Loading… meanwhile). */
  const [attempt, setAttempt] = useState(0);
  const ledger = useLedger(projectId, seq, token, open, attempt);
  const id = useId();
  const toggle = () => {
    if (!open) setAttempt((n) => n + 1);
    setOpen(!open);
  };

  return (
    <>
      <button
        type="button"
        className="action seen-by-toggle"
        aria-expanded={open}
        aria-controls={id}
        aria-label={`Seen by #${seq}`}
        onClick={toggle}
      >
        Seen by
      </button>
      {open && (
        <div className="seen-by" id={id}>
          {ledger.status === 'loading' ? (
            <p className="muted">Loading…</p>
          ) : ledger.status === 'forbidden' ? (
            <p className="muted">Cannot tell who has seen it (needs the audit scope).</p>
          ) : ledger.status === 'failed' ? (
            <p className="tone-failure" role="alert">
              Could not read who has seen #{seq}: {ledger.message}{' '}
              <button type="button" className="link-button" onClick={() => setAttempt((n) => n + 1)}>
                Try again
              </button>
            </p>
          ) : ledger.acks.length === 0 ? (
            <p className="muted">Not yet seen by any client.</p>
          ) : (
            <ul className="seen-by-list" aria-label={`Seen by, event #${seq}`}>
              {ledger.acks.map((ack) => (
                <li key={`${ack.user}\u0000${ack.clientId}`} data-client-id={ack.clientId}>
                  <span className="seen-by-user">{ack.user}</span>
                  <span className="mono muted" title={ack.clientId}>
                    {ack.clientId.length > 14 ? `${ack.clientId.slice(0, 12)}…` : ack.clientId}
                  </span>
                  {ack.clientId === client?.clientId && <span className="tag">this browser</span>}
                  <RelativeTime iso={ack.ackedAt} />
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
    </>
  );
}
