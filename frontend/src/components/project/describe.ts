// One line about an event, for the history: what happened, in words.
import type { Event, EventType, WebSocketMessage } from '@herald/client';
import { prActionLook, runLook, validationLook, type Look } from '../dashboard/status';

export const TYPE_NAMES: Record<EventType, string> = {
  agent_run_progress: 'Agent run',
  pr_notification: 'Pull request',
  validation_update: 'Validation',
};

export interface EventLine {
  look: Look;
  subject: string;
  detail: string;
  url: string | null;
}

export function describeEvent(event: Event): EventLine {
  const typed = event as unknown as WebSocketMessage;
  switch (typed.type) {
    case 'agent_run_progress': {
      const { runId, status, progress, step, message } = typed.data;
      const parts = [`${Math.round(progress * 10) / 10}%`, step, message].filter((part) => part != null && part !== '');
      return { look: runLook(status), subject: runId, detail: parts.join(' · '), url: null };
    }
    case 'pr_notification': {
      const { action, number, title, url, author, repo } = typed.data;
      const by = author ? ` by ${author}` : '';
      return { look: prActionLook(action), subject: `#${number} ${title}`, detail: `${repo}${by}`, url };
    }
    case 'validation_update': {
      const { name, status, conclusion, prNumber, headSha, url } = typed.data;
      const parts = [prNumber != null ? `#${prNumber}` : null, headSha ? headSha.slice(0, 7) : null].filter(Boolean);
      return { look: validationLook({ status, conclusion }), subject: name, detail: parts.join(' · '), url: url ?? null };
    }
    default:
      return { look: { label: String((event as Event).type), tone: 'neutral', icon: 'dot' }, subject: '', detail: '', url: null };
  }
}
