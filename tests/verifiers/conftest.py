"""Small verifiers trained once per session on subsets of the copied RouteLLM data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from verifiers.data import Example
from verifiers.routellm import load_routellm
from verifiers.scoring import Verifier
from verifiers.spec import preset
from verifiers.training import fit

ROUTELLM = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "routellm"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """BLAS / OpenMP on one thread while these modules run (the machine is shared, and
    oversubscribed gradient boosting is many times slower); other packages' tests keep theirs."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def gsm8k_split() -> tuple[list[Example], list[Example]]:
    return load_routellm(ROUTELLM, "gsm8k").split()


@pytest.fixture(scope="session")
def mmlu_split() -> tuple[list[Example], list[Example]]:
    train, validation = load_routellm(ROUTELLM, "mmlu").split()
    # every 6th row: all 57 subjects, ~1400 train rows, fast to fit
    return train[::6], validation[::6]


@pytest.fixture(scope="session")
def answer_verifier(gsm8k_split: tuple[list[Example], list[Example]]) -> Verifier:
    return fit(gsm8k_split[0][:300], preset("answer"))


@pytest.fixture(scope="session")
def prompt_verifier(mmlu_split: tuple[list[Example], list[Example]]) -> Verifier:
    return fit(mmlu_split[0], preset("prompt"))
