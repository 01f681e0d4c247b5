// How each status looks: a word, an icon and a tone (the color), so none relies on color alone.
import type { AgentRunProgress, ValidationUpdate } from '@herald/client';
import { Icon, type IconName } from '../Icon';

/** success: done well · failure: needs attention · active: in progress · waiting: not started ·
 * neutral: ended without a verdict · merged: a pull request's happy end. */
export type Tone = 'success' | 'failure' | 'active' | 'waiting' | 'neutral' | 'merged';

export interface Look {
  label: string;
  tone: Tone;
  icon: IconName;
}

export function runLook(status: AgentRunProgress['status']): Look {
  switch (status) {
    case 'queued':
      return { label: 'Queued', tone: 'waiting', icon: 'clock' };
    case 'running':
      return { label: 'Running', tone: 'active', icon: 'spinner' };
    case 'succeeded':
      return { label: 'Succeeded', tone: 'success', icon: 'check' };
    case 'failed':
      return { label: 'Failed', tone: 'failure', icon: 'cross' };
    case 'cancelled':
      return { label: 'Cancelled', tone: 'neutral', icon: 'ban' };
  }
}

const CONCLUSIONS: Record<NonNullable<ValidationUpdate['conclusion']>, Look> = {
  success: { label: 'Passed', tone: 'success', icon: 'check' },
  failure: { label: 'Failed', tone: 'failure', icon: 'cross' },
  error: { label: 'Errored', tone: 'failure', icon: 'cross' },
  timed_out: { label: 'Timed out', tone: 'failure', icon: 'cross' },
  startup_failure: { label: 'Failed to start', tone: 'failure', icon: 'cross' },
  action_required: { label: 'Action required', tone: 'failure', icon: 'alert' },
  cancelled: { label: 'Cancelled', tone: 'neutral', icon: 'ban' },
  skipped: { label: 'Skipped', tone: 'neutral', icon: 'minus' },
  neutral: { label: 'Neutral', tone: 'neutral', icon: 'minus' },
  stale: { label: 'Stale', tone: 'neutral', icon: 'clock' },
};

export function validationLook(data: Pick<ValidationUpdate, 'status' | 'conclusion'>): Look {
  if (data.status === 'queued') return { label: 'Queued', tone: 'waiting', icon: 'clock' };
  if (data.status === 'in_progress') return { label: 'In progress', tone: 'active', icon: 'spinner' };
  const conclusion = data.conclusion ?? null;
  return conclusion === null ? { label: 'Completed', tone: 'neutral', icon: 'check' } : CONCLUSIONS[conclusion];
}

/** GitHub's pull_request actions (and Herald's `merged`, `review_*`) in words. */
export function prActionLook(action: string): Look {
  switch (action) {
    case 'opened':
    case 'reopened':
      return { label: action === 'opened' ? 'Opened' : 'Reopened', tone: 'success', icon: 'pull' };
    case 'merged':
      return { label: 'Merged', tone: 'merged', icon: 'merge' };
    case 'closed':
      return { label: 'Closed', tone: 'failure', icon: 'cross' };
    case 'synchronize':
      return { label: 'Pushed', tone: 'active', icon: 'push' };
    case 'ready_for_review':
      return { label: 'Ready', tone: 'active', icon: 'eye' };
    case 'converted_to_draft':
      return { label: 'Draft', tone: 'neutral', icon: 'minus' };
    default:
      if (action.startsWith('review_')) return { label: 'Reviewed', tone: 'active', icon: 'eye' };
      return { label: humanize(action), tone: 'neutral', icon: 'dot' };
  }
}

function humanize(word: string): string {
  const spaced = word.replace(/_/g, ' ');
  return spaced.charAt(0).toUpperCase() + spaced.slice(1);
}

/** A status as a pill: icon and word, colored by tone. */
export function StatusBadge({ look, className }: { look: Look; className?: string }) {
  return (
    <span className={`badge tone-${look.tone}${className ? ` ${className}` : ''}`}>
      <Icon name={look.icon} />
      {look.label}
    </span>
  );
}
