// The store's React binding: a project loaded while a component shows it, re-rendering on its events.
import { act, cleanup, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { fakeProjectSource, prEvent, projectState } from '../../../tests/fakes.js';
import { memoryStorage } from '../services/platform.js';
import { createProjectStore, totalUnread } from './projectStore.js';
import { ProjectStoreContext, useProject, useProjectStore } from './react.js';

afterEach(cleanup);

describe('useProject and useProjectStore', () => {
  it('loads the project while mounted, re-renders on its events, and unloads on unmount', async () => {
    const { client, source, deliver } = fakeProjectSource(async () => projectState(1, [prEvent(1)]));
    const store = createProjectStore({ client: source, storage: memoryStorage() });
    function Card() {
      const project = useProject('p1', store);
      return <p role="status">{project === undefined ? 'none' : `${project.status} ${project.notifications.length}`}</p>;
    }
    function Badge() {
      return <p role="note">{useProjectStore(totalUnread)} unread</p>;
    }
    const { unmount } = render(
      <ProjectStoreContext value={store}>
        <Card />
        <Badge />
      </ProjectStoreContext>,
    );
    await vi.waitFor(() => expect(screen.getByRole('status').textContent).toBe('ready 1'));
    expect(screen.getByRole('note').textContent).toBe('0 unread');
    act(() => deliver(prEvent(2)));
    expect(screen.getByRole('status').textContent).toBe('ready 2');
    expect(screen.getByRole('note').textContent).toBe('1 unread');
    unmount();
    expect(client.unsubscribe).toHaveBeenCalledWith('p1');
    expect(store.getState().projects.p1).toBeUndefined();
  });
});
