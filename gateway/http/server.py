"""Running the app: uvicorn on uvloop + httptools, one or several worker processes.

Chosen by ``benchmarks/overhead.py`` (docs/operations.md): serving a minimal ASGI app on this
path, uvicorn (httptools) cost ~0.12 ms of CPU per request and granian ~0.21 ms (its hand-off
between Rust and Python threads), so uvicorn it is — with its httptools protocol on a transport
that sends a response's headers and body in one write (:mod:`gateway.http.coalescing`).
"""

from __future__ import annotations

import logging
import os

from gateway.settings import Settings


def serve(settings: Settings) -> None:
    import uvicorn

    from gateway.http.coalescing import CoalescingHttpToolsProtocol

    server = settings.server
    logging.basicConfig(
        level=server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": CoalescingHttpToolsProtocol,
        "log_level": server.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": int(server.graceful_shutdown_s) or None,
        "timeout_keep_alive": server.keep_alive_s,
    }
    if server.workers > 1:
        # Worker processes build their own app from the same file and environment.
        if settings.config_file is not None:
            os.environ["TIERGATE_CONFIG"] = str(settings.config_file)
        uvicorn.run("gateway.http.app:app_from_environment", factory=True, workers=server.workers,
                    **options)  # type: ignore[arg-type]
    else:
        from gateway.http.app import create_app

        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
