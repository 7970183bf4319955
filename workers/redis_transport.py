"""The broker transport of every platform process (workers, API, beat, Flower, the CLI):
kombu's Redis transport, keeping one client per channel.

kombu's channel builds a new `redis.Redis` for each command it sends outside its event loop:
every publish, and in a worker every message's bookkeeping (the unacked entry when the
message arrives, its removal at the ack). Building one costs about as much CPU as the round
trip it is for, most of it filling the client's table of response callbacks. A client holds
no connection of its own (each command takes one from the channel's pool and gives it back),
so one client per channel serves every command, from any thread.

`install()` (called by `celeryconfig.build`) makes kombu pick this transport for `redis://`
and `rediss://` URLs, so URLs, logs and Flower's broker page still say `redis`.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis

TRANSPORT = f"{__name__}:Transport"
SCHEMES = ("redis", "rediss")


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            # The event loop's own clients (BRPOP, pub/sub) are made once per channel already.
            return super()._create_client(asynchronous=True)
        if self._pool is None and getattr(self.connection, "client", None) is None:
            # Closing after its connection was lost (kombu then hands the channel's
            # unacknowledged messages back through it): no pool can be made. kombu's own
            # client fails here with an AttributeError, which stops the worker; as a
            # connection error it is one kombu expects, and the consumer reconnects.
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        client = self._shared_client
        # A channel drops its pool when it closes or its connection is lost; a client of the
        # old pool must not outlive it.
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Make this process's kombu use this transport for Redis URLs (idempotent)."""
    for scheme in SCHEMES:
        kombu_transports.TRANSPORT_ALIASES[scheme] = TRANSPORT
        # kombu remembers the class each name resolved to.
        kombu_transports._transport_cache.pop(scheme, None)
