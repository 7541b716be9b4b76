"""A Llama-architecture forward pass whose results for one sequence never depend on the batch.

The batched engine (:mod:`gateway.backends.engine.batcher`) runs the model through this module
instead of through ``transformers``' forward: the weights are the loaded model's own modules
(norms, projections, the rotary table), but the order of work is ours, chosen so that every
operation's arithmetic for one sequence is a function of that sequence alone:

- **decode steps run at one fixed shape**: ``max_batch`` rows, always, whether one sequence
  decodes or eight; unused rows are padding (token 0, attention output zero). A float GEMM's
  kernel choice and its reduction order depend on the shapes (and thread count), never on the
  values of other rows, so row ``i`` of ``[max_batch, d] @ W`` is the same bits whichever rows
  sit beside it and whichever slot it occupies (checked by the tests: every slot, every batch);
- **attention is per sequence**: each sequence has its own KV cache; in a decode step its
  attention is two matrix products and a softmax over its own keys (``[kv_heads, group, d]``
  queries against its ``position + 1`` keys), shaped by its own length only. (Plain products,
  not ``scaled_dot_product_attention``: torch's CPU flash kernel cost ~0.25 ms a call at one
  query, most of an 8-row step; the products cost ~0.02 ms.) A prefill chunk's attention is one
  ``scaled_dot_product_attention`` call, shaped by the prompt alone;
- **norms, activations and rotary embeddings** are row-wise or element-wise: the same row gives
  the same result in a fixed-shape tensor; the rotary ``cos``/``sin`` table is computed once at
  start for every position, so a position's values never depend on what was computed with it;
- **prefill** of a prompt runs alone, in chunks of ``prefill_chunk`` tokens counted from the
  prompt's start, so its shapes depend on the prompt alone;
- **int8** (``int8 = true``): the dynamically quantized layers are replaced by an exact integer
  path: each row's activations are quantized symmetrically with the row's own scale
  (``max |x| / 127``: a max, exact in any order), multiplied with the int8 weights summing in
  int32 (oneDNN's int8 GEMM, weights packed once, or ``torch._int_mm``: integer sums are exact,
  so their order cannot matter) and scaled back element-wise. (``transformers``/torch dynamic
  quantization scales a whole batch's activations with one scale, which would make a row depend
  on the others.) Since nothing in it is rounded in an order, this path is the one part of a
  decode step that runs on the **sequences present only** (``rows`` of the ``max_batch``): a
  lone sequence's integer products cost one row, not eight, and give the same bits (the
  int32 sums are exact; turning them into floats and scaling them is element-wise). Weight-only
  int8 layers (``int8_activations = "float"``) go the same exact way: each row's float
  activations written as three int8 digits of its own scale (to about 22 bits), the digit rows
  through the same integer product, put back together element-wise (:class:`WeightOnlyLinear`);
  the re-scored head (``int8_rescore_top_k``) takes its first pass through the per-row int8
  path, each row's top ``k`` (a per-row selection) and their float logits as per-row sums.

The intra-op thread count is the engine thread's, fixed at start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gateway.backends.engine.int8 import RescoredInt8Head, WeightOnlyInt8Linear
from gateway.kernel.errors import ConfigError

Op = Callable[[torch.Tensor], torch.Tensor]


class Linear(Protocol):
    """One or more Linear layers as one op: ``x`` is ``[max_batch, d]`` in a decode step (its
    first ``rows`` rows the sequences, the rest padding) or a prompt chunk (``rows`` all of it).
    The output has ``x``'s rows; a padding row's values are unspecified."""

    def __call__(self, x: torch.Tensor, rows: int, /) -> torch.Tensor: ...

SUPPORTED = ("llama",)
"""``model_type``\\ s whose forward this module implements."""

FORWARD_VERSION = 2
"""The order of arithmetic of :class:`InvariantLlama`, recorded with the batching mode (a
change to it changes the bits: a new version). 1 (recorded without a version): decode
attention through ``scaled_dot_product_attention``; 2: through plain matrix products. A model
with weight-only int8 layers records :data:`WEIGHT_ONLY_FORWARD_VERSION` instead."""

WEIGHT_ONLY_FORWARD_VERSION = 3
"""The version of a forward with weight-only int8 layers (:func:`forward_version`): 2 computed
them as a float product of the int8 values held as floats, 3 as exact integer products of
three int8 digits per activation (:class:`WeightOnlyLinear`). The fp32 and dynamic int8
arithmetic is 2's, so their records stay replayable."""


