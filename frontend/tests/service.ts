// The real Herald service for integration tests: `python -m service serve` on a free port with a
// fresh data dir (its embedded PostgreSQL), which a test may kill -9 and start again.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import WebSocket from 'ws';
import type { Event } from '@herald/client';

const repo = resolve(import.meta.dirname, '../..');
/** The interpreter of the service: ../.venv/bin/python unless HERALD_PYTHON says otherwise. */
export const PYTHON = process.env.HERALD_PYTHON || resolve(repo, '.venv/bin/python');

/** A timing factor for slow machines, as the Python tests have (HERALD_TESTS_TIMEOUT_FACTOR). */
export const FACTOR = Number(process.env.HERALD_TESTS_TIMEOUT_FACTOR || '1');

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => done(port));
    });
  });
}

/** Waits until `check` returns true, polling every 25 ms; throws after `timeoutMs`. */
export async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs * FACTOR;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((done) => setTimeout(done, 25));
  }
}

export class Service {
  readonly dataDir = mkdtempSync(join(tmpdir(), 'herald-frontend-'));
  readonly env: NodeJS.ProcessEnv;
  port = 0;
  token = '';
  private child: ChildProcess | null = null;
  private output = '';

  private constructor(databaseUrl?: string) {
    this.env = { ...process.env, HERALD_DATA_DIR: this.dataDir, HERALD_SECRET: 'frontend-integration-secret-0123456789' };
    if (databaseUrl !== undefined) this.env.DATABASE_URL = databaseUrl;
  }

