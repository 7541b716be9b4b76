"""The default config (deploy/local/tiergate.toml) serves only gated tuples: every model's
committed eval is pinned by sha256, evaluated the tuple its settings describe, and passes every
gate that applies, with no override and refusal as the default. Read from the committed
evidence (the evals are not re-run); the int8 small tier is also loaded, to show that the tuple
it serves is the one its eval validated."""

from __future__ import annotations

import pytest

from gateway.backends.engine.backend import EngineBackend
from gateway.backends.settings import EngineModelSettings
from gateway.governance.evidence import EvalEvidence
from gateway.governance.gates import GateInput, run_gates
from gateway.kernel.modeltuple import ModelTuple
from gateway.models.registry import resolve_packaged
from gateway.settings import load_settings
from tests.conftest import REPO
from tests.gateway.conftest import MODELS_DIR

CONFIG = REPO / "deploy" / "local" / "tiergate.toml"


def test_every_default_tuple_passes_its_gates_without_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERGATE_GOVERNANCE__UNGATED")  # the suite's "warn" (tests/conftest.py)
    settings = load_settings(CONFIG)
    assert settings.governance.ungated == "refuse"
    assert {"smollm2-135m-int8", "ref-small-int8"} <= set(settings.models)
    for name, model in settings.models.items():
        assert isinstance(model, EngineModelSettings)
        assert model.gate_override is None, name
        assert model.eval is not None and model.eval_sha256 is not None, name
        evidence = EvalEvidence.load(model.eval, model.eval_sha256)  # the pin holds
        evaluated = ModelTuple.model_validate(evidence.report.model_tuple)
        assert evaluated.name == name
        assert evaluated.base_weights_sha256 == model.weights_sha256, name
        assert evaluated.quantization.method == (model.int8_method or "none"), name
        results = run_gates(GateInput(evaluated, model, evidence,
                                      default_tolerance=settings.governance.slice_tolerance))
        failed = [r for r in results if not r.passed]
        assert not failed, (name, failed)
        expected = {"evaluated", "quantized"} if model.int8 else {"evaluated"}
        assert {r.gate for r in results} == expected, name


def test_the_int8_small_tier_against_full_precision_per_slice() -> None:
    """No slice of the SmolLM2 int8 tier falls below fp32 on the shipped chat set."""
    model = load_settings(CONFIG).models["smollm2-135m-int8"]
    assert model.eval is not None
    evidence = EvalEvidence.load(model.eval, model.eval_sha256)
    assert evidence.baseline is not None
    assert set(evidence.report.slices) == set(evidence.baseline.slices) == {
        "capitals", "arithmetic", "copy", "yes-no"}
    for name, figure in evidence.report.slices.items():
        assert figure.items == 15 and figure.accuracy >= evidence.baseline.slices[name].accuracy


@pytest.mark.asyncio
async def test_the_int8_small_tier_serves_the_tuple_its_eval_validated(smollm2_dir: object) -> None:
    settings = load_settings(CONFIG).model_copy(update={"models_dir": MODELS_DIR})
    model = resolve_packaged(settings)["smollm2-135m-int8"]
    assert isinstance(model, EngineModelSettings) and model.eval is not None
    backend = EngineBackend("smollm2-135m-int8", model.model_copy(update={"threads": 1}))
    await backend.start()
    try:
        served = backend.describe()
    finally:
        await backend.aclose()
    evidence = EvalEvidence.load(model.eval, model.eval_sha256)
    assert served.digest() == evidence.report.tuple_digest
    assert served.quantization.details["output_head"].startswith("lm_head:")
