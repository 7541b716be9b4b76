"""What a running gateway holds. Built by the app factory, kept on ``app.state.tiergate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.auth import KeyAuthenticator
from gateway.openapi import openapi_document
from gateway.registry import ModelRegistry
from gateway.serving import OpenAIServing
from gateway.settings import Settings


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    registry: ModelRegistry
    serving: OpenAIServing
    auth: KeyAuthenticator
    openapi: dict[str, Any]

    @classmethod
    def build(cls, settings: Settings) -> GatewayState:
        registry = ModelRegistry(settings)
        return cls(
            settings=settings,
            registry=registry,
            serving=OpenAIServing(settings, registry),
            auth=KeyAuthenticator(settings.auth.api_keys),
            openapi=openapi_document(),
        )
