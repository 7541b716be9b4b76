"""``tiergate verifier ...``: train, evaluate and import data for verifiers from the command line.

Wired into the ``tiergate`` parser by :func:`add_commands`; each handler takes
``(args, settings)`` and returns an exit code (2 with a one-line message for a
:class:`~verifiers.errors.VerifierError`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from verifiers.errors import VerifierError

Handler = Callable[[argparse.Namespace, object], int]
MAX_PROBLEMS_SHOWN = 5


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    verifier = sub.add_parser("verifier", parents=[common],
                              help="train and evaluate routing verifiers")
    actions = verifier.add_subparsers(dest="verifier_command", required=True)

    train = actions.add_parser("train", parents=[common],
                               help="train a verifier and write a versioned artifact")
    train.add_argument("--data", required=True, type=Path, help="JSONL training data")
    train.add_argument("--kind", required=True, choices=["prompt", "answer"])
    train.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    train.add_argument("--target", choices=["gain", "small-wrong"], default="gain",
                       help="what the score predicts (default: expected accuracy gain)")
    train.add_argument("--recipe", choices=["default", "short"], default="default",
                       help="features and classifiers: 'default' (prose, chains of thought) or "
                            "'short' (gradient boosting over shape and logprob features, for "
                            "short structured prompts and answers)")
    train.add_argument("--embeddings", action="store_true",
                       help="add the MiniLM sentence embedding of the prompt to every head "
                            "(optional: needs `make embeddings`)")
    train.add_argument("--validation", type=Path,
                       help="held-out JSONL (default: the prompt-hash validation split of "
                            "--data)")
    train.add_argument("--refit", action="store_true",
                       help="after validating, score every row out of fold (stored as the "
                            "calibration scores of `thresholds suggest`) and refit on all rows")
    train.add_argument("--folds", type=int, default=5,
                       help="with --refit: cross-fitting folds, by prompt hash (5)")
    train.add_argument("--strict", action="store_true", help="fail on the first bad row")
    train.set_defaults(handler=run_train, reads_settings=False)

    evaluate = actions.add_parser("eval", parents=[common],
                                  help="router evaluation of a verifier with baselines")
    evaluate.add_argument("--verifier", required=True, type=Path, help="artifact directory")
    evaluate.add_argument("--data", required=True, type=Path, help="labelled JSONL")
    evaluate.add_argument("--split", choices=["all", "train", "validation"], default="all",
                          help="rows of --data to use, by the prompt-hash split (all)")
    evaluate.add_argument("--no-slices", action="store_true",
                          help="score as if requests carried no slice label")
    evaluate.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                          help="paired-bootstrap resamples for the intervals against the "
                               "trivial baselines (1000; 0: none)")
    evaluate.add_argument("--out", type=Path, help="write summary/curve/slices CSV + PNG here")
    evaluate.add_argument("--strict", action="store_true", help="fail on the first bad row")
    evaluate.set_defaults(handler=run_eval, reads_settings=False)

    convert = actions.add_parser("import-routellm", parents=[common],
                                 help="convert RouteLLM outcome CSVs into training JSONL")
    convert.add_argument("--root", type=Path, default=Path("benchmarks/data/routellm"))
    convert.add_argument("--task", required=True, choices=["mmlu", "gsm8k"])
    convert.add_argument("--out", required=True, type=Path, help="JSONL file to write")
    convert.set_defaults(handler=run_import, reads_settings=False)


def _fail(exc: Exception) -> int:
    print(f"tiergate: {exc}", file=sys.stderr)
    return 2


def _problems(problems: list[str]) -> None:
    if not problems:
        return
    print(f"skipped {len(problems)} malformed rows:", file=sys.stderr)
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"  {problem}", file=sys.stderr)


def run_train(args: argparse.Namespace, settings: object) -> int:
    from verifiers.evaluation import format_report
    from verifiers.training import train_artifact

    print(f"training a {args.kind} verifier ({args.recipe} recipe) on {args.data}, "
          "one thread ...", file=sys.stderr, flush=True)
    try:
        result = train_artifact(args.data, args.kind, args.out, target=args.target,
                                validation_data=args.validation, strict=args.strict,
                                recipe=args.recipe, embeddings=args.embeddings,
                                refit=args.refit, folds=args.folds)
    except (VerifierError, OSError) as exc:
        return _fail(exc)
    _problems(result.problems)
    verifier = result.verifier
    print(f"{verifier.id}  kind={verifier.kind}  score={verifier.score_name}  "
          f"trained on {result.train_rows} rows  -> {args.out}")
    if result.validation is not None:
        print(format_report(result.validation,
                            f"validation ({result.validation.n} rows, by prompt hash)"
                            if args.validation is None else
                            f"validation ({result.validation.n} rows of {args.validation})"))
    else:
        print("no validation rows: the manifest carries no validation metrics")
    if result.refit_rows is not None:
        print(f"refitted on all {result.refit_rows} rows (the figures above are the model's "
              f"before the refit); {args.folds}-fold cross-fitted scores of every row stored "
              f"for `tiergate thresholds suggest --verifier {args.out}`")
    return 0


def run_eval(args: argparse.Namespace, settings: object) -> int:
    from verifiers.artifact import load_artifact
    from verifiers.data import read_examples, split_examples
    from verifiers.evaluation import evaluate, format_report, write_csv

    try:
        verifier = load_artifact(args.verifier)
        dataset = read_examples(args.data, strict=args.strict)
        examples = dataset.examples
        if args.split != "all":
            train, validation = split_examples(examples)
            examples = train if args.split == "train" else validation
        if not examples:
            raise VerifierError(f"{args.data}: no rows in the {args.split} split")
        if args.bootstrap < 0 or args.bootstrap == 1:
            raise VerifierError("--bootstrap takes 0 (no intervals) or at least 2 resamples")
        print(f"scoring {len(examples)} rows with {verifier.id} ...", file=sys.stderr, flush=True)
        report = evaluate(verifier, examples, name=verifier.id or "verifier",
                          use_slices=not args.no_slices, bootstrap=args.bootstrap)
    except (VerifierError, OSError) as exc:
        return _fail(exc)
    _problems(dataset.problems)
    print(format_report(report, f"{verifier.id} ({verifier.kind}, score {verifier.score_name})"
                                f" on {report.n} rows of {args.data} [{args.split}]"))
    if args.out is not None:
        from verifiers.plots import plot_report

        paths = write_csv(report, args.out)
        paths.append(plot_report(report, args.out / "routing_curve.png",
                                 f"{verifier.id} on {args.data.name} [{args.split}]"))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_import(args: argparse.Namespace, settings: object) -> int:
    from verifiers.data import write_examples
    from verifiers.routellm import load_routellm

    try:
        dataset = load_routellm(args.root, args.task)
        write_examples(args.out, dataset.examples)
    except (VerifierError, OSError) as exc:
        return _fail(exc)
    _problems(dataset.problems)
    print(f"wrote {len(dataset.examples)} rows to {args.out} "
          f"({dataset.dropped} contaminated prompts dropped)")
    return 0
