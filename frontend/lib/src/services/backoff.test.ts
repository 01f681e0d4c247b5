// @vitest-environment node
import { describe, expect, it } from 'vitest';
import { backoff, randomInt } from './backoff.js';

describe('backoff', () => {
  it('stays within [min, min(max, min + min * 2^step)] and never exceeds max', () => {
    for (let step = 0; step < 40; step += 1) {
      const low = backoff(step, 500, 20_000, () => 0);
      const high = backoff(step, 500, 20_000, () => 0.999_999);
      expect(low).toBe(500);
      expect(high).toBe(Math.min(20_000, 500 + Math.min(20_000, 500 * 2 ** step)));
      expect(high).toBeLessThanOrEqual(20_000);
    }
  });

  it('doubles the ceiling with each step until max', () => {
    const ceilings = [0, 1, 2, 3, 4, 5, 6].map((step) => backoff(step, 500, 20_000, () => 0.999_999));
    expect(ceilings).toEqual([1000, 1500, 2500, 4500, 8500, 16_500, 20_000]);
  });

  it('is jittered over the whole window (full jitter), not clustered', () => {
    const delays = Array.from({ length: 2000 }, () => backoff(4, 500, 20_000));
    const [lowest, highest] = [Math.min(...delays), Math.max(...delays)];
    // window: 500 .. 8500; 2000 uniform draws reach near both ends and spread over it.
    expect(lowest).toBeGreaterThanOrEqual(500);
    expect(highest).toBeLessThanOrEqual(8500);
    expect(lowest).toBeLessThan(1000);
    expect(highest).toBeGreaterThan(8000);
    expect(new Set(delays.map((delay) => Math.floor(delay / 1000))).size).toBe(9);
  });

  it('randomInt includes both ends', () => {
    expect(randomInt(0, 10, () => 0)).toBe(0);
    expect(randomInt(0, 10, () => 0.999_999)).toBe(10);
  });
});
