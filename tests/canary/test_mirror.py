"""Shadow traffic end to end: live requests mirrored after their response, pairs stored and
compared, mirror work dropped (never user work) when the queue is full or the target busy."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from canary.shadow import ShadowLog, ShadowPair
from tests.conftest import REPO, GatewayFactory, ServerProcess, upstream_model, wait_for

REFERENCE = REPO / "gateway" / "reference" / "models"


def shadow_counts(gateway: ServerProcess) -> dict[tuple[str, str, str], float]:
    text = httpx.get(gateway.url + "/metrics").text
    pattern = r'^tiergate_shadow_total\{model="([^"]+)",target="([^"]+)",outcome="([^"]+)"\} (\S+)'
    return {(m, t, o): float(v) for m, t, o, v in re.findall(pattern, text, re.MULTILINE)}


def stored_pairs(directory: Path) -> list[ShadowPair]:
    return list(ShadowLog(directory).read())


@pytest.fixture(scope="module")
def mirrored(gateway_factory: GatewayFactory, upstream: ServerProcess,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerProcess, Path]:
    shadow_dir = tmp_path_factory.mktemp("shadow")
    return gateway_factory({
        "models.live": upstream_model(upstream, "echo"),
        "models.live-pinned": upstream_model(upstream, "echo"),
        "models.busy-live": upstream_model(upstream, "echo"),
        "models.slow-target": upstream_model(upstream, "slow-1500", max_in_flight=2),
        "shadow": {"queue_size": 1, "workers": 1, "dir": str(shadow_dir)},
        "shadow.mirrors.live": {"target": "live-pinned", "share": 1.0},
        "canary.models.live": {"pinned": "live-pinned"},
        "shadow.mirrors.busy-live": {"target": "slow-target", "share": 1.0},
    }), shadow_dir


def test_mirrored_pairs_are_stored_and_identical(mirrored: tuple[ServerProcess, Path]) -> None:
    gateway, shadow_dir = mirrored
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    ids = []
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="live", messages=[{"role": "user", "content": f"question {i}"}],
            temperature=0)
        ids.append(raw.headers["x-tiergate-record-id"])
    with client.chat.completions.with_streaming_response.create(
            model="live", messages=[{"role": "user", "content": "streamed"}], stream=True,
            temperature=0.7) as streamed:
        ids.append(streamed.headers["x-tiergate-record-id"])
        assert "[DONE]" in streamed.read().decode()
    key = ("live", "live-pinned", "identical")
    wait_for(lambda: shadow_counts(gateway).get(key) == 4)
    wait_for(lambda: len(stored_pairs(shadow_dir)) == 4)
    pairs = {p.request_id: p for p in stored_pairs(shadow_dir)}
    assert set(pairs) == set(ids)
    for pair in pairs.values():
        assert pair.relation == "pinned" and pair.route == "live"
        assert pair.live.model == "live" and pair.shadow.model == "live-pinned"
        assert pair.comparison.agree and pair.comparison.first_divergence is None
        assert pair.live.text == pair.shadow.text and pair.live.text.startswith("echo: ")
        assert pair.deterministic
    # The sampled request was mirrored with its effective seed: replayable on both sides.
    assert pairs[ids[-1]].request["sampling"]["seed"] is not None
    assert pairs[ids[-1]].request["sampling"]["temperature"] == 0.7


def test_full_queue_drops_mirror_work_never_user_work(
        mirrored: tuple[ServerProcess, Path]) -> None:
    gateway, _ = mirrored
    before = shadow_counts(gateway)

    def answered_shadows() -> float:  # shadow calls to the slow target that got an answer
        counts = shadow_counts(gateway)
        return sum(counts.get(("busy-live", "slow-target", outcome), 0)
                   for outcome in ("identical", "diverged", "error"))

    for i in range(6):  # the slow target holds the worker; the queue holds one more
        answered = answered_shadows()
        response = httpx.post(gateway.url + "/v1/chat/completions", timeout=10, json={
            "model": "busy-live", "messages": [{"role": "user", "content": f"q{i}"}]})
        assert response.status_code == 200
        if i == 0:  # nothing of busy-live was mirrored before: its shadow call is this one's
            # The user had its answer before its shadow call did (the target answers in 1.5 s).
            assert answered_shadows() == answered
    after = shadow_counts(gateway)
    dropped = after.get(("busy-live", "slow-target", "dropped"), 0) - before.get(
        ("busy-live", "slow-target", "dropped"), 0)
    assert dropped >= 4


def test_a_busy_target_is_skipped(mirrored: tuple[ServerProcess, Path]) -> None:
    gateway, _ = mirrored
    key = ("busy-live", "slow-target", "busy")
    wait_for(lambda: not re.search(r'^tiergate_shadow_queue_depth [1-9]',
                                   httpx.get(gateway.url + "/metrics").text, re.MULTILINE))
    time.sleep(1.6)  # the worker's slow shadow call ends
    before = shadow_counts(gateway).get(key, 0)
    # A user request holds one of the target's two slots: half of its capacity is taken.
    holder = threading.Thread(target=httpx.post, args=(gateway.url + "/v1/chat/completions",),
                              kwargs={"timeout": 10, "json": {
                                  "model": "slow-target",
                                  "messages": [{"role": "user", "content": "user work"}]}})
    holder.start()
    time.sleep(0.3)
    response = httpx.post(gateway.url + "/v1/chat/completions", timeout=10, json={
        "model": "busy-live", "messages": [{"role": "user", "content": "mirror me"}]})
    assert response.status_code == 200
    wait_for(lambda: shadow_counts(gateway).get(key, 0) == before + 1)
    holder.join()


def test_tier_pairs_on_the_reference_models(gateway_factory: GatewayFactory,
                                            tmp_path: Path) -> None:
    gateway = gateway_factory({
        "models.ref-small": {"backend": "engine", "path": str(REFERENCE / "ref-small"),
                             "int8": True},
        "models.ref-large": {"backend": "engine", "path": str(REFERENCE / "ref-large")},
        "shadow": {"dir": str(tmp_path)},
        "shadow.mirrors.ref-small": {"target": "ref-large", "share": 1.0},
    })
    prompts = ["rev(12+34)=", "rev(5*7)=", "sort(dcba)=", "rev(987+456)=", "rev(43*21)="]
    for prompt in prompts:
        response = httpx.post(gateway.url + "/v1/completions", timeout=60, json={
            "model": "ref-small", "prompt": prompt, "max_tokens": 6, "temperature": 0})
        assert response.status_code == 200
    wait_for(lambda: len(stored_pairs(tmp_path)) == len(prompts), timeout=60)
    pairs = stored_pairs(tmp_path)
    assert {p.request["prompt"] for p in pairs} == set(prompts)
    for pair in pairs:
        assert pair.relation == "tier"
        assert pair.live.tuple_digest != pair.shadow.tuple_digest
        assert pair.live.token_ids and pair.shadow.token_ids
        assert pair.comparison.agree == (pair.live.token_ids == pair.shadow.token_ids)
    # Two different models: they disagree somewhere on these prompts.
    assert any(not p.comparison.agree for p in pairs)
