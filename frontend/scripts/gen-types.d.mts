/** The service's JSON Schema document (runs `python -m service schema`; throws when it cannot). */
export function readSchema(python?: string): Record<string, unknown>;
/** The generated files' contents, by path relative to frontend/. */
export function generate(schema?: Record<string, unknown>): Promise<Record<string, string>>;
