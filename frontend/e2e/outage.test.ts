// The service dies under an open dashboard (kill -9): the page says it is reconnecting; events are
// published meanwhile through a second instance on the same database; when the first comes back the
// page, never reloaded, shows every missed event once and in order.
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Service } from '../tests/service';
import { launch, openDashboard, pr, publish, seqsIn, tokenFor, unexpectedErrors } from './browser';

let first: Service;
let second: Service | undefined;
let browser: Browser;

beforeAll(async () => {
  [first, browser] = await Promise.all([Service.start(), launch()]);
  second = await Service.start({ databaseUrl: first.embeddedDatabaseUrl() });
});

afterAll(async () => {
  await browser?.close();
  await second?.dispose();
  await first?.dispose();
});

describe('a service outage under an open dashboard', () => {
  it('shows reconnecting, then the events published meanwhile, once and in order, without a reload', async () => {
    await first.createProject('outage');
    const dashboard = await openDashboard(browser, first, tokenFor(first, ['outage']));
    const { page, card } = dashboard;
    await dashboard.waitForConnection('connected');
    await publish(first, 'outage', 'pr_notification', pr(1, 'Before the outage'));
    await card('outage').getByText('Before the outage').waitFor();
    await page.evaluate(() => {
      (window as unknown as { sameDocument: boolean }).sameDocument = true;
    });

    await first.kill();
    await dashboard.waitForConnection('reconnecting');
    expect(await page.locator('[data-connection]').textContent()).toMatch(/^Reconnecting \(attempt \d+, (next try in \d+ s|trying now)\)/);

    const missed: number[] = [];
    for (const n of [2, 3, 4, 5]) {
      missed.push((await publish(second!, 'outage', 'pr_notification', pr(n, `During the outage ${n}`))).seq);
    }
    expect(missed).toEqual([2, 3, 4, 5]);
    // Still down: the page has none of them.
    expect(await card('outage').getByText(/During the outage/).count()).toBe(0);
    expect(await dashboard.connection()).not.toBe('connected');

    await first.launch();
    await card('outage').getByText('During the outage 5').waitFor();
    await dashboard.waitForConnection('connected');
    expect(await seqsIn(dashboard, 'outage', 'prs')).toEqual([5, 4, 3, 2, 1]);
    expect(await page.evaluate(() => (window as unknown as { sameDocument?: boolean }).sameDocument)).toBe(true);

    // And the stream goes on live after the outage.
    await publish(first, 'outage', 'pr_notification', pr(6, 'After the outage'));
    await card('outage').getByText('After the outage').waitFor();
    expect(await seqsIn(dashboard, 'outage', 'prs')).toEqual([6, 5, 4, 3, 2]); // the card shows the newest five
    expect(unexpectedErrors(dashboard.errors, { network: true })).toEqual([]);
    await dashboard.context.close();
  });
});
