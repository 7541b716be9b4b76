"""Loaders for the RouteLLM outcomes (``benchmarks/data/routellm``) into :class:`Example`.

- MMLU: ``mmlu/responses/mmlu_<subject>.csv`` with ``prompt, <weak>, <strong>`` (True/False);
  the subject (from the file name) becomes the row's ``slice``. No answers.
- GSM8K: ``gsm8k/gsm8k_responses.csv`` with both models' full answers (no logprobs).

Prompts listed as ``eval_prompt`` in ``<task>/contaminated_prompts.jsonl`` are dropped. Rows
that cannot be read (wrong column count, a label that is not True/False, an empty prompt) are
skipped and listed in :attr:`Dataset.problems`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from verifiers.data import Answer, Dataset, Example
from verifiers.errors import DataFormatError

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
Task = Literal["mmlu", "gsm8k"]
_BOOL = {"True": True, "False": False, "true": True, "false": False}


def load_routellm(root: Path, task: Task) -> Dataset:
    if task == "mmlu":
        return load_mmlu(root)
    if task == "gsm8k":
        return load_gsm8k(root)
    raise DataFormatError(f"unknown RouteLLM task {task!r} (mmlu, gsm8k)")


def contaminated_prompts(path: Path) -> set[str]:
    if not path.exists():
        return set()
    prompts: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)["eval_prompt"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(f"{path}:{number}: no 'eval_prompt' ({exc})") from exc
        prompts.add(str(prompt))
    return prompts


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    csv.field_size_limit(1 << 26)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            return header, list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"cannot read {path}: {exc}") from exc


def _columns(path: Path, header: list[str], names: list[str]) -> list[int]:
    missing = [name for name in names if name not in header]
    if missing:
        raise DataFormatError(f"{path}: missing columns {missing}")
    return [header.index(name) for name in names]


def _usable(dataset: Dataset, path: Path, number: int, header: list[str], row: list[str],
            columns: list[int], banned: set[str]) -> bool:
    """Whether a CSV row becomes an example: a broken row is listed in ``problems``, a
    contaminated prompt counted in ``dropped``. ``columns`` start with prompt, weak, strong."""
    if len(row) != len(header):
        dataset.problems.append(f"{path}:{number}: {len(row)} columns, not {len(header)}")
        return False
    prompt, weak, strong = (row[i] for i in columns[:3])
    if not prompt.strip() or weak not in _BOOL or strong not in _BOOL:
        dataset.problems.append(f"{path}:{number}: empty prompt or label not True/False")
        return False
    if prompt in banned:
        dataset.dropped += 1
        return False
    return True


def load_mmlu(root: Path) -> Dataset:
    files = sorted((root / "mmlu" / "responses").glob("mmlu_*.csv"))
    if not files:
        raise DataFormatError(f"no mmlu/responses/mmlu_*.csv under {root}")
    banned = contaminated_prompts(root / "mmlu" / "contaminated_prompts.jsonl")
    dataset = Dataset([])
    for path in files:
        subject = path.stem.removeprefix("mmlu_")
        header, rows = _rows(path)
        columns = _columns(path, header, ["prompt", WEAK, STRONG])
        for number, row in enumerate(rows, start=2):
            if not _usable(dataset, path, number, header, row, columns, banned):
                continue
            prompt, weak, strong = (row[i] for i in columns)
            dataset.examples.append(Example(
                id=f"mmlu-{subject}-{number:04d}",
                request={"messages": [{"role": "user", "content": prompt}]},
                small_correct=_BOOL[weak], large_correct=_BOOL[strong], slice=subject))
    return dataset


def load_gsm8k(root: Path) -> Dataset:
    path = root / "gsm8k" / "gsm8k_responses.csv"
    banned = contaminated_prompts(root / "gsm8k" / "contaminated_prompts.jsonl")
    header, rows = _rows(path)
    columns = _columns(path, header, ["prompt", WEAK, STRONG, f"{WEAK}_response",
                                      f"{STRONG}_response"])
    dataset = Dataset([])
    for number, row in enumerate(rows, start=2):
        if not _usable(dataset, path, number, header, row, columns, banned):
            continue
        prompt, weak, strong, weak_text, strong_text = (row[i] for i in columns)
        dataset.examples.append(Example(
            id=f"gsm8k-{number:04d}",
            request={"messages": [{"role": "user", "content": prompt}]},
            small_correct=_BOOL[weak], large_correct=_BOOL[strong],
            small=Answer(weak_text), large=Answer(strong_text), slice="gsm8k"))
    return dataset
