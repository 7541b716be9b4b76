"""Pin, run and compare on the real reference models (in-process engine, CPU): an unchanged
model stays ok with agreement 1.0; a silent swap of the served weights is detected in the first
canary run, raises an alert and turns rollback on until an ack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from canary.alerts import Alert, AlertSink
from canary.runs import compare_tokens
from canary.service import CanaryService
from canary.sets import REFERENCE_SET
from canary.shadow import ShadowPair
from gateway.kernel.backend import Backend
from gateway.kernel.errors import ConflictError, NotFoundError
from gateway.kernel.generation import (
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.models.registry import ModelRegistry
from gateway.settings import Settings
from tests.conftest import REPO

MODELS = REPO / "gateway" / "reference" / "models"
pytestmark = pytest.mark.slow


def small_set(tmp_path: Path, lines: int = 12) -> Path:
    """The first ``lines`` items of the reference set (add/1 and add/2): a quick pin."""
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(REFERENCE_SET.read_text().splitlines()[:lines]) + "\n")
    return path


class RecordingSink(AlertSink):
    name = "recording"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


class SilentSwap(Backend):
    """Serves another model's answers under the pinned model's name *and tuple*: what a hosted
    endpoint that swaps weights or quantization behind the same name looks like from outside."""

    def __init__(self, claims: Backend, serves: Backend) -> None:
        super().__init__(claims.name)
        self.claims, self.serves = claims, serves

    async def start(self) -> None:
        pass

    def describe(self) -> ModelTuple:
        return self.claims.describe()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await self.serves.generate(request)

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return self.serves.stream(request)


@pytest.fixture(scope="module")
def registry() -> Iterator[ModelRegistry]:
    settings = Settings(models={
        "ref-large": {"backend": "engine", "path": MODELS / "ref-large", "threads": 1},
        "ref-small": {"backend": "engine", "path": MODELS / "ref-small", "threads": 1},
        "ref-large-int8": {"backend": "engine", "path": MODELS / "ref-large", "threads": 1,
                           "int8": True},
    })
    registry = ModelRegistry(settings)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(registry.start())
    yield registry
    loop.run_until_complete(registry.aclose())
    loop.close()


def make_service(tmp_path: Path, **canary: object) -> tuple[CanaryService, RecordingSink]:
    settings = Settings(
        models={name: {"backend": "engine", "path": MODELS / name.removesuffix("-pinned")}
                for name in ("ref-large", "ref-large-pinned", "ref-small")},
        canary={"dir": tmp_path / "canary",
                "models": {"ref-large": {"pinned": "ref-large-pinned", "rollback": True}},
                **canary})
    sink = RecordingSink()
    return CanaryService(settings, sinks=[sink]), sink


async def test_unchanged_model_agrees_and_stays_ok(tmp_path: Path,
                                                   registry: ModelRegistry) -> None:
    service, sink = make_service(tmp_path)
    pin = await service.pin("ref-large", registry.get("ref-large"))
    assert pin.version == 1 and len(pin.golden) == 99
    assert pin.set_path == str(REFERENCE_SET) and pin.model_tuple.base_weights_sha256
    assert all(g.token_ids and g.logprobs for g in pin.golden)
    counts = pin.slice_pass_counts()
    assert counts["add/2"] == (6, 6) and counts["grader/json_schema"] == (0, 3)
    for _ in range(2):
        run = await service.run("ref-large", registry.get("ref-large"))
        assert run.status == "ok" and not run.new_alarms and not run.tuple_changed
        assert run.overall.agreement == 1.0 and run.overall.diverged == 0
        assert run.overall.logprob_abs_shift == 0.0
        assert all(s.pass_rate == s.golden_pass_rate for s in run.slices.values())
        assert run.overall.completion_tokens > 0 and run.overall.latency_p50_ms > 0
    status = await service.status("ref-large")
    assert status.status == "ok" and status.state is not None and status.state.runs == 2
    assert [r.id for r in await service.store.runs("ref-large")][-1] == run.id
    assert service.rollback_target("ref-large") is None and sink.alerts == []


async def test_silent_swap_is_detected_in_the_first_run(tmp_path: Path,
                                                        registry: ModelRegistry) -> None:
    service, sink = make_service(tmp_path)
    await service.pin("ref-large", registry.get("ref-large"))
    swapped = SilentSwap(registry.get("ref-large"), registry.get("ref-small"))
    run = await service.run("ref-large", swapped)
    assert not run.tuple_changed  # the tuple claims nothing changed: only the outputs tell
    assert run.status == "drift"
    assert "agreement" in {a.stream for a in run.new_alarms}
    assert run.overall.agreement < 0.8 and run.slices["add/3"].pass_rate < 0.5
    assert service.rollback_target("ref-large") == "ref-large-pinned"
    [alert] = sink.alerts
    assert alert.kind == "drift" and alert.source == "canary" and alert.run_id == run.id
    assert alert.rollback_to == "ref-large-pinned" and "agreement" in alert.summary

    # A second service (another process) sees the standing alarm after a refresh.
    other, _ = make_service(tmp_path)
    assert other.rollback_target("ref-large") is None
    await other.refresh()
    assert other.rollback_target("ref-large") == "ref-large-pinned"

    closed = await service.ack("ref-large", by="alice")
    assert closed is not None and closed.acknowledged_by == "alice"
    assert service.rollback_target("ref-large") is None
    assert sink.alerts[-1].kind == "acknowledged"
    status = await service.status("ref-large")
    assert status.status == "ok" and status.state is not None
    assert status.state.past_alarms[-1].run_id == run.id
    assert all(s.observations == 0 for s in status.state.drift.streams.values())


async def test_silent_int8_swap_is_detected_in_the_first_run(tmp_path: Path,
                                                             registry: ModelRegistry) -> None:
    """The same weights quantized to int8 change only a few answers (8 of 99 here), mostly in
    the tail slices; the agreement test still finds it in one run."""
    service, _ = make_service(tmp_path)
    await service.pin("ref-large", registry.get("ref-large"))
    run = await service.run("ref-large",
                            SilentSwap(registry.get("ref-large"), registry.get("ref-large-int8")))
    assert run.status == "drift" and 0.8 < run.overall.agreement < 1.0
    assert [a.stream for a in run.new_alarms] == ["agreement"]


async def test_visible_swap_changes_the_tuple(tmp_path: Path, registry: ModelRegistry) -> None:
    service, sink = make_service(tmp_path, models={})  # no rollback configured
    await service.pin("ref-large", registry.get("ref-large"), small_set(tmp_path))
    run = await service.run("ref-large", registry.get("ref-small"))
    assert run.tuple_changed and "base_weights_sha256" in run.tuple_changes
    assert run.status == "drift" and sink.alerts[0].source == "tuple"
    assert "served tuple differs" in sink.alerts[0].summary
    assert service.rollback_target("ref-large") is None  # rollback is off for this model


async def test_repin_unpin_and_a_changed_set(tmp_path: Path, registry: ModelRegistry) -> None:
    service, _ = make_service(tmp_path)
    own_set = small_set(tmp_path)
    lines = own_set.read_text().splitlines()
    first = await service.pin("ref-large", registry.get("ref-large"), own_set)
    second = await service.pin("ref-large", registry.get("ref-large"), own_set)
    assert (first.version, second.version) == (1, 2) and len(second.golden) == 12
    assert await service.store.pin_versions("ref-large") == [1, 2]
    own_set.write_text("\n".join(lines[:6]) + "\n")  # edited after the pin
    with pytest.raises(ConflictError, match="repin"):
        await service.run("ref-large", registry.get("ref-large"))
    await service.unpin("ref-large")
    with pytest.raises(NotFoundError, match="not pinned"):
        await service.run("ref-large", registry.get("ref-large"))
    with pytest.raises(NotFoundError, match="not configured"):
        await service.pin("nope", registry.get("ref-large"))
    assert (await service.status("ref-large")).status == "not pinned"


async def test_shadow_comparisons_feed_the_shadow_stream(tmp_path: Path,
                                                         registry: ModelRegistry) -> None:
    service, sink = make_service(tmp_path)
    await service.pin("ref-large", registry.get("ref-large"), small_set(tmp_path))
    request = GenerationRequest("r1", "completion",
                                SamplingParams(temperature=0.0, max_tokens=6, logprobs=0),
                                prompt="rev(4821+377)=")
    large = await registry.get("ref-large").generate(request)
    small = await registry.get("ref-small").generate(request)
    same = ShadowPair.of(request, "ref-large", "pinned", large, large).drift_evidence()
    assert same.agree and same.first_divergence is None and same.logprob_shift == 0.0
    differ = ShadowPair.of(request, "ref-large", "pinned", small, large).drift_evidence()
    assert not differ.agree and differ.first_divergence is not None
    assert await service.observe_shadow("ref-large", [same] * 50) is None
    alarm = await service.observe_shadow("ref-large", [differ] * 5)
    assert alarm is not None and alarm.source == "shadow"
    assert sink.alerts[-1].source == "shadow"
    assert service.rollback_target("ref-large") == "ref-large-pinned"


def test_compare_tokens() -> None:
    same = compare_tokens([1, 2, 3], "abc", [1, 2, 3], "abc", [-0.1, -0.2, -0.3],
                          [-0.1, -0.2, -0.3])
    assert same.agree and same.first_divergence is None and same.logprob_abs_shift == 0.0
    moved = compare_tokens([1, 2, 4], "abd", [1, 2, 3], "abc", [-0.5, -0.2, -1.0],
                           [-0.1, -0.2, -0.3])
    assert not moved.agree and moved.first_divergence == 2
    assert moved.logprob_shift == pytest.approx(-0.2)  # over the common prefix [1, 2]
    assert moved.logprob_abs_shift == pytest.approx(0.2)
    longer = compare_tokens([1, 2, 3, 9], "abcz", [1, 2, 3], "abc")
    assert not longer.agree and longer.first_divergence == 3 and longer.logprob_shift is None
    by_text = compare_tokens(None, "abx", [1, 2, 3], "abc")
    assert not by_text.agree and by_text.first_divergence == 2
