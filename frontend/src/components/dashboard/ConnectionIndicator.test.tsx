// What the connection indicator says for each state of the client (docs/client.md, "States"), and
// that the events streaming past do not re-render it.
import { act, cleanup, render, screen } from '@testing-library/react';
import { Profiler } from 'react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { WebSocketState } from '@herald/client';
import { HeraldContext } from '@herald/client/react';
import { event, socketClient } from '../../../tests/fakes';
import { ConnectionIndicator, describeConnection } from './ConnectionIndicator';

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

const NOW = 1_000_000;

function state(patch: Partial<WebSocketState>): WebSocketState {
  return { status: 'connecting', reconnectAttempts: 0, transport: null, pollIntervalMs: null, nextRetryAt: null, queued: 0, online: true, ...patch };
}

function said(patch: Partial<WebSocketState>): string {
  const view = describeConnection(state(patch), NOW);
  return [view.kind, view.label, view.transport, view.queued].filter(Boolean).join(' | ');
}

describe('describeConnection', () => {
  it('names each state, the transport and the queued publishes', () => {
    expect(said({ status: 'connected', transport: 'websocket' })).toBe('connected | Connected | via WebSocket');
    expect(said({ status: 'connected', transport: 'sse', queued: 2 })).toBe('connected | Connected | via SSE | 2 queued');
    expect(said({ status: 'connected', transport: 'polling', pollIntervalMs: 5000 })).toBe('connected | Connected | via polling every 5 s');
    expect(said({ transport: 'websocket' })).toBe('connecting | Connecting | trying WebSocket');
    expect(said({ reconnectAttempts: 3, nextRetryAt: NOW + 2100, transport: 'sse' })).toBe(
      'reconnecting | Reconnecting (attempt 3, next try in 3 s) | trying SSE',
    );
    expect(said({ reconnectAttempts: 1, nextRetryAt: null, transport: 'websocket' })).toBe(
      'reconnecting | Reconnecting (attempt 1, trying now) | trying WebSocket',
    );
    expect(said({ online: false, reconnectAttempts: 4, queued: 1 })).toBe('offline | Offline, waiting for the network | 1 queued');
    expect(said({ status: 'disconnected' })).toBe('disconnected | Disconnected');
    expect(said({ status: 'error', error: 'connection closed (4401: token expired)' })).toBe(
      'error | Error: connection closed (4401: token expired)',
    );
  });
});

describe('ConnectionIndicator', () => {
  it('renders again when the connection changes, not when an event arrives', () => {
    vi.useFakeTimers(); // the indicator's one-second clock stands still: only the client renders it
    const { client, fake } = socketClient();
    let renders = 0;
    render(
      <HeraldContext value={client}>
        <Profiler id="indicator" onRender={() => (renders += 1)}>
          <ConnectionIndicator />
        </Profiler>
      </HeraldContext>,
    );
    act(() => {
      client.connect();
      fake.last.accept();
      client.subscribe('p1');
      fake.last.receive({ type: 'subscribed', projectId: 'p1', after: 0, head: 0 });
    });
    expect(screen.getByRole('status').dataset.connection).toBe('connected');
    const settled = renders;

    act(() => {
      for (let seq = 1; seq <= 5; seq += 1) fake.last.receive(event('p1', seq));
    });
    expect(client.getState().lastMessage?.seq).toBe(5); // the client's state did change, five times
    expect(renders).toBe(settled);

    act(() => {
      void client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: event('p1', 6).data });
    });
    expect(screen.getByRole('status').dataset.queued).toBe('1');
    expect(renders).toBe(settled + 1);
  });
});
