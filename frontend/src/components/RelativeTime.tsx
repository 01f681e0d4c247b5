// Times relative to now ("12 s ago") that tick: one shared one-second clock for the whole page.
import { useSyncExternalStore } from 'react';

let now = Date.now();
let timer: ReturnType<typeof setInterval> | null = null;
const listeners = new Set<() => void>();

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  if (timer === null) {
    now = Date.now();
    timer = setInterval(() => {
      now = Date.now();
      for (const each of listeners) each();
    }, 1000);
  }
  return () => {
    listeners.delete(listener);
    if (listeners.size === 0 && timer !== null) {
      clearInterval(timer);
      timer = null;
    }
  };
}

const snapshot = () => now;

/** The time (ms since the epoch), updated every second while any component uses it. */
export function useNow(): number {
  return useSyncExternalStore(subscribe, snapshot, snapshot);
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago"; a time ahead of `now` counts as now. */
export function formatAgo(time: number, now: number): string {
  const seconds = Math.max(0, Math.round((now - time) / 1000));
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.floor(hours / 24)} d ago`;
}

export function RelativeTime({ iso, className }: { iso: string; className?: string }) {
  const current = useNow();
  const time = Date.parse(iso);
  if (Number.isNaN(time)) return null;
  return (
    <time className={className ?? 'time'} dateTime={iso} title={new Date(time).toLocaleString()}>
      {formatAgo(time, current)}
    </time>
  );
}
