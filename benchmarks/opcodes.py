"""Python opcodes per request in tiergate's worker, this build against another checkout.

On a shared machine wall-clock and ``/proc`` CPU figures of two builds move by ±10 % from run
to run, more than the change being judged. The number of Python opcodes the worker executes
per request does not depend on the machine's load: this benchmark counts them.

    .venv/bin/python benchmarks/opcodes.py --baseline DIR [--requests 500] [--top 25]

``DIR`` is a checkout of another commit (``git worktree add --detach /tmp/base REV``). Both
builds are served the way ``benchmarks/overhead.py`` serves tiergate (its settings: one
worker, metrics and tracing on, decode records in SQLite) from one fixed-response upstream;
each worker runs under a launcher that turns ``sys.settrace`` with ``f_trace_opcodes`` on and
off at a signal (SIGUSR1 on, SIGUSR2 off and write the counts per function). After a warm-up,
for each build and phase, the counter is on while exactly ``--requests`` requests run:

- ``json``: sequential chat completions (``overhead.BODY``);
- ``sse``: sequential streamed ones (``echo``: ~20 chunks);
- ``@32``: the same JSON requests from 32 concurrent clients (which requests share an
  event-loop iteration varies, so this figure moves by a few opcodes per request).

It prints opcodes per request for each build and the ratio this build / baseline, and with
``--top K`` the K functions whose opcodes per JSON and per SSE request differ most between
the two.

What the count does not see: native work (pydantic's validation, orjson, uvloop, httptools,
the kernel's socket work, the garbage collector), which is the same code in both builds unless
a dependency changed, but is a large part of a request's CPU; other threads than the main one
(the request path runs on it); and the records delivery process. So the run also measures,
untraced and before the count, CPU per request the way ``overhead.py`` does (each server's
process tree from ``/proc``, interleaved blocks; ``--cpu-requests 0`` skips it): context, with
that method's noise (and its resolution: ``/proc`` counts in 10-ms ticks, ~60 of them per
build and phase at the default 1000 requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.overhead import (  # noqa: E402
    CHAT,
    Target,
    concurrent,
    one_request,
    sequential,
    stream_body,
    tiergate_config,
    ttfb,
    ungated,
)
from tests.conftest import ServerProcess, free_port, start_server  # noqa: E402

LAUNCHER = r"""
import collections, json, os, runpy, signal, sys
counts = collections.Counter()
control = sys.argv.pop(1)

def opcode(frame, event, arg):
    if event == "opcode":
        counts[frame.f_code] += 1
    return opcode

def call(frame, event, arg):
    frame.f_trace_opcodes = True
    code = frame.f_code
    if code.co_filename != "<string>":
        return opcode
    # generated code (a dataclass's __init__): named after the class of its first argument
    first = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
    key = f"<string>:{type(first).__qualname__}.{code.co_name}"

    def generated(frame, event, arg):
        if event == "opcode":
            counts[key] += 1
        return generated
    return generated

def start(signum, frame):
    counts.clear()
    sys.settrace(call)
    open(control + ".on", "w").close()

