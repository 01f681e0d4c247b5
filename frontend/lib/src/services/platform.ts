// What the client needs from its surroundings, so that Node tests can stand in for a browser.

/** The browser's network and visibility signals. */
export interface Platform {
  /** Whether the network is thought to be up (`navigator.onLine`). */
  online(): boolean;
  /** Calls the handlers on the `online` and `offline` events and when the page becomes visible;
   * returns the function that stops it. */
  watch(handlers: { online(): void; offline(): void; visible(): void }): () => void;
}

/** The page's signals; outside a browser, a network that is always up and never changes. */
export function browserPlatform(): Platform {
  return {
    online: () => typeof navigator === 'undefined' || navigator.onLine !== false,
    watch(handlers) {
      if (typeof window === 'undefined' || typeof document === 'undefined') {
        return () => {};
      }
      const online = () => handlers.online();
      const offline = () => handlers.offline();
      const visibility = () => {
        if (document.visibilityState === 'visible') handlers.visible();
      };
      window.addEventListener('online', online);
      window.addEventListener('offline', offline);
      document.addEventListener('visibilitychange', visibility);
      return () => {
        window.removeEventListener('online', online);
        window.removeEventListener('offline', offline);
        document.removeEventListener('visibilitychange', visibility);
      };
    },
  };
}

/** The part of the Web Storage API the client uses (where it keeps its clientId). */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** A storage that forgets everything when the page goes. */
export function memoryStorage(): KeyValueStorage {
  const items = new Map<string, string>();
  return {
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => void items.set(key, value),
  };
}

/** `localStorage` when there is one that works (a sandboxed frame may refuse it), else memory. */
export function browserStorage(): KeyValueStorage {
  try {
    if (typeof localStorage !== 'undefined') {
      const probe = 'herald.probe';
      localStorage.setItem(probe, probe);
      localStorage.removeItem(probe);
      return localStorage;
    }
  } catch {
    // Storage disabled or full: a clientId per page is the best left.
  }
  return memoryStorage();
}

/** 128 random bits as 32 hex digits: a clientId or messageId (works outside secure contexts too). */
export function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}
