import type { Tone } from './status';

/** A progress bar (0–100) in the tone of its run's status, with its value for screen readers. */
export function ProgressBar({ value, tone, label }: { value: number; tone: Tone; label: string }) {
  const clamped = Math.min(100, Math.max(0, value));
  return (
    <div
      className={`progress tone-${tone}`}
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={clamped}
    >
      <div className="progress-fill" style={{ width: `${clamped}%` }} />
    </div>
  );
}

/** 42, 42.5: at most one decimal, as producers report it. */
export function formatPercent(value: number): string {
  return `${Math.round(value * 10) / 10}%`;
}
