"""Shadow traffic: a share of live requests answered again by a shadow model, off the hot path.

The mirror is a request listener (:class:`gateway.listener.RequestListener`). On the
request path it only draws whether to mirror and puts the completed request on a bounded queue
(a few microseconds; ``benchmarks/shadow.py`` measures it). Workers take it from there, after
the client's response: they send the request *as applied* (every sampling parameter, the
effective seed) to the shadow target's backend, build a :class:`canary.shadow.ShadowPair`,
append it to the shadow log and hand it to the pair listeners (the canary monitor's drift
evidence). Mirror work never takes user capacity: a full queue drops new mirror work, and a
target with half its in-flight slots taken (``shadow.busy_share``) is skipped. Both are counted
in ``tiergate_shadow_total``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import replace

from canary.settings import CanaryDeployment
from canary.shadow import ShadowLog, ShadowPair
from gateway.kernel.errors import TiergateError
from gateway.listener import CompletedRequest, RequestListener
from gateway.models.registry import ModelRegistry
from gateway.telemetry.instruments import Telemetry

log = logging.getLogger("tiergate.shadow")

PairListener = Callable[[ShadowPair], None]

FLUSH_EVERY_S = 0.5
"""Pairs are appended to the shadow log in batches, at least this often."""


class ShadowMirror(RequestListener):
    name = "shadow"

    def __init__(self, settings: CanaryDeployment, registry: ModelRegistry,
                 telemetry: Telemetry, rng: random.Random | None = None) -> None:
        self.settings = settings.shadow
        self.registry = registry
        self.telemetry = telemetry
        self.mirrors = self.settings.mirrors
        self.relations = {
            live: "pinned" if settings.canary.for_model(live).pinned == mirror.target else "tier"
            for live, mirror in self.mirrors.items()}
        """``pinned``: the target serves the live model's pinned version (drift evidence);
        ``tier``: another model (verifier training data)."""
        self.log = ShadowLog(self.settings.dir)
        self.listeners: list[PairListener] = []
        self.queue: asyncio.Queue[CompletedRequest] = asyncio.Queue(self.settings.queue_size)
        self._draw = (rng or random.Random()).random
        self._pending: list[ShadowPair] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- on the request path -----------------------------------------------------------------

    def completed(self, done: CompletedRequest) -> None:
        """The listener: decide, and enqueue once the response is out.

        Listeners run before the response is sent (records must be spooled by then); mirror
        work must not compete with sending it, so the request is queued when the task that
        serves it has finished — after its last byte went out."""
        if done.status != 200:  # a stream cut short: no whole answer to compare
            return
        live = done.results[-1].model.name
        mirror = self.mirrors.get(live)
        if mirror is None or done.request.sampling.n != 1 or self._draw() >= mirror.share:
            return
        task = asyncio.current_task()
        if task is None:
            self._enqueue(done, mirror.target)
        else:
            task.add_done_callback(lambda _: self._enqueue(done, mirror.target))

    def _enqueue(self, done: CompletedRequest, target: str) -> None:
        try:
            self.queue.put_nowait(done)
        except asyncio.QueueFull:
            self.telemetry.count_shadow(done.results[-1].model.name, target, "dropped")

    # -- off the request path ----------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"shadow-{i}")
                       for i in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._flush_periodically(), name="shadow-log"))

    async def aclose(self) -> None:
        """Stop the workers (mirror work still queued is dropped) and write what is pending."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            try:
                await asyncio.to_thread(self.log.append, pending)
            except OSError as exc:
                log.error("shadow log %s: %d pairs not written: %s",
                          self.settings.dir, len(pending), exc)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()

    async def _work(self) -> None:
        while True:
            done = await self.queue.get()
            try:
                await self.mirror(done)
            except Exception:  # one broken pair must not stop the worker
                log.exception("request %s: shadow call failed", done.ctx.request_id)

    async def mirror(self, done: CompletedRequest) -> ShadowPair | None:
        """Answer ``done``'s request by its shadow target; the pair, or None when skipped."""
        live = done.results[-1]
        mirror = self.mirrors[live.model.name]
        target = self.registry.get(mirror.target)
        if target.in_flight >= target.max_in_flight * self.settings.busy_share:
            self.telemetry.count_shadow(live.model.name, mirror.target, "busy")
            return None
        request = replace(done.request, request_id=f"{done.request.request_id}-shadow",
                          trace_headers={})
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                shadow = await target.generate(request)
        except (TiergateError, TimeoutError) as exc:
            log.warning("request %s: shadow call to %s failed: %s", done.ctx.request_id,
                        mirror.target, getattr(exc, "message", None) or type(exc).__name__)
            self.telemetry.count_shadow(live.model.name, mirror.target, "error")
            return None
        pair = ShadowPair.of(done.request, done.route, self.relations[live.model.name], live,
                             shadow)
        outcome = "identical" if pair.comparison.agree else "diverged"
        self.telemetry.count_shadow(live.model.name, mirror.target, outcome)
        self._pending.append(pair)
        for listener in self.listeners:
            try:
                listener(pair)
            except Exception:
                log.exception("request %s: shadow pair listener failed", done.ctx.request_id)
        return pair
