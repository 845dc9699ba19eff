"""Storage unit tests: stevedores in turn, LRU per stevedore, nuke_limit, Transient, bans on lookup."""

from __future__ import annotations

import time

import pytest

from cacheserver.counters import Counters
from cacheserver.params import Params
from cacheserver.stevedores import parse_specs
from cacheserver.storage import GRACE, HIT, MISS, Storage
from vcl.runtime import Headers, HttpMessage


def _fill(storage: Storage, url: str, size: int, ttl: float = 100.0, store: str | None = None,
          grace: float = 10.0):
    req = HttpMessage("GET", url)
    r = storage.lookup(url.encode(), req, time.time())
    assert r.kind == MISS
    oc = r.busy
    oc.http = HttpMessage(status=200, headers=Headers([["Content-Length", str(size)]]))
    oc.t_origin, oc.ttl, oc.grace = time.time(), ttl, grace
    oc.append(b"x" * size)
    ok = storage.unbusy(oc, req, None, store)
    oc.finish(True)
    return ok, oc


def test_parse_specs():
    assert parse_specs(None) == [("s0", 256 << 20), ("Transient", None)]
    assert parse_specs(["malloc,1m", "Transient=malloc,2m"]) == [("s0", 1 << 20), ("Transient", 2 << 20)]
    assert parse_specs(["a=malloc,1k", "malloc,2k"]) == [("a", 1024), ("s0", 2048), ("Transient", None)]
    # a Transient alone is the only storage (varnishd adds s0 only when no -s is given)
    assert parse_specs(["Transient=default,1m"]) == [("Transient", 1 << 20)]


def test_a_malloc_store_under_1m_is_refused_on_the_command_line(capsys):
    from cacheserver.main import main
    assert main(["-s", "malloc,900k", "-b", "127.0.0.1:1", "-a", "127.0.0.1:0"]) == 2
    assert 'size "900k": too small, did you forget to specify M or G?' in capsys.readouterr().err
    assert main(["-s", "Transient=default,1023k", "-b", "127.0.0.1:1", "-a", "127.0.0.1:0"]) == 2


def test_stevedores_are_used_in_turn_and_evict_their_own_lru():
    c = Counters()
    st = Storage(0, c, Params(), specs=[("s1", 1 << 20), ("s2", 1 << 20), ("Transient", None)])
    assert _fill(st, "/a", 900_000)[1].store == "s1"
    assert _fill(st, "/b", 900_000)[1].store == "s2"
    assert _fill(st, "/c", 900_000)[1].store == "s1"        # evicts /a from s1
    assert c.n_lru_nuked == 1 and c.n_object == 2
    assert c.extra["SMA.s1.g_bytes"] > 900_000 and c.extra["SMA.s2.g_space"] < 200_000
    assert st.lookup(b"/a", HttpMessage("GET", "/a"), time.time()).kind == MISS


def test_nuke_limit_and_salvage_to_transient():
    p = Params()
    p.set("nuke_limit", "0")
    c = Counters()
    st = Storage(1 << 20, c, p)
    _fill(st, "/big", 1_040_000)
    ok, oc = _fill(st, "/small", 20_000)
    assert ok is False and c.n_lru_limited == 1 and c.n_lru_nuked == 0


def test_short_ttl_and_hint_go_to_transient_which_can_be_bounded():
    c = Counters()
    st = Storage(0, c, Params(), specs=[("s0", 1 << 20), ("Transient", 100_000)])
    assert _fill(st, "/short", 10, ttl=1, grace=0)[1].store == "Transient"     # below shortlived
    assert _fill(st, "/hint", 10, store="Transient")[1].store == "Transient"
    ok, _ = _fill(st, "/too-big", 200_000, store="Transient")
    assert not ok and c.extra["SMA.Transient.c_fail"] >= 1


def test_grace_lookup_and_expiry_gauges():
    c = Counters()
    st = Storage(1 << 20, c, Params())
    _, oc = _fill(st, "/g", 10, ttl=0.05)
    # lookup's clock is its argument: 1 s after the object's origin, past its TTL, inside its grace
    r = st.lookup(b"/g", HttpMessage("GET", "/g"), oc.t_origin + 1.0)
    assert r.kind == GRACE and r.oc is oc and r.busy is not None
    st.abandon(r.busy)
    st.remove(oc)
    assert c.n_object == 0 and c.extra["SMA.Transient.g_bytes"] == 0


@pytest.mark.parametrize("expr, hit", [
    ("req.url == /x", False), ("req.url ~ ^/y", True), ("obj.http.content-length == 10", False),
    ("obj.status != 200", True), ("obj.ttl > 1h", True), ("req.url ~ x && obj.status == 404", True),
])
def test_bans_are_checked_at_lookup(expr, hit):
    c = Counters()
    st = Storage(1 << 20, c, Params())
    _fill(st, "/x", 10)
    st.ban(expr)
    kind = st.lookup(b"/x", HttpMessage("GET", "/x"), time.time()).kind
    assert (kind == HIT) is hit


def test_a_reader_that_gives_up_waiting_leaves_the_others_waiting():
    """Two clients stream one object; one's send_timeout cancels its wait for more body: the other still
    gets the body when it comes (a shared wake-up future, cancelled, once cancelled them all)."""
    import asyncio

    from cacheserver.storage import ObjCore

    async def main():
        oc = ObjCore()

        async def impatient():
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await oc.wait_more()

        patient = asyncio.ensure_future(oc.wait_more())
        await impatient()
        assert not patient.done()
        oc.append(b"more")
        await asyncio.wait_for(patient, 5)

    asyncio.run(main())


def test_wait_more_says_whether_the_body_moved_within_the_time():
    import asyncio

    from cacheserver.storage import ObjCore

    async def main():
        oc = ObjCore()
        assert await oc.wait_more(0.01) is False
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, oc.append, b"x")
        assert await oc.wait_more(30) is True
        loop.call_later(0.01, oc.finish, True)
        assert await asyncio.wait_for(oc.wait_more(), 10) is True
        assert oc._wakeup is None          # nothing left behind

    asyncio.run(main())
