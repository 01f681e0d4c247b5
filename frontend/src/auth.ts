// The dashboard's access token: taken from the URL fragment (`#token=…`, what `make run` prints),
// kept in localStorage, and removed from the address bar so it does not linger in history, bookmarks
// or screen shares. The service checks the token; what is read here only shapes the page (who is
// signed in, whether to offer actions and the auditor's view).

const TOKEN_KEY = 'herald.token';

/** What the page reads of a token's claims (a JWT the service signs; not verified here). */
export interface Claims {
  user: string;
  /** Project ids, or '*' for every project. */
  projects: string[] | '*';
  scopes: string[];
  /** Expiry, ms since the epoch; null when the token has none. */
  expiresAt: number | null;
}

function storage(): Storage | null {
  try {
    return typeof localStorage === 'undefined' ? null : localStorage;
  } catch {
    return null; // storage disabled: the token lives as long as the page
  }
}

/**
 * Takes a token from the fragment (`#token=…`), stores it and removes the fragment from the address
 * bar (history.replaceState: no reload, no new history entry). Returns the token, or null when the
 * fragment holds none.
 */
export function takeTokenFromUrl(location: Location = window.location, history: History = window.history): string | null {
  const fragment = location.hash.replace(/^#/, '');
  if (fragment === '') return null;
  const token = new URLSearchParams(fragment).get('token')?.trim() ?? '';
  if (token === '') return null;
  saveToken(token);
  history.replaceState(history.state, '', `${location.pathname}${location.search}`);
  return token;
}

/** The token kept from an earlier visit, if any. */
export function storedToken(): string | null {
  const token = storage()?.getItem(TOKEN_KEY) ?? null;
  return token === null || token.trim() === '' ? null : token;
}

export function saveToken(token: string): void {
  storage()?.setItem(TOKEN_KEY, token.trim());
}

export function forgetToken(): void {
  storage()?.removeItem(TOKEN_KEY);
}

function base64UrlDecode(part: string): string {
  const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
  const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(padded), (char) => char.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The claims of a Herald token, or null when `token` is not shaped like one (three base64url parts). */
export function readClaims(token: string): Claims | null {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const payload = JSON.parse(base64UrlDecode(parts[1])) as Record<string, unknown>;
    const { sub, projects, scopes, exp } = payload;
    if (typeof sub !== 'string') return null;
    return {
      user: sub,
      projects: Array.isArray(projects) ? projects.filter((p): p is string => typeof p === 'string') : '*',
      scopes: Array.isArray(scopes) ? scopes.filter((s): s is string => typeof s === 'string') : [],
      expiresAt: typeof exp === 'number' ? exp * 1000 : null,
    };
  } catch {
    return null;
  }
}

/** Whether the claims grant a scope (`admin` implies the others, as on the service). */
export function hasScope(claims: Claims | null, scope: 'subscribe' | 'publish' | 'audit' | 'admin'): boolean {
  if (claims === null) return false;
  return claims.scopes.includes(scope) || claims.scopes.includes('admin');
}

/** Why a token cannot be used, before asking the service; null when it looks usable. */
export function tokenProblem(token: string, now = Date.now()): string | null {
  const claims = readClaims(token);
  if (claims === null) return 'That does not look like a Herald token (three dot-separated parts).';
  if (claims.expiresAt !== null && claims.expiresAt <= now) return 'This token has expired. Ask for a new one.';
  return null;
}
