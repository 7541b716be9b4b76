"""The shipped route ``auto`` on the reference pair: its verifier artifact loads (sha256 checked,
pinned by the default config) and a gateway with the default config's reference models and
route answers the openai SDK with the route headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.settings import read_config_file
from router.loading import build_router
from tests.conftest import GatewayFactory, ServerProcess
from verifiers.artifact import load_artifact

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "local" / "tiergate.toml"
REF_AUTO = REPO / "gateway" / "reference" / "verifiers" / "ref-auto"


def default_config() -> dict[str, Any]:
    return read_config_file(CONFIG)


def test_shipped_verifier_loads_small_and_pinned() -> None:
    route = default_config()["routes"]["auto"]
    assert Path(route["verifier"]) == REF_AUTO.resolve()
    verifier = load_artifact(REF_AUTO)  # checks the model file's sha256 against the manifest
    manifest = json.loads((REF_AUTO / "manifest.json").read_text())
    assert verifier.sha256 == manifest["sha256"] == route["verifier_sha256"]
    assert (verifier.kind, verifier.score_name, route["mode"]) == ("answer", "expected_gain",
                                                                  "cascade")
    assert (REF_AUTO / "model.skops").stat().st_size < 1_000_000
    assert -1.0 <= route["threshold"] <= 1.0


def test_a_different_pin_refuses_to_start() -> None:
    from gateway.kernel.errors import ConfigError
    from router.settings import RouteSettings

    route = RouteSettings(mode="cascade", small="ref-small-int8", large="ref-large",
                          verifier=REF_AUTO, verifier_sha256="0" * 64)
    with pytest.raises(ConfigError, match="not the pinned verifier_sha256"):
        build_router({"auto": route}, None)


@pytest.fixture(scope="module")
def reference_gateway(gateway_factory: GatewayFactory) -> ServerProcess:
    data = default_config()
    sections: dict[str, dict[str, Any]] = {
        f"models.{name}": data["models"][name] for name in ("ref-small-int8", "ref-large")}
    sections["routes.auto"] = data["routes"]["auto"]
    return gateway_factory(sections)


def test_default_auto_route_serves_with_route_headers(reference_gateway: ServerProcess) -> None:
    client = openai.OpenAI(base_url=reference_gateway.url + "/v1", api_key="unused")
    seen = {}
    # A 3-digit sum (the small model gets almost none right) and a 2-digit one (all right).
    for prompt in ("rev(123+489)=", "rev(93+43)="):
        raw = client.completions.with_raw_response.create(
            model="auto", prompt=prompt, max_tokens=6, temperature=0)
        completion = raw.parse()
        assert raw.headers["x-tiergate-route"] == "auto"
        assert raw.headers["x-tiergate-escalated"] in ("true", "false")
        score = float(raw.headers["x-tiergate-score"])
        assert -1.0 <= score <= 1.0
        seen[prompt] = (raw.headers["x-tiergate-escalated"], completion.model,
                        completion.choices[0].text)
    assert seen["rev(123+489)="] == ("true", "ref-large", "216")
    assert seen["rev(93+43)="] == ("false", "ref-small-int8", "631")
    listed = {m.id for m in client.models.list()}
    assert {"auto", "ref-small-int8", "ref-large"} <= listed
