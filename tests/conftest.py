"""Shared fixtures: real servers (tiergate, the scriptable upstream) on free loopback ports."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers and their records delivery processes
    with ``--workers N``)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def dead_url() -> Iterator[str]:
    """An API root on a port that refuses connections, held (bound, not listening) for the
    whole session so that no server started later can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@dataclass
class ServerProcess:
    """A server in a child process; ``url`` is its root (``http://127.0.0.1:PORT``)."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        """The process's descendants (records delivery processes, workers)."""
        return process_tree(self.process.pid)[1:]

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(args: list[str], port: int, log: Path, ready_path: str = "/health",
                 env: dict[str, str] | None = None, timeout: float = 60.0,
                 cwd: Path = REPO, new_session: bool = False) -> ServerProcess:
    """Start ``args`` in ``cwd`` (``new_session``: in a process group of its own, as a shell job
    or a service runs) and poll ``ready_path`` until it answers 200 (or the process dies)."""
    out = log.open("wb")
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                               env={**os.environ, **(env or {})}, start_new_session=new_session)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args} exited with {process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(server.url + ready_path, timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{args} not ready after {timeout}s:\n{server.logs()}")


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy (its value) — a guard against a hang, not a timed
    assertion: ``timeout`` is far above what the awaited event takes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s: {what or condition}")
        time.sleep(0.05)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A TOML settings file from ``{"models.echo": {...}, "server": {...}}``."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="session", autouse=True)
def ungated_models_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test suite's models (the scriptable upstream, ad-hoc engines) carry no validating
    eval: every gateway and CLI here serves them with a warning (``governance.ungated =
    "warn"``) and keeps the registry history in the session's temporary folder. The gate tests
    (tests/gateway/governance) set ``refuse``, the default, explicitly."""
    history = tmp_path_factory.mktemp("governance") / "registry.sqlite3"
    saved = {k: os.environ.get(k) for k in GOVERNANCE_ENV}
    os.environ.update({"TIERGATE_GOVERNANCE__UNGATED": "warn",
                       "TIERGATE_GOVERNANCE__HISTORY_PATH": str(history)})
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


GOVERNANCE_ENV = ("TIERGATE_GOVERNANCE__UNGATED", "TIERGATE_GOVERNANCE__HISTORY_PATH")


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The scriptable OpenAI-compatible upstream (see gateway.testing.upstream)."""
    port = free_port()
    log = tmp_path_factory.mktemp("upstream") / "upstream.log"
    server = start_server([sys.executable, "-m", "gateway.testing.upstream", "--port", str(port)],
                          port, log, ready_path="/v1/models")
    yield server
    server.stop()


@dataclass
class RedisProcess:
    """A real redis-server on a loopback port; stop() and start() simulate an outage."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start (is it installed? `make system-deps`)")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server (Debian's package, installed by ``make test``) for the session."""
    server = RedisProcess(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@dataclass
class PostgresServer:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    command: list[str]
    user: dict[str, Any]
    """``user``/``group`` to run the server as (PostgreSQL refuses root)."""
    password: str = "pg-secret-Zq81"
    """In every URL; the server trusts loopback, so only what tiergate shows of it matters."""

    @property
    def url(self) -> str:
        return f"postgresql://tiergate:{self.password}@127.0.0.1:{self.port}/postgres"

    def connect(self, schema: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, options=f"-c search_path={schema}")

    def start(self) -> None:
        """(Re)start the server on the same port and data (after :meth:`stop`)."""
        if self.process.poll() is not None:
            self.process = _spawn_postgres(self.command, self.directory, self.user, self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            # fast shutdown: gateways of the session may still be connected
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _spawn_postgres(command: list[str], directory: Path, user: dict[str, Any],
                    url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               cwd=directory, **user)
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return process
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"PostgreSQL did not start (exit {process.poll()})") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on a free loopback port, in a directory of its own (``make test``
    installs the server: ``make system-deps``). PostgreSQL refuses to run as root: as root the
    server runs as the ``postgres`` system user the package creates."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql): "
                    "apt-get install postgresql (make system-deps)")
    directory = Path(tempfile.mkdtemp(prefix="tiergate-pg-"))
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs the 'postgres' system user to run PostgreSQL")
        os.chown(directory, account.pw_uid, account.pw_gid)
        user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data = directory / "data"
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "tiergate", "-A", "trust",
                    "-E", "UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL,
                   cwd=directory, **user)
    port = free_port()
    command = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c",
               "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={directory}"]
    server = PostgresServer(subprocess.Popen(["true"]), port, directory, command, user)
    server.process.wait()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


GatewayFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """Starts tiergate processes from config sections; all are stopped at the end."""
    started: list[ServerProcess] = []

    def start(sections: dict[str, dict[str, Any]], env: dict[str, str] | None = None,
              extra_args: list[str] | None = None) -> ServerProcess:
        directory = tmp_path_factory.mktemp("gateway")
        records = {"sqlite_path": str(directory / "records.sqlite3"),
                   "spool_dir": str(directory / "spool")}
        sections = {**sections, "records": {**records, **sections.get("records", {})},
                    "canary": {"dir": str(directory / "canary"), **sections.get("canary", {})},
                    "shadow": {"dir": str(directory / "shadow"), **sections.get("shadow", {})}}
        config = write_config(directory / "tiergate.toml", sections)
        port = free_port()
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                "--port", str(port), *(extra_args or [])]
        server = start_server(args, port, directory / "gateway.log", env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def upstream_model(upstream: ServerProcess, behaviour: str, **extra: Any) -> dict[str, Any]:
    """Settings of a gateway model backed by one behaviour of the scriptable upstream."""
    return {"backend": "http", "base_url": upstream.url + "/v1", "upstream_model": behaviour,
            **extra}


@pytest.fixture(scope="session")
def gateway(gateway_factory: GatewayFactory, upstream: ServerProcess,
            dead_url: str) -> ServerProcess:
    """One tiergate with a model for each behaviour of the scriptable upstream."""
    sections = {
        f"models.{name}": upstream_model(upstream, name)
        for name in ["echo", "cut", "stream-error", "garbage", "html", "status-400",
                     "status-429", "status-500", "status-503"]
    }
    sections["models.slow"] = upstream_model(upstream, "slow-2000", first_byte_timeout_s=0.5)
    sections["models.stall"] = upstream_model(upstream, "stall-500")
    sections["models.refused"] = {"backend": "http", "base_url": dead_url,
                                  "upstream_model": "gone", "connect_timeout_s": 1.0}
    sections["server"] = {"max_body_bytes": 65536}
    return gateway_factory(sections)
