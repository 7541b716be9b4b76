"""Model backends, chosen by name (the ``backend`` field of a model's settings).

Backends are imported only when a configured model needs one: the in-process engine pulls in
torch and transformers, which a gateway in front of vLLM never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gateway.kernel.errors import ConfigError

if TYPE_CHECKING:
    from gateway.backends.settings import ModelSettings
    from gateway.kernel.backend import Backend

BACKENDS: dict[str, str] = {
    "http": "gateway.backends.http:HTTPBackend",
    "anthropic": "gateway.backends.anthropic:AnthropicBackend",
    "engine": "gateway.backends.engine.backend:EngineBackend",
    "embedding": "gateway.backends.embedding:EmbeddingBackend",
}


def create_backend(name: str, settings: ModelSettings) -> Backend:
    target = BACKENDS.get(settings.backend)
    if target is None:
        raise ConfigError(f"model {name}: unknown backend {settings.backend!r}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"model {name}: backend {settings.backend!r} needs extra packages "
            f"(pip install 'tiergate[{settings.backend}]'): {exc}"
        ) from exc
    backend: Backend = getattr(module, class_name)(name, settings)
    return backend
