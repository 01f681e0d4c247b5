// Says so when updates are not live: the client fell back to polling (no WebSocket, no SSE), or it
// stopped on an error. The connection indicator carries the rest.
import { useContext } from 'react';
import { HeraldContext, useConnectionState } from '@herald/client/react';
import { Icon } from '../Icon';

export function ConnectionBanner() {
  const client = useContext(HeraldContext);
  const state = useConnectionState();
  if (state.status === 'connected' && state.transport === 'polling') {
    const every = state.pollIntervalMs === null ? '' : ` every ${Math.round(state.pollIntervalMs / 1000)} s`;
    return (
      <div className="banner banner-warn" role="status" data-banner="polling">
        <Icon name="alert" />
        <p>
          <strong>No live connection works from here</strong> (WebSocket and SSE both failed), so the page is polling
          for updates{every}. It switches back to live updates as soon as it can.
        </p>
      </div>
    );
  }
  if (state.status === 'error') {
    return (
      <div className="banner banner-bad" role="alert" data-banner="error">
        <Icon name="alert" />
        <p>
          <strong>Updates stopped:</strong> {state.error ?? 'the service closed the connection'}.
        </p>
        <button type="button" className="button button-small" onClick={() => client?.connect()}>
          Reconnect
        </button>
      </div>
    );
  }
  return null;
}
