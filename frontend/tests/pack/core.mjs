// The packed core entry in plain Node (ESM), with no React installed: it loads, and a client made
// from it has its state. Prints what it found as JSON for tests/pack.test.ts.
import * as herald from '@herald/client';

const client = herald.createClient({ token: 't', baseUrl: 'http://127.0.0.1:9', storage: herald.memoryStorage() });
const store = herald.createProjectStore({ client });
let react = 'missing';
try {
  await import('react');
  react = 'installed';
} catch {
  // What the assertion wants: the core entry must not need React.
}
console.log(
  JSON.stringify({
    exports: Object.keys(herald).sort(),
    status: client.getState().status,
    clientId: client.clientId,
    projects: store.getState().projects,
    react,
  }),
);
client.close();
