"""Verifier decision cost: latency of scoring ONE request on CPU (the router's hot path).

    .venv/bin/python benchmarks/verifier_latency.py [--prompt-verifier DIR] [--answer-verifier DIR]
        [--embeddings [--prompt-verifier-emb DIR] [--answer-verifier-emb DIR]]

Without artifact directories it trains the RouteLLM presets first (MMLU prompt verifier, GSM8K
answer verifier, train split). Then it scores validation requests one at a time with
``Verifier.score`` (the compiled single-request path), timing each call, and prints p50 / p99
per request — next to scikit-learn's own path on a one-row batch (``score_batch([item])``) for
comparison. Target (issue 5): prompt verifier p50 <= 0.5 ms. Runs single-threaded; each row
also gives the process CPU time per call (the machine may be shared: CPU time is the steadier
figure).

``--embeddings`` (needs ``make embeddings``) also times verifiers that carry the MiniLM prompt
embedding (artifacts given with ``--*-verifier-emb``, else trained on the train split: slow, every
train prompt is encoded) and the encoder alone, and prints their cost as a ratio to the plain
verifier measured in the same run. The 0.5 ms target applies to the plain prompt verifier only.
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


class Timings:
    """Wall-clock milliseconds per call, and the process CPU milliseconds per call."""

    def __init__(self, ms: np.ndarray, cpu_ms: float) -> None:
        self.ms = ms
        self.cpu_ms = cpu_ms


def time_calls(call: Callable[[VerifierInput], object], items: Sequence[VerifierInput],
               repeats: int) -> Timings:
    for item in items[:50]:  # warm caches and lazy imports
        call(item)
    samples = []
    cpu_started = time.process_time_ns()
    for _ in range(repeats):
        for item in items:
            started = time.perf_counter_ns()
            call(item)
            samples.append(time.perf_counter_ns() - started)
    cpu_ms = (time.process_time_ns() - cpu_started) / 1e6 / max(len(samples), 1)
    return Timings(np.array(samples, dtype=np.float64) / 1e6, cpu_ms)


def verifier_for(kind: Kind, directory: Path | None, embeddings: bool = False
                 ) -> tuple[Verifier, list[VerifierInput]]:
    from verifiers.routellm import load_routellm
    from verifiers.spec import preset, with_embeddings
    from verifiers.training import fit

    train, validation = load_routellm(DATA, "mmlu" if kind == "prompt" else "gsm8k").split()
    if directory is not None:
        from verifiers.artifact import load_artifact

        verifier = load_artifact(directory)
    else:
        label = " with embeddings" if embeddings else ""
        print(f"training the {kind} verifier{label} ...", file=sys.stderr)
        spec = preset(kind)
        verifier = fit(train, with_embeddings(spec) if embeddings else spec)
    return verifier, [e.input for e in validation]


def report(label: str, timings: Timings) -> str:
    ms = timings.ms
    return (f"{label:<48} p50 {np.percentile(ms, 50):7.3f} ms   p99 "
            f"{np.percentile(ms, 99):7.3f} ms   mean {ms.mean():7.3f} ms   "
            f"cpu {timings.cpu_ms:7.3f} ms   n={len(ms)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-verifier", type=Path)
    parser.add_argument("--answer-verifier", type=Path)
    parser.add_argument("--requests", type=int, default=1000, help="distinct requests per kind")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embeddings", action="store_true",
                        help="also time verifiers with the MiniLM prompt embedding")
    parser.add_argument("--prompt-verifier-emb", type=Path)
    parser.add_argument("--answer-verifier-emb", type=Path)
    parser.add_argument("--emb-requests", type=int, default=300,
                        help="distinct requests per kind for the embedding rows (one pass)")
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
        if args.embeddings:
            rows += embedding_rows(args, prompt_items, answer_items, rows)
    print(f"single-request scoring on CPU, 1 thread ({prompt.id or 'prompt'} / "
          f"{answer.id or 'answer'})")
    for label, timings in rows:
        print(report(label, timings))
    if args.embeddings:
        for kind, plain_row, emb_label in (("prompt", 0, "prompt verifier + embeddings"),
                                           ("answer", 3, "answer verifier + embeddings")):
            emb = dict(rows)[emb_label]
            base = rows[plain_row][1]
            print(f"{kind} verifier with embeddings: p50 "
                  f"{np.percentile(emb.ms, 50) / np.percentile(base.ms, 50):.0f} x, CPU "
                  f"{emb.cpu_ms / base.cpu_ms:.0f} x the plain verifier's (same run)")
    p50 = float(np.percentile(rows[0][1].ms, 50))
    ratio = p50 / TARGET_P50_MS
    verdict = "PASS" if ratio <= 1 else "FAIL"
    print(f"{verdict}: prompt verifier p50 {p50:.3f} ms = {ratio:.2f} x the {TARGET_P50_MS} ms "
          f"target")
    return 0 if ratio <= 1 else 1


def embedding_rows(args: argparse.Namespace, prompt_items: Sequence[VerifierInput],
                   answer_items: Sequence[VerifierInput],
                   rows: list[tuple[str, Timings]]) -> list[tuple[str, Timings]]:
    """The embedding verifiers (one pass over fewer requests: each call encodes the prompt)."""
    prompt, _ = verifier_for("prompt", args.prompt_verifier_emb, embeddings=True)
    answer, _ = verifier_for("answer", args.answer_verifier_emb, embeddings=True)
    encoder = next(e for e in prompt.featurizer.extractors if e.name == "prompt_embedding")
    prompts = prompt_items[: args.emb_requests]
    answers = answer_items[: args.emb_requests]
    return [
        ("MiniLM encoder alone, MMLU prompt", time_calls(encoder.values, prompts, 1)),
        ("prompt verifier + embeddings", time_calls(prompt.score, prompts, 1)),
        ("answer verifier + embeddings", time_calls(answer.score, answers, 1)),
    ]


if __name__ == "__main__":
    sys.exit(main())
