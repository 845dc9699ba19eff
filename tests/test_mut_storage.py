"""Storage behaviour the mutation run found untested: freshness bounds, purge (hard and soft), expiry,
salvage to Transient, the ban lurker and ban_cutoff, storage.* variables, Vary matching, flow control.

The wall clock storage.py reads is replaced by a fixed one (`clock`), so every time comparison is exact.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from inproc import inproc_cache_factory, wait_for
from test_cache_support import Resp

from cacheserver import storage as storage_mod
from cacheserver.counters import Counters
from cacheserver.params import Params
from cacheserver.storage import BUSY, GRACE, HIT, MISS, STREAM_WINDOW, ObjCore, Storage, vary_match, vary_of
from vcl.runtime import Headers, HttpMessage

T0 = 1_000_000.0
inproc_make = pytest.fixture(inproc_cache_factory, name="inproc_make")


@pytest.fixture
def clock(monkeypatch):
    now = [T0]
    monkeypatch.setattr(storage_mod, "_wall", lambda: now[0])
    return now


def make(params: Params | None = None, specs=None) -> tuple[Storage, Counters]:
    c = Counters()
    return Storage(1 << 20, c, params or Params(), specs=specs), c


def req(url: str = "/", **headers: str) -> HttpMessage:
    return HttpMessage("GET", url, headers=Headers([[k.replace("_", "-"), v] for k, v in headers.items()]))


def fill(st: Storage, url: str = "/", ttl: float = 100.0, grace: float = 10.0, keep: float = 0.0,
         size: int = 10, t_origin: float = T0, vary: str | None = None, request: HttpMessage | None = None,
         hint: str | None = None, hfm: bool = False, xid: int = 0, tag: str | None = None):
    request = request or req(url)
    r = st.lookup(url.encode(), request, t_origin, always_miss=True)
    assert r.kind == MISS
    oc = r.busy
    oc.http = HttpMessage(status=200, headers=Headers([["Content-Length", str(size)]]))
    if tag is not None:
        oc.http.headers.set("X-Tag", tag)
    oc.t_origin, oc.ttl, oc.grace, oc.keep = t_origin, ttl, grace, keep
    oc.expected = size                                  # as the fetch sets it from Content-Length


    oc.t_origin, oc.ttl, oc.grace, oc.keep, oc.hfm, oc.xid = t_origin, ttl, grace, keep, hfm, xid
    oc.append(b"x" * size)
    assert st.unbusy(oc, request, vary, hint)
    oc.finish(True)
    return oc


def test_fresh_and_in_grace_end_exactly_at_their_bounds():
    oc = ObjCore()
    oc.t_origin, oc.ttl, oc.grace = 100.0, 10.0, 5.0
    assert oc.fresh(109.999) and not oc.fresh(110.0)
    assert oc.in_grace(114.999) and not oc.in_grace(115.0)


def test_lookup_hit_then_grace_then_miss_at_exact_times(clock):
    st, c = make()
    oc = fill(st, "/a", ttl=10, grace=5, keep=5)
    assert st.lookup(b"/a", req("/a"), T0 + 9.999).kind == HIT
    r = st.lookup(b"/a", req("/a"), T0 + 10)
    assert (r.kind, r.oc) == (GRACE, oc)
    st.abandon(r.busy)
    r = st.lookup(b"/a", req("/a"), T0 + 15)
    assert (r.kind, r.oc) == (MISS, oc)           # past grace, in keep: a miss that keeps the stale object
    st.abandon(r.busy)
    r = st.lookup(b"/a", req("/a"), T0 + 20)
    assert (r.kind, r.oc) == (MISS, None)         # past keep: gone
    assert oc.hits == 2


def test_hard_purge_removes_every_unbusy_variant_and_counts_them(clock):
    st, c = make()
    a = fill(st, "/p", vary="X-V", request=req("/p", X_V="1"))
    b = fill(st, "/p", vary="X-V", request=req("/p", X_V="2"))
    busy = st.lookup(b"/p", req("/p", X_V="3"), T0, always_miss=True).busy
    assert st.purge(b"/p") == 2
    assert c.n_obj_purged == 2 and c.n_object == 0
    assert a.dying and b.dying and not busy.dying
    assert st.purge(b"/nothing") == 0
    assert st.purge(b"/p") == 0                    # only the busy one is left
    fill(st, "/q")
    assert st.purge(b"/q") == 1 and c.n_obj_purged == 3


def test_soft_purge_only_lowers_each_timer(clock):
    st, c = make()
    oc = fill(st, "/s", ttl=100, grace=10, keep=5)
    assert st.purge(b"/s", ttl=3, grace=2, keep=math.nan, now=T0 + 10) == 1
    assert (oc.ttl, oc.grace, oc.keep) == (13, 2, 5)
    assert oc.exp_at == T0 + 13 + 2 + 5            # rescheduled
    st.purge(b"/s", ttl=50, grace=4, keep=9, now=T0 + 10)       # all higher: nothing changes
    assert (oc.ttl, oc.grace, oc.keep) == (13, 2, 5)
    st.purge(b"/s", ttl=math.nan, grace=1, keep=1, now=T0 + 10)
    assert (oc.ttl, oc.grace, oc.keep) == (13, 1, 1)
    assert c.n_obj_purged == 0 and not oc.dying
    st.purge(b"/s", ttl=0, grace=0, keep=0.001, now=T0 + 10)   # not all zero: still soft
    assert (oc.ttl, oc.keep) == (10, 0.001) and not oc.dying


def test_soft_purge_uses_the_wall_clock_by_default(clock):
    st, _ = make()
    oc = fill(st, "/w", ttl=100)
    clock[0] = T0 + 20
    st.purge(b"/w", ttl=1, grace=0, keep=0)
    assert oc.ttl == 21


def test_expiry_removes_objects_at_their_time_and_skips_rescheduled_ones(clock):
    st, c = make()
    a = fill(st, "/a", ttl=1, grace=1, keep=1)
    b = fill(st, "/b", ttl=1, grace=0, keep=0)
    b.ttl = 10
    st.reschedule(b)
    assert (a.exp_at, b.exp_at) == (T0 + 3, T0 + 10)
    clock[0] = T0 + 3            # b's first (T0 + 1) entry is stale, and first in line
    st._expire()
    assert c.n_expired == 1 and a.dying and not b.dying
    clock[0] = T0 + 10
    st._expire()
    assert c.n_expired == 2 and b.dying and c.n_object == 0


def test_expiry_waits_for_the_exact_time(clock):
    st, c = make()
    a = fill(st, "/a", ttl=1, grace=1, keep=1)
    clock[0] = T0 + 2.999
    st._expire()
    assert c.n_expired == 0 and not a.dying


def test_negative_timers_count_as_zero_in_the_expiry_time(clock):
    st, _ = make()
    oc = fill(st, "/n", ttl=5, grace=-3, keep=-1)
    assert oc.exp_at == T0 + 5


def test_reschedule_ignores_busy_and_dying_objects(clock):
    st, c = make()
    oc = fill(st, "/r")
    mailed = c.exp_mailed
    oc.dying = True
    st.reschedule(oc)
    busy = st.lookup(b"/r2", req("/r2"), T0).busy
    st.reschedule(busy)
    assert c.exp_mailed == mailed
    oc.dying = False
    st.reschedule(oc)
    assert c.exp_mailed == mailed + 1 and c.exp_received == c.exp_mailed


def test_an_object_too_big_for_its_store_is_salvaged_short_lived_in_transient(clock):
    st, c = make(_lurker_params(shortlived="7"), specs=[("s0", 50), ("Transient", None)])   # headers too big
    # varnishd 7.1 (vbf_allocobj): ttl = min(ttl, shortlived) counted from t_origin, however old the
    # object is: a response with Age: 100 salvaged this way has obj.ttl -90 and is never hit (checked
    # with varnishtest: -s s0=malloc,1M filled, nuke_limit=0, a 2 KB header that does not fit)
    oc = fill(st, "/big", ttl=1000, grace=50, keep=20, size=10, t_origin=T0 - 100)
    assert oc.store == "Transient"
    assert (oc.ttl, oc.grace, oc.keep) == (7, 0, 0)
    assert st.lookup(b"/big", req("/big"), T0).kind == MISS
    short = fill(st, "/short", ttl=5, grace=50, size=10)       # a TTL below shortlived stays as it is
    assert short.store == "Transient" and short.ttl == 5
    assert st.lookup(b"/short", req("/short"), T0 + 4.999).kind == HIT
    assert c.n_object == 2


def test_storage_variables():
    st, _ = make(specs=[("s0", 1000), ("Transient", None)])
    assert st.storage_var("s0", "happy") is True and st.storage_var("nope", "happy") is False
    assert st.storage_var("s0", "free_space") == 1000.0 and st.storage_var("s0", "used_space") == 0.0
    assert st.storage_var("nope", "free_space") == 0.0
    fill(st, "/u", size=100)
    used = st.storage_var("s0", "used_space")
    assert isinstance(used, float) and used > 100
    assert st.storage_var("s0", "free_space") == 1000 - used


def test_vary_over_several_fields_and_star():
    oc = ObjCore()
    oc.vary = vary_of("X-A, x-b,X-A , Accept-Encoding", req("/", X_A="1", X_B="2", Accept_Encoding="gzip"))
    assert oc.vary == (("x-a", "1"), ("x-b", "2"), ("accept-encoding", "gzip"))
    assert vary_match(oc, req("/", X_A="1", X_B="2", Accept_Encoding="gzip"))
    assert not vary_match(oc, req("/", X_A="1", X_B="3", Accept_Encoding="gzip"))
    assert not vary_match(oc, req("/", X_A="1", Accept_Encoding="gzip"))      # a missing field differs
    assert not vary_match(oc, req("/", X_A="1", X_B="2", Accept_Encoding="br"))
    assert vary_match(oc, req("/", X_A="1", X_B="2", Accept_Encoding="br"), gzip_support=True)
    assert not vary_match(oc, req("/", X_A="2", X_B="2"), gzip_support=True)
    first = ObjCore()             # Accept-Encoding skipped, the fields after it still compared
    first.vary = vary_of("Accept-Encoding, X-A", req("/", X_A="1", Accept_Encoding="gzip"))
    assert not vary_match(first, req("/", X_A="2", Accept_Encoding="gzip"), gzip_support=True)
    star = ObjCore()
    star.vary = vary_of("*", req("/"))
    # varnishd's VRY_Create: '*' is a field name like any other, absent from requests, so it matches
    # (tests/vtc/fid_vary_star.vtc holds on varnishd)
    assert star.vary == (("*", None),) and vary_match(star, req("/"))
    assert not vary_match(star, req("/", **{"*": "x"}))
    assert vary_of("", req("/")) is None and vary_of(" , ", req("/")) is None
    none = ObjCore()
    assert vary_match(none, req("/"))


def test_abandon_unlinks_a_busy_object_and_wakes_its_waiters(clock):
    async def scenario():
        st, c = make()
        busy = st.lookup(b"/x", req("/x"), T0).busy
        assert st.lookup(b"/x", req("/x"), T0).kind == BUSY
        waiter = asyncio.get_running_loop().create_future()
        busy.head.add_waiter(waiter)
        st.abandon(busy)
        assert waiter.done() and busy.dying and busy not in busy.head.ocs
        assert b"/x" in st.heads              # a waiter still needs the head
        done = st.lookup(b"/x", req("/x"), T0).busy
        done.head.rush()
        st.abandon(fill(st, "/y"))            # not busy: left alone
        assert c.n_object == 1

    asyncio.run(scenario())


def test_the_last_object_of_a_head_takes_the_head_with_it(clock):
    st, c = make()
    oc = fill(st, "/h")
    assert c.n_objecthead == 1 and c.n_objectcore == 1
    st.remove(oc)
    assert b"/h" not in st.heads and c.n_objecthead == 0 and c.n_objectcore == 0 and c.n_object == 0
    st.remove(oc)                                # twice: counted once
    assert c.n_object == 0


def test_drop_body_frees_what_readers_have_seen():
    oc = ObjCore()
    oc.append(b"abc")
    oc.append(b"def")
    oc.body()
    cell = oc.open_reader()
    assert oc.read(cell) == b"abcdef"
    oc.drop_body()
    assert not oc.keep_body and oc.body_cache is None and oc.chunks == [] and oc.buffered == 0
    oc.append(b"ghi")
    assert oc.read(cell) == b"ghi" and oc.chunks == []


def test_a_fetch_waits_for_a_slow_reader_when_the_body_is_not_kept():
    async def scenario():
        oc = ObjCore()
        oc.keep_body = False
        cell = oc.open_reader()
        oc.append(b"x" * STREAM_WINDOW)
        waiting = asyncio.ensure_future(oc.wait_space())
        await asyncio.sleep(0)
        assert not waiting.done()
        assert len(oc.read(cell)) == STREAM_WINDOW        # the reader caught up: room again
        await asyncio.wait_for(waiting, 5)
        oc.append(b"y" * (STREAM_WINDOW - 1))
        await asyncio.wait_for(oc.wait_space(), 5)         # below the window: no wait
        oc.append(b"z")
        waiting = asyncio.ensure_future(oc.wait_space())
        await asyncio.sleep(0)
        assert not waiting.done()
        oc.finish(False)                                   # a failed fetch stops waiting
        await asyncio.wait_for(waiting, 5)

    asyncio.run(scenario())


def _lurker_params(**values: str) -> Params:
    p = Params()
    for name, value in values.items():
        p.set(name, value)
    return p


def test_the_lurker_kills_objects_under_an_obj_ban_once_it_is_old_enough(clock):
    st, c = make(_lurker_params(ban_lurker_age="60", ban_lurker_sleep="0.01"))
    keep = fill(st, "/keep")
    gone = fill(st, "/gone", tag="old")
    st.bans.add("obj.http.x-tag == old")
    st.bans.bans[0].t = T0 - 59.999
    st._lurk()
    assert not gone.dying and c.bans_lurker_obj_killed == 0
    st.bans.bans[0].t = T0 - 60
    st._lurk()
    assert gone.dying and not keep.dying and c.bans_lurker_obj_killed == 1
    assert keep.ban is st.bans.newest


def test_the_lurker_is_off_with_ban_lurker_sleep_zero(clock):
    st, c = make(_lurker_params(ban_lurker_sleep="0"))
    gone = fill(st, "/gone")
    st.bans.add("obj.status == 200")
    st.bans.bans[0].t = T0 - 3600
    st._lurk()
    assert not gone.dying and c.bans_lurker_tested == 0


def test_the_lurker_sleeps_until_the_oldest_pending_ban_is_due(clock):
    async def scenario():
        st, _ = make(_lurker_params(ban_lurker_age="60", ban_lurker_sleep="0.01"))
        fill(st, "/a")
        loop = asyncio.get_running_loop()
        st.bans.add("obj.status == 404")
        st.bans.bans[0].t = T0 - 20
        st.bans.add("obj.status == 500")
        st.bans.bans[0].t = T0 - 10
        st._lurk()
        assert st._lurker.when() - loop.time() == pytest.approx(40, abs=0.5)    # 20 s old, due at 60
        st.bans.bans[1].t = T0 - 59.99
        st._lurker.cancel()
        st._lurker = None
        st._lurk()
        assert st._lurker.when() - loop.time() == pytest.approx(0.05, abs=0.04)  # at least 50 ms
        st._lurker.cancel()
        st._lurker = None
        st.bans.bans[1].t = T0 - 60            # one due: after a pass, look again in a second
        st._lurk()
        assert st._lurker.when() - loop.time() == pytest.approx(1.0, abs=0.5)
        st._lurker.cancel()

    asyncio.run(scenario())


def test_a_new_ban_brings_a_sleeping_lurker_forward_but_never_back(clock):
    async def scenario():
        st, _ = make(_lurker_params(ban_lurker_sleep="0.5"))
        loop = asyncio.get_running_loop()
        st._arm_lurker(30)
        assert st._lurker.when() - loop.time() == pytest.approx(30, abs=0.5)
        st.ban("obj.status == 404")                       # sooner: re-armed at ban_lurker_sleep
        assert st._lurker.when() - loop.time() == pytest.approx(0.5, abs=0.2)
        st._arm_lurker(30)                                # later: left as it is
        assert st._lurker.when() - loop.time() == pytest.approx(0.5, abs=0.2)
        st._lurker.cancel()

    asyncio.run(scenario())


def test_ban_cutoff_expunges_objects_on_bans_past_the_cutoff(clock):
    st, c = make(_lurker_params(ban_cutoff="2", ban_lurker_sleep="0.01"))
    old = fill(st, "/old")            # on the initial ban
    st.bans.add("obj.status == 1")
    mid = fill(st, "/mid")            # on the second ban
    st.bans.add("obj.status == 2")
    new = fill(st, "/new")            # on the newest
    assert len(st.bans.bans) == 3
    st._lurk()
    assert old.dying and not mid.dying and not new.dying
    assert c.bans_lurker_obj_killed_cutoff == 1
    st.params.set("ban_cutoff", "0")  # 0: no cutoff
    st.bans.add("obj.status == 3")
    st._lurk()
    assert not mid.dying and c.bans_lurker_obj_killed_cutoff == 1


def test_a_hit_moves_an_object_on_the_lru_at_most_once_per_lru_interval(clock):
    st, c = make(_lurker_params(lru_interval="2"))
    oc = fill(st, "/l")
    last = oc.t_lastuse
    st.lookup(b"/l", req("/l"), last + 1.999)
    assert c.n_lru_moved == 0
    st.lookup(b"/l", req("/l"), last + 2)
    assert c.n_lru_moved == 1 and oc.t_lastuse == last + 2
    st.lookup(b"/l", req("/l"), last + 3)
    assert c.n_lru_moved == 1
    st.lookup(b"/l", req("/l"), last + 4)
    assert c.n_lru_moved == 2


def test_the_lru_order_follows_hits(clock):
    st, c = make(_lurker_params(lru_interval="0"), specs=[("s0", 3000), ("Transient", None)])
    a = fill(st, "/a", size=1000)
    b = fill(st, "/b", size=1000)
    st.lookup(b"/a", req("/a"), T0 + 1)          # /a used last: /b goes first
    fill(st, "/c", size=1000)
    assert b.dying and not a.dying and c.n_lru_nuked == 1


def test_growing_bodies_are_charged_only_when_kept_and_stored(clock):
    """A body of unknown length takes a segment of fetch_chunksize (16k) whenever the last is full,
    even exactly; trim() gives back what the last one does not use (varnishd's sml_trimstore)."""
    st, c = make(specs=[("s0", 40_000), ("Transient", None)])
    oc = fill(st, "/g", size=0)
    head = st.storage_var("s0", "used_space")
    oc.append(b"y" * 500)
    assert st.grow(oc) and st.storage_var("s0", "used_space") == head + 16384
    oc.append(b"y" * 15884)                         # exactly full: the next segment is taken
    assert st.grow(oc) and st.storage_var("s0", "used_space") == head + 2 * 16384
    st.trim(oc)                                     # the last segment is empty: freed
    assert st.storage_var("s0", "used_space") == head + 16384 and c.extra["SMA.s0.c_freed"] == 16384
    oc.append(b"y" * 20000)                         # 36384 bytes want three segments: no room
    assert not st.grow(oc) and oc.store == ""
    unstored = ObjCore()
    unstored.append(b"z" * 10_000)
    assert st.grow(unstored)                        # pass bodies are not charged
    oc2 = fill(st, "/h", size=0)
    oc2.keep_body = False
    before = st.storage_var("s0", "used_space")
    oc2.append(b"y" * 5000)
    assert st.grow(oc2) and st.storage_var("s0", "used_space") == before


def test_trim_moves_a_last_segment_with_512_bytes_unused(clock):
    st, c = make()
    oc = fill(st, "/t", size=0)
    oc.append(b"y" * 16000)                         # 384 unused: kept as it is
    assert st.grow(oc)
    st.trim(oc)
    assert oc.alloc == 16384 and c.extra["SMA.s0.c_freed"] == 0
    oc2 = fill(st, "/u", size=0)
    oc2.append(b"y" * 15800)                        # 584 unused: moved to 15800 bytes
    assert st.grow(oc2)
    reqs = c.extra["SMA.s0.c_req"]
    st.trim(oc2)
    assert oc2.alloc == 15800 and c.extra["SMA.s0.c_freed"] == 16384 and c.extra["SMA.s0.c_req"] == reqs + 1


def test_removing_an_object_frees_its_body_unless_a_reader_streams_it(clock):
    st, _ = make()
    done = fill(st, "/d")
    done.body()
    st.remove(done)
    assert done.chunks == [] and done.body_cache is None and done.store == ""
    read = fill(st, "/r")
    cell = read.open_reader()
    st.remove(read)
    assert read.read(cell) == b"x" * 10           # the reader still gets it all


def test_ban_dups_off_keeps_identical_bans(clock):
    st, c = make(_lurker_params(ban_dups="off", ban_lurker_sleep="0"))
    st.ban("obj.status == 1")
    st.ban("obj.status == 1")
    assert c.bans_dups == 0 and len(st.bans.bans) == 3
    st.params.set("ban_dups", "on")
    st.ban("obj.status == 1")
    assert c.bans_dups == 2


def test_a_new_ban_trims_the_unreferenced_tail_only_while_the_lurker_runs(clock):
    st, c = make(_lurker_params(ban_lurker_sleep="0"))
    st.ban("obj.status == 1")
    assert len(st.bans.bans) == 2                  # lurker off: nothing trimmed
    st.params.set("ban_lurker_sleep", "0.5")
    st.ban("obj.status == 2")
    assert len(st.bans.bans) == 1 and c.bans_deleted == 2


def test_ban_cutoff_counts_every_object_it_expunges(clock):
    st, c = make(_lurker_params(ban_cutoff="1", ban_lurker_sleep="0.01"))
    a, b = fill(st, "/a"), fill(st, "/b")
    st.bans.add("obj.status == 1")
    st._lurk()
    assert a.dying and b.dying and c.bans_lurker_obj_killed_cutoff == 2


def test_req_grace_and_req_ttl_shorten_what_a_lookup_accepts(clock):
    st, _ = make()
    oc = fill(st, "/q", ttl=10, grace=100)
    r = st.lookup(b"/q", req("/q"), T0 + 5, req_ttl=4.999)
    assert (r.kind, r.oc) == (MISS, None)       # past req.ttl but not its own TTL: no grace, no stale
    st.abandon(r.busy)
    r = st.lookup(b"/q", req("/q"), T0 + 20, req_grace=15)
    assert r.kind == GRACE and r.oc is oc
    st.abandon(r.busy)
    r = st.lookup(b"/q", req("/q"), T0 + 20, req_grace=9.999)
    assert r.kind == MISS and r.oc is oc
    st.abandon(r.busy)
    r = st.lookup(b"/q", req("/q"), T0 + 20, req_grace=-1)                     # unset: the object's
    assert r.kind == GRACE
    st.abandon(r.busy)
    assert st.lookup(b"/q", req("/q"), T0 + 5, req_ttl=-1).kind == HIT


def test_grace_hits_while_a_refresh_is_busy_count_on_the_stale_object(clock):
    st, _ = make()
    oc = fill(st, "/r", ttl=10, grace=100)
    first = st.lookup(b"/r", req("/r"), T0 + 20)
    assert first.kind == GRACE and first.busy is not None and oc.hits == 1
    for n in (2, 3):
        r = st.lookup(b"/r", req("/r"), T0 + 20)
        assert (r.kind, r.oc, r.busy, oc.hits) == (GRACE, oc, None, n)
    assert st.heads[b"/r"].ocs[0] is first.busy            # the newest object first


def test_a_head_emptied_by_a_ban_is_counted_again_for_the_new_fetch(clock):
    st, c = make()
    fill(st, "/b")
    st.ban("obj.status == 200")
    r = st.lookup(b"/b", req("/b"), T0 + 1)
    assert r.kind == MISS and b"/b" in st.heads
    assert c.n_objecthead == 1 and c.n_objectcore == 1


def test_configure_adds_an_unbounded_transient_and_replaces_old_counters():
    st, c = make(specs=[("a", 1000), ("b", 2000)])
    assert list(st.stevedores) == ["a", "b", "Transient"] and st.max_bytes == 2000
    assert st.stevedores["Transient"].name == "Transient" and st.stevedores["Transient"].max_bytes is None
    assert "SMA.a.g_space" in c.extra and "SMA.Transient.g_bytes" in c.extra
    st.configure(["c=malloc,1k"])
    assert "SMA.a.g_space" not in c.extra and "SMA.c.g_space" in c.extra and st.max_bytes == 1024
    oc = fill(st, "/short", ttl=1, grace=0)           # short-lived: the added Transient takes it
    assert oc.store == "Transient" and c.extra["SMA.Transient.g_bytes"] == oc.size


def test_an_object_costs_its_overhead_headers_and_body(clock):
    st, _ = make()
    oc = fill(st, "/s", size=10)                      # one header: Content-Length: 10
    # varnishd's malloc store: 125 bytes, then each field NUL-ended ("HTTP/1.1", "200", "OK",
    # "Content-Length: 10"), in 8-byte units; then the body
    head = 125 + 9 + 4 + 3 + len("Content-Length: 10") + 1
    assert oc.compute_size(with_body=False) == (head + 7) // 8 * 8 == 160
    assert oc.compute_size() == 170 and st.storage_var("s0", "used_space") == 170


def test_hit_for_miss_and_hit_for_pass_markers_at_lookup(clock):
    st, c = make()
    hfm = fill(st, "/m", ttl=10, grace=0, keep=100)
    hfm.hfm = True
    for n in (1, 2):
        r = st.lookup(b"/m", req("/m"), T0 + 5)
        assert (r.kind, r.oc) == ("hitmiss", hfm) and r.busy is not None and c.cache_hitmiss == n
        st.abandon(r.busy)
    r = st.lookup(b"/m", req("/m"), T0 + 50)          # past its TTL, kept: still a hit-for-miss
    assert (r.kind, r.oc) == ("hitmiss", hfm) and r.busy is not None and c.cache_hitmiss == 3
    st.abandon(r.busy)
    hfp = fill(st, "/p", ttl=10, grace=0, keep=100)
    hfp.hfp = True
    r = st.lookup(b"/p", req("/p"), T0 + 5)
    assert (r.kind, r.oc, c.cache_hitpass) == ("hitpass", hfp, 1)        # the marker, for HitPass
    assert (st.lookup(b"/p", req("/p"), T0 + 5).kind, c.cache_hitpass) == ("hitpass", 2)
    r = st.lookup(b"/p", req("/p"), T0 + 50)          # an expired hit-for-pass is no stale object
    assert (r.kind, r.oc) == (MISS, None)


def test_req_ttl_zero_is_unset_and_req_ttl_also_moves_the_end_of_grace(clock):
    """varnishd 7.1, checked with varnishtest: `set req.ttl = 0s` still hits (EXP_Ttl takes req.ttl only
    above 0), and a stale object's grace window starts where req.ttl ends its TTL (EXP_Ttl_grace):
    ttl 1s, grace 2s, req.ttl 0.5s is a miss at 2.7s, a grace hit without req.ttl."""
    st, _ = make()
    oc = fill(st, "/t", ttl=10, grace=5)
    assert st.lookup(b"/t", req("/t"), T0 + 9, req_ttl=0).kind == HIT
    r = st.lookup(b"/t", req("/t"), T0 + 9, req_ttl=0.5)
    assert (r.kind, r.oc) == (MISS, None)
    st.abandon(r.busy)
    r = st.lookup(b"/t", req("/t"), T0 + 10.5, req_ttl=5)        # 5 + 5 < 10.5: past the window
    assert (r.kind, r.oc) == (MISS, oc)
    st.abandon(r.busy)
    r = st.lookup(b"/t", req("/t"), T0 + 10.5, req_ttl=6)        # 6 + 5 > 10.5
    assert (r.kind, r.oc) == (GRACE, oc)
    st.abandon(r.busy)
    r = st.lookup(b"/t", req("/t"), T0 + 10.5, req_ttl=6, req_grace=4.4)
    assert (r.kind, r.oc) == (MISS, oc)
    st.abandon(r.busy)
    r = st.lookup(b"/t", req("/t"), T0 + 10.1, req_grace=0)           # req.grace 0 applies (>= 0)
    assert (r.kind, r.oc) == (MISS, oc)
    st.abandon(r.busy)
    r = st.lookup(b"/t", req("/t"), T0 + 10.7, req_grace=0.5)
    assert (r.kind, r.oc) == (MISS, oc)
    st.abandon(r.busy)


def test_lookup_finds_the_variant_that_matches_among_several(clock):
    st, c = make()
    a = fill(st, "/v", vary="X-V", request=req("/v", X_V="1"))
    b = fill(st, "/v", vary="X-V", request=req("/v", X_V="2"), tag="b")   # newest: looked at first
    assert st.lookup(b"/v", req("/v", X_V="1"), T0 + 1).oc is a
    assert st.lookup(b"/v", req("/v", X_V="2"), T0 + 1).oc is b
    r = st.lookup(b"/v", req("/v", X_V="3"), T0 + 1)
    assert (r.kind, r.oc) == (MISS, None)
    st.abandon(r.busy)
    assert st.lookup(b"/v", req("/v", X_V="3"), T0 + 1, ignore_vary=True).oc is b
    st.ban("obj.http.x-tag == b")                # the newest variant banned: the older one still hits
    assert st.lookup(b"/v", req("/v", X_V="1"), T0 + 1).oc is a
    assert b.dying and c.n_object == 1


def test_with_gzip_support_one_accept_encoding_variant_serves_every_client(clock):
    """varnishd 7.1, checked with varnishtest: a `Vary: Accept-Encoding` object fetched for a gzip
    client is a hit for a client without Accept-Encoding; with http_gzip_support off, a miss."""
    st, _ = make()
    oc = fill(st, "/g", vary="Accept-Encoding", request=req("/g", Accept_Encoding="gzip"))
    assert st.lookup(b"/g", req("/g"), T0 + 1).oc is oc
    off, _ = make(_lurker_params(http_gzip_support="off"))
    oc = fill(off, "/g", vary="Accept-Encoding", request=req("/g", Accept_Encoding="gzip"))
    assert off.lookup(b"/g", req("/g", Accept_Encoding="gzip"), T0 + 1).oc is oc
    assert off.lookup(b"/g", req("/g"), T0 + 1).kind == MISS


def test_an_object_with_no_ttl_gives_no_grace(clock):
    """beresp.ttl = 0s with grace 100s: the next request is a plain miss (varnishtest, 7.1)."""
    st, _ = make()
    oc = fill(st, "/z", ttl=0, grace=100)
    assert oc.exp_at == T0 + 100
    r = st.lookup(b"/z", req("/z"), T0 + 1)
    assert (r.kind, r.oc) == (MISS, None)
    st.abandon(r.busy)
    older = fill(st, "/o", ttl=100)
    fill(st, "/o", ttl=0, grace=100)                # newer, looked at first, skipped: the older one hits
    assert st.lookup(b"/o", req("/o"), T0 + 1).oc is older


def test_lookup_counts_heads_cores_and_hits(clock):
    st, c = make()
    a = fill(st, "/a")
    fill(st, "/b")
    assert c.n_objecthead == 2 and c.n_objectcore == 2 and c.n_object == 2
    for n in (1, 2, 3):
        assert st.lookup(b"/a", req("/a"), T0 + 1).kind == HIT and a.hits == n
    r = st.lookup(b"/a", req("/a"), T0 + 1, always_miss=True)
    assert (r.kind, r.oc) == (MISS, None) and c.n_objectcore == 3
    st.abandon(r.busy)
    st.ban("obj.status == 200")
    r = st.lookup(b"/a", req("/a"), T0 + 2)      # the ban empties /a's head; the new fetch counts it again
    assert c.n_objecthead == 2 and c.n_objectcore == 2
    assert st.heads[b"/a"] is r.busy.head and st.lookup(b"/a", req("/a"), T0 + 2).kind == BUSY


def test_of_two_stale_objects_as_old_the_newest_is_kept(clock):
    st, _ = make()
    fill(st, "/e", ttl=1, grace=10)
    newer = fill(st, "/e", ttl=1, grace=10)     # same t_origin, inserted first
    r = st.lookup(b"/e", req("/e"), T0 + 2)
    assert (r.kind, r.oc) == (GRACE, newer)


def test_which_store_a_new_object_goes_to(clock):
    """vbf_allocobj: hit-for-miss/pass markers and objects whose ttl + grace + keep is below shortlived
    go to Transient (beresp_shortlived is the fetch's to count: fid_shortlived_uncacheable.vtc); the rest
    to beresp.storage or the stevedores in turn. store_for() names the same store in advance."""
    st, c = make(_lurker_params(shortlived="7"),
                 specs=[("a", 1 << 20), ("b", 1 << 20), ("c", 1 << 20), ("Transient", None)])
    probe = ObjCore(st.lookup(b"/probe", req("/probe"), T0).busy.head)
    probe.ttl, probe.grace, probe.keep = 3, 3, 0.999
    assert st.store_for(probe, "b") == "Transient"
    assert fill(st, "/1", ttl=3, grace=3, keep=0.999, hint="b").store == "Transient"
    assert fill(st, "/2", ttl=0.5, grace=0.5, keep=0.5).store == "Transient"
    probe.keep = 1                                   # 7: not below shortlived
    assert st.store_for(probe, None) == "a" and st.store_for(probe, "nope") == "a"
    assert st.store_for(probe, "c") == "c"
    assert [fill(st, f"/r{i}", ttl=3, grace=3, keep=1).store for i in range(4)] == ["a", "b", "c", "a"]
    assert st.store_for(probe, None) == "b"
    assert fill(st, "/h", hint="c").store == "c"
    probe.hfm = True
    assert st.store_for(probe, "c") == "Transient"
    probe.hfm, probe.hfp = False, True
    assert st.store_for(probe, "c") == "Transient"
    private = ObjCore()                                          # pass and synth objects
    private.ttl = private.grace = 100
    assert st.store_for(private, "c") == "Transient"
    marker = fill(st, "/m", ttl=100, grace=100, hfm=True, hint="c")
    assert marker.store == "Transient" and c.beresp_shortlived == 0


def test_nuke_limit_bounds_the_objects_evicted_for_one(clock):
    # nuke_limit counts per allocation, as varnishd's objallocwithnuke: the object's head may nuke
    # one, its body one more, and a body that needs a second is refused
    st, c = make(_lurker_params(nuke_limit="1"), specs=[("s0", 1000), ("Transient", None)])
    small = [fill(st, f"/{i}", size=150) for i in range(3)]   # 310 bytes each with their head
    big = st.lookup(b"/big", req("/big"), T0).busy
    big.http = HttpMessage(status=200, headers=Headers([["Content-Length", "700"]]))
    big.t_origin, big.ttl = T0, 100
    big.append(b"x" * 700)
    assert not st.unbusy(big, req("/big"), None)     # its body needs two evictions: no room
    assert [oc.dying for oc in small] == [True, True, False] and c.n_lru_limited == 1
    st.params.set("nuke_limit", "2")
    big = fill(st, "/big2", size=700)
    assert big.store == "s0" and [oc.dying for oc in small] == [True, True, True] and c.n_lru_nuked == 3


def test_an_evicted_object_that_grows_costs_its_store_nothing(clock):
    st, c = make(specs=[("s0", 1000), ("Transient", None)])
    a = fill(st, "/a", size=250)                     # 410 bytes with its head: two fit in 1000
    fill(st, "/b", size=250)
    fill(st, "/c", size=250)                         # evicts /a
    assert a.dying and a.store == "" and c.n_lru_nuked == 1
    used = st.used_bytes
    a.append(b"y" * 100)
    assert st.grow(a) and st.used_bytes == used and a.store == ""


def test_transient_is_unbounded_in_its_storage_variables(clock):
    st, _ = make()
    oc = fill(st, "/t", ttl=1, grace=0)
    assert oc.store == "Transient"
    assert st.storage_var("Transient", "free_space") == 999999999999999.0
    assert st.storage_var("Transient", "used_space") == float(oc.size)


class Records:
    def __init__(self) -> None:
        self.written: list[tuple[int, str, list]] = []

    def wants(self, tag: str) -> bool:
        return True                      # as with vsl_mask=+ExpKill

    def write(self, vxid: int, kind: str, records: list) -> None:
        self.written.append((vxid, kind, records))

    def expired(self) -> list[tuple[int, str, list]]:
        """The EXP_Expired records (the expiry thread's others are tests/test_vsl_storage_records.py's)."""
        return [(v, k, [r]) for v, k, recs in self.written for r in recs if r[1].startswith("EXP_Expired")]


def test_expiry_and_hard_purges_log_expkill_as_varnishd(clock):
    """varnishd 7.1 (varnishtest, vsl_mask=+ExpKill): `EXP_Expired x=1004 t=-0` for a purged object,
    `EXP_Expired x=1002 t=-1` for one expired with ttl 1s, grace 0.5s; vxid 0, no transaction."""
    st, _ = make()
    st.vsl = log = Records()
    fill(st, "/e", ttl=1, grace=2, keep=3, xid=1002)
    fill(st, "/p", xid=1004)
    st.purge(b"/p")
    assert log.expired() == [(0, "-", [("ExpKill", "EXP_Expired x=1004 t=-0")])]
    clock[0] = T0 + 6
    st._expire()
    assert log.expired()[1:] == [(0, "-", [("ExpKill", "EXP_Expired x=1002 t=-5")])]


def test_the_expiry_timer_is_armed_for_the_first_object_due(clock):
    async def scenario():
        st, c = make()
        loop = asyncio.get_running_loop()
        fill(st, "/late", ttl=200, grace=0)
        assert st._exp_timer.when() - loop.time() == pytest.approx(200, abs=0.5)
        fill(st, "/soon", ttl=100, grace=0)
        assert st._exp_timer.when() - loop.time() == pytest.approx(100, abs=0.5)
        fill(st, "/far", ttl=7200, grace=0)       # later ones leave it alone
        assert st._exp_timer.when() - loop.time() == pytest.approx(100, abs=0.5)
        clock[0] = T0 + 200
        st._expire()                               # both due: gone, the timer now waits for /far, at most an hour
        assert c.n_expired == 2
        assert st._exp_timer.when() - loop.time() == pytest.approx(3600, abs=0.5)
        fill(st, "/next", ttl=10, grace=0, t_origin=T0 + 200)
        assert st._exp_timer.when() - loop.time() == pytest.approx(10, abs=0.5)
        st._exp_timer.cancel()

    asyncio.run(scenario())


def test_the_lurker_does_not_wake_for_bans_only_requests_can_test(clock):
    async def scenario():
        st, c = make(_lurker_params(ban_lurker_age="0", ban_lurker_sleep="0.01"))
        oc = fill(st, "/r")
        st.bans.add("req.url == /r")
        st.bans.bans[0].t = T0 - 3600
        st._lurk()
        assert st._lurker is None and not oc.dying and c.bans_lurker_tested == 0

    asyncio.run(scenario())


def test_an_object_with_an_empty_body_costs_only_its_overhead_and_headers(clock):
    st, _ = make()
    oc = fill(st, "/0", size=0)
    # varnishd 7.1's malloc store: 125 bytes, then "HTTP/1.1", "200", the empty reason and
    # "Content-Length: 0", each NUL-ended (9 + 4 + 1 + 18), rounded up to 8 bytes: 157 -> 160
    # (measured with its SMA counters: tests/vtc/fid_sma_sizes.vtc)
    assert oc.size == 160


# -- ObjCore's body: the memory it holds while readers stream it ------------------------------------

def test_a_complete_body_is_kept_as_one_buffer_once_read_whole():
    oc = ObjCore()
    for part in (b"ab", b"cd", b"ef"):
        oc.append(part)
    oc.finish(True)
    assert oc.body() == b"abcdef" and oc.chunks == [b"abcdef"]
    empty = ObjCore()
    empty.finish(True)
    assert empty.body() == b"" and empty.chunks == []


def test_a_streaming_reader_keeps_its_place_when_the_body_is_read_whole():
    oc = ObjCore()
    cell = oc.open_reader()
    oc.append(b"ab")
    assert oc.read(cell) == b"ab"
    oc.append(b"cd")
    oc.append(b"ef")
    oc.finish(True)
    assert oc.body() == b"abcdef"              # a hit reads it all while the reader streams
    other = oc.open_reader()
    oc.close_reader(other)                     # another reader leaving changes nothing for this one
    assert oc.read(cell) == b"cdef"            # both chunks at once
    assert oc.read(cell) == b""
    oc.close_reader(cell)
    assert oc.chunks == [b"abcdef"]            # the last reader left: one copy


def test_closing_a_reader_of_an_uncached_body_keeps_its_chunks():
    oc = ObjCore()
    cell = oc.open_reader()
    oc.append(b"ab")
    oc.append(b"cd")
    oc.close_reader(cell)
    assert oc.chunks == [b"ab", b"cd"] and oc.body() == b"abcd"


def test_a_body_not_kept_is_freed_as_its_readers_pass_it():
    oc = ObjCore()
    oc.keep_body = False
    slow, fast = oc.open_reader(), oc.open_reader()
    oc.append(b"ab")
    oc.append(b"cd")
    assert oc.read(fast) == b"abcd"
    assert oc.buffered == 4                    # the slow reader has not read it yet
    oc.close_reader(slow)                      # it left: nobody needs the bytes
    assert oc.chunks == [] and oc.buffered == 0 and oc.base == 2
    oc.append(b"ef")
    oc.append(b"gh")
    assert oc.read(fast) == b"efgh" and oc.chunks == [] and oc.base == 4
    oc.close_reader(fast)
    oc.append(b"ij")
    oc.drop_body()                             # no reader at all: everything goes
    assert oc.chunks == [] and oc.buffered == 0 and oc.base == 5


def test_drop_body_without_readers_frees_everything():
    oc = ObjCore()
    oc.append(b"ab")
    oc.append(b"cd")
    oc.drop_body()
    assert oc.chunks == [] and oc.buffered == 0 and oc.base == 2


def test_flow_control_survives_a_second_window():
    async def scenario():
        oc = ObjCore()
        oc.keep_body = False
        cell = oc.open_reader()
        for _ in range(2):
            oc.append(b"x" * STREAM_WINDOW)
            waiting = asyncio.ensure_future(oc.wait_space())
            await asyncio.sleep(0)
            assert not waiting.done()
            oc.read(cell)
            await asyncio.wait_for(waiting, 5)
        oc.append(b"y")
        assert oc.read(cell) == b"y"

    asyncio.run(scenario())


def test_unbusy_wakes_every_request_waiting_on_the_head(clock):
    async def scenario():
        st, _ = make()
        busy = st.lookup(b"/w", req("/w"), T0).busy
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(3)]
        for fut in waiters:
            busy.head.add_waiter(fut)
        busy.http = HttpMessage(status=200, headers=Headers([["Content-Length", "0"]]))
        busy.t_origin, busy.ttl = T0, 100
        assert st.unbusy(busy, req("/w"), None)
        assert all(fut.done() for fut in waiters) and busy.head.waiters == ()

    asyncio.run(scenario())


