"""Loading a model for the in-process engine: offline, verified, optionally adapted and quantized.

Order of work in :func:`load_model`, each step refusing early:

1. the weights' digest (:func:`gateway.kernel.digests.weights_sha256`) against the pinned one —
before
   any weight is read by torch, so a wrong file is never loaded;
2. the tokenizer and the model, from a directory (safetensors) or a ``.gguf`` file, with
   ``local_files_only=True`` (nothing is ever fetched from a hub);
3. a LoRA adapter (peft), its directory's digest against the pinned one, merged into the weights;
4. int8 quantization of the Linear layers (:mod:`gateway.backends.engine.int8`: dynamic or
   weight-only, the output head optionally re-scored in float).

Loading runs in a worker thread (it takes seconds); nothing here touches the event loop.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gateway.backends.engine.int8 import quantize_int8
from gateway.backends.engine.prompts import ChatFormat, chat_format_for
from gateway.backends.settings import EngineModelSettings
from gateway.kernel.digests import weights_sha256
from gateway.kernel.errors import ConfigError, ModelIntegrityError
from gateway.kernel.modeltuple import AdapterRef, Quantization

log = logging.getLogger("tiergate.engine.loader")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_CONTEXT = 2048
"""Context length assumed for a model whose config names none."""


@dataclass(slots=True)
class LoadedModel:
    """A model ready to decode, and everything tiergate must know about it."""

    model: Any
    """The ``transformers`` causal LM (``eval()``, no grad, on ``device``)."""
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    weights_sha256: str
    context_length: int
    eos_token_ids: frozenset[int]
    chat_format: ChatFormat
    adapter: AdapterRef | None = None
    quantization: Quantization = field(default_factory=Quantization)
    load_seconds: float = 0.0
    accepts_logits_to_keep: bool = False

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def resolve_device(spec: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {spec!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for, but torch sees no CUDA device")
    return device


def verify_digest(what: str, path: Path, pinned: str | None) -> str:
    """The digest of ``path``'s weight files; :class:`ModelIntegrityError` unless ``pinned``."""
    try:
        actual = weights_sha256(path)
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"{what} {path}: {exc}") from exc
    if pinned is not None and actual != pinned:
        raise ModelIntegrityError(
            f"{what} {path} has weights sha256 {actual}, but the settings pin {pinned}; "
            "refusing to serve weights that are not the pinned ones"
        )
    return actual


def _load_transformers(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a server's log and a CLI's output stay clean
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"{path}: a model path is a directory or a .gguf file")
        source: dict[str, Any] = {"pretrained_model_name_or_path": path.parent,
                                  "gguf_file": path.name}
    else:
        source = {"pretrained_model_name_or_path": path}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(**source, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load a causal LM from {path}: {exc}") from exc
    return tokenizer, model


def _apply_adapter(model: Any, settings: EngineModelSettings) -> tuple[Any, AdapterRef | None]:
    adapter_path = settings.adapter_path
    pinned = settings.adapter
    if adapter_path is None:
        if pinned is not None:
            raise ConfigError(f"adapter {pinned.id} is pinned, but no adapter_path is set")
        return model, None
    if not adapter_path.is_dir():
        raise ConfigError(f"adapter_path {adapter_path} is not a directory")
    digest = verify_digest("adapter", adapter_path, pinned.sha256 if pinned else None)
    from peft import PeftModel

    try:
        adapted = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"cannot apply the adapter {adapter_path}: {exc}") from exc
    # Merged: decoding then runs the plain model (faster; int8 then quantizes the merged weights).
    merged = adapted.merge_and_unload()
    return merged, AdapterRef(id=pinned.id if pinned else adapter_path.name, sha256=digest)


def gguf_quantization(path: Path, dtype: torch.dtype) -> Quantization:
    """What a GGUF file's weights were quantized to (transformers de-quantizes them on load)."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return Quantization(method="gguf", details={"dequantized_to": str(dtype)[6:]})
    name = LlamaFileType(int(field.contents())).name
    kind = name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
    bits = re.search(r"\d+", kind)
    return Quantization(method=f"gguf-{kind}", bits=int(bits.group()) if bits else None,
                        details={"file_type": name, "dequantized_to": str(dtype)[6:]})


def _context_length(config: Any, tokenizer: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return DEFAULT_CONTEXT


def _token_ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, (list, tuple)):
        return {v for v in value if isinstance(v, int)}
    return set()


def _eos_ids(model: Any, tokenizer: Any, chat: ChatFormat) -> frozenset[int]:
    ids = _token_ids(tokenizer.eos_token_id) | _token_ids(model.config.eos_token_id)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        ids |= _token_ids(generation.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids |= {vocab[token] for token in chat.end_tokens if token in vocab}
    return frozenset(ids)


def _pinned_quantization(settings: EngineModelSettings, actual: Quantization,
                         details: bool = True) -> Quantization:
    """The pinned quantization if the loaded model matches it (method, bits and every pinned
    detail), else :class:`ModelIntegrityError`; what was loaded when nothing is pinned."""
    pinned = settings.quantization
    if pinned is None:
        return actual
    differs = [key for key, value in pinned.details.items()
               if details and actual.details.get(key) != value]
    if (pinned.method, pinned.bits) != (actual.method, actual.bits) or differs:
        raise ModelIntegrityError(
            f"the settings pin quantization {pinned.model_dump()}, but the model is served as "
            f"{actual.model_dump()}"
        )
    return pinned


def load_model(settings: EngineModelSettings) -> LoadedModel:
    """Load, verify, adapt and quantize the model ``settings`` describe (blocking; seconds)."""
    started = time.perf_counter()
    path = settings.path
    if path is None:
        raise ConfigError("an engine model needs a path (packaged models are resolved to one)")
    if not path.exists():
        raise ConfigError(f"model path {path} does not exist")
    device = resolve_device(settings.device)
    dtype = DTYPES[settings.dtype]
    if settings.int8 and (device.type != "cpu" or dtype != torch.float32):
        raise ConfigError("int8 runs on the CPU with dtype float32 only")
    digest = verify_digest("model", path, settings.weights_sha256)
    source_quantization = gguf_quantization(path, dtype) if path.is_file() else Quantization()
    if settings.quantization is not None:  # refuse a wrong method before loading anything
        _pinned_quantization(settings, Quantization(method=settings.int8_method, bits=8)
                             if settings.int8_method
                             else source_quantization, details=False)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    tokenizer, model = _load_transformers(path, dtype)
    model, adapter = _apply_adapter(model, settings)
    quantization = source_quantization
    if settings.int8:
        model, int8 = quantize_int8(model, settings.int8_keep_float, settings.int8_activations,
                                    settings.int8_rescore_top_k)
        if quantization.method != "none":
            int8 = int8.model_copy(update={"details": {**int8.details,
                                                       "source": quantization.method}})
        quantization = int8
    quantization = _pinned_quantization(settings, quantization)
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    chat = chat_format_for(model.config, tokenizer, settings.chat_template)
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        weights_sha256=digest,
        context_length=_context_length(model.config, tokenizer),
        eos_token_ids=_eos_ids(model, tokenizer, chat),
        chat_format=chat,
        adapter=adapter,
        quantization=quantization,
        accepts_logits_to_keep="logits_to_keep" in inspect.signature(model.forward).parameters,
    )
    loaded.load_seconds = time.perf_counter() - started
    log.info("loaded %s on %s in %.1fs (weights %s, %s)", path, device, loaded.load_seconds,
             digest[:12], quantization.method)
    return loaded
