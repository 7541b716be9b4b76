"""A :class:`~gateway.listener.CompletedRequest` → the decode record's canonical JSON.

This runs on the request path, so it builds dicts by hand instead of validating models, and in
two parts:

* the **head** — what is known before the model answers (ids, caller, the client's input and
  parameters) — is built by :func:`prepare_head` while the upstream works (serving schedules
  it with ``loop.call_soon`` once the model call is under way), and its large values are
  serialized there already (``orjson.Fragment``);
* the rest — sampling as applied, the effective seed, the decision, every model call — is built
  when the answer is complete, by :func:`encode_record`, which falls back to building the head
  itself when it was not prepared (an engine that answered without ever yielding).

Either way the bytes are the record's canonical JSON; they validate as
:class:`gateway.records.schema.DecodeRecord` (the tests check both paths give the same bytes).

**Drafts.** When every model call's answer came as one upstream JSON body
(:attr:`~gateway.kernel.generation.GenerationResult.raw_body`: HTTP, not streamed, on one
line) and nothing is to be redacted, the request path does not build the calls' outputs (choices,
logprobs, usage) at all: it writes a *draft* — the record with each call's ``wire`` bytes in place
of what was parsed from them, serialized without sorting — and the records delivery process
finishes it (:func:`finish_draft`: the same parser, the same builder, canonical JSON) before it is
chained and stored. The spool holds the draft, which has everything the record has; the store and
everything after it only ever see the finished record.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from gateway.backends.wire import parse_response
from gateway.records.schema import SCHEMA_VERSION, canonical_json

if TYPE_CHECKING:
    from gateway.kernel.generation import (
        ChoiceResult,
        GenerationRequest,
        GenerationResult,
        SamplingParams,
        TokenLogprob,
        Usage,
    )
    from gateway.kernel.modeltuple import ModelTuple
    from gateway.listener import CompletedRequest, RequestContext
    from gateway.models.cost import CallCost
    from gateway.protocol import OpenAIRequest

_CLIENT_INPUT_FIELDS = {"messages", "prompt", "input", "instructions"}
DRAFT = "draft"
"""The key that marks a spool line's body as a draft (see the module docs)."""
HEAD = "records"
"""The key of the record's head in ``RequestContext.prepared`` (the recorder's ``name``)."""


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
        "token_ids": choice.token_ids,
        "logprobs": None if choice.logprobs is None else _logprobs(choice.logprobs),
        "extra": choice.extra,
    }


def _sampling(params: SamplingParams) -> dict[str, Any]:
    return {
        "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
        "min_p": params.min_p, "max_tokens": params.max_tokens, "min_tokens": params.min_tokens,
        "stop": params.stop, "stop_token_ids": params.stop_token_ids,
        "seed": params.seed, "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty, "logprobs": params.logprobs,
        "n": params.n, "ignore_eos": params.ignore_eos,
    }


class TupleCache:
    """Model tuples as canonical JSON, computed once per tuple object (they are immutable)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._entries: dict[int, tuple[ModelTuple, orjson.Fragment, str]] = {}

    def get(self, model: ModelTuple) -> tuple[orjson.Fragment, str]:
        entry = self._entries.get(id(model))
        if entry is None or entry[0] is not model:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            entry = (model, orjson.Fragment(canonical_json(model.model_dump(mode="json"))),
                     model.digest())
            self._entries[id(model)] = entry
        return entry[1], entry[2]


def _call_frame(index: int, result: GenerationResult, tuples: TupleCache,
                cost: CallCost | None) -> dict[str, Any]:
    """A model call's fields besides its output."""
    model, digest = tuples.get(result.model)
    frame = {
        "index": index,
        "model": model,
        "tuple_digest": digest,
        "runtime": result.runtime,
        "rendered_prompt": result.rendered_prompt,
        "timing": {"started_at": result.timing.started_at,
                   "first_token_s": result.timing.first_token_s,
                   "total_s": result.timing.total_s},
    }
    if cost is not None:  # records before costs have no "cost": absent, not null
        frame["cost"] = cost.to_record()
    return frame