def test_the_expiry_timer_and_the_lurker_really_run(clock):
    async def scenario():
        st, c = make(_lurker_params(ban_lurker_age="0", ban_lurker_sleep="0.01"))
        clock[0] = T0 + 1
        gone = fill(st, "/x", ttl=1, grace=0)     # due now: the timer fires at once
        assert st._exp_timer.when() - asyncio.get_running_loop().time() < 0.5
        banned = fill(st, "/b", t_origin=T0 + 1)
        st.ban("obj.status == 200")
        st.bans.bans[0].t = T0                    # on the storage clock: due at once (ban_lurker_age 0)
        deadline = asyncio.get_running_loop().time() + 5
        while not (gone.dying and banned.dying):
            assert asyncio.get_running_loop().time() < deadline, "expiry or lurker did not run"
            await asyncio.sleep(0.01)
        assert c.n_expired == 1 and c.bans_lurker_obj_killed == 1
        if st._lurker is not None:
            st._lurker.cancel()

    asyncio.run(scenario())


def test_a_reader_behind_others_keeps_what_it_has_not_read():
    oc = ObjCore()
    oc.keep_body = False
    slow, fast = oc.open_reader(), oc.open_reader()
    oc.append(b"ab")
    oc.append(b"cd")
    fast_data = oc.read(fast)
    assert oc.read(slow) == b"abcd" and fast_data == b"abcd" and oc.base == 2
    oc.append(b"ef")
    oc.append(b"gh")
    assert oc.read(fast) == b"efgh"
    oc.append(b"ij")
    assert oc.read(slow) == b"efghij"           # base 2: what it had not read was kept
    assert oc.read(fast) == b"ij" and oc.chunks == []


