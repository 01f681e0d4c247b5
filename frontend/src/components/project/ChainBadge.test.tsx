// The chain badge against a fake service: checking, then verified (hash abbreviated, whole in the
// title) or broken (in red, with the reason); a quiet note on 403; an error with Re-verify.
import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { fakeHttp, json } from '../../../tests/fakes';
import { ChainBadge } from './ChainBadge';

const HASH = 'ab'.repeat(32);
const VERIFY = '/api/projects/web/audit/verify';

function service(...answers: (() => Response | Promise<Response>)[]) {
  const http = fakeHttp();
  let calls = 0;
  http.route((request) => {
    if (request.url.pathname !== VERIFY) return undefined;
    const answer = answers[Math.min(calls, answers.length - 1)];
    calls += 1;
    return answer();
  });
  vi.stubGlobal('fetch', http.fetch);
  return http;
}

const chain = () => screen.getByRole('region', { name: 'Hash chain' });

afterEach(cleanup);

describe('the chain badge', () => {
  it('says it is checking, then "verified through seq N" with the hash abbreviated and whole in its title', async () => {
    let answer: (response: Response) => void = () => undefined;
    const http = service(() => new Promise<Response>((done) => (answer = done)));
    render(<ChainBadge projectId="web" token="tok" />);
    expect(chain().getAttribute('data-chain')).toBe('checking');
    expect(screen.getByRole('status').textContent).toMatch(/Verifying the chain/);
    expect(screen.getByRole('button', { name: 'Re-verify' })).toHaveProperty('disabled', true);

    answer(json(200, { ok: true, head: 42, hash: HASH }));
    expect((await screen.findByText('Chain verified through seq 42')).closest('.badge')?.className).toMatch(/tone-success/);
    const hash = screen.getByText(`${HASH.slice(0, 12)}…`);
    expect(hash.getAttribute('title')).toBe(HASH);
    expect(chain().getAttribute('data-chain')).toBe('intact');
    expect(http.to(VERIFY)[0].headers.get('Authorization')).toBe('Bearer tok');
  });

  it('says, in red, where the chain breaks and why', async () => {
    service(() => json(200, { ok: false, firstBad: 7, reason: 'hash mismatch: the event was changed' }));
    render(<ChainBadge projectId="web" token="tok" />);
    const badge = await screen.findByText('Chain broken at seq 7');
    expect(badge.closest('.badge')?.className).toMatch(/tone-failure/);
    expect(screen.getByText('hash mismatch: the event was changed').className).toMatch(/tone-failure/);
    expect(chain().getAttribute('data-chain')).toBe('broken');
  });

  it('notes quietly that a token without the audit scope cannot verify, and offers no retry', async () => {
    service(() => json(403, { error: 'forbidden', message: 'this token lacks the audit scope' }));
    render(<ChainBadge projectId="web" token="tok" />);
    expect(await screen.findByText('Cannot verify the chain (needs the audit scope)')).toBeDefined();
    expect(screen.queryByRole('alert')).toBeNull();
    expect(screen.queryByRole('button', { name: 'Re-verify' })).toBeNull();
  });

  it('shows a failure with its message, and verifies again on Re-verify', async () => {
    const http = service(
      () => json(503, { error: 'unavailable', message: 'the database is unreachable' }),
      () => json(200, { ok: true, head: 3, hash: HASH }),
    );
    render(<ChainBadge projectId="web" token="tok" />);
    expect((await screen.findByRole('alert')).textContent).toBe('Could not verify the chain: the database is unreachable');
    fireEvent.click(screen.getByRole('button', { name: 'Re-verify' }));
    expect(await screen.findByText('Chain verified through seq 3')).toBeDefined();
    expect(http.to(VERIFY)).toHaveLength(2);
  });
});
