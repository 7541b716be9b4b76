"""Decode records: store throughput, and what recording adds to a request.

1. **throughput** — records submitted to a :class:`~gateway.records.recorder.Recorder` (spool
   write included) until the SQLite store has all of them; and the store alone (batched
   appends: canonical JSON, sha256 chain, insert, commit with ``synchronous=FULL``).
2. **request path** — the completion listener's cost per answered request (build the rest of
   the record, serialize it, ``writev(2)`` it to the spool), timed per call and interleaved with
   a baseline: the serving accounting's ``completed`` hook with no listener, in the same run.
   Two requests: a plain chat answer (64 tokens) and one with token ids and top-5 logprobs, as
   the engine answers them; the second also as an HTTP upstream answers it (its record spooled
   as a draft, finished by the delivery process: ``gateway.records.builder``). With
   ``spool_fsync = "always"`` the fsync is timed too (informational). The record's head, which
   serving builds while the model works, is timed apart (informational: not on the path).

3. **end to end** — two tiergate processes on one fixed upstream, identical but for records
   (SQLite sink vs ``sink = "none"``); paced requests alternate between them
   (``benchmarks/paired.py``): the p50 latency each client sees, and the CPU per request.

    .venv/bin/python benchmarks/records.py [--records 20000] [--calls 5000] [--requests 2000]

Bars: ≥ 10 000 records/s into SQLite; p50 added to a request ≤ 0.1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway import protocol  # noqa: E402
from gateway.backends.wire import parse_response  # noqa: E402
from gateway.kernel.generation import (  # noqa: E402
    ChoiceResult,
    GenerationResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple, Quantization  # noqa: E402
from gateway.listener import CompletedRequest, Listeners, RequestContext  # noqa: E402
from gateway.records.builder import TupleCache, build_record, encode_record  # noqa: E402
from gateway.records.recorder import Recorder  # noqa: E402
from gateway.records.schema import canonical_json  # noqa: E402
from gateway.records.settings import RecordsSettings  # noqa: E402
from gateway.records.sinks import create_sink, signer_for  # noqa: E402
from gateway.records.sinks.base import PendingRecord  # noqa: E402

MODEL = ModelTuple(name="small", engine="transformers", engine_version="transformers 5; torch 2",
                   upstream_model="smollm2", base_weights_sha256="ab" * 32,
                   quantization=Quantization(method="int8-dynamic", bits=8))
PROMPT = ("You are a careful assistant. Answer briefly and cite the rule you used. " * 4).strip()


def wire_of(result: GenerationResult) -> GenerationResult:
    """``result`` as an HTTP upstream (vLLM, ``return_token_ids``) sends it — the body tiergate
    itself answers with — and :class:`~gateway.backends.http.HTTPBackend` parses it: with the
    body it came in, so its record is spooled as a draft."""
    wire = orjson.dumps(protocol.chat_completion(result, "1", "smollm2", return_token_ids=True))
    parsed, usage, prompt_ids, extra = parse_response(orjson.loads(wire), chat=True)
    return dataclasses.replace(result, choices=parsed, usage=usage, prompt_token_ids=prompt_ids,
                               extra=extra, rendered_prompt=None,
                               runtime={"upstream": "http://vllm:8000/v1",
                                        "upstream_model": "smollm2"}, raw_body=wire)


def answered(i: int, logprobs: bool, http: bool = False) -> CompletedRequest:
    """A realistic answered chat request: ~600 characters in, 64 tokens out; ``http``: answered
    by an HTTP upstream (a draft record) rather than the engine."""
    body: dict[str, Any] = {"model": "small", "temperature": 0.7, "max_tokens": 64,
                            "messages": [{"role": "system", "content": PROMPT},
                                         {"role": "user", "content": f"Question {i}: why?"}]}
    if logprobs:
        body.update(logprobs=True, top_logprobs=5)
    client = protocol.ChatCompletionRequest.model_validate(body)
    gen = client.to_generation_request(f"bench{i:08d}")
    gen.sampling.seed = 1000 + i
    tokens = list(range(1000, 1064))
    lps = [TokenLogprob(f"t{t}", -0.1 * (k % 7), t, None,
                        [TopLogprob(f"a{t}", -0.2 * j, t + j) for j in range(5)])
           for k, t in enumerate(tokens)] if logprobs else None
    result = GenerationResult(
        model=MODEL, usage=Usage(prompt_tokens=150, completion_tokens=64),
        choices=[ChoiceResult(0, "word " * 64, "length", token_ids=tokens, logprobs=lps)],
        prompt_token_ids=list(range(150)), rendered_prompt=PROMPT + f" Question {i}: why?",
        runtime={"device": "AMD EPYC", "torch": "2.13.0", "threads": 1, "seeds": [1000 + i]})
    if http:
        result = wire_of(result)
    ctx = RequestContext(request_id=gen.request_id, caller="app",
                         operation="/v1/chat/completions")
    return CompletedRequest(ctx, "small", client, gen, [result], None, stream=False, status=200)


def settings_in(directory: Path, **extra: Any) -> RecordsSettings:
    return RecordsSettings(sqlite_path=directory / "records.sqlite3",
                           spool_dir=directory / "spool", **extra)


async def catch_up(lines: list[bytes]) -> float:
    """Records/s the delivery process moves into the store after an outage (all spooled)."""
    with tempfile.TemporaryDirectory() as tmp:
        blocked = Path(tmp) / "store"
        blocked.write_text("a file where the store's directory should be")
        settings = settings_in(Path(tmp), batch_size=1000)
        settings = settings.model_copy(update={"sqlite_path": blocked / "records.sqlite3"})
        recorder = Recorder(settings)
        await recorder.start()
        for line in lines:
            recorder.submit(line)
        blocked.unlink()  # the store is back: the delivery process's next retry opens it
        while recorder.delivered == 0:  # noqa: ASYNC110 - set by the delivery process's status
            await asyncio.sleep(0.001)
        first, started = recorder.delivered, time.perf_counter()
        assert await recorder.flush(wait_s=300)
        rate = (len(lines) - first) / (time.perf_counter() - started)
        await recorder.aclose()
    return rate


async def throughput(count: int) -> dict[str, float]:
    tuples = TupleCache()
    records = [build_record(answered(i, logprobs=False), tuples) for i in range(count)]
    lines = [canonical_json(r) for r in records]
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:  # submitted back to back, delivered meanwhile
        recorder = Recorder(settings_in(Path(tmp), batch_size=1000))
        await recorder.start()
        started = time.perf_counter()
        for line in lines:
            recorder.submit(line)
        assert await recorder.flush(wait_s=300), "the store did not take every record"
        rates["end_to_end"] = count / (time.perf_counter() - started)
        await recorder.aclose()
    rates["catch_up"] = await catch_up(lines)
    rates["drafts"] = await catch_up([encode_record(answered(i, False, http=True), tuples)
                                      for i in range(count)])
    bodies = [PendingRecord.of(r, line) for r, line in zip(records, lines, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_in(Path(tmp))
        sink = create_sink(settings)
        await sink.open()
        started = time.perf_counter()
        for i in range(0, count, 1000):
            await sink.append("main", bodies[i:i + 1000], signer_for(settings), 1000)
        rates["store"] = count / (time.perf_counter() - started)
        await sink.aclose()
    return rates


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def request_path(calls: int, logprobs: bool, fsync: str, rate: float, http: bool = False
                       ) -> dict[str, float]:
    """Per-call cost (µs) of the listener vs serving's hook with no listener, interleaved
    (both price the calls and count their cost, metrics on: the difference is the listener)."""
    from gateway.models.cost import PriceBook
    from gateway.serving.accounting import Accounting
    from gateway.telemetry.instruments import Telemetry
    from gateway.telemetry.settings import TelemetrySettings

    requests = [answered(i, logprobs, http) for i in range(calls)]
    pause = 1.0 / rate if rate > 0 else 0.0
    telemetry = Telemetry(TelemetrySettings(tracing=False))
    with tempfile.TemporaryDirectory() as tmp:
        recorder = Recorder(settings_in(Path(tmp), spool_fsync=fsync))
        await recorder.start()
        bare = Accounting(telemetry, PriceBook({}), Listeners())
        recorded = Accounting(telemetry, PriceBook({}), Listeners([recorder]))
        base, added, ahead = [], [], []
        clock = time.perf_counter_ns
        for done in requests:
            gen, client, results = done.request, done.client_request, done.results
            t = clock()
            recorder.started(done.ctx, client, gen)  # serving runs it while the model works
            ahead.append((clock() - t) / 1000)
            t0 = clock()
            bare.completed(done.ctx, client, gen, results, None)
            t1 = clock()
            recorded.completed(done.ctx, client, gen, results, None)
            t2 = clock()
            base.append((t1 - t0) / 1000)
            added.append((t2 - t1) / 1000)
            if pause or len(added) % 256 == 0:  # requests arrive at ``rate``; delivery runs
                await asyncio.sleep(pause)
        await recorder.aclose()
    return {"base_p50": percentile(base, 50), "p50": percentile(added, 50),
            "p99": percentile(added, 99), "ahead_p50": percentile(ahead, 50)}


async def end_to_end(requests: int, rate: float) -> dict[str, dict[str, Any]]:
    """Two gateways alike but for records (SQLite vs none)."""
    from benchmarks.paired import compare

    results, _ = await compare({
        "no records": lambda directory: {},
        "records": lambda directory: {"records": {
            "sink": "sqlite", "sqlite_path": str(directory / "records.sqlite3"),
            "spool_dir": str(directory / "spool")}},
    }, requests, rate)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--requests", type=int, default=2_000,
                        help="end-to-end requests per gateway (0: skip)")
    parser.add_argument("--e2e-rate", type=float, default=100.0,
                        help="end-to-end requests per second, per gateway")
    parser.add_argument("--rate", type=float, default=1_000,
                        help="answered requests per second in the request-path runs (0: back "
                        "to back)")
    args = parser.parse_args()

    logging.getLogger("tiergate.records").setLevel(logging.CRITICAL)  # the staged outage
    rates = await throughput(args.records)
    print(f"throughput ({args.records} records of ~3.4 kB, SQLite WAL, synchronous=FULL; "
          "bar 10000 records/s)")
    for key, label in (("catch_up", "delivery: spooled records into the store"),
                       ("drafts", "the same, drafts (HTTP answers) finished"),
                       ("store", "store alone (batched appends)"),
                       ("end_to_end", "submit back to back + deliver")):
        print(f"  {label:<40} {rates[key]:9.0f} records/s   ratio to bar "
              f"{rates[key] / 10_000:.2f}")
    pace = f"at {args.rate:.0f} requests/s" if args.rate > 0 else "back to back"
    print(f"request path {pace}: listener cost per answered request (µs), baseline = serving's "
          "hook with no listener")
    for label, logprobs, http, fsync, calls in (
            ("plain, 64 tokens", False, False, "batch", args.calls),
            ("64 tokens + top-5 logprobs", True, False, "batch", args.calls),
            ("the same from HTTP (draft)", True, True, "batch", args.calls),
            ("plain, spool_fsync=always", False, False, "always", min(args.calls, 200))):
        r = await request_path(calls, logprobs, fsync, args.rate, http)
        print(f"  {label:<28} baseline p50 {r['base_p50']:6.2f}   added p50 {r['p50']:8.1f}  "
              f"p99 {r['p99']:8.1f}   p50 / 100 µs bar = {r['p50'] / 100:.2f}   "
              f"(head, while the model works: p50 {r['ahead_p50']:.1f})")
    if args.requests:
        from benchmarks.paired import print_pair

        print(f"end to end ({args.requests} paced requests each, alternating, "
              f"{args.e2e_rate:.0f}/s per gateway; bar: records add <= 0.1 ms to the p50)")
        print_pair(await end_to_end(args.requests, args.e2e_rate), "no records", "records", 0.1)


if __name__ == "__main__":
    asyncio.run(main())
