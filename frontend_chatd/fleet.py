"""The fleet's signed key announcement, as the frontend serves it (`Frontend.GetFleet`).

The operator writes it to etcd (`vault_common.wire.FLEET_ANNOUNCEMENT_KEY`, as root) at
`bkv-cluster up` and at each fleet rotation; the frontend reads it (its etcd role may read that
prefix, nothing more) and hands the bytes to any client that asks. It neither parses nor vouches
for them: the client verifies the signature against the fleet root key it pins, so a frontend
that serves something else gains nothing (vault_protocol.fleet).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from etcd_client import EtcdClient
from etcd_client.errors import EtcdError
from vault_common.wire import FLEET_ANNOUNCEMENT_KEY

CACHE_S = 1.0  # an announcement changes once per rotation: one etcd read a second is plenty


class FleetUnavailable(Exception):
    """etcd did not answer the announcement's read (UNAVAILABLE, nothing applied)."""


class FleetAnnouncements:
    """The current announcement's bytes (b"" when none was published), cached briefly."""

    def __init__(
        self, read: Callable[[], Awaitable[bytes]], monotonic: Callable[[], float]
    ) -> None:
        self._read = read
        self._now = monotonic
        self._cached: tuple[float, bytes] | None = None

    @classmethod
    def from_etcd(cls, client: EtcdClient, monotonic: Callable[[], float]) -> FleetAnnouncements:
        async def read() -> bytes:
            try:
                kv = await client.get(FLEET_ANNOUNCEMENT_KEY.encode())
            except EtcdError as exc:
                raise FleetUnavailable(f"etcd: {type(exc).__name__}") from exc
            except (TimeoutError, ConnectionError) as exc:
                raise FleetUnavailable(f"etcd: {type(exc).__name__}") from exc
            return b"" if kv is None else bytes(kv.value)

        return cls(read, monotonic)

    async def current(self) -> bytes:
        cached = self._cached
        if cached is not None and self._now() - cached[0] < CACHE_S:
            return cached[1]
        value = await self._read()
        self._cached = (self._now(), value)
        return value
