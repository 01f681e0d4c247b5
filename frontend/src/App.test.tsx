import { cleanup, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import App from './App';

afterEach(cleanup);

describe('App health status', () => {
  it('shows "service: ok" when /healthz answers 200 {"status":"ok"}', async () => {
    const fetch = vi.fn(async () => Response.json({ status: 'ok' }));
    vi.stubGlobal('fetch', fetch);

    render(<App />);

    expect(await screen.findByText('service: ok')).toBeDefined();
    expect(fetch).toHaveBeenCalledWith('/healthz', expect.anything());
  });

  it('shows "service: unreachable" when /healthz answers 503', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => Response.json({ status: 'unavailable' }, { status: 503 })));

    render(<App />);

    expect(await screen.findByText('service: unreachable')).toBeDefined();
  });

  it('shows "service: unreachable" when the fetch itself fails', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => Promise.reject(new TypeError('Failed to fetch'))));

    render(<App />);

    expect(await screen.findByText('service: unreachable')).toBeDefined();
    expect(screen.queryByText('service: ok')).toBeNull();
  });
});
