// The client's public module path, as the original requirements name it. The client speaks SSE and
// polling too, so it lives in client.ts (with connection.ts, subscription.ts, publishQueue.ts);
// this re-exports its public API unchanged.
export { HeraldClient, HeraldError, createClient, defaults, type ClientEvents, type ClientOptions } from './client.js';
