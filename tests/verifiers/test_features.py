"""Feature extraction: arithmetic re-checks, answer form, logprob statistics, the registry."""

from __future__ import annotations

import math

import pytest

from verifiers.arithmetic import check_steps, evaluate, final_answer, numbers_in
from verifiers.data import Answer, VerifierInput
from verifiers.errors import SpecError
from verifiers.features import (
    EXTRACTORS,
    AnswerStats,
    ArithmeticFeatures,
    LogprobStats,
    PromptStats,
    build_extractor,
    prompt_quantities,
)
from verifiers.shape import AnswerShape, PromptShape

PROMPT = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes with 4. "
          "She sells the rest for $2 each. How much does she make?")
RIGHT = ("She has 16 - 3 = <<16-3=13>>13 eggs left, then 13 - 4 = <<13-4=9>>9.\n"
         "She makes 9 * $2 = $<<9*2=18>>18.\n#### 18")
WRONG = ("She has 16 - 3 = <<16-3=13>>13 eggs left, then 13 - 4 = <<13-4=8>>8.\n"
         "She makes 8 * $2 = $<<8*2=16>>16, approximately.\n#### 16.5")


@pytest.mark.parametrize(("expression", "value"), [
    ("2 x 4", 8.0), ("3 \\* 50", 150.0), ("$1,200 / 4", 300.0), ("50%", 0.5),
    ("(40 - 20) * 2", 40.0), ("2^3", 8.0), ("-5 + 2", -3.0)])
def test_evaluate_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == pytest.approx(value)


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "abs(-1)", "2 ** 1000000", "1 / 0", "x + 1", "", "[1]"])
def test_evaluate_refuses_anything_but_arithmetic(expression: str) -> None:
    assert evaluate(expression) is None


def test_check_steps_finds_wrong_steps() -> None:
    assert check_steps(RIGHT).wrong == 0
    assert check_steps(RIGHT).steps == 6  # three annotations + three prose equations
    check = check_steps(WRONG)
    assert check.wrong == 2  # 13 - 4 = 8, in the annotation and in the prose
    assert check.results[-1] == 16.0


def test_check_steps_reads_chains_percent_and_fractions() -> None:
    assert check_steps("22 + 4 x 12 = 22 + 48 = 70").wrong == 0
    assert check_steps("22 + 4 x 12 = 22 + 48 = 71").wrong == 1
    assert check_steps("(4/20)*100% = 20% of them").wrong == 0
    assert check_steps("12.8 / (1 - 3/5) = 12.8 / 2/5 = 32").wrong == 0
    assert check_steps("so 20 + 30 - 29 + 17 = 48 cards").wrong == 1


def test_unexplained_operands_need_the_given_numbers() -> None:
    text = "16 - 3 = 13 and 13 * 7.5 = 97.5"
    assert check_steps(text, [16.0, 3.0]).unexplained == 1  # 7.5 comes from nowhere
    assert check_steps(text, [16.0, 3.0, 7.5]).unexplained == 0


def test_final_answer_and_numbers() -> None:
    assert final_answer("so... #### 1,234") == 1234.0
    assert final_answer("The answer is: $18.") == 18.0
    assert final_answer("no marker 42") is None
    assert numbers_in("pay $1,200.50 or 15% of -3") == [1200.5, 15.0, -3.0]


def test_prompt_quantities_include_words() -> None:
    quantities = prompt_quantities("half of 20 apples, twice a dozen and 50%")
    assert (0.5, 2.0) in quantities and (20.0,) in quantities and (12.0,) in quantities
    assert (50.0, 0.5) in quantities


def test_answer_stats_separate_right_from_wrong() -> None:
    stats = AnswerStats()
    right = dict(zip(stats.names, stats.values(VerifierInput(PROMPT, Answer(RIGHT))),
                     strict=True))
    wrong = dict(zip(stats.names, stats.values(VerifierInput(PROMPT, Answer(WRONG))),
                     strict=True))
    assert right["answer_final_marker"] == 1 and right["answer_final_integer"] == 1
    assert right["answer_final_is_last_result"] == 1 and right["answer_prompt_coverage"] == 1
    assert wrong["answer_final_integer"] == 0 and wrong["answer_final_decimals"] == 1
    assert wrong["answer_hedges"] == 1 and wrong["answer_final_is_last_result"] == 0
    arithmetic = ArithmeticFeatures()
    values = dict(zip(arithmetic.names, arithmetic.values(VerifierInput(PROMPT, Answer(WRONG))),
                      strict=True))
    assert values["arith_any_wrong"] == 1 and values["arith_wrong"] == 2


