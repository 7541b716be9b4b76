"""An in-process gateway for the admin API tests: the shipped reference pair (embedded
ref-small-int8 and ref-large) behind the shipped route ``auto``, with records, a shadow mirror of
the small tier to the large one, canaries and the registry history in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.http.app import create_app
from gateway.http.auth import hash_key
from gateway.http.state import GatewayState
from gateway.settings import Settings, read_config_file
from tests.conftest import REPO

CONFIG = REPO / "deploy" / "local" / "tiergate.toml"
ADMIN_KEY = "tg-admin-console"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
TIERS = ("ref-small-int8", "ref-large")


def reference_settings(directory: Path, **changes: Any) -> Settings:
    """The shipped config's reference pair and route ``auto``; state under ``directory``."""
    data = read_config_file(CONFIG)
    sections: dict[str, Any] = {
        "governance": data["governance"],
        "models": {name: data["models"][name] for name in TIERS},
        "routes": {"auto": data["routes"]["auto"]},
        "auth": {"admin_keys": [{"id": "sre-alice", "sha256": hash_key(ADMIN_KEY)}]},
        "records": {"sqlite_path": str(directory / "records.sqlite3"),
                    "spool_dir": str(directory / "spool"), "flush_interval_s": 0.01,
                    "store_interval_s": 0.05},
        "shadow": {"dir": str(directory / "shadow"),
                   "mirrors": {TIERS[0]: {"target": TIERS[1], "share": 1.0}}},
        "canary": {"dir": str(directory / "canary")},
    }
    sections.update(changes)
    settings = Settings(**sections)
    # a history (and audit trail) of the module's own, not the session's (tests/conftest.py)
    governance = settings.governance.model_copy(
        update={"history_path": directory / "registry.sqlite3"})
    return settings.model_copy(update={"governance": governance})


@dataclass
class Admin:
    client: httpx.AsyncClient
    state: GatewayState


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Admin]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://tiergate",
                                                 timeout=300) as client:
        yield Admin(client, app.gateway)