def _call_output(choices: list[ChoiceResult], usage: Usage, prompt_token_ids: list[int] | None,
                 extra: dict[str, Any]) -> dict[str, Any]:
    """A model call's output fields."""
    return {
        "prompt_token_ids": prompt_token_ids,
        "choices": [_choice(c) for c in choices],
        "usage": {"prompt_tokens": usage.prompt_tokens,
                  "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens, "extra": usage.extra},
        "extra": extra,
    }


def _call(index: int, result: GenerationResult, tuples: TupleCache, draft: bool,
          cost: CallCost | None) -> dict[str, Any]:
    call = _call_frame(index, result, tuples, cost)
    if draft:
        assert result.raw_body is not None
        call["wire"] = orjson.Fragment(result.raw_body)
    else:
        call.update(_call_output(result.choices, result.usage, result.prompt_token_ids,
                                 result.extra))
    return call


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


def build_head(ctx: RequestContext, client_request: OpenAIRequest, gen: GenerationRequest,
               redact: bool = False) -> dict[str, Any]:
    """The record's fields known before the model call; ``client_params`` and ``input`` already
    serialized (canonical), redacted when ``redact``. The ``redacted`` paths are under
    ``"redacted"`` (a list the rest of the record extends)."""
    now_wall, now_mono = time.time(), time.perf_counter()
    params = _client_params(client_request)
    inputs: dict[str, Any] = {
        "kind": gen.kind,
        "messages": gen.messages,
        "prompt": gen.prompt,
        "passthrough": gen.passthrough,
        "return_token_ids": gen.return_token_ids,
    }
    removed: list[str] = []
    if redact:
        _cut(inputs, "messages", "input.messages", removed)
        _cut(inputs, "prompt", "input.prompt", removed)
        inputs["passthrough"] = _redact_fields(gen.passthrough, "input.passthrough", removed)
        params = _redact_fields(params, "client_params", removed)
    return {
        "schema_version": SCHEMA_VERSION,
        "record_id": ctx.request_id,
        "request_id": ctx.request_id,
        "received_at": now_wall - (now_mono - ctx.received),
        "caller": ctx.caller,
        "operation": ctx.operation,
        "client_params": orjson.Fragment(canonical_json(params)),
        "input": orjson.Fragment(canonical_json(inputs)),
        "redacted": removed,
    }


def prepare_head(ctx: RequestContext, client_request: OpenAIRequest, gen: GenerationRequest,
                 redact: bool = False) -> None:
    """Build the head into ``ctx.prepared`` (scheduled while the model call is under way)."""
    if HEAD not in ctx.prepared:
        ctx.prepared[HEAD] = build_head(ctx, client_request, gen, redact)


def encode_record(done: CompletedRequest, tuples: TupleCache, redact: bool = False,
                  drafts: bool = True) -> bytes:
    """``done``'s record (without its chain link, which the store adds) as a spool line's body:
    its canonical JSON, or a draft of it (``drafts`` and every call's answer has its raw body on
    one line; :func:`finish_draft` makes it the record)."""
    head = done.ctx.prepared.get(HEAD)
    if head is None:
        head = build_head(done.ctx, done.client_request, done.request, redact)
    # A spool line is one line: an answer sent as indented JSON is built here after all.
    draft = drafts and not redact and all(
        r.raw_body is not None and b"\n" not in r.raw_body for r in done.results)
    costs: list[CallCost | None] = (list(done.costs) if len(done.costs) == len(done.results)
                                    else [None] * len(done.results))
    calls = [_call(i, r, tuples, draft, c) for i, (r, c) in enumerate(zip(done.results, costs,
                                                                          strict=True))]
    removed = list(head["redacted"])
    sampling = _sampling(done.request.sampling)
    if redact:
        _redact_calls(calls, removed)
        _cut(sampling, "stop", "sampling.stop", removed)
    record = {
        **head,
        "route": done.route,
        "stream": done.stream,
        "finished_at": done.finished_at,
        "status": done.status,
        "sampling": sampling,
        "seed": _seed(done),
        "decision": _decision(done),
        "calls": calls,
        "redacted": removed,
    }
    if draft:
        record[DRAFT] = 1
        return orjson.dumps(record)  # the delivery process sorts it when it finishes it
    return canonical_json(record)


def finish_draft(record: dict[str, Any]) -> bool:
    """If ``record`` (a spool line's body, parsed) is a draft, make it the record, in place:
    each call's output parsed from its ``wire`` bytes as the backend parsed them. Whether it
    was a draft (then its body is ``canonical_json(record)``)."""
    if record.pop(DRAFT, None) is None:
        return False
    chat = record["input"]["kind"] == "chat"
    for call in record["calls"]:
        choices, usage, prompt_token_ids, extra = parse_response(call.pop("wire"), chat)
        call.update(_call_output(choices, usage, prompt_token_ids, extra))
    return True


def build_record(done: CompletedRequest, tuples: TupleCache, redact: bool = False
                 ) -> dict[str, Any]:
    """``done``'s record as a dict, drafts finished (tests, benchmarks, tools)."""
    record: dict[str, Any] = orjson.loads(encode_record(done, tuples, redact))
    finish_draft(record)
    return record


def _digest_of(value: Any) -> dict[str, Any]:
    return {"redacted": True, "sha256": hashlib.sha256(canonical_json(value)).hexdigest()}


def _cut(holder: dict[str, Any], key: str, path: str, removed: list[str]) -> None:
    if holder.get(key) not in (None, "", [], {}):
        holder[key] = _digest_of(holder[key])
        removed.append(path)


# -- redaction: what stays in clear is listed; everything else a client sent is cut ---------------

_CLEAR_PARAMS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "n", "seed", "stream", "max_tokens",
    "max_completion_tokens", "min_tokens", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "length_penalty", "logprobs", "top_logprobs", "prompt_logprobs",
    "stop_token_ids", "ignore_eos", "return_token_ids", "echo", "best_of", "use_beam_search",
    "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens",
    "add_generation_prompt", "continue_final_message", "add_special_tokens",
    "truncate_prompt_tokens", "priority", "parallel_tool_calls", "store",
})
"""Client fields kept in clear under ``redact``: numbers and switches that carry no text (and
are kept only while their value holds none). Any other field — ``messages``, ``prompt``,
``suffix``, ``stop``, ``user``, ``tools``, ``tool_choice``, ``response_format``, ``metadata``,
``documents`` and every field tiergate does not know — is replaced by its digest."""
_CLEAR_STREAM_OPTIONS = frozenset({"include_usage", "continuous_usage_stats"})


