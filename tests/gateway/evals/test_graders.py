"""Graders: each pass/fail rule, tolerances, and clear errors for bad parameters."""

from __future__ import annotations

import pytest

from gateway.evals.graders import (
    GRADERS,
    ExactGrader,
    JsonSchemaGrader,
    NumericGrader,
    RegexGrader,
    get_grader,
    grade,
    parse_number,
)


def test_registry_names_every_grader() -> None:
    assert set(GRADERS) == {"exact", "numeric", "regex", "json_schema"}
    for name, cls in GRADERS.items():
        assert cls.model_fields["type"].default == name


@pytest.mark.parametrize(
    ("output", "answer", "passed"),
    [("975", "975", True), ("  975\n", "975", True), ("9750", "975", False), ("", "975", False)],
)
def test_exact_strips_then_compares(output: str, answer: str, passed: bool) -> None:
    assert grade({"type": "exact"}, output, answer).passed is passed


def test_exact_options() -> None:
    assert not ExactGrader(strip=False).grade(" a", "a").passed
    assert ExactGrader(ignore_case=True).grade("ABC", "abc").passed
    result = ExactGrader().grade("abd", "abc")
    assert not result.passed
    assert "'abc'" in result.detail and "'abd'" in result.detail


@pytest.mark.parametrize(
    ("spec", "output", "answer", "passed"),
    [
        ({}, "The answer is 42.", "42", True),
        ({}, "42.0", "42", True),
        ({}, "41", "42", False),
        ({}, "first 7 then 42", "42", True),
        ({"pick": "first"}, "first 7 then 42", "42", False),
        ({"pick": "first"}, "7 apples, 9 pears", "7", True),
        ({}, "#### 1,234", "1234", True),
        ({}, "total: 1,000.5 dollars", "1000.5", True),
        ({}, "it is -3", "-3", True),
        ({}, "1e3", "1000", True),
        ({"abs_tol": 0.01}, "3.14159", "3.14", True),
        ({"abs_tol": 0.001}, "3.14159", "3.14", False),
        ({"rel_tol": 0.05}, "104", "100", True),
        ({"rel_tol": 0.05}, "106", "100", False),
        ({}, "no digits here", "1", False),
        ({}, "12345678901234567891", "12345678901234567890", False),
    ],
)
def test_numeric(spec: dict[str, object], output: str, answer: str, passed: bool) -> None:
    assert grade({"type": "numeric", **spec}, output, answer).passed is passed


def test_numeric_reference_must_be_a_number() -> None:
    result = NumericGrader().grade("5", "five")
    assert not result.passed
    assert "not a number" in result.detail


def test_parse_number() -> None:
    assert str(parse_number(" 1,234.50 ")) == "1234.50"
    assert parse_number("12 apples") is None
    assert parse_number("") is None


def test_regex_fullmatch_and_search() -> None:
    assert grade({"type": "regex", "pattern": r"\d+"}, " 123\n", "").passed
    assert not grade({"type": "regex", "pattern": r"\d+"}, "x123", "").passed
    assert grade({"type": "regex", "pattern": r"\d+", "mode": "search"}, "x123", "").passed
    assert RegexGrader(pattern="yes", ignore_case=True).grade("YES", "").passed
    assert "does not fullmatch" in RegexGrader(pattern="a").grade("b", "").detail


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("output", "passed", "detail"),
    [
        ('{"name": "Ada", "age": 36}', True, ""),
        ('```json\n{"name": "Ada", "age": 36}\n```', True, ""),
        ('{"name": "Ada"}', False, "'age' is a required property"),
        ('{"name": "Ada", "age": -1}', False, "at age"),
        ('{"name": "Ada", "age": 1, "x": 0}', False, "Additional properties"),
        ("{name: Ada}", False, "not JSON"),
        ("", False, "not JSON"),
    ],
)
def test_json_schema(output: str, passed: bool, detail: str) -> None:
    result = grade({"type": "json_schema", "schema": SCHEMA}, output, "")
    assert result.passed is passed
    assert detail in result.detail


def test_json_schema_fence_can_be_refused() -> None:
    grader = JsonSchemaGrader.model_validate({"schema": {"type": "object"}, "allow_fence": False})
    assert not grader.grade("```json\n{}\n```", "").passed
    assert grader.grade("{}", "").passed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "nope"}, "unknown grader type 'nope'; known: exact, numeric, regex, json_schema"),
        ({}, "unknown grader type None"),
        ({"type": "regex"}, "pattern: Field required"),
        ({"type": "regex", "pattern": "("}, "pattern: invalid regular expression"),
        ({"type": "numeric", "abs_tol": -1}, "abs_tol: Input should be greater than or equal to 0"),
        ({"type": "exact", "tolerance": 1}, "tolerance: Extra inputs are not permitted"),
        ({"type": "json_schema", "schema": {"type": "nope"}}, "invalid JSON schema"),
    ],
)
def test_bad_specs_are_refused_clearly(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        get_grader(spec)
    assert message in str(info.value)
