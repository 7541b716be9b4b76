"""Starting and stopping a real gateway process: the port is bound while models load (``/livez``
200, ``/readyz`` 503 with the reasons, a loading model answers 503 ``model_loading`` with
``Retry-After``), a group SIGTERM is a clean stop of the gateway and its records delivery process,
and a start that fails says so in one line and leaves nothing behind."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.http.app import create_app
from gateway.records.staging import staging_dir
from gateway.settings import Settings
from tests.conftest import (
    REPO,
    ServerProcess,
    free_port,
    start_server,
    upstream_model,
    wait_for,
    write_config,
)

REFERENCE = REPO / "gateway" / "reference" / "models"
CHAT = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


class HeldUpstream:
    """An upstream whose ``/v1/models`` (what the gateway's start of an HTTP model asks) answers
    only once :meth:`release` is called: a model that loads for as long as a test wants."""

    def __init__(self) -> None:
        self.released = threading.Event()
        released = self.released

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                released.wait(60)
                body = b'{"object": "list", "data": [{"id": "held", "object": "model"}]}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held() -> Iterator[HeldUpstream]:
    upstream = HeldUpstream()
    yield upstream
    upstream.close()


def serve(tmp_path: Path, sections: dict[str, dict[str, Any]],
          ready_path: str = "/livez") -> ServerProcess:
    """A gateway in a process group of its own (as a shell job or a systemd unit runs it),
    with its records in ``tmp_path`` staged in a memory dir there."""
    sections = {"records": {"sqlite_path": str(tmp_path / "records.sqlite3"),
                            "spool_dir": str(tmp_path / "spool"),
                            "spool_memory_dir": str(memory_dir(tmp_path))},
                "canary": {"dir": str(tmp_path / "canary")},
                "shadow": {"dir": str(tmp_path / "shadow")}, **sections}
    memory_dir(tmp_path).mkdir(exist_ok=True)
    config = write_config(tmp_path / "tiergate.toml", sections)
    port = free_port()
    return start_server([sys.executable, "-m", "gateway", "serve", "--config", str(config),
                         "--port", str(port)], port, tmp_path / "gateway.log",
                        ready_path=ready_path, new_session=True)


def memory_dir(tmp_path: Path) -> Path:
    return tmp_path / "shm"


def leftovers(tmp_path: Path) -> list[str]:
    """Spool segments and staged twins left behind."""
    staged = staging_dir(tmp_path / "spool", memory_dir(tmp_path))
    return [p.name for d in (tmp_path / "spool", staged) if d.is_dir() for p in d.iterdir()]


@pytest.mark.parametrize("deferred", [False, True])
def test_the_port_is_bound_while_a_model_loads(upstream: ServerProcess, held: HeldUpstream,
                                               tmp_path: Path, deferred: bool) -> None:
    gateway = serve(tmp_path, {
        "models.echo": upstream_model(upstream, "echo"),
        "models.held": {"backend": "http", "base_url": held.url, "upstream_model": "held",
                        "deferred": deferred}})
    try:
        assert httpx.get(gateway.url + "/livez").status_code == 200
        # echo starts beside held; once it is ready, only held keeps the gateway from it
        wait_for(lambda: httpx.get(gateway.url + "/v1/models").json()["data"][0]["tiergate"]
                 ["status"] == "ready")
        ready = httpx.get(gateway.url + "/readyz")
        if deferred:
            assert ready.status_code == 200
        else:
            assert ready.status_code == 503
            assert ready.json()["reasons"] == ["models loading: held"]
        cards = {c["id"]: c["tiergate"] for c in httpx.get(gateway.url + "/v1/models").json()
                 ["data"]}
        assert cards["echo"]["status"] == "ready" and cards["held"]["status"] == "loading"
        health = httpx.get(gateway.url + "/health").json()
        assert health["models"]["held"]["status"] == "loading"
        assert health["models"]["held"]["step"] == "loading"

        refused = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "held"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "10"
        assert refused.json()["error"]["code"] == "model_loading"
        assert refused.json()["error"]["type"] == "service_unavailable"
        served = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "echo"})
        assert served.status_code == 200

        held.release()
        wait_for(lambda: httpx.get(gateway.url + "/readyz").status_code == 200, timeout=60)
        cards = {c["id"]: c["tiergate"] for c in httpx.get(gateway.url + "/v1/models").json()
                 ["data"]}
        assert cards["held"]["status"] == "ready"
    finally:
        gateway.stop()
    assert "ERROR" not in gateway.logs() and "Traceback" not in gateway.logs()


def stored(tmp_path: Path) -> set[str]:
    try:
        with sqlite3.connect(tmp_path / "records.sqlite3") as store:
            return {row[0] for row in store.execute("SELECT record_id FROM records")}
    except sqlite3.OperationalError:  # not created yet
        return set()


def test_a_group_sigterm_stops_gateway_and_delivery_cleanly(upstream: ServerProcess,
                                                            tmp_path: Path) -> None:
    """What ``timeout`` and systemd send: SIGTERM to every process of the group, the records
    delivery process included. It delivers what is spooled and stops when the gateway does
    (status 0: the gateway logs any other); nothing is left in the spool."""
    gateway = serve(tmp_path, {"models.echo": upstream_model(upstream, "echo")},
                    ready_path="/readyz")

    def ask() -> str:
        answer = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "echo"})
        assert answer.status_code == 200
        return answer.headers["x-tiergate-record-id"]

    first = ask()
    wait_for(lambda: first in stored(tmp_path), timeout=60)  # the delivery process runs its loop
    spooled = {ask() for _ in range(3)}
    children = gateway.children()
    assert children, "the records delivery process runs beside the gateway"
    os.killpg(gateway.process.pid, signal.SIGTERM)
    # uvicorn re-raises the signal it handled once its graceful stop is done
    assert gateway.process.wait(30) in (0, -signal.SIGTERM)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=60)
    logs = gateway.logs()
    assert "ERROR" not in logs and "Traceback" not in logs, logs
    assert "delivery process exited" not in logs and "stopped with status" not in logs, logs
    assert leftovers(tmp_path) == []
    assert {first, *spooled} <= stored(tmp_path)


def test_a_missing_model_path_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    memory_dir(tmp_path).mkdir()
    config = write_config(tmp_path / "tiergate.toml", {
        "models.m": {"backend": "engine", "path": str(tmp_path / "no-such-model")},
        "records": {"sqlite_path": str(tmp_path / "records.sqlite3"),
                    "spool_dir": str(tmp_path / "spool"),
                    "spool_memory_dir": str(memory_dir(tmp_path))},
        "canary": {"dir": str(tmp_path / "canary")}})
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config),
                           "--port", str(free_port())], capture_output=True, text=True,
                          timeout=120, start_new_session=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("tiergate:")]
    assert errors == [f"tiergate: model m: path {tmp_path / 'no-such-model'} does not exist"]
    assert leftovers(tmp_path) == []


async def test_a_start_that_fails_stops_what_it_started(
        upstream: ServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the records spool and its delivery process started (here the canaries'
    start, refused by a full disk): both are stopped and removed, and the log says why in one
    line, without a traceback."""
    memory_dir(tmp_path).mkdir()
    app = create_app(Settings.model_validate({
        "models": {"echo": upstream_model(upstream, "echo")},
        "records": {"sqlite_path": str(tmp_path / "records.sqlite3"),
                    "spool_dir": str(tmp_path / "spool"),
                    "spool_memory_dir": str(memory_dir(tmp_path))},
        "canary": {"dir": str(tmp_path / "canary")}, "telemetry": {"tracing": False}}))

    async def full_disk() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app.gateway.canaries, "start", full_disk)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO):
        await app({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.failed",
                     "message": "[Errno 28] No space left on device"}]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "tiergate failed to start or stop: [Errno 28] No space left on device"]
    assert errors[0].exc_info is None
    assert leftovers(tmp_path) == []


async def test_a_model_that_fails_to_load_leaves_the_others_serving(
        upstream: ServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Loading in the background (as a server does): an engine whose weights do not match
    their pin fails alone — one ERROR line, ``503 model_failed`` for it, not ready — while the
    other model serves."""
    app = create_app(Settings.model_validate({
        "models": {"echo": upstream_model(upstream, "echo"),
                   "bad": {"backend": "engine", "path": str(REFERENCE / "ref-small"),
                           "weights_sha256": "0" * 64}},
        "records": {"sink": "none"}, "canary": {"dir": str(tmp_path / "canary")},
        "telemetry": {"tracing": False}}))
    async with app.lifespan(wait_for_models=False), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        assert app.gateway.loading is not None
        await app.gateway.loading  # every model loaded or failed
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["models that failed to load: bad (see the log)"]
        cards = {c["id"]: c["tiergate"]["status"] for c in (await http.get("/v1/models"))
                 .json()["data"]}
        assert cards == {"echo": "ready", "bad": "failed"}
        refused = await http.post("/v1/chat/completions", json={**CHAT, "model": "bad"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "model_failed"
        served = await http.post("/v1/chat/completions", json={**CHAT, "model": "echo"})
        assert served.status_code == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("model bad failed to load: ")
