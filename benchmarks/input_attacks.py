"""What a hostile body costs the gateway, against what parsing it would cost, in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/input_attacks.py [--rounds 5]

A real gateway (default limits) on loopback refuses bodies built to be expensive to parse: 240k
tiny messages in 7 MB (under the 8 MiB body limit) and 2 million empty objects. For each, the
gateway's CPU per refusal is read from ``/proc``, and the **baseline** — what the same body costs
when parsed by the request model in this process (``ChatCompletionRequest.model_validate_json``,
what a gateway without the byte scan would do) — is timed in the same run. The bar, for the
240k messages (parsing them took 1.6 to 3.5 s of CPU and +227 MB before the scan): a refusal
costs at most a tenth of parsing. The 2M empty objects are an informational row: pydantic parses a
free-form list of empty objects quickly, so the scan (and reading 6 MB off the socket) is a
larger share there. ``tests/gateway/http/test_input_attacks.py`` checks the refusals themselves;
this checks what they cost.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.protocol import ChatCompletionRequest  # noqa: E402
from tests.conftest import (  # noqa: E402
    free_port,
    process_tree,
    start_server,
    write_config,
)

BAR = 0.1
"""A refusal costs at most this share of parsing the body."""


def cpu_s(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in ticks
    return total


def parse_cpu_s(body: bytes) -> float:
    """CPU seconds to parse ``body`` with the request model (it may refuse: the cost is paid)."""
    started = time.process_time()
    with contextlib.suppress(ValueError):
        ChatCompletionRequest.model_validate_json(body)
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bodies = {  # name -> (body, bar or None: informational)
        "240k tiny messages": (orjson.dumps({"model": "echo", "messages": [
            {"role": "user", "content": "a"}] * 240_000}), BAR),
        "2M empty objects": (orjson.dumps({"model": "echo", "messages": [
            {"role": "user", "content": "hi"}], "tools": [{}] * 2_000_000}), None),
    }
    work = Path(tempfile.mkdtemp(prefix="tiergate-attacks-"))
    python = sys.executable
    up_port, gw_port = free_port(), free_port()
    upstream = start_server([python, "-m", "gateway.testing.upstream", "--port", str(up_port)],
                            up_port, work / "upstream.log", ready_path="/v1/models")
    config = write_config(work / "tiergate.toml", {
        "models.echo": {"backend": "http", "base_url": upstream.url + "/v1",
                        "upstream_model": "echo"},
        "records": {"sink": "none"}, "canary": {"dir": str(work / "canary")},
        "governance": {"ungated": "warn", "history_path": str(work / "registry.sqlite3")}})
    gateway = start_server([python, "-m", "gateway", "serve", "--config", str(config), "--port",
                            str(gw_port)], gw_port, work / "gateway.log")
    failed = False
    try:
        with httpx.Client(base_url=gateway.url, timeout=120) as client:
            print(f"{'body':<22}{'bytes':>10}{'refusal CPU':>14}{'parse CPU':>12}{'ratio':>8}")
            for name, (body, bar) in bodies.items():
                refusal, parse = [], []
                for _ in range(args.rounds):  # interleaved: a slow spell falls on both
                    before = cpu_s(gateway.process.pid)
                    answer = client.post("/v1/chat/completions", content=body,
                                         headers={"content-type": "application/json"})
                    assert answer.status_code == 400, answer.text[:200]
                    refusal.append(cpu_s(gateway.process.pid) - before)
                    parse.append(parse_cpu_s(body))
                mean_refusal, mean_parse = sum(refusal) / len(refusal), sum(parse) / len(parse)
                ratio = mean_refusal / mean_parse
                verdict = ("info" if bar is None else
                           f"{'PASS' if ratio <= bar else 'FAIL'} <= {bar}")
                failed |= bar is not None and ratio > bar
                print(f"{name:<22}{len(body):>10}{mean_refusal * 1000:>12.0f}ms"
                      f"{mean_parse * 1000:>10.0f}ms{ratio:>8.3f}  [{verdict}]")
    finally:
        gateway.stop()
        upstream.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
