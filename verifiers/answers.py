"""Where an answer states its final result, in whichever of the common forms it uses.

A chain of thought ends its answer in one of a few ways; a verifier must read them alike, or
it keys on one model's habit and escalates every answer that ends differently (a verifier that
only knew ``#### N`` treated "Final answer: N" as a truncated answer and escalated 99.6 % of
them). Recognised endings (:data:`FORMS`, tried in this order):

==================  ==============================================  ==================
form                example                                         where
==================  ==============================================  ==================
``hash``            ``#### 18``                                     anywhere (last)
``boxed``           ``\\boxed{18}``                                  anywhere (last)
``answer-is``       "The answer is 18", "Final answer: 18",         anywhere (last)
                    "Answer: $18"
``so-is``           "So the result is 18.", "Therefore, she has     last line
                    18 eggs left.", "Thus x = 18"
``last-number``     a last line that is only a number (``18.``)      last line
==================  ==============================================  ==================

:func:`find_final` returns the value, the form and the span of the ending;
:func:`rewrite_final` writes the same answer with another ending (training-time augmentation
and the robustness test); :data:`STYLES` are the endings it writes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from verifiers.arithmetic import parse_number

_NUM = r"(-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?)"
_ANYWHERE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hash", re.compile(r"####\s*\**\s*" + _NUM)),
    ("boxed", re.compile(r"\\boxed\{\s*(?:\\text\{[^}]*\}\s*)?" + _NUM + r"[^}]{0,20}\}")),
    ("answer-is", re.compile(
        r"(?:\b(?:the\s+)?(?:final\s+)?answer\s+(?:is|was|would\s+be|will\s+be)|"
        r"\b(?:final\s+)?answer\s*[:=])\s*:?\s*\**\s*" + _NUM, re.IGNORECASE)),
)
_SO_IS = re.compile(
    r"\b(?:so|thus|therefore|hence|in\s+total|altogether|overall|in\s+the\s+end)\b"
    r"[^\n]{0,160}?(?:\bis\b|\bare\b|\bwas\b|\bwere\b|=|\bequals\b|\bmakes\b|\bhas\b|\bhave\b|"
    r"\bhad\b|\bgets\b|\bgot\b|\bneeds?\b|\bspent\b|\bpays?\b|\bpaid\b|\bearns?\b|\bearned\b|"
    r"\bsaved?\b|\bleft\b|\bwill\s+be\b|\bcosts?\b)\s*:?\s*\**\s*" + _NUM
    + r"(?:\s*[A-Za-z%][\w'-]*){0,4}\s*[.!]?\**\s*$", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"^\s*\**\s*" + _NUM + r"\s*[.!]?\**\s*$")
FORMS = ("hash", "boxed", "answer-is", "so-is", "last-number")


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    value: float
    form: str
    """One of :data:`FORMS`."""
    start: int
    end: int
    """The ending's span in the text (for ``so-is`` and ``last-number``: the last line)."""


def _last_line(text: str) -> tuple[int, str]:
    stripped = text.rstrip()
    start = stripped.rfind("\n") + 1
    return start, stripped[start:]


def find_final(text: str) -> FinalAnswer | None:
    """The answer's final result and the form that states it, or ``None`` when no recognised
    ending states one (the answer may still contain numbers: see :data:`FORMS`)."""
    for form, pattern in _ANYWHERE:
        last: re.Match[str] | None = None
        for match in pattern.finditer(text):
            last = match
        if last is not None and (value := parse_number(last.group(1).replace(" ", ""))) \
                is not None:
            return FinalAnswer(value, form, last.start(), last.end())
    start, line = _last_line(text)
    for form, pattern in (("so-is", _SO_IS), ("last-number", _LAST_NUMBER)):
        tail = pattern.search(line)
        if tail and (value := parse_number(tail.group(1).replace(" ", ""))) is not None:
            return FinalAnswer(value, form, start + tail.start(), start + len(line))
    return None


STYLES: dict[str, str] = {
    "hash": "#### {n}",
    "the-answer-is": "The answer is {n}.",
    "so-result": "So the result is {n}.",
    "boxed": "\\boxed{{{n}}}",
    "final-answer": "Final answer: {n}",
    "bold-answer": "**Answer:** {n}",
    "therefore-total": "Therefore, the total is {n}.",
    "bare": "{n}",
}
"""The endings :func:`rewrite_final` writes, by name."""
AUGMENT_STYLES = ("hash", "the-answer-is", "so-result", "boxed", "final-answer", "bare")
"""The styles training-time augmentation draws from (``bold-answer`` and ``therefore-total``
are kept out: the robustness test uses them as endings no training row had)."""


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else f"{value:g}"


def rewrite_final(text: str, style: str) -> str | None:
    """``text`` with its final-answer line written in ``style`` (:data:`STYLES`), or ``None``
    when it has no recognised ending. The line that holds the ending is replaced by the new
    ending alone; the chain of thought before it is kept as is."""
    final = find_final(text)
    if final is None:
        return None
    template = STYLES[style]
    line_start = text.rfind("\n", 0, final.start) + 1
    line_end = text.find("\n", final.end)
    before = text[:line_start]
    after = "" if line_end < 0 else text[line_end:]
    kept = text[line_start:final.start].rstrip()
    if final.form in ("so-is", "last-number"):
        kept = ""  # the whole last line was the ending
    prefix = kept + "\n" if kept else ""
    return before + prefix + template.format(n=_number(final.value)) + after.rstrip()


def augment_style(key: str, index: int = 0) -> str:
    """A style for the ``index``-th augmented copy of the row ``key``, drawn deterministically
    (by hash) from :data:`AUGMENT_STYLES`."""
    digest = hashlib.sha256(f"{key}\0{index}".encode()).digest()
    return AUGMENT_STYLES[int.from_bytes(digest[:4], "big") % len(AUGMENT_STYLES)]
