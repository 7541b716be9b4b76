"""Secrets never leave: :func:`gateway.kernel.secrets.redact`, the log filter, and a gateway whose
settings carry planted credentials — each pointing at something that is down — grepped for them
in every byte it answers, logs and spools."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from gateway.http.auth import hash_key
from gateway.kernel import secrets
from gateway.records.staging import staging_dir
from gateway.settings import Settings
from tests.conftest import GatewayFactory, ServerProcess

ADMIN = "tg-admin-secrets-test"
RECORDS_PW = "recordsPW-7c1e9"
SHARED_PW = "sharedPW-52ab0"
UPSTREAM_PW = "upstreamPW-90d3f"
UPSTREAM_KEY = "sk-plantedUpstreamKey-6f1b2c3d4e"
PLANTED = (RECORDS_PW, SHARED_PW, UPSTREAM_PW, UPSTREAM_KEY)


# -- redact ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("cannot reach redis://default:p%40ss@10.0.0.1/2: refused",
     "cannot reach redis://default:***@10.0.0.1/2: refused"),
    ("http://user:p@ss@host/v1", "http://user:***@host/v1"),  # an unencoded @ in the password
    ("https://ghp_token123@github.com/x", "https://***@github.com/x"),
    ("GET https://api/v1?api_key=abc123&x=1", "GET https://api/v1?api_key=***&x=1"),
    ("https://h/hook?token=T0k&sig=zz", "https://h/hook?token=***&sig=***"),
    ("Authorization: Bearer abcdef123456", "Authorization: Bearer ***"),
    ("key sk-proj-Ab12Cd34Ef56Gh78Ij90 refused", "key sk-*** refused"),
])
def test_redact_masks_credentials(text: str, shown: str) -> None:
    assert secrets.redact(text) == shown


@pytest.mark.parametrize("text", [
    "redis://cache:6379/0", "http://127.0.0.1:8000/v1/models", "model tg-large is failing",
    "the record store is 65536 bytes behind", "user@example.com wrote",
    "a basic validation failed", "Bearer of bad news",
])
def test_redact_leaves_text_without_credentials_alone(text: str) -> None:
    assert secrets.redact(text) == text


def test_registered_secrets_are_masked_anywhere_also_percent_encoded() -> None:
    secrets.register("plain-registered-Secret", None, "abc")  # too short: not masked
    secrets.register_url("redis://:p%2Fw-registered-9@h/0")
    text = "x plain-registered-Secret y p/w-registered-9 z p%2Fw-registered-9 abc"
    assert secrets.redact(text) == "x *** y *** z *** abc"


def test_every_secret_of_the_settings_is_registered(tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "models": {"up": {"backend": "http", "base_url": "http://u:urlPW-settings-1@h/v1",
                          "api_key": "keyInSettings-42"}},
        "records": {"sink": "redis", "redis_url": "redis://:recPW-settings-2@h/0",
                    "signing_key": "signingKey-settings-3"},
        "canary": {"dir": str(tmp_path)},
        "redis_url": "redis://:sharedPW-settings-4@h/0"})
    secrets.register_settings(settings)
    for planted in ("urlPW-settings-1", "keyInSettings-42", "recPW-settings-2",
                    "signingKey-settings-3", "sharedPW-settings-4"):
        assert planted not in secrets.redact(f"... {planted} ...")
    secrets.register_settings([SecretStr("in-a-list-secret")])
    assert secrets.redact("in-a-list-secret") == "***"


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    handler = logging.FileHandler(path)
    handler.addFilter(secrets.RedactingFilter())
    log = logging.getLogger("tiergate.test-secrets")
    log.addHandler(handler)
    try:
        log.error("store redis://:%s@h/0 failed", "argPW-1234")
        try:
            raise ConnectionError("auth to redis://:tracePW-5678@h/0 failed")
        except ConnectionError:
            log.exception("with a traceback")
    finally:
        log.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "argPW-1234" not in text and "tracePW-5678" not in text
    assert text.count("redis://:***@h/0") >= 2 and "Traceback" in text


# -- a gateway with planted secrets, everything it says grepped ----------------------------------

@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _sections(upstream: ServerProcess, dead: int, records: dict[str, object]
              ) -> dict[str, dict[str, object]]:
    port = upstream.url.rsplit(":", 1)[1]
    return {
        "models.echo": {"backend": "http", "upstream_model": "echo", "api_key": UPSTREAM_KEY,
                        "base_url": f"http://tg:{UPSTREAM_PW}@127.0.0.1:{port}/v1"},
        "models.down": {"backend": "http", "upstream_model": "echo", "api_key": UPSTREAM_KEY,
                        "base_url": f"http://tg:{UPSTREAM_PW}@127.0.0.1:{dead}/v1",
                        "connect_timeout_s": 1.0},
        "routes.auto": {"mode": "fixed", "small": "echo", "large": "echo"},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]},
        "records": records,
    }


def _exposed(response: httpx.Response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{response.status_code}\n{headers}\n{response.text}"


def _files(*directories: Path) -> bytes:
    return b"".join(p.read_bytes() for d in directories if d.is_dir()
                    for p in sorted(d.rglob("*")) if p.is_file())


def _assert_clean(where: str, data: str | bytes) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for planted in PLANTED:
        assert planted not in text, f"{planted!r} leaked in {where}"


def test_no_secret_leaves_a_gateway_whose_stores_are_down(
        gateway_factory: GatewayFactory, upstream: ServerProcess, dead_port: int) -> None:
    records = {"sink": "redis", "redis_url": f"redis://:{RECORDS_PW}@127.0.0.1:{dead_port}/0",
               "spool_max_bytes": 65536}
    gateway = gateway_factory(_sections(upstream, dead_port, records),
                              env={"TIERGATE_REDIS_URL":
                                   f"redis://:{SHARED_PW}@127.0.0.1:{dead_port}/0"})
    admin = {"authorization": f"Bearer {ADMIN}"}
    seen: list[httpx.Response] = []
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        big = "x" * 20_000
        chat = {"model": "echo", "max_tokens": 4,
                "messages": [{"role": "user", "content": big}]}
        for _ in range(10):  # the store is down: the spool fills, then requests are refused
            seen.append(http.post("/v1/chat/completions", json=chat))
            if seen[-1].status_code == 503:
                break
        assert seen[-1].status_code == 503, seen[-1].text
        assert "behind" in seen[-1].json()["error"]["message"]
        seen.append(http.post("/v1/chat/completions", json={**chat, "model": "down"}))
        threshold = http.put("/admin/routes/auto/threshold", json={"threshold": 0.3},
                             headers=admin)
        assert threshold.status_code == 503, threshold.text
        assert http.get("/admin/routes/auto/threshold", headers=admin).json()["threshold"] == 0.5
        seen.append(threshold)
        for path in ("/health", "/readyz", "/livez", "/metrics", "/admin/records"):
            seen.append(http.get(path))
            seen.append(http.get(path, headers=admin))
        seen.append(http.get("/v1/models"))
        seen.append(http.get("/v1/models/down"))
        health = http.get("/health", headers=admin)
        seen.append(health)
    assert health.status_code == 503  # the spool is over its limit: not ready
    down = health.json()["models"]["down"]
    assert down["status"] == "unreachable" and down["upstream"].startswith("http://tg:***@")
    for response in seen:
        _assert_clean(f"{response.request.method} {response.request.url.path}",
                      _exposed(response))
    spool = gateway.log.parent / "spool"
    memory = staging_dir(spool, Path("/dev/shm"))
    _assert_clean("the spool and its staging twins", _files(spool, memory))
    gateway.stop()
    _assert_clean("the spool after the stop", _files(spool))
    log = gateway.logs()
    assert "record store failed" in log and "redis://:***@127.0.0.1" in log
    _assert_clean("the gateway's log", log)


def test_no_secret_reaches_a_working_record_store(
        gateway_factory: GatewayFactory, upstream: ServerProcess, dead_port: int) -> None:
    gateway = gateway_factory(_sections(upstream, dead_port, {"sink": "sqlite"}))
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        answered = http.post("/v1/chat/completions", json={
            "model": "echo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert answered.status_code == 200, answered.text
        _assert_clean("a completion", _exposed(answered))
    gateway.stop()
    directory = gateway.log.parent
    store = _files(directory / "spool") + b"".join(
        p.read_bytes() for p in directory.glob("records.sqlite3*"))
    assert answered.headers["x-tiergate-record-id"].encode() in store
    assert b"http://tg:***@127.0.0.1" in store  # the model tuple's source, redacted
    _assert_clean("the record store", store)
    _assert_clean("the gateway's log", gateway.logs())
