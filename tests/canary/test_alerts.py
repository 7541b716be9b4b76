"""Alert sinks: the webhook POSTs JSON to a real aiohttp server on loopback and never raises;
sinks and drift tests are chosen by name and validated in the settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from canary.alerts import Alert, LogSink, MetricSink, WebhookSink, build_sinks, deliver
from canary.settings import CanarySettings
from gateway.kernel.errors import ConfigError
from gateway.settings import load_settings
from tests.conftest import free_port

ALERT = Alert(kind="drift", model="ref-large", raised_at=1.5, summary="agreement: 41 of 99",
              streams=[{"stream": "agreement"}], run_id="run-1", rollback_to="ref-large-pinned")



@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[Any], dict[str, Any]]]:
    received: list[Any] = []
    behaviour: dict[str, Any] = {"status": 200, "delay": 0.0}

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(behaviour["delay"])
        received.append(await request.json())
        return web.Response(status=behaviour["status"])

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", received, behaviour
    await runner.cleanup()


async def test_webhook_posts_the_alert(webhook: tuple[str, list[Any], dict[str, Any]]) -> None:
    url, received, _ = webhook
    await WebhookSink(url, timeout_s=2).send(ALERT)
    [body] = received
    assert body["type"] == "tiergate.canary.alert" and body["kind"] == "drift"
    assert body["model"] == "ref-large" and body["rollback_to"] == "ref-large-pinned"
    assert body["streams"] == [{"stream": "agreement"}]


async def test_webhook_failures_never_raise(webhook: tuple[str, list[Any], dict[str, Any]],
                                            dead_url: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    url, _, behaviour = webhook
    caplog.set_level(logging.WARNING, "tiergate.canary")
    behaviour["status"] = 500
    await WebhookSink(url).send(ALERT)
    assert "answered 500" in caplog.text
    behaviour["delay"] = 1.0
    await WebhookSink(url, timeout_s=0.1).send(ALERT)  # times out
    await WebhookSink(dead_url + "/hook", timeout_s=1).send(ALERT)  # connection refused
    assert caplog.text.count("failed for drift alert") == 2


async def test_deliver_reaches_every_sink_and_survives_a_broken_one(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("metrics down")

    caplog.set_level(logging.INFO, "tiergate.canary")
    await deliver(ALERT, [LogSink(), MetricSink(seen.append), MetricSink(broken)])
    assert seen == [ALERT]
    assert "canary drift: ref-large: agreement: 41 of 99" in caplog.text
    assert "metric sink failed" in caplog.text


def test_sinks_by_name() -> None:
    settings = CanarySettings(alert_sinks=["log", "metric", "webhook"],
                              webhook_url="http://127.0.0.1:9/x")
    assert [s.name for s in build_sinks(settings)] == ["log", "webhook"]  # no metric callback
    assert [s.name for s in build_sinks(settings, metric=lambda a: None)] == [
        "log", "metric", "webhook"]


@pytest.mark.parametrize(("text", "needle"), [
    ("[canary]\nalert_sinks = ['pager']\n", "unknown sinks ['pager']"),
    ("[canary]\nalert_sinks = ['webhook']\n", "no canary.webhook_url"),
    ("[canary]\ndrift_test = 'ewma'\n", "known: cusum, sprt"),
    ("[canary]\nfalse_alarm_rate = 0\n", "false_alarm_rate"),
    ("[canary]\nagreement_alternative = 0.001\n", "must exceed agreement_tolerance"),
    ("[canary.models.ghost]\nrollback = false\n", "canary.models.ghost: not a configured"),
    ("[models.a]\nbackend = 'http'\nbase_url = 'http://h/v1'\n[canary.models.a]\nrollback = true\n",
     "rollback needs 'pinned'"),
    ("[models.a]\nbackend = 'http'\nbase_url = 'http://h/v1'\n[canary.models.a]\npinned = 'a'\n",
     "is not another configured model"),
])
def test_invalid_canary_settings(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match="canary") as error:
        load_settings(config)
    assert needle in str(error.value)


def test_canary_set_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[canary]\ndefault_set = 'sets/a.jsonl'\n"
                      "[models.a]\nbackend = 'http'\nbase_url = 'http://h/v1'\n"
                      "[canary.models.a]\ncanary_set = 'b.jsonl'\n")
    settings = load_settings(config)
    assert settings.canary.default_set == (tmp_path / "sets/a.jsonl").resolve()
    assert settings.canary.for_model("a").canary_set == (tmp_path / "b.jsonl").resolve()
    assert settings.canary.for_model("other").rollback is False
