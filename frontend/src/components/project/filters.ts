// The history's filters between the form and the service: a datetime-local value (the viewer's wall
// clock) to the UTC ISO time the service compares with `timestamp`, and which live events a filtered
// page may take in.
import type { Event } from '@herald/client';
import type { EventFilter } from '../../api';

/**
 * The UTC ISO time of a datetime-local value ("2026-03-01T09:30", seconds optional), read in the
 * browser's time zone; null when empty or not such a value.
 */
export function localToIso(value: string): string | null {
  const match = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?$/.exec(value.trim());
  if (match === null) return null;
  const [year, month, day, hour, minute, second = '0', fraction = '0'] = match.slice(1);
  if (+hour > 23 || +minute > 59 || +second > 59) return null;
  const time = new Date(+year, +month - 1, +day, +hour, +minute, +second, +fraction.padEnd(3, '0'));
  // new Date() rolls an impossible date over (Feb 30 → Mar 2): refuse it instead. (A wall-clock
  // time skipped by a DST change is not refused: it becomes the instant the clock jumped to.)
  if (Number.isNaN(time.getTime()) || time.getMonth() !== +month - 1 || time.getDate() !== +day) return null;
  return time.toISOString();
}

/** Whether a filter narrows the history by more than its type. */
export function narrowed(filter: EventFilter): boolean {
  return filter.since !== null || filter.until !== null || filter.subject !== null;
}

/**
 * Whether an event that arrived live belongs at the top of a page filtered by `filter`. Only the
 * service knows what matches a subject, and a live event is stamped now, so: the type must match,
 * `since` must not be after it, and no subject or `until` may be set (those pages are a fixed query).
 */
export function takesLive(filter: EventFilter, event: Event): boolean {
  if (filter.type !== null && event.type !== filter.type) return false;
  if (filter.subject !== null || filter.until !== null) return false;
  return filter.since === null || Date.parse(event.timestamp) >= Date.parse(filter.since);
}
