import type { PublishMessage } from '../types/websocket.js';

/**
 * The publishes the service has not answered yet, oldest first. The client sends all of them, in
 * order, on every (re)connection, and removes one only when the service answers it (`published`,
 * or an `error` naming its messageId); resending is safe because the service appends one event per
 * messageId. The API is synchronous so the client's hot path never waits: a persistent queue
 * (IndexedDB, to come) keeps this mirror in memory and writes through, and resolves `ready` once
 * what it had stored is loaded.
 */
export interface SendQueue {
  /** Appends a publish; one whose messageId is already queued keeps its first place. */
  add(message: PublishMessage & { messageId: string }): void;
  remove(messageId: string): void;
  has(messageId: string): boolean;
  list(): readonly (PublishMessage & { messageId: string })[];
  readonly size: number;
  /** Resolves when publishes stored by an earlier page are in `list()`. */
  readonly ready?: Promise<void>;
}

/** The queue that lives as long as the page. */
export function memoryQueue(): SendQueue {
  const items = new Map<string, PublishMessage & { messageId: string }>();
  return {
    add(message) {
      if (!items.has(message.messageId)) items.set(message.messageId, message);
    },
    remove: (messageId) => void items.delete(messageId),
    has: (messageId) => items.has(messageId),
    list: () => [...items.values()],
    get size() {
      return items.size;
    },
  };
}
