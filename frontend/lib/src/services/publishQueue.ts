// The client's publishes: each is queued (the SendQueue: IndexedDB by default, so it outlives the
// page), sent once connected and again on every new transport until the service answers it, and
// settled by that answer: `published` resolves its promise; an `error` naming its messageId rejects
// it, except `unavailable` and `rate_limited`, which say "not now": it goes again with backoff.
// Resending is safe because the service appends one event per messageId (docs/client.md).
import { MAX_MESSAGE_BYTES, type ErrorCode } from '../types/codes.js';
import type { ClientMessage, ErrorMessage, PublishMessage, PublishedMessage } from '../types/websocket.js';
import type { OutgoingMessage } from '../types/state.js';
import { HeraldError } from './errors.js';
import { randomId } from './platform.js';
import type { SendQueue } from './sendQueue.js';

/** `error` codes of a publish that say "not now" rather than "no": it stays queued and goes again. */
const TRANSIENT_PUBLISH_ERRORS: ReadonlySet<string> = new Set(['unavailable', 'rate_limited'] satisfies ErrorCode[]);

/** What the publish queue needs from the client. */
export interface PublishHost {
  /** Whether the current transport was welcomed: frames sent now reach the service. */
  connected(): boolean;
  /** Sends a frame on the current transport (dropped when there is none). */
  send(frame: ClientMessage): void;
  /** The number of unanswered publishes changed (the state's `queued`). */
  queued(size: number): void;
  /** A publish is durable: every one, those queued by an earlier page too. */
  published(message: PublishedMessage): void;
  /** A refusal that no promise takes: a publish queued by an earlier page was refused. */
  refused(message: ErrorMessage): void;
  /** The backoff before retry number `failures + 1`. */
  delay(failures: number): number;
}

type Publish = PublishMessage & { messageId: string };

interface Waiter {
  promise: Promise<PublishedMessage>;
  resolve(published: PublishedMessage): void;
  reject(error: HeraldError): void;
}

/** The client's unanswered publishes and their promises (the file's comment says how they settle). */
export class PublishQueue {
  private readonly queue: SendQueue;
  private readonly host: PublishHost;
  private readonly waiters = new Map<string, Waiter>();
  /** The queue holds what earlier pages left: until then nothing is sent, so the order holds. */
  private loaded: boolean;
  /** Publishes the service could not take yet (`unavailable`, `rate_limited`): sent again later. */
  private readonly resends = new Map<string, { timer: ReturnType<typeof setTimeout> | null; failures: number }>();

  constructor(queue: SendQueue, host: PublishHost) {
    this.queue = queue;
    this.host = host;
    this.loaded = queue.ready === undefined;
    void queue.ready?.then(() => {
      this.loaded = true;
      host.queued(queue.size);
      if (host.connected()) this.sendAll();
    });
  }

  /**
   * Queues a publish, and sends it now if connected. Publishing the same messageId again while it is
   * pending returns the same promise.
   */
  publish(message: OutgoingMessage): Promise<PublishedMessage> {
    const messageId = message.messageId ?? randomId();
    const pending = this.waiters.get(messageId);
    if (pending !== undefined) return pending.promise;
    const frame: Publish = {
      type: message.type,
      projectId: message.projectId,
      data: message.data,
      messageId,
    };
    // Over the limit the service closes with 1009, which is terminal: refuse it here rather than
    // queue a message that would fail every connection.
    if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_MESSAGE_BYTES) {
      const limit = `${MAX_MESSAGE_BYTES / 1024} KiB`;
      return Promise.reject(new HeraldError('too_large', `a publish is at most ${limit}`, messageId));
    }
    let resolve: Waiter['resolve'] = () => {};
    let reject: Waiter['reject'] = () => {};
    const promise = new Promise<PublishedMessage>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.waiters.set(messageId, { promise, resolve, reject });
    const queued = this.queue.has(messageId); // left by an earlier page: already on its way
    this.queue.add(frame);
    this.host.queued(this.queue.size);
    if (this.host.connected() && this.loaded && !queued) this.host.send(frame);
    return promise;
  }

  /** A new transport was welcomed: every unanswered publish goes (again), oldest first. */
  sendAll(): void {
    if (!this.loaded) return; // the ready handler sends them all, the older ones first
    for (const frame of this.queue.list()) this.host.send(frame);
  }

  /** The transport is gone: no resend waits, since the next `welcome` sends every publish anyway. */
  disconnected(): void {
    for (const resend of this.resends.values()) {
      if (resend.timer !== null) clearTimeout(resend.timer);
      resend.timer = null;
    }
  }

  published(message: PublishedMessage): void {
    this.settle(message.messageId, { published: message });
  }

  /** An `error` frame: true when it names a queued publish, which it then settles or sends again. */
  refused(message: ErrorMessage): boolean {
    const ref = message.ref ?? null;
    if (ref === null || !this.queue.has(ref)) return false;
    if (TRANSIENT_PUBLISH_ERRORS.has(message.code)) this.resendLater(ref);
    else this.settle(ref, { error: message });
    return true;
  }

  /** The service could not take the publish now: send it again later, unless a reconnect does first. */
  private resendLater(messageId: string): void {
    const resend = this.resends.get(messageId) ?? { timer: null, failures: 0 };
    this.resends.set(messageId, resend);
    if (resend.timer !== null) return;
    resend.timer = setTimeout(() => {
      resend.timer = null;
      const frame = this.queue.list().find((queued) => queued.messageId === messageId);
      if (this.host.connected() && frame !== undefined) this.host.send(frame);
    }, this.host.delay(resend.failures++));
  }

  /** The publish is answered: out of the queue, and its promise settled (or, from an earlier page,
   * its refusal reported to `on('error')`). */
  private settle(messageId: string, outcome: { published: PublishedMessage } | { error: ErrorMessage }): void {
    if (!this.queue.has(messageId)) return;
    this.queue.remove(messageId);
    const resend = this.resends.get(messageId);
    if (resend?.timer != null) clearTimeout(resend.timer);
    this.resends.delete(messageId);
    const waiter = this.waiters.get(messageId);
    this.waiters.delete(messageId);
    this.host.queued(this.queue.size);
    if ('published' in outcome) {
      waiter?.resolve(outcome.published);
      this.host.published(outcome.published);
    } else if (waiter !== undefined) {
      const { code, message } = outcome.error;
      waiter.reject(new HeraldError(code, message, messageId));
    } else {
      this.host.refused(outcome.error);
    }
  }
}
