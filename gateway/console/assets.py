"""The console's static files, read from the package: what ``/console`` serves. They hold no
data (every datum comes from the admin API with the admin key), so they need no key."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

MEDIA_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "console.js": b"text/javascript; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}
"""Every asset by name: nothing else under ``static/`` is served."""


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    media_type: bytes


def read_asset(name: str) -> Asset | None:
    """The asset called ``name`` (one of :data:`MEDIA_TYPES`), or None."""
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        return None
    body = (importlib.resources.files("gateway.console") / "static" / name).read_bytes()
    return Asset(name, body, media_type)
