"""The hub: which client is subscribed to what on this process, and the fan-out.

The seed's `ConnectionManager`, with its three verbs: `connect` (subscribe a client to a project from
a position), `disconnect` (one subscription, or the client and all of them), and
`broadcast_to_project` (hand a run of encoded events to every live subscriber). Reading the log is
the feeds' job (feed.py); keeping a connection alive is the connection's (connection.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .connection import Client, Subscription
from .feed import ConnectionFactory, Feed, OnSend
from .frames import EncodedEvent

logger = logging.getLogger("herald.hub")


@dataclass(frozen=True, slots=True)
class FeedStats:
    """What /metrics shows of one project's feed."""

    project_id: str
    delivered: int
    max_lag: int  # how many events its furthest-behind subscriber still has to receive


class Hub:
    """Subscriptions and fan-out for one process."""

    def __init__(
        self,
        connection: ConnectionFactory,
        *,
        page_size: int = 1000,
        outbox_bytes: int = 8 * 1024 * 1024,
        retry_delay_s: float = 0.5,
        on_send: OnSend | None = None,
    ) -> None:
        self._connection = connection
        self.page_size = page_size
        # A live run must fit a client's byte budget with room to spare, or every client would be sent
        # back to catching up by it.
        self.page_bytes = min(1024 * 1024, outbox_bytes // 8)
        self.retry_delay_s = retry_delay_s
        self._on_send = on_send
        self.clients: set[Client] = set()
        self._per_user: dict[str, int] = {}  # open connections per user
        self._feeds: dict[str, Feed] = {}
        # Called when the set of projects with subscribers here changes (the wake-up bus subscribes to
        # exactly those, bus.py).
        self.on_projects_changed: Callable[[], None] | None = None

    # --- the seed's verbs ------------------------------------------------------------------------

    def add_client(self, client: Client) -> None:
        """Count `client` as connected here (for heartbeats, expiry, revocation, shutdown, /metrics and
        the per-user cap)."""
        if client not in self.clients:
            self.clients.add(client)
            self._per_user[client.user] = self._per_user.get(client.user, 0) + 1

    def connections_of(self, user: str) -> int:
        """How many connections `user` has open on this process."""
        return self._per_user.get(user, 0)

    def connect(self, client: Client, project_id: str, *, after: int, head: int) -> Subscription:
        """Subscribe `client` to `project_id` from `after` (exclusive); replaces an earlier subscription.

        The caller has checked authorization and that after <= head. Events with seq > after follow
        in order, first from the log (catch-up), then live.
        """
        self.disconnect(client, project_id)
        feed = self._feeds.get(project_id)
        if feed is None:
            feed = self._feeds[project_id] = Feed(
                project_id,
                delivered=head,
                connection=self._connection,
                broadcast=self.broadcast_to_project,
                page_size=self.page_size,
                page_bytes=self.page_bytes,
                retry_delay_s=self.retry_delay_s,
                on_send=self._on_send,
                end=self.end,
            )
            if self.on_projects_changed is not None:
                self.on_projects_changed()
        sub = Subscription(client, project_id, position=after)
        client.subscriptions[project_id] = sub
        feed.add(sub)
        if head > feed.delivered:  # events the listener has not woken us for yet
            feed.wake()
        return sub

    def disconnect(self, client: Client, project_id: str | None = None) -> None:
        """Drop one subscription of `client`, or all of them and the client itself."""
        projects = [project_id] if project_id is not None else list(client.subscriptions)
        for pid in projects:
            sub = client.subscriptions.pop(pid, None)
            if sub is None:
                continue
            feed = self._feeds.get(pid)
            if feed is not None:
                feed.remove(sub)
                if not feed.subscribers:
                    del self._feeds[pid]
                    feed.close()
                    if self.on_projects_changed is not None:
                        self.on_projects_changed()
        if project_id is None and client in self.clients:
            self.clients.discard(client)
            left = self._per_user[client.user] - 1
            if left:
                self._per_user[client.user] = left
            else:
                del self._per_user[client.user]

    def end(self, sub: Subscription, frame: str) -> None:
        """End one subscription with a last frame (`history_truncated`), after what it was already
        sent; the client stays connected, with its other subscriptions."""
        client = sub.client
        if client.subscriptions.get(sub.project_id) is not sub:
            return
        self.disconnect(client, sub.project_id)
        client.push(frame)

    def broadcast_to_project(self, project_id: str, events: Sequence[EncodedEvent]) -> list[int]:
        """Hand a contiguous run of events to every live local subscriber of the project: each gets, in
        one push, the part of the run after its position (a subscriber that read some of them during
        its catch-up skips those). Returns, per event, how many subscribers it reached. Never waits: a
        subscriber whose client cannot take the run within its byte budget goes back to catching up
        from the log (it gets the same events, at its own pace)."""
        feed = self._feeds.get(project_id)
        if feed is None or not events:
            return [0] * len(events)
        first, last = events[0].seq, events[-1].seq
        starts = [0] * len(events)  # starts[i]: subscribers whose part begins with event i
        for sub in list(feed.live):
            start = sub.position + 1 - first
            if start >= len(events):
                continue  # it read all of these during its catch-up
            if start < 0:  # cannot happen by construction; recover rather than gap
                logger.warning("subscriber behind the feed on %s; catching it up", project_id)
                feed.catch_up(sub)
                continue
            if sub.client.offer(events[start:] if start else events):
                sub.position = last
                starts[start] += 1
            elif sub.client.close_code is not None:
                self.disconnect(sub.client)
            else:
                feed.catch_up(sub)
        reached, running = [], 0
        for count in starts:
            running += count
            reached.append(running)
        return reached

    # --- what the listener and the sessions ask --------------------------------------------------

    def wake(self, project_id: str, seq: int | None = None) -> bool:
        """New rows may exist for the project (a NOTIFY, a re-read): its feed reads them, if it has
        subscribers here (returns whether it has)."""
        feed = self._feeds.get(project_id)
        if feed is not None:
            feed.wake(seq)
        return feed is not None

    def projects(self) -> list[str]:
        """The projects with subscribers on this process."""
        return list(self._feeds)

    def known_head(self, client: Client, project_id: str) -> int | None:
        """A seq the project's log is known to have reached, without asking the database: what this
        process delivered of it, or sent to `client`; None when `client` is not subscribed to it."""
        sub = client.subscriptions.get(project_id)
        if sub is None:
            return None
        feed = self._feeds.get(project_id)
        return max(sub.position, feed.delivered) if feed is not None else sub.position

    def stats(self) -> Iterator[FeedStats]:
        for feed in self._feeds.values():
            lag = max((feed.delivered - sub.position for sub in feed.subscribers), default=0)
            yield FeedStats(feed.project_id, feed.delivered, lag)

    def subscription_count(self) -> int:
        return sum(len(f.subscribers) for f in self._feeds.values())

    async def close(self) -> None:
        """Stop every feed (the process is stopping)."""
        feeds, self._feeds = list(self._feeds.values()), {}
        await asyncio.gather(*(feed.stop() for feed in feeds))
