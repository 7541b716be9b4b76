"""Fixtures of the records tests: a real redis-server and PostgreSQL, stores, and answered
requests to record."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from pydantic import SecretStr

from gateway import protocol
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple, Quantization
from gateway.listener import CompletedRequest, RequestContext
from gateway.records.builder import TupleCache, build_record
from gateway.records.schema import canonical_json
from gateway.records.settings import RecordsSettings
from gateway.records.sinks import create_sink
from gateway.records.sinks.base import PendingRecord, RecordSink
from router.decision import Decision
from tests.conftest import REPO, PostgresServer, free_port

WEIGHTS = "ab" * 32


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def start(self) -> None:
        """(Re)start the server on the same port (after :meth:`stop`)."""
        if self.process.poll() is None:
            return
        self.process = _spawn_redis(self.port, self.directory)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _spawn_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}") from None
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not answer")


@pytest.fixture(scope="session")
def durable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (``make test`` installs it), persisting
    with ``appendfsync always`` as docs/records.md asks of a record store: a restart keeps what
    it acknowledged (the store-outage test stops and restarts it)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (make test)")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    server = RedisServer(_spawn_redis(port, directory), port, directory)
    yield server
    server.stop()


_prefixes = itertools.count()


def sqlite_settings(tmp_path: Path, **extra: Any) -> RecordsSettings:
    return RecordsSettings(sink="sqlite", sqlite_path=tmp_path / "records.sqlite3",
                           spool_dir=tmp_path / "spool", **extra)


def redis_settings(tmp_path: Path, server: RedisServer, **extra: Any) -> RecordsSettings:
    return RecordsSettings(sink="redis", redis_url=server.url,
                           redis_stream=f"test{next(_prefixes)}:records",
                           spool_dir=tmp_path / "spool", **extra)


def postgres_settings(tmp_path: Path, server: PostgresServer, **extra: Any) -> RecordsSettings:
    """A store of its own: a new schema in the test server's database."""
    return RecordsSettings(sink="postgres", postgres_url=server.url,
                           postgres_schema=f"test{next(_prefixes)}",
                           spool_dir=tmp_path / "spool", **extra)


SinkSettings = Callable[..., RecordsSettings]


