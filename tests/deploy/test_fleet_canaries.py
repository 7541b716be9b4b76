"""Canaries in the fleet (tests/deploy/conftest.py): ``live`` is pinned once; the replica that
holds the leader lock in Redis runs its scheduled canaries, and only it (its upstream, a proxy,
sees which replica sent each canary item). Killed, it is replaced by another within the lock's
lifetime, and restarted it does not take the lead back. A silent swap of ``live``'s upstream is
found by the leader's run, and the rollback to ``live-pinned`` it decides is applied by every
replica through Redis until an operator acknowledges on any replica."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.deploy.conftest import ADMIN, Fleet, metric

ROLLBACK = '{model="live"}'
ALARMS = '{model="live",kind="drift",source="canary"}'


def leaders(fleet: Fleet) -> list[str]:
    """The running replicas whose ``tiergate_canary_leader`` gauge is 1."""
    return [name for name, server in fleet.running().items()
            if metric(server, "tiergate_canary_leader").get("") == 1]


def the_leader(fleet: Fleet) -> str:
    def one() -> list[str] | None:
        names = leaders(fleet)
        return names if len(names) == 1 else None

    found: list[str] = wait_for(one, timeout=30, what="exactly one canary leader")
    return found[0]


def status(server: ServerProcess) -> dict[str, Any]:
    answer = httpx.get(server.url + "/admin/canary/live", headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def runs_after(fleet: Fleet, since: float, count: int) -> set[str]:
    """Wait until ``count`` canary runs that started after ``since`` were seen (by their ids in
    any running replica's status: one shared store)."""
    seen: set[str] = set()

    def enough() -> bool:
        server = next(iter(fleet.running().values()))
        run = status(server)["last_run"]
        if run is not None and run["started_at"] > since:
            seen.add(run["id"])
        return len(seen) >= count

    wait_for(enough, timeout=90, what=f"{count} scheduled canary runs")
    return seen


def rolled_back(server: ServerProcess, expected: bool) -> bool:
    """Whether the replica's ``tiergate_canary_rollback`` gauge of ``live`` is ``expected``."""
    return metric(server, "tiergate_canary_rollback").get(ROLLBACK) == float(expected)


def answering_model(server: ServerProcess) -> str:
    answer = httpx.post(server.url + "/v1/completions", timeout=30, json={
        "model": "live", "prompt": "client check", "max_tokens": 32, "temperature": 0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"] == "echo: client check"
    return answer.headers["x-tiergate-model"].split("@")[0]


@pytest.fixture(scope="module")
def pinned(fleet: Fleet) -> Iterator[None]:
    """``live`` pinned (through one replica's admin API) for this module's tests."""
    first = fleet.replicas["g1"]
    answer = httpx.post(first.url + "/admin/canary/live/pin", headers=ADMIN, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["pin"]["items"] == 6 and answer.json()["status"] == "ok"
    yield
    any_replica = next(iter(fleet.running().values()))
    httpx.delete(any_replica.url + "/admin/canary/live/pin", headers=ADMIN, timeout=60)


def test_exactly_one_replica_runs_the_scheduled_canaries_and_another_takes_over(
        fleet: Fleet, pinned: None) -> None:
    leader = the_leader(fleet)
    mark = len(fleet.live.calls)
    runs_after(fleet, time.time(), 3)
    assert fleet.live.canary_callers(since=mark) == {leader}
    assert leaders(fleet) == [leader]

    # the leader dies: another replica takes the lock once it expires, and runs the canaries
    fleet.kill(leader)
    successor = the_leader(fleet)
    assert successor != leader
    mark, since = len(fleet.live.calls), time.time()
    runs_after(fleet, since, 3)
    assert fleet.live.canary_callers(since=mark) == {successor}

    # restarted, the old leader stays a follower: the lock is renewed by its holder
    fleet.start(leader)
    mark, since = len(fleet.live.calls), time.time()
    runs_after(fleet, since, 3)
    assert leaders(fleet) == [successor]
    assert fleet.live.canary_callers(since=mark) == {successor}


def test_a_drift_rollback_decided_on_one_replica_applies_on_all(
        fleet: Fleet, pinned: None) -> None:
    replicas = fleet.running()
    assert len(replicas) == 3
    assert {name: answering_model(server) for name, server in replicas.items()} == {
        name: "live" for name in replicas}
    leader = the_leader(fleet)
    mark = len(fleet.live.calls)

    fleet.live.swapped.set()  # the silent swap: same name, other answers
    try:
        for name, server in replicas.items():
            wait_for(partial(rolled_back, server, True), timeout=60, what=f"the rollback on {name}")
            # the pinned version answers, as the model did before the swap
            assert answering_model(server) == "live-pinned"
        # decided once, by the replica that ran the canaries: it alone counted the alarm
        assert fleet.live.canary_callers(since=mark) == {leader}
        alarms = {name: metric(server, "tiergate_canary_alerts_total").get(ALARMS, 0)
                  for name, server in replicas.items()}
        assert alarms[leader] >= 1 and all(alarms[n] == 0 for n in replicas if n != leader)
        follower = next(server for name, server in replicas.items() if name != leader)
        seen = status(follower)
        assert seen["status"] == "drift" and seen["rollback_to"] == "live-pinned"
        assert seen["state"]["alarm"]["source"] == "canary"
    finally:
        fleet.live.swapped.clear()

    # the upstream is fixed; once a run on it finished, an operator acknowledges on a follower
    runs_after(fleet, time.time(), 1)
    acked = httpx.post(follower.url + "/admin/canary/live/ack", json={"by": "sre"},
                       headers=ADMIN, timeout=30)
    assert acked.status_code == 200, acked.text
    for name, server in replicas.items():
        wait_for(partial(rolled_back, server, False), timeout=60,
                 what=f"the end of the rollback on {name}")
        assert answering_model(server) == "live"
