import react from '@vitejs/plugin-react';
import { defaultClientConditions, defaultServerConditions } from 'vite';
import { configDefaults, defineConfig } from 'vitest/config';

// The Python service (`python -m service serve`) listens here in development.
const backend = 'http://127.0.0.1:8000';

// The dashboard imports @herald/client (lib/, an npm workspace) by its package name, as its users do;
// this condition of the package's exports map reads it from its sources, so it needs no build first.
const source = '@herald/source';

export default defineConfig({
  plugins: [react()],
  resolve: { conditions: [source, ...defaultClientConditions] },
  ssr: { resolve: { conditions: [source, ...defaultServerConditions] } },
  build: {
    outDir: 'dist',
  },
  server: {
    proxy: {
      '/api': backend,
      '/ws': { target: backend, ws: true },
      '/healthz': backend,
      '/metrics': backend,
      '/webhooks': backend,
    },
  },
  test: {
    environment: 'jsdom',
    // The browser tests have their own run: `npm run test:e2e` (vitest.e2e.config.ts).
    exclude: [...configDefaults.exclude, 'e2e/**'],
    unstubGlobals: true,
  },
});
