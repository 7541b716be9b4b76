"""Running the app: uvicorn on uvloop + httptools, one or several worker processes.

Chosen by ``benchmarks/overhead.py`` (docs/operations.md): serving a minimal ASGI app on this
path, uvicorn (httptools) cost ~0.12 ms of CPU per request and granian ~0.21 ms (its hand-off
between Rust and Python threads), so uvicorn it is — with its httptools protocol on a transport
that sends a response's headers and body in one write (:mod:`gateway.http.coalescing`), and the
edge limits of :mod:`gateway.http.connection` (request head and body deadlines, header and URL
sizes).

uvicorn's ``limit_concurrency`` is left off: it counts open connections, so a slowloris attack
would make it refuse legitimate requests with 503 — the head deadline frees those connections
instead. Its accept ``backlog`` (2048) is kept. The open-file limit is raised to its hard limit
at start, so that connections, not file descriptors, are what an attacker has to exhaust.
"""

from __future__ import annotations

import logging
import os
import resource

from gateway.settings import Settings

logger = logging.getLogger(__name__)

_MAX_OPEN_FILES = 1 << 20
"""Where an unlimited hard limit is capped (Linux refuses more than ``fs.nr_open``)."""


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("Could not raise the open-file limit from %d to %d: %s", soft,
                           target, exc)
    return soft


def serve(settings: Settings) -> None:
    import uvicorn

    from gateway.http.connection import EdgeLimits, protocol_factory

    server = settings.server
    logging.basicConfig(
        level=server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logger.info("Open-file limit: %d (each client connection holds one)",
                raise_open_file_limit())
    options = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": protocol_factory(EdgeLimits.from_settings(server)),
        "interface": "asgi3",
        # The gateway reads neither the client's address nor the scheme, so uvicorn's
        # X-Forwarded-* rewriting would be one more ASGI layer per request for nothing.
        "proxy_headers": False,
        "log_level": server.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": int(server.graceful_shutdown_s) or None,
        "timeout_keep_alive": server.keep_alive_s,
    }
    if server.workers > 1:
        from gateway.models.registry import check_sources

        check_sources(settings)  # here once, in one line, rather than in every worker
        # Worker processes build their own app from the same file and environment.
        if settings.config_file is not None:
            os.environ["TIERGATE_CONFIG"] = str(settings.config_file)
        uvicorn.run("gateway.http.app:app_from_environment", factory=True, workers=server.workers,
                    **options)  # type: ignore[arg-type]
    else:
        from gateway.http.app import create_app

        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
