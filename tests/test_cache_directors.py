"""vmod directors without a server: selection, health through the probe hook, shard stickiness."""

from __future__ import annotations

from cacheserver.backends import healthy, resolve, set_admin_health, set_probe_health
from vcl.runtime import BackendSpec, Context, HttpMessage
from vmods.directors import Fallback, Hash, RoundRobin, Shard, _shard_add


def _backends(n: int) -> list[BackendSpec]:
    return [BackendSpec(f"b{i}", host="127.0.0.1", port=str(8000 + i)) for i in range(n)]


def _ctx(url: str = "/") -> Context:
    return Context(method="vcl_recv", req=HttpMessage("GET", url), bereq=HttpMessage("GET", url))


def test_probe_hook_drives_health_and_directors_skip_sick_backends():
    b0, b1 = _backends(2)
    rr = RoundRobin()
    rr.add(b0)
    rr.add(b1)
    set_probe_health(b0, False)
    assert not healthy(b0) and healthy(rr)
    assert {resolve(rr, _ctx()).name for _ in range(4)} == {"b1"}
    set_admin_health(b0, "healthy")            # the admin state overrides the probe
    assert {resolve(rr, _ctx()).name for _ in range(4)} == {"b0", "b1"}
    set_admin_health(b1, "sick")
    set_admin_health(b0, "sick")
    assert resolve(rr, _ctx()) is None and not healthy(rr)


def test_fallback_and_nested_directors():
    b0, b1, b2 = _backends(3)
    inner = Fallback()
    inner.add(b0)
    inner.add(b1)
    outer = RoundRobin()
    outer.add(inner)
    outer.add(b2)
    assert [resolve(outer, _ctx()).name for _ in range(4)] == ["b0", "b2", "b0", "b2"]
    set_admin_health(b0, "sick")
    assert resolve(outer, _ctx()).name == "b1"


def test_hash_and_shard_are_sticky_and_move_only_the_sick_backends_keys():
    backends = _backends(4)
    h, sh = Hash(), Shard()
    init = Context(method="vcl_init")
    for b in backends:
        h.add(b)
        _shard_add(sh, init, b)
    sh.reconfigure(init, 67)
    urls = [f"/obj/{i}" for i in range(200)]
    before = {u: resolve(sh, _ctx(u)).name for u in urls}
    assert len(set(before.values())) == 4                      # spread over all backends
    assert all(h.pick(_ctx(), u) is h.pick(_ctx(), u) for u in urls[:20])
    set_admin_health(backends[2], "sick")
    after = {u: resolve(sh, _ctx(u)).name for u in urls}
    moved = [u for u in urls if before[u] != after[u]]
    assert moved and all(before[u] == "b2" for u in moved)     # only b2's keys moved
