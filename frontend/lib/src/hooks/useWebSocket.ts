// React's view of the client: state through useSyncExternalStore, verbs passed through. No
// connection logic lives here; the client (services/client.ts) owns all of it.
import { createContext, useContext, useEffect, useMemo, useSyncExternalStore } from 'react';
import { useShallow } from 'zustand/react/shallow';
import type { HeraldClient } from '../services/client.js';
import type { ConnectionState, SubscribeOptions, UseWebSocketReturn, WebSocketState } from '../types/websocket.js';

/** Provides the app's one client: `<HeraldContext value={client}>…</HeraldContext>`. */
export const HeraldContext = createContext<HeraldClient | null>(null);

function useClient(client: HeraldClient | undefined): HeraldClient {
  const provided = useContext(HeraldContext);
  const chosen = client ?? provided;
  if (chosen === null) {
    throw new Error('useWebSocket: pass a client or render inside <HeraldContext value={client}>');
  }
  return chosen;
}

/** The client's state (re-rendering on every change, every event included) and its verbs. */
export function useWebSocket(client?: HeraldClient): UseWebSocketReturn {
  const chosen = useClient(client);
  const state = useSyncExternalStore(chosen.subscribeState, chosen.getState, chosen.getState);
  return useMemo(
    () => ({
      state,
      sendMessage: chosen.sendMessage,
      subscribe: chosen.subscribe,
      unsubscribe: chosen.unsubscribe,
    }),
    [state, chosen],
  );
}

// Every field but `lastMessage`, named: a field added to the state is a type error here until chosen.
function connectionOf(state: WebSocketState): ConnectionState {
  const { status, error, reconnectAttempts, transport, pollIntervalMs, nextRetryAt, queued, online } = state;
  return { status, error, reconnectAttempts, transport, pollIntervalMs, nextRetryAt, queued, online };
}

/**
 * The client's state without `lastMessage`, re-rendering only when one of its fields changes (a
 * shallow comparison): for what shows the connection, which an incoming event must not re-render.
 */
export function useConnectionState(client?: HeraldClient): ConnectionState {
  const chosen = useClient(client);
  const select = useShallow(connectionOf);
  const snapshot = () => select(chosen.getState());
  return useSyncExternalStore(chosen.subscribeState, snapshot, snapshot);
}

/**
 * Keeps `projectId` subscribed while the component is mounted (none while it is null). The client
 * counts references, so any number of components may do this for one project.
 */
export function useSubscription(projectId: string | null, options: SubscribeOptions = {}, client?: HeraldClient): void {
  const chosen = useClient(client);
  const { after } = options;
  useEffect(() => {
    if (projectId === null) return undefined;
    chosen.subscribe(projectId, after === undefined ? {} : { after });
    return () => chosen.unsubscribe(projectId);
  }, [chosen, projectId, after]);
}
