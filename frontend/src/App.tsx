import { useEffect, useState } from 'react';

export type Health = 'checking' | 'ok' | 'unreachable';

/**
 * Asks the service whether it is up. Resolves to 'ok' only for a 200 whose
 * body is `{"status": "ok"}`; a 503, any other answer or a network failure is
 * 'unreachable'. Rejects only when `signal` aborts.
 */
export async function checkHealth(signal?: AbortSignal): Promise<Health> {
  try {
    const response = await fetch('/healthz', { signal });
    if (!response.ok) {
      return 'unreachable';
    }
    const body: unknown = await response.json();
    const up = typeof body === 'object' && body !== null && 'status' in body && body.status === 'ok';
    return up ? 'ok' : 'unreachable';
  } catch (error) {
    if (signal?.aborted) {
      throw error;
    }
    return 'unreachable';
  }
}

export default function App() {
  const [health, setHealth] = useState<Health>('checking');

  useEffect(() => {
    const controller = new AbortController();
    checkHealth(controller.signal).then(setHealth, () => {
      // Aborted on unmount: nothing left to update.
    });
    return () => controller.abort();
  }, []);

  return (
    <main className="page">
      <header>
        <h1>Herald</h1>
        <p className="tagline">Live agent runs, pull requests and CI validations</p>
      </header>
      <p className={`status status-${health}`} role="status">
        service: {health}
      </p>
    </main>
  );
}
