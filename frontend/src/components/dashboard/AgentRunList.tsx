// The agent runs of a project: the ones still going first, each with its progress, status and
// current step; "cancel" on those still going.
import type { AgentRun } from '@herald/client';
import { EmptyState } from '../EmptyState';
import { RelativeTime } from '../RelativeTime';
import { ActionButton, cancelKey, cancelMessage } from './actions';
import { ProgressBar, formatPercent } from './ProgressBar';
import { StatusBadge, runLook } from './status';

const ACTIVE = new Set(['queued', 'running']);

function RunRow({ run }: { run: AgentRun }) {
  const { runId, status, progress, step, message } = run.data;
  const look = runLook(status);
  return (
    <li className="run" data-seq={run.seq} data-run-id={runId} data-status={status}>
      <div className="run-head">
        <StatusBadge look={look} />
        <span className="run-title" title={message ?? runId}>
          {message ?? runId}
        </span>
        <span className="run-percent">{formatPercent(progress)}</span>
      </div>
      <ProgressBar value={progress} tone={look.tone} label={`Progress of ${runId}`} />
      <div className="row-meta">
        {step ? <span className="run-step">{step}</span> : null}
        <span className="mono muted">{runId}</span>
        <RelativeTime iso={run.timestamp} />
        {ACTIVE.has(status) && (
          <ActionButton
            actionKey={cancelKey(run)}
            message={() => cancelMessage(run)}
            icon="stop"
            label="Cancel"
            description={`Cancel ${runId}`}
          />
        )}
      </div>
    </li>
  );
}

/** `runs` in the order given (runsByActivity puts the active ones first), at most `limit`. */
export function AgentRunList({ runs, limit }: { runs: AgentRun[]; limit?: number }) {
  if (runs.length === 0) {
    return <EmptyState title="No agent runs yet">Runs appear here as agents report progress.</EmptyState>;
  }
  const shown = limit === undefined ? runs : runs.slice(0, limit);
  return (
    <ul className="list runs">
      {shown.map((run) => (
        <RunRow key={run.data.runId} run={run} />
      ))}
    </ul>
  );
}
