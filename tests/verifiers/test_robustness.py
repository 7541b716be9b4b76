"""Robustness of the answer verifier to the way the small model ends its answers.

GSM8K answers end in ``#### N``; a verifier that learned that habit escalates almost every
answer that ends otherwise. The validation answers are rewritten in every style of
:data:`verifiers.answers.STYLES` (two of them never seen in training augmentation), and at the
threshold chosen for 40 % escalation on the original answers the escalation share must stay
within 5 points and the APGR within 0.03. The first feature set (``answer_stats`` version 1,
no augmentation) fails the same check: the test can tell the two apart.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from router.calibration import CostModel, operating_points, suggest
from verifiers.answers import STYLES, rewrite_final
from verifiers.data import Answer, Example, VerifierInput
from verifiers.metrics import summarize
from verifiers.scoring import Verifier
from verifiers.spec import preset
from verifiers.training import fit

MAX_SHARE_SHIFT = 0.05
MAX_APGR_SHIFT = 0.03
TARGET = 0.4


def _router_items(examples: list[Example], style: str | None) -> list[VerifierInput]:
    items = []
    for example in examples:
        item = replace(example.input, slice=None)  # the router scores without a slice label
        assert item.answer is not None
        if style is not None:
            text = rewrite_final(item.answer.text, style)
            item = replace(item, answer=Answer(text if text is not None else item.answer.text))
        items.append(item)
    return items


def _shifts(verifier: Verifier, validation: list[Example]) -> dict[str, tuple[float, float]]:
    small = np.array([e.small_correct for e in validation], dtype=np.float64)
    large = np.array([bool(e.large_correct) for e in validation], dtype=np.float64)
    scores = verifier.score_batch(_router_items(validation, None))
    points = operating_points(scores, small.astype(bool).tolist(), large.astype(bool).tolist(),
                              CostModel("cascade", 10.0), (-1.0, 1.0))
    chosen = suggest(points, escalation=TARGET)
    base, _ = summarize("original", scores, small, large)
    shifts = {}
    for style in STYLES:
        rewritten = verifier.score_batch(_router_items(validation, style))
        summary, _ = summarize(style, rewritten, small, large)
        share = float(np.mean(rewritten >= chosen.threshold))
        shifts[style] = (share - chosen.share, summary.apgr - base.apgr)
    return shifts


@pytest.fixture(scope="module")
def shifts(answer_verifier: Verifier, gsm8k_split: tuple[list[Example], list[Example]]
           ) -> dict[str, tuple[float, float]]:
    return _shifts(answer_verifier, gsm8k_split[1])


@pytest.mark.parametrize("style", list(STYLES))
def test_escalation_and_apgr_hold_whatever_the_ending(
        shifts: dict[str, tuple[float, float]], style: str) -> None:
    share_shift, apgr_shift = shifts[style]
    assert abs(share_shift) <= MAX_SHARE_SHIFT, f"{style}: escalation moved {share_shift:+.3f}"
    assert abs(apgr_shift) <= MAX_APGR_SHIFT, f"{style}: APGR moved {apgr_shift:+.3f}"


def test_the_first_feature_set_fails_the_same_check(
        gsm8k_split: tuple[list[Example], list[Example]]) -> None:
    spec = preset("answer")
    legacy = replace(spec, extractors=tuple((name, {}) for name, _ in spec.extractors),
                     answer_formats=0)
    shifts = _shifts(fit(gsm8k_split[0][:300], legacy), gsm8k_split[1])
    assert shifts["final-answer"][0] > 0.3  # "Final answer: N" read as truncated: escalated
    assert shifts["boxed"][1] < -MAX_APGR_SHIFT
