"""Verifier decision cost: latency of scoring ONE request on CPU (the router's hot path).

    .venv/bin/python benchmarks/verifier_latency.py [--prompt-verifier DIR] [--answer-verifier DIR]

Without artifact directories it trains the RouteLLM presets first (MMLU prompt verifier, GSM8K
answer verifier, train split). Then it scores validation requests one at a time with
``Verifier.score`` (the compiled single-request path), timing each call, and prints p50 / p99
per request — next to scikit-learn's own path on a one-row batch (``score_batch([item])``) for
comparison. Target (issue 5): prompt verifier p50 <= 0.5 ms. Runs single-threaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifiers.data import VerifierInput
from verifiers.scoring import Verifier
from verifiers.spec import Kind

DATA = Path(__file__).resolve().parent / "data" / "routellm"
TARGET_P50_MS = 0.5


def time_calls(call: Callable[[VerifierInput], object], items: Sequence[VerifierInput],
               repeats: int) -> np.ndarray:
    for item in items[:50]:  # warm caches and lazy imports
        call(item)
    samples = []
    for _ in range(repeats):
        for item in items:
            started = time.perf_counter_ns()
            call(item)
            samples.append(time.perf_counter_ns() - started)
    return np.array(samples, dtype=np.float64) / 1e6


def verifier_for(kind: Kind, directory: Path | None) -> tuple[Verifier, list[VerifierInput]]:
    from verifiers.routellm import load_routellm
    from verifiers.spec import preset
    from verifiers.training import fit

    train, validation = load_routellm(DATA, "mmlu" if kind == "prompt" else "gsm8k").split()
    if directory is not None:
        from verifiers.artifact import load_artifact

        verifier = load_artifact(directory)
    else:
        print(f"training the {kind} verifier ...", file=sys.stderr)
        verifier = fit(train, preset(kind))
    return verifier, [e.input for e in validation]


def report(label: str, ms: np.ndarray) -> str:
    return (f"{label:<44} p50 {np.percentile(ms, 50):7.3f} ms   p99 "
            f"{np.percentile(ms, 99):7.3f} ms   mean {ms.mean():7.3f} ms   n={len(ms)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-verifier", type=Path)
    parser.add_argument("--answer-verifier", type=Path)
    parser.add_argument("--requests", type=int, default=1000, help="distinct requests per kind")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

    with threadpool_limits(limits=1):
        prompt, prompt_items = verifier_for("prompt", args.prompt_verifier)
        answer, answer_items = verifier_for("answer", args.answer_verifier)
        prompt_items = prompt_items[: args.requests]
        answer_items = answer_items[: args.requests]
        unlabelled = [VerifierInput(item.prompt) for item in prompt_items]
        rows = [
            ("prompt verifier (MMLU), score(item)",
             time_calls(prompt.score, prompt_items, args.repeats)),
            ("prompt verifier, request without slice label",
             time_calls(prompt.score, unlabelled, args.repeats)),
            ("prompt verifier, sklearn one-row batch",
             time_calls(lambda item: prompt.score_batch([item]), prompt_items[:200], 1)),
            ("answer verifier (GSM8K), score(item)",
             time_calls(answer.score, answer_items, args.repeats)),
            ("answer verifier, sklearn one-row batch",
             time_calls(lambda item: answer.score_batch([item]), answer_items[:200], 1)),
        ]
    print(f"single-request scoring on CPU, 1 thread ({prompt.id or 'prompt'} / "
          f"{answer.id or 'answer'})")
    for label, ms in rows:
        print(report(label, ms))
    p50 = float(np.percentile(rows[0][1], 50))
    ratio = p50 / TARGET_P50_MS
    verdict = "PASS" if ratio <= 1 else "FAIL"
    print(f"{verdict}: prompt verifier p50 {p50:.3f} ms = {ratio:.2f} x the {TARGET_P50_MS} ms "
          f"target")
    return 0 if ratio <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
