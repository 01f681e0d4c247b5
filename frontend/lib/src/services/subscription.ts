// The client's subscriptions: one per project, however many callers subscribe, each with one
// position (the last seq handed over) from which every event is handed over once and in order:
// replays dropped, gaps read from the HTTP history, the server subscription restarted from the
// position on every new transport. The acks of what was handed over go from here too, cumulative
// and batched. What is guaranteed is in docs/client.md.
import type {
  ClientMessage,
  ErrorMessage,
  Event,
  SubscribeMessage,
  SubscribedMessage,
  UnsubscribedMessage,
  Resync,
  WebSocketMessage,
} from '../types/websocket.js';
import { HISTORY_REWRITTEN, HISTORY_TRUNCATED, INVALID_CURSOR, rewriteOf, truncationOf } from './errors.js';

/** What the subscriptions need from the client. */
export interface SubscriptionHost {
  /** Whether the current transport was welcomed: frames sent now reach the service. */
  connected(): boolean;
  /** Sends a frame on the current transport (dropped when there is none). */
  send(frame: ClientMessage): void;
  /** The project's events with after < seq < before from the HTTP history; throws when it cannot. */
  readHistory(projectId: string, after: number, before: number): Promise<Event[]>;
  /** Hands an event to the application. */
  deliver(message: WebSocketMessage): void;
  /** Tells the application that a subscription cannot resume from its position and is parked. */
  resync(resync: Resync): void;
  /** The backoff before retry number `failures + 1`. */
  delay(failures: number): number;
}

export interface AckOptions {
  /** Acks go out this often, or as soon as this many events are unacked (across projects). */
  ackIntervalMs: number;
  ackBatchSize: number;
}

/** One project's subscription on this client, shared by every caller of `subscribe`. */
export class Subscription {
  readonly projectId: string;
  refs = 1;
  /** The last seq handed to the application (or the start position); null until the service says. */
  position: number | null;
  /**
   * The `hash` of the event at `position` as this client has it, sent as `afterHash` so that a log
   * whose event there differs (a database failover) answers `history_rewritten`; null when the
   * position was given without its event (a snapshot's seq, the service's start).
   */
  positionHash: string | null;
  /** The service confirmed the subscription (`subscribed`) on the current connection. */
  live = false;
  /**
   * The service will not resume from `position` (history_truncated, invalid_cursor): nothing is sent
   * or handed over, whatever the reconnects, until `resume` gives a new position.
   */
  parked = false;
  /** A gap is being read from the HTTP history; events that arrive meanwhile wait in `held`. */
  private filling = false;
  private held: Event[] = [];
  /** Bumped whenever the subscription restarts or ends, so late work of the old one is dropped. */
  private epoch = 0;
  /** Consecutive `unavailable` answers to subscribing, for the resubscribe backoff. */
  private failures = 0;
  private readonly owner: Subscriptions;

  constructor(owner: Subscriptions, projectId: string, position: number | null, positionHash: string | null = null) {
    this.owner = owner;
    this.projectId = projectId;
    this.position = position;
    this.positionHash = position === null ? null : positionHash;
  }

  /** Asks the service for the events after this client's position (after the durable cursor without one). */
  sendSubscribe(): void {
    const frame: SubscribeMessage = { type: 'subscribe', projectId: this.projectId };
    if (this.position !== null) frame.after = this.position;
    if (this.position !== null && this.position > 0 && this.positionHash !== null) frame.afterHash = this.positionHash;
    this.owner.host.send(frame);
  }

  /** (Re)starts the server subscription from this client's position; work of the old one is dropped. */
  restart(): void {
    this.epoch += 1;
    this.live = false;
    this.filling = false;
    this.held = [];
    if (this.owner.host.connected() && !this.parked) this.sendSubscribe();
  }

  /** The service refused the position: stop here, so no reconnect asks for it again. */
  park(): void {
    this.parked = true;
    this.epoch += 1;
    this.live = false;
    this.filling = false;
    this.held = [];
  }

  /** Starts again from `after` (a fresh state snapshot's seq). */
  resume(after: number): void {
    this.parked = false;
    this.position = after;
    this.positionHash = null;
    this.restart();
  }

  /** The last reference went: whatever of it is still under way is dropped. */
  end(): void {
    this.epoch += 1;
  }

  /** The service confirmed the subscription, starting after `after`. */
  subscribed(after: number): void {
    this.live = true;
    this.failures = 0;
    if (this.position === null) {
      this.position = after;
      this.positionHash = null;
    } else if (after > this.position && !this.filling) {
      // The service starts past what this client holds (never when it sent `after`): read the gap.
      void this.fill(this.position, after + 1);
    }
  }

