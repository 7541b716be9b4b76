"""The auditor's path end to end: requests with the SDK, ``tiergate records``, ``audit verify``,
``replay``, and the admin API — against a real gateway and the scriptable upstream, recording
into SQLite and into a real PostgreSQL."""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import psycopg
import pytest

from gateway.cli.main import main
from gateway.http.auth import hash_key
from gateway.records.sinks.postgres import SCHEMA
from tests.conftest import GatewayFactory, ServerProcess, upstream_model, write_config
from tests.gateway.records.conftest import PostgresServer

PIN = "ef" * 32
CLIENT_KEY, ADMIN_KEY = "tg-client-key", "tg-admin-key"


_schemas = itertools.count()


class Deployment:
    def __init__(self, gateway: ServerProcess, sections: dict[str, dict[str, Any]],
                 directory: Path, ids: list[str], postgres: PostgresServer | None) -> None:
        self.gateway, self.sections, self.directory, self.ids = gateway, sections, directory, ids
        self.postgres = postgres

    def config(self, name: str, **changes: dict[str, Any]) -> Path:
        """A settings file for the CLI: the gateway's, with sections replaced."""
        return write_config(self.directory / f"{name}.toml", {**self.sections, **changes})

    def copy_store(self, name: str) -> dict[str, Any]:
        """A copy of the gateway's record store, byte for byte; its ``[records]`` section."""
        records = dict(self.sections["records"])
        if self.postgres is None:
            copy = self.directory / f"{name}.sqlite3"
            with sqlite3.connect(self.directory / "records.sqlite3") as src, \
                    sqlite3.connect(copy) as dst:
                src.backup(dst)
            return {**records, "sqlite_path": str(copy)}
        source, target = records["postgres_schema"], f"{name}{next(_schemas)}"
        with psycopg.connect(self.postgres.url, autocommit=True) as conn, conn.transaction():
            conn.execute(f"CREATE SCHEMA {target}")
            conn.execute(f"SET search_path TO {target}")
            conn.execute(SCHEMA)
            parts = conn.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
                (f"{source}.records",)).fetchall()
            for part, bound in parts:
                conn.execute(f"CREATE TABLE {part} PARTITION OF records {bound}")
            for table in ("tiergate_meta", "chains", "records", "checkpoints"):
                conn.execute(f"INSERT INTO {table} SELECT * FROM {source}.{table}")
        return {**records, "postgres_schema": target}

    def sql(self, records: dict[str, Any], statement: str, *args: Any) -> list[Any]:
        """Run ``statement`` (``?`` placeholders) on a store, as someone with write access."""
        if self.postgres is None:
            with sqlite3.connect(records["sqlite_path"]) as conn:
                return conn.execute(statement, args).fetchall()
        with psycopg.connect(self.postgres.url, autocommit=True,
                             options=f"-c search_path={records['postgres_schema']}") as pg:
            cursor = pg.execute(statement.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def deployment(request: pytest.FixtureRequest, gateway_factory: GatewayFactory,
               upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    directory = tmp_path_factory.mktemp("records-cli")
    store: dict[str, Any] = {"sqlite_path": str(directory / "records.sqlite3")}
    postgres: PostgresServer | None = None
    if request.param == "postgres":
        postgres = request.getfixturevalue("postgres_server")
        store = {"sink": "postgres", "postgres_url": postgres.url,
                 "postgres_schema": f"cli{next(_schemas)}"}
    sections: dict[str, dict[str, Any]] = {
        "models.echo": upstream_model(upstream, "echo", weights_sha256=PIN),
        "models.other": upstream_model(upstream, "echo", weights_sha256=PIN),
        "records": {**store, "spool_dir": str(directory / "spool"), "flush_interval_s": 0.01,
                    "checkpoint_every": 3, "signing_key": "audit"},
        "auth": {"api_keys": [{"id": "app", "sha256": hash_key(CLIENT_KEY)}],
                 "admin_keys": [{"id": "auditor", "sha256": hash_key(ADMIN_KEY)}]},
    }
    gateway = gateway_factory(sections)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY)
    ids = []
    for i in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="echo" if i < 3 else "other", temperature=0.8, logprobs=True,
            messages=[{"role": "user", "content": f"question {i}"}])
        assert raw.headers["x-tiergate-record-id"] == raw.headers["x-request-id"]
        ids.append(raw.headers["x-tiergate-record-id"])
    stream = client.completions.create(model="echo", prompt="stream me", stream=True,
                                       max_tokens=30)
    assert "".join(c.choices[0].text for c in stream if c.choices)
    deployment = Deployment(gateway, sections, directory, ids, postgres)
    admin = httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    for _ in range(400):  # the writer delivers within a few flush intervals
        if len(admin.get("/admin/records").json()["data"]) == 5:
            break
        time.sleep(0.05)
    return deployment


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_records_list_show_export(deployment: Deployment, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    config = str(deployment.config("cli"))
    code, out = run(capsys, "records", "list", "--config", config)
    assert code == 0 and all(i in out for i in deployment.ids), out
    code, out = run(capsys, "records", "list", "--model", "other", "--json", "--config", config)
    rows = orjson.loads(out)
    assert [r["record_id"] for r in rows] == [deployment.ids[3]]
    code, out = run(capsys, "records", "list", "--since", "1h", "--route", "echo",
                    "--no-escalated", "--caller", "app", "--json", "--config", config)
    assert len(orjson.loads(out)) == 4  # three chat answers and the stream
    code, out = run(capsys, "records", "list", "--until", "2000-01-01", "--config", config)
    assert code == 0 and "no records" in out
    code, out = run(capsys, "records", "show", deployment.ids[0], "--config", config)
    record = orjson.loads(out)
    assert record["caller"] == "app" and record["seed"]["source"] == "gateway"
    assert record["input"]["messages"] == [{"role": "user", "content": "question 0"}]
    assert record["calls"][0]["model"]["base_weights_sha256"] == PIN
    code, out = run(capsys, "records", "show", "nope", "--config", config)
    assert code == 2 and "no record" in out
    target = tmp_path / "export.jsonl"
    code, out = run(capsys, "records", "export", "--out", str(target), "--config", config)
    lines = target.read_bytes().splitlines()
    assert code == 0 and len(lines) == 5
    assert [orjson.loads(line)["chain"]["seq"] for line in lines] == [1, 2, 3, 4, 5]


def test_audit_verify_passes_then_names_the_broken_link(
        deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = str(deployment.config("verify"))
    code, out = run(capsys, "audit", "verify", "--config", config)
    assert code == 0 and "chain main: OK — 5 records" in out and "1 signed" in out, out
    records = deployment.copy_store("tampered")
    ((body,),) = deployment.sql(records, "SELECT body FROM records WHERE seq = 2")
    deployment.sql(records, "UPDATE records SET body = ? WHERE seq = 2",
                   bytes(body).replace(b"question 1", b"question 9"))
    tampered = str(deployment.config("tampered", records=records))
    code, out = run(capsys, "audit", "verify", "--config", tampered)
    assert code == 1 and "BROKEN at seq 2" in out and deployment.ids[1] in out, out
    code, out = run(capsys, "audit", "verify", "--json", "--config", tampered)
    assert code == 1 and orjson.loads(out)[0]["broken"]["seq"] == 2
    code, out = run(capsys, "replay", deployment.ids[2], "--config", tampered)
    assert code == 3 and "broken at seq 2" in out


def test_replay_is_identical_and_refuses_other_weights(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(deployment.config("replay"))
    code, out = run(capsys, "replay", deployment.ids[1], "--config", config)
    assert code == 0 and "IDENTICAL" in out, out
    assert "upstream" in out  # what an HTTP upstream guarantees is said
    code, out = run(capsys, "replay", deployment.ids[1], "--json", "--config", config)
    report = orjson.loads(out)
    assert report["status"] == "identical" and report["calls"][0]["status"] == "identical"
    assert report["decision"] is None and report["chain"]["ok"]

    other = dict(deployment.sections["models.echo"], weights_sha256="00" * 32)
    code, out = run(capsys, "replay", deployment.ids[1], "--config",
                    str(deployment.config("moved", **{"models.echo": other})))
    assert code == 3 and "REFUSED" in out and "weights sha256" in out, out
    code, out = run(capsys, "replay", deployment.ids[3], "--config", str(deployment.config(
        "gone", **{"models.other": {"backend": "http", "base_url": "http://127.0.0.1:9/v1",
                                    "weights_sha256": PIN}})))
    assert code == 3 and "other" in out
    code, out = run(capsys, "replay", "no-such-record", "--config", config)
    assert code == 3 and "no record" in out


def test_replay_a_sampled_batch(deployment: Deployment,
                                capsys: pytest.CaptureFixture[str]) -> None:
    config = str(deployment.config("batch"))
    code, out = run(capsys, "replay", "--since", "1h", "--sample", "3", "--seed", "1",
                    "--config", config)
    assert code == 0 and "3 replayed: 3 identical, 0 diverged, 0 refused" in out, out
    assert "[##############################] 3/3" in out  # the progress bar's last state
    assert main(["replay", "--since", "1h", "--json", "--config", config]) == 0
    report = orjson.loads(capsys.readouterr().out)  # the progress bar is on stderr
    assert report["summary"] == {"identical": 5, "diverged": 0, "refused": 0}


def test_admin_api_behind_the_admin_key(deployment: Deployment, gateway: ServerProcess) -> None:
    url = deployment.gateway.url
    assert httpx.get(url + "/admin/records").status_code == 401
    client_key = {"authorization": f"Bearer {CLIENT_KEY}"}
    assert httpx.get(url + "/admin/records", headers=client_key).status_code == 401
    admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    rows = admin.get("/admin/records", params={"model": "other"}).json()["data"]
    assert [r["record_id"] for r in rows] == [deployment.ids[3]]
    assert len(admin.get("/admin/records", params={"limit": 2}).json()["data"]) == 2
    bad = admin.get("/admin/records", params={"escalated": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "escalated"
    assert admin.get("/admin/records", params={"since": "yesterday"}).status_code == 400
    record = admin.get(f"/admin/records/{deployment.ids[0]}").json()
    assert record["record_id"] == deployment.ids[0] and record["chain"]["seq"] == 1
    missing = admin.get("/admin/records/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    verified = admin.get("/admin/audit/verify").json()
    assert verified["ok"] and verified["chains"][0]["records"] == 5
    # A gateway without admin keys has the admin API off.
    off = httpx.get(gateway.url + "/admin/records")
    assert off.status_code == 403 and off.json()["error"]["type"] == "permission_error"


def test_records_off_means_no_header_and_no_store(
        gateway_factory: GatewayFactory, upstream: ServerProcess,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sections: dict[str, dict[str, Any]] = {"models.echo": upstream_model(upstream, "echo"),
                                           "records": {"sink": "none"}}
    gateway = gateway_factory(sections)
    response = httpx.post(gateway.url + "/v1/completions",
                          json={"model": "echo", "prompt": "hi"})
    assert response.status_code == 200 and "x-tiergate-record-id" not in response.headers
    code, out = run(capsys, "records", "list", "--config",
                    str(write_config(tmp_path / "off.toml", sections)))
    assert code == 2 and "records are off" in out


def test_answers_in_one_line_or_indented_are_recorded_alike(
        gateway_factory: GatewayFactory, upstream: ServerProcess,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A one-line upstream body is spooled as a draft (its bytes, finished by the delivery
    process), an indented one as the built record: the stored records hold the same outputs."""
    records = {"sqlite_path": str(tmp_path / "records.sqlite3"),
               "spool_dir": str(tmp_path / "spool"), "flush_interval_s": 0.01}
    sections = {"models.echo": upstream_model(upstream, "echo"),
                "models.pretty": upstream_model(upstream, "pretty"), "records": records}
    gateway = gateway_factory(sections)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    shown = {}
    for model in ("echo", "pretty"):
        raw = client.chat.completions.with_raw_response.create(
            model=model, logprobs=True, top_logprobs=1, seed=5,
            messages=[{"role": "user", "content": "same words"}])
        assert raw.parse().choices[0].message.content == "echo: same words"
        shown[model] = raw.headers["x-tiergate-record-id"]
    config = str(write_config(tmp_path / "cli.toml", sections))
    calls = {}
    for model, record_id in shown.items():
        for _ in range(200):  # delivered within a few flush intervals
            code, out = run(capsys, "records", "show", record_id, "--config", config)
            if code == 0:
                break
            time.sleep(0.05)
        record = orjson.loads(out)
        assert "draft" not in record and "wire" not in record["calls"][0]
        calls[model] = {k: record["calls"][0][k] for k in ("choices", "usage", "extra")}
    assert calls["echo"]["choices"][0]["text"] == "echo: same words"
    assert calls["echo"]["choices"][0]["logprobs"]["token"]
    assert calls["echo"] == calls["pretty"]
    code, out = run(capsys, "audit", "verify", "--config", config)
    assert code == 0, out


def test_prune_leaves_a_verifiable_chain_and_a_missing_store_is_named(
        deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    records = deployment.copy_store("pruned")
    ((cut,),) = deployment.sql(records, "SELECT received_at FROM records WHERE seq = 3")
    config = str(deployment.config("pruned", records=records))
    code, out = run(capsys, "records", "prune", "--before", repr(cut), "--config", config)
    assert code == 0 and "chain main: 2 records removed" in out, out
    code, out = run(capsys, "audit", "verify", "--config", config)
    assert code == 0 and "3 records (seq 3..5)" in out, out
    code, out = run(capsys, "records", "prune", "--config", config)
    assert code == 2 and "retention_days" in out
    absent = {**records, "sqlite_path": str(tmp_path / "absent.sqlite3"),
              "postgres_schema": "absent"}
    code, out = run(capsys, "records", "list", "--config",
                    str(deployment.config("absent", records=absent)))
    assert code == 2 and ("no record store at" in out or "no record store in schema" in out)
    assert not (tmp_path / "absent.sqlite3").exists()
    if deployment.postgres is not None:
        assert deployment.postgres.password not in out
        assert not deployment.sql(records, "SELECT 1 FROM pg_namespace WHERE nspname = 'absent'")

