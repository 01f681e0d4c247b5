"""Herald: durable real-time notifications for engineering dashboards.

`__version__` is the one release number: the wheel's version is read from this line at build time, the
npm package carries the same number (a test checks), and `/healthz` reports it. `PROTOCOL_VERSION` is
the version of the wire contract (docs/protocol.md) this release speaks.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = "1.1"