def forward_version(weight_only_int8: bool) -> int:
    """The forward version a model's decodes record (``weight_only_int8``: its Linear layers
    are weight-only int8, ``int8_activations = "float"``)."""
    return WEIGHT_ONLY_FORWARD_VERSION if weight_only_int8 else FORWARD_VERSION


class FloatLinear:
    """A float matrix product ``x @ weight.T (+ bias)``, its weight packed once.

    On a CPU with oneDNN the weight is reordered for ``rows``-row inputs and multiplied with
    oneDNN (about as fast at 8 rows as MKL is at 1, where MKL at 8 rows costs twice its 1-row
    time); elsewhere ``F.linear``. Either way a call's arithmetic depends on its shapes only.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> None:
        self.bias = bias
        self.packed: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        else:
            self.weight = weight

    @classmethod
    def of(cls, modules: list[nn.Linear], rows: int) -> FloatLinear:
        """Float Linear layers (one, or several fused along the output)."""
        weight = torch.cat([m.weight.detach() for m in modules]) if len(modules) > 1 else (
            modules[0].weight.detach())
        biases = [m.bias for m in modules]
        bias = None if all(b is None for b in biases) else torch.cat([
            b.detach() if b is not None else torch.zeros(m.out_features, dtype=m.weight.dtype,
                                                        device=m.weight.device)
            for b, m in zip(biases, modules, strict=True)])
        return cls(weight, bias, rows)

    def __call__(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """All of ``x``'s rows, whatever ``rows`` says: a float product is invariant only at
        one shape."""
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none",
                                                               [], "")
        return out


class Int8Product:
    """Rows of int8 values (held in a float tensor) times int8 weights ``[out, in]``, summed
    exactly in int32, each output channel scaled: ``float(x @ q.T) * scales``, element-wise
    after the exact sums, so a row's result is the same bits at any row count. The integer GEMM
    is oneDNN's, with the weights packed once for ``rows``-row inputs, where torch has it (x86),
    else ``torch._int_mm``."""

    use_onednn = True
    """Whether to try oneDNN first (tests turn it off to check the other path)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, rows: int) -> None:
        self.scales = scales
        self.packed: torch.Tensor | None = None
        self.weight_t: torch.Tensor | None = None
        try:
            if not self.use_onednn:
                raise AttributeError("oneDNN int8 not wanted")
            self.packed = torch.ops.onednn.qlinear_prepack(weight, [rows, weight.shape[1]])
        except (AttributeError, RuntimeError):  # no oneDNN int8 in this torch
            self.weight_t = weight.t().contiguous()
        self.zero_points = torch.zeros(weight.shape[0], dtype=torch.int64)

    def __call__(self, quantized: torch.Tensor) -> torch.Tensor:
        """``quantized``: integers in [-127, 127] (consumed: changed in place)."""
        if self.packed is not None:  # uint8 with zero point 128 holds the int8 values exactly
            out: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
                quantized.add_(128).to(torch.uint8), 1.0, 128, self.packed, self.scales,
                self.zero_points, None, 1.0, 0, torch.float32, "none", [], "")
            return out
        assert self.weight_t is not None
        exact = torch._int_mm(quantized.to(torch.int8), self.weight_t)  # int32: no rounding
        return exact.to(torch.float32) * self.scales


def _row_scale(x: torch.Tensor) -> torch.Tensor:
    """Each row's symmetric int8 scale, ``max |x| / 127`` (a maximum: exact in any order)."""
    largest: torch.Tensor = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True)
    return largest.clamp_min_(1e-12).div_(127.0)


