"""Counters kept with varnishd 7.1's semantics: session close reasons, VBE.* and SMA.* per backend and
store, MGT.*, uncacheable/shortlived responses, expiry mailing, bans.

The expectations follow varnish-counters(7) and what varnishd 7.1.1 counted for the same traffic.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from inproc import inproc_cache_factory, wait_for
from test_cache_support import Resp

make = pytest.fixture(inproc_cache_factory)    # in-process (tests/inproc.py)

VCL = "vcl 4.1;\nBACKEND\n"


def raw(cache, data: bytes, *, read: bool = True) -> bytes:
    sock = cache.proc.connect()
    sock.settimeout(3)
    sock.sendall(data)
    out = b""
    try:
        while read:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    sock.close()
    return out


def settle(cache, name: str, want: int, timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        c = cache.cli.counters()
        if c.get(name) == want or time.monotonic() > deadline:
            return c
        time.sleep(0.05)


def test_each_close_counts_one_reason_and_closed_or_closed_err(make):
    cache, _ = make(VCL, lambda req: Resp(body=b"x" * 10))
    raw(cache, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")         # sc_req_close
    raw(cache, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")                              # sc_req_http10
    raw(cache, b"GARBAGE\r\n\r\n")                                                # sc_rx_junk (400)
    raw(cache, b"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n")              # sc_rx_junk (417)
    sock = cache.proc.connect()                                                   # sc_rem_close
    cache.get("/", sock=sock)
    sock.close()
    c = settle(cache, "sc_rem_close", 1)
    assert (c["sc_req_close"], c["sc_req_http10"], c["sc_rx_junk"], c["sc_rem_close"]) == (1, 1, 2, 1)
    assert c["sc_rx_bad"] == 0
    # sess_closed: the four closed when their request was done (not the client leaving between
    # requests); sess_closed_err: HTTP/1.0 and the two junk (tbl/sess_close.h's error flags)
    assert c["sess_closed"] == 4 and c["sess_closed_err"] == 3
    assert c["client_req_400"] == 1 and c["client_req_417"] == 1
    assert c["client_req"] == 4          # the 417 was dissected, so it is a client request too


def test_idle_keepalive_is_close_idle_and_a_half_head_a_receive_timeout(make):
    cache, _ = make(VCL, lambda req: Resp(body=b"x"), "-p", "timeout_idle=0.3")
    idle = cache.proc.connect()
    half = cache.proc.connect()
    half.sendall(b"GET / HTTP/1.1\r\n")
    c = settle(cache, "sess_closed_err", 1)
    assert c["sc_rx_close_idle"] == 1 and c["sc_rx_timeout"] == 1
    # both closed while waiting for a request: not in sess_closed; the timeout is an error
    assert c["sess_closed"] == 0 and c["sess_closed_err"] == 1
    idle.close()
    half.close()


def test_request_header_bytes(make):
    cache, _ = make(VCL, lambda req: Resp(body=b"x"))
    head = b"GET /abc HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    raw(cache, head)
    assert cache.cli.counters()["s_req_hdrbytes"] == len(head)


def test_pipe_ends_when_the_client_leaves(make):
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pipe); }\n", lambda req: Resp(body=b"p" * 100))
    sock = cache.proc.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()                  # the backend keeps its side open; the client's close ends the pipe
    c = settle(cache, "sc_tx_pipe", 1)
    assert c["sc_tx_pipe"] == 1 and c["n_pipe"] == 0 and c["s_pipe"] == 1


def test_vbe_counters_per_backend(make):
    cache, backend = make(VCL, lambda req: Resp(body=b"b" * 1000, headers=[("Cache-Control", "no-cache")]))
    cache.get("/a")
    cache.get("/b", method="POST", body=b"hello")
    c = cache.cli.counters()
    p = "VBE.boot.default."
    names = ("happy", "bereq_hdrbytes", "bereq_bodybytes", "beresp_hdrbytes", "beresp_bodybytes",
             "pipe_hdrbytes", "pipe_out", "pipe_in", "conn", "req", "unhealthy", "busy", "fail",
             "fail_eacces", "fail_eaddrnotavail", "fail_econnrefused", "fail_enetunreach", "fail_etimedout",
             "fail_other", "helddown")
    assert all(p + n in c for n in names), sorted(k for k in c if k.startswith("VBE."))
    assert c[p + "req"] == 2 and c[p + "conn"] == 0
    assert c[p + "beresp_bodybytes"] == 2000 and c[p + "bereq_bodybytes"] == 5
    assert c[p + "bereq_hdrbytes"] > 40 and c[p + "beresp_hdrbytes"] > 40
    assert c["n_backend"] == 1
    assert c["beresp_uncacheable"] == 2           # the no-cache (hit-for-miss) and the pass


def test_vbe_fail_by_reason(make):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                # nothing listens there now
    cache, _ = make(f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{port}"; }}\n')
    assert cache.get("/")[0] == 503
    c = cache.cli.counters()
    # (varnishd 7.1.1 counts a refused connect by its errno only: VBE.*.fail stays 0)
    assert c["VBE.boot.default.fail"] == 0 and c["VBE.boot.default.fail_econnrefused"] == 1
    assert c["backend_fail"] == 1


def test_sma_counters_allocate_and_free(make):
    cache, _ = make(VCL, lambda req: Resp(body=b"s" * 5000, headers=[("Cache-Control", "max-age=100")]))
    cache.get("/1")
    cache.get("/2")
    c = cache.cli.counters()
    # g_alloc counts allocations: each object and its body's one segment (fid_sma_g_alloc.vtc)
    assert c["SMA.s0.g_alloc"] == 4 and c["SMA.s0.c_bytes"] >= 10000 and c["SMA.s0.c_freed"] == 0
    assert c["SMA.s0.g_bytes"] == c["SMA.s0.c_bytes"] - c["SMA.s0.c_freed"]
    assert c["exp_mailed"] == 2 and c["exp_received"] == 2
    assert cache.cli.cmd("ban req.url ~ /1")[0] == 200
    assert cache.get("/1")[0] == 200               # banned, fetched again: the old one is freed
    c = cache.cli.counters()
    assert c["SMA.s0.c_freed"] >= 5000 and c["SMA.s0.g_alloc"] == 4
    assert c["SMA.s0.g_bytes"] == c["SMA.s0.c_bytes"] - c["SMA.s0.c_freed"]


def test_shortlived_objects_go_to_transient_and_are_counted(make):
    cache, _ = make(VCL, lambda req: Resp(body=b"t" * 100, headers=[("Cache-Control", "max-age=1")]),
                    "-p", "default_grace=0")
    cache.get("/")
    c = cache.cli.counters()
    assert c["beresp_shortlived"] == 1 and c["SMA.Transient.g_alloc"] == 2   # the object, its body


def test_mgt_counters_and_initial_ban(make):
    cache, _ = make(VCL, lambda req: Resp(body=b"x"))
    c = cache.cli.counters()
    assert c["MGT.child_start"] == 1 and c["MGT.child_panic"] == 0 and "MGT.uptime" in c
    assert c["bans"] == 1 and c["bans_added"] == 1          # the initial (completed) ban
    assert cache.cli.cmd("stop")[0] == 200 and cache.cli.cmd("start")[0] == 200
    c = cache.cli.counters()
    assert c["MGT.child_start"] == 2 and c["MGT.child_exit"] == 1


def test_ban_cutoff_expunges_objects_on_old_bans(make):
    cache, _ = make(VCL, lambda req: Resp(body=b"c", headers=[("Cache-Control", "max-age=100")]),
                    "-p", "ban_cutoff=2", "-p", "ban_lurker_age=100")
    cache.get("/1")
    for n in range(3):
        assert cache.cli.cmd(f"ban req.url ~ /nomatch{n}")[0] == 200
    c = settle(cache, "bans_lurker_obj_killed_cutoff", 1)
    assert c["bans_lurker_obj_killed_cutoff"] == 1 and c["n_object"] == 0


def test_pipe_timeout_ends_an_idle_pipe(make):
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pipe); }\n", lambda req: Resp(body=b"p" * 10),
                    "-p", "pipe_timeout=0.5")
    sock = cache.proc.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    sock.settimeout(5)
    got = b""                                # the backend writes head and body separately
    while not (b"\r\n\r\n" in got and got.endswith(b"p" * 10)):
        more = sock.recv(65536)
        assert more, got
        got += more
    assert got.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert sock.recv(65536) == b""           # closed by us, the backend still holding its side
    assert time.monotonic() - started < 3
    sock.close()
    assert settle(cache, "sc_tx_pipe", 1)["sc_tx_pipe"] == 1


def test_pools_and_threads_start_as_varnishd_s(make):
    # varnishd 7.1 with its defaults: 2 pools of thread_pool_min (100) workers each
    cache, _ = make(VCL, lambda req: Resp(body=b"x"))
    c = cache.cli.counters()
    assert (c["pools"], c["threads"], c["threads_created"], c["threads_destroyed"]) == (2, 200, 200, 0)


def test_a_failed_fetch_counts_its_error_object_as_expired(make):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    cache, _ = make(f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{port}"; }}\n')
    assert cache.get("/")[0] == 503
    c = cache.cli.counters()
    assert c["n_expired"] == 1 and c["n_object"] == 0


def test_threads_follow_requests_and_fetches_in_progress(make):
    # as c00096 explains: each slow miss holds two workers, its request's and its fetch's
    released = threading.Event()

    def respond(req):
        if req.url != "/fast":
            released.wait(10)                # the slow ones run until /fast has been answered
        return Resp(body=b"x")

    cache, _ = make(VCL, respond, "-p", "thread_pools=1", "-p", "thread_pool_min=5")
    server = cache.proc.server
    socks = []
    for i in range(4):
        sock = cache.proc.connect()
        sock.sendall(b"GET /slow%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        socks.append(sock)
    wait_for(lambda: server.workers.busy == 8, what="four requests and four fetches running")
    c = cache.cli.counters()
    assert (c["threads"], c["threads_created"]) == (8, 8)
    assert cache.get("/fast")[0] == 200             # two more while the eight run
    released.set()
    for sock in socks:
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.close()
    wait_for(lambda: server.workers.busy == 0, what="every worker released")
    c = cache.cli.counters()
    assert (c["threads"], c["threads_destroyed"]) == (10, 0)   # idle ones stay until thread_pool_timeout
