import react from '@vitejs/plugin-react';
import { configDefaults, defineConfig } from 'vitest/config';

// The Python service (`python -m service serve`) listens here in development.
const backend = 'http://127.0.0.1:8000';

export default defineConfig({
  plugins: [react()],
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
