import js from '@eslint/js';
import reactHooks from 'eslint-plugin-react-hooks';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig([
  globalIgnores(['dist', 'lib/dist', 'node_modules']),
  js.configs.recommended,
  tseslint.configs.recommended,
  reactHooks.configs.flat.recommended,
  {
    // The client and the store's core (the package's `.` entry) are framework-free; React binds to them
    // in hooks/ and store/react.ts (its `./react` entry).
    files: ['lib/src/index.ts', 'lib/src/services/**/*.ts', 'lib/src/store/projectStore.ts', 'lib/src/types/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: ['react', 'react-dom', 'zustand'],
          patterns: ['react/*', 'react-dom/*', 'zustand/react', 'zustand/react/*'],
        },
      ],
    },
  },
  {
    // The dashboard uses @herald/client as its users do: through the package's entries, never its files.
    files: ['src/**/*.{ts,tsx}', 'tests/**/*.ts', 'e2e/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['**/lib/src/**', '@herald/client/*', '!@herald/client/react'],
              message: 'import from @herald/client or @herald/client/react',
            },
          ],
        },
      ],
    },
  },
  {
    // Build scripts, and the scripts the pack test runs against the packed client, run in Node.
    files: ['scripts/**/*.mjs', 'tests/pack/*.mjs'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
]);
