// @vitest-environment node
// The publish queue against a fake socket and fake timers: queued, sent in order once connected
// and again after a reconnect, settled by `published` or an `error` naming its messageId.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { connectedClient, event, socketClient } from '../../../tests/fakes.js';
import type { WebSocketMessage } from '../types/websocket.js';
import { HeraldError } from './client.js';

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date('2026-01-01T00:00:00Z'));
});
afterEach(() => {
  vi.useRealTimers();
});

describe('sendMessage', () => {
  const progress = { runId: 'r', status: 'running', progress: 5 } as const;

  it('publishes, and resolves on `published` for its messageId', async () => {
    const { client, fake } = connectedClient();
    const promise = client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'm1' });
    expect(client.getState().queued).toBe(1);
    expect(fake.last.frames('agent_run_progress')).toEqual([
      { type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'm1' },
    ]);
    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'other', seq: 1 });
    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'm1', seq: 2 });
    await expect(promise).resolves.toEqual({ type: 'published', projectId: 'p1', messageId: 'm1', seq: 2 });
    expect(client.getState().queued).toBe(0);
  });

  it('rejects on an `error` whose ref is its messageId; other errors go to on("error")', async () => {
    const { client, fake } = connectedClient();
    const errors: string[] = [];
    client.on('error', (error) => errors.push(error.code));
    const promise = client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'm1' });
    fake.last.receive({ type: 'error', code: 'forbidden', message: 'no', ref: 'p9' });
    fake.last.receive({ type: 'error', code: 'invalid_data', message: 'data.progress: too big', ref: 'm1' });
    const error = await promise.catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(HeraldError);
    expect(error).toMatchObject({ code: 'invalid_data', ref: 'm1' });
    expect(errors).toEqual(['forbidden']);
    expect(client.getState().queued).toBe(0);
  });

  it('queues while disconnected and sends in order once connected, again after a reconnect', async () => {
    const { client, fake } = socketClient();
    const first = client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'a' });
    client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'b' });
    expect(client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress, messageId: 'a' })).toBe(
      first,
    );
    expect(client.getState().queued).toBe(2);
    client.connect();
    fake.last.accept();
    const ids = () => fake.last.frames('agent_run_progress').map((frame) => frame.messageId);
    expect(ids()).toEqual(['a', 'b']);
    fake.last.receive({ type: 'published', projectId: 'p1', messageId: 'a', seq: 1 });
    fake.last.drop(1006);
    vi.advanceTimersByTime(20_000);
    fake.last.accept();
    expect(ids()).toEqual(['b']); // unanswered: sent again (the messageId makes it idempotent)
    await expect(first).resolves.toMatchObject({ seq: 1 });
  });

  it('makes a messageId when none is given, and refuses a publish over 64 KiB', async () => {
    const { client, fake } = connectedClient();
    void client.sendMessage({ type: 'agent_run_progress', projectId: 'p1', data: progress });
    expect(fake.last.frames('agent_run_progress')[0].messageId).toMatch(/^[0-9a-f]{32}$/);
    const huge = client.sendMessage({
      type: 'agent_run_progress',
      projectId: 'p1',
      data: { ...progress, message: 'x'.repeat(70_000) },
    });
    await expect(huge).rejects.toMatchObject({ code: 'too_large' });
    expect(fake.last.frames('agent_run_progress')).toHaveLength(1);
  });

  it('accepts an event the client holds (seq and timestamp are not sent)', () => {
    const { client, fake } = connectedClient();
    const held: WebSocketMessage = event('p1', 3);
    void client.sendMessage(held);
    expect(fake.last.frames('agent_run_progress')).toEqual([
      { type: 'agent_run_progress', projectId: 'p1', data: held.data, messageId: 'p1-3' },
    ]);
  });
});