def test_two_chunks_become_one_when_the_last_reader_leaves():
    oc = ObjCore()
    cell = oc.open_reader()
    oc.append(b"ab")
    oc.append(b"cd")
    oc.finish(True)
    assert oc.body() == b"abcd" and oc.read(cell) == b"abcd"
    oc.close_reader(cell)
    assert oc.chunks == [b"abcd"]


def test_readers_waiting_for_more_of_a_body_wake_when_it_grows():
    async def scenario():
        oc = ObjCore()
        waiting = [asyncio.ensure_future(oc.wait_more()) for _ in range(2)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiting)
        oc.append(b"x")
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        again = asyncio.ensure_future(oc.wait_more())
        await asyncio.sleep(0)
        assert not again.done()
        oc.finish(True)
        await asyncio.wait_for(again, 5)

    asyncio.run(scenario())


# -- measured against varnishd 7.1.1 (varnishtest, varnishstat / varnishlog -g raw) ---------------------

@pytest.mark.parametrize("value, reason, size", [
    ("a", "OK", 168), ("abcd", "OK", 168), ("abcde", "OK", 168), ("abcdef", "OK", 176),
    ("abcdefgh", "OK", 176), (None, "OKAYOKAY", 168)])
def test_object_sizes_in_8_byte_units_as_varnishd(value, reason, size):
    """SMA.Transient.g_bytes of one object with an empty body (Content-Length: 0, Date unset), per
    response: 'X: abcde' fills its 8-byte unit exactly, 'X: abcdef' takes the next one."""
    oc = ObjCore()
    fields = ([["X", value]] if value is not None else []) + [["Content-Length", "0"]]
    oc.http = HttpMessage(status=200, reason=reason, headers=Headers(fields))
    assert oc.compute_size(with_body=False) == size


