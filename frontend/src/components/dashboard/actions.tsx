// Actions a viewer can take: "cancel" an agent run, "re-run" a validation. Each publishes an event
// through the client, so it goes through the offline queue: shown as queued (offline, reconnecting)
// or sending (connected) until the service answers `published`; then the event arrives through the
// live stream like any other and the row shows it. A refusal (no publish scope...) is shown in place.
import { createContext, useCallback, useContext, useMemo, useRef, useState, useSyncExternalStore, type ReactNode } from 'react';
import type { AgentRun, OutgoingMessage, Validation } from '@herald/client';
import { HeraldContext } from '@herald/client/react';
import { Icon, type IconName } from '../Icon';

interface Pending {
  state: 'pending' | 'failed';
  error?: string;
}

interface Actions {
  /** The token may publish: actions are offered at all. */
  enabled: boolean;
  pending: ReadonlyMap<string, Pending>;
  run(key: string, message: OutgoingMessage): void;
  dismiss(key: string): void;
}

const ActionsContext = createContext<Actions>({
  enabled: false,
  pending: new Map(),
  run: () => {},
  dismiss: () => {},
});

/** How long a refused action's message stays. */
const FAILURE_SHOWN_MS = 8000;

export function ActionsProvider({ enabled, children }: { enabled: boolean; children: ReactNode }) {
  const client = useContext(HeraldContext);
  const [pending, setPending] = useState<ReadonlyMap<string, Pending>>(new Map());
  const timers = useRef(new Map<string, ReturnType<typeof setTimeout>>());

  const change = useCallback((key: string, value: Pending | null) => {
    setPending((current) => {
      const next = new Map(current);
      if (value === null) next.delete(key);
      else next.set(key, value);
      return next;
    });
  }, []);

  const dismiss = useCallback(
    (key: string) => {
      clearTimeout(timers.current.get(key));
      timers.current.delete(key);
      change(key, null);
    },
    [change],
  );

  const run = useCallback(
    (key: string, message: OutgoingMessage) => {
      if (client === null) return;
      change(key, { state: 'pending' });
      client.sendMessage(message).then(
        () => change(key, null),
        (error: unknown) => {
          change(key, { state: 'failed', error: error instanceof Error ? error.message : String(error) });
          timers.current.set(
            key,
            setTimeout(() => dismiss(key), FAILURE_SHOWN_MS),
          );
        },
      );
    },
    [change, dismiss, client],
  );

  const value = useMemo(() => ({ enabled, pending, run, dismiss }), [enabled, pending, run, dismiss]);
  return <ActionsContext value={value}>{children}</ActionsContext>;
}

export const cancelKey = (run: AgentRun) => `cancel:${run.projectId}:${run.data.runId}`;
export const rerunKey = (validation: Validation) =>
  `rerun:${validation.projectId}:${validation.data.name}:${validation.data.headSha ?? ''}`;

/** "cancel" publishes the run's progress as it stands, with status `cancelled`. */
export function cancelMessage(run: AgentRun): OutgoingMessage {
  return { type: 'agent_run_progress', projectId: run.projectId, data: { ...run.data, status: 'cancelled' } };
}

/** "re-run" publishes the validation again as `queued`, for the same name, commit and pull request. */
export function rerunMessage(validation: Validation): OutgoingMessage {
  const { name, headSha, prNumber, url } = validation.data;
  return { type: 'validation_update', projectId: validation.projectId, data: { name, status: 'queued', headSha, prNumber, url } };
}

interface ActionButtonProps {
  actionKey: string;
  message: () => OutgoingMessage;
  icon: IconName;
  label: string;
  /** What the button does, for screen readers ("Cancel run-7"). */
  description: string;
}

const noClient = () => () => {};
const notConnected = () => false;

/** Whether the client is connected, re-rendering only when that changes (not on every event). */
function useConnected(): boolean {
  const client = useContext(HeraldContext);
  const connected = useCallback(() => client?.getState().status === 'connected', [client]);
  return useSyncExternalStore(client?.subscribeState ?? noClient, client === null ? notConnected : connected);
}

/** A button that publishes; while the publish is unanswered, the word "Queued" or "Sending…". */
export function ActionButton({ actionKey, message, icon, label, description }: ActionButtonProps) {
  const actions = useContext(ActionsContext);
  const connected = useConnected();
  if (!actions.enabled) return null;
  const pending = actions.pending.get(actionKey);
  if (pending?.state === 'pending') {
    const queued = !connected;
    return (
      <span className="action-state" data-action-state={queued ? 'queued' : 'sending'} role="status">
        <Icon name={queued ? 'clock' : 'spinner'} />
        {queued ? 'Queued' : 'Sending…'}
      </span>
    );
  }
  if (pending?.state === 'failed') {
    return (
      <span className="action-state action-failed" data-action-state="failed" role="alert">
        <Icon name="alert" />
        <span className="action-error" title={pending.error}>
          {label} failed: {pending.error}
        </span>
        <button type="button" className="link-button" onClick={() => actions.dismiss(actionKey)} aria-label="Dismiss">
          <Icon name="cross" />
        </button>
      </span>
    );
  }
  return (
    <button type="button" className="action" onClick={() => actions.run(actionKey, message())} aria-label={description}>
      <Icon name={icon} />
      {label}
    </button>
  );
}
