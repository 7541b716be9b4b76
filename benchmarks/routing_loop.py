"""The routing loop on the reference pair, end to end, measured through a running gateway.

    PYTHONPATH=. .venv/bin/python benchmarks/routing_loop.py [--out-dir var/loop] [--ship]

1. ``tiergate collect`` on ``reference-train.jsonl``: ref-small-int8 and ref-large answer every
   item (greedy, logprobs kept), the exact grader labels both -> training JSONL;
2. ``tiergate verifier train --kind answer --recipe short`` -> a cascade verifier artifact;
3. ``tiergate thresholds suggest --target-escalation 0.4 --split validation`` -> threshold,
   calibrated on the validation split of the training data (the rows the verifier never trained
   on; the training rows themselves are refused), with its bootstrap interval;
4. a gateway (``tiergate serve``) with the configured models and route ``auto`` = cascade with
   that artifact and threshold, on a free loopback port;
5. the **held-out** task set (``reference-heldout.jsonl``, never used above) sent through the
   gateway over HTTP: to ``auto``, and for comparison straight to ``ref-small-int8`` and
   ``ref-large``; graded with each item's grader; ``auto``'s escalation share is read from the
   ``x-tiergate-escalated`` response header.

Target (issue 5): ``auto`` within 1 point of the large model's accuracy while escalating at
most 40 % of requests; exit status 1 when missed. ``--ship`` writes the artifact to
``gateway/reference/verifiers/ref-auto`` (what ``deploy/local/tiergate.toml`` serves) and
prints the route section to pin in the config; without it everything stays under
``--out-dir``. ``--verifier DIR --threshold T`` skips steps 1-3 and measures a given artifact
(e.g. the shipped one with the shipped threshold).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.evals.tasksets import TaskItem, load_taskset  # noqa: E402
from gateway.settings import read_config_file  # noqa: E402

TASKSETS = REPO / "gateway" / "reference" / "tasksets"
SHIPPED = REPO / "gateway" / "reference" / "verifiers" / "ref-auto"
CONFIG = REPO / "deploy" / "local" / "tiergate.toml"
SMALL, LARGE, ROUTE = "ref-small-int8", "ref-large", "auto"
MAX_ESCALATION, MAX_GAP = 0.40, 0.01


def tiergate(*args: str, capture: bool = False) -> str:
    """Run one ``tiergate`` command (the one in this interpreter's environment), echo it."""
    command = [sys.executable, "-m", "gateway", *args]
    print("$ tiergate " + " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout if capture else ""


@dataclass(slots=True)
class Answered:
    item: TaskItem
    passed: bool
    escalated: bool
    model: str


async def send_all(url: str, model: str, items: list[TaskItem], concurrency: int) -> list[Answered]:
    """Every item as an OpenAI completion request (greedy) to ``model`` through the gateway."""
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(item: TaskItem) -> Answered:
            async with semaphore:
                response = await client.post("/v1/completions", json={
                    "model": model, "prompt": item.prompt, "max_tokens": item.max_tokens,
                    "temperature": 0})
            response.raise_for_status()
            body = response.json()
            text = body["choices"][0]["text"]
            return Answered(item, item.grade(text).passed,
                            response.headers.get("x-tiergate-escalated") == "true",
                            body["model"])

        return list(await asyncio.gather(*(one(item) for item in items)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
        cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited ({process.returncode}): see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    raise RuntimeError(f"the gateway did not start in 180 s: see {log}")


def routed_config(out_dir: Path, verifier: Path, threshold: float) -> Path:
    """The default config with route ``auto`` set to the verifier and threshold under test."""
    import yaml

    data = read_config_file(CONFIG)  # relative paths resolved against deploy/local
    data.setdefault("routes", {})[ROUTE] = {
        "mode": "cascade", "small": SMALL, "large": LARGE, "verifier": str(verifier.resolve()),
        "verifier_sha256": json.loads((verifier / "manifest.json").read_text())["sha256"],
        "threshold": threshold}
    data.setdefault("records", {})["spool_dir"] = str((out_dir / "spool").resolve())
    data["records"]["sink"] = "none"
    path = out_dir / "gateway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def table(results: dict[str, list[Answered]]) -> tuple[str, dict[str, float]]:
    slices: dict[str, dict[str, list[Answered]]] = defaultdict(dict)
    for name, answered in results.items():
        for entry in answered:
            slices[entry.item.slice].setdefault(name, []).append(entry)
    names = list(results)
    lines = [f"{'slice':<10}" + "".join(f"{n:>16}" for n in names) + f"{'auto escalated':>16}"]
    rows = [*slices.items(), ("ALL", {n: results[n] for n in names})]
    overall: dict[str, float] = {}
    for slice_name, by_model in rows:
        cells = "".join(f"{sum(a.passed for a in by_model[n]) / len(by_model[n]):>16.1%}"
                        for n in names)
        routed = by_model[ROUTE]
        lines.append(f"{slice_name:<10}{cells}"
                     f"{sum(a.escalated for a in routed) / len(routed):>16.1%}")
    for n in names:
        overall[n] = sum(a.passed for a in results[n]) / len(results[n])
    overall["escalated"] = sum(a.escalated for a in results[ROUTE]) / len(results[ROUTE])
    return "\n".join(lines), overall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=REPO / "var" / "loop")
    parser.add_argument("--ship", action="store_true",
                        help=f"write the artifact to {SHIPPED.relative_to(REPO)}")
    parser.add_argument("--target-escalation", type=float, default=0.4)
    parser.add_argument("--verifier", type=Path, help="measure this artifact (skip 1-3)")
    parser.add_argument("--threshold", type=float, help="with --verifier: its threshold")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    config = str(CONFIG)

    if args.verifier is not None:
        if args.threshold is None:
            parser.error("--verifier needs --threshold")
        verifier, threshold = args.verifier, args.threshold
    else:
        data = out / "reference-train-pairs.jsonl"
        verifier = SHIPPED if args.ship else out / "ref-auto"
        tiergate("collect", "--config", config, "--task-set",
                 str(TASKSETS / "reference-train.jsonl"), "--small", SMALL, "--large", LARGE,
                 "--out", str(data), "--concurrency", str(args.concurrency))
        tiergate("verifier", "train", "--data", str(data), "--kind", "answer", "--recipe",
                 "short", "--out", str(verifier))
        calibrate = ("thresholds", "suggest", "--verifier", str(verifier), "--data", str(data),
                     "--split", "validation", "--target-escalation", str(args.target_escalation))
        tiergate(*calibrate, "--out", str(out / "thresholds.png"))
        suggestion = json.loads(tiergate(*calibrate, "--json", capture=True))
        threshold = float(suggestion["threshold"])

    manifest = json.loads((verifier / "manifest.json").read_text(encoding="utf-8"))
    print(f"\nroute {ROUTE}: cascade {SMALL} -> {LARGE}, verifier {manifest['id']}, "
          f"threshold {threshold!r}")
    items = load_taskset(TASKSETS / "reference-heldout.jsonl")
    port = free_port()
    gateway = start_gateway(routed_config(out, verifier, threshold), port, out / "gateway.log")
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        results = {name: asyncio.run(send_all(url, name, items, args.concurrency))
                   for name in (SMALL, LARGE, ROUTE)}
        wall = time.perf_counter() - started
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
    text, overall = table(results)
    print(f"\nheld-out set ({len(items)} items) through the gateway, {wall:.0f} s:\n{text}")
    gap = overall[LARGE] - overall[ROUTE]
    ok = gap <= MAX_GAP + 1e-9 and overall["escalated"] <= MAX_ESCALATION + 1e-9
    print(f"\n{ROUTE}: accuracy {overall[ROUTE]:.1%} (small {overall[SMALL]:.1%}, large "
          f"{overall[LARGE]:.1%}: {-gap * 100:+.1f} points), escalated "
          f"{overall['escalated']:.1%}")
    print(("PASS" if ok else "FAIL") + f": within {MAX_GAP * 100:.0f} point of the large model "
          f"while escalating <= {MAX_ESCALATION:.0%}")
    if args.ship:
        print(f'\n[routes.{ROUTE}]\nmode = "cascade"\nsmall = "{SMALL}"\nlarge = "{LARGE}"\n'
              f'verifier = "../../gateway/reference/verifiers/ref-auto"\n'
              f'verifier_sha256 = "{manifest["sha256"]}"\nthreshold = {threshold!r}')
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
