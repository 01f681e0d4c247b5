// @herald/client/react: React's view of the client and of the project store, through
// useSyncExternalStore and zustand's useStore. No connection logic lives here (docs/client.md).
export { HeraldContext, useConnectionState, useSubscription, useWebSocket } from './hooks/useWebSocket.js';
export { ProjectStoreContext, useProject, useProjectStore } from './store/react.js';
