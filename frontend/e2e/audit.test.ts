// The auditor's view of a project page in Chromium against the real service (docs/protocol.md §7.3):
// the chain verified through the head, the history narrowed by subject and by time (the list is the
// service's answer), the export of what the filters match saved as a file, and who has seen an event
// a client acked; a row changed behind the service's back named, in red. A token with the audit scope but
// not admin gets the same tools; one without it is told, quietly, that it cannot verify.
import { readFile } from 'node:fs/promises';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AckList, Event } from '@herald/client';
import { Service } from '../tests/service';
import { WAIT_MS, launch, openDashboard, pr, publish, tokenFor, unexpectedErrors } from './browser';

let service: Service;
let browser: Browser;

beforeAll(async () => {
  [service, browser] = await Promise.all([Service.start(), launch()]);
});

afterAll(async () => {
  await browser?.close();
  await service?.dispose();
});

/** A time as a datetime-local input holds it, to the second, on this machine's clock (the browser's). */
function localInput(ms: number): string {
  const at = new Date(ms);
  const two = (n: number) => String(n).padStart(2, '0');
  return `${at.getFullYear()}-${two(at.getMonth() + 1)}-${two(at.getDate())}T${two(at.getHours())}:${two(at.getMinutes())}:${two(at.getSeconds())}`;
}

/** What Chromium logs for a request the service refused (the page handles it; it is not an app error). */
const REFUSED = /Failed to load resource: the server responded with a status of 403/;

