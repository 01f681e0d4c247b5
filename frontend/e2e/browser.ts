// The browser side of the e2e tests: Debian's chromium through playwright-core, a dashboard page
// signed in with a token, its console errors, and the events the tests publish over HTTP.
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import type { Event, EventDataByType, EventType } from '@herald/client';
import { FACTOR, type Service } from '../tests/service';

/** Debian's chromium (HERALD_CHROMIUM overrides); Playwright's own browser downloads are not used. */
export const CHROMIUM = process.env.HERALD_CHROMIUM || '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export function launch(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 30_000 * FACTOR });
}

export const DESKTOP = { width: 1400, height: 900 };
export const PHONE = { width: 390, height: 844 };

/** Time allowances for the page, scaled for slow machines. */
export const WAIT_MS = 20_000 * FACTOR;

export interface Dashboard {
  context: BrowserContext;
  page: Page;
  /** Console errors and uncaught exceptions of the page, in order. */
  errors: string[];
  /** The card of a project (its root carries `data-project-id`). */
  card(projectId: string): ReturnType<Page['locator']>;
  /** The connection indicator's kind: connected, reconnecting, offline... */
  connection(): Promise<string | null>;
  /** Waits until the indicator says `kind`. */
  waitForConnection(kind: string): Promise<void>;
}

/**
 * A fresh browser context (its own storage: a new clientId, no read markers) on the dashboard at
 * `path`, signed in through the URL fragment as `make run` prints it; resolves once the page has
 * rendered the app.
 */
export async function openDashboard(
  browser: Browser,
  service: Service,
  token: string,
  options: {
    path?: string;
    viewport?: { width: number; height: number };
    /** Runs before the page opens (e.g. routes that block a transport). */
    prepare?: (context: BrowserContext) => Promise<void>;
  } = {},
): Promise<Dashboard> {
  const context = await browser.newContext({ viewport: options.viewport ?? DESKTOP });
  context.setDefaultTimeout(WAIT_MS);
  await options.prepare?.(context);
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
  await page.goto(`${service.baseUrl}${options.path ?? '/'}#token=${token}`);
  const indicator = page.locator('[data-connection]');
  await indicator.waitFor();
  return {
    context,
    page,
    errors,
    card: (projectId) => page.locator(`[data-project-id="${projectId}"]`),
    connection: () => indicator.getAttribute('data-connection'),
    waitForConnection: async (kind) => {
      await page.waitForFunction((want) => document.querySelector('[data-connection]')?.getAttribute('data-connection') === want, kind, {
        timeout: WAIT_MS,
        polling: 50,
      });
    },
  };
}

/** What Chromium itself logs when a connection is refused or the network is down (not the app's errors). */
const NETWORK_NOISE = [/net::ERR_/, /^WebSocket connection to .* failed/];

/**
 * The page's console errors a test did not provoke. With `network`, the browser's own reports of
 * refused connections are expected (the test killed the service or cut the network).
 */
export function unexpectedErrors(errors: string[], { network = false } = {}): string[] {
  return errors.filter((text) => !(network && NETWORK_NOISE.some((pattern) => pattern.test(text))));
}

/** Publishes an event over HTTP, as any producer would; returns it as stored. */
export async function publish<K extends EventType>(
  service: Service,
  projectId: string,
  type: K,
  data: EventDataByType[K],
  messageId?: string,
): Promise<Event> {
  const { status, body } = await service.request<Event>('POST', `/api/projects/${projectId}/events`, { type, data, messageId });
  if (status !== 201 && status !== 200) throw new Error(`publishing to ${projectId}: HTTP ${status} ${JSON.stringify(body)}`);
  return body;
}

/** A pull-request notification numbered `number`, titled so a test can find it. */
export function pr(number: number, title: string, action = 'opened'): EventDataByType['pr_notification'] {
  return { action, number, title, url: `https://github.com/octo/demo/pull/${number}`, repo: 'octo/demo', author: 'mona', headSha: 'a'.repeat(40) };
}

/** The seqs of the items a card shows in one of its lists, top to bottom. */
export async function seqsIn(dashboard: Dashboard, projectId: string, list: 'prs' | 'runs' | 'validations'): Promise<number[]> {
  const values = await dashboard.card(projectId).locator(`ul.${list} > li`).evaluateAll((items) =>
    items.map((item) => Number(item.getAttribute('data-seq'))),
  );
  return values;
}

/** A token for these projects only, so a page shows just the test's cards. */
export function tokenFor(service: Service, projects: string[], scopes = 'admin', user = 'e2e'): string {
  return service.cli('token', '--user', user, '--projects', projects.join(','), '--scopes', scopes).trim();
}
