// @vitest-environment node
// What the client itself holds, beside its parts: its identity. connection.test.ts,
// subscription.test.ts and publishQueue.test.ts cover the parts, through the client.
import { describe, expect, it } from 'vitest';
import { fakeSockets } from '../../../tests/fakes.js';
import { HeraldClient } from './client.js';
import { memoryStorage } from './platform.js';

const BASE = 'http://herald.test';

describe('HeraldClient', () => {
  it('keeps one clientId per storage', () => {
    const storage = memoryStorage();
    const fake = fakeSockets();
    const first = new HeraldClient({ token: 't', baseUrl: BASE, WebSocket: fake.WebSocket, storage });
    const second = new HeraldClient({ token: 't', baseUrl: BASE, WebSocket: fake.WebSocket, storage });
    expect(first.clientId).toMatch(/^[0-9a-f]{32}$/);
    expect(second.clientId).toBe(first.clientId);
  });
});
