"""``tiergate thresholds suggest``: the threshold of a route for a target escalation or PGR.

Scores every labelled row with the verifier exactly as the router does (``score(item)``, no
slice label: requests do not carry one), lists every reachable operating point
(:mod:`router.calibration`) and prints the one that meets the target, with its expected
accuracy, escalation share and cost; ``--out`` draws the curve, ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from gateway.settings import Settings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    thresholds = sub.add_parser("thresholds", parents=[common],
                                help="calibrate route thresholds on labelled data")
    actions = thresholds.add_subparsers(dest="thresholds_command", required=True)
    suggest = actions.add_parser(
        "suggest", parents=[common],
        help="the threshold for a target escalation share or PGR, with accuracy and cost")
    suggest.add_argument("--verifier", required=True, type=Path, help="artifact directory")
    suggest.add_argument("--data", required=True, type=Path,
                         help="labelled JSONL (tiergate collect): small_correct, large_correct")
    target = suggest.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-escalation", type=float, metavar="SHARE",
                        help="escalate at most this share of requests (0..1)")
    target.add_argument("--target-pgr", type=float, metavar="PGR",
                        help="recover at least this share of the large model's accuracy gain")
    suggest.add_argument("--cost-ratio", type=float, default=10.0,
                         help="cost of one large call in small calls (10)")
    suggest.add_argument("--route", default="auto", help="route named in the admin hint (auto)")
    suggest.add_argument("--out", type=Path, help="write the curve as a PNG here")
    suggest.add_argument("--json", action="store_true", help="print JSON instead of a table")
    suggest.set_defaults(handler=run_suggest, reads_settings=False)


def _fail(message: object) -> int:
    print(f"tiergate: {message}", file=sys.stderr)
    return 2


def run_suggest(args: argparse.Namespace, settings: Settings) -> int:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

    from gateway.cli.progress import Progress
    from router.calibration import (
        CalibrationError,
        CostModel,
        Mode,
        Suggestion,
        check_target,
        format_suggestion,
        operating_points,
        suggest,
    )
    from verifiers.artifact import load_artifact
    from verifiers.data import VerifierInput, read_examples
    from verifiers.errors import VerifierError
    from verifiers.evaluation import labels_of
    from verifiers.metrics import routing_curve

    if not args.cost_ratio > 0:
        return _fail("--cost-ratio must be positive")
    try:
        # Everything the arguments and the labels alone can refuse is refused first: scoring
        # every row, one at a time as the router does, is the slow part (minutes on 2 cores).
        dataset = read_examples(args.data)
        examples = dataset.examples
        small, large = labels_of(examples)
        check_target(small.astype(bool).tolist(), large.astype(bool).tolist(),
                     escalation=args.target_escalation, pgr=args.target_pgr)
        verifier = load_artifact(args.verifier)
        # Exactly the router's call: the single-request path, no slice label. One row at a time
        # gains nothing from a thread pool: OpenMP/BLAS threads spinning around each tiny
        # predict made this 15x slower on 2 cores.
        progress = Progress(f"scoring {len(examples)} rows with {verifier.id}", len(examples))
        scores = []
        with threadpool_limits(limits=1):
            for example in examples:
                scores.append(verifier.score(VerifierInput(example.prompt, example.small, None)))
                progress.advance()
        progress.done()
        low, high = verifier.manifest.get("score", {}).get("range", (0.0, 1.0))
        mode: Mode = "cascade" if verifier.kind == "answer" else "prompt"
        cost = CostModel(mode, args.cost_ratio)
        points = operating_points(scores, small.astype(bool).tolist(),
                                  large.astype(bool).tolist(), cost, (float(low), float(high)))
        chosen = suggest(points, escalation=args.target_escalation, pgr=args.target_pgr)
    except (VerifierError, CalibrationError, OSError) as exc:
        return _fail(exc)
    target = ({"escalation": args.target_escalation} if args.target_escalation is not None
              else {"pgr": args.target_pgr})
    result = Suggestion(chosen, points, float(small.mean()), float(large.mean()), cost, target)
    if args.out is not None:
        from verifiers.plots import plot_thresholds

        curves = {verifier.id: routing_curve(scores, small, large),
                  "random": routing_curve([0.0] * len(scores), small, large),
                  "oracle": routing_curve(large - small, small, large)}
        plot_thresholds(args.out, share=[p.share for p in points],
                        accuracy=[p.accuracy for p in points],
                        thresholds=[p.threshold for p in points], chosen=points.index(chosen),
                        acc_small=result.acc_small, acc_large=result.acc_large, curves=curves,
                        title=f"{verifier.id} on {args.data.name} ({len(examples)} rows)")
    if args.json:
        payload = {"verifier": verifier.id, "data": str(args.data), "rows": len(examples),
                   **result.to_json()}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(format_suggestion(result, f"{verifier.id} ({verifier.kind}, score "
                                    f"{verifier.score_name}) on {len(examples)} rows of "
                                    f"{args.data}, scored as the router does (no slice)"))
    if args.out is not None:
        print(f"curve: {args.out}")
    print(f"set it live: curl -X PUT $GATEWAY/admin/routes/{args.route}/threshold "
          f"-H \"authorization: Bearer $ADMIN_KEY\" -d '{{\"threshold\": {chosen.threshold!r}}}'")
    return 0