  /** Subscribing failed because the database is down: ask again with backoff. */
  unavailable(): void {
    const epoch = this.epoch;
    setTimeout(
      () => {
        if (this.owner.host.connected() && this.epoch === epoch) this.restart();
      },
      this.owner.host.delay(this.failures++),
    );
  }

  /** An event of this project from the service: handed over if it is the next, else held or dropped. */
  receive(event: Event): void {
    if (this.parked) return;
    if (this.filling) {
      this.held.push(event);
      return;
    }
    const position = this.position;
    if (position !== null && event.seq <= position) return; // a duplicate (a resume, a replay)
    if (position !== null && event.seq > position + 1) {
      // Not live yet: these are the old subscription's last frames, and the new one replays from
      // `position` anyway. Live: a gap, read from the history before going on.
      if (this.live) {
        this.held.push(event);
        void this.fill(position, event.seq);
      }
      return;
    }
    this.deliver(event);
  }

  private deliver(event: Event): void {
    this.position = event.seq;
    this.positionHash = event.hash;
    this.owner.delivered(this.projectId, event);
  }

  /** Reads the events after < seq < before from the HTTP history, then the events held meanwhile. */
  private async fill(after: number, before: number): Promise<void> {
    this.filling = true;
    const epoch = this.epoch;
    let events: Event[] | null = null;
    try {
      events = await this.owner.host.readHistory(this.projectId, after, before);
    } catch {
      // Unreachable, or refused: the transport replays the gap instead (below).
    }
    if (this.epoch !== epoch) return;
    this.filling = false;
    for (const event of events ?? []) {
      if (this.position !== null && event.seq === this.position + 1) this.deliver(event);
    }
    if (this.position !== before - 1) {
      // The history could not close the gap: have the transport replay from where this client is.
      this.restart();
      return;
    }
    const held = this.held;
    this.held = [];
    // Through the owner: a listener may have unsubscribed (or subscribed again) meanwhile.
    for (const event of held) this.owner.receive(event);
  }
}

/**
 * Every subscription of the client, by project (reference-counted: n `subscribe`s need n
 * `unsubscribe`s and share one server subscription and one position), the positions of projects
 * no longer subscribed (the next `subscribe` resumes there), and the acks.
 */
export class Subscriptions {
  readonly host: SubscriptionHost;
  private readonly options: AckOptions;
  private readonly byProject = new Map<string, Subscription>();
  /** The last seq handed over per project, kept across unsubscribes: the next subscribe resumes there. */
  private readonly positions = new Map<string, number>();
  /** The hash of the event at each of `positions`, when this client had that event. */
  private readonly positionHashes = new Map<string, string>();
  /** `unsubscribe` frames sent whose `unsubscribed` answer has not come yet, per project. */
  private readonly unsubscribing = new Map<string, number>();
  /** The highest seq per project handed over and not yet acked, and its event's hash. */
  private readonly acks = new Map<string, { seq: number; hash: string }>();
  private unacked = 0;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(host: SubscriptionHost, options: AckOptions) {
    this.host = host;
    this.options = options;
  }

  /**
   * Adds a reference; the first one subscribes, from `after`, else from this client's position. A
   * parked subscription starts again from the `after` of the next subscribe that gives one.
   */
  subscribe(projectId: string, after: number | undefined): void {
    const existing = this.byProject.get(projectId);
    if (existing !== undefined) {
      existing.refs += 1;
      if (existing.parked && after !== undefined) this.resubscribe(projectId, after);
      return;
    }
    const subscription =
      after === undefined
        ? new Subscription(this, projectId, this.positions.get(projectId) ?? null, this.positionHashes.get(projectId))
        : new Subscription(this, projectId, after);
    this.byProject.set(projectId, subscription);
    if (this.host.connected()) subscription.sendSubscribe();
  }

  /** Drops one reference; the last one acks what was handed over and ends the server subscription. */
  unsubscribe(projectId: string): void {
    const subscription = this.byProject.get(projectId);
    if (subscription === undefined) return;
    subscription.refs -= 1;
    if (subscription.refs > 0) return;
    const ack = this.acks.get(projectId);
    if (ack !== undefined && this.host.connected() && subscription.live) {
      this.host.send({ type: 'ack', projectId, ...ack });
    }
    this.acks.delete(projectId);
    this.byProject.delete(projectId);
    subscription.end();
    // A parked subscription has none on the service to end.
    if (this.host.connected() && !subscription.parked) {
      this.unsubscribing.set(projectId, (this.unsubscribing.get(projectId) ?? 0) + 1);
      this.host.send({ type: 'unsubscribe', projectId });
    }
  }

