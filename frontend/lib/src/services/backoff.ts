/** An integer from `min` to `max`, both included. */
export function randomInt(min: number, max: number, random: () => number = Math.random): number {
  return Math.floor(min + random() * (max - min + 1));
}

/**
 * The delay before retry number `step + 1`: exponential with full jitter, as centrifuge-js does it,
 * `min(maxMs, minMs + randomInt(0, min(maxMs, minMs * 2 ** step)))`. So every delay lies within
 * [minMs, maxMs], the ceiling doubles with each failure, and clients that lost the same server
 * spread their returns over the whole window instead of arriving together.
 */
export function backoff(step: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(step, 31));
  return Math.min(maxMs, minMs + randomInt(0, ceiling, random));
}
