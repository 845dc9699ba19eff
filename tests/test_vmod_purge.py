"""vmod purge: hard and soft purges through the server, the storage's soft purge (EXP_Reduce), and
the run-time restriction to vcl_hit / vcl_miss."""

from __future__ import annotations

import math
import time

import pytest
from inproc import inproc_cache_factory
from test_cache_support import Resp

from cacheserver.counters import Counters
from cacheserver.params import Params
from cacheserver.storage import GRACE, HIT, MISS, Storage
from vcl.compiler import compile_vcl
from vcl.runtime import Context, Headers, HttpMessage, VCLFailure

make = pytest.fixture(inproc_cache_factory)    # in-process (tests/inproc.py)

VCL = """vcl 4.1;
import purge;
BACKEND
sub vcl_recv {
	if (req.method == "PURGE" || req.method == "SOFT") { return (hash); }
	if (req.url == "/bad") { set req.http.n = purge.hard(); }
}
sub do_purge {
	if (req.method == "PURGE") { set req.http.n = purge.hard(); }
	else { set req.http.n = purge.soft(0s, 100s); }
	return (synth(200));
}
sub vcl_hit { if (req.method != "GET") { call do_purge; } }
sub vcl_miss { if (req.method != "GET") { call do_purge; } }
sub vcl_synth { set resp.http.n = req.http.n; }
sub vcl_backend_response { set beresp.ttl = 100s; set beresp.grace = 1000s; }
"""


def test_hard_and_soft_purge_through_the_server(make):
    n = iter(range(100))
    cache, backend = make(VCL, lambda req: Resp(headers=[("Vary", "X-V")], body=b"v%d" % next(n)))
    assert cache.get("/", headers={"X-V": "a"})[2] == b"v0"
    assert cache.get("/", headers={"X-V": "b"})[2] == b"v1"
    status, h, _ = cache.get("/", method="SOFT")
    assert status == 200 and h["n"] == "2"
    # softened: stale now but in grace, so the old object is served while a fresh one is fetched
    _, h, body = cache.get("/", headers={"X-V": "a"})
    assert body == b"v0"
    status, h, _ = cache.get("/", method="PURGE")
    assert status == 200 and h["n"] in ("2", "3")          # the background fetch may have landed
    assert cache.get("/", headers={"X-V": "b"})[2] not in (b"v0", b"v1")
    status, h, _ = cache.get("/nothing", method="PURGE")
    assert h["n"] == "0"
    c = cache.cli.counters()
    assert c["n_purges"] == 2 and c["n_obj_purged"] >= 2
    status, _, _ = cache.get("/bad")                       # not in vcl_hit / vcl_miss: VCL fails
    assert status == 503


def _stored(storage: Storage, digest: bytes, ttl: float, grace: float, keep: float, t0: float):
    req = HttpMessage("GET", "/")
    r = storage.lookup(digest, req, t0)
    assert r.kind == MISS
    oc = r.busy
    oc.http = HttpMessage(status=200, headers=Headers([["Content-Length", "1"]]))
    oc.t_origin, oc.ttl, oc.grace, oc.keep = t0, ttl, grace, keep
    oc.append(b"x")
    storage.unbusy(oc, req, None, None)
    oc.finish(True)
    return oc


def test_storage_soft_purge_only_lowers_timers():
    c = Counters()
    st = Storage(1 << 20, c, Params())
    t0 = time.time()
    oc = _stored(st, b"d", ttl=100.0, grace=50.0, keep=20.0, t0=t0)
    assert st.purge(b"d", 10.0, math.nan, 200.0, now=t0 + 5) == 1
    assert (oc.ttl, oc.grace, oc.keep) == (15.0, 50.0, 20.0)     # keep not raised, grace untouched
    assert st.purge(b"d", 500.0, 5.0, math.nan, now=t0 + 5) == 1
    assert (oc.ttl, oc.grace) == (15.0, 5.0)                     # ttl not raised
    assert st.lookup(b"d", HttpMessage("GET", "/"), t0 + 16).kind == GRACE
    assert st.lookup(b"d", HttpMessage("GET", "/"), t0 + 1).kind == HIT
    assert c.n_obj_purged == 0
    assert st.purge(b"d") == 1 and c.n_obj_purged == 1          # hard: all zero
    assert st.purge(b"nothing") == 0


def test_purge_fails_outside_hit_and_miss():
    vcl = compile_vcl("vcl 4.1;\nimport purge;\nbackend b none;\nsub vcl_deliver { set resp.http.n = purge.soft(); }\n",
                      "t.vcl")
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_deliver", req=req, req_top=req, resp=HttpMessage(status=200))
    with pytest.raises(VCLFailure, match=r"purge can only happen in vcl_hit\{\} or vcl_miss\{\}"):
        vcl.subs["vcl_deliver"](ctx)


def test_hard_purge_logs_exp_kill_under_vxid_0():
    """As varnishd's expiry thread: `EXP_Expired x=OBJECT-XID t=-0` under vxid 0 (purge_c00000)."""
    written = []

    class Log:
        def wants(self, tag):
            return True

        def write(self, vxid, kind, records):
            written.append((vxid, records))

    st = Storage(1 << 20, Counters(), Params())
    st.vsl = Log()
    oc = _stored(st, b"d", ttl=100.0, grace=0.0, keep=0.0, t0=time.time())
    oc.xid = 1008
    del written[:]              # the insert's EXP_Inbox / EXP_When / EXP_expire
    assert st.purge(b"d") == 1
    # varnishd 7.1 (varnishlog -g raw, vsl_mask=+ExpKill): the purge rearms the object to expire
    # now, the woken thread looks at its root, takes the object from its inbox, then expires it
    texts = [text for vxid, records in written for tag, text in records if vxid == 0 and tag == "ExpKill"]
    assert [t.split(" ")[0] for t in texts] == ["EXP_Rearm", "EXP_expire", "EXP_Inbox", "EXP_When", "EXP_expire",
                                                "EXP_Expired"]
    assert texts[2].startswith("EXP_Inbox flg=e ") and texts[3].endswith(" f=0xe")
    assert texts[-1] == "EXP_Expired x=1008 t=-0"
