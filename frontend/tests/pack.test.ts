// @vitest-environment node
// @herald/client as its users get it: `npm pack` of lib/ (its prepack builds it), installed into a
// scratch project outside the checkout, where the core entry loads in Node without React, a strict
// TypeScript file compiles against both entries (Node's and bundlers' module resolution), and the
// `./react` entry loads once React is installed. Installs prefer npm's cache (what `npm ci` filled),
// at the versions the dashboard uses.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const frontend = resolve(import.meta.dirname, '..');
const lib = join(frontend, 'lib');
const fixtures = join(import.meta.dirname, 'pack');

function run(command: string, args: string[], cwd: string): string {
  try {
    return execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`\`${command} ${args.join(' ')}\` failed in ${cwd}:\n${stdout ?? ''}\n${stderr ?? ''}`, {
      cause: error,
    });
  }
}

/** `name@version` as installed in frontend/node_modules: the scratch project gets what the dashboard has. */
function pinned(name: string): string {
  const manifest = JSON.parse(readFileSync(join(frontend, 'node_modules', name, 'package.json'), 'utf8'));
  return `${name}@${manifest.version}`;
}

function install(cwd: string, packages: string[]): void {
  run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-package-lock', ...packages], cwd);
}

let scratch = '';
let tarball = '';
let version = '';

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'herald-pack-'));
  version = JSON.parse(readFileSync(join(lib, 'package.json'), 'utf8')).version;
  run('npm', ['pack', '--pack-destination', scratch], lib);
  tarball = join(scratch, `herald-client-${version}.tgz`);
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
}, 180_000);

afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('npm pack of @herald/client', () => {
  it('holds the build and the manifest, no sources and no tests', () => {
    expect(readdirSync(scratch)).toContain(`herald-client-${version}.tgz`);
    const files = run('tar', ['-tzf', tarball], scratch).trim().split('\n').sort();
    for (const file of ['dist/index.js', 'dist/index.d.ts', 'dist/react.js', 'dist/react.d.ts']) {
      expect(files).toContain(`package/${file}`);
    }
    const outside = files.filter((file) => !/^package\/(dist\/.+|package\.json|README\.md|LICENSE)$/.test(file));
    expect(outside).toEqual([]);
    expect(files.filter((file) => /\.test\.|\/src\//.test(file))).toEqual([]);
  });

  it('loads its core entry in Node without React', () => {
    install(scratch, [tarball, pinned('zustand')]);
    copyFileSync(join(fixtures, 'core.mjs'), join(scratch, 'core.mjs'));
    const found = JSON.parse(run('node', ['core.mjs'], scratch));
    expect(found.react).toBe('missing');
    expect(found.exports).toEqual(expect.arrayContaining(['HeraldClient', 'createClient', 'createProjectStore', 'CloseCode']));
    expect(found.status).toBe('disconnected');
    expect(found.clientId).toMatch(/^[0-9a-f]{32}$/);
    expect(found.projects).toEqual({});
  }, 180_000);

  it('compiles a strict TypeScript file importing both entries, and loads the React entry', () => {
    install(scratch, [pinned('react'), pinned('@types/react'), pinned('typescript')]);
    copyFileSync(join(fixtures, 'scratch.ts'), join(scratch, 'scratch.ts'));
    copyFileSync(join(fixtures, 'react.mjs'), join(scratch, 'react.mjs'));
    const tsc = join(scratch, 'node_modules', 'typescript', 'bin', 'tsc');
    const common = ['--strict', '--noEmit', '--target', 'es2022', '--lib', 'es2022,dom', '--types', 'react'];
    for (const resolution of [
      ['--module', 'nodenext', '--moduleResolution', 'nodenext'],
      ['--module', 'esnext', '--moduleResolution', 'bundler'],
    ]) {
      run('node', [tsc, ...common, ...resolution, 'scratch.ts'], scratch);
    }
    const found = JSON.parse(run('node', ['react.mjs'], scratch));
    expect(found.core).toBe('function');
    expect(found.react).toEqual([
      'HeraldContext',
      'ProjectStoreContext',
      'useConnectionState',
      'useProject',
      'useProjectStore',
      'useSubscription',
      'useWebSocket',
    ]);
  }, 180_000);
});