def stop(signum, frame):
    sys.settrace(None)
    per_function = collections.Counter()
    for code, n in counts.items():
        if not isinstance(code, str):
            code = f"{code.co_filename}:{code.co_qualname}"
        per_function[code] += n
    with open(control + ".tmp", "w") as out:
        json.dump(per_function, out)
    os.replace(control + ".tmp", control + ".counts")

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv[0] = "gateway"
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
"""
"""Runs ``python -m gateway ARGS`` in the worker's own process, the opcode counter (main thread)
switched by SIGUSR1 / SIGUSR2; ``python -c``, so that each build imports only its own
checkout."""


class Counted:
    """A tiergate worker under the launcher: counts the opcodes it runs while ``requests`` do."""

    def __init__(self, server: ServerProcess, control: Path, root: Path) -> None:
        self.server, self.control, self.root = server, control, root

    async def count(self, requests: Awaitable[None]) -> Counter[str]:
        """Opcodes per function (path relative to the checkout or site-packages) while
        ``requests`` run."""
        self.switch(signal.SIGUSR1, ".on")
        await requests
        return Counter({self.relative(name): n for name, n in
                        json.loads(self.switch(signal.SIGUSR2, ".counts").read_text()).items()})

    def switch(self, signum: int, answer: str) -> Path:
        """Send ``signum`` and wait for the worker's answer, the file ``control + answer`` (no
        request is in flight meanwhile: blocking the client's loop costs nothing)."""
        path = Path(f"{self.control}{answer}")
        path.unlink(missing_ok=True)
        self.server.process.send_signal(signum)
        deadline = time.monotonic() + 30
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the traced worker did not answer signal {signum}")
            time.sleep(0.01)
        return path

    def relative(self, name: str) -> str:
        for prefix in (f"{self.root}/", "site-packages/"):
            if prefix in name:
                return name.split(prefix, 1)[1]
        return name


def serve(name: str, root: Path, work: Path, upstream: str) -> Counted:
    """One build, from checkout ``root``, served as overhead.py serves tiergate."""
    (work / name).mkdir()
    config = tiergate_config(work / name, upstream, 10, "sqlite")
    port = free_port()
    server = start_server(
        [sys.executable, "-c", LAUNCHER, str(work / name / "control"), "serve", "--config",
         str(config), "--port", str(port), "--workers", "1"],
        port, work / f"{name}.log", cwd=root,
        env={"PYTHONPATH": str(root), "TIERGATE_TELEMETRY__TRACE_SAMPLE_RATIO": "0",
             **ungated(work / name)})
    return Counted(server, work / name / "control", root)


async def sequential_json(session: aiohttp.ClientSession, url: str, n: int) -> None:
    for _ in range(n):
        await one_request(session, url + CHAT)


async def sequential_sse(session: aiohttp.ClientSession, url: str, n: int) -> None:
    body = stream_body("echo")
    for _ in range(n):
        await one_request(session, url + CHAT, body)


