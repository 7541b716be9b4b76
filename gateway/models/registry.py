"""The model registry: every configured model's backend and pinned tuple, by name."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

from gateway import __version__
from gateway.backends import create_backend
from gateway.backends.settings import EmbeddingModelSettings, EngineModelSettings, ModelSettings
from gateway.kernel.errors import ModelNotFoundError
from gateway.models.resilience import GuardedBackend
from gateway.protocol import model_card

log = logging.getLogger("tiergate.registry")


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


class ModelRegistry:
    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.backends: dict[str, GuardedBackend] = {
            name: GuardedBackend(create_backend(name, model), model.max_in_flight,
                                 model.breaker_failures, model.breaker_reset_s)
            for name, model in resolve_packaged(settings).items()
        }
        self.created = int(time.time())

    async def prepare(self, names: Collection[str]) -> None:
        """Convert the packaged models that are not converted yet (once; slow the first time)."""
        from gateway.backends.engine.packaged import prepare

        for name in names:
            model = self.settings.models[name]
            if isinstance(model, EngineModelSettings) and model.packaged is not None:
                await asyncio.to_thread(prepare, model.packaged, self.settings.models_dir)

    async def start(self, names: Collection[str] | None = None) -> None:
        """Start the backends (all, or ``names``) concurrently; one that fails fails the start."""
        chosen = list(self.backends) if names is None else [self.get(n).name for n in names]
        await self.prepare(chosen)
        engines = [n for n in chosen if isinstance(self.settings.models[n],
                                                   EngineModelSettings | EmbeddingModelSettings)]

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
        """The ``/v1/models`` entry: OpenAI's fields, and the model tuple under ``tiergate``."""
        model = self.get(name).describe()
        info = {"kind": "model", "tiergate_version": __version__,
                **model.model_dump(mode="json"), "digest": model.digest()}
        return model_card(name, self.created, info)

    def cards(self) -> list[dict[str, Any]]:
        return [self.card(name) for name in self.backends]

    async def health(self) -> dict[str, dict[str, Any]]:
        """Every model's health: ``status`` (``ok``, ``degraded``, ``unreachable`` — not
        answered since start —, ``not started``), ``circuit``, the in-flight count, and what
        its backend adds (an HTTP upstream's redacted URL and last error: for admins)."""
        results = await asyncio.gather(*(b.health() for b in self.backends.values()))
        for health in results:
            if health.get("reachable") is False:  # the breaker's "degraded" says less
                health["status"] = "unreachable"
        return dict(zip(self.backends, results, strict=True))


UNUSABLE = frozenset({"unreachable", "not started"})


def usable(health: Mapping[str, Any]) -> bool:
    """Whether a model, as :meth:`ModelRegistry.health` shows it, can answer now: reached,
    started, the weights it was pinned to, its circuit not open."""
    return (health.get("status") not in UNUSABLE and health.get("circuit") != "open"
            and not health.get("identity_error"))
