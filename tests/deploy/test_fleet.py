"""A fleet on one machine (tests/deploy/conftest.py): three gateway processes behind a real
HAProxy, sharing a Redis and one PostgreSQL record store.

Under load one replica is killed with SIGKILL — its whole process group, the records delivery
process with it — and HAProxy routes around it; the replica is then restarted on the same spool,
delivers what it had spooled, and every request that got a 200 has its decode record in the
shared store, whose chain ``tiergate audit verify`` finds intact. A threshold changed through
one replica's admin API reaches the others through Redis. A record one replica wrote replays to
identical with another replica's settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from gateway.cli.main import main
from tests.conftest import wait_for, write_config
from tests.deploy.conftest import ADMIN, REPLICAS, SCHEMA, Fleet

CLIENTS = 3
"""Client threads, each sending chat requests one after the other through HAProxy."""
BEFORE_KILL, AFTER_KILL = 5, 10
"""Answers each client gets before the kill, and after it."""


@dataclass
class Load:
    """Client threads sending chat requests through HAProxy until told to stop."""

    url: str
    answered: list[tuple[str, str, int]] = field(default_factory=list)
    """(request id, replica, client) of every 200 answer, in order."""
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                body = {"model": "echo", "temperature": 0.7, "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"client {index} #{i}"}]}
                try:
                    answer = http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:  # a request in flight on the killed replica
                    with self.lock:
                        self.failures.append(repr(exc))
                    continue
                with self.lock:
                    if answer.status_code == 200:
                        assert answer.json()["choices"][0]["message"]["content"]
                        self.answered.append((answer.headers["x-request-id"],
                                              answer.headers["x-fleet-replica"], index))
                    else:
                        self.failures.append(f"{answer.status_code} {answer.text[:200]}")

    def count(self, since: int = 0, replica: str | None = None) -> dict[int, int]:
        """200 answers per client from position ``since`` on (of one replica's, if given)."""
        with self.lock:
            found = {i: 0 for i in range(CLIENTS)}
            for _, served_by, client in self.answered[since:]:
                if replica is None or served_by == replica:
                    found[client] += 1
            return found


def test_a_threshold_changed_on_one_replica_reaches_the_others(fleet: Fleet) -> None:
    admin = ADMIN
    path = "/admin/routes/auto/threshold"
    first, *others = (fleet.replicas[name].url for name in REPLICAS)
    changed = httpx.put(first + path, json={"threshold": 0.37}, headers=admin, timeout=30)
    assert changed.status_code == 200, changed.text

    def everywhere() -> bool:
        return all(httpx.get(url + path, headers=admin, timeout=30).json()["threshold"] == 0.37
                   for url in others)

    wait_for(everywhere, timeout=60, what="the new threshold on every replica")
    answer = httpx.get(others[0] + path, headers=admin, timeout=30).json()
    assert answer["shared"] is True, answer


def test_a_killed_replica_is_routed_around_and_every_answer_is_recorded(fleet: Fleet) -> None:
    load = Load(fleet.url)
    threads = [threading.Thread(target=load.client, args=(i,), daemon=True)
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        victim = "g2"
        wait_for(lambda: min(load.count().values()) >= BEFORE_KILL
                 and sum(load.count(replica=victim).values()) >= 3,
                 timeout=120, what="every client answered, the victim among the replicas")
        fleet.kill(victim)
        with load.lock:
            at_kill = len(load.answered)
        wait_for(lambda: min(load.count(since=at_kill).values()) >= AFTER_KILL,
                 timeout=120, what=f"answers after the kill: {load.failures[-3:]}")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(90)
    assert not any(thread.is_alive() for thread in threads)
    after = {replica for _, replica, _ in load.answered[at_kill + CLIENTS:]}
    # answers after the kill came from the survivors (a request already on its way may not)
    assert victim not in after and after <= set(REPLICAS) - {victim}, after

    # the killed replica restarts on its spool and delivers what it had not yet delivered
    fleet.start(victim)
    answered = {request_id for request_id, _, _ in load.answered}
    wait_for(lambda: answered <= fleet.stored_ids(), timeout=120,
             what="every answered request's record in the shared store")

    # through the CLI too: every answer's record, and every chain intact
    cli_config = write_config(fleet.directory / "cli.toml", {"records": {
        "sink": "postgres", "postgres_url": fleet.postgres.url, "postgres_schema": SCHEMA}})
    export = fleet.directory / "export.jsonl"
    assert main(["records", "export", "--out", str(export), "--config", str(cli_config)]) == 0
    exported = {orjson.loads(line)["record_id"] for line in export.read_bytes().splitlines()}
    assert answered <= exported
    assert main(["audit", "verify", "--config", str(cli_config)]) == 0


def test_a_record_written_by_one_replica_replays_identical_on_another(
        fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    writer, other = "g1", "g3"

    def answered_by_writer() -> str | None:
        body = {"model": "echo", "temperature": 0.7, "max_tokens": 16,
                "messages": [{"role": "user", "content": "replay me"}]}
        answer = httpx.post(fleet.url + "/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        if answer.headers["x-fleet-replica"] != writer:
            return None
        record_id: str = answer.headers["x-tiergate-record-id"]
        return record_id

    record_id = wait_for(answered_by_writer, timeout=60, what=f"an answer from {writer}")
    wait_for(lambda: record_id in fleet.stored_ids(), timeout=60,
             what="the record in the shared store")
    capsys.readouterr()
    # the other replica's settings: its own models (the same upstream), the shared store
    code = main(["replay", record_id, "--json", "--config", str(fleet.settings(other))])
    report = orjson.loads(capsys.readouterr().out)
    assert code == 0 and report["status"] == "identical", report
    assert report["record_id"] == record_id and report["chain"]["ok"]
    ((choice,),) = [call["choices"] for call in report["calls"]]
    assert choice["status"] == "identical" and choice["recorded_length"] > 0
