// The packed `./react` entry in plain Node (ESM), React installed: it loads, beside the core.
import * as herald from '@herald/client';
import * as heraldReact from '@herald/client/react';

console.log(JSON.stringify({ react: Object.keys(heraldReact).sort(), core: typeof herald.createClient }));
