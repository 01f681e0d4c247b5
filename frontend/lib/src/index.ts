// @herald/client: Herald's framework-agnostic TypeScript client (docs/client.md). This entry has no
// React in it: the client, its transports and queues, the project store (zustand's vanilla core),
// and the wire types generated from the service's schema. React binds to both in `@herald/client/react`.

// The client and what it is built from: pass these to `createClient` to change a part.
export { HeraldClient, createClient, defaults, type ClientEvents, type ClientOptions } from './services/client.js';
export {
  HeraldError,
  HISTORY_REWRITTEN,
  HISTORY_TRUNCATED,
  INVALID_CURSOR,
  errorOf,
  type Rewrite,
  type Truncation,
} from './services/errors.js';
export {
  webSocketTransport,
  webSocketUrl,
  type Transport,
  type TransportFactory,
  type TransportHandlers,
  type TransportOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from './services/transport.js';
export { sseTransport, type SseOptions } from './services/sseTransport.js';
export { pollingTransport, type PollingOptions } from './services/pollingTransport.js';
export { memoryQueue, type SendQueue } from './services/sendQueue.js';
export { indexedDbQueue, type IndexedDbQueueOptions, type PersistentQueue } from './services/indexedDbQueue.js';
export {
  browserPlatform,
  browserStorage,
  memoryStorage,
  type KeyValueStorage,
  type Platform,
} from './services/platform.js';

// The project store: snapshot plus live events, per project, without React.
export {
  applyEvent,
  createProjectStore,
  emptyProject,
  fromSnapshot,
  pullRequestKey,
  runsByActivity,
  totalUnread,
  validationsByPullRequest,
  type AgentRun,
  type Notice,
  type Notification,
  type Project,
  type ProjectSource,
  type ProjectStore,
  type ProjectStoreOptions,
  type ProjectStoreState,
  type PullRequest,
  type Validation,
} from './store/projectStore.js';

// The wire types (generated from service/messages.py and service/codes.py) and the client's states.
// The wire model `Project` (a project as the service lists it) is `ProjectInfo` here: `Project` is
// the store's.
export * from './types/websocket.js';
export type { Project as ProjectInfo } from './types/websocket.js';
export * from './types/codes.js';