SMA_VCL = """vcl 4.1;
BACKEND
sub vcl_recv { if (req.url == "/synth") { return (synth(200)); } }
sub vcl_synth { set resp.body = "0123456789"; return (deliver); }
sub vcl_backend_response {
    set beresp.storage = storage.Transient;
    unset beresp.http.Date;
    if (bereq.url ~ "hfm") { set beresp.uncacheable = true; set beresp.ttl = 100s; }
}
"""


def _chunked(head: str, size: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\n{head}Transfer-Encoding: chunked\r\n\r\n{size:x}\r\n".encode()
            + b"c" * size + b"\r\n0\r\n\r\n")


SMA_RESPONSES = {
    "/hfm": b"HTTP/1.1 200 OK\r\nX: abcde\r\nContent-Length: 1000\r\n\r\n" + b"h" * 1000,
    "/a512": _chunked("", 16384 - 512),       # 512 bytes of its segment unused: moved to what it holds
    "/b511": _chunked("", 16384 - 511),       # 511 unused: kept as it is
    "/hfm2": _chunked("X: abcde\r\n", 1000),
}


def test_transient_counters_step_by_step_as_varnishd(inproc_make):
    """The SMA.Transient counters varnishd 7.1.1 shows after each response (-s Transient=default,1m):
    a hit-for-miss's body freed once fetched (ObjSlim), a body of unknown length taken 16k at a
    time and trimmed when 512 bytes or more of its last segment are unused (sml_trimstore), a synth
    response's object and body held while it is delivered."""
    cache, _ = inproc_make(SMA_VCL, lambda req: Resp(raw=SMA_RESPONSES[req.url]), "-s", "Transient=default,1m")
    extra = cache.proc.server.counters.extra

    def sma() -> tuple[int, int, int, int]:
        return tuple(extra[f"SMA.Transient.{name}"] for name in ("c_req", "c_bytes", "c_freed", "g_bytes"))

    for url, want in [("/hfm", (2, 1176, 1000, 176)), ("/a512", (5, 33576, 17384, 16192)),
                      ("/b511", (7, 50104, 17384, 32720)), ("/hfm2", (10, 67640, 34768, 32872)),
                      ("/synth", (12, 68794, 35922, 32872))]:
        assert cache.get(url)[0] == 200
        wait_for(lambda want=want: sma() == want, what=f"{url}: {want}")


