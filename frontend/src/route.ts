// The dashboard's two pages, addressed by path (the service answers index.html for any path that
// is not its own): `/` the overview, `/projects/<id>` one project. A history router in a few lines.
import { useSyncExternalStore } from 'react';

export type Route = { page: 'overview' } | { page: 'project'; projectId: string } | { page: 'missing'; path: string };

export function parseRoute(pathname: string): Route {
  if (pathname === '/' || pathname === '') return { page: 'overview' };
  const match = /^\/projects\/([^/]+)\/?$/.exec(pathname);
  if (match !== null) {
    try {
      return { page: 'project', projectId: decodeURIComponent(match[1]) };
    } catch {
      // A malformed escape names no project.
    }
  }
  return { page: 'missing', path: pathname };
}

export function projectPath(projectId: string): string {
  return `/projects/${encodeURIComponent(projectId)}`;
}

const listeners = new Set<() => void>();

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  window.addEventListener('popstate', listener);
  return () => {
    listeners.delete(listener);
    window.removeEventListener('popstate', listener);
  };
}

const pathname = () => window.location.pathname;

/** Goes to `path` without a reload (a new history entry), and scrolls to the top. */
export function navigate(path: string): void {
  if (path === window.location.pathname) return;
  window.history.pushState(null, '', path);
  window.scrollTo({ top: 0 });
  for (const listener of listeners) listener();
}

/** The current route, re-rendering on navigation (links, back and forward). */
export function useRoute(): Route {
  return parseRoute(useSyncExternalStore(subscribe, pathname, pathname));
}
