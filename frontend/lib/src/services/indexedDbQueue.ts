// The offline queue that outlives the page: unanswered publishes kept in IndexedDB, so a reload or
// a closed tab loses none of them; the next page to open the queue sends them.
import type { PublishMessage } from '../types/websocket.js';
import type { SendQueue } from './sendQueue.js';

type Publish = PublishMessage & { messageId: string };

export interface IndexedDbQueueOptions {
  /** The database (default `herald`). Pages that share it share the queue; give each user their own
   * (e.g. `herald:alice`), since whoever opens it next sends what it holds with their token. */
  name?: string;
  /** The IndexedDB factory (default: the page's `indexedDB`; `fake-indexeddb` in Node tests). */
  indexedDB?: IDBFactory;
}

/** A SendQueue that also tells when its writes are stored. */
export interface PersistentQueue extends SendQueue {
  readonly ready: Promise<void>;
  /** Resolves once every change made so far is stored (or has failed: the memory mirror stands). */
  flush(): Promise<void>;
}

const STORE = 'publishes';

interface Entry {
  message: Publish;
  /** The records holding it (two when this page queued again a publish an earlier page had stored). */
  keys: IDBValidKey[];
}

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error ?? new Error('IndexedDB request failed'));
  });
}

function openDatabase(factory: IDBFactory, name: string): Promise<IDBDatabase> {
  const request = factory.open(name, 1);
  // An auto-increment key orders the records across every page sharing the database.
  request.onupgradeneeded = () => request.result.createObjectStore(STORE, { autoIncrement: true });
  return done(request);
}

function isPublish(value: unknown): value is Publish {
  if (typeof value !== 'object' || value === null) return false;
  const { type, projectId, messageId } = value as Record<string, unknown>;
  return typeof type === 'string' && typeof projectId === 'string' && typeof messageId === 'string';
}

/**
 * The queue in IndexedDB, behind the synchronous SendQueue API: a memory mirror answers at once,
 * and every change is written through, one after another. `ready` resolves when the publishes that
 * earlier pages left are loaded; they come first, in the order they were queued (oldest first across
 * all pages), and a messageId is held once. Without IndexedDB (unavailable, refused, private
 * browsing), or when it fails, the mirror alone stands: a queue as long as the page.
 */
export function indexedDbQueue(options: IndexedDbQueueOptions = {}): PersistentQueue {
  const factory = options.indexedDB ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  const name = options.name ?? 'herald';
  let items = new Map<string, Entry>();
  /** Removed before the stored ones were loaded: their stored copies go too. */
  const removedEarly = new Set<string>();
  let loaded = false;
  let database: IDBDatabase | null = null;
  // Every write waits for the one before, so a record's key is known before it is deleted.
  let chain: Promise<unknown> = Promise.resolve();

  const write = (operation: (store: IDBObjectStore) => Promise<void>) => {
    chain = chain.then(async () => {
      if (database === null) return;
      try {
        const transaction = database.transaction(STORE, 'readwrite');
        const finished = new Promise<void>((resolve, reject) => {
          transaction.oncomplete = () => resolve();
          transaction.onerror = () => reject(transaction.error ?? new Error('IndexedDB transaction failed'));
          transaction.onabort = () => reject(transaction.error ?? new Error('IndexedDB transaction aborted'));
        });
        await operation(transaction.objectStore(STORE));
        await finished;
      } catch {
        // Storage full or gone: the memory mirror still holds the queue for this page.
      }
    });
  };

  const store = (entry: Entry) =>
    write(async (objects) => {
      entry.keys.push(await done(objects.add(entry.message)));
    });

  const load = async () => {
    if (factory === undefined) return;
    try {
      database = await openDatabase(factory, name);
      // A later version of this code upgrading the database in another tab: let it.
      database.onversionchange = () => {
        database?.close();
        database = null;
      };
      const transaction = database.transaction(STORE, 'readonly');
      const objects = transaction.objectStore(STORE);
      const [keys, values] = await Promise.all([done(objects.getAllKeys()), done(objects.getAll())]);
      const stored = new Map<string, Entry>();
      const stale: IDBValidKey[] = [];
      keys.forEach((key, index) => {
        const value: unknown = values[index];
        if (!isPublish(value) || removedEarly.has(value.messageId)) return void stale.push(key);
        const entry = stored.get(value.messageId);
        if (entry === undefined) stored.set(value.messageId, { message: value, keys: [key] });
        else entry.keys.push(key); // two pages queued the same publish: one send, both records go
      });
      // What this page queued meanwhile comes after what earlier pages left.
      // (One queued by both keeps the earlier place, and this page's entry, whose key is on its way.)
      for (const [messageId, entry] of items) {
        entry.keys.push(...(stored.get(messageId)?.keys ?? []));
        stored.set(messageId, entry);
      }
      items = stored;
      if (stale.length > 0) {
        write(async (objects) => {
          for (const key of stale) await done(objects.delete(key));
        });
      }
    } catch {
      database = null; // no IndexedDB here: the mirror alone
    } finally {
      loaded = true;
      removedEarly.clear();
    }
  };

  const ready = load();
  chain = ready;

  return {
    ready,
    add(message) {
      if (items.has(message.messageId)) return;
      const entry: Entry = { message, keys: [] };
      items.set(message.messageId, entry);
      store(entry);
    },
    remove(messageId) {
      const entry = items.get(messageId);
      if (!loaded) removedEarly.add(messageId);
      if (entry === undefined) return;
      items.delete(messageId);
      write(async (objects) => {
        for (const key of entry.keys) await done(objects.delete(key));
      });
    },
    has: (messageId) => items.has(messageId),
    list: () => [...items.values()].map((entry) => entry.message),
    get size() {
      return items.size;
    },
    flush: async () => {
      let tail: Promise<unknown>;
      do {
        tail = chain;
        await tail;
      } while (tail !== chain);
    },
  };
}
