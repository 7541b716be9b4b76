"""int8 quantization of a loaded model's Linear layers, in one of two schemes.

- ``dynamic`` (torch dynamic quantization): int8 weights, one scale per output channel, and
  activations quantized to 8 bits per call (per tensor; 7 bits on x86, fbgemm's reduced range).
  The fastest on a CPU, and the least exact: a few outlier input channels set the activation
  scale, and every other channel loses its low bits.
- ``float`` (weight-only): the same int8 weights, de-quantized per call and multiplied with the
  float activations. Only the weights are rounded.

Either way the output head can be computed in two passes (:class:`RescoredInt8Head`): dynamic
int8 logits over the whole vocabulary, then the top ``k`` of them recomputed in float. GPT-2's
``Conv1D`` blocks are converted to ``nn.Linear`` first (or only its head would be quantized).

What was done is described in the :class:`~gateway.kernel.modeltuple.Quantization` returned,
which goes into the tuple (and so into its digest): a scheme change is a new tuple.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gateway.backends.settings import INT8_METHODS
from gateway.kernel.errors import ConfigError
from gateway.kernel.modeltuple import Quantization

Activations = Literal["dynamic", "float"]


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace transformers' ``Conv1D`` (GPT-2's transposed Linear) by ``nn.Linear``; the count."""
    from transformers.pytorch_utils import Conv1D

    converted = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.nx, child.nf, bias=True, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
                converted += 1
    return converted


def _dynamic(linear: nn.Linear) -> nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    linear.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized: nn.Module = DynamicQuantizedLinear.from_float(linear)
    return quantized


class WeightOnlyInt8Linear(nn.Module):
    """A Linear layer with int8 weights (symmetric, one float scale per output channel) and
    float activations: ``y = (x @ q.T) * scale + bias``, the int8 weights converted to float
    per call. Deterministic: the same input gives the same output, bit for bit."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(weight / scale[:, None])
                             .clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.bias = (None if linear.bias is None
                     else nn.Parameter(linear.bias.detach().clone(), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias


class RescoredInt8Head(nn.Module):
    """An output head in two passes: dynamic int8 logits over the whole vocabulary, then the
    ``top_k`` highest of them recomputed exactly from the float weight.

    The vocabulary projection is the largest matrix of a small model (SmolLM2-135M: 28 M of its
    135 M parameters) and in float most of a token's time on a CPU. Quantized, its logits are
    close but not exact, and a greedy decode follows the top logit: the first pass finds the
    candidates at int8 cost, the second gives them (the greedy choice, the likely tokens'
    logprobs) their full-precision logits. Tokens outside the top ``top_k`` keep their int8
    logits. The float weight is the input embedding's when the head is tied to it (no extra
    memory). Deterministic: the same input gives the same logits, bit for bit.
    """

    def __init__(self, head: nn.Linear, top_k: int) -> None:
        super().__init__()
        if head.bias is not None:
            raise ConfigError("int8_rescore_top_k: the output head has a bias")
        self.weight: nn.Parameter = head.weight
        """The float weight (shared with the input embedding when tied)."""
        self.first_pass: nn.Module = _dynamic(head)
        self.top_k: int = min(top_k, head.out_features)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.first_pass(hidden)
        top = logits.topk(self.top_k, dim=-1).indices
        exact = torch.einsum("...d,...kd->...k", hidden, self.weight[top])
        return logits.scatter(-1, top, exact)


def _named(name: str, names: Sequence[str]) -> bool:
    return any(name == k or name.endswith("." + k) for k in names)


def _head_name(model: Any) -> tuple[str, nn.Linear]:
    """The output head of a transformers model, and its module name."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    name = next((n for n, m in model.named_modules() if m is head and n), "")
    if not isinstance(head, nn.Linear) or not name:
        raise ConfigError("int8_rescore_top_k: the model has no Linear output head")
    return name, head


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def quantize_int8(model: nn.Module, keep_float: Sequence[str] = (),
                  activations: Activations = "dynamic",
                  rescore_top_k: int = 0) -> tuple[nn.Module, Quantization]:
    """Quantize ``model``'s Linear layers to int8 in place (see the module), except those whose
    name ends with one of ``keep_float``; with ``rescore_top_k``, the output head becomes a
    :class:`RescoredInt8Head`. Returns the model and its :class:`Quantization`."""
    converted = conv1d_to_linear(model)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = ""
    if rescore_top_k:
        head, linear = _head_name(model)
        if _named(head, keep_float):
            raise ConfigError(f"int8_rescore_top_k: the output head {head} is kept in float")
        _replace(model, head, RescoredInt8Head(linear, rescore_top_k))
    chosen = [name for name in linears if name != head and not _named(name, keep_float)]
    for name in chosen:
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear)
        _replace(model, name, _dynamic(layer) if activations == "dynamic"
                 else WeightOnlyInt8Linear(layer))
    count = len(chosen) + (1 if head else 0)
    if count == 0:
        raise ConfigError("int8 quantization found no Linear layer to quantize")
    details: dict[str, Any] = {
        "layers_quantized": count,
        "linear_layers": len(linears),
        "kept_float": sorted(keep_float),
        "conv1d_converted": converted,
        "weights": "qint8 per output channel",
        "activations": "dynamic, per call",
        "engine": torch.backends.quantized.engine,
    }
    if activations == "float":
        details |= {"weights": "int8 per output channel, symmetric (max |w| -> 127, rounded)",
                    "activations": "float (weights de-quantized per call)",
                    "calibration": "none (scales from the weights alone)"}
    if head:
        details["output_head"] = (f"{head}: dynamic int8 logits, the top {rescore_top_k} "
                                  "recomputed in float")
    return model, Quantization(method=INT8_METHODS[activations], bits=8, details=details)
