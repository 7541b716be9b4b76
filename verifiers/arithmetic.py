"""Reading numbers and checking the arithmetic a model wrote in its own chain of thought.

Used by the answer features: a cheap verifier that re-computes every ``a op b = c`` step (and
every GSM8K-style calculator annotation ``<<a*b=c>>``) it can parse, and reports how many steps
it checked and how many were wrong. Expressions are parsed with :mod:`ast` and evaluated by a
small walker that only knows numbers, + - * / ** and unary minus — nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

NUMBER = re.compile(r"(?<![\w.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")
"""A number as written in prose: optional sign and $, thousands commas, decimals, percent."""
ANNOTATION = re.compile(r"<<([^<>]*)>>")
_RUN = r"[\d\s$,.%()+\-*/\u00d7\u00f7x\\^]*"
_TAIL = re.compile(_RUN + "$")
_HEAD = re.compile("^" + _RUN)
_OPERATOR = re.compile(r"\d\s*%?\)?\s*(?:[-+*/\u00d7\u00f7x^]|\\\*)\s*\(?\s*\$?\d")
_FRACTION = re.compile(r"(?<![\d.)])(\d+)/(\d+)(?![\d.(])")
FINAL = re.compile(r"(?:####|[Tt]he (?:final )?answer is:?)\s*\**\s*(-?\$?[\d,]*\.?\d+)")
COMMON_CONSTANTS = frozenset({0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0,
                              24.0, 30.0, 52.0, 60.0, 100.0, 365.0, 1000.0})
"""Operands a chain of thought may use without the prompt stating them (units, percent)."""
MAX_EXPONENT = 64
RELATIVE_TOLERANCE = 0.01


def parse_number(text: str) -> float | None:
    cleaned = text.replace("$", "").replace(",", "").rstrip("%").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numbers_in(text: str) -> list[float]:
    out = []
    for match in NUMBER.finditer(text):
        value = parse_number(match.group())
        if value is not None:
            out.append(value)
    return out


def evaluate(expression: str) -> float | None:
    """The value of a plain arithmetic expression, or ``None`` when it is not one."""
    cleaned = (expression.replace("\\*", "*").replace("\u00d7", "*").replace("\u00f7", "/")
               .replace("$", "").replace(",", "").replace("^", "**"))
    cleaned = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", cleaned)
    cleaned = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", cleaned)
    if not cleaned.strip() or len(cleaned) > 200:
        return None
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    try:
        value = _walk(tree.body)
    except (ZeroDivisionError, OverflowError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _walk(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _walk(node.operand)
        if operand is None:
            return None
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _walk(node.left), _walk(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.Pow) and abs(right) <= MAX_EXPONENT and abs(left) < 1e6:
            return float(left**right)
    return None


def close(a: float, b: float) -> bool:
    """Equal up to the rounding a model shows (1 % relative, or 0.01 absolute)."""
    return abs(a - b) <= max(0.01, RELATIVE_TOLERANCE * max(abs(a), abs(b)))


@dataclass(frozen=True, slots=True)
class ArithmeticCheck:
    """What re-computing the answer's own steps found."""

    steps: int
    """Steps whose expression could be parsed and evaluated."""
    wrong: int
    """...of which the stated result differs from the recomputed value."""
    results: tuple[float, ...]
    """Every stated result, in order (the values the chain of thought derived)."""
    operands: int = 0
    """Numbers used on the left of the checked steps..."""
    unexplained: int = 0
    """...that are neither given, nor an earlier result, nor a common constant."""


def readings(expression: str) -> list[float]:
    """The values an expression may mean as written: plain precedence, and with fractions
    written without spaces (``12.8 / 2/5``) bound tighter; empty when it is not arithmetic."""
    values = []
    plain = evaluate(expression)
    if plain is not None:
        values.append(plain)
    variant = _FRACTION.sub(r"(\1/\2)", expression)
    if variant != expression and (grouped := evaluate(variant)) is not None:
        values.append(grouped)
    return values


def _agree(left: list[float], right: list[float], percent: bool) -> bool:
    scales = (1.0, 100.0, 0.01) if percent else (1.0,)
    return any(close(a * scale, b) for a in left for b in right for scale in scales)


def _equation_parts(line: str) -> list[tuple[str, str]]:
    """``(left, right)`` arithmetic runs around each ``=`` of a line of prose."""
    segments = line.split("=")
    pairs = []
    for left, right in itertools.pairwise(segments):
        tail = _TAIL.search(left)
        head = _HEAD.search(right)
        lhs = tail.group() if tail else ""
        rhs = head.group() if head else ""
        for separator in (", ", ". "):  # sentence punctuation ends an expression
            lhs = lhs.rsplit(separator, 1)[-1]
            rhs = rhs.split(separator, 1)[0]
        pairs.append((lhs.strip(), rhs.strip().rstrip(".,").strip()))
    return pairs


def check_steps(text: str, given: Iterable[float] | None = None) -> ArithmeticCheck:
    """Re-compute each ``lhs = rhs`` whose left side is a computation (numbers and operators).

    Both sides may be expressions (``22 + 4 x 12 = 22 + 48 = 70`` is three parts); a step is
    wrong when no reading of the two sides agrees (percent may be read as a share or as a
    number of percent points). ``given`` are the numbers the prompt states: operands that are
    neither given, nor an earlier step's result, nor in :data:`COMMON_CONSTANTS` count as
    unexplained (not tracked when ``given`` is ``None``).
    """
    known = set(COMMON_CONSTANTS)
    known.update(abs(g) for g in given or ())
    steps = wrong = operands = unexplained = 0
    results: list[float] = []
    pairs: list[tuple[str, str]] = []
    for match in ANNOTATION.finditer(text):
        parts = match.group(1).split("=")
        pairs.extend(itertools.pairwise(parts))
    prose = ANNOTATION.sub(" ", text)
    for line in prose.splitlines():
        if "=" in line:
            pairs.extend(_equation_parts(line))
    for lhs, rhs in pairs:
        if not _OPERATOR.search(lhs):
            continue
        left, right = readings(lhs), readings(rhs)
        leading = NUMBER.match(rhs.replace("$ ", "$"))
        if leading and (value := parse_number(leading.group())) is not None:
            right.append(value)
        if not left or not right:
            continue
        steps += 1
        wrong += not _agree(left, right, "%" in lhs or "%" in rhs)
        results.append(right[0])
        if given is None:
            continue
        for operand in numbers_in(lhs.replace("x", " x ")):
            operands += 1
            magnitude = abs(operand)
            unexplained += magnitude not in known and not any(close(magnitude, k)
                                                              for k in known)
        known.update(abs(value) for value in (*left, *right))
    return ArithmeticCheck(steps, wrong, tuple(results), operands, unexplained)


def final_answer(text: str) -> float | None:
    """The number after ``####`` / "The answer is", else ``None``."""
    matches = FINAL.findall(text)
    return parse_number(matches[-1]) if matches else None
