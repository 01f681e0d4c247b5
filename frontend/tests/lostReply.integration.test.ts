// @vitest-environment node
// The publish queue when a commit's reply is lost (docs/protocol.md §7.2), end to end: instance B
// reaches PostgreSQL through a TCP proxy that forwards one append and drops its answer, so B tells the
// client the publish may have been written, naming its messageId; the queue publishes again with that
// same messageId, and the log holds the event once.
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { HeraldClient, memoryStorage, type Event } from '@herald/client';
import { Service, until } from './service';

/** A proxy in front of a unix-socket PostgreSQL that, once armed with a pattern, forwards the next
 * chunk holding it and then drops that connection's replies, closing it a moment later. */
class ReplyDroppingProxy {
  readonly server: Server;
  private armed: Buffer | null = null;
  dropped = 0;

  constructor(socketPath: string) {
    this.server = createServer((client: Socket) => {
      const upstream = createConnection(socketPath);
      let doomed = false;
      client.on('data', (chunk: Buffer) => {
        if (this.armed !== null && chunk.includes(this.armed)) {
          this.armed = null;
          doomed = true;
          this.dropped += 1;
          setTimeout(() => {
            client.destroy();
            upstream.destroy();
          }, 300); // the database commits; nobody hears of it
        }
        upstream.write(chunk);
      });
      upstream.on('data', (chunk: Buffer) => {
        if (!doomed) client.write(chunk);
      });
      for (const [a, b] of [
        [client, upstream],
        [upstream, client],
      ] as const) {
        a.on('close', () => b.destroy());
        a.on('error', () => b.destroy());
      }
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((done) => this.server.listen(0, '127.0.0.1', done));
    const address = this.server.address();
    return typeof address === 'object' && address !== null ? address.port : 0;
  }

  dropReplyTo(pattern: string): void {
    this.armed = Buffer.from(pattern);
  }
}

let a: Service;
let b: Service;
let proxy: ReplyDroppingProxy;

beforeAll(async () => {
  a = await Service.start();
  await a.createProject('lost');
  const query = new URLSearchParams(a.embeddedDatabaseUrl().split('?')[1]); // ...?host=DIR&port=N
  const socket = `${query.get('host')}/.s.PGSQL.${query.get('port')}`;
  proxy = new ReplyDroppingProxy(socket);
  const port = await proxy.listen();
  b = await Service.start({ databaseUrl: `postgresql://postgres@127.0.0.1:${port}/herald` });
}, 90_000);

afterAll(async () => {
  await b?.dispose();
  proxy?.server.close();
  await a?.dispose();
}, 60_000);

describe('a publish whose commit reply is lost', () => {
  it('is answered with its messageId, published again with it by the queue, and appended once', async () => {
    const client = new HeraldClient({
      token: b.token,
      baseUrl: b.baseUrl,
      WebSocket,
      storage: memoryStorage(),
      minReconnectDelayMs: 50,
      maxReconnectDelayMs: 400,
    });
    client.connect();
    await until(() => client.getState().status === 'connected', 10_000, 'the connection');
    proxy.dropReplyTo('ts-lost-reply');
    const published = await client.sendMessage({
      type: 'agent_run_progress',
      projectId: 'lost',
      data: { runId: 'ts-lost-reply', status: 'running', progress: 10 },
      messageId: 'queue-1',
    });
    expect(proxy.dropped).toBe(1);
    expect(published).toMatchObject({ type: 'published', projectId: 'lost', messageId: 'queue-1', seq: 1 });
    const { body } = await a.request<{ events: Event[] }>('GET', '/api/projects/lost/events?after=0');
    expect(body.events.map((e) => e.messageId)).toEqual(['queue-1']);
    client.close();
  }, 60_000);
});
