"""Final-answer endings: every common form is read, rewriting keeps the chain of thought, and
the answer features treat a recognised ending alike whatever its form (feature set 2)."""

from __future__ import annotations

import pytest

from verifiers.answers import AUGMENT_STYLES, STYLES, augment_style, find_final, rewrite_final
from verifiers.data import Answer, VerifierInput
from verifiers.errors import SpecError
from verifiers.features import AnswerStats, build_extractor

PROMPT = "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4. How many are left?"
CHAIN = "She has 16 - 3 = <<16-3=13>>13 eggs, then 13 - 4 = <<13-4=9>>9.\n"


@pytest.mark.parametrize(("text", "value", "form"), [
    (CHAIN + "#### 9", 9.0, "hash"),
    (CHAIN + "#### 1,234 minutes", 1234.0, "hash"),
    (CHAIN + "The answer is $9.", 9.0, "answer-is"),
    (CHAIN + "The final answer is: **-9**", -9.0, "answer-is"),
    (CHAIN + "Final answer: 9", 9.0, "answer-is"),
    (CHAIN + "**Answer:** 9.5", 9.5, "answer-is"),
    (CHAIN + "\\boxed{9}", 9.0, "boxed"),
    (CHAIN + "$\\boxed{\\text{} 9 \\text{ eggs}}$", 9.0, "boxed"),
    (CHAIN + "So the result is 9.", 9.0, "so-is"),
    (CHAIN + "Therefore, she has 9 eggs left.", 9.0, "so-is"),
    (CHAIN + "Thus x = 9", 9.0, "so-is"),
    (CHAIN + "9", 9.0, "last-number"),
    (CHAIN + "  $9.  ", 9.0, "last-number"),
])
def test_every_common_ending_is_read(text: str, value: float, form: str) -> None:
    found = find_final(text)
    assert found is not None and (found.value, found.form) == (value, form)


@pytest.mark.parametrize("text", [
    CHAIN + "She then sells 9 * 2 = ",           # cut off mid-step
    "So, she sells 88,0 and then",             # truncated prose
    "The eggs are laid at 6 am every day",     # a number, but no ending states it
])
def test_no_ending_is_no_final_answer(text: str) -> None:
    assert find_final(text) is None


@pytest.mark.parametrize("style", list(STYLES))
def test_rewrite_keeps_the_chain_and_the_value(style: str) -> None:
    original = CHAIN + "So she has 9 eggs left over.\n#### 9"
    rewritten = rewrite_final(original, style)
    assert rewritten is not None
    assert rewritten.startswith(CHAIN + "So she has 9 eggs left over.\n")
    assert rewritten.endswith(STYLES[style].format(n=9))
    found = find_final(rewritten)
    assert found is not None and found.value == 9.0
    assert rewrite_final("no ending here at all", style) is None


def test_rewrite_replaces_a_whole_so_is_line() -> None:
    assert rewrite_final(CHAIN + "So the result is 9.", "hash") == CHAIN + "#### 9"
    assert rewrite_final("a\nThe answer is 7.5 eggs", "boxed") == "a\n\\boxed{7.5}"


def test_augmentation_styles_are_deterministic_and_spread() -> None:
    drawn = {augment_style(f"prompt {i}") for i in range(200)}
    assert drawn == set(AUGMENT_STYLES)
    assert augment_style("p", 3) == augment_style("p", 3)
    assert "bold-answer" not in AUGMENT_STYLES  # held out for the robustness test


def _stats(stats: AnswerStats, text: str) -> dict[str, float]:
    return dict(zip(stats.names, stats.values(VerifierInput(PROMPT, Answer(text))),
                    strict=True))


@pytest.mark.parametrize("style", list(STYLES))
def test_feature_set_2_reads_every_ending_alike(style: str) -> None:
    stats = AnswerStats(version=2)
    reference = _stats(stats, CHAIN + "#### 9")
    values = _stats(stats, rewrite_final(CHAIN + "#### 9", style) or "")
    assert values["answer_final_marker"] == 1.0 and values["answer_truncated"] == 0.0
    for name in ("answer_final_integer", "answer_final_is_last_result",
                 "answer_final_in_prompt", "answer_final_log_ratio", "answer_lines"):
        assert values[name] == reference[name], name


def test_feature_set_1_is_kept_for_old_artifacts() -> None:
    legacy = build_extractor("answer_stats", {})
    assert isinstance(legacy, AnswerStats) and legacy.version == 1 and legacy.params() == {}
    values = _stats(legacy, CHAIN + "Final answer: 9")
    # what the first feature set did (and old artifacts were trained on): no marker, truncated
    assert values["answer_final_marker"] == 0.0 and values["answer_truncated"] == 1.0
    assert build_extractor("answer_stats", {"version": 2}).params() == {"version": 2}
    with pytest.raises(SpecError, match="version 3"):
        build_extractor("answer_stats", {"version": 3})


def test_truncation_is_still_seen_by_feature_set_2() -> None:
    values = _stats(AnswerStats(version=2), "So, she sells 88,0")
    assert values["answer_truncated"] == 1.0 and values["answer_final_marker"] == 0.0