def _settings_factory(kind: str, request: pytest.FixtureRequest,
                      tmp_path: Path) -> SinkSettings:
    """Settings factory of one store kind: every call names the same store (file, schema or
    stream) and the spool ``tmp_path / "spool"``."""
    if kind == "sqlite":
        return lambda **extra: sqlite_settings(tmp_path, **extra)
    if kind == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        schema = f"test{next(_prefixes)}"
        return lambda **extra: RecordsSettings(sink="postgres", postgres_url=pg.url,
                                               postgres_schema=schema,
                                               spool_dir=tmp_path / "spool", **extra)
    server: RedisServer = request.getfixturevalue("durable_redis")
    server.start()
    prefix = f"test{next(_prefixes)}:records"
    return lambda **extra: RecordsSettings(sink="redis", redis_url=server.url,
                                           redis_stream=prefix, spool_dir=tmp_path / "spool",
                                           **extra)


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> SinkSettings:
    """Settings factory for each store kind (tests run once per store)."""
    return _settings_factory(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_settings(request: pytest.FixtureRequest, tmp_path: Path) -> SinkSettings:
    """Settings factory of the durability tests (a killed writer, a killed delivery process,
    several workers, the staging spool), which run on SQLite and on PostgreSQL alike."""
    return _settings_factory(request.param, request, tmp_path)


def records_section(settings: RecordsSettings) -> dict[str, Any]:
    """``settings`` as a gateway config's ``[records]`` section (what was set explicitly)."""
    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return str(value) if isinstance(value, Path) else value

    return {key: plain(getattr(settings, key)) for key in settings.model_fields_set}


@pytest_asyncio.fixture
async def sink(store_settings: SinkSettings) -> AsyncIterator[RecordSink]:
    store = create_sink(store_settings())
    await store.open()
    yield store
    await store.aclose()


# -- answered requests ------------------------------------------------------------------------

MODEL = ModelTuple(name="small", engine="transformers", engine_version="transformers 5; torch 2",
                   upstream_model="smol", base_weights_sha256=WEIGHTS,
                   quantization=Quantization(method="int8-dynamic", bits=8))
LARGE = MODEL.model_copy(update={"name": "large", "quantization": Quantization()})
_ids = itertools.count()


def answered(content: str = "Hello?", *, route: str = "small", seed: int | None = None,
             temperature: float | None = 0.7, decision: Decision | None = None,
             stream: bool = False, caller: str | None = "team-a",
             request_id: str | None = None) -> CompletedRequest:
    """A completed chat request as serving hands it to listeners (real protocol objects)."""
    body: dict[str, Any] = {"model": route, "messages": [{"role": "user", "content": content}],
                            "logprobs": True, "top_logprobs": 1, "stream": stream}
    if seed is not None:
        body["seed"] = seed
    if temperature is not None:
        body["temperature"] = temperature
    client = protocol.ChatCompletionRequest.model_validate(body)
    request_id = request_id or f"req{next(_ids):06d}"
    gen = client.to_generation_request(request_id)
    if gen.sampling.seed is None and not gen.sampling.greedy:
        gen.sampling.seed = 1234  # as serving draws it
    models = [MODEL] if decision is None or not decision.escalated else [MODEL, LARGE]
    results = [GenerationResult(
        model=model,
        choices=[ChoiceResult(
            index=0, text=f"answer to {content}", finish_reason="stop", token_ids=[11, 12, 13],
            logprobs=[TokenLogprob("a", -0.5, 11, [97], [TopLogprob("a", -0.5, 11, [97])]),
                      TokenLogprob("n", float("-inf"), 12, [110]),
                      TokenLogprob("s", -0.25, 13, [115])])],
        usage=Usage(prompt_tokens=5, completion_tokens=3),
        prompt_token_ids=[1, 2, 3, 4, 5], rendered_prompt=f"<user>{content}</user>",
        runtime={"device": "cpu", "torch": "2.13.0", "seeds": [gen.sampling.seed]})
        for model in models]
    ctx = RequestContext(request_id=request_id, caller=caller, operation="/v1/chat/completions")
    return CompletedRequest(ctx, route, client, gen, results, decision, stream=stream,
                            status=200)


def record_of(content: str = "Hello?", **options: Any) -> dict[str, Any]:
    return build_record(answered(content, **options), TupleCache())


def pending(record: dict[str, Any]) -> PendingRecord:
    """A built record as the recorder hands it to a store."""
    return PendingRecord.of(record, canonical_json(record))


WRITER_TO_KILL = """
import asyncio, json, os, sys
from gateway.records.recorder import Recorder
from gateway.records.schema import canonical_json
from gateway.records.settings import RecordsSettings
from tests.gateway.records.conftest import record_of

async def main() -> None:
    recorder = Recorder(RecordsSettings.model_validate(json.loads(sys.argv[1])))
    await recorder.start()
    for i in range(int(sys.argv[2])):
        record = record_of(f"killed {i}", request_id=f"killed-{os.getpid()}-{i}")
        recorder.submit(canonical_json(record))
        print(record["record_id"], flush=True)
    print("done", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def killed_writer(settings: RecordsSettings, count: int, before_kill: float = 0.0) -> list[str]:
    """A recorder in a process of its own spools ``count`` records; ``before_kill`` seconds
    later it is killed with SIGKILL (its delivery process then exits: its pipe closed)."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER_TO_KILL, settings.model_dump_json(), str(count)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ids = []
    for line in process.stdout:
        if line.strip() == "done":
            break
        ids.append(line.strip())
    time.sleep(before_kill)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return ids
