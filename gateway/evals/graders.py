"""Graders: does a model's output text pass, given the item's reference answer?

A grader is chosen by name (its ``type``) from :data:`GRADERS`; its parameters are the other
keys of the item's ``grader`` object, validated when a task set is loaded::

    {"type": "exact"}                                        strip both, compare
    {"type": "numeric", "abs_tol": 0.01, "rel_tol": 0}      first/last number in the output
    {"type": "regex", "pattern": "\\\\d+", "mode": "search"}    fullmatch (default) or search
    {"type": "json_schema", "schema": {...}}                 output parses as JSON and validates

Every grader returns a :class:`GradeResult`: ``passed`` and a short human ``detail`` for reports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
"""A decimal number, optionally signed, with optional thousands commas and exponent."""
FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class GradeResult:
    passed: bool
    detail: str = ""


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def grade(self, output: str, answer: str) -> GradeResult:  # pragma: no cover - abstract
        raise NotImplementedError


class ExactGrader(_Grader):
    """Equal to the reference answer after stripping surrounding whitespace (both sides)."""

    type: Literal["exact"] = "exact"
    strip: bool = True
    ignore_case: bool = False

    def grade(self, output: str, answer: str) -> GradeResult:
        got, want = (output.strip(), answer.strip()) if self.strip else (output, answer)
        if self.ignore_case:
            got, want = got.casefold(), want.casefold()
        if got == want:
            return GradeResult(True)
        return GradeResult(False, f"expected {_clip(want)!r}, got {_clip(got)!r}")


class NumericGrader(_Grader):
    """The first or last number in the output equals the answer within the tolerances.

    Passes when ``|got - want| <= max(abs_tol, rel_tol * |want|)``; with both tolerances 0 the
    numbers must be equal (compared as decimals, so large integers are exact).
    """

    type: Literal["numeric"] = "numeric"
    abs_tol: float = Field(default=0.0, ge=0.0)
    rel_tol: float = Field(default=0.0, ge=0.0)
    pick: Literal["first", "last"] = "last"

    def grade(self, output: str, answer: str) -> GradeResult:
        want = parse_number(answer)
        if want is None:
            return GradeResult(False, f"reference answer {_clip(answer)!r} is not a number")
        found = NUMBER.findall(output)
        if not found:
            return GradeResult(False, f"no number in output {_clip(output)!r}")
        got = parse_number(found[0] if self.pick == "first" else found[-1])
        if got is None:  # pragma: no cover - NUMBER only matches parseable text
            return GradeResult(False, "unparseable number")
        allowed = max(Decimal(repr(self.abs_tol)), Decimal(repr(self.rel_tol)) * abs(want))
        if abs(got - want) <= allowed:
            return GradeResult(True)
        return GradeResult(False, f"expected {want} (±{allowed}), got {got}")


class RegexGrader(_Grader):
    """The (stripped) output matches ``pattern``: the whole of it, or anywhere (``search``)."""

    type: Literal["regex"] = "regex"
    pattern: str
    mode: Literal["fullmatch", "search"] = "fullmatch"
    ignore_case: bool = False
    strip: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        return pattern

    def grade(self, output: str, answer: str) -> GradeResult:
        text = output.strip() if self.strip else output
        regex = re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)
        match = regex.fullmatch(text) if self.mode == "fullmatch" else regex.search(text)
        if match:
            return GradeResult(True)
        return GradeResult(False, f"{_clip(text)!r} does not {self.mode} /{self.pattern}/")


class JsonSchemaGrader(_Grader):
    """The output is JSON (optionally inside a Markdown code fence) valid against ``schema``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any] = Field(alias="schema")
    allow_fence: bool = True

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"invalid JSON schema: {exc.message}") from exc
        return schema

    def grade(self, output: str, answer: str) -> GradeResult:
        from jsonschema.validators import validator_for

        text = output.strip()
        fenced = FENCE.match(text) if self.allow_fence else None
        if fenced:
            text = fenced.group(1).strip()
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            return GradeResult(False, f"not JSON: {exc.msg} at char {exc.pos}")
        validator = validator_for(self.json_schema)(self.json_schema)
        error = next(iter(validator.iter_errors(document)), None)
        if error is None:
            return GradeResult(True)
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return GradeResult(False, f"schema violation at {where}: {error.message}")


AnyGrader = ExactGrader | NumericGrader | RegexGrader | JsonSchemaGrader
GraderSpec = Annotated[AnyGrader, Field(discriminator="type")]
"""A grader with its parameters, as it appears in a task-set item."""

GRADERS: MappingProxyType[str, type[_Grader]] = MappingProxyType(
    {
        "exact": ExactGrader,
        "numeric": NumericGrader,
        "regex": RegexGrader,
        "json_schema": JsonSchemaGrader,
    }
)
"""The registry: grader name → grader class."""

_SPEC_ADAPTER: TypeAdapter[GraderSpec] = TypeAdapter(GraderSpec)


def get_grader(spec: dict[str, Any]) -> AnyGrader:
    """Build the grader named by ``spec["type"]`` with the rest of ``spec`` as parameters.

    Raises ``ValueError`` naming the known graders, or the invalid parameter.
    """
    name = spec.get("type")
    if name not in GRADERS:
        raise ValueError(f"unknown grader type {name!r}; known: {', '.join(GRADERS)}")
    try:
        return _SPEC_ADAPTER.validate_python(spec)
    except ValidationError as exc:
        raise ValueError(f"invalid {name} grader: {describe_errors(exc, skip=1)}") from exc


def grade(spec: dict[str, Any], output: str, answer: str) -> GradeResult:
    """Grade ``output`` against ``answer`` with the grader described by ``spec``."""
    return get_grader(spec).grade(output, answer)


def parse_number(text: str) -> Decimal | None:
    """``"1,234.5"`` → ``Decimal("1234.5")``; None when ``text`` (stripped) is not one number."""
    candidate = text.strip()
    if not NUMBER.fullmatch(candidate):
        return None
    try:
        return Decimal(candidate.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - NUMBER only matches parseable text
        return None


def describe_errors(exc: ValidationError, skip: int = 0) -> str:
    """A pydantic error as one line: ``field.path: message; ...`` (``skip``: leading loc parts)."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"][skip:]) or "(item)"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
