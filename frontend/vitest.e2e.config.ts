// The dashboard in a real Chromium (`npm run test:e2e`): Playwright (playwright-core) drives Debian's
// chromium against the real service serving the built frontend (`npm run build` first). One file at
// a time, in Node, with timeouts for a loaded machine.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['e2e/**/*.test.ts'],
    environment: 'node',
    globalSetup: ['e2e/setup.ts'],
    fileParallelism: false,
    testTimeout: 90_000,
    hookTimeout: 90_000,
    // A failed browser test is worth its console output, not a retry that hides a flake.
    retry: 0,
  },
});
