"""MAIN.threads as varnishd's herder would keep it for the requests and fetches in progress
(cacheserver/workers.py), on a fake clock: bred on demand up to thread_pool_max, retired after
thread_pool_timeout of idleness down to thread_pool_min, WorkThread records for each."""

from __future__ import annotations

import pytest

from cacheserver import workers as workers_mod
from cacheserver.counters import Counters
from cacheserver.params import Params
from cacheserver.workers import WorkerPools


class FakeLog:
    def __init__(self) -> None:
        self.records: list[tuple[int, str, list]] = []

    def wants(self, tag: str) -> bool:
        return True

    def write(self, vxid: int, kind: str, records: list, tail: bytes = b"") -> None:
        self.records.append((vxid, kind, records))


class FakeServer:
    def __init__(self, **params: str) -> None:
        self.params = Params()
        for name, value in params.items():
            self.params.set(name, value)
        self.counters = Counters()
        self.vsl = FakeLog()


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(workers_mod.time, "monotonic", lambda: now[0])
    return now


def _pools(clock, **params: str) -> tuple[WorkerPools, FakeServer]:
    server = FakeServer(**params)
    pools = WorkerPools(server)
    pools.start()              # no running loop: herd() is called by the test
    return pools, server


def test_each_pool_starts_with_its_minimum(clock):
    pools, server = _pools(clock, thread_pools="3", thread_pool_min="5")
    c = server.counters
    assert (c.pools, c.threads, c.threads_created) == (3, 15, 15)
    assert [r[2][0] for r in server.vsl.records][:2] == [("WorkThread", "0x000000000001 start"),
                                                         ("WorkThread", "0x000000000002 start")]
    assert all(vxid == 0 for vxid, _, _ in server.vsl.records)


def test_work_beyond_the_idle_workers_breeds_up_to_the_maximum(clock):
    pools, server = _pools(clock, thread_pools="1", thread_pool_min="5", thread_pool_max="8")
    for _ in range(5):
        pools.acquire()
    assert server.counters.threads == 5            # the minimum covers five tasks
    for _ in range(3):
        pools.acquire()
    assert (server.counters.threads, server.counters.threads_created) == (8, 8)
    pools.acquire()                                # none left to breed
    assert (server.counters.threads, server.counters.threads_limited) == (8, 1)


def test_idle_workers_retire_after_thread_pool_timeout(clock):
    pools, server = _pools(clock, thread_pools="1", thread_pool_min="5", thread_pool_max="10",
                           thread_pool_timeout="10")
    for _ in range(7):
        pools.acquire()
    for _ in range(7):
        pools.release()
    clock[0] += 9.9
    pools.herd()
    assert server.counters.threads == 7            # not idle long enough yet
    clock[0] += 0.1
    pools.herd()
    c = server.counters
    assert (c.threads, c.threads_destroyed) == (5, 2)      # down to the minimum, never below
    assert server.vsl.records[-1][2] == [("WorkThread", "0x000000000006 end")]


def test_busy_workers_are_not_retired(clock):
    pools, server = _pools(clock, thread_pools="1", thread_pool_min="5", thread_pool_timeout="10")
    for _ in range(7):
        pools.acquire()
    pools.release()
    clock[0] += 60
    pools.herd()
    assert server.counters.threads == 6            # six tasks still run


def test_parameter_changes_move_the_count(clock):
    pools, server = _pools(clock, thread_pools="1", thread_pool_min="5", thread_pool_max="6",
                           thread_pool_timeout="10")
    server.params.set("thread_pool_min", "6")
    pools.herd()
    assert server.counters.threads == 6            # a larger minimum is bred at once
    server.params.set("thread_pool_min", "5")
    server.params.set("thread_pool_max", "5")
    clock[0] += 10
    pools.herd()
    assert (server.counters.threads, server.counters.threads_destroyed) == (5, 1)
