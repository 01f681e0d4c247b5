// Every validation (check, workflow, status) of the project, newest first: passed, failed or still
// running at a glance (icon, word and color), with "re-run" on the finished ones.
import type { Validation } from '@herald/client';
import { EmptyState } from '../EmptyState';
import { ExternalLink } from '../ExternalLink';
import { RelativeTime } from '../RelativeTime';
import { ActionButton, rerunKey, rerunMessage } from './actions';
import { StatusBadge, validationLook } from './status';

function ValidationRow({ validation }: { validation: Validation }) {
  const { name, status, conclusion, url, prNumber, headSha } = validation.data;
  const look = validationLook({ status, conclusion });
  return (
    <li
      className={`validation tone-${look.tone}`}
      data-seq={validation.seq}
      data-name={name}
      data-status={status}
      data-conclusion={conclusion ?? ''}
    >
      <StatusBadge look={look} className="validation-status" />
      <div className="validation-body">
        <ExternalLink className="validation-name" href={url}>
          {name}
        </ExternalLink>
        <div className="row-meta">
          {prNumber != null ? <span className="mono">#{prNumber}</span> : null}
          {headSha ? (
            <span className="mono muted" title={headSha}>
              {headSha.slice(0, 7)}
            </span>
          ) : null}
          <RelativeTime iso={validation.timestamp} />
        </div>
      </div>
      {status === 'completed' && (
        <ActionButton
          actionKey={rerunKey(validation)}
          message={() => rerunMessage(validation)}
          icon="retry"
          label="Re-run"
          description={`Re-run ${name}${prNumber != null ? ` on #${prNumber}` : ''}`}
        />
      )}
    </li>
  );
}

export function ValidationList({ validations, limit }: { validations: Validation[]; limit?: number }) {
  if (validations.length === 0) {
    return <EmptyState title="No validations yet">Checks and CI runs appear as they are queued, run and finish.</EmptyState>;
  }
  const shown = limit === undefined ? validations : validations.slice(0, limit);
  return (
    <ul className="list validations">
      {shown.map((validation) => (
        <ValidationRow key={`${validation.data.name}\u0000${validation.data.headSha ?? '\u0001'}`} validation={validation} />
      ))}
    </ul>
  );
}