def test_expkill_records_of_inserts_and_a_soft_purge_as_varnishd(clock):
    """varnishlog -g raw -i ExpKill (vsl_mask=+ExpKill), two objects, then purge.soft(10s, 0s, 0s) on
    the first: the worker's EXP_Rearm (E= the old time, e= the new), the woken thread's look at its root,
    then its inbox (flg=1e for an insert, flg=e for a move) and the root again."""
    st, _ = make()
    st.vsl = log = Records()
    a = fill(st, "/a", ttl=60, grace=0, keep=0)
    clock[0] = T0 + 0.5
    b = fill(st, "/b", ttl=60, grace=0, keep=0, t_origin=T0 + 0.5)
    clock[0] = T0 + 1
    st.purge(b"/a", ttl=10, grace=0, keep=0)
    pa, pb = f"p=0x{id(a):x}", f"p=0x{id(b):x}"
    texts = [r[1] for vxid, kind, recs in log.written for r in recs if (vxid, r[0]) == (0, "ExpKill")]
    assert texts == [
        f"EXP_Inbox flg=1e {pa} e=0.000000 f=0x0", f"EXP_When {pa} e={T0 + 60:.6f} f=0x1e",
        f"EXP_expire {pa} e=60.000000 f=0x0",
        f"EXP_expire {pa} e=59.500000 f=0x0",
        f"EXP_Inbox flg=1e {pb} e=0.000000 f=0x0", f"EXP_When {pb} e={T0 + 60.5:.6f} f=0x1e",
        f"EXP_expire {pa} e=59.500000 f=0x0",
        f"EXP_Rearm {pa} E={T0 + 60:.6f} e={T0 + 11:.6f} f=0x0",
        f"EXP_expire {pa} e=59.000000 f=0x0",
        f"EXP_Inbox flg=e {pa} e={T0 + 60:.6f} f=0x0", f"EXP_When {pa} e={T0 + 11:.6f} f=0xe",
        f"EXP_expire {pa} e=10.000000 f=0x0"]
    del log.written[:]
    st.remove(b)                     # a ban or the lurker: posted to the thread as removed (f: dying)
    assert [r[1] for _, _, recs in log.written for r in recs] == [f"EXP_Inbox flg=26 {pb} e={T0 + 60.5:.6f} f=0x80"]


