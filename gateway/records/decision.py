"""Re-running a record's routing decision with the recorded verifier and threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.kernel.generation import (
    ChoiceResult,
    GenerationRequest,
    GenerationResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.records.schema import DecodeRecord, ModelCall, RecordLogprobs, Redacted

if TYPE_CHECKING:
    from gateway.records.settings import RecordsDeployment


@dataclass(slots=True)
class DecisionReplay:
    status: Literal["identical", "changed", "not-run"]
    reason: str
    recorded: dict[str, Any] | None = None
    replayed: dict[str, Any] | None = None


def _recorded_answer(call: ModelCall) -> GenerationResult | None:
    """A call's first choice as the verifier saw it, when the record kept its logprobs."""
    if not call.choices:
        return None
    choice = call.choices[0]
    lps = choice.logprobs
    if not isinstance(lps, RecordLogprobs) or isinstance(choice.text, Redacted):
        return None

    def value(logprob: float | None) -> float:
        return float("-inf") if logprob is None else logprob

    tokens = [TokenLogprob(token, value(logprob), token_id, raw,
                           [TopLogprob(t[2], value(t[1]), t[0], t[3]) for t in top])
              for token, logprob, token_id, raw, top in zip(
                  lps.token, lps.logprob, lps.token_id, lps.bytes, lps.top, strict=True)]
    return GenerationResult(model=ModelTuple.model_validate(call.model), usage=Usage(),
                            choices=[ChoiceResult(0, choice.text, choice.finish_reason,
                                                  logprobs=tokens)])


def rerun_decision(record: DecodeRecord, settings: RecordsDeployment, request: GenerationRequest,
                   replayed_small: GenerationResult | None) -> DecisionReplay:
    """Re-run the routing decision with the recorded verifier (id + sha256) and threshold.

    The route's verifier configured now must be the recorded one; its input is rebuilt from the
    recorded ``request`` (and, in a cascade, the small answer: the recorded one when the record kept
    its logprobs, else the replayed one), checked against the recorded ``feature_digest``, and
    scored; the tier follows from the *recorded* threshold. ``not-run`` says why it could not be
    re-run — never a success that was not checked.
    """
    from router.policy import feature_digest, verifier_input
    from router.strategies import ROUTING_MODES

    decision = record.decision
    assert decision is not None
    recorded = decision.model_dump()
    strategy = ROUTING_MODES.get(decision.mode)
    if strategy is None:
        return DecisionReplay("not-run", f"decision not re-run (routing mode {decision.mode!r} "
                              f"is not known; known: {', '.join(ROUTING_MODES)})", recorded)
    if strategy.verifier_kind is None or decision.verifier_id is None:
        return DecisionReplay("identical", f"{decision.mode} route: tier {decision.tier} by "
                              "configuration, nothing to score", recorded, recorded)
    route = settings.routes.get(decision.route)
    if route is None or route.verifier is None:
        return DecisionReplay("not-run", f"decision not re-run (no verifier configured for "
                              f"route {decision.route!r})", recorded)
    from verifiers.artifact import load_artifact
    from verifiers.errors import VerifierError

    try:
        verifier = load_artifact(route.verifier)
    except VerifierError as exc:
        return DecisionReplay("not-run", f"decision not re-run: {exc}", recorded)
    if (verifier.id, verifier.sha256) != (decision.verifier_id, decision.verifier_sha256):
        return DecisionReplay(
            "not-run", f"decision not re-run: route {decision.route!r} now uses verifier "
            f"{verifier.id} (sha256 {verifier.sha256[:12]}), the record names "
            f"{decision.verifier_id} (sha256 {(decision.verifier_sha256 or '')[:12]})", recorded)
    answer, source = None, "the recorded prompt"
    if strategy.verifier_kind == "answer":  # the verifier read the small model's answer
        answer, source = _recorded_answer(record.calls[0]), "the recorded small answer"
        if answer is None:
            answer = replayed_small
            source = "the replayed small answer (the record kept no logprobs for it)"
        if answer is None:
            return DecisionReplay("not-run", "decision not re-run: no small answer to score",
                                  recorded)
    item = verifier_input(request, answer)
    score = float(verifier.score(item))
    threshold = decision.threshold if decision.threshold is not None else float("inf")
    tier = "large" if score >= threshold else "small"
    replayed = {**recorded, "feature_digest": feature_digest(item), "score": score,
                "tier": tier, "escalated": tier == "large"}
    if replayed["feature_digest"] != decision.feature_digest:
        return DecisionReplay("changed", f"the verifier's input rebuilt from {source} differs "
                              "from what it saw (feature digest)", recorded, replayed)
    if score != decision.score or tier != decision.tier:
        return DecisionReplay("changed", f"verifier {verifier.id} now scores {score} (recorded "
                              f"{decision.score}): tier {tier}, recorded {decision.tier}",
                              recorded, replayed)
    return DecisionReplay("identical", f"decision re-run with verifier {verifier.id} and the "
                          f"recorded threshold {decision.threshold}: score {score}, tier {tier} "
                          f"(input from {source})", recorded, replayed)
