"""The image's install and start steps, run as deploy/compose/Dockerfile runs them — no Docker
daemon here: its build stage's COPY lines assemble the sources, its install step
(``deploy/compose/install.sh`` with the Dockerfile's default build arguments) builds a fresh venv,
and its CMD, environment and health check start and probe a gateway serving the compose config,
with the compose hosts (``redis``, ``postgres``, ``vllm-small``, ``vllm-large``) played by a real
Redis, a real PostgreSQL and the scriptable upstream on loopback."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.conftest import (
    REPO,
    PostgresServer,
    RedisProcess,
    ServerProcess,
    free_port,
    start_server,
    wait_for,
)

DOCKERFILE = REPO / "deploy" / "compose" / "Dockerfile"


@dataclass
class Stage:
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    """(sources, destination) of each COPY from the build context."""
    runs: list[str] = field(default_factory=list)
    workdir: str = "/"
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def stages(text: str) -> list[Stage]:
    """The Dockerfile's stages: what each copies, sets, runs and starts (the instructions this
    Dockerfile uses; continuation lines joined)."""
    found: list[Stage] = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            found.append(Stage())
        elif not found:
            continue
        stage = found[-1]
        if instruction == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            stage.args[name] = value
        elif instruction == "ENV":
            for name, _, value in (pair.partition("=") for pair in shlex.split(rest)):
                stage.env[name] = value
        elif instruction == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            if not any(p.startswith("--from") for p in rest.split()):
                stage.copies.append((parts[:-1], parts[-1]))
        elif instruction == "RUN":
            stage.runs.append(rest)
        elif instruction == "WORKDIR":
            stage.workdir = rest
        elif instruction == "CMD":
            stage.cmd = json.loads(rest)
        elif instruction == "HEALTHCHECK":
            stage.healthcheck = json.loads(rest[rest.index("CMD") + 3:])
    return found


def in_root(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def copy(source: Path, destination: Path, into: bool) -> None:
    """``COPY source destination`` (``into``: the destination is a directory, ``dir/``)."""
    if into:
        destination = destination / source.name
    if source.is_dir():
        shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__",
                                                                           "*.pyc"))
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, destination)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Stage]]:
    """A root directory holding what the image would: the build stage run for real."""
    root = tmp_path_factory.mktemp("image")
    build, final = stages(DOCKERFILE.read_text())
    for sources, target in [*build.copies, *final.copies]:
        for source in sources:
            copy(REPO / source, in_root(root, target), into=target.endswith("/"))
    [install] = [run for run in build.runs if "install.sh" in run]
    arguments = {name: value for name, value in build.args.items()}
    command = shlex.split(re.sub(r'"\$(\w+)"', lambda m: shlex.quote(arguments[m.group(1)]),
                                 install))
    # absolute paths of the image, inside the root
    command = [str(in_root(root, part)) if part.startswith("/") else part for part in command]
    env = {**os.environ, **{k: str(in_root(root, v)) for k, v in build.env.items()}}
    done = subprocess.run(command, cwd=in_root(root, build.workdir), env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, [build, final]


def test_the_image_installs_its_integrations_and_not_the_engine(
        image: tuple[Path, list[Stage]]) -> None:
    root, _ = image
    python = in_root(root, "/opt/tiergate/bin/python")
    for module in ("gateway.http.app", "redis", "psycopg",
                   "opentelemetry.exporter.otlp.proto.http"):
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                               text=True, cwd=root)
        assert found.returncode == 0, found.stderr
    torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, cwd=root)
    assert torch.returncode != 0  # the gateway alone: models are behind vLLM
    assert in_root(root, "/opt/models").is_dir()  # what the final stage copies, empty


def test_the_image_starts_the_compose_config_and_is_healthy(
        image: tuple[Path, list[Stage]], upstream: ServerProcess, redis_server: RedisProcess,
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    root, (_, final) = image
    config = in_root(root, "/etc/tiergate/tiergate.toml")
    hosts = {"redis:6379": f"127.0.0.1:{redis_server.port}",
             "@postgres:5432/tiergate": f"@127.0.0.1:{postgres_server.port}/postgres",
             "vllm-small:8000": upstream.url.removeprefix("http://"),
             "vllm-large:8000": upstream.url.removeprefix("http://"),
             '"/var/lib/tiergate/canary"': json.dumps(str(tmp_path / "canary"))}
    text = config.read_text()
    for name, address in hosts.items():
        assert name in text
        text = text.replace(name, address)
    text = re.sub(r'upstream_model = "(small|large)"', 'upstream_model = "echo"', text)
    config.write_text(text)
    port = free_port()
    workdir = in_root(root, final.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: str(in_root(root, v)) if v.startswith("/") else v for k, v in final.env.items()
           if k != "PATH"}
    env["PATH"] = f"{in_root(root, '/opt/tiergate/bin')}:{os.environ['PATH']}"
    env["TIERGATE_SERVER__PORT"] = str(port)  # the CMD as written; the port free here
    env["TIERGATE_TELEMETRY__OTLP_ENDPOINT"] = upstream.url  # compose's collector
    env["PGPASSWORD"] = postgres_server.password  # as compose gives it (POSTGRES_PASSWORD)
    env["TIERGATE_RECORDS__POSTGRES_SCHEMA"] = "image"  # the test server's other stores aside
    command = [str(in_root(root, part)) if part.startswith("/") else part for part in final.cmd]
    assert command[0] == "tiergate"
    # a client key made with the image's CLI in the config's key store (Redis)
    made = subprocess.run([str(in_root(root, "/opt/tiergate/bin/tiergate")), "keys", "create",
                           "image-client", "--config", str(config)], env=env, cwd=workdir,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    key = re.search(r"^key: (\S+)", made.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    gateway = start_server(command, port, tmp_path / "gateway.log", ready_path="/readyz",
                           env=env, cwd=workdir, timeout=120)
    try:
        # the image's HEALTHCHECK, against the port the gateway has here
        probe = [str(in_root(root, "/opt/tiergate/bin/python")),
                 *(part.replace(":8000/", f":{port}/") for part in final.healthcheck[1:])]
        assert any(":8000/readyz" in part for part in final.healthcheck)
        assert subprocess.run(probe, timeout=30).returncode == 0
        chat = {"model": "small", "messages": [{"role": "user", "content": "from the image"}]}
        anonymous = httpx.post(gateway.url + "/v1/chat/completions", timeout=30, json=chat)
        assert anonymous.status_code == 401  # a key store: the OpenAI surface needs a key
        answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=30, json=chat,
                            headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "echo: from the image"
        assert redis.Redis(port=redis_server.port).dbsize() > 0  # the key lives in Redis
        record_id = answer.headers["x-tiergate-record-id"]

        def stored() -> list[tuple[str]]:  # the record, in the compose config's PostgreSQL
            with postgres_server.connect("image") as conn:
                try:
                    return conn.execute("SELECT caller FROM records WHERE record_id = %s",
                                        (record_id,)).fetchall()
                except psycopg.errors.UndefinedTable:  # the store is not made yet
                    return []

        assert wait_for(stored, what="the request's record in PostgreSQL") == [
            ("image-client",)]
    finally:
        assert gateway.stop() in (0, -15)
