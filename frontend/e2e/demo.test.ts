// The dashboard as a newcomer sees it: the live demo stream (`python -m service demo`) at 1400×900
// and at phone width. Cards fill up, nothing overflows sideways, nothing logs an error. With
// HERALD_RECORD=1 the desktop view is saved as docs/dashboard.png (the README shows it).
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PYTHON, Service, until } from '../tests/service';
import { DESKTOP, PHONE, WAIT_MS, launch, openDashboard, tokenFor, unexpectedErrors, type Dashboard } from './browser';
import { RECORD, SCREENSHOT } from './record';

const repo = resolve(import.meta.dirname, '../..');
const DEMO_PROJECTS = ['acme-web', 'agent-lab'];

let service: Service;
let browser: Browser;
let demo: ChildProcess | undefined;

beforeAll(async () => {
  [service, browser] = await Promise.all([Service.start(), launch()]);
  demo = spawn(PYTHON, ['-m', 'service', 'demo', '--url', service.baseUrl, '--pace', '0.3'], {
    cwd: repo,
    env: service.env,
    stdio: 'ignore',
  });
  await until(
    async () => {
      const { body } = await service.request<{ projects: { id: string }[] }>('GET', '/api/projects');
      return DEMO_PROJECTS.every((id) => body.projects.some((project) => project.id === id));
    },
    30_000,
    'the demo to create its projects',
  );
});

afterAll(async () => {
  if (demo !== undefined && demo.exitCode === null) {
    const exited = new Promise((done) => demo?.once('exit', done));
    demo.kill('SIGINT');
    await exited;
  }
  await browser?.close();
  await service?.dispose();
});

/** Waits until every demo card shows at least this many runs, notifications and validations. */
async function filled(dashboard: Dashboard, least: { runs: number; prs: number; validations: number }, timeout = WAIT_MS * 2) {
  await dashboard.page.waitForFunction(
    ({ projects, least }) =>
      projects.every((id) => {
        const card = document.querySelector(`[data-project-id="${id}"]`);
        const count = (list: string) => card?.querySelectorAll(`ul.${list} > li`).length ?? 0;
        return count('runs') >= least.runs && count('prs') >= least.prs && count('validations') >= least.validations;
      }),
    { projects: DEMO_PROJECTS, least },
    { timeout, polling: 200 },
  );
}

async function overflow(dashboard: Dashboard): Promise<number> {
  return dashboard.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
}

describe('the demo stream', () => {
  it('fills both demo cards at 1400×900 and at phone width, without overflow or console errors', async () => {
    const token = tokenFor(service, DEMO_PROJECTS, 'admin', 'ada');
    const desktop = await openDashboard(browser, service, token, { viewport: DESKTOP });
    await desktop.waitForConnection('connected');
    for (const id of DEMO_PROJECTS) await desktop.card(id).waitFor();
    await filled(desktop, { runs: 2, prs: 2, validations: 4 });
    expect(await overflow(desktop)).toBe(0);
    if (RECORD) {
      // A fuller picture for the README: every list at its card's limit, then a moment to settle.
      await filled(desktop, { runs: 4, prs: 5, validations: 6 }, 120_000);
      await desktop.page.screenshot({ path: SCREENSHOT });
    }

    const phone = await openDashboard(browser, service, token, { viewport: PHONE });
    await phone.waitForConnection('connected');
    await filled(phone, { runs: 2, prs: 2, validations: 4 });
    expect(await overflow(phone)).toBe(0);

    expect(unexpectedErrors(desktop.errors)).toEqual([]);
    expect(unexpectedErrors(phone.errors)).toEqual([]);
    await desktop.context.close();
    await phone.context.close();
  }, RECORD ? 240_000 : undefined);
});
