"""The model registry: every configured model's backend and pinned tuple, by name.

Two ways to start the models: :meth:`ModelRegistry.start` loads them and returns when all are
loaded (a failure fails it: the CLI, tests, embedding), :meth:`ModelRegistry.load` is what a
serving gateway runs in the background once its port is bound — models become ready one by one
(``deferred`` ones last), each in ``loading`` state meanwhile (calls get ``503 model_loading``),
a failure is logged and leaves that model ``failed`` while the others serve. Packaged models are
converted first, in a process of their own (``python -m gateway.backends.engine.packaged``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

from gateway import __version__
from gateway.backends import create_backend
from gateway.backends.settings import EmbeddingModelSettings, EngineModelSettings, ModelSettings
from gateway.kernel.errors import ConfigError, ModelNotFoundError, TiergateError
from gateway.kernel.secrets import redact
from gateway.models.resilience import GuardedBackend
from gateway.protocol import model_card

log = logging.getLogger("tiergate.registry")

IN_PROCESS = (EngineModelSettings, EmbeddingModelSettings)
"""Models loaded into this process with transformers: one after the other."""

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class RegistrySettings(Protocol):
    """What the registry reads of the settings (:class:`gateway.settings.RegistrySettings` is
    one)."""

    @property
    def models(self) -> Mapping[str, ModelSettings]: ...
    @property
    def models_dir(self) -> Path: ...


def resolve_packaged(settings: RegistrySettings) -> dict[str, ModelSettings]:
    """Models with ``packaged = NAME`` get ``path = models_dir/NAME`` (made by :meth:`prepare`)."""
    resolved: dict[str, ModelSettings] = {}
    for name, model in settings.models.items():
        if isinstance(model, EngineModelSettings) and model.packaged is not None:
            model = model.model_copy(update={"path": settings.models_dir / model.packaged})
        resolved[name] = model
    return resolved


def check_sources(settings: RegistrySettings) -> None:
    """Raise :class:`ConfigError` (one line) for an engine model whose ``path`` does not exist,
    or whose packaged weights are neither converted nor installed: before a server binds its
    port, not minutes later in the background."""
    from gateway.backends.engine.packaged import check_installed

    for name, model in settings.models.items():
        if not isinstance(model, EngineModelSettings):
            continue
        if model.packaged is not None:
            check_installed(model.packaged, settings.models_dir)
        elif model.path is not None and not model.path.exists():
            raise ConfigError(f"model {name}: path {model.path} does not exist")


class ModelRegistry:
    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.backends: dict[str, GuardedBackend] = {
            name: GuardedBackend(create_backend(name, model), model.max_in_flight,
                                 model.breaker_failures, model.breaker_reset_s)
            for name, model in resolve_packaged(settings).items()
        }
        self.created = int(time.time())
        self.loaded_hooks: list[Callable[[str], Awaitable[object]]] = []
        """Run for a model loaded in the background, before it serves (the tuple registry's
        gates)."""

    async def prepare(self, names: Collection[str]) -> None:
        """Convert the packaged models that are not converted yet (once; slow the first time)."""
        from gateway.backends.engine.packaged import prepare

        for name in names:
            model = self.settings.models[name]
            if isinstance(model, EngineModelSettings) and model.packaged is not None:
                await asyncio.to_thread(prepare, model.packaged, self.settings.models_dir)

    def load_order(self) -> list[str]:
        """The models in the order :meth:`load` loads them: as configured, ``deferred`` last."""
        return sorted(self.backends, key=lambda name: self.settings.models[name].deferred)

    async def load(self) -> None:
        """Load every model in the background (see the module doc); never raises but for
        cancellation (the gateway stopping). HTTP upstreams start at once, engines one after
        the other in :meth:`load_order`."""
        order = self.load_order()
        for name in order:
            self.backends[name].loading = "waiting for the models before it"
        engines = [n for n in order if isinstance(self.settings.models[n], IN_PROCESS)]

        async def load_engines() -> None:
            for name in engines:  # one after the other: see start()
                await self._load_one(name)

        await asyncio.gather(load_engines(),
                             *(self._load_one(n) for n in order if n not in engines))

    async def _load_one(self, name: str) -> None:
        backend = self.backends[name]
        model = self.settings.models[name]
        started = time.monotonic()
        try:
            if isinstance(model, EngineModelSettings) and model.packaged is not None:
                await self._convert(name, model.packaged, backend)
            backend.loading = "loading"
            await backend.start()
            backend.loading = "checking its gates"
            for hook in self.loaded_hooks:
                await hook(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # kept on the model; the others serve
            message = redact(exc.message if isinstance(exc, TiergateError) else
                             f"{type(exc).__name__}: {exc}")
            backend.load_error = message
            log.error("model %s failed to load: %s", name, message)
        else:
            log.info("model %s is ready (%.0f s)", name, time.monotonic() - started)
        finally:
            backend.loading = None

    async def _convert(self, name: str, packaged: str, backend: GuardedBackend) -> None:
        """Convert ``packaged`` in a process of its own unless done (its steps go to stderr)."""
        from gateway.backends.engine.packaged import is_prepared

        models_dir = self.settings.models_dir
        if is_prepared(packaged, models_dir):
            return
        backend.loading = "converting the packaged weights, once"
        log.info("model %s: converting the packaged %s into %s once (minutes on a small CPU; "
                 "the other models serve meanwhile)", name, packaged, models_dir)
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        # A session of its own: Ctrl-C or a group SIGTERM stops the gateway, which stops it
        # (a half-done conversion is discarded; the next start begins it again).
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.backends.engine.packaged", packaged, str(models_dir),
            stdin=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path},
            start_new_session=True)
        try:
            code = await process.wait()
        except asyncio.CancelledError:
            if process.returncode is None:
                process.terminate()
                await process.wait()
            raise
        if code != 0:
            raise ConfigError(f"converting {packaged} failed (exit status {code}; its log is "
                              "above)")

    async def start(self, names: Collection[str] | None = None) -> None:
        """Start the backends (all, or ``names``) concurrently; one that fails fails the start."""
        chosen = list(self.backends) if names is None else [self.get(n).name for n in names]
        await self.prepare(chosen)
        engines = [n for n in chosen if isinstance(self.settings.models[n], IN_PROCESS)]

        async def load_engines() -> None:
            # One after the other: transformers' model loading is not thread-safe (it patches
            # torch's module initialisation process-wide while it loads).
            for name in engines:
                await self.backends[name].start()

        await asyncio.gather(load_engines(),
                             *(self.backends[n].start() for n in chosen if n not in engines))

    async def aclose(self) -> None:
        await asyncio.gather(*(b.aclose() for b in self.backends.values()),
                             return_exceptions=True)

    def settings_of(self, name: str) -> ModelSettings:
        self.get(name)
        return self.settings.models[name]

    def get(self, name: str) -> GuardedBackend:
        backend = self.backends.get(name)
        if backend is None:
            raise ModelNotFoundError(f"The model '{name}' does not exist", param="model")
        return backend

    def card(self, name: str) -> dict[str, Any]:
        """The ``/v1/models`` entry: OpenAI's fields, and under ``tiergate`` the model tuple and
        ``status`` (``ready``, ``loading``, ``failed`` to load, ``not loaded``)."""
        backend = self.get(name)
        model = backend.describe()
        info = {"kind": "model", "status": backend.load_status, "tiergate_version": __version__,
                **model.model_dump(mode="json"), "digest": model.digest()}
        return model_card(name, self.created, info)

    def cards(self) -> list[dict[str, Any]]:
        return [self.card(name) for name in self.backends]

    async def health(self) -> dict[str, dict[str, Any]]:
        """Every model's health: ``status`` (``ok``, ``degraded``, ``unreachable`` — not
        answered since start —, ``not started``, ``loading`` with its ``step``, ``failed``
        with its ``error``, ``refused`` by its gates), ``circuit``, the in-flight count, and
        what its backend adds (an HTTP upstream's redacted URL and last error: for admins)."""
        results = await asyncio.gather(*(b.health() for b in self.backends.values()))
        for health in results:
            if health.get("reachable") is False:  # the breaker's "degraded" says less
                health["status"] = "unreachable"
        return dict(zip(self.backends, results, strict=True))


UNUSABLE = frozenset({"unreachable", "not started", "loading", "failed", "refused"})


def usable(health: Mapping[str, Any]) -> bool:
    """Whether a model, as :meth:`ModelRegistry.health` shows it, can answer now: reached,
    started, gated, the weights it was pinned to, its circuit not open."""
    return (health.get("status") not in UNUSABLE and health.get("circuit") != "open"
            and not health.get("identity_error"))