def test_answer_features_are_zero_without_an_answer() -> None:
    for extractor in (AnswerStats(), ArithmeticFeatures(), LogprobStats()):
        assert extractor.values(VerifierInput(PROMPT)) == [0.0] * len(extractor.names)


def test_truncated_answer() -> None:
    stats = AnswerStats()
    item = VerifierInput(PROMPT, Answer("So, she sells 88,0"))
    values = dict(zip(stats.names, stats.values(item), strict=True))
    assert values["answer_truncated"] == 1 and values["answer_final_marker"] == 0


def test_logprob_statistics() -> None:
    answer = Answer("ab", token_logprobs=(-0.1, -3.0),
                    top_logprobs=((math.log(0.5), math.log(0.5)), (-3.0, -0.1)))
    values = dict(zip(LogprobStats.names, LogprobStats().values(VerifierInput("q", answer)),
                      strict=True))
    assert values["lp_present"] == 1
    assert values["lp_mean"] == pytest.approx(-1.55)
    assert values["lp_min"] == -3.0
    assert values["lp_unlikely_share"] == 0.5
    assert values["lp_entropy_max"] == pytest.approx(math.log(2))
    assert values["lp_margin_mean"] == pytest.approx((0 + 2.9) / 2)


def test_prompt_stats_see_multiple_choice() -> None:
    prompt = "Which is NOT a prime?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"
    values = dict(zip(PromptStats.names, PromptStats().values(VerifierInput(prompt)),
                      strict=True))
    assert values["prompt_options"] == 4 and values["prompt_negation"] == 1


def test_registry() -> None:
    assert set(EXTRACTORS) == {"prompt_stats", "answer_stats", "arithmetic", "logprobs",
                               "prompt_shape", "answer_shape", "prompt_embedding",
                               "answer_embedding"}
    assert build_extractor("logprobs", {"unlikely": -1.0}).params() == {"unlikely": -1.0}
    with pytest.raises(SpecError, match="unknown feature extractor"):
        build_extractor("nope")
    with pytest.raises(SpecError, match="bad parameters"):
        build_extractor("prompt_stats", {"x": 1})


def test_prompt_shape_reads_runs_and_symbols() -> None:
    values = dict(zip(PromptShape.names, PromptShape().values(VerifierInput("rev(4821*37)=")),
                      strict=True))
    assert (values["shape_digit_run_max"], values["shape_digit_run_second"]) == (4, 2)
    assert (values["shape_digit_runs"], values["shape_digits"]) == (2, 6)
    assert values["shape_letter_run_max"] == 3 and values["shape_chars"] == 13
    assert (values["shape_sym_times"], values["shape_sym_plus"], values["shape_sym_equals"]) \
        == (1, 0, 1)
    sort = dict(zip(PromptShape.names, PromptShape().values(VerifierInput("sort(dbcaef)=")),
                    strict=True))
    assert sort["shape_letter_run_max"] == 6 and sort["shape_digit_run_max"] == 0


def test_answer_shape_compares_the_answer_with_the_prompt_run() -> None:
    def shape(prompt: str, text: str, lps: tuple[float, ...] | None = None) -> dict[str, float]:
        item = VerifierInput(prompt, Answer(text, lps))
        return dict(zip(AnswerShape.names, AnswerShape().values(item), strict=True))

    faithful = shape("sort(dbca)=", "abcd", (-0.1, -0.2, -1.5, -0.05, -0.01))
    assert faithful["answer_len_minus_run"] == 0
    assert faithful["answer_run_missing"] == 0 and faithful["answer_run_extra"] == 0
    assert faithful["answer_lp_sum"] == pytest.approx(-1.86)
    assert faithful["answer_lp_second_min"] == -0.2 and faithful["answer_lp_last"] == -0.01
    dropped = shape("sort(dbca)=", "abbd")  # 'c' dropped, 'b' doubled
    assert dropped["answer_run_missing"] == pytest.approx(1 / 4)
    assert dropped["answer_run_extra"] == pytest.approx(1 / 4)
    assert dropped["answer_repeat_max"] == 2 and dropped["answer_lp_sum"] == 0
    digits = shape("rev(12+34)=", "64")
    assert digits["answer_digit_share"] == 1
    assert digits["answer_foreign_chars"] == pytest.approx(0.5)  # '6' is not in the prompt
    assert AnswerShape().values(VerifierInput("x")) == [0.0] * len(AnswerShape.names)
