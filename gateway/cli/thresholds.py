"""``tiergate thresholds suggest``: the threshold of a route for a target escalation or PGR.

Calibrates only on rows the verifier never trained on (:mod:`verifiers.holdout`: the validation
split of its training file, its stored cross-fitted scores, or another file; the training rows
themselves are refused unless ``--allow-in-sample``). Scores each row exactly as the router does
(``score(item)``, no slice label: requests do not carry one), lists every reachable operating
point (:mod:`router.calibration`) and prints the one that meets the target — or what a given
``--threshold`` does — with its accuracy, escalation share, cost and bootstrap interval;
``--out`` draws the curve, ``--json`` prints JSON.
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
    suggest.add_argument("--data", type=Path,
                         help="labelled JSONL (tiergate collect): small_correct, large_correct; "
                              "default: the cross-fitted scores stored with a --refit verifier")
    suggest.add_argument("--split", choices=["auto", "validation", "all"], default="auto",
                         help="rows of --data: auto = the validation split of the verifier's "
                              "own training file (by sha256), all rows of any other file")
    suggest.add_argument("--allow-in-sample", action="store_true",
                         help="accept the verifier's training rows (optimistic figures, warned)")
    suggest.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                         help="resamples of the promise's interval (1000; 0: none)")
    target = suggest.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-escalation", type=float, metavar="SHARE",
                        help="escalate at most this share of requests (0..1)")
    target.add_argument("--target-pgr", type=float, metavar="PGR",
                        help="recover at least this share of the large model's accuracy gain")
    target.add_argument("--threshold", type=float, metavar="T",
                        help="measure this threshold instead of choosing one")
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
        bootstrap,
        check_target,
        format_suggestion,
        measure,
        operating_points,
        suggest,
    )
    from verifiers.artifact import load_artifact
    from verifiers.data import VerifierInput
    from verifiers.errors import VerifierError
    from verifiers.holdout import calibration_rows
    from verifiers.metrics import routing_curve

    if not args.cost_ratio > 0:
        return _fail("--cost-ratio must be positive")
    if args.bootstrap < 0 or args.bootstrap == 1:
        return _fail("--bootstrap takes 0 (no interval) or at least 2 resamples")
    try:
        # Everything the arguments and the labels alone can refuse is refused first: scoring
        # every row, one at a time as the router does, is the slow part (minutes on 2 cores).
        verifier = load_artifact(args.verifier)
        rows = calibration_rows(args.verifier, verifier.manifest, args.data, args.split,
                                args.allow_in_sample)
        if rows.warning is not None:  # before the slow part, not after it
            print(f"WARNING: {rows.warning}", file=sys.stderr)
        small, large = rows.small, rows.large
        if args.threshold is None:
            check_target(small.astype(bool).tolist(), large.astype(bool).tolist(),
                         escalation=args.target_escalation, pgr=args.target_pgr)
        if rows.scores is not None:
            scores = rows.scores.tolist()
        else:
            assert rows.examples is not None
            # Exactly the router's call: the single-request path, no slice label. One row at
            # a time gains nothing from a thread pool: OpenMP/BLAS threads spinning around
            # each tiny predict made this 15x slower on 2 cores.
            progress = Progress(f"scoring {rows.n} rows with {verifier.id}", rows.n)
            scores = []
            with threadpool_limits(limits=1):
                for example in rows.examples:
                    scores.append(verifier.score(VerifierInput(example.prompt, example.small,
                                                               None)))
                    progress.advance()
            progress.done()
        low, high = verifier.manifest.get("score", {}).get("range", (0.0, 1.0))
        mode: Mode = "cascade" if verifier.kind == "answer" else "prompt"
        cost = CostModel(mode, args.cost_ratio)
        points = operating_points(scores, small.astype(bool).tolist(),
                                  large.astype(bool).tolist(), cost, (float(low), float(high)))
        if args.threshold is not None:
            chosen = measure(scores, small.astype(bool).tolist(), large.astype(bool).tolist(),
                             args.threshold, cost)
        else:
            chosen = suggest(points, escalation=args.target_escalation, pgr=args.target_pgr)
        interval = None if args.bootstrap == 0 else bootstrap(
            scores, small.astype(bool).tolist(), large.astype(bool).tolist(), chosen.threshold,
            resamples=args.bootstrap)
    except (VerifierError, CalibrationError, OSError) as exc:
        return _fail(exc)
    target = ({"escalation": args.target_escalation} if args.target_escalation is not None
              else {"pgr": args.target_pgr} if args.target_pgr is not None
              else {"threshold": args.threshold})
    result = Suggestion(chosen, points, float(small.mean()), float(large.mean()), cost, target,
                        interval)
    if args.out is not None:
        from verifiers.plots import plot_thresholds

        curves = {verifier.id: routing_curve(scores, small, large),
                  "random": routing_curve([0.0] * len(scores), small, large),
                  "oracle": routing_curve(large - small, small, large)}
        chosen_index = next((i for i, p in enumerate(points)
                             if p.escalated == chosen.escalated), 0)
        plot_thresholds(args.out, share=[p.share for p in points],
                        accuracy=[p.accuracy for p in points],
                        thresholds=[p.threshold for p in points], chosen=chosen_index,
                        acc_small=result.acc_small, acc_large=result.acc_large, curves=curves,
                        title=f"{verifier.id} on {rows.n} calibration rows")
    # What the route's drift watch compares live decisions with (docs/routing.md): the share
    # this threshold escalates, and the score that splits the rows closest to half and half.
    median = min(points, key=lambda p: abs(p.share - 0.5))
    watch = {"expected_escalation": round(chosen.share, 4),
             "expected_score_median": median.threshold}
    if args.json:
        payload = {"verifier": verifier.id, "data": None if args.data is None else str(args.data),
                   "rows": rows.n, "calibration_rows": rows.source,
                   "in_sample_warning": rows.warning, "route_drift_watch": watch,
                   **result.to_json()}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if rows.warning is not None:
        print(f"WARNING: in-sample calibration: {rows.warning}")
    print(format_suggestion(result, f"{verifier.id} ({verifier.kind}, score "
                                    f"{verifier.score_name}) calibrated on {rows.source}, "
                                    f"scored as the router does (no slice)"))
    if args.out is not None:
        print(f"curve: {args.out}")
    print(f"route drift watch ([routes.{args.route}]): expected_escalation = "
          f"{watch['expected_escalation']!r}, expected_score_median = "
          f"{watch['expected_score_median']!r} ({median.share:.1%} of the rows score at or "
          f"above it)")
    print(f"set it live: curl -X PUT $GATEWAY/admin/routes/{args.route}/threshold "
          f"-H \"authorization: Bearer $ADMIN_KEY\" -d '{{\"threshold\": {chosen.threshold!r}}}'")
    return 0
