"""tiergate's own reference pair: two small GPT-2 models trained on checkable synthetic tasks.

``models/ref-small`` and ``models/ref-large`` load with transformers as-is (offline);
``tasks`` generates the task families and the shipped task sets, ``train`` retrains the models,
``evaluate`` scores them per slice. See ``README.md`` in this directory.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
REFERENCE_MODELS: tuple[str, ...] = ("ref-small", "ref-large")


def model_path(name: str) -> Path:
    """The directory of a shipped reference model (``ref-small`` or ``ref-large``)."""
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}; known: {', '.join(REFERENCE_MODELS)}")
    return MODELS_DIR / name
