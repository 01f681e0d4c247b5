"""Herald's Python client: `Publisher` appends events at most once however often it retries;
`Subscriber` hands a project's events to the application once each, in order, with acks, exact resume
and reconnects. It depends on httpx and websockets only."""

from .publisher import Published, Publisher, PublishError, SyncPublisher
from .subscriber import Event, Item, Resync, Subscriber, SubscriberError

__all__ = [
    "Event",
    "Item",
    "PublishError",
    "Published",
    "Publisher",
    "Resync",
    "Subscriber",
    "SubscriberError",
    "SyncPublisher",
]
__version__ = "0.1.0"
