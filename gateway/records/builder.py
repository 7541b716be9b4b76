"""A :class:`~gateway.serving.CompletedRequest` → the decode record, as plain dicts.

This runs on the request path (inside the completion listener), so it builds dicts by hand
instead of validating models: a few tens of microseconds for a typical request. The result
validates as :class:`gateway.records.schema.DecodeRecord` (the tests check it does).
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from gateway.records.schema import SCHEMA_VERSION, canonical_json

if TYPE_CHECKING:
    from gateway.backends.base import (
        ChoiceResult,
        GenerationResult,
        SamplingParams,
        TokenLogprob,
    )
    from gateway.modeltuple import ModelTuple
    from gateway.protocol import OpenAIRequest
    from gateway.serving import CompletedRequest

_CLIENT_INPUT_FIELDS = {"messages", "prompt"}


def _logprobs(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    """Per-token logprobs in columns (four times cheaper to build and serialize than an object
    per token); ``-inf`` becomes ``null`` when serialized (JSON has no infinities)."""
    return {
        "token": [lp.token for lp in logprobs],
        "logprob": [lp.logprob for lp in logprobs],
        "token_id": [lp.token_id for lp in logprobs],
        "bytes": [lp.bytes for lp in logprobs],
        "top": [[[t.token_id, t.logprob, t.token, t.bytes] for t in lp.top] for lp in logprobs],
    }


def _choice(choice: ChoiceResult) -> dict[str, Any]:
    return {
        "index": choice.index,
        "text": choice.text,
        "finish_reason": choice.finish_reason,
        "stop_reason": choice.stop_reason,
        "token_ids": None if choice.token_ids is None else list(choice.token_ids),
        "logprobs": None if choice.logprobs is None else _logprobs(choice.logprobs),
        "extra": dict(choice.extra),
    }


def _sampling(params: SamplingParams) -> dict[str, Any]:
    return {
        "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
        "min_p": params.min_p, "max_tokens": params.max_tokens, "min_tokens": params.min_tokens,
        "stop": list(params.stop), "stop_token_ids": list(params.stop_token_ids),
        "seed": params.seed, "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty, "logprobs": params.logprobs,
        "n": params.n, "ignore_eos": params.ignore_eos,
    }


class TupleCache:
    """Model tuples as record dicts, computed once per tuple object (they are immutable)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._entries: dict[int, tuple[ModelTuple, dict[str, Any], str]] = {}

    def get(self, model: ModelTuple) -> tuple[dict[str, Any], str]:
        entry = self._entries.get(id(model))
        if entry is None or entry[0] is not model:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            entry = (model, model.model_dump(mode="json"), model.digest())
            self._entries[id(model)] = entry
        return entry[1], entry[2]


def _call(index: int, result: GenerationResult, tuples: TupleCache) -> dict[str, Any]:
    model, digest = tuples.get(result.model)
    usage = result.usage
    return {
        "index": index,
        "model": model,
        "tuple_digest": digest,
        "runtime": dict(result.runtime),
        "rendered_prompt": result.rendered_prompt,
        "prompt_token_ids": (None if result.prompt_token_ids is None
                             else list(result.prompt_token_ids)),
        "choices": [_choice(c) for c in result.choices],
        "usage": {"prompt_tokens": usage.prompt_tokens,
                  "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens, "extra": dict(usage.extra)},
        "timing": {"started_at": result.timing.started_at,
                   "first_token_s": result.timing.first_token_s,
                   "total_s": result.timing.total_s},
        "extra": dict(result.extra),
    }


def _client_params(request: OpenAIRequest) -> dict[str, Any]:
    """What the client set besides the input (``model_dump(exclude_unset=True)``, a third of
    its cost: the values are JSON already)."""
    params: dict[str, Any] = {}
    for name in request.model_fields_set:
        if name not in _CLIENT_INPUT_FIELDS:
            value = getattr(request, name)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json", exclude_unset=True)
            params[name] = value
    return params


def _seed(done: CompletedRequest) -> dict[str, Any]:
    applied = done.request.sampling.seed
    if applied is not None:
        sent = getattr(done.client_request, "seed", None)
        return {"value": applied, "source": "client" if sent == applied else "gateway"}
    for result in done.results:
        seeds = result.runtime.get("seeds")
        if isinstance(seeds, list) and seeds and isinstance(seeds[0], int):
            return {"value": seeds[0], "source": "engine"}
    return {"value": None, "source": "none"}


def _decision(done: CompletedRequest) -> dict[str, Any] | None:
    decision = done.decision
    if decision is None:
        return None
    return {
        "route": decision.route, "mode": decision.mode, "tier": decision.tier,
        "model": decision.model, "verifier_id": decision.verifier_id,
        "verifier_sha256": decision.verifier_sha256, "feature_digest": decision.feature_digest,
        "score": decision.score, "threshold": decision.threshold,
        "escalated": decision.escalated, "candidates": list(decision.candidates),
    }


def build_record(done: CompletedRequest, tuples: TupleCache, redact: bool = False
                 ) -> dict[str, Any]:
    """The decode record of ``done`` (without its chain link, which the store adds)."""
    ctx, gen = done.ctx, done.request
    now_wall, now_mono = time.time(), time.perf_counter()
    client = _client_params(done.client_request)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "record_id": ctx.request_id,
        "request_id": ctx.request_id,
        "received_at": now_wall - (now_mono - ctx.received),
        "finished_at": done.finished_at,
        "caller": ctx.caller,
        "route": done.route,
        "operation": ctx.operation,
        "stream": done.stream,
        "status": done.status,
        "client_params": client,
        "input": {
            "kind": gen.kind,
            "messages": gen.messages,
            "prompt": list(gen.prompt) if isinstance(gen.prompt, list) else gen.prompt,
            "passthrough": dict(gen.passthrough),
            "return_token_ids": gen.return_token_ids,
        },
        "sampling": _sampling(gen.sampling),
        "seed": _seed(done),
        "decision": _decision(done),
        "calls": [_call(i, r, tuples) for i, r in enumerate(done.results)],
        "redacted": [],
    }
    if redact:
        redact_record(record)
    return record


def _digest_of(value: Any) -> dict[str, Any]:
    return {"redacted": True, "sha256": hashlib.sha256(canonical_json(value)).hexdigest()}


def redact_record(record: dict[str, Any]) -> None:
    """Replace prompt and output content by the sha256 of its canonical JSON, in place."""
    removed: list[str] = []

    def cut(holder: dict[str, Any], key: str, path: str) -> None:
        if holder.get(key) not in (None, "", [], {}):
            holder[key] = _digest_of(holder[key])
            removed.append(path)

    cut(record["input"], "messages", "input.messages")
    cut(record["input"], "prompt", "input.prompt")
    for call in record["calls"]:
        i = call["index"]
        cut(call, "rendered_prompt", f"calls.{i}.rendered_prompt")
        cut(call, "prompt_token_ids", f"calls.{i}.prompt_token_ids")
        for choice in call["choices"]:
            where = f"calls.{i}.choices.{choice['index']}"
            for key in ("text", "token_ids", "logprobs", "extra"):
                cut(choice, key, f"{where}.{key}")
    record["redacted"] = removed
