"""Escalation thresholds per route, changeable live and shared by every replica.

The request path reads only a local dict (:meth:`ThresholdStore.get`), never the network, so a
Redis outage cannot slow or block a request. Changes (:meth:`ThresholdStore.set`, from the admin
API) go to Redis when it is configured and reach every replica well under a second (see
:class:`gateway.sharedmap.SharedMap`: a hash + pub/sub, served from memory through outages).
A change Redis does not take is refused (:class:`~gateway.kernel.errors.ServiceUnavailableError`,
503) and applied nowhere, this replica included. Without Redis, changes are in-process.
"""

from __future__ import annotations

import math

from gateway.sharedmap import SharedMap

HASH = "tiergate:thresholds"
CHANNEL = "tiergate:thresholds:changed"


class ThresholdError(ValueError):
    """A threshold outside its verifier's score range, or for a route that does not exist."""


class ThresholdStore:
    def __init__(self, defaults: dict[str, float], redis_url: str | None = None,
                 prefix: str = "", ranges: dict[str, tuple[float, float]] | None = None) -> None:
        self.ranges = ranges or {}
        """Per route, the scores its verifier can give (default [0, 1]): a P(small not good
        enough) is a probability; a gain score (P(large right) - P(small right)) is in [-1, 1]."""
        self.shared: SharedMap[float] = SharedMap(
            "thresholds", redis_url, prefix + HASH, prefix + CHANNEL, encode=repr,
            decode=float, defaults=defaults, accept=lambda route: route in defaults)
        self.values = self.shared.values
        """Route → threshold in force (read on the request path; never the network)."""

    @property
    def connected(self) -> bool:
        return self.shared.connected

    @property
    def redis_url(self) -> str | None:
        return self.shared.redis_url

    def get(self, route: str) -> float:
        return self.values[route]

    def validate(self, route: str, value: float) -> None:
        if route not in self.values:
            raise ThresholdError(f"no route {route!r}")
        low, high = self.ranges.get(route, (0.0, 1.0))
        if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
            raise ThresholdError(f"route {route}'s threshold is a score in [{low:g}, {high:g}]")

    async def set(self, route: str, value: float) -> None:
        """Change a route's threshold on every replica; with Redis configured, only once Redis
        has it (else :class:`~gateway.kernel.errors.ServiceUnavailableError`, nothing
        changed)."""
        self.validate(route, value)
        await self.shared.set(route, float(value))

    async def start(self) -> None:
        await self.shared.start()

    async def aclose(self) -> None:
        await self.shared.aclose()
