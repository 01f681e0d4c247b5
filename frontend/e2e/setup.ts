// Before the browser tests: Debian's chromium (installed when missing and we are root; downloading a
// browser does not work on these machines) and a built dashboard at least as new as its sources.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CHROMIUM } from './browser';

const frontend = resolve(import.meta.dirname, '..');

function ensureChromium(): void {
  if (existsSync(CHROMIUM)) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`${CHROMIUM} is missing; install Debian's chromium as root: apt-get update && apt-get install -y chromium`);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'chromium'], { stdio: 'inherit', env });
  if (!existsSync(CHROMIUM)) throw new Error(`apt-get installed chromium, but ${CHROMIUM} is still missing`);
}

/** The newest modification time under `dir`, test files aside (they are not in the build). */
function newest(dir: string): number {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) latest = Math.max(latest, newest(path));
    else if (!/\.test\.tsx?$/.test(entry.name)) latest = Math.max(latest, statSync(path).mtimeMs);
  }
  return latest;
}

function ensureBuilt(): void {
  const index = join(frontend, 'dist', 'index.html');
  if (!existsSync(index)) throw new Error('frontend/dist is missing: run `npm run build` before `npm run test:e2e`');
  const sources = Math.max(
    newest(join(frontend, 'src')),
    newest(join(frontend, 'lib', 'src')),
    statSync(join(frontend, 'index.html')).mtimeMs,
  );
  if (statSync(index).mtimeMs < sources) {
    throw new Error('frontend/dist is older than its sources (src, lib/src): run `npm run build` before `npm run test:e2e`');
  }
}

export default function setup(): void {
  ensureChromium();
  ensureBuilt();
}
