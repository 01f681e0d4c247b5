// Whether the project's log is still the one that was written (docs/protocol.md §7.3): the service
// recomputes the hash chain on request. Checked when the page opens and on Re-verify, not on every
// event: a verification reads the whole log.
import { useEffect, useState } from 'react';
import { HeraldError } from '@herald/client';
import { verifyChain, type ChainReport } from '../../api';
import { Icon } from '../Icon';
import { RelativeTime } from '../RelativeTime';

type Check =
  | { status: 'checking' }
  | { status: 'done'; report: ChainReport; at: string }
  | { status: 'forbidden' }
  | { status: 'failed'; message: string };

/** The first characters of a hash: enough to compare by eye; the title holds the whole. */
const HASH_SHOWN = 12;

function useChainCheck(projectId: string, token: string, attempt: number): Check {
  const [check, setCheck] = useState<{ key: string; check: Check } | null>(null);
  const key = `${projectId}|${attempt}`;
  useEffect(() => {
    const controller = new AbortController();
    verifyChain(projectId, { token, signal: controller.signal }).then(
      (report) => setCheck({ key, check: { status: 'done', report, at: new Date().toISOString() } }),
      (error: unknown) => {
        if (controller.signal.aborted) return;
        const forbidden = error instanceof HeraldError && error.status === 403;
        const message = error instanceof Error ? error.message : String(error);
        setCheck({ key, check: forbidden ? { status: 'forbidden' } : { status: 'failed', message } });
      },
    );
    return () => controller.abort();
  }, [projectId, token, key]);
  return check !== null && check.key === key ? check.check : { status: 'checking' };
}

function Verdict({ check }: { check: Check }) {
  switch (check.status) {
    case 'checking':
      return (
        <span className="badge tone-neutral">
          <Icon name="spinner" />
          Verifying the chain…
        </span>
      );
    case 'forbidden':
      return <span className="muted">Cannot verify the chain (needs the audit scope)</span>;
    case 'failed':
      return (
        <span className="chain-problem tone-failure" role="alert">
          Could not verify the chain: {check.message}
        </span>
      );
    case 'done': {
      const { report } = check;
      if (!report.ok) {
        return (
          <>
            <span className="badge tone-failure">
              <Icon name="alert" />
              Chain broken at seq {report.firstBad}
            </span>
            <span className="chain-reason tone-failure">{report.reason}</span>
          </>
        );
      }
      return (
        <>
          <span className="badge tone-success">
            <Icon name="check" />
            {report.head === 0 ? 'Chain intact (no events yet)' : `Chain verified through seq ${report.head}`}
          </span>
          {report.head > 0 && (
            <code className="chain-hash" title={report.hash}>
              {report.hash.slice(0, HASH_SHOWN)}…
            </code>
          )}
          <span className="muted">
            checked <RelativeTime iso={check.at} />
          </span>
        </>
      );
    }
  }
}

export function ChainBadge({ projectId, token }: { projectId: string; token: string }) {
  const [attempt, setAttempt] = useState(0);
  const check = useChainCheck(projectId, token, attempt);
  const state = check.status === 'done' ? (check.report.ok ? 'intact' : 'broken') : check.status;
  return (
    <section className="chain" aria-label="Hash chain" data-chain={state}>
      <div className="chain-verdict" role="status">
        <Verdict check={check} />
      </div>
      {check.status !== 'forbidden' && (
        <button
          type="button"
          className="button button-small"
          disabled={check.status === 'checking'}
          onClick={() => setAttempt((n) => n + 1)}
        >
          <Icon name="retry" />
          Re-verify
        </button>
      )}
    </section>
  );
}
