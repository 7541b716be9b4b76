"""From a :class:`GenerationRequest` to the token ids the engine decodes from.

Chat requests are rendered with a chat template: the settings' ``chat_template`` file if given,
else the tokenizer's own, else one shipped with tiergate for the model's family (under
``gateway/backends/engine/templates/``: GGUF files often lack the template, e.g. Gemma 3's). Fields
the engine cannot honour are refused here, before any decoding, with a 400 that names them.
"""

from __future__ import annotations

import importlib.resources
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.kernel.errors import ConfigError, InvalidRequestError
from gateway.kernel.generation import GenerationRequest, SamplingParams, message_text

SEED_SPACE = 2**64


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """How a model's conversations are rendered, and the tokens that end its turns."""

    template: str | None
    source: str
    """``settings:<file>``, ``tokenizer``, ``shipped:<file>`` or ``none``."""
    end_tokens: tuple[str, ...] = ()
    """Tokens that end an assistant turn besides the tokenizer's EOS (treated as EOS)."""


@dataclass(frozen=True, slots=True)
class ShippedFormat:
    template_file: str
    end_tokens: tuple[str, ...]


SHIPPED_FORMATS: dict[str, ShippedFormat] = {
    # Gemma 3 (text-only and multimodal configs): GGUF conversions carry no template, and the
    # instruction-tuned model ends its turns with <end_of_turn>, not <eos>.
    "gemma3_text": ShippedFormat("gemma3.jinja", ("<end_of_turn>",)),
    "gemma3": ShippedFormat("gemma3.jinja", ("<end_of_turn>",)),
}
"""Chat formats shipped with tiergate, by ``config.model_type``."""


def shipped_template(file_name: str) -> str:
    return (importlib.resources.files("gateway.backends.engine") / "templates" /
    file_name).read_text(
        encoding="utf-8")


def chat_format_for(config: Any, tokenizer: Any, override: Path | None = None) -> ChatFormat:
    """The chat format of a model: ``override`` file > the tokenizer's template > shipped."""
    shipped = SHIPPED_FORMATS.get(str(getattr(config, "model_type", "")))
    end_tokens = shipped.end_tokens if shipped else ()
    if override is not None:
        try:
            text = Path(override).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read chat_template {override}: {exc}") from exc
        return ChatFormat(text, f"settings:{override}", end_tokens)
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return ChatFormat(own, "tokenizer", end_tokens)
    if shipped is not None:
        return ChatFormat(shipped_template(shipped.template_file),
                          f"shipped:{shipped.template_file}", end_tokens)
    return ChatFormat(None, "none", end_tokens)


# -- request validation ------------------------------------------------------------------------

IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
"""Passthrough fields that do not change what a model generates."""

NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "skip_special_tokens": (None, True),
    "include_stop_str_in_output": (None, False),
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "chat_template_kwargs": (None, {}),
    "prompt_logprobs": (None,),
}
"""Passthrough fields accepted only with the value that means what the engine does anyway."""


def check_passthrough(passthrough: dict[str, Any]) -> None:
    """Refuse (400, naming the field) what the in-process engine cannot honour."""
    for name, value in passthrough.items():
        if name in IGNORED_FIELDS:
            continue
        neutral = NEUTRAL_VALUES.get(name)
        if neutral is not None and any(value == v and type(value) is type(v) for v in neutral):
            continue
        detail = f" other than {neutral[1]!r}" if neutral and len(neutral) > 1 else ""
        raise InvalidRequestError(
            f"'{name}'{detail} is not supported by the in-process engine",
            param=name,
            code="unsupported_parameter",
        )


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain-text messages for a template: ``developer`` → ``system``, text parts joined."""
    out = []
    for index, message in enumerate(messages):
        role = message.get("role")
        normalized: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": message_text(message.get("content"), f"messages[{index}].content",
                                    "the in-process engine"),
        }
        for key in ("name", "tool_calls", "tool_call_id"):
            if key in message:
                normalized[key] = message[key]
        out.append(normalized)
    return out


# -- the decode job ----------------------------------------------------------------------------


@dataclass(slots=True)
class DecodeJob:
    """Everything one request's decode needs, validated."""

    request_id: str
    prompt_ids: list[int]
    rendered_prompt: str | None
    sampling: SamplingParams
    max_tokens: int
    seeds: list[int | None] = field(default_factory=list)
    """The effective seed of each choice (``seed + i``); drawn by the engine when not sent."""
    seed_drawn: bool = False
    threads: int | None = None
    """The intra-op threads the decode ran with (set by the decoder)."""


