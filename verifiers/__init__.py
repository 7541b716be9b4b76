"""Verifiers: trained classifiers that decide whether the small model's answer is good enough.

Plain objects in, plain objects out (no HTTP layer), so a notebook, the CLI and the server share
the same code. Importing this package is cheap; scikit-learn is imported by the modules that
fit or load models.

- :mod:`verifiers.data` — the JSONL training-data format, :class:`~verifiers.data.VerifierInput`,
  the stable prompt-hash split; :mod:`verifiers.routellm` — loaders for the RouteLLM outcomes.
- :mod:`verifiers.features` — numeric feature extractors by name; :mod:`verifiers.arithmetic`
  — re-computing the arithmetic in an answer's chain of thought.
- :mod:`verifiers.spec` / :mod:`verifiers.models` — what a verifier is made of and how it is fit.
- :mod:`verifiers.scoring` — :class:`~verifiers.scoring.Verifier` (``score`` / ``score_batch``).
- :mod:`verifiers.artifact` — versioned, integrity-checked skops artifacts.
- :mod:`verifiers.metrics` / :mod:`verifiers.evaluation` / :mod:`verifiers.plots` — APGR, CPT,
  AUC, ECE, routing curves and baselines.
- :mod:`verifiers.commands` — ``tiergate verifier train | eval | import-routellm``.

Typical use::

    from verifiers.artifact import load_artifact
    from verifiers.data import VerifierInput

    verifier = load_artifact(Path("var/verifiers/gsm8k-answer"))
    item = VerifierInput.from_request({"messages": [...]}, answer="... #### 18")
    escalate = verifier.score(item) >= threshold
"""

from __future__ import annotations