def _textless(value: Any) -> bool:
    """A number, a switch, ``None``, or a list of those: nothing a client could write in."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, list) and all(_textless(v) for v in value)


def _clear(name: str, value: Any) -> bool:
    if name == "model":  # the route asked for (also the record's ``route``): a configured name
        return isinstance(value, str)
    if name == "stream_options":
        return isinstance(value, dict) and set(value) <= _CLEAR_STREAM_OPTIONS and all(
            isinstance(v, bool) for v in value.values())
    return name in _CLEAR_PARAMS and _textless(value)


def _redact_fields(fields: dict[str, Any], path: str, removed: list[str]) -> dict[str, Any]:
    """``fields`` (a client's) with every value not kept in clear replaced by its digest."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if _clear(name, value) or value is None:
            out[name] = value
        else:
            out[name] = _digest_of(value)
            removed.append(f"{path}.{name}")
    return out


def _numbers_only(value: Any) -> bool:
    """A value an upstream sent that holds no text (dict keys are the upstream's schema)."""
    if isinstance(value, dict):
        return all(_numbers_only(v) for v in value.values())
    return _textless(value) or (isinstance(value, list)
                                and all(_numbers_only(v) for v in value))


def _redact_upstream(fields: dict[str, Any], path: str, removed: list[str]) -> dict[str, Any]:
    """An upstream's extra fields with the values that hold text cut (a copy: the answer's own
    dict may not be sent yet)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if _numbers_only(value):
            out[name] = value
        else:
            out[name] = _digest_of(value)
            removed.append(f"{path}.{name}")
    return out


def _redact_calls(calls: list[dict[str, Any]], removed: list[str]) -> None:
    """Replace prompt and output content by the sha256 of its canonical JSON, in place."""
    for call in calls:
        i = call["index"]
        _cut(call, "rendered_prompt", f"calls.{i}.rendered_prompt", removed)
        _cut(call, "prompt_token_ids", f"calls.{i}.prompt_token_ids", removed)
        for choice in call["choices"]:
            where = f"calls.{i}.choices.{choice['index']}"
            for key in ("text", "token_ids", "logprobs", "extra"):
                _cut(choice, key, f"{where}.{key}", removed)
            if isinstance(choice.get("stop_reason"), str):  # the stop string that matched
                _cut(choice, "stop_reason", f"{where}.stop_reason", removed)
        call["extra"] = _redact_upstream(call["extra"], f"calls.{i}.extra", removed)
        usage = call["usage"] = dict(call["usage"])
        usage["extra"] = _redact_upstream(usage["extra"], f"calls.{i}.usage.extra", removed)
