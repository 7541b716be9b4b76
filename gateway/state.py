"""What a running gateway holds. Built by the app factory, kept on ``app.state.tiergate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.auth import KeyAuthenticator
from gateway.openapi import openapi_document
from gateway.registry import ModelRegistry
from gateway.serving import OpenAIServing
from gateway.settings import Settings
from gateway.telemetry import CIRCUIT_VALUES, Telemetry


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    registry: ModelRegistry
    serving: OpenAIServing
    auth: KeyAuthenticator
    openapi: dict[str, Any]
    telemetry: Telemetry

    @classmethod
    def build(cls, settings: Settings) -> GatewayState:
        registry = ModelRegistry(settings)
        telemetry = Telemetry(settings.telemetry)
        telemetry.gauge("tiergate_in_flight",
                        lambda: {n: b.in_flight for n, b in registry.backends.items()})
        telemetry.gauge("tiergate_circuit_state",
                        lambda: {n: CIRCUIT_VALUES[b.breaker.state.value]
                                 for n, b in registry.backends.items()})
        return cls(
            settings=settings,
            registry=registry,
            serving=OpenAIServing(settings, registry, telemetry),
            auth=KeyAuthenticator(settings.auth.api_keys),
            openapi=openapi_document(),
            telemetry=telemetry,
        )
