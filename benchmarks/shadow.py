"""Shadow traffic: what mirroring adds to the primary request.

1. **request path** — the mirror's completion listener (draw, enqueue) timed per call,
   interleaved with serving's hook with no listener, in the same run; the enqueue path and the
   full-queue (drop) path.
2. **end to end** — two tiergate processes on one fixed upstream, identical but for mirroring
   (``share = 1.0`` of every request mirrored to a second model on the same upstream); paced
   requests alternate between them; p50/p99 latency of each and the difference.

    .venv/bin/python benchmarks/shadow.py [--calls 20000] [--requests 2000] [--rate 100]

Bar (issue 7): mirroring adds ≤ 0.1 ms to the primary request's p50.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.paired import compare, percentile, print_pair  # noqa: E402
from canary.mirror import ShadowMirror  # noqa: E402
from canary.settings import ShadowSettings  # noqa: E402
from gateway import protocol  # noqa: E402
from gateway.kernel.generation import ChoiceResult, GenerationResult, Usage  # noqa: E402
from gateway.kernel.modeltuple import ModelTuple  # noqa: E402
from gateway.listener import CompletedRequest, Listeners, RequestContext  # noqa: E402
from gateway.models.registry import ModelRegistry  # noqa: E402
from gateway.serving import OpenAIServing  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.telemetry.instruments import Telemetry  # noqa: E402
from gateway.telemetry.settings import TelemetrySettings  # noqa: E402

MODEL = ModelTuple(name="live", engine="openai-http", engine_version="bench",
                   upstream_model="echo")


def answered(i: int) -> CompletedRequest:
    client = protocol.ChatCompletionRequest.model_validate(
        {"model": "live", "temperature": 0, "max_tokens": 64,
         "messages": [{"role": "user", "content": f"Question {i}: why?"}]})
    gen = client.to_generation_request(f"bench{i:08d}")
    result = GenerationResult(model=MODEL, usage=Usage(prompt_tokens=20, completion_tokens=64),
                              choices=[ChoiceResult(0, "word " * 64, "stop")])
    return CompletedRequest(RequestContext(request_id=gen.request_id), "live", client, gen,
                            [result], None, stream=False, status=200)



async def request_path(calls: int, drain: bool) -> dict[str, float]:
    """Per-call cost (µs) of the mirror listener vs no listener, interleaved."""
    settings = Settings(models={
        "live": {"backend": "http", "base_url": "http://127.0.0.1:9/v1"},
        "pinned": {"backend": "http", "base_url": "http://127.0.0.1:9/v1"}},
        shadow=ShadowSettings.model_validate({"mirrors": {"live": {
            "target": "pinned", "share": 1.0}}, "queue_size": 256}))
    telemetry = Telemetry(TelemetrySettings(tracing=False))
    mirror = ShadowMirror(settings, ModelRegistry(settings), telemetry)
    bare = OpenAIServing.__new__(OpenAIServing)
    bare.listeners = Listeners()
    mirrored = OpenAIServing.__new__(OpenAIServing)
    mirrored.listeners = Listeners([mirror])
    requests = [answered(i) for i in range(calls)]
    clock = time.perf_counter_ns

    async def serve(done: CompletedRequest) -> tuple[float, float]:
        """One request's task: the hook without and with the mirror listening."""
        t0 = clock()
        bare._completed(done.ctx, done.client_request, done.request, done.results, None)
        t1 = clock()
        mirrored._completed(done.ctx, done.client_request, done.request, done.results, None)
        t2 = clock()
        return (t1 - t0) / 1000, (t2 - t1) / 1000

    base, added = [], []
    for done in requests:
        without, with_mirror = await asyncio.create_task(serve(done))
        base.append(without)
        added.append(with_mirror)
        await asyncio.sleep(0)  # the task's end queues the mirror work
        if drain:  # a worker took it: the next request finds room in the queue
            mirror.queue.get_nowait()
    return {"base_p50": percentile(base, 50), "p50": percentile(added, 50),
            "p99": percentile(added, 99)}


async def end_to_end(requests: int, rate: float) -> dict[str, dict[str, Any]]:
    """Two gateways alike but for mirroring every request of ``live`` to ``pinned``."""
    results, metrics = await compare({
        "plain": lambda directory: {},
        "mirrored": lambda directory: {
            "shadow": {"queue_size": 1024},
            "shadow.mirrors.live": {"target": "pinned", "share": 1.0}},
    }, requests, rate)
    results["mirrored"]["pairs"] = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics["mirrored"].splitlines()
        if line.startswith("tiergate_shadow_total{") and 'outcome="identical"' in line)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=2_000,
                        help="end-to-end requests per gateway")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="end-to-end requests per second, per gateway")
    args = parser.parse_args()

    print("request path: the mirror listener's cost per answered request (µs), baseline = "
          "serving's hook with no listener")
    for label, drain in (("mirrored (enqueue)", True), ("queue full (drop)", False)):
        r = await request_path(args.calls, drain)
        print(f"  {label:<20} baseline p50 {r['base_p50']:6.2f}   added p50 {r['p50']:6.2f}  "
              f"p99 {r['p99']:6.2f}   p50 / 100 µs bar = {r['p50'] / 100:.3f}")
    r2 = await end_to_end(args.requests, args.rate)
    print(f"end to end ({args.requests} paced requests each, alternating; every request of "
          f"the mirrored gateway mirrored: {r2['mirrored']['pairs']:.0f} identical pairs; the "
          "added CPU is the mirror's own work, done after each response)")
    print_pair(r2, "plain", "mirrored", 0.1)


if __name__ == "__main__":
    asyncio.run(main())
