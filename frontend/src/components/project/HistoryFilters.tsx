// The history's filters: the type (applied at once), a time range and a subject (applied together
// with Apply or Enter, so a half-typed date or sha does not query the service on every keystroke).
// Times are to the second (step 1): an auditor may need to split events a few seconds apart.
import { useState, type FormEvent } from 'react';
import type { EventType } from '@herald/client';
import { NO_FILTER, type EventFilter } from '../../api';
import { TYPE_NAMES } from './describe';
import { localToIso, narrowed } from './filters';

const TYPES = Object.keys(TYPE_NAMES) as EventType[];

interface Draft {
  since: string;
  until: string;
  subject: string;
}

const EMPTY: Draft = { since: '', until: '', subject: '' };

/** The filter a draft asks for, or why it cannot be applied. */
function read(draft: Draft): { since: string | null; until: string | null; subject: string | null } | string {
  const since = draft.since === '' ? null : localToIso(draft.since);
  const until = draft.until === '' ? null : localToIso(draft.until);
  if (draft.since !== '' && since === null) return 'Since is not a date and time.';
  if (draft.until !== '' && until === null) return 'Until is not a date and time.';
  if (since !== null && until !== null && since >= until) return 'Since must be before until.';
  const subject = draft.subject.trim();
  return { since, until, subject: subject === '' ? null : subject };
}

export function HistoryFilters({ filter, onChange }: { filter: EventFilter; onChange: (filter: EventFilter) => void }) {
  const [draft, setDraft] = useState<Draft>(EMPTY);
  const [problem, setProblem] = useState<string | null>(null);

  const edit = (change: Partial<Draft>) => {
    setDraft((current) => ({ ...current, ...change }));
    setProblem(null);
  };

  const apply = (event: FormEvent) => {
    event.preventDefault();
    const wanted = read(draft);
    if (typeof wanted === 'string') {
      setProblem(wanted);
      return;
    }
    onChange({ ...filter, ...wanted });
  };

  const clear = () => {
    setDraft(EMPTY);
    setProblem(null);
    onChange(NO_FILTER);
  };

  const chooseType = (value: string) => onChange({ ...filter, type: value === '' ? null : (value as EventType) });
  const clearable = filter.type !== null || narrowed(filter) || draft.since !== '' || draft.until !== '' || draft.subject !== '';

  return (
    <form className="history-filters" role="search" aria-label="Filter the history" onSubmit={apply} noValidate>
      <label className="filter">
        <span>Type</span>
        <select value={filter.type ?? ''} onChange={(event) => chooseType(event.target.value)}>
          <option value="">All events</option>
          {TYPES.map((each) => (
            <option key={each} value={each}>
              {TYPE_NAMES[each]}
            </option>
          ))}
        </select>
      </label>
      <label className="filter" title="From this time on, in your time zone">
        <span>Since</span>
        <input type="datetime-local" step={1} value={draft.since} onChange={(event) => edit({ since: event.target.value })} />
      </label>
      <label className="filter" title="Before this time, in your time zone">
        <span>Until</span>
        <input type="datetime-local" step={1} value={draft.until} onChange={(event) => edit({ until: event.target.value })} />
      </label>
      <label className="filter">
        <span>Subject</span>
        <input
          type="text"
          className="mono"
          value={draft.subject}
          placeholder="run id, PR number or head sha"
          spellCheck={false}
          onChange={(event) => edit({ subject: event.target.value })}
        />
      </label>
      <button type="submit" className="button button-small">
        Apply
      </button>
      <button type="button" className="link-button" disabled={!clearable} onClick={clear}>
        Clear filters
      </button>
      {problem !== null && (
        <p className="filter-problem tone-failure" role="alert">
          {problem}
        </p>
      )}
    </form>
  );
}
