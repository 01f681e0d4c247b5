// One part failing to render shows its own error and a retry; its neighbours stay up.
import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ErrorBoundary } from './ErrorBoundary';

afterEach(cleanup);

let broken = true;

function Card({ name }: { name: string }) {
  if (name === 'bad' && broken) throw new Error('data.progress is not a number');
  return <p>{name} card</p>;
}

describe('ErrorBoundary', () => {
  it('keeps the other cards when one throws, and retries on demand', () => {
    vi.spyOn(console, 'error').mockImplementation(() => {}); // React reports the caught error
    render(
      <>
        <ErrorBoundary what="the good card">
          <Card name="good" />
        </ErrorBoundary>
        <ErrorBoundary what="the bad card">
          <Card name="bad" />
        </ErrorBoundary>
      </>,
    );
    expect(screen.getByText('good card')).toBeDefined();
    expect(screen.getByRole('alert').textContent).toMatch(/Could not show the bad card.*data.progress is not a number/);

    broken = false;
    fireEvent.click(screen.getByRole('button', { name: 'Try again' }));
    expect(screen.getByText('bad card')).toBeDefined();
    expect(screen.queryByRole('alert')).toBeNull();
  });
});
