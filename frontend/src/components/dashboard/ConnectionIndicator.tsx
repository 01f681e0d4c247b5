// The connection, always in view: derived from the client's state alone (docs/client.md, "States"),
// without `lastMessage`, so that events stream past without re-rendering it.
import type { ConnectionState, TransportKind } from '@herald/client';
import { useConnectionState } from '@herald/client/react';
import { Icon, type IconName } from '../Icon';
import { useNow } from '../RelativeTime';

export type ConnectionKind = 'connected' | 'connecting' | 'reconnecting' | 'offline' | 'disconnected' | 'error';

export interface ConnectionView {
  kind: ConnectionKind;
  /** One line, in words a screen reader (and a test) reads: "Reconnecting (attempt 2, next try in 3 s)". */
  label: string;
  /** How: "via WebSocket", "via polling every 5 s", "trying SSE"; empty when there is no transport. */
  transport: string;
  /** "2 queued" while publishes wait for an answer; else empty. */
  queued: string;
  /** Why the last connection ended, for the tooltip. */
  reason: string;
}

const TRANSPORT_NAMES: Record<TransportKind, string> = { websocket: 'WebSocket', sse: 'SSE', polling: 'polling' };

function transportText(state: ConnectionState, connected: boolean): string {
  if (state.transport === null) return '';
  const name = TRANSPORT_NAMES[state.transport];
  if (!connected) return `trying ${name}`;
  if (state.transport === 'polling' && state.pollIntervalMs !== null) {
    return `via polling every ${Math.round(state.pollIntervalMs / 1000)} s`;
  }
  return `via ${name}`;
}

/** What the indicator says about `state` at time `now`. */
export function describeConnection(state: ConnectionState, now: number): ConnectionView {
  const queued = state.queued > 0 ? `${state.queued} queued` : '';
  const reason = state.error ?? '';
  const view = (kind: ConnectionKind, label: string, transport = ''): ConnectionView => ({ kind, label, transport, queued, reason });
  switch (state.status) {
    case 'connected':
      return view('connected', 'Connected', transportText(state, true));
    case 'disconnected':
      return view('disconnected', 'Disconnected');
    case 'error':
      return view('error', state.error ? `Error: ${state.error}` : 'Error');
    case 'connecting': {
      if (!state.online) return view('offline', 'Offline, waiting for the network');
      if (state.reconnectAttempts === 0) return view('connecting', 'Connecting', transportText(state, false));
      const attempt = `attempt ${state.reconnectAttempts}`;
      const wait = state.nextRetryAt === null ? 0 : Math.ceil((state.nextRetryAt - now) / 1000);
      const when = wait > 0 ? `next try in ${wait} s` : 'trying now';
      return view('reconnecting', `Reconnecting (${attempt}, ${when})`, transportText(state, false));
    }
  }
}

const ICONS: Record<ConnectionKind, IconName> = {
  connected: 'signal',
  connecting: 'spinner',
  reconnecting: 'spinner',
  offline: 'offline',
  disconnected: 'minus',
  error: 'alert',
};

export function ConnectionIndicator() {
  const state = useConnectionState();
  const now = useNow();
  const view = describeConnection(state, now);
  return (
    <div
      className={`connection connection-${view.kind}`}
      role="status"
      data-connection={view.kind}
      data-transport={state.transport ?? ''}
      data-queued={state.queued}
      title={view.reason || undefined}
    >
      <Icon name={ICONS[view.kind]} />
      <span className="connection-label">{view.label}</span>
      {view.transport !== '' && <span className="connection-detail"> · {view.transport}</span>}
      {view.queued !== '' && <span className="connection-queued"> · {view.queued}</span>}
    </div>
  );
}
