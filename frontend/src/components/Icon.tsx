// Small inline icons (16 × 16, currentColor), so a status reads by shape as well as by color and
// looks the same whatever fonts the machine has.

const PATHS = {
  check: 'M3.5 8.5l3 3 6-7',
  cross: 'M4.5 4.5l7 7M11.5 4.5l-7 7',
  clock: 'M8 4.5V8l2.5 1.5M14 8A6 6 0 1 1 2 8a6 6 0 0 1 12 0z',
  ban: 'M3.8 3.8l8.4 8.4M14 8A6 6 0 1 1 2 8a6 6 0 0 1 12 0z',
  minus: 'M4 8h8',
  alert: 'M8 5v3.5M8 11v.01M7.1 2.5L1.6 12.2A1 1 0 0 0 2.5 13.7h11a1 1 0 0 0 .9-1.5L8.9 2.5a1 1 0 0 0-1.8 0z',
  retry: 'M13 8a5 5 0 1 1-1.5-3.6M13 2.5v3h-3',
  stop: 'M5 5h6v6H5z',
  merge: 'M5 3.5v9M5 6.5c0 3 6 2 6 6M5 3.5a1.5 1.5 0 1 0 0-.01M11 12.5a1.5 1.5 0 1 0 0-.01',
  pull: 'M5 3.5v9M11 6.5v6M11 6.5c0-2-1-3-3-3H7M5 3.5a1.5 1.5 0 1 0 0-.01M11 12.5a1.5 1.5 0 1 0 0-.01M5 12.5a1.5 1.5 0 1 0 0-.01',
  eye: 'M1.5 8S4 3.5 8 3.5 14.5 8 14.5 8 12 12.5 8 12.5 1.5 8 1.5 8zM8 9.8a1.8 1.8 0 1 0 0-3.6 1.8 1.8 0 0 0 0 3.6z',
  push: 'M8 13V3M4.5 6.5L8 3l3.5 3.5',
  dot: 'M8 10a2 2 0 1 0 0-4 2 2 0 0 0 0 4z',
  bell: 'M4 11V7a4 4 0 1 1 8 0v4l1.5 1.5h-11zM6.5 14h3',
  arrowLeft: 'M13 8H3M7 4L3 8l4 4',
  offline: 'M2 2l12 12M5.5 8.6a4 4 0 0 1 2-.6M2.5 5.8a8 8 0 0 1 3-1.6M10.5 4.3a8 8 0 0 1 3 1.5M8 12.5v.01',
  signal: 'M2.5 5.8a8 8 0 0 1 11 0M4.6 8.2a5 5 0 0 1 6.8 0M6.7 10.6a2 2 0 0 1 2.6 0M8 12.8v.01',
  spinner: 'M8 2a6 6 0 1 0 6 6',
} as const;

export type IconName = keyof typeof PATHS;

export function Icon({ name, className }: { name: IconName; className?: string }) {
  return (
    <svg
      className={`icon icon-${name}${className ? ` ${className}` : ''}`}
      viewBox="0 0 16 16"
      width="16"
      height="16"
      fill="none"
      stroke="currentColor"
      strokeWidth="1.6"
      strokeLinecap="round"
      strokeLinejoin="round"
      aria-hidden="true"
      focusable="false"
    >
      <path d={PATHS[name]} />
    </svg>
  );
}
