// The token: from the fragment (then out of the address bar), kept, read for its claims.
import { beforeEach, describe, expect, it } from 'vitest';
import { hasScope, readClaims, storedToken, takeTokenFromUrl, tokenProblem } from './auth';

const part = (value: unknown) => btoa(JSON.stringify(value)).replace(/=+$/, '');
const TOKEN = `${part({ alg: 'HS256' })}.${part({ sub: 'mona', projects: ['web'], scopes: ['subscribe'], exp: 2_000_000_000 })}.sig`;

beforeEach(() => {
  localStorage.clear();
  window.history.replaceState(null, '', '/');
});

describe('auth', () => {
  it('takes #token= from the URL, stores it, and leaves the path and query alone', () => {
    window.history.replaceState(null, '', `/projects/web?x=1#token=${TOKEN}`);
    expect(takeTokenFromUrl()).toBe(TOKEN);
    expect(storedToken()).toBe(TOKEN);
    expect(`${window.location.pathname}${window.location.search}${window.location.hash}`).toBe('/projects/web?x=1');
    expect(takeTokenFromUrl()).toBeNull(); // nothing left in the fragment
  });

  it('reads the claims, and tells a malformed or expired token', () => {
    expect(readClaims(TOKEN)).toEqual({ user: 'mona', projects: ['web'], scopes: ['subscribe'], expiresAt: 2_000_000_000_000 });
    expect(hasScope(readClaims(TOKEN), 'publish')).toBe(false);
    expect(hasScope({ user: 'a', projects: '*', scopes: ['admin'], expiresAt: null }, 'publish')).toBe(true);
    // admin implies audit (docs/protocol.md §7.3); audit implies nothing else.
    expect(hasScope({ user: 'a', projects: '*', scopes: ['admin'], expiresAt: null }, 'audit')).toBe(true);
    expect(hasScope({ user: 'a', projects: '*', scopes: ['audit'], expiresAt: null }, 'audit')).toBe(true);
    expect(hasScope({ user: 'a', projects: '*', scopes: ['audit'], expiresAt: null }, 'admin')).toBe(false);
    expect(tokenProblem('abc')).toMatch(/does not look like/);
    expect(tokenProblem(TOKEN, 2_000_000_000_001)).toMatch(/expired/);
    expect(tokenProblem(TOKEN, 0)).toBeNull();
  });
});
