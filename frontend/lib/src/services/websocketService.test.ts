// @vitest-environment node
// The seed's module path still serves the client's public API, the very same objects as client.ts.
import { describe, expect, it } from 'vitest';
import * as client from './client.js';
import * as websocketService from './websocketService.js';

describe('services/websocketService', () => {
  it('re-exports HeraldClient, createClient, defaults and HeraldError from client.ts', () => {
    expect(Object.keys(websocketService).sort()).toEqual(['HeraldClient', 'HeraldError', 'createClient', 'defaults']);
    expect(websocketService.HeraldClient).toBe(client.HeraldClient);
    expect(websocketService.createClient).toBe(client.createClient);
    expect(websocketService.defaults).toBe(client.defaults);
    expect(websocketService.HeraldError).toBe(client.HeraldError);
  });
});
