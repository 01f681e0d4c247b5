// The filters' pure parts: a datetime-local value read in the browser's zone as a UTC instant,
// impossible dates refused; which live events a filtered page takes in; file sizes and names.
import { describe, expect, it } from 'vitest';
import type { Event } from '@herald/client';
import { NO_FILTER } from '../../api';
import { hashOf } from '../../../tests/fakes';
import { exportFilename, formatBytes } from './ExportButton';
import { localToIso, takesLive } from './filters';

const live = (type: Event['type'], timestamp: string): Event => ({
  type,
  projectId: 'p',
  seq: 9,
  messageId: 'm9',
  timestamp,
  hash: hashOf(9),
  data: {},
});

describe('localToIso', () => {
  it('reads a datetime-local value on the local clock and gives the UTC instant, with or without seconds', () => {
    expect(localToIso('2026-03-01T09:30')).toBe(new Date(2026, 2, 1, 9, 30).toISOString());
    expect(localToIso('2026-03-01T09:30:15')).toBe(new Date(2026, 2, 1, 9, 30, 15).toISOString());
    expect(localToIso('2026-03-01T09:30:15.5')).toBe(new Date(2026, 2, 1, 9, 30, 15, 500).toISOString());
    expect(localToIso('2026-03-01T09:30')).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:00\.000Z$/);
  });

  it('refuses what is not a date and time, and dates that do not exist', () => {
    for (const value of ['', 'yesterday', '2026-03-01', '2026-02-30T10:00', '2026-13-01T10:00', '2026-03-01T25:00', '2026-03-01T10:60']) {
      expect(localToIso(value)).toBeNull();
    }
  });
});

describe('takesLive', () => {
  it('takes an event of the chosen type stamped since `since`, and none while a subject or `until` is set', () => {
    const now = '2026-03-01T10:00:00.000Z';
    expect(takesLive(NO_FILTER, live('pr_notification', now))).toBe(true);
    expect(takesLive({ ...NO_FILTER, type: 'agent_run_progress' }, live('pr_notification', now))).toBe(false);
    expect(takesLive({ ...NO_FILTER, since: '2026-03-01T09:00:00.000Z' }, live('pr_notification', now))).toBe(true);
    expect(takesLive({ ...NO_FILTER, since: '2026-03-01T11:00:00.000Z' }, live('pr_notification', now))).toBe(false);
    expect(takesLive({ ...NO_FILTER, subject: '7' }, live('pr_notification', now))).toBe(false);
    expect(takesLive({ ...NO_FILTER, until: '2026-03-02T00:00:00.000Z' }, live('pr_notification', now))).toBe(false);
  });
});

describe('the export file', () => {
  it('is named after the project, and its size is told in B, kB and MB', () => {
    expect(exportFilename('web', 'ndjson')).toBe('web-events.ndjson');
    expect(exportFilename('a/b c', 'csv')).toBe('a_b_c-events.csv');
    expect([0, 999, 1000, 12_345, 4_100_000].map(formatBytes)).toEqual(['0 B', '999 B', '1.0 kB', '12.3 kB', '4.1 MB']);
  });
});