  /**
   * Moves the subscription's one position to `after` and starts it again from there: after a
   * `resync`, with a fresh state snapshot's seq. Does nothing for a project not subscribed.
   */
  resubscribe(projectId: string, after: number): void {
    const subscription = this.byProject.get(projectId);
    if (subscription === undefined) return;
    this.positions.set(projectId, after);
    this.positionHashes.delete(projectId);
    subscription.resume(after);
  }

  /** The last seq of the project handed over (or its start), if this client knows it. */
  position(projectId: string): number | null {
    return this.byProject.get(projectId)?.position ?? this.positions.get(projectId) ?? null;
  }

  /** A new transport was welcomed: every subscription restarts on it from its position. */
  restartAll(): void {
    for (const subscription of this.byProject.values()) subscription.restart();
  }

  /** The transport is gone, and with it every server subscription and every unsubscribe under way. */
  disconnected(): void {
    for (const subscription of this.byProject.values()) subscription.live = false;
    this.unsubscribing.clear();
  }

  // --- frames from the service ----------------------------------------------------------------------

  subscribed(message: SubscribedMessage): void {
    const subscription = this.byProject.get(message.projectId);
    if (subscription === undefined) return;
    subscription.subscribed(message.after);
    this.flushAcks();
  }

  unsubscribed(message: UnsubscribedMessage): void {
    const { projectId } = message;
    const expected = this.unsubscribing.get(projectId) ?? 0;
    if (expected > 0) {
      this.unsubscribing.set(projectId, expected - 1);
      return;
    }
    // Not asked for: the service dropped it (a refreshed token no longer grants it; an error said so).
    const subscription = this.byProject.get(projectId);
    if (subscription !== undefined) subscription.live = false;
  }

  /**
   * An `error` frame not about a publish: a subscribe refused as `unavailable` is asked again; one
   * whose position the service cannot resume from (history_truncated, history_rewritten,
   * invalid_cursor) is parked, its
   * unsent acks dropped (they name seqs of the log it can no longer follow), and `resync` is told.
   * (Over SSE a truncated history comes once the stream has started, so `live` does not matter here.)
   */
  refused(message: ErrorMessage): void {
    const ref = message.ref ?? null;
    const subscription = ref === null ? undefined : this.byProject.get(ref);
    if (subscription === undefined) return;
    if (!subscription.live && message.code === 'unavailable') return subscription.unavailable();
    if (subscription.parked) return; // a second answer to the same position
    if (message.code === HISTORY_TRUNCATED) {
      subscription.park();
      this.acks.delete(subscription.projectId);
      const truncation = truncationOf(message);
      this.host.resync({
        projectId: subscription.projectId,
        code: HISTORY_TRUNCATED,
        oldest: truncation?.oldest ?? null,
        stateSeq: truncation?.stateSeq ?? null,
      });
    } else if (message.code === HISTORY_REWRITTEN) {
      subscription.park();
      this.acks.delete(subscription.projectId);
      const rewrite = rewriteOf(message);
      this.host.resync({
        projectId: subscription.projectId,
        code: HISTORY_REWRITTEN,
        seq: rewrite?.seq ?? null,
        stateSeq: rewrite?.stateSeq ?? null,
      });
    } else if (message.code === INVALID_CURSOR) {
      subscription.park();
      this.acks.delete(subscription.projectId);
      this.host.resync({ projectId: subscription.projectId, code: INVALID_CURSOR });
    }
  }

  receive(event: Event): void {
    // Not subscribed: the last frames of an unsubscribed project were still on the way.
    this.byProject.get(event.projectId)?.receive(event);
  }

  /** A subscription handed `event` over: remembered, told to the application, and to be acked. */
  delivered(projectId: string, event: Event): void {
    this.positions.set(projectId, event.seq);
    this.positionHashes.set(projectId, event.hash);
    // The service validated `data` against its type's schema when it appended the event.
    this.host.deliver(event as unknown as WebSocketMessage);
    this.noteAck(projectId, event.seq, event.hash);
  }

  // --- acks -----------------------------------------------------------------------------------------

  private noteAck(projectId: string, seq: number, hash: string): void {
    this.acks.set(projectId, { seq, hash });
    this.unacked += 1;
    if (this.unacked >= this.options.ackBatchSize) {
      this.flushAcks();
    } else if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => this.flushAcks(), this.options.ackIntervalMs);
    }
  }

  /** Sends the pending acks of live subscriptions; the others go once their `subscribed` comes. */
  flushAcks(): void {
    if (this.ackTimer !== null) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.unacked = 0;
    if (!this.host.connected()) return;
    for (const [projectId, ack] of this.acks) {
      if (this.byProject.get(projectId)?.live !== true) continue;
      // The hash goes with the ack: the service keeps it with the durable cursor (§7.5).
      this.host.send({ type: 'ack', projectId, ...ack });
      this.acks.delete(projectId);
    }
  }
}