  /**
   * A running service with an admin token for every project: on its own embedded PostgreSQL, or on
   * `databaseUrl` (e.g. another instance's `embeddedDatabaseUrl()`: two instances, one database).
   */
  static async start(options: { databaseUrl?: string } = {}): Promise<Service> {
    const service = new Service(options.databaseUrl);
    try {
      service.port = await freePort();
      service.token = service.cli('token', '--user', 'u', '--projects', '*', '--scopes', 'admin').trim();
      await service.launch();
    } catch (error) {
      await service.dispose(); // the caller never gets it to clean up
      throw error;
    }
    return service;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The unix-socket URL of this instance's embedded PostgreSQL (while it runs), for a second instance. */
  embeddedDatabaseUrl(): string {
    // postmaster.pid: pid, data dir, start time, port, socket directory, ...
    const lines = readFileSync(join(this.dataDir, 'pg', 'postmaster.pid'), 'utf8').split('\n');
    const [port, socketDir] = [lines[3].trim(), lines[4].trim()];
    return `postgresql://postgres:@/herald?host=${socketDir}&port=${port}`;
  }

  cli(...args: string[]): string {
    return execFileSync(PYTHON, ['-m', 'service', ...args], { cwd: repo, env: this.env, encoding: 'utf8' });
  }

  /** Starts the server (again: same port, same data dir) and waits until /healthz answers. */
  async launch(): Promise<void> {
    const child = spawn(PYTHON, ['-m', 'service', 'serve', '--port', String(this.port), '--no-access-log'], {
      cwd: repo,
      env: this.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const keep = (chunk: Buffer) => {
      this.output = (this.output + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    try {
      await until(
        async () => {
          if (child.exitCode !== null) throw new Error(`the service exited with ${child.exitCode}`);
          try {
            return (await fetch(`${this.baseUrl}/healthz`)).ok;
          } catch {
            return false;
          }
        },
        30_000,
        'the service to start',
      );
    } catch (error) {
      throw new Error(`${String(error)}\n--- service output ---\n${this.output}`, { cause: error });
    }
  }

  /** kill -9: no shutdown, no ack flush; the embedded PostgreSQL stays up for the next launch. */
  async kill(): Promise<void> {
    await this.signal('SIGKILL');
  }

  /** A clean stop (which stops the embedded PostgreSQL too); then the data dir goes. */
  async dispose(): Promise<void> {
    try {
      if (this.child !== null && this.child.exitCode === null && this.child.signalCode === null) {
        await this.signal('SIGTERM', 15_000);
      }
    } finally {
      // After a kill -9 without a relaunch, the embedded server is still running: stop it (fast).
      const pidFile = join(this.dataDir, 'pg', 'postmaster.pid');
      if (existsSync(pidFile)) {
        const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
        try {
          process.kill(pid, 'SIGINT');
          await until(() => !existsSync(pidFile), 10_000, 'the embedded PostgreSQL to stop');
        } catch {
          // Already gone.
        }
      }
      rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  private async signal(signal: NodeJS.Signals, timeoutMs = 5000): Promise<void> {
    const child = this.child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((done) => child.once('exit', done));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const response = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as T };
  }

  async createProject(id: string): Promise<void> {
    const { status } = await this.request('POST', '/api/projects', { id, name: id });
    if (status !== 201) throw new Error(`creating ${id}: HTTP ${status}`);
  }

  /** Publishes an agent_run_progress event over HTTP; returns it as stored. */
  async publish(projectId: string, messageId: string): Promise<Event> {
    const { status, body } = await this.request<Event>('POST', `/api/projects/${projectId}/events`, {
      type: 'agent_run_progress',
      data: { runId: 'r', status: 'running', progress: 1 },
      messageId,
    });
    if (status !== 201 && status !== 200) throw new Error(`publishing to ${projectId}: HTTP ${status}`);
    return body;
  }

  /**
   * What a prune does (docs/protocol.md §7.4), as the service's own tests simulate one: the events
   * below `oldest` deleted and the project's low watermark raised, in one transaction, straight in
   * this instance's embedded PostgreSQL.
   */
  prune(projectId: string, oldest: number): void {
    const script = [
      'import asyncio, sys, asyncpg',
      'from service import db',
      'async def prune(url, project_id, oldest):',
      '    conn = await asyncpg.connect(db.asyncpg_dsn(url))',
      '    try:',
      '        async with conn.transaction():',
      '            await conn.execute("DELETE FROM events WHERE project_id = $1 AND seq < $2", project_id, oldest)',
      '            await conn.execute("UPDATE projects SET oldest = $2 WHERE id = $1", project_id, oldest)',
      '    finally:',
      '        await conn.close()',
      'asyncio.run(prune(sys.argv[1], sys.argv[2], int(sys.argv[3])))',
    ].join('\n');
    execFileSync(PYTHON, ['-c', script, this.embeddedDatabaseUrl(), projectId, String(oldest)], {
      cwd: repo,
      env: this.env,
    });
  }

  /**
   * What an attacker with access to the database does: one SQL statement run straight in this
   * instance's embedded PostgreSQL, bypassing the service (for the audit chain's tests).
   */
  tamper(statement: string): void {
    const script = [
      'import asyncio, sys, asyncpg',
      'from service import db',
      'async def tamper(url, statement):',
      '    conn = await asyncpg.connect(db.asyncpg_dsn(url))',
      '    try:',
      '        await conn.execute(statement)',
      '    finally:',
      '        await conn.close()',
      'asyncio.run(tamper(sys.argv[1], sys.argv[2]))',
    ].join('\n');
    execFileSync(PYTHON, ['-c', script, this.embeddedDatabaseUrl(), statement], { cwd: repo, env: this.env });
  }

  /** This client's durable cursor for a project (0 when it has none). */
  async cursor(projectId: string, clientId: string): Promise<number> {
    const { body } = await this.request<{ cursors: { clientId: string; seq: number }[] }>(
      'GET',
      `/api/projects/${projectId}/cursors`,
    );
    return body.cursors.find((cursor) => cursor.clientId === clientId)?.seq ?? 0;
  }
}

/**
 * The client's ways to `address` (its WebSocket and its fetch), sent to `target.service` instead:
 * switching `target.service` is the database behind the address changing (a failover, a fresh one).
 * With `sent`, the JSON frames the client sends over its sockets are collected there.
 */
export function redirect(address: Service, target: { service: Service }, sent?: Record<string, unknown>[]) {
  const rewrite = (url: string) => url.replace(`:${address.port}/`, `:${target.service.port}/`);
  class Redirected extends WebSocket {
    constructor(url: string) {
      super(rewrite(url));
    }
    override send(data: unknown, ...rest: unknown[]): void {
      if (sent !== undefined && typeof data === 'string') sent.push(JSON.parse(data) as Record<string, unknown>);
      (super.send as (...args: unknown[]) => void)(data, ...rest);
    }
  }
  const redirected: typeof fetch = (input, init) => fetch(rewrite(String(input)), init);
  return { WebSocket: Redirected, fetch: redirected };
}

/**
 * Switches a test turns to block the client's ways to the (real, untouched) service: `ws` sends the
 * client's sockets to a port nothing listens on (refused at once), `sse` fails its event streams.
 */
export async function gates(service: Service) {
  const deadPort = await freePort();
  const blocked = { ws: false, sse: false };
  class GatedWebSocket extends WebSocket {
    constructor(url: string) {
      super(blocked.ws ? url.replace(`:${service.port}/`, `:${deadPort}/`) : url);
    }
  }
  const gatedFetch: typeof fetch = async (input, init) => {
    if (blocked.sse && String(input).includes('/stream')) throw new TypeError('blocked by the test');
    return fetch(input, init);
  };
  return { blocked, WebSocket: GatedWebSocket, fetch: gatedFetch };
}
