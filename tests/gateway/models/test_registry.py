"""The registry starts several in-process models at once (their loading must not race)."""

from __future__ import annotations

from gateway.kernel.generation import GenerationRequest, SamplingParams
from gateway.models.registry import ModelRegistry
from gateway.settings import Settings
from tests.conftest import REPO

MODELS = REPO / "gateway" / "reference" / "models"


async def test_several_engine_models_start_together() -> None:
    settings = Settings(models={
        "small": {"backend": "engine", "path": MODELS / "ref-small", "int8": True},
        "large": {"backend": "engine", "path": MODELS / "ref-large"},
        "large-again": {"backend": "engine", "path": MODELS / "ref-large", "threads": 1},
    })
    registry = ModelRegistry(settings)
    await registry.start()
    try:
        request = GenerationRequest("r", "completion", SamplingParams(temperature=0.0,
                                                                      max_tokens=6),
                                    prompt="rev(123+456)=")
        answers = {name: (await registry.get(name).generate(request)).choices[0].text
                   for name in ("small", "large", "large-again")}
        assert answers["large"] == answers["large-again"] == "975"  # 579 reversed
        assert registry.get("small").describe().quantization.method == "int8-dynamic"
    finally:
        await registry.aclose()
