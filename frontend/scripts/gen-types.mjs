// Generates the TypeScript wire types from the service's JSON Schema (`python -m service schema`):
//   lib/src/types/websocket.ts  every model of service/messages.py, plus the typed event envelope
//   lib/src/types/codes.ts      the error codes, close codes and retry policy of service/codes.py, and the
//                               size limits of service/messages.py
// `npm run gen:types` writes them; lib/src/types/generated.test.ts fails when the committed files drift.
// The Python interpreter is ../.venv/bin/python unless HERALD_PYTHON names another.
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { compile } from 'json-schema-to-typescript';

const frontend = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const repo = resolve(frontend, '..');

const BANNER = (source) =>
  `// Generated from ${source} by frontend/scripts/gen-types.mjs. Do not edit: run \`npm run gen:types\`.\n`;

/** The service's JSON Schema document, from the Python interpreter the tests use. */
export function readSchema(python = process.env.HERALD_PYTHON || resolve(repo, '.venv/bin/python')) {
  let text;
  try {
    text = execFileSync(python, ['-m', 'service', 'schema'], { cwd: repo, encoding: 'utf8' });
  } catch (error) {
    throw new Error(`cannot run \`${python} -m service schema\` (set HERALD_PYTHON): ${error.message}`, {
      cause: error,
    });
  }
  return JSON.parse(text);
}

// Property titles ("Projectid") would each become a named type alias; only the models keep theirs.
// A `type` const is always on the wire, though pydantic leaves a defaulted one out of `required`.
// An unconstrained schema (pydantic's `Any`) is `unknown`, not an object.
const SHAPING = ['type', '$ref', 'anyOf', 'oneOf', 'allOf', 'enum', 'const', 'properties', 'items'];

function tidy(node, isModel) {
  if (Array.isArray(node)) return node.map((item) => tidy(item, false));
  if (node === null || typeof node !== 'object') return node;
  if (!SHAPING.some((key) => key in node)) return { tsType: 'unknown' };
  const out = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === 'title' && !isModel) continue;
    out[key] =
      key === 'properties'
        ? Object.fromEntries(Object.entries(value).map(([name, schema]) => [name, tidy(schema, false)]))
        : tidy(value, false);
  }
  const required = out.required ?? [];
  if (out.properties?.type?.const !== undefined && !required.includes('type')) {
    out.required = ['type', ...required];
  }
  return out;
}

const STYLE = { singleQuote: true, printWidth: 120 };

async function websocketTs(schema) {
  const defs = Object.fromEntries(Object.entries(schema.$defs).map(([name, def]) => [name, tidy(def, true)]));
  const parts = [];
  for (const [name, def] of Object.entries(defs)) {
    parts.push(
      await compile({ ...def, title: name, $defs: defs }, name, {
        bannerComment: '',
        declareExternallyReferenced: false,
        additionalProperties: false,
        style: STYLE,
      }),
    );
  }
  const eventData = Object.entries(schema['x-herald-event-data'])
    .map(([type, model]) => `  ${type}: ${model};\n`)
    .join('');
  return [
    BANNER('service/messages.py'),
    '\n',
    ...parts,
    '\n// --- the typed event envelope (from x-herald-event-data) ---\n\n',
    '/** The schema of each event type\'s `data` (docs/protocol.md §2). */\n',
    `export interface EventDataByType {\n${eventData}}\n\n`,
    'export type EventType = keyof EventDataByType;\n\n',
    '/**\n',
    ' * An event as the client hands it to the application: the envelope of the original requirements\n',
    ' * (type, projectId, data, timestamp, messageId) plus `seq`, with `data` typed by `type`.\n',
    ' */\n',
    'export type WebSocketMessage<T extends EventType = EventType> = {\n',
    "  [K in T]: Omit<Event, 'type' | 'data'> & { type: K; data: EventDataByType[K] };\n",
    '}[T];\n\n',
    '// The client\'s own (hand-written) types: WebSocketState, UseWebSocketReturn, ...\n',
    "export * from './state.js';\n",
  ].join('');
}

function codesTs(schema) {
  const codes = schema['x-herald-codes'];
  const limits = schema['x-herald-limits'];
  const closeCodes = Object.entries(codes.closeCodes)
    .map(([name, code]) => `  ${name}: ${code},\n`)
    .join('');
  const quote = (value) => (typeof value === 'string' ? `'${value}'` : String(value));
  const list = (values) => values.map(quote).join(', ');
  const lines = (values) => values.map((value) => `  ${quote(value)},\n`).join('');
  return [
    BANNER('service/codes.py and service/messages.py'),
    '\n',
    '/** The `error` of an HTTP error body and the `code` of a WebSocket `error` frame. */\n',
    `export const ERROR_CODES = [\n${lines(codes.errorCodes)}] as const;\n`,
    'export type ErrorCode = (typeof ERROR_CODES)[number];\n\n',
    '/** WebSocket close codes of docs/protocol.md §4. */\n',
    `export const CloseCode = {\n${closeCodes}} as const;\n`,
    'export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];\n\n',
    '/** Reconnecting cannot help until something changes (a new token, another origin, a smaller message). */\n',
    `export const TERMINAL_CLOSE_CODES: ReadonlySet<number> = new Set([${list(codes.terminalCloseCodes)}]);\n\n`,
    '/** Reconnect with backoff and resume by cursor: nothing is lost. */\n',
    `export const RETRY_CLOSE_CODES: ReadonlySet<number> = new Set([${list(codes.retryCloseCodes)}]);\n\n`,
    '/** A WebSocket message (or an HTTP publish body) over this many bytes is refused: 1009, or 413. */\n',
    `export const MAX_MESSAGE_BYTES = ${limits.maxMessageBytes};\n\n`,
    '/** At most this many events in one batch publish, in a body of at most MAX_BATCH_BYTES. */\n',
    `export const MAX_BATCH = ${limits.maxBatch};\n`,
    `export const MAX_BATCH_BYTES = ${limits.maxBatchBytes};\n`,
  ].join('');
}

/** The generated files, by path relative to frontend/. */
export async function generate(schema = readSchema()) {
  return {
    'lib/src/types/websocket.ts': await websocketTs(schema),
    'lib/src/types/codes.ts': codesTs(schema),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const files = await generate();
  for (const [path, text] of Object.entries(files)) {
    writeFileSync(resolve(frontend, path), text);
    console.log(`wrote ${path}`);
  }
}
