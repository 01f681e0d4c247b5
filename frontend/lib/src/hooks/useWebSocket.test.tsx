// The hooks are a thin view of the client: state re-renders, verbs pass through, references count.
import { act, cleanup, render, renderHook, screen } from '@testing-library/react';
import { StrictMode, type ReactNode } from 'react';
import { afterEach, describe, expect, it } from 'vitest';
import { event, fakePlatform, fakeSockets } from '../../../tests/fakes.js';
import { HeraldClient } from '../services/client.js';
import { memoryStorage } from '../services/platform.js';
import { HeraldContext, useConnectionState, useSubscription, useWebSocket } from './useWebSocket.js';

afterEach(cleanup);

function makeClient() {
  const fake = fakeSockets();
  const client = new HeraldClient({
    token: 't',
    baseUrl: 'http://herald.test',
    WebSocket: fake.WebSocket,
    platform: fakePlatform().platform,
    storage: memoryStorage(),
  });
  return { client, fake };
}

function Status() {
  const { state } = useWebSocket();
  return (
    <p role="status">
      {state.status} attempts={state.reconnectAttempts} last={state.lastMessage?.seq ?? '-'}
    </p>
  );
}

describe('useWebSocket', () => {
  it('re-renders on every state change of the client from the context', () => {
    const { client, fake } = makeClient();
    render(
      <HeraldContext value={client}>
        <Status />
      </HeraldContext>,
    );
    expect(screen.getByRole('status').textContent).toBe('disconnected attempts=0 last=-');
    act(() => client.connect());
    expect(screen.getByRole('status').textContent).toBe('connecting attempts=0 last=-');
    act(() => fake.last.accept());
    expect(screen.getByRole('status').textContent).toBe('connected attempts=0 last=-');
    act(() => {
      client.subscribe('p1');
      fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 0 });
      fake.last.receive(event('p1', 1));
    });
    expect(screen.getByRole('status').textContent).toBe('connected attempts=0 last=1');
    act(() => fake.last.drop(1006));
    expect(screen.getByRole('status').textContent).toBe('connecting attempts=1 last=1');
    act(() => client.close());
    expect(screen.getByRole('status').textContent).toBe('disconnected attempts=0 last=1');
  });

  it('returns the seed interface, whose verbs are the client’s', async () => {
    const { client, fake } = makeClient();
    const { result } = renderHook(() => useWebSocket(client));
    expect(Object.keys(result.current).sort()).toEqual(['sendMessage', 'state', 'subscribe', 'unsubscribe']);
    act(() => {
      client.connect();
      fake.last.accept();
    });
    act(() => {
      result.current.subscribe('p1');
      result.current.subscribe('p1');
      result.current.unsubscribe('p1');
    });
    expect(fake.last.frames('subscribe')).toEqual([{ type: 'subscribe', projectId: 'p1' }]);
    expect(fake.last.frames('unsubscribe')).toEqual([]);

    let published: Promise<unknown> = Promise.resolve();
    act(() => {
      published = result.current.sendMessage({
        type: 'validation_update',
        projectId: 'p1',
        data: { name: 'ci', status: 'completed', conclusion: 'success' },
        messageId: 'm1',
      });
    });
    expect(result.current.state.queued).toBe(1);
    act(() => fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'm1', seq: 1 }));
    await expect(published).resolves.toMatchObject({ seq: 1 });
    expect(result.current.state.queued).toBe(0);
  });

  it('keeps its result while the state is unchanged', () => {
    const { client } = makeClient();
    const { result, rerender } = renderHook(() => useWebSocket(client));
    const first = result.current;
    rerender();
    expect(result.current).toBe(first);
  });

  it('needs a client', () => {
    expect(() => renderHook(() => useWebSocket())).toThrow(/pass a client/);
  });
});

describe('useConnectionState', () => {
  it('is the state without lastMessage, and the same object until a field of it changes', () => {
    const { client, fake } = makeClient();
    const { result } = renderHook(() => useConnectionState(client));
    act(() => {
      client.connect();
      fake.last.accept();
      client.subscribe('p1');
      fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 0 });
    });
    const connected = result.current;
    expect(connected).toMatchObject({ status: 'connected', transport: 'websocket', queued: 0 });
    expect('lastMessage' in connected).toBe(false);
    act(() => fake.last.receive(event('p1', 1)));
    expect(client.getState().lastMessage?.seq).toBe(1);
    expect(result.current).toBe(connected);
    act(() => fake.last.drop(1006));
    expect(result.current).toMatchObject({ status: 'connecting', reconnectAttempts: 1 });
    act(() => client.close());
  });
});

describe('useSubscription', () => {
  it('holds one reference while mounted, under StrictMode and with several components', () => {
    const { client, fake } = makeClient();
    act(() => {
      client.connect();
      fake.last.accept();
    });
    function Card({ id }: { id: string }) {
      useSubscription(id);
      return null;
    }
    const wrapper = ({ children }: { children: ReactNode }) => (
      <StrictMode>
        <HeraldContext value={client}>{children}</HeraldContext>
      </StrictMode>
    );
    const first = render(<Card id="p1" />, { wrapper });
    const second = render(<Card id="p1" />, { wrapper });
    // StrictMode mounts, unmounts and mounts again: the count nets out and the server sees one
    // subscription (the interim unsubscribe/subscribe pair comes and goes in one go).
    const subscribes = () => fake.last.frames('subscribe').length;
    const unsubscribes = () => fake.last.frames('unsubscribe').length;
    expect(subscribes() - unsubscribes()).toBe(1);
    first.unmount();
    expect(subscribes() - unsubscribes()).toBe(1);
    second.unmount();
    expect(subscribes() - unsubscribes()).toBe(0);
    expect(fake.last.sent.at(-1)).toEqual({ type: 'unsubscribe', projectId: 'p1' });
  });

  it('subscribes from `after` and follows a changing project', () => {
    const { client, fake } = makeClient();
    act(() => {
      client.connect();
      fake.last.accept();
    });
    const { rerender, unmount } = renderHook(({ id }) => useSubscription(id, { after: 5 }, client), {
      initialProps: { id: 'p1' as string | null },
    });
    rerender({ id: 'p2' });
    rerender({ id: null });
    expect(fake.last.sent.slice(1)).toEqual([
      { type: 'subscribe', projectId: 'p1', after: 5 },
      { type: 'unsubscribe', projectId: 'p1' },
      { type: 'subscribe', projectId: 'p2', after: 5 },
      { type: 'unsubscribe', projectId: 'p2' },
    ]);
    unmount();
  });
});
