"""The application factory. No module state: everything a gateway holds hangs off its app."""

from __future__ import annotations

from gateway.http import admin, console_routes, openai_routes, service_routes
from gateway.http.frontdoor import FrontDoor, RouteTable
from gateway.http.state import GatewayState
from gateway.settings import Settings, load_settings


def create_app(settings: Settings) -> FrontDoor:
    """The gateway as an ASGI app: every route behind the one front door."""
    routes = RouteTable([*openai_routes.ENDPOINTS, *service_routes.ENDPOINTS, *admin.ENDPOINTS,
                         *console_routes.ENDPOINTS])
    return FrontDoor(GatewayState.build(settings), routes)


def app_from_environment() -> FrontDoor:
    """Factory for ``uvicorn --factory`` and worker processes: settings from the environment."""
    return create_app(load_settings())
