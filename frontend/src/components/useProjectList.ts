// The projects the token can read (`GET /api/projects`): loaded at start, again whenever the client
// connects (after an outage new projects may exist), and every 15 s while connected (every 3 s while
// there is none yet, so the first project shows up soon after it is created).
import { useContext, useEffect, useState } from 'react';
import { HeraldContext } from '@herald/client/react';
import { HeraldError } from '@herald/client';
import { listProjects, type ProjectInfo } from '../api';

const REFRESH_MS = 15_000;
const REFRESH_EMPTY_MS = 3000;

export interface ProjectList {
  /** Sorted by name; null until the first answer. */
  projects: ProjectInfo[] | null;
  /** Why the last read failed (the list shown, if any, is the last one read). */
  error: string | null;
}

function sameList(a: ProjectInfo[] | null, b: ProjectInfo[]): boolean {
  return a !== null && a.length === b.length && a.every((project, i) => project.id === b[i].id && project.name === b[i].name && project.repo === b[i].repo);
}

/** `onUnauthorized` is called when the service refuses the token (401). */
export function useProjectList(token: string, onUnauthorized: (message: string) => void): ProjectList {
  const client = useContext(HeraldContext);
  const [list, setList] = useState<ProjectList>({ projects: null, error: null });

  useEffect(() => {
    let controller: AbortController | null = null;
    let empty = true;
    let last = 0;
    const load = () => {
      last = Date.now();
      controller?.abort();
      const current = new AbortController();
      controller = current;
      listProjects({ token, signal: current.signal }).then(
        (projects) => {
          empty = projects.length === 0;
          const sorted = [...projects].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
          // Keep the same array while the projects are the same (heads move all the time): no re-render.
          setList((previous) => ({ projects: sameList(previous.projects, sorted) ? previous.projects : sorted, error: null }));
        },
        (error: unknown) => {
          if (current.signal.aborted) return;
          if (error instanceof HeraldError && error.status === 401) {
            onUnauthorized(error.message);
            return;
          }
          const message = error instanceof HeraldError ? error.message : 'the service cannot be reached';
          setList((previous) => ({ ...previous, error: message }));
        },
      );
    };
    load();
    let connected = client?.getState().status === 'connected';
    const stop = client?.on('state', (state) => {
      const now = state.status === 'connected';
      if (now && !connected) load();
      connected = now;
    });
    const timer = setInterval(() => {
      const due = Date.now() - last >= (empty ? REFRESH_EMPTY_MS : REFRESH_MS);
      if (due && connected && document.visibilityState === 'visible') load();
    }, 1000);
    return () => {
      stop?.();
      clearInterval(timer);
      controller?.abort();
    };
  }, [client, token, onUnauthorized]);

  return list;
}
