// React's view of the project store (projectStore.ts, which knows nothing of React), as zustand's
// react.ts is a thin layer over its vanilla.ts: a context for the app's store, and hooks that read it.
import { createContext, useContext, useEffect } from 'react';
import { useStore } from 'zustand';
import type { Project, ProjectStore, ProjectStoreState } from './projectStore.js';

/** Provides the app's store: `<ProjectStoreContext value={store}>…</ProjectStoreContext>`. */
export const ProjectStoreContext = createContext<ProjectStore | null>(null);

function useChosenStore(store: ProjectStore | undefined): ProjectStore {
  const provided = useContext(ProjectStoreContext);
  const chosen = store ?? provided;
  if (chosen === null) {
    throw new Error('useProjectStore: pass a store or render inside <ProjectStoreContext value={store}>');
  }
  return chosen;
}

/**
 * The store's state through `selector` (re-rendering when its result changes by identity): pass
 * selectors that return stored objects or primitives, or projectStore.ts's memoized ones.
 */
export function useProjectStore<T>(selector: (state: ProjectStoreState) => T, store?: ProjectStore): T {
  return useStore(useChosenStore(store), selector);
}

/** Keeps the project loaded while the component is mounted, and returns it (undefined before). */
export function useProject(projectId: string, store?: ProjectStore): Project | undefined {
  const chosen = useChosenStore(store);
  useEffect(() => {
    chosen.getState().loadProject(projectId).catch(() => {
      // The project's status says it: 'error'.
    });
    return () => chosen.getState().unloadProject(projectId);
  }, [chosen, projectId]);
  return useStore(chosen, (state) => state.projects[projectId]);
}
