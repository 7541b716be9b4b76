"""The console's browser tests: two replicas of the reference pair's route ``auto``
(ref-small-int8 → ref-large, the shipped verifier) sharing a Redis of their own (thresholds,
rollbacks) and a canary store, each with its own record store; ``live`` is a canary model
behind a proxy whose answers can be swapped silently (tests/deploy's
:class:`SwappableUpstream`), so a canary run finds drift and raises an alarm.

Playwright drives Debian's Chromium (``make system-deps``), headless. With
``TIERGATE_CONSOLE_SCREENSHOTS=DIR`` the tests also save a screenshot of each page there
(docs/console/ holds the committed ones)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright  # the dev extra (make install-dev)

from gateway.http.auth import hash_key
from gateway.settings import read_config_file
from tests.conftest import (
    REPO,
    GatewayFactory,
    RedisProcess,
    ServerProcess,
    free_port,
    upstream_model,
    wait_for,
)
from tests.deploy.conftest import SwappableUpstream, write_canary_set

expect.set_options(timeout=60_000)
"""A guard against a hang, not a timed assertion: a page's first load scores the route's
evaluation data (once, then cached) on a machine the whole suite shares."""

ADMIN_KEY = "tg-console-admin"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = "TIERGATE_CONSOLE_SCREENSHOTS"
REPLICAS = ("g1", "g2")


@dataclass
class ConsoleFleet:
    replicas: dict[str, ServerProcess]
    live: SwappableUpstream

    def admin(self, name: str, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(method, self.replicas[name].url + path, headers=ADMIN,
                               timeout=120, **kwargs)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="package")
def console_fleet(gateway_factory: GatewayFactory, upstream: ServerProcess,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFleet]:
    directory = tmp_path_factory.mktemp("console")
    redis = RedisProcess(free_port(), directory)  # of its own: no other test's thresholds
    redis.start()
    live = SwappableUpstream(upstream.url)
    write_canary_set(directory / "canary-set.jsonl")
    default = read_config_file(REPO / "deploy" / "local" / "tiergate.toml")
    replicas = {}
    try:
        for name in REPLICAS:
            sections: dict[str, dict[str, Any]] = {
                f"models.{model}": {**default["models"][model], "threads": 1}
                for model in ("ref-small-int8", "ref-large")}
            sections.update({
                "models.live": {"backend": "http", "base_url": f"{live.url}/{name}/v1",
                                "upstream_model": "echo"},
                "models.live-pinned": upstream_model(upstream, "echo"),
                "routes.auto": default["routes"]["auto"],
                "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN_KEY)}]},
                "records": {"store_interval_s": 0.2},
                "canary": {"dir": str(directory / "canary"), "interval_s": 0,
                           "refresh_s": 0.5, "alert_sinks": ["log"]},
                "canary.models.live": {"pinned": "live-pinned", "rollback": True,
                                       "canary_set": str(directory / "canary-set.jsonl")},
                # every small answer of auto also asked of the large tier: the live curve
                "shadow.mirrors.ref-small-int8": {"target": "ref-large", "share": 1.0},
                # and every answer of live asked of its pinned version: shadow agreement
                "shadow.mirrors.live": {"target": "live-pinned", "share": 1.0},
            })
            replicas[name] = gateway_factory(sections, env={
                "TIERGATE_REDIS_URL": redis.url, "OMP_NUM_THREADS": "1",
                # each replica's registry history (and so its audit trail) of its own
                "TIERGATE_GOVERNANCE__HISTORY_PATH": str(directory / f"{name}.sqlite3")})
        yield ConsoleFleet(replicas, live)
    finally:
        for server in replicas.values():  # not kept for the rest of the session
            server.stop()
        live.close()
        redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, for one module of synchronous tests: Playwright's synchronous API holds an
    event loop of its own while it runs, which pytest-asyncio's tests cannot share."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: apt-get install chromium (make system-deps)")
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage) at a laptop's 1280x800; a script error fails the
    test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == []


def sign_in(page: Any, url: str, key: str = ADMIN_KEY) -> None:
    page.goto(url + "/console")
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()
    expect(page.locator("main")).to_have_attribute("data-loaded", "#/routes/auto")  # landed


def screenshot(page: Any, name: str, full_page: bool = False) -> None:
    """The page as it is now, into $TIERGATE_CONSOLE_SCREENSHOTS (when set), as a PNG of 256
    colours (a screenshot of the console keeps its look and takes a third of the bytes)."""
    directory = os.environ.get(SCREENSHOTS)
    if not directory:
        return
    from PIL import Image  # matplotlib's dependency: installed with tiergate

    Path(directory).mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot(full_page=full_page))).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        Path(directory) / f"{name}.png", optimize=True)



def until(condition: Any, what: str) -> Any:
    return wait_for(condition, timeout=60, what=what)