def test_a_hard_purge_is_mailed_to_the_expiry_thread_and_counted_expired(clock):
    """varnishd 7.1.1, two objects and purge.hard() of one: exp_mailed 3, exp_received 3, n_expired 1,
    n_obj_purged 1 (HSH_Purge rearms each object to expire now)."""
    st, c = make()
    st.vsl = log = Records()
    a = fill(st, "/a", ttl=60, grace=0)
    fill(st, "/b")
    clock[0] = T0 + 1
    del log.written[:]
    assert st.purge(b"/a") == 1
    assert (c.exp_mailed, c.exp_received, c.n_expired, c.n_obj_purged) == (3, 3, 1, 1)
    texts = [r[1] for _, _, recs in log.written for r in recs]
    pa = f"p=0x{id(a):x}"
    assert texts[0] == f"EXP_Rearm {pa} E={T0 + 60:.6f} e={T0 + 1:.6f} f=0x0"      # rearmed to expire now
    assert texts[3:6] == [f"EXP_When {pa} e={T0 + 1:.6f} f=0xe", f"EXP_expire {pa} e=0.000000 f=0x0",
                          "EXP_Expired x=0 t=-0"]
    fill(st, "/a")
    st.purge(b"/a")
    assert (c.n_expired, c.n_obj_purged) == (2, 2)