def render_chat(tokenizer: Any, chat: ChatFormat, messages: list[dict[str, Any]]) -> str:
    from jinja2 import TemplateError

    if chat.template is None:
        raise InvalidRequestError("this model has no chat template; use /v1/completions",
                                  param="messages")
    try:
        rendered = tokenizer.apply_chat_template(
            normalize_messages(messages), chat_template=chat.template, tokenize=False,
            add_generation_prompt=True)
    except (TemplateError, TypeError, ValueError, KeyError) as exc:
        raise InvalidRequestError(f"the model's chat template rejected the messages: {exc}",
                                  param="messages") from exc
    return str(rendered)


def _prompt_ids(request: GenerationRequest, tokenizer: Any, chat: ChatFormat,
                vocab_size: int) -> tuple[list[int], str | None]:
    if request.kind == "chat":
        if not request.messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        rendered = render_chat(tokenizer, chat, request.messages)
        # The template writes the special tokens (BOS included) itself.
        return list(tokenizer(rendered, add_special_tokens=False).input_ids), rendered
    prompt = request.prompt
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True).input_ids), prompt
    if isinstance(prompt, list):
        ids = [t for t in prompt if isinstance(t, int) and 0 <= t < vocab_size]
        if len(ids) < len(prompt):
            bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab_size]
            raise InvalidRequestError(
                f"prompt token ids must be in [0, {vocab_size}); got {bad[:5]}", param="prompt")
        return ids, None
    raise InvalidRequestError("a completion needs a prompt", param="prompt")


def _max_tokens(sampling: SamplingParams, prompt_len: int, context: int, default: int) -> int:
    if prompt_len == 0:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    if prompt_len >= context:
        raise InvalidRequestError(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{prompt_len} tokens", param="messages", code="context_length_exceeded")
    room = context - prompt_len
    if sampling.max_tokens is None:
        return min(default, room)
    if sampling.max_tokens > room:
        raise InvalidRequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + sampling.max_tokens} tokens ({prompt_len} in the prompt, "
            f"{sampling.max_tokens} for the completion)", param="max_tokens",
            code="context_length_exceeded")
    return sampling.max_tokens


def build_job(request: GenerationRequest, tokenizer: Any, chat: ChatFormat, *, vocab_size: int,
              context_length: int, default_max_tokens: int) -> DecodeJob:
    """Validate ``request`` and turn it into a :class:`DecodeJob` (400 on anything unusable)."""
    check_passthrough(request.passthrough)
    sampling = request.sampling
    bad_stops = [t for t in sampling.stop_token_ids if not 0 <= t < vocab_size]
    if bad_stops:
        raise InvalidRequestError(f"stop_token_ids must be in [0, {vocab_size}); got {bad_stops}",
                                  param="stop_token_ids")
    prompt_ids, rendered = _prompt_ids(request, tokenizer, chat, vocab_size)
    max_tokens = _max_tokens(sampling, len(prompt_ids), context_length, default_max_tokens)
    if sampling.min_tokens is not None and sampling.min_tokens > max_tokens:
        raise InvalidRequestError(
            f"min_tokens ({sampling.min_tokens}) must not exceed max_tokens ({max_tokens})",
            param="min_tokens")
    base = sampling.seed
    drawn = False
    if base is None and not sampling.greedy:
        base, drawn = secrets.randbits(63), True
    seeds: list[int | None] = [
        None if base is None else (base + i) % SEED_SPACE for i in range(sampling.n)]
    return DecodeJob(request_id=request.request_id, prompt_ids=prompt_ids,
                     rendered_prompt=rendered, sampling=sampling, max_tokens=max_tokens,
                     seeds=seeds, seed_drawn=drawn)