describe("the auditor's view", () => {
  it('verifies the chain, filters by subject and time, exports what matches, and shows who has seen an event', async () => {
    await service.createProject('ledger');
    const run = (runId: string, status: 'running' | 'succeeded') =>
      publish(service, 'ledger', 'agent_run_progress', { runId, status, progress: status === 'running' ? 50 : 100 });
    // Three events, then a whole second boundary, then three more: the time filter splits them there.
    await run('build-1', 'running');
    await run('deploy-42', 'running');
    const third = await publish(service, 'ledger', 'pr_notification', pr(7, 'Audit me'));
    const boundary = Math.floor(Date.parse(third.timestamp) / 1000) * 1000 + 1000;
    await new Promise((done) => setTimeout(done, Math.max(0, boundary + 50 - Date.now())));
    await run('deploy-42', 'succeeded');
    await run('build-1', 'succeeded');
    const head: Event = await publish(service, 'ledger', 'validation_update', {
      name: 'lint',
      prNumber: 7,
      headSha: 'c'.repeat(40),
      status: 'completed',
      conclusion: 'success',
    });
    expect(head.seq).toBe(6);
    expect(head.hash).toMatch(/^[0-9a-f]{64}$/);

    // Another user's phone has received everything up to #4.
    const bob = tokenFor(service, ['ledger'], 'subscribe', 'bob');
    const acked = await fetch(`${service.baseUrl}/api/projects/ledger/ack`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${bob}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ clientId: 'bob-phone', seq: 4 }),
    });
    expect(acked.status).toBe(200);

    const dashboard = await openDashboard(browser, service, tokenFor(service, ['ledger']), { path: '/projects/ledger' });
    const { page } = dashboard;

    // The chain: verified through the head, the hash cut short with the whole of it in the title.
    const chain = page.getByRole('region', { name: 'Hash chain' });
    await chain.and(page.locator('[data-chain="intact"]')).waitFor();
    expect(await chain.getByRole('status').textContent()).toMatch(/Chain verified through seq 6/);
    expect(await chain.locator('code').getAttribute('title')).toBe(head.hash);
    expect(await chain.locator('code').textContent()).toBe(`${head.hash.slice(0, 12)}…`);
    await chain.getByRole('button', { name: 'Re-verify' }).click();
    await chain.and(page.locator('[data-chain="intact"]')).waitFor();

    const history = page.locator('section.history');
    const seqs = () => history.locator('li.history-row').evaluateAll((rows) => rows.map((row) => Number(row.getAttribute('data-seq'))));
    const shows = async (expected: number[]) => {
      await expect.poll(seqs, { timeout: WAIT_MS }).toEqual(expected);
    };
    await shows([6, 5, 4, 3, 2, 1]);

    // By subject: one run's events.
    await history.getByLabel('Subject').fill('deploy-42');
    await history.getByRole('button', { name: 'Apply' }).click();
    await shows([4, 2]);
    // By time: since the boundary (inclusive), then until it (exclusive).
    await history.getByRole('button', { name: 'Clear filters' }).click();
    await shows([6, 5, 4, 3, 2, 1]);
    await history.getByLabel('Since').fill(localInput(boundary));
    await history.getByRole('button', { name: 'Apply' }).click();
    await shows([6, 5, 4]);
    await history.getByLabel('Since').fill('');
    await history.getByLabel('Until').fill(localInput(boundary));
    await history.getByRole('button', { name: 'Apply' }).click();
    await shows([3, 2, 1]);
    // Both: the run's events since the boundary.
    await history.getByLabel('Until').fill('');
    await history.getByLabel('Since').fill(localInput(boundary));
    await history.getByLabel('Subject').fill('deploy-42');
    await history.getByRole('button', { name: 'Apply' }).click();
    await shows([4]);

    // The export holds what the filters match, saved under the project's name.
    const [download] = await Promise.all([page.waitForEvent('download'), history.getByRole('button', { name: 'Export NDJSON' }).click()]);
    expect(download.suggestedFilename()).toBe('ledger-events.ndjson');
    const lines = (await readFile(await download.path(), 'utf8')).split('\n').filter((line) => line !== '');
    const exported = lines.map((line) => JSON.parse(line) as Event);
    expect(exported.map((event) => [event.seq, event.data.runId])).toEqual([[4, 'deploy-42']]);
    expect(exported[0].hash).toMatch(/^[0-9a-f]{64}$/);
    await history.getByRole('status').getByText('Saved ledger-events.ndjson').waitFor();
    const [csv] = await Promise.all([page.waitForEvent('download'), history.getByRole('button', { name: 'Export CSV' }).click()]);
    expect(csv.suggestedFilename()).toBe('ledger-events.csv');
    expect(await readFile(await csv.path(), 'utf8')).toContain('deploy-42');

    // Seen by: bob's phone had received #4; its acks never reached #5, and nobody else's did.
    const fourth = history.locator('li.history-row[data-seq="4"]');
    await fourth.getByRole('button', { name: 'Seen by #4' }).click();
    const seen = fourth.getByRole('list', { name: 'Seen by, event #4' });
    const phone = seen.locator('li[data-client-id="bob-phone"]');
    await phone.waitFor();
    expect(await phone.textContent()).toMatch(/^bob\s*bob-phone.*(just now|s ago|min ago)$/);

    await history.getByRole('button', { name: 'Clear filters' }).click();
    await shows([6, 5, 4, 3, 2, 1]);
    const fifth = history.locator('li.history-row[data-seq="5"]');
    await fifth.getByRole('button', { name: 'Seen by #5' }).click();
    // This browser started from the snapshot at #6, so it was handed (and acked) none of them.
    await fifth.locator('.seen-by').getByText('Not yet seen by any client.').waitFor();

    expect(unexpectedErrors(dashboard.errors)).toEqual([]);
    await dashboard.context.close();
  });

  it('gives a token with the audit scope (not admin) the chain, the export and "seen by", but not the cursors', async () => {
    await service.createProject('audited');
    const dashboard = await openDashboard(browser, service, tokenFor(service, ['audited'], 'subscribe,audit', 'auditor'), {
      path: '/projects/audited',
    });
    const { page } = dashboard;
    const chain = page.getByRole('region', { name: 'Hash chain' });
    await chain.and(page.locator('[data-chain="intact"]')).getByText('Chain intact (no events yet)').waitFor();
    await dashboard.waitForConnection('connected');
    await publish(service, 'audited', 'pr_notification', pr(1, 'For the auditor'));
    const history = page.locator('section.history');
    const first = history.locator('li.history-row[data-seq="1"]');
    await first.waitFor(); // live: this browser received it
    await chain.getByRole('button', { name: 'Re-verify' }).click();
    await chain.getByText('Chain verified through seq 1').waitFor();
    // This browser (the auditor's own client) acks what it receives; once that is stored, it is listed.
    const ledger = async () => (await service.request<AckList>('GET', '/api/projects/audited/acks?seq=1')).body.acks;
    await expect.poll(async () => (await ledger()).map((ack) => ack.user), { timeout: WAIT_MS }).toEqual(['auditor']);
    await first.getByRole('button', { name: 'Seen by #1' }).click();
    const mine = first.getByRole('list', { name: 'Seen by, event #1' }).locator('li', { hasText: 'this browser' });
    await mine.waitFor();
    expect(await mine.textContent()).toMatch(/^auditor/);
    expect(await history.getByRole('button', { name: 'Export CSV' }).count()).toBe(1);
    expect(await page.locator('section.cursors').count()).toBe(0);
    expect(unexpectedErrors(dashboard.errors)).toEqual([]);
    await dashboard.context.close();
  });

  it('shows, in red, the first seq an attacker with database access changed, once re-verified', async () => {
    await service.createProject('tampered');
    for (let i = 1; i <= 4; i += 1) {
      await publish(service, 'tampered', 'agent_run_progress', { runId: 'r', status: 'running', progress: i * 10 });
    }
    const dashboard = await openDashboard(browser, service, tokenFor(service, ['tampered']), { path: '/projects/tampered' });
    const { page } = dashboard;
    const chain = page.getByRole('region', { name: 'Hash chain' });
    await chain.and(page.locator('[data-chain="intact"]')).getByText('Chain verified through seq 4').waitFor();

    // Straight in PostgreSQL, not through the service: the page must not take the log's word for it.
    service.tamper(`UPDATE events SET data = jsonb_set(data, '{progress}', '99') WHERE project_id = 'tampered' AND seq = 3`);
    await chain.getByRole('button', { name: 'Re-verify' }).click();
    await chain.and(page.locator('[data-chain="broken"]')).waitFor();
    const verdict = chain.getByRole('status');
    expect(await verdict.textContent()).toMatch(/Chain broken at seq 3/);
    expect(await verdict.textContent()).toMatch(/does not continue the chain/);
    const badge = verdict.locator('.badge');
    expect(await badge.getAttribute('class')).toMatch(/tone-failure/);
    expect(await badge.evaluate((element) => getComputedStyle(element).color)).not.toBe(
      await verdict.locator('.chain-reason').evaluate((element) => getComputedStyle(element.ownerDocument.body).color),
    );
    expect(unexpectedErrors(dashboard.errors)).toEqual([]);
    await dashboard.context.close();
  });

  it('tells a token without the audit scope, quietly, that it cannot verify the chain', async () => {
    await service.createProject('quiet');
    await publish(service, 'quiet', 'pr_notification', pr(1, 'Nothing to audit'));
    const dashboard = await openDashboard(browser, service, tokenFor(service, ['quiet'], 'subscribe'), { path: '/projects/quiet' });
    const { page } = dashboard;
    const chain = page.getByRole('region', { name: 'Hash chain' });
    await chain.getByText('Cannot verify the chain (needs the audit scope)').waitFor();
    expect(await chain.getByRole('button', { name: 'Re-verify' }).count()).toBe(0);
    const history = page.locator('section.history');
    await history.locator('li.history-row[data-seq="1"]').waitFor();
    expect(await history.getByRole('button', { name: /Seen by/ }).count()).toBe(0);
    expect(await history.getByRole('button', { name: /Export/ }).count()).toBe(0);
    expect(unexpectedErrors(dashboard.errors).filter((text) => !REFUSED.test(text))).toEqual([]);
    await dashboard.context.close();
  });
});
