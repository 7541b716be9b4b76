"""Schemathesis hooks for tests/gateway/http/test_schemathesis.py (loaded through
``SCHEMATHESIS_HOOKS``): most generated requests name the served model ``echo``, so they reach
the upstream instead of stopping at 404 — a model name is any string to the schema, only a few
are served."""

from __future__ import annotations

from typing import Any

import schemathesis


def _served(model: Any) -> bool:
    """Replace a valid-looking name by the served one (seven in eight: unknown names stay)."""
    return isinstance(model, str) and 1 <= len(model) <= 256 and len(model) % 8 != 0


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and _served(body.get("model")):
        body["model"] = "echo"
    return body


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: Any) -> Any:
    if isinstance(path_parameters, dict) and _served(path_parameters.get("model")):
        path_parameters["model"] = "echo"
    return path_parameters
