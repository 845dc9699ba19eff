"""The client state machine end to end: hit, miss, pass, pipe, purge, synth, restart; Varnish's headers."""

from __future__ import annotations

import re

import pytest
from inproc import inproc_cache_factory
from test_cache_support import Resp

make = pytest.fixture(inproc_cache_factory)    # in-process, so that mutmut sees fsm.py run


def test_miss_then_hit_with_varnish_headers_and_xids(make):
    cache, backend = make("vcl 4.1;\nBACKEND\n")
    cache.cli.cmd("debug.xid 999")
    with cache.proc.connect() as sock:
        status, h, body = cache.get("/a", sock=sock)
        assert (status, body) == (200, b"hello")
        assert h["x-varnish"] == "1001"
        assert h["via"] == "1.1 varnish (Varnish/7.1)"
        assert h["accept-ranges"] == "bytes"
        assert h["age"] == "0" and "date" in h
        status, h, body = cache.get("/a", sock=sock)
        assert body == b"hello"
        assert h["x-varnish"] == "1003 1002"     # request 1003 hit the object fetched by 1002
    status, h, _ = cache.get("/a")                # a new session takes an xid too
    assert h["x-varnish"] == "1005 1002"
    assert len(backend.requests) == 1
    c = cache.cli.counters()
    assert (c["cache_miss"], c["cache_hit"], c["s_fetch"], c["n_object"]) == (1, 2, 1, 1)
    assert c["client_req"] == 3 and c["sess_conn"] == 2
    assert c["s_resp_bodybytes"] == 15 and c["s_resp_hdrbytes"] > 0


def test_backend_request_gets_xff_and_loses_hop_by_hop_headers(make):
    cache, backend = make("vcl 4.1;\nBACKEND\n")
    cache.get("/x", headers={"X-Forwarded-For": "10.0.0.1", "Connection": "keep-alive, X-Hop",
                             "X-Hop": "1", "Keep-Alive": "5", "TE": "trailers"})
    req = backend.requests[0]
    assert req.header("X-Forwarded-For") == "10.0.0.1, 127.0.0.1"
    for name in ("Connection", "X-Hop", "Keep-Alive", "TE"):
        assert req.header(name) is None, name
    assert re.fullmatch(r"\d+", req.header("X-Varnish"))


def test_hop_by_hop_response_headers_are_not_delivered(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n",
                    lambda req: Resp(headers=[("Keep-Alive", "timeout=5"), ("Upgrade", "x"),
                                              ("Connection", "X-Private"), ("X-Private", "1")], body=b"b"))
    _, h, _ = cache.get("/")
    assert "keep-alive" not in h and "upgrade" not in h and "x-private" not in h
    assert h["connection"] == "keep-alive"


def test_pass_goes_to_the_backend_each_time_with_the_request_body(make):
    vcl = "vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.method == \"POST\") { return (pass); } }\n"
    cache, backend = make(vcl, lambda req: Resp(body=b"got " + req.body))
    for _ in range(2):
        status, h, body = cache.get("/p", method="POST", body=b"payload")
        assert (status, body) == (200, b"got payload")
        assert "accept-ranges" not in h                 # pass objects do not announce ranges
    assert [r.method for r in backend.requests] == ["POST", "POST"]
    c = cache.cli.counters()
    assert c["s_pass"] == 2 and c["cache_miss"] == 0 and c["n_object"] == 0


def test_head_miss_fetches_get_and_later_get_is_a_hit(make):
    cache, backend = make("vcl 4.1;\nBACKEND\n")
    status, h, body = cache.get("/h", method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == "5"
    status, h, body = cache.get("/h")
    assert body == b"hello" and " " in h["x-varnish"]
    assert [r.method for r in backend.requests] == ["GET"]


def test_synth_and_restart_and_max_restarts(make):
    vcl = """vcl 4.1;
BACKEND
sub vcl_recv {
    if (req.url == "/s") { return (synth(418, "Teapot")); }
    if (req.url == "/r" && req.restarts < 2) { return (restart); }
    if (req.url == "/r") { return (synth(200, "restarted " + req.restarts)); }
}
sub vcl_deliver { if (req.url == "/loop") { return (restart); } }
"""
    cache, _ = make(vcl)
    status, h, body = cache.get("/s")
    assert status == 418 and h["server"] == "Varnish" and b"Teapot" in body
    assert cache.get("/r")[0] == 200
    with cache.proc.connect() as sock:
        sock.sendall(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"restarted 2" in sock.recv(65536)
    # vcl_deliver restarting forever ends in a 503 once max_restarts (4) is exceeded
    status, _, body = cache.get("/loop")
    assert status == 503
    assert cache.cli.counters()["s_synth"] >= 2


def test_purge_removes_every_variant(make):
    vcl = """vcl 4.1;
BACKEND
sub vcl_recv { if (req.method == "PURGE") { return (purge); } }
"""
    n = iter(range(100))
    cache, backend = make(vcl, lambda req: Resp(headers=[("Vary", "X-V")], body=b"v%d" % next(n)))
    assert cache.get("/", headers={"X-V": "a"})[2] == b"v0"
    assert cache.get("/", headers={"X-V": "b"})[2] == b"v1"
    assert cache.get("/", headers={"X-V": "a"})[2] == b"v0"
    status, _, body = cache.get("/", method="PURGE")
    assert status == 200 and b"Purged" in body
    assert cache.get("/", headers={"X-V": "a"})[2] == b"v2"
    c = cache.cli.counters()
    assert c["n_purges"] == 1 and c["n_obj_purged"] == 2


def test_pipe_relays_bytes_both_ways(make):
    vcl = "vcl 4.1;\nBACKEND\nsub vcl_recv { return (pipe); }\n"
    cache, backend = make(vcl, lambda req: Resp(body=b"piped " + req.url.encode()))
    with cache.proc.connect() as sock:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"piped /one" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        # the backend sees the request as sent, with Connection: close from vcl_pipe's default
        assert backend.requests[0].header("Connection") == "close"
    assert cache.cli.counters()["s_pipe"] == 1


def test_refused_pipe_closes_without_a_response(make):
    vcl = 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "9"; }\nsub vcl_recv { return (pipe); }\n'
    cache, _ = make(vcl)
    with cache.proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(100) == b""


def test_fail_in_vcl_is_503_and_close(make):
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.url == "/f") { return (fail); } }\n')
    with cache.proc.connect() as sock:
        status, h, _ = cache.get("/f", sock=sock)
        assert status == 503 and h["connection"] == "close"
        sock.settimeout(5)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
    assert cache.get("/ok")[0] == 200


def test_absolute_uri_sets_host(make):
    cache, backend = make("vcl 4.1;\nBACKEND\n")
    cache.get("http://www.example.com/abs")
    assert backend.requests[0].url == "/abs"
    assert backend.requests[0].header("Host") == "www.example.com"



def test_pipe_reuses_an_idle_backend_connection(make):
    vcl = 'vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.url == "/pipe") { return (pipe); } return (pass); }\n'
    cache, backend = make(vcl, lambda req: Resp(body=req.url.encode()))
    assert cache.get("/pass")[2] == b"/pass"
    with cache.proc.connect() as sock:
        sock.sendall(b"GET /pipe HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"/pipe"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert backend.connections == 1
