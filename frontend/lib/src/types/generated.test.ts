// @vitest-environment node
// websocket.ts and codes.ts are what the generator makes of the service's schema today, byte for
// byte. Fails (never skips) when the Python side cannot be run: set HERALD_PYTHON.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { generate } from '../../../scripts/gen-types.mjs';

const frontend = resolve(import.meta.dirname, '../../..');

describe('generated wire types', () => {
  it('match service/messages.py and service/codes.py (run `npm run gen:types` after changing them)', async () => {
    const files = await generate();
    expect(Object.keys(files).sort()).toEqual(['lib/src/types/codes.ts', 'lib/src/types/websocket.ts']);
    for (const [path, text] of Object.entries(files)) {
      const committed = readFileSync(resolve(frontend, path), 'utf8');
      expect(committed, `${path} is stale: run \`npm run gen:types\``).toBe(text);
    }
  }, 30_000);
});