class _ExactInt8:
    """An int8 layer computed exactly (:class:`Int8Product`) on the rows present only: every
    step of :meth:`compute` is exact or element-wise, so a row's bits do not depend on how many
    rows are computed; zero rows stand in for the padding below them."""

    product: Int8Product
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        padding = x.shape[0] - rows
        out = self.compute(x[:rows] if padding else x)
        if self.bias is not None:
            out = out + self.bias
        return F.pad(out, (0, 0, 0, padding)) if padding else out

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for the rows of ``x``, bias aside."""
        raise NotImplementedError


class WeightOnlyLinear(_ExactInt8):
    """Weight-only int8 Linear layers (:class:`~gateway.backends.engine.int8.
    WeightOnlyInt8Linear`: int8 weights, float activations; one, or several fused along the
    output) as exact integer products: each row of ``x`` is written as three int8 digits of
    its own scale, ``x = scale * (d1 + d2 / 128 + d3 / 128**2)`` to within ``scale / 2**15``
    (each subtraction exact: the digits are rounded from a float within half a unit of it,
    the scalings are powers of two); the three digit rows go through one :class:`Int8Product`
    (the int8 weights, read once per step at one byte a weight), and the row is put back
    together element-wise, ``scale * ((p3 / 128 + p2) / 128 + p1)``. Every step is exact or
    element-wise, so it runs on the rows present only, and a row's bits never depend on the
    others. Its results differ from ``off``'s float product by the digits' remainder (below
    ``2**-22`` of the row's largest activation) and float rounding: the same weights, the
    activations to about 22 bits."""

    def __init__(self, modules: list[WeightOnlyInt8Linear], rows: int) -> None:
        self.product = Int8Product(torch.cat([m.qweight for m in modules]),
                                   torch.cat([m.scale for m in modules]), 3 * rows)
        self.bias = None if all(m.bias is None for m in modules) else torch.cat([
            m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
            for m in modules])

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        scale = _row_scale(x)
        units = x / scale
        first = torch.round(units).clamp_(-127, 127)
        rest = (units - first).mul_(128)  # |rest| <= 64
        second = torch.round(rest)
        third = torch.round(rest.sub_(second).mul_(128))
        high, middle, low = self.product(torch.cat((first, second, third))).chunk(3)
        # (p3 / 128 + p2) / 128 + p1: each scaling by 1/128 exact, so adding it in one
        # operation (alpha) rounds once, as the separate product and sum would
        return torch.add(high, torch.add(middle, low, alpha=1 / 128), alpha=1 / 128).mul_(scale)


class Int8Linear(_ExactInt8):
    """Dynamically quantized Linear layers (one, or several fused along the output), computed
    row-invariantly (see the module docs): each row quantized with its own scale, integer
    products summed in int32 (:class:`Int8Product`), scaled back element-wise."""

    def __init__(self, modules: list[Any], rows: int) -> None:
        weights, scales, biases = [], [], []
        for module in modules:
            weight = module.weight()
            if weight.qscheme() not in (torch.per_channel_affine,
                                        torch.per_channel_symmetric) or (
                    weight.q_per_channel_axis() != 0
                    or bool(weight.q_per_channel_zero_points().ne(0).any())):
                raise ConfigError("int8 with batching = 'invariant' needs symmetric per-output-"
                                  "channel int8 weights")
            weights.append(weight.int_repr())
            scales.append(weight.q_per_channel_scales().to(torch.float32))
            bias = module.bias()
            biases.append(torch.zeros(weight.shape[0]) if bias is None
                          else bias.detach().to(torch.float32))
        self.product = Int8Product(torch.cat(weights), torch.cat(scales), rows)
        self.bias = (
            None if all(module.bias() is None for module in modules) else torch.cat(biases))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        scale = _row_scale(x)
        return self.product(torch.round(x / scale).clamp_(-127, 127)) * scale


class _Concat:
    """Layers of different kinds side by side (an int8 layer beside one kept float)."""

    def __init__(self, ops: list[Linear]) -> None:
        self.ops = ops

    def __call__(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.cat([op(x, rows) for op in self.ops], dim=-1)


class RescoredHead:
    """:class:`~gateway.backends.engine.int8.RescoredInt8Head` computed row by row: the first
    pass's int8 logits through :class:`Int8Linear` (each row quantized with its own scale, not
    one scale for the batch), each row's ``top_k`` highest, and their float logits recomputed
    as element-wise products summed over the hidden size (a reduction of one row's length)."""

    def __init__(self, head: RescoredInt8Head, rows: int) -> None:
        self.first_pass = Int8Linear([head.first_pass], rows)
        self.weight = head.weight  # the parameter itself: :meth:`InvariantLlama.release`
        self.top_k = head.top_k    # re-homes its data

    def __call__(self, hidden: torch.Tensor, rows: int) -> torch.Tensor:
        logits = self.first_pass(hidden, rows)
        top = logits.topk(self.top_k, dim=-1).indices
        exact = (hidden[:, None, :] * self.weight[top]).sum(dim=-1)
        return logits.scatter(-1, top, exact)


def _linear(modules: list[Any], rows: int) -> Linear:
    """One op computing ``modules`` (Linear layers reading the same input), outputs concatenated
    in order."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    kinds: tuple[tuple[type, Callable[[list[Any], int], Linear]], ...] = (
        (nn.Linear, FloatLinear.of), (DynamicQuantizedLinear, Int8Linear),
        (WeightOnlyInt8Linear, WeightOnlyLinear))
    for kind, op in kinds:
        if all(isinstance(m, kind) for m in modules):
            return op(modules, rows)
    if len(modules) == 1 and isinstance(modules[0], RescoredInt8Head):
        return RescoredHead(modules[0], rows)
    known = (nn.Linear, DynamicQuantizedLinear, WeightOnlyInt8Linear)
    strange = [type(m).__name__ for m in modules if not isinstance(m, known)]
    if strange:
        raise ConfigError(f"batching = 'invariant' cannot run a {strange[0]} layer")
    return _Concat([_linear([m], rows) for m in modules])


@dataclass(slots=True)
class _Layer:
    input_norm: Op
    qkv: Linear
    o: Linear
    post_norm: Op
    gate_up: Linear
    down: Linear
    act: Op


class SequenceCache:
    """One sequence's keys and values: ``[layers, kv_heads, capacity, head_dim]`` each."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = keys
        self.values = values

    def copy(self) -> SequenceCache:
        return SequenceCache(self.keys.clone(), self.values.clone())

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def grow(self, capacity: int) -> None:
        """Room for ``capacity`` positions (the kept ones copied over)."""
        if capacity <= self.capacity:
            return
        shape = (*self.keys.shape[:2], capacity, self.keys.shape[3])
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            new[:, :, :old.shape[2]] = old
            setattr(self, name, new)


@dataclass(slots=True)
class Row:
    """One sequence's place in a decode step: its cache, the token fed and its position."""

    cache: SequenceCache
    token: int
    position: int


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class InvariantLlama:
    """The forward pass of a loaded Llama-architecture model, batch-invariant by construction."""

    def __init__(self, model: Any, max_batch: int, context_length: int) -> None:
        config = model.config
        if config.model_type not in SUPPORTED:
            raise ConfigError(f"batching = 'invariant' supports model types {list(SUPPORTED)}, "
                              f"not {config.model_type!r}; use batching = 'off'")
        inner = model.model
        self.max_batch = max_batch
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.logits_size = config.vocab_size
        self.embed = inner.embed_tokens.weight
        self.device = self.embed.device
        rows = max_batch
        self.layers = [_Layer(
            layer.input_layernorm,
            _linear([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
                    rows),
            _linear([layer.self_attn.o_proj], rows), layer.post_attention_layernorm,
            _linear([layer.mlp.gate_proj, layer.mlp.up_proj], rows),
            _linear([layer.mlp.down_proj], rows), layer.mlp.act_fn) for layer in inner.layers]
        self.split = [self.heads * self.head_dim, self.kv_heads * self.head_dim,
                      self.kv_heads * self.head_dim]
        self.intermediate = config.intermediate_size
        self.norm: Op = inner.norm
        self.lm_head = _linear([model.lm_head], rows)
        self.dtype = self.embed.dtype
        with torch.inference_mode():
            positions = torch.arange(context_length, device=self.device)[None]
            cos, sin = inner.rotary_emb(self.embed[:1], positions)
        self.cos, self.sin = cos[0], sin[0]
        self.context_length = context_length

    def release(self, model: nn.Module) -> int:
        """Drop the weights of ``model``'s float and weight-only int8 Linear layers, which this
        forward holds packed copies of (set to ``None``: ``model``'s own forward fails after
        this, it cannot compute with them). The embedding (which a tied head shares) and
        dynamic int8 layers are kept, copied out of the loaded file's mapping. The bytes
        dropped; 0 where the float products are not packed (without oneDNN they may use the
        layers' own tensors)."""
        if not (self.device.type == "cpu" and torch.backends.mkldnn.is_available()):
            return 0
        freed = 0
        for module in model.modules():
            name = ("weight" if isinstance(module, nn.Linear)
                    else "qweight" if isinstance(module, WeightOnlyInt8Linear) else None)
            tensor = getattr(module, name) if name else None
            if name is None or tensor is None or tensor is self.embed:
                continue
            freed += tensor.numel() * tensor.element_size()
            setattr(module, name, None)
        # What is kept moves to memory of its own: loaded weights are views of the weights
        # file's mapping, which any one of them (the embedding) would keep resident whole.
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()
        for module in model.modules():
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[key] = buffer.clone()
        return freed

    def new_cache(self, capacity: int) -> SequenceCache:
        shape = (len(self.layers), self.kv_heads, capacity, self.head_dim)
        return SequenceCache(torch.zeros(shape, dtype=self.dtype, device=self.device),
                             torch.zeros(shape, dtype=self.dtype, device=self.device))

    def _projections(self, layer: _Layer, x: torch.Tensor, used: int, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = x.shape[0]
        q, k, v = layer.qkv(layer.input_norm(x), used).split(self.split, dim=-1)
        q = _rotate(q.reshape(rows, self.heads, self.head_dim), cos, sin)
        k = _rotate(k.reshape(rows, self.kv_heads, self.head_dim), cos, sin)
        return q, k, v.reshape(rows, self.kv_heads, self.head_dim)

    def _finish(self, layer: _Layer, x: torch.Tensor, used: int,
                attention: torch.Tensor) -> torch.Tensor:
        """The rest of a layer; ``used``: how many of ``x``'s rows are sequences."""
        x = x + layer.o(attention, used)
        gate, up = layer.gate_up(layer.post_norm(x), used).split(self.intermediate, dim=-1)
        return x + layer.down(layer.act(gate) * up, used)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions][:, None], self.sin[positions][:, None]

    def prefill(self, cache: SequenceCache, token_ids: list[int], start: int) -> None:
        """Write the keys and values of ``token_ids`` (positions ``start``...) into ``cache``."""
        count = len(token_ids)
        end = start + count
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, device=self.device)
        x = self.embed[ids]
        keys = torch.arange(end, device=self.device)
        mask = (keys[None, :] <= positions[:, None])[None]  # [1, count, end]: causal
        cos, sin = self._rotary(positions)
        for index, layer in enumerate(self.layers):
            q, k, v = self._projections(layer, x, count, cos, sin)
            cache.keys[index, :, start:end] = k.transpose(0, 1)
            cache.values[index, :, start:end] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], cache.keys[index, :, :end][None],
                cache.values[index, :, :end][None], attn_mask=mask, enable_gqa=True)
            x = self._finish(layer, x, count, out[0].transpose(0, 1).reshape(count, -1))

    def decode(self, rows: list[Row]) -> torch.Tensor:
        """One step for up to ``max_batch`` sequences: the logits ``[max_batch, vocab]`` (row
        ``i`` is ``rows[i]``'s; the rest is padding). Always the same shapes, except the exact
        int8 products, which skip the padding rows."""
        if not 0 < len(rows) <= self.max_batch:
            raise ValueError(f"a decode step takes 1 to {self.max_batch} rows, not {len(rows)}")
        used = len(rows)
        padding = self.max_batch - used
        tokens = [row.token for row in rows] + [0] * padding
        positions = torch.tensor([row.position for row in rows] + [0] * padding,
                                 dtype=torch.long, device=self.device)
        x = self.embed[torch.tensor(tokens, dtype=torch.long, device=self.device)]
        attention = torch.zeros(self.max_batch, self.kv_heads, self.heads // self.kv_heads,
                                self.head_dim, dtype=self.dtype, device=self.device)
        cos, sin = self._rotary(positions)
        grouped = (self.max_batch, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        for index, layer in enumerate(self.layers):
            q, k, v = self._projections(layer, x, used, cos, sin)
            q = (q * self.scale).view(grouped)
            for slot, row in enumerate(rows):
                p = row.position
                keys, values = row.cache.keys[index], row.cache.values[index]
                keys[:, p] = k[slot]
                values[:, p] = v[slot]
                # One query per head, grouped by the key-value head it reads: [kv, group, d]
                # against its own p + 1 keys; reductions over d and over p + 1 only.
                scores = torch.matmul(q[slot], keys[:, :p + 1].transpose(1, 2))
                torch.matmul(scores.softmax(dim=-1), values[:, :p + 1], out=attention[slot])
            x = self._finish(layer, x, used, attention.view(self.max_batch, -1))
        return self.lm_head(self.norm(x), used)