async def concurrent_json(session: aiohttp.ClientSession, url: str, n: int) -> None:
    await asyncio.gather(*(sequential_json(session, url, n // 32) for _ in range(32)))


PHASES = {"json": sequential_json, "sse": sequential_sse, "@32": concurrent_json}


async def measure(builds: dict[str, Counted], args: argparse.Namespace) -> None:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        for build in builds.values():  # warm-up: caches, lazy imports, pooled connections
            for phase in PHASES.values():
                await phase(session, build.server.url, 200)
        if args.cpu_requests:
            await cpu_context(session, builds, args)
        per_request: dict[str, dict[str, float]] = {name: {} for name in builds}
        functions: dict[str, dict[str, Counter[str]]] = {"json": {}, "sse": {}}
        for phase_name, phase in PHASES.items():
            n = args.requests - args.requests % 32 if phase_name == "@32" else args.requests
            for name, build in builds.items():
                counts = await build.count(phase(session, build.server.url, n))
                per_request[name][phase_name] = sum(counts.values()) / n
                if phase_name in functions:
                    functions[phase_name][name] = counts
    print(f"\nPython opcodes per request in the worker (main thread; {args.requests} requests "
          "per phase, sys.settrace with f_trace_opcodes)")
    print(f"  {'':<12}" + "".join(f"{p:>10}" for p in PHASES))
    for name, figures in per_request.items():
        print(f"  {name:<12}" + "".join(f"{figures[p]:>10.0f}" for p in PHASES))
    new, base = per_request["this build"], per_request["baseline"]
    print(f"  {'ratio':<12}" + "".join(f"{new[p] / base[p]:>9.3f}x" for p in PHASES))
    if args.top:
        for phase_name, counted in functions.items():
            top(phase_name, counted, args)


def top(phase: str, functions: dict[str, Counter[str]], args: argparse.Namespace) -> None:
    """The ``--top`` functions whose opcodes per request of ``phase`` differ most, matched by
    qualified name (a function that moved to another module still pairs with itself)."""
    by_name: dict[str, Counter[str]] = {}
    where: dict[str, str] = {}
    for build, counts in functions.items():
        by_name[build] = Counter()
        for function, n in counts.items():
            path, _, name = function.rpartition(":")
            by_name[build][name] += n
            where.setdefault(name, path)
    difference = Counter(by_name["this build"])
    difference.subtract(by_name["baseline"])
    print(f"\nfunctions whose opcodes per {phase} request differ most (this build - baseline; "
          "this build, baseline):")
    for name, delta in sorted(difference.items(), key=lambda item: -abs(item[1]))[:args.top]:
        new, base = by_name["this build"][name], by_name["baseline"][name]
        print(f"  {delta / args.requests:>+8.1f} {new / args.requests:>7.1f}"
              f" {base / args.requests:>7.1f}  {name} ({where[name]})")


async def cpu_context(session: aiohttp.ClientSession, builds: dict[str, Counted],
                      args: argparse.Namespace) -> None:
    """CPU per request as overhead.py measures it, untraced: context for the native work the
    opcode count does not see (noisy on a shared machine)."""
    targets = {name: Target(b.server.url, b.server.process.pid) for name, b in builds.items()}
    seq = await sequential(session, targets, args.cpu_requests, 10)
    sse = await ttfb(session, targets, stream_body("echo"), args.cpu_requests, 0.0)
    at32 = await concurrent(session, targets, 32, args.cpu_seconds)
    print(f"\nCPU per request, untraced (ms; /proc, overhead.py's method, load "
          f"{os.getloadavg()[0]:.2f}): {'json':>8}{'worker':>8}{'sse':>8}{'@32':>8}")
    for name in targets:
        print(f"  {name:<86}{seq[name]['cpu_seq_ms']:>8.3f}{seq[name]['cpu_seq_path_ms']:>8.3f}"
              f"{sse[name]['cpu_ms']:>8.3f}{at32[name]['cpu_conc_ms']:>8.3f}")
    new, base = targets
    print(f"  {'ratio':<86}"
          + "".join(f"{a / b:>7.3f}x" for a, b in (
              (seq[new]["cpu_seq_ms"], seq[base]["cpu_seq_ms"]),
              (seq[new]["cpu_seq_path_ms"], seq[base]["cpu_seq_path_ms"]),
              (sse[new]["cpu_ms"], sse[base]["cpu_ms"]),
              (at32[new]["cpu_conc_ms"], at32[base]["cpu_conc_ms"]))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="another checkout of tiergate (git worktree add --detach DIR REV)")
    parser.add_argument("--requests", type=int, default=500,
                        help="requests counted per build and phase")
    parser.add_argument("--top", type=int, default=0,
                        help="list the K functions whose opcodes per request differ most")
    parser.add_argument("--cpu-requests", type=int, default=1000,
                        help="untraced requests per build for the CPU context (0: skip it)")
    parser.add_argument("--cpu-seconds", type=float, default=4.0,
                        help="seconds at 32 concurrent per build for the CPU context")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiergate-opcodes-"))
    servers: list[ServerProcess] = []
    try:
        port = free_port()
        upstream = start_server([sys.executable, "-m", "gateway.testing.upstream", "--port",
                                 str(port)], port, work / "upstream.log", ready_path="/v1/models")
        servers.append(upstream)
        builds = {name: serve(name.replace(" ", "-"), root, work, upstream.url)
                  for name, root in (("this build", REPO), ("baseline", args.baseline.resolve()))}
        servers += [b.server for b in builds.values()]
        print(f"this build {REPO}, baseline {args.baseline.resolve()}; cpus={os.cpu_count()} "
              f"load={os.getloadavg()[0]:.2f}", file=sys.stderr)
        asyncio.run(measure(builds, args))
    finally:
        for server in reversed(servers):
            server.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
