// The project card's notice: a project reloaded after a resync shows one quiet line saying why,
// which the user can dismiss.
import { act, cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ProjectStoreContext } from '@herald/client/react';
import { createProjectStore, memoryStorage, type Resync } from '@herald/client';
import { fakeProjectSource, prEvent, projectState } from '../../../tests/fakes';
import { ProjectCard } from './ProjectCard';

afterEach(cleanup);

describe('the project card', () => {
  it.each<[Resync, string]>([
    [{ projectId: 'p1', code: 'history_truncated', oldest: 30, stateSeq: 40 }, 'Older history was pruned; showing the current state.'],
    [{ projectId: 'p1', code: 'invalid_cursor' }, 'The service’s log was reset; reloaded the current state.'],
  ])('says quietly why the project was reloaded (%o), until dismissed', async (resync, text) => {
    const { source, resync: tell } = fakeProjectSource(async () => projectState(5, [prEvent(5)]));
    const store = createProjectStore({ client: source, storage: memoryStorage() });
    render(
      <ProjectStoreContext value={store}>
        <ProjectCard info={{ id: 'p1', name: 'P1', repo: null, head: 5 }} />
      </ProjectStoreContext>,
    );
    await vi.waitFor(() => expect(store.getState().projects.p1?.status).toBe('ready'));
    expect(screen.queryByRole('status')).toBeNull();
    act(() => tell(resync));
    const line = await screen.findByRole('status');
    expect(line.textContent).toBe(`${text}Dismiss`);
    expect(screen.queryByRole('alert')).toBeNull();
    fireEvent.click(screen.getByRole('button', { name: 'Dismiss' }));
    expect(screen.queryByRole('status')).toBeNull();
    store.dispose();
  });
});