def test_a_lookup_that_finds_a_banned_object_logs_expban_in_the_request(clock):
    """varnishd 7.1: `ExpBan 1002 banned lookup` in the request's own log (tests/vtc/fid_vsl_expban.vtc)."""
    st, c = make()
    fill(st, "/x", xid=1002)
    st.ban(["req.url", "==", "/x"])
    log: list = []
    assert st.lookup(b"/x", req("/x"), T0 + 1, log=log).kind == MISS
    assert log == [("ExpBan", "1002 banned lookup")]


def test_many_variants_without_a_log_to_write_to(clock):
    params = Params()
    params.set("vary_notice", "1")
    st, _ = make(params)
    fill(st, "/v", vary="X-V", request=req("/v", X_V="1"))
    assert st.lookup(b"/v", req("/v", X_V="2"), T0).kind == MISS         # a Notice due, no log: none


def test_ban_cutoff_logs_what_it_kills_under_vxid_0(clock):
    """cache_ban_lurker.c: `ExpBan %ju killed for lurker cutoff`, in the lurker's log (no transaction)."""
    st, _ = make(_lurker_params(ban_cutoff="1", ban_lurker_sleep="0.01"))
    st.vsl = log = Records()
    fill(st, "/a", xid=1001)
    st.bans.add("obj.status == 1")
    st._lurk()
    assert [(v, recs) for v, _, recs in log.written if recs[0][0] == "ExpBan"] == \
        [(0, [("ExpBan", "1001 killed for lurker cutoff")])]


def test_a_known_length_is_charged_whole_and_never_grows(clock):
    """A body with a Content-Length is one allocation of that length, made when the object is
    unbusied, before its bytes arrive; no segment is added while they do, even the last one."""
    st, c = make()
    r = st.lookup(b"/k", req("/k"), T0, always_miss=True)
    oc = r.busy
    oc.http = HttpMessage(status=200, headers=Headers([["Content-Length", "1000"]]))
    oc.t_origin, oc.ttl = T0, 100.0
    oc.expected = 1000
    assert st.unbusy(oc, req("/k"), None)
    size = oc.size
    assert size == oc.compute_size(with_body=False) + 1000 and st.used_bytes == size
    for _ in range(2):
        oc.append(b"y" * 500)
        assert st.grow(oc) and oc.alloc == 0 and st.used_bytes == size


def test_fetch_chunksize_sets_the_segment_size(clock):
    st, _ = make(_lurker_params(fetch_chunksize="4k"))
    oc = fill(st, "/c", size=0)
    head = st.used_bytes
    oc.append(b"y" * 100)
    assert st.grow(oc) and oc.alloc == 4096 and st.used_bytes == head + 4096


def test_a_hit_for_miss_body_is_charged_while_it_is_fetched(clock):
    st, c = make()
    oc = fill(st, "/m", size=0, hfm=True)
    oc.keep_body = False
    head = st.used_bytes
    oc.append(b"y" * 100)
    assert st.grow(oc) and st.used_bytes == head + 16384 and oc.store == "Transient"
    st.slim(oc)                                     # the fetch is over: the body is freed
    assert st.used_bytes == head


