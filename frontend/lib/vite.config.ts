// The library build (`npm run build` here, or `npm pack`): ES modules for the two entries of the
// exports map, with React, zustand and eventsource-parser left to the application that installs us.
// tsc writes the declarations beside them (tsconfig.build.json).
import { defineConfig } from 'vite';

const external = [/^react(\/|$)/, /^zustand(\/|$)/, /^eventsource-parser(\/|$)/];

export default defineConfig({
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // A library is read in its users' debuggers and minified by their bundlers.
    minify: false,
    lib: {
      entry: { index: 'src/index.ts', react: 'src/react.ts' },
      formats: ['es'],
    },
    rolldownOptions: { external },
  },
});
