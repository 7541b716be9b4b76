"""Paired gateways: what one feature adds to a request, measured against the same gateway
without it, in the same run.

Two (or more) tiergate processes on one fixed upstream, identical but for the feature; paced
requests alternate between them, so machine noise falls on both alike. For each: p50/p99
latency as the client sees it, and the CPU its own processes spent per request (from /proc:
the request path and every thread and child process it feeds, e.g. the records delivery).
With two or more CPUs the client and the upstream run on CPU 0 and the gateways on the others,
as if client and model server were other machines: otherwise work a gateway does after a
response (a shadow call, the records delivery) competes with the client for the CPUs and shows
up as the client's latency, and work it does while the model works (a record's head) competes
with the model, which in production runs elsewhere. The client never works while the upstream
does (it waits for the answer), so the two share CPU 0 without waiting for each other.
``benchmarks/records.py`` and ``benchmarks/shadow.py`` use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.overhead import cpu_s  # noqa: E402
from tests.conftest import (  # noqa: E402
    ServerProcess,
    free_port,
    process_tree,
    start_server,
    write_config,
)

BODY = {"model": "live", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "The quick brown fox"}]}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def start_upstream(directory: Path) -> ServerProcess:
    port = free_port()
    return start_server([sys.executable, "-m", "gateway.testing.upstream", "--port", str(port)],
                        port, directory / "upstream.log", ready_path="/v1/models")


def start_gateway(directory: Path, name: str, upstream: ServerProcess,
                  sections: dict[str, dict[str, Any]]) -> ServerProcess:
    """A gateway serving ``live`` (and ``pinned``) from the fixed upstream, plus ``sections``."""
    base = {
        "models.live": {"backend": "http", "base_url": upstream.url + "/v1",
                        "upstream_model": "echo"},
        "models.pinned": {"backend": "http", "base_url": upstream.url + "/v1",
                          "upstream_model": "echo"},
        "records": {"sink": "none"},
        "canary": {"dir": str(directory / f"{name}-canary")},
        "shadow": {"dir": str(directory / f"{name}-shadow")},
        # the fixed-response upstream's models carry no validating eval
        "governance": {"ungated": "warn",
                       "history_path": str(directory / f"{name}-registry.sqlite3")},
    }
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    config = write_config(directory / f"{name}.toml", base)
    port = free_port()
    return start_server([sys.executable, "-m", "gateway", "serve", "--config", str(config),
                         "--port", str(port)], port, directory / f"{name}.log")


def _pin(server: ServerProcess, cpus: set[int]) -> None:
    for pid in process_tree(server.process.pid):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(int(task.name), cpus)


def separate_client(servers: list[ServerProcess], others: list[ServerProcess]) -> None:
    """This process and ``others`` on CPU 0, the servers (and their threads) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    for server in servers:
        _pin(server, set(cpus[1:]))
    for other in others:
        _pin(other, {cpus[0]})
    os.sched_setaffinity(0, {cpus[0]})


async def alternate(servers: dict[str, ServerProcess], requests: int, rate: float,
                    body: dict[str, Any] | None = None,
                    others: list[ServerProcess] | None = None) -> dict[str, dict[str, Any]]:
    """``requests`` paced requests to each server, alternating; latency and CPU per request.
    ``others`` (the upstream) run beside the client, away from the servers."""
    body = body or BODY
    separate_client(list(servers.values()), others or [])
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    pause = 1.0 / rate if rate > 0 else 0.0
    async with httpx.AsyncClient(timeout=30) as client:
        for server in servers.values():  # warm up
            for _ in range(50):
                await client.post(server.url + "/v1/chat/completions", json=body)
        cpu_before = {name: cpu_s(s.process.pid) for name, s in servers.items()}
        for _ in range(requests):
            for name, server in servers.items():
                started = time.perf_counter()
                response = await client.post(server.url + "/v1/chat/completions", json=body)
                latencies[name].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text}")
                if pause:
                    await asyncio.sleep(pause)
        await asyncio.sleep(0.5)  # background work of the last requests (writers, mirrors)
        cpu_after = {name: cpu_s(s.process.pid) for name, s in servers.items()}
    return {name: {"p50": percentile(v, 50), "p99": percentile(v, 99),
                   "cpu_ms": (cpu_after[name] - cpu_before[name]) * 1000 / requests,
                   "latencies_ms": v}
            for name, v in latencies.items()}


def added_p50_interval(base: list[float], feature: list[float], rounds: int = 1000,
                       level: float = 0.95) -> tuple[float, float]:
    """A bootstrap confidence interval of ``p50(feature) - p50(base)``: requests resampled by
    round (a round sends one request to each gateway, so the pairs share the machine's state)."""
    draw = random.Random(0)
    n = len(base)
    differences = sorted(
        statistics.median(feature[i] for i in picks) - statistics.median(base[i] for i in picks)
        for picks in ([draw.randrange(n) for _ in range(n)] for _ in range(rounds)))
    cut = int(rounds * (1 - level) / 2)
    return differences[cut], differences[rounds - 1 - cut]


Sections = Callable[[Path], dict[str, dict[str, Any]]]
"""A variant's config sections, given the run's scratch folder."""


async def compare(variants: dict[str, Sections], requests: int, rate: float
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Start one gateway per variant on a fresh upstream, :func:`alternate` requests between
    them; their figures, and each one's ``/metrics`` text at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        upstream = start_upstream(directory)
        servers: dict[str, ServerProcess] = {}
        try:
            for index, (name, sections) in enumerate(variants.items()):
                servers[name] = start_gateway(directory, f"gateway{index}", upstream,
                                              sections(directory))
            results = await alternate(servers, requests, rate, others=[upstream])
            metrics = {name: (await asyncio.to_thread(httpx.get, server.url + "/metrics")).text
                       for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
            upstream.stop()
    return results, metrics


def print_pair(results: dict[str, dict[str, Any]], base: str, feature: str,
               bar_ms: float) -> None:
    for name in (base, feature):
        r = results[name]
        print(f"  {name:<12} p50 {r['p50']:7.3f} ms   p99 {r['p99']:7.3f} ms   "
              f"CPU {r['cpu_ms']:6.3f} ms/request")
    added = results[feature]["p50"] - results[base]["p50"]
    added_cpu = results[feature]["cpu_ms"] - results[base]["cpu_ms"]
    low, high = added_p50_interval(results[base]["latencies_ms"],
                                   results[feature]["latencies_ms"])
    print(f"  added p50 {added * 1000:+8.1f} µs ({'PASS' if added <= bar_ms else 'FAIL'} "
          f"against {bar_ms * 1000:.0f} µs; 95% interval {low * 1000:+.0f} to "
          f"{high * 1000:+.0f} µs)   added CPU {added_cpu * 1000:+8.1f} µs/request")
