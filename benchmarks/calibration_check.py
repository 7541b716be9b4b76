"""Does ``tiergate thresholds suggest`` promise what an independent split delivers?

    PYTHONPATH=. .venv/bin/python benchmarks/calibration_check.py [--task gsm8k mmlu] [--out DIR]

For each RouteLLM task: the rows are split by ``int(sha256(prompt), 16) % 10`` — buckets 2 and 3
are the **independent** file (never trained or calibrated on), the rest the training file (whose
own validation split is buckets 0 and 1). With the project's CLI only: train the default preset
(and once more with ``--refit``), suggest the threshold for 40 % escalation three ways — on the
training file's validation split (the default), on its training rows (``--allow-in-sample``, the
old way) and on the refitted verifier's cross-fitted scores — and measure each threshold on the
independent file (``--threshold T``). Prints the promise with its interval and what was
delivered; the figures are in docs/verifiers.md ("Calibrating a threshold out of sample").
≈ 2 min for GSM8K, ≈ 10 min for MMLU on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verifiers.data import read_examples, write_examples  # noqa: E402

KINDS = {"gsm8k": "answer", "mmlu": "prompt"}
INDEPENDENT = (2, 3)


def tiergate(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=REPO, env=env,
                          check=True, text=True, stdout=subprocess.PIPE)
    return done.stdout


def suggest(*args: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(tiergate("thresholds", "suggest", *args, "--json"))
    return result


def check(task: str, out: Path) -> None:
    every = out / f"{task}-all.jsonl"
    tiergate("verifier", "import-routellm", "--task", task, "--out", str(every))
    rows = read_examples(every).examples
    bucket = [int(hashlib.sha256(r.prompt.encode()).hexdigest(), 16) % 10 for r in rows]
    data, independent = out / f"{task}-data.jsonl", out / f"{task}-independent.jsonl"
    write_examples(data, [r for r, b in zip(rows, bucket, strict=True) if b not in INDEPENDENT])
    write_examples(independent, [r for r, b in zip(rows, bucket, strict=True)
                                 if b in INDEPENDENT])
    plain, refit = out / f"{task}-verifier", out / f"{task}-refit"
    tiergate("verifier", "train", "--data", str(data), "--kind", KINDS[task], "--out", str(plain))
    tiergate("verifier", "train", "--data", str(data), "--kind", KINDS[task], "--out", str(refit),
             "--refit")
    target = ("--target-escalation", "0.4")
    ways = {
        "in-sample (training rows)": (plain, suggest("--verifier", str(plain), "--data",
                                                     str(data), "--split", "all",
                                                     "--allow-in-sample", *target)),
        "validation split": (plain, suggest("--verifier", str(plain), "--data", str(data),
                                            *target)),
        "refit, cross-fitted scores": (refit, suggest("--verifier", str(refit), *target)),
    }
    print(f"== {task}: {len(rows)} rows, independent file {sum(b in INDEPENDENT for b in bucket)}")
    for name, (verifier, promise) in ways.items():
        chosen: dict[str, float] = promise["chosen"]  # type: ignore[assignment]
        interval: dict[str, list[float]] = promise["interval"]  # type: ignore[assignment]
        delivered = suggest("--verifier", str(verifier), "--data", str(independent),
                            "--threshold", str(promise["threshold"]), "--bootstrap", "0")
        got: dict[str, float] = delivered["chosen"]  # type: ignore[assignment]
        inside = (interval["share"][0] <= got["share"] <= interval["share"][1]
                  and interval["accuracy"][0] <= got["accuracy"] <= interval["accuracy"][1])
        print(f"{name:<28} {promise['rows']:>5} rows: promised {chosen['share']:.1%} "
              f"[{interval['share'][0]:.1%}, {interval['share'][1]:.1%}] at "
              f"{chosen['accuracy']:.1%} [{interval['accuracy'][0]:.1%}, "
              f"{interval['accuracy'][1]:.1%}], PGR {chosen['pgr']:.2f}; delivered "
              f"{got['share']:.1%} at {got['accuracy']:.1%}, PGR {got['pgr']:.2f}"
              f"{'' if inside else '  (outside the interval)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--out", type=Path, default=REPO / "var" / "calibration-check")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.task:
        check(task, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
