"""int8 quantization (gateway/backends/engine/int8.py) on small random GPT-2 models: Conv1D
conversion, the dynamic and the weight-only scheme, the output head re-scored in float."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from gateway.backends.engine.int8 import RescoredInt8Head, WeightOnlyInt8Linear, quantize_int8
from gateway.backends.settings import EngineModelSettings

BODY = ["c_attn", "c_proj", "c_fc"]
"""GPT-2's Linear layers (after conversion) besides the head."""


def gpt2(vocab: int = 50) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab,
                                       n_positions=16))
    model.eval()
    return model


IDS = torch.tensor([[1, 2, 3, 4]])


def logits_of(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits[0]


def test_int8_converts_gpt2_conv1d_before_quantizing() -> None:
    model = gpt2()
    reference = logits_of(model)
    quantized, quantization = quantize_int8(model)
    assert quantization.method == "int8-dynamic" and quantization.bits == 8
    assert quantization.details["conv1d_converted"] == 8  # 4 per block
    assert quantization.details["layers_quantized"] == 9  # and lm_head
    assert "output_head" not in quantization.details
    assert torch.allclose(logits_of(quantized), reference, atol=0.05)
    partly, kept = quantize_int8(gpt2(), keep_float=["c_fc"])
    assert kept.details["layers_quantized"] == 7 and kept.details["kept_float"] == ["c_fc"]
    assert isinstance(partly.get_submodule("transformer.h.0.mlp.c_fc"), torch.nn.Linear)


def test_weight_only_rounds_the_weights_and_keeps_activations_float() -> None:
    model = gpt2()
    reference = logits_of(model)
    original = model.transformer.h[0].attn.c_attn.weight.detach().t().clone()  # Conv1D: (in, out)
    quantized, quantization = quantize_int8(model, activations="float")
    assert quantization.method == "int8-weight-only" and quantization.bits == 8
    assert quantization.details["layers_quantized"] == 9
    assert quantization.details["activations"] == "float (weights de-quantized per call)"
    layer = quantized.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(layer, WeightOnlyInt8Linear) and layer.qweight.dtype == torch.int8
    # each weight within half a step of its channel's scale, the largest one exactly +-127
    restored = layer.qweight.float() * layer.scale[:, None]
    assert torch.all((restored - original).abs() <= layer.scale[:, None] / 2 + 1e-7)
    assert torch.all(layer.qweight.abs().amax(dim=1) == 127)
    x = torch.randn(3, layer.in_features)
    assert torch.allclose(layer(x), x @ restored.t() + layer.bias, atol=1e-5)
    logits = logits_of(quantized)
    assert torch.allclose(logits, reference, atol=0.05)
    assert torch.equal(logits, logits_of(quantized))  # the same input, the same bits


def test_the_rescored_head_gives_its_top_k_the_float_logits() -> None:
    model = gpt2(vocab=400)
    reference = logits_of(model)
    embedding = model.transformer.wte.weight
    quantized, quantization = quantize_int8(model, keep_float=BODY, rescore_top_k=8)
    head = quantized.get_output_embeddings()
    assert isinstance(head, RescoredInt8Head) and head.weight is embedding  # tied: no copy
    assert quantization.details["layers_quantized"] == 1
    assert quantization.details["output_head"] == ("lm_head: dynamic int8 logits, the top 8 "
                                                   "recomputed in float")
    logits = logits_of(quantized)
    top = logits.topk(8, dim=-1).indices
    assert torch.allclose(logits.gather(-1, top), reference.gather(-1, top), atol=1e-5)
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
    rest = torch.ones_like(logits, dtype=torch.bool).scatter(-1, top, False)
    assert not torch.allclose(logits[rest], reference[rest], atol=1e-6)  # the rest stay int8
    assert torch.equal(logits, logits_of(quantized))


def test_the_rescored_head_must_be_quantized() -> None:
    from gateway.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="kept in float"):
        quantize_int8(gpt2(), keep_float=["lm_head"], rescore_top_k=8)


def test_int8_options_need_int8() -> None:
    for option in ({"int8_rescore_top_k": 32}, {"int8_activations": "float"},
                   {"int8_keep_float": ["down_proj"]}):
        with pytest.raises(ValidationError, match="int8 = true"):
            EngineModelSettings(path="m", **option)
    settings = EngineModelSettings(path="m", int8=True, int8_activations="float")
    assert settings.int8_method == "int8-weight-only"
    assert EngineModelSettings(path="m").int8_method is None
