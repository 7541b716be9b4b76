"""Shape features: what a short prompt and its answer look like, for any task.

Short, structured prompts (``rev(4821+3770)=``, ``sort(dbca)=``, a product code, a date) carry
their difficulty in their shape rather than in their words: how long the digit and letter runs
are, which operator symbols appear. Their answers can be read the same way: length against the
prompt's runs, which characters they use, and how sure the model was of each token. None of
these features knows any task: they are counts over characters and logprobs, so they transfer
to any prompt (and say little about long prose, where the other extractors work).

=================  =====  ==========================================================================
name               needs  features
=================  =====  ==========================================================================
``prompt_shape``   req.   longest / second digit run, digit runs, longest letter run, symbols
``answer_shape``   answer chars, digit share, length against the prompt's longest run, characters
                          not in the prompt or beyond the run's, repeats, sequence logprob
=================  =====  ==========================================================================
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, ClassVar

from verifiers.data import VerifierInput

_DIGITS = re.compile(r"\d+")
_LETTERS = re.compile(r"[A-Za-z]+")
SYMBOLS = {"plus": "+", "minus": "-", "times": "*", "divide": "/", "power": "^", "equals": "=",
           "paren": "(", "comma": ","}
"""Operator and structure symbols counted in the prompt, by feature name."""


def _runs(pattern: re.Pattern[str], text: str) -> list[int]:
    return sorted((len(m.group()) for m in pattern.finditer(text)), reverse=True)


def _longest_run(text: str) -> str:
    """The longest digit or letter run; of equally long ones the last (nearest the answer)."""
    runs = sorted((m.start(), m.group()) for pattern in (_DIGITS, _LETTERS)
                   for m in pattern.finditer(text))
    return max(reversed([run for _, run in runs]), key=len, default="")


class PromptShape:
    """Digit and letter runs of the prompt and the operator symbols it contains."""

    name: ClassVar[str] = "prompt_shape"
    names: ClassVar[tuple[str, ...]] = (
        "shape_digit_run_max", "shape_digit_run_second", "shape_digit_runs", "shape_digits",
        "shape_letter_run_max", "shape_chars", *(f"shape_sym_{name}" for name in SYMBOLS),
    )

    def values(self, item: VerifierInput) -> list[float]:
        text = item.prompt
        digits = _runs(_DIGITS, text)
        letters = _runs(_LETTERS, text)
        return [float(digits[0] if digits else 0), float(digits[1] if len(digits) > 1 else 0),
                float(len(digits)), float(sum(digits)), float(letters[0] if letters else 0),
                float(len(text)), *(float(text.count(symbol)) for symbol in SYMBOLS.values())]

    def params(self) -> dict[str, Any]:
        return {}


class AnswerShape:
    """The answer's length and characters against the prompt, and its sequence likelihood.

    ``answer_len_minus_run`` is the answer's length minus the prompt's longest digit or letter
    run; ``answer_foreign_chars`` the share of the answer's characters that never occur in the
    prompt; ``answer_lp_sum`` the answer's total token logprob (its likelihood under the
    model), ``answer_lp_last`` the last token's (often the end-of-sequence decision) and
    ``answer_lp_second_min`` the second-least likely token's (0 without logprobs).
    ``answer_run_missing`` / ``answer_run_extra`` compare the answer's characters with those of
    the prompt's longest run as multisets (characters of the run the answer never uses, and
    answer characters beyond the run's) — a provenance check like ``answer_prompt_coverage``
    of :class:`~verifiers.features.AnswerStats`, which knows no task.
    """

    name: ClassVar[str] = "answer_shape"
    names: ClassVar[tuple[str, ...]] = (
        "answer_chars", "answer_digit_share", "answer_letter_share", "answer_len_minus_run",
        "answer_foreign_chars", "answer_repeat_max", "answer_has_space", "answer_lp_sum",
        "answer_lp_last", "answer_lp_second_min", "answer_lp_first", "answer_run_missing",
        "answer_run_extra",
    )

    def values(self, item: VerifierInput) -> list[float]:
        if item.answer is None:
            return [0.0] * len(self.names)
        text = item.answer.text.strip()
        chars = len(text)
        prompt_chars = set(item.prompt)
        run = _longest_run(item.prompt)
        missing = Counter(run) - Counter(text)
        extra = Counter(text) - Counter(run)
        repeat = max((len(m.group()) for m in re.finditer(r"(.)\1*", text)), default=0)
        lps = list(item.answer.token_logprobs or ())
        ordered = sorted(lps)
        return [float(chars), sum(c.isdigit() for c in text) / max(chars, 1),
                sum(c.isalpha() for c in text) / max(chars, 1),
                float(chars - len(run)),
                sum(c not in prompt_chars for c in text) / max(chars, 1), float(repeat),
                float(any(c.isspace() for c in text)), math.fsum(lps),
                lps[-1] if lps else 0.0, ordered[1] if len(ordered) > 1 else 0.0,
                lps[0] if lps else 0.0, sum(missing.values()) / max(len(run), 1),
                sum(extra.values()) / max(chars, 1)]

    def params(self) -> dict[str, Any]:
        return {}
