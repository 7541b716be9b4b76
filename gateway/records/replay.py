"""Replay: decode a record's model calls again and compare the tokens.

For one record: load it, verify its chain up to it, check that each model tuple it names is the
one configured now (weights sha256, adapter, quantization) — refusing otherwise — re-decode
every model call with the recorded parameters and effective seed, and re-run the routing
decision with the recorded verifier and threshold (:func:`rerun_decision`). The verdict is
``identical`` (token ids equal — the text when a backend gave no token ids — and the decision
the same or not re-runnable, which the report says), ``diverged`` (the first divergent position
with both tokens and their logprobs, or a changed decision) or ``refused`` (with the reason: a
call forwarded to an upstream's own ``/v1/responses`` is always refused, its request was not a
chat request replay can decode again).

Replay asks for the sampled token's logprob (``logprobs = 0``) when the original request did not,
to show it at a divergence; engines compute logprobs after choosing the token, so this does not
change what is decoded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.kernel.errors import TiergateError
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenLogprob,
)
from gateway.records.audit import ChainReport, verify_chain
from gateway.records.decision import DecisionReplay, rerun_decision
from gateway.records.schema import (
    DecodeRecord,
    ModelCall,
    RecordChoice,
    RecordLogprobs,
    Redacted,
    parse_record,
)
from gateway.records.sinks import RecordQuery, RecordSink, signer_for

if TYPE_CHECKING:
    from gateway.models.registry import ModelRegistry
    from gateway.records.settings import RecordsDeployment

Verdict = Literal["identical", "diverged", "refused"]
IN_PROCESS_ENGINE = "transformers"
"""``ModelTuple.engine`` of the in-process engine, whose decodes replay bit for bit."""


@dataclass(slots=True)
class TokenAt:
    token_id: int | None
    token: str | None
    logprob: float | None


@dataclass(slots=True)
class ChoiceReplay:
    index: int
    status: Literal["identical", "diverged"]
    compared: Literal["token_ids", "text"]
    recorded_length: int
    replayed_length: int
    position: int | None = None
    """The first position (token, or character when comparing text) that differs."""
    recorded: TokenAt | None = None
    replayed: TokenAt | None = None
    finish_reason: tuple[str | None, str | None] = (None, None)


@dataclass(slots=True)
class CallReplay:
    index: int
    model: str
    tuple_digest: str
    status: Literal["identical", "diverged"]
    choices: list[ChoiceReplay] = field(default_factory=list)


@dataclass(slots=True)
class ReplayReport:
    record_id: str
    status: Verdict
    reason: str | None = None
    chain: dict[str, Any] | None = None
    decision: DecisionReplay | None = None
    calls: list[CallReplay] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReplayRefused(Exception):
    """The record cannot be replayed faithfully here (the reason is the message)."""


def request_for(record: DecodeRecord, call: ModelCall) -> GenerationRequest:
    """The :class:`GenerationRequest` that re-decodes ``call`` (recorded parameters + seed)."""
    for name, value in (("input.messages", record.input.messages),
                        ("input.prompt", record.input.prompt)):
        if isinstance(value, Redacted):
            raise ReplayRefused(f"the record is redacted ({name} was removed): it cannot be "
                                "replayed")
    sampling = SamplingParams(**record.sampling.model_dump())
    if sampling.seed is None:  # the engine drew it: each call has its own
        seeds = call.runtime.get("seeds")
        if isinstance(seeds, list) and seeds and isinstance(seeds[0], int):
            sampling.seed = seeds[0]
        elif not sampling.greedy:
            raise ReplayRefused(f"call {call.index}: a sampled decode without a recorded seed "
                                "cannot be reproduced")
    if sampling.logprobs is None:
        sampling.logprobs = 0
    prompt = record.input.prompt
    return GenerationRequest(
        request_id=f"replay-{record.record_id}-{call.index}",
        kind=record.input.kind,
        sampling=sampling,
        messages=record.input.messages if isinstance(record.input.messages, list) else None,
        prompt=prompt if not isinstance(prompt, Redacted) else None,
        passthrough=dict(record.input.passthrough),
        return_token_ids=True,
    )


def _identity_problems(call: ModelCall, now: dict[str, Any], allow_unpinned: bool
                       ) -> tuple[list[str], list[str]]:
    """``(refusals, warnings)`` comparing the recorded tuple with the one configured now."""
    was, name = call.model, str(call.model.get("name"))
    refusals, warnings = [], []
    if was.get("base_weights_sha256") is None and not allow_unpinned:
        refusals.append(f"model {name}: the record names no weights digest (an unpinned "
                        "upstream), so the weights cannot be shown to be the same; pin "
                        "weights_sha256 or pass --allow-unpinned")
    for key, label in (("base_weights_sha256", "weights sha256"), ("adapter", "adapter"),
                       ("quantization", "quantization")):
        if was.get(key) != now.get(key):
            refusals.append(f"model {name}: {label} was {was.get(key)!r} in the record, "
                            f"is {now.get(key)!r} now")
    for key in ("engine", "engine_version", "upstream_model"):
        if was.get(key) != now.get(key):
            warnings.append(f"model {name}: {key} was {was.get(key)!r}, is {now.get(key)!r} "
                            "now (outputs may differ)")
    return refusals, warnings


def _mode_text(batching: Any) -> str:
    """``invariant (max_batch 8, prefill_chunk 64)`` of a recorded ``runtime.batching``."""
    if not isinstance(batching, dict):
        return repr(batching)
    rest = ", ".join(f"{k} {v}" for k, v in sorted(batching.items()) if k != "mode")
    return f"{batching.get('mode')}" + (f" ({rest})" if rest else "")


def _batching_problems(call: ModelCall, now: dict[str, Any] | None
                       ) -> tuple[list[str], list[str]]:
    """``(refusals, warnings)`` comparing the batching mode the call was decoded under with the
    model's now: the in-process engine's modes give different bits, so a mismatch is refused.
    An engine record from before batching modes existed (a runtime without ``batching``) was
    decoded with ``off``; a record without any runtime (a stream) is replayed, with a warning
    unless the model decodes with ``off``."""
    if now is None or call.model.get("engine") != IN_PROCESS_ENGINE:
        return [], []
    name = str(call.model.get("name"))
    if not call.runtime:
        if now == {"mode": "off"}:
            return [], []
        return [], [f"call {call.index}: the record does not say which batching mode decoded "
                    f"it; model {name} decodes with batching {_mode_text(now)} now"]
    was = call.runtime.get("batching", {"mode": "off"})
    if was != now:
        return [f"model {name}: the call was decoded with batching {_mode_text(was)}, the "
                f"model decodes with batching {_mode_text(now)} now (the bits differ between "
                "modes; configure the recorded one to replay it)"], []
    return [], []


def _recorded_at(ids: list[int], logprobs: RecordLogprobs | None, position: int
                 ) -> TokenAt | None:
    if position >= len(ids):
        return None
    if logprobs is None or position >= len(logprobs.token):
        return TokenAt(ids[position], None, None)
    return TokenAt(ids[position], logprobs.token[position], logprobs.logprob[position])


def _replayed_at(ids: list[int], logprobs: list[TokenLogprob] | None, position: int
                 ) -> TokenAt | None:
    if position >= len(ids):
        return None
    if logprobs is None or position >= len(logprobs):
        return TokenAt(ids[position], None, None)
    item = logprobs[position]
    return TokenAt(ids[position], item.token, item.logprob)


def compare_choice(recorded: RecordChoice, replayed: ChoiceResult) -> ChoiceReplay:
    finish = (recorded.finish_reason, replayed.finish_reason)
    was_ids = recorded.token_ids if isinstance(recorded.token_ids, list) else None
    if was_ids is not None and replayed.token_ids is not None:
        now_ids = replayed.token_ids
        position = next((i for i, (a, b) in enumerate(zip(was_ids, now_ids, strict=False))
                         if a != b), None)
        if position is None and len(was_ids) != len(now_ids):
            position = min(len(was_ids), len(now_ids))
        result = ChoiceReplay(recorded.index, "identical" if position is None else "diverged",
                              "token_ids", len(was_ids), len(now_ids), finish_reason=finish)
        if position is not None:
            was_lp = recorded.logprobs if isinstance(recorded.logprobs, RecordLogprobs) else None
            result.position = position
            result.recorded = _recorded_at(was_ids, was_lp, position)
            result.replayed = _replayed_at(now_ids, replayed.logprobs, position)
        return result
    if isinstance(recorded.text, Redacted):
        raise ReplayRefused("the record's outputs are redacted: nothing to compare with")
    was, now = recorded.text, replayed.text
    position = next((i for i, (a, b) in enumerate(zip(was, now, strict=False)) if a != b), None)
    if position is None and len(was) != len(now):
        position = min(len(was), len(now))
    return ChoiceReplay(recorded.index, "identical" if position is None else "diverged", "text",
                        len(was), len(now), position, finish_reason=finish)


class Replayer:
    """Replays records of one store on the models of one registry (started as needed)."""

    def __init__(self, settings: RecordsDeployment, sink: RecordSink, registry: ModelRegistry,
                 allow_unpinned: bool = False, started: Collection[str] = ()) -> None:
        self.settings = settings
        self.sink = sink
        self.registry = registry
        self.allow_unpinned = allow_unpinned
        self._chains: dict[str, ChainReport] = {}
        self._started: dict[str, str | None] = dict.fromkeys(started)
        """Model name → why it could not start (``None``: started). ``started``: models of
        ``registry`` that are running already."""
        self._starting = asyncio.Lock()

    async def verify(self, chain_id: str, seq: int, whole: bool) -> ChainReport:
        """The chain checked up to ``seq`` (``whole``: to its head, cached for a batch)."""
        if whole and chain_id in self._chains:
            return self._chains[chain_id]
        records = self.settings.records
        anchor = await self.sink.anchor(chain_id)
        report = await verify_chain(
            chain_id, self.sink.scan(chain_id, anchor.seq + 1 if anchor else 1),
            await self.sink.checkpoints(chain_id), signer_for(records),
            checkpoint_every=records.checkpoint_every, anchor=anchor,
            upto=None if whole else seq)
        if whole:
            self._chains[chain_id] = report
        return report

    async def _start(self, names: list[str]) -> None:
        async with self._starting:
            for name in names:
                if name in self._started:
                    continue
                try:
                    await self.registry.start([name])
                    self._started[name] = None
                except TiergateError as exc:
                    self._started[name] = exc.message

    async def replay(self, record_id: str, whole_chain: bool = False) -> ReplayReport:
        stored = await self.sink.get(record_id)
        if stored is None:
            return ReplayReport(record_id, "refused", f"no record {record_id!r} in the store")
        report = ReplayReport(record_id, "refused")
        chain = await self.verify(stored.chain_id, stored.seq, whole_chain)
        report.chain = {"chain_id": stored.chain_id, "seq": stored.seq, "ok": chain.ok,
                        "broken": asdict(chain.broken) if chain.broken else None}
        if chain.broken is not None and chain.broken.seq <= stored.seq:
            report.reason = (f"the record's chain is broken at seq {chain.broken.seq}: "
                             f"{chain.broken.problem}")
            return report
        try:
            record = parse_record(stored.data())
            return await self._replay(record, report)
        except ReplayRefused as exc:
            report.status, report.reason = "refused", str(exc)
            return report

    async def _replay(self, record: DecodeRecord, report: ReplayReport) -> ReplayReport:
        if record.status != 200:
            decided = record.decision.model if record.decision is not None else None
            if decided is not None and all(call.model.get("name") != decided
                                           for call in record.calls):
                raise ReplayRefused(
                    f"the request failed (status {record.status}) after its route chose "
                    f"{decided}, which never answered: the record keeps the calls made before "
                    "(their cost and the decision), not an answer to decode again")
            raise ReplayRefused(f"the answer was cut short (status {record.status}): the record "
                                "keeps what was generated, for its cost, not a whole decode")
        forwarded = [str(call.model.get("name")) for call in record.calls
                     if "forwarded" in call.runtime]
        if forwarded:  # an upstream's own Responses API: no chat request to decode again
            raise ReplayRefused(
                f"model(s) {', '.join(forwarded)}: the call was forwarded to the upstream's own "
                "/v1/responses (responses = \"forward\"), which replay cannot decode again; "
                "the record keeps the body sent and the response received")
        names = [str(call.model.get("name")) for call in record.calls]
        missing = [n for n in dict.fromkeys(names) if n not in self.registry.backends]
        if missing:
            raise ReplayRefused(f"model(s) {', '.join(missing)} named by the record are not "
                                "configured here")
        await self._start(names)
        failed = [f"{n}: {self._started[n]}" for n in dict.fromkeys(names) if self._started[n]]
        if failed:
            raise ReplayRefused("model(s) could not start: " + "; ".join(failed))
        refusals = []
        for call in record.calls:
            backend = self.registry.get(str(call.model.get("name")))
            problems, warnings = _identity_problems(call, backend.describe().model_dump(
                mode="json"), self.allow_unpinned)
            batching, batching_warnings = _batching_problems(call, backend.batching())
            problems += batching
            warnings += batching_warnings
            refusals += problems
            report.warnings += [w for w in warnings if w not in report.warnings]
        if refusals:
            raise ReplayRefused("; ".join(refusals))
        results = []
        for call in record.calls:
            compared, result = await self._call(record, call, report)
            report.calls.append(compared)
            results.append(result)
        if record.decision is not None:
            report.decision = rerun_decision(record, self.settings,
                                             request_for(record, record.calls[0]), results[0])
        diverged = any(c.status == "diverged" for c in report.calls) or (
            report.decision is not None and report.decision.status == "changed")
        report.status = "diverged" if diverged else "identical"
        return report

    async def _call(self, record: DecodeRecord, call: ModelCall, report: ReplayReport
                    ) -> tuple[CallReplay, GenerationResult]:
        name = str(call.model.get("name"))
        request = request_for(record, call)
        try:
            result = await self.registry.get(name).generate(request)
        except TiergateError as exc:
            raise ReplayRefused(f"model {name} failed to decode: {exc.message}") from exc
        engine = call.model.get("engine")
        if engine != IN_PROCESS_ENGINE:
            note = (f"model {name} is served by an upstream ({engine}): replay is as "
                    "deterministic as that upstream is for this request (vLLM: the same version "
                    "and hardware, and batch-invariant kernels; see docs/records.md)")
            if note not in report.warnings:
                report.warnings.append(note)
        for key in ("device", "torch", "transformers", "threads", "dtype"):
            was, now = call.runtime.get(key), result.runtime.get(key)
            if key in call.runtime and was != now:
                report.warnings.append(f"call {call.index}: runtime {key} was {was!r}, is "
                                       f"{now!r} now")
        choices = [compare_choice(c, r)
                   for c, r in zip(call.choices, result.choices, strict=False)]
        same = len(call.choices) == len(result.choices) and all(
            c.status == "identical" for c in choices)
        return CallReplay(call.index, name, call.tuple_digest,
                          "identical" if same else "diverged", choices), result


async def sample_records(sink: RecordSink, since: float | None, sample: int | None,
                         rng: random.Random) -> list[str]:
    ids = [row.record_id async for row in sink.query(
        RecordQuery(since=since, limit=None, newest_first=False))]
    if sample is not None and sample < len(ids):
        chosen = set(rng.sample(ids, sample))
        ids = [i for i in ids if i in chosen]
    return ids


async def replay_many(replayer: Replayer, record_ids: list[str],
                      progress: Callable[[int, int, dict[str, int]], None] | None = None
                      ) -> tuple[list[ReplayReport], dict[str, int]]:
    counts = {"identical": 0, "diverged": 0, "refused": 0}
    reports = []
    for done, record_id in enumerate(record_ids, 1):
        report = await replayer.replay(record_id, whole_chain=True)
        counts[report.status] += 1
        reports.append(report)
        if progress is not None:
            progress(done, len(record_ids), counts)
    return reports, counts
