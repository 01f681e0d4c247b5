// What the connection indicator says for each state of the client (docs/client.md, "States").
import { describe, expect, it } from 'vitest';
import type { WebSocketState } from '../../types/websocket';
import { describeConnection } from './ConnectionIndicator';

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