def test_a_held_synth_object_in_an_unbounded_transient(clock):
    """The object, then its body: two allocations (SMA.Transient.c_req 2, c_bytes 1154 for a 10-byte
    body), all freed once delivered (varnishd 7.1.1, tests/vtc/fid_sma_sizes.vtc)."""
    st, c = make()
    held = st.hold_transient(storage_mod.SYNTH_OBJECT, 10)
    extra = c.extra
    assert (extra["SMA.Transient.c_req"], extra["SMA.Transient.c_bytes"], extra["SMA.Transient.g_bytes"]) == \
        (2, 1154, 1154)
    st.release_held(held)
    assert (extra["SMA.Transient.c_freed"], extra["SMA.Transient.g_bytes"]) == (1154, 0)


def test_a_wait_with_no_time_left_gives_up_at_once():
    async def scenario():
        loop = asyncio.get_running_loop()
        delays = []
        call_later = loop.call_later
        loop.call_later = lambda delay, *args: (delays.append(delay), call_later(delay, *args))[1]
        oc = ObjCore()
        assert await oc.wait_more(-2.0) is False
        assert await oc.wait_more(0) is False
        assert delays == [0, 0]
    asyncio.run(scenario())


def test_kick_lurker_makes_it_look_now(clock):
    async def scenario():
        st, _ = make(_lurker_params(ban_lurker_age="60", ban_lurker_sleep="0.01"))
        loop = asyncio.get_running_loop()
        st._arm_lurker(60.0)                  # nothing due for a minute: it sleeps until then
        assert st._lurker.when() > loop.time() + 30
        st.kick_lurker()
        assert st._lurker.when() <= loop.time()
    asyncio.run(scenario())


def test_an_abandoned_busy_object_is_no_longer_busy(clock):
    st, _ = make()
    oc = st.lookup(b"/b", req("/b"), T0, always_miss=True).busy
    st.abandon(oc)
    assert not oc.busy and oc.dying


def test_a_synth_in_a_full_transient_nukes_a_cached_object_for_room(inproc_make):
    """varnishd 7.1.1 (varnishtest, -s Transient=default,1m, nuke_limit at its default): a cached
    Transient object leaves 1008 bytes; the synth's first allocation fails (SMA.Transient.c_fail 1),
    the object is nuked (n_lru_nuked 1), the synth is delivered, and once it is, Transient is empty."""
    vcl = ('vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.url == "/synth") { return (synth(200)); } }\n'
           'sub vcl_synth { set resp.body = "0123456789"; return (deliver); }\n'
           'sub vcl_backend_response { set beresp.storage = storage.Transient; unset beresp.http.Date;'
           ' set beresp.ttl = 100s; }\n')
    cache, _ = inproc_make(vcl, lambda req: Resp(body=b"b" * 1047400), "-s", "Transient=default,1m")
    counters = cache.proc.server.counters
    assert cache.get("/big")[0] == 200 and counters.extra["SMA.Transient.g_space"] == 1008
    assert cache.get("/synth")[::2] == (200, b"0123456789")
    assert (counters.n_lru_nuked, counters.extra["SMA.Transient.c_fail"]) == (1, 1)
    wait_for(lambda: counters.extra["SMA.Transient.g_space"] == 1 << 20, what="Transient emptied")


def test_slim_leaves_an_object_that_holds_no_storage_alone(clock):
    st, _ = make()
    oc = ObjCore()
    oc.http = HttpMessage(status=200, headers=Headers([["Content-Length", "10"]]))
    oc.hfm, oc.length = True, 10
    oc.compute_size()
    st.slim(oc)                                   # not stored (its storage failed): nothing to free
    assert oc.store == "" and st.used_bytes == 0


def test_a_synth_hold_in_a_full_transient_nukes_up_to_nuke_limit(clock):
    """As varnishd 7.1.1 with a bounded Transient (tests above: the synth nukes a cached object with
    nuke_limit at its default, gets no storage with nuke_limit 0), for the object and for its body."""
    st, c = make(_lurker_params(nuke_limit="0"), specs=[("s0", 1 << 20), ("Transient", 4096)])
    victim = fill(st, "/v", ttl=1, grace=0, size=1800)           # short-lived: in Transient
    assert victim.store == "Transient"
    assert st.hold_transient(storage_mod.SYNTH_OBJECT, 1500) is None and not victim.dying
    st.params.set("nuke_limit", "1")
    held = st.hold_transient(storage_mod.SYNTH_OBJECT, 1500)     # the object fits; its body needs the room
    assert held is not None and victim.dying and c.n_lru_nuked == 1


PASS_RESPONSES = {"/cl": b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n012345\n",
                  "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n"}


def test_a_pass_object_is_held_in_transient_while_fetched_as_varnishd(inproc_make):
    """tests/vtc/fid_pass_transient.vtc in process, with varnishd 7.1.1's counts: a pass's object is
    allocated in Transient (the object, then its body: one allocation for a known length; 16k segments
    otherwise, the last moved to a fitting one) and freed once delivered."""
    cache, _ = inproc_make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n",
                           lambda req: Resp(raw=PASS_RESPONSES[req.url]))
    extra = cache.proc.server.counters.extra

    def sma(*names: str) -> tuple[int, ...]:
        return tuple(extra[f"SMA.Transient.{name}"] for name in names)

    assert cache.get("/cl")[0] == 200
    wait_for(lambda: sma("c_req", "c_bytes", "c_freed", "g_alloc") == (2, 207, 207, 0), what="/cl")
    assert cache.get("/chunked")[0] == 200
    wait_for(lambda: sma("c_req", "g_alloc", "g_bytes") == (5, 0, 0), what="/chunked")
    assert sma("c_freed") == sma("c_bytes")


def test_critbit_counters_per_lookup_as_varnishd(clock):
    """tests/vtc/fid_hcb_counters.vtc's steps on the store (varnishd 7.1.1's counts): every lookup
    searches the tree without the lock (hcb_nolock); a digest with no objhead yet takes the lock and
    inserts one (hcb_lock, hcb_insert); hash_always_miss still looks up. A request woken from the
    waiting list keeps its objhead (fid_hcb_waitinglist.vtc): it counts none of them."""
    st, c = make()
    fill(st, "/a")
    for _ in range(2):
        assert st.lookup(b"/a", req("/a"), T0 + 1).kind == HIT
    fill(st, "/b")
    fill(st, "/b")                                  # hash_always_miss: the objhead is there
    assert (c.hcb_nolock, c.hcb_lock, c.hcb_insert) == (5, 2, 2)
    assert st.lookup(b"/a", req("/a"), T0 + 1, rushed=True).kind == HIT
    assert st.lookup(b"/c", req("/c"), T0 + 1, rushed=True).kind == MISS
    assert (c.hcb_nolock, c.hcb_lock, c.hcb_insert) == (5, 2, 2)


def test_a_pass_body_of_unknown_length_is_trimmed_in_transient_as_varnishd(inproc_make):
    """A pass's chunked body in Transient, 16k segments: the last one moved to what it holds when 512
    bytes or more of it are unused (or none of it is used: a body of exactly 16k asked for one more),
    kept with 511 unused. varnishd 7.1.1's SMA.Transient after each response, -s default."""
    bodies = {"/a512": 16384 - 512, "/b511": 16384 - 511, "/full": 16384}
    cache, _ = inproc_make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n",
                           lambda req: Resp(raw=_chunked("", bodies[req.url])))
    extra = cache.proc.server.counters.extra

    def sma() -> tuple[int, ...]:
        return tuple(extra[f"SMA.Transient.{name}"] for name in ("c_req", "c_bytes", "c_freed"))

    for url, want in [("/a512", (3, 32440, 32440)), ("/b511", (5, 49008, 49008)), ("/full", (8, 81960, 81960))]:
        assert cache.get(url)[0] == 200
        wait_for(lambda want=want: sma() == want, what=f"{url}: {want}")
