"""The client state machine where the mutation run found no test: the waiting list, VCL failures at run
time, vcl_recv that waits (std.cache_req_body), return (vcl(label)), pipe limits, synth status bounds,
close reasons, restarts, HitMiss/HitPass records. Servers run in-process (tests/inproc.py).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from inproc import MemoryTransport, inproc_cache_factory, wait_for
from test_cache_support import Resp, read_message

make = pytest.fixture(inproc_cache_factory)

WAITS = 'import std;\nBACKEND\nsub vcl_recv { if (req.url == "/nobody") { std.cache_req_body(1KB); } '


def raw(cache, data: bytes, then: bytes | None = None) -> tuple[bytes, bytes, bool | None]:
    """Send raw bytes on a new connection: (head, body, closed). With `then`, `then` is sent after the
    response and closed says whether it went unanswered; else closed is None (not checked)."""
    with cache.proc.connect() as sock:
        sock.sendall(data)
        head, body = read_message(sock)
        if then is None:
            return head, body, None
        try:
            sock.sendall(then)
            read_message(sock)
        except (ConnectionError, OSError):
            return head, body, True
        return head, body, False


def closes(cache, data: bytes) -> tuple[bytes, bool]:
    """Send raw bytes: (head, whether the server closed the connection after answering)."""
    with cache.proc.connect() as sock:
        sock.sendall(data)
        head, _ = read_message(sock)
        try:
            return head, sock.recv(1) == b""
        except TimeoutError:
            return head, False
        except ConnectionError:
            return head, True


AGAIN = b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_request_for_a_busy_object_waits_and_gets_the_fetched_one(make):
    release = threading.Event()

    def slow(req):
        release.wait(10)
        return Resp(headers=[("Cache-Control", "max-age=60")], body=b"once")

    cache, backend = make("vcl 4.1;\nBACKEND\n", slow)
    counters = cache.proc.server.counters
    results = []
    first = threading.Thread(target=lambda: results.append(cache.get("/w")))
    first.start()
    wait_for(lambda: backend.requests, what="the first fetch")
    waiting = [threading.Thread(target=lambda: results.append(cache.get("/w"))) for _ in range(2)]
    for thread in waiting:
        thread.start()
    wait_for(lambda: counters.busy_sleep == 2, what="two requests on the waiting list")
    release.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert [r[2] for r in results] == [b"once"] * 3 and len(backend.requests) == 1
    assert counters.busy_wakeup == 2 and counters.cache_hit == 2 and counters.cache_miss == 1
    # varnishd 7.1.1 (varnishtest): a lookup again after the waiting list reuses its objhead, so no
    # hcb_nolock (3 lookups, 2 of them woken)
    assert (counters.hcb_nolock, counters.hcb_lock, counters.hcb_insert) == (3, 1, 1)


def test_a_vcl_failure_at_run_time_is_a_503_and_closes(make):
    cache, _ = make('vcl 4.1;\nimport std;\nBACKEND\n'
                    'sub vcl_recv { set req.http.n = std.integer(req.http.x); }\n')
    head, closed = closes(cache, b"GET / HTTP/1.1\r\nHost: a\r\nX: nan\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 VCL failed\r\n") and closed
    c = cache.proc.server.counters
    assert c.vcl_fail == 1 and c.sc_vcl_failure == 1
    assert any("std.integer" in text for text in cache.proc.log.texts("VCL_Error"))
    head, _, closed = raw(cache, b"GET / HTTP/1.1\r\nHost: a\r\nX: 12\r\n\r\n", AGAIN)
    assert head.startswith(b"HTTP/1.1 200 ") and not closed


def test_a_failure_in_a_vcl_recv_that_waits_is_a_503_too(make):
    cache, _ = make("vcl 4.1;\n" + WAITS + 'if (req.url == "/f") { return (fail); } }\n')
    head, closed = closes(cache, b"GET /f HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 VCL failed\r\n") and closed
    assert cache.proc.server.counters.sc_vcl_failure == 1


@pytest.mark.parametrize("waits", [False, True], ids=["sync", "async"])
def test_vcl_recv_actions_when_it_runs_sync_or_waits(make, waits):
    vcl = ("vcl 4.1;\n" + (WAITS if waits else "import std;\nBACKEND\nsub vcl_recv { ") +
           'if (req.url == "/synth") { return (synth(404, "Gone")); }\n'
           'if (req.url == "/restart" && req.restarts == 0) { set req.url = "/after"; return (restart); }\n'
           'if (req.url == "/pass") { return (pass); }\n'
           'if (req.method == "PURGE") { return (purge); }\n}\n'
           'sub vcl_deliver { set resp.http.url = req.url; set resp.http.restarts = req.restarts; }\n')
    cache, backend = make(vcl, lambda req: Resp(body=req.url.encode()))
    status, h, _ = cache.get("/synth")
    assert status == 404
    status, h, body = cache.get("/restart")
    assert (status, body, h["url"], h["restarts"]) == (200, b"/after", "/after", "1")
    cache.get("/pass")
    cache.get("/pass")
    assert [r.url for r in backend.requests] == ["/after", "/pass", "/pass"]
    # X-Forwarded-For is appended once, before the first vcl_recv (cnt_recv_prep: restarts == 0)
    assert backend.requests[0].header("X-Forwarded-For") == "127.0.0.1"
    cache.get("/hit")
    assert cache.get("/hit")[1]["x-varnish"].count(" ") == 1
    status, _, _ = cache.get("/hit", method="PURGE")
    assert status == 200 and cache.proc.server.counters.n_purges == 1
    cache.get("/hit")
    assert [r.url for r in backend.requests][-1] == "/hit" and len(backend.requests) == 5
    assert cache.get("/nobody")[0] == 200


def test_return_vcl_switches_to_the_labelled_vcl(make):
    cache, backend = make("vcl 4.1;\nBACKEND\n")
    other = ('vcl 4.1;\nbackend default none;\nsub vcl_recv { return (synth(299, req.url)); }\n'
             'sub vcl_synth { set resp.http.vcl = "other"; }\n')
    assert cache.cli.cmd("vcl.inline other << EOF\n" + other + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label l1 other")[0] == 200
    main = (f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n'
            'sub vcl_recv { if (req.url == "/other") { return (vcl(l1)); } }\n'
            'sub vcl_deliver { set resp.http.vcl = "main"; }\n')
    assert cache.cli.cmd("vcl.inline main << EOF\n" + main + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use main")[0] == 200
    status, h, _ = cache.get("/other")
    assert (status, h["vcl"]) == (299, "other")
    assert cache.get("/x")[1]["vcl"] == "main"


def test_http10_and_connection_close_end_the_session_with_their_reason(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n")
    c = cache.proc.server.counters
    head, closed = closes(cache, b"GET / HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and closed
    wait_for(lambda: c.sc_req_http10 == 1, what="sc_req_http10")
    head, closed = closes(cache, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
    assert closed
    wait_for(lambda: c.sc_req_close == 1, what="sc_req_close")
    head, _, closed = raw(cache, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", AGAIN)
    assert not closed
    assert c.sc_req_http10 == 1


@pytest.mark.parametrize("code, status_line", [
    (1000, b"HTTP/1.1 503 VCL failed"), (99, b"HTTP/1.1 503 VCL failed"),
    (100, b"HTTP/1.1 100 Continue"), (999, b"HTTP/1.1 999 Unknown HTTP Status"),
    (200, b"HTTP/1.1 200 OK"), (1404, b"HTTP/1.1 404 Not Found"),
])
def test_synth_status_checked_as_vrt_synth(make, code, status_line):
    """return (synth(N)) fails the task unless N % 1000 >= 100 (VRT_synth); the digits above go
    nowhere but VCL, the wire gets N % 1000 with its reason."""
    cache, _ = make(f"vcl 4.1;\nBACKEND\nsub vcl_recv {{ return (synth({code})); }}\n")
    with cache.proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(4096)
    assert data.split(b"\r\n")[0] == status_line


def test_synth_without_arguments_and_default_reasons(make):
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.url == "/r") { return (synth(418, "")); } }\n'
                    'sub vcl_hit { return (synth(403, "No hits")); }\n'
                    'sub vcl_synth { set resp.http.xid = req.xid; }\n')
    head, _, _ = raw(cache, b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 418 I'm a Teapot\r\n")
    assert b"\r\nServer: Varnish\r\n" in head and b"\r\nDate: " in head
    cache.get("/h")
    head, _, _ = raw(cache, b"GET /h HTTP/1.1\r\nHost: test\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 No hits\r\n")


def test_a_synth_before_a_late_100_continue_suggests_closing(make):
    cache, _ = make('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv {\n'
                    ' if (req.url == "/late") { std.late_100_continue(true); }\n return (synth(403)); }\n')
    with cache.proc.connect() as sock:       # the client still waits for 100 Continue: no body read
        sock.sendall(b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        head, _ = read_message(sock)
    assert head.startswith(b"HTTP/1.1 403 ") and b"\r\nConnection: close\r\n" in head
    with cache.proc.connect() as sock:       # 100 Continue went out after vcl_recv: nothing to suggest
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        data = b""
        while data.count(b"\r\n\r\n") < 2:        # the 403 may come before the body is sent
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
            if data == b"HTTP/1.1 100 Continue\r\n\r\n":
                sock.sendall(b"hello")
    interim, head = data.split(b"\r\n\r\n")[:2]
    assert interim == b"HTTP/1.1 100 Continue"
    assert head.startswith(b"HTTP/1.1 403 ") and b"Connection: close" not in head


def test_too_many_restarts_is_a_503_with_the_last_xid(make):
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (restart); }\n"
                    "sub vcl_synth { set resp.http.restarts = req.restarts; }\n", None, "-p", "max_restarts=2")
    cache.cli.cmd("debug.xid 99")
    status, h, _ = cache.get("/")
    assert (status, h["restarts"], h["x-varnish"]) == (503, "3", "103")    # session 100, requests 101-103
    wait_for(lambda: cache.proc.log.texts("VCL_Error"), what="the log")
    assert cache.proc.log.texts("VCL_Error") == ["Too many restarts"]
    assert {"req 102 restart", "req 103 restart"} <= set(cache.proc.log.texts("Link"))
    assert {"req 100 rxreq", "req 101 restart", "req 102 restart"} <= set(cache.proc.log.texts("Begin"))


def test_a_restart_after_a_hit_forgets_the_hit(make):
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_deliver { if (req.restarts == 0 && obj.hits > 0) '
                          '{ set req.url = "/b"; return (restart); } }\n', lambda req: Resp(body=req.url.encode()))
    cache.get("/a")
    status, h, body = cache.get("/a")
    assert (status, body) == (200, b"/b") and " " not in h["x-varnish"]       # a miss, not a hit
    assert cache.proc.server.counters.cache_hit == 1


def test_hit_for_miss_and_hit_for_pass_are_logged_and_counted(make):
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_backend_response {\n'
                          ' if (bereq.url == "/hfm") { set beresp.uncacheable = true; set beresp.ttl = 50s; }\n'
                          ' if (bereq.url == "/hfp") { return (pass(40s)); } }\n')
    for url in ("/hfm", "/hfm", "/hfp", "/hfp"):
        assert cache.get(url)[0] == 200
    c = cache.proc.server.counters
    assert (c.cache_hitmiss, c.cache_hitpass, len(backend.requests)) == (1, 1, 4)
    wait_for(lambda: cache.proc.log.texts("HitMiss") and cache.proc.log.texts("HitPass"), what="the log")
    (hitmiss,), (hitpass,) = cache.proc.log.texts("HitMiss"), cache.proc.log.texts("HitPass")
    xid, ttl = hitmiss.split()
    assert int(xid) > 0 and 48 < float(ttl) <= 50
    xid, ttl = hitpass.split()
    assert int(xid) > 0 and 38 < float(ttl) <= 40


def test_vcl_hit_pass_counts_a_hit_and_shows_the_object_xid(make):
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_hit { if (req.http.pass) { return (pass); } }\n')
    cache.get("/p")
    status, h, _ = cache.get("/p", headers={"pass": "1"})
    c = cache.proc.server.counters
    assert status == 200 and len(backend.requests) == 2 and c.cache_hit == 1 and c.s_pass == 1
    assert h["x-varnish"].count(" ") == 1


def test_vcl_hit_miss_without_a_busy_object_is_a_pass(make):
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_hit { if (req.http.m) { return (synth(401)); } }\n'
                          'sub vcl_miss { if (req.http.m) { return (pass); } }\n')
    cache.get("/m")
    assert cache.get("/m", headers={"m": "1"})[0] == 401
    assert cache.get("/n", headers={"m": "1"})[0] == 200
    assert cache.proc.server.counters.s_pass == 1 and cache.proc.server.counters.cache_miss == 1


def test_pipe_sends_connection_close_and_respects_pipe_sess_max(make):
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (pipe); }\n'
                          'sub vcl_pipe { if (req.url == "/no") { return (synth(405)); } }\n',
                          lambda req: Resp(body=b"piped", linger=True), "-p", "pipe_sess_max=1")
    c = cache.proc.server.counters
    first = cache.proc.connect()
    try:
        first.sendall(b"GET /held HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        assert read_message(first)[1] == b"piped"
        wait_for(lambda: c.n_pipe == 1, what="one pipe open")
        assert backend.requests[0].header("Connection") == "close"
        head, closed = closes(cache, b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and closed and c.pipe_limited == 1
        head, _, _ = raw(cache, b"GET /no HTTP/1.1\r\nHost: a\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405 ")
    finally:
        first.close()
    wait_for(lambda: c.n_pipe == 0, what="the pipe closed")
    assert c.s_pipe == 3 and c.sc_tx_pipe == 1
    assert raw(cache, b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n")[1] == b"piped"


@pytest.mark.parametrize("url, feature, host, path", [
    ("http://example.com/a/b?c", "", "example.com", "/a/b?c"),
    ("HTTP://Ex/y", "", "Ex", "/y"),
    ("http://h/r?to=http://x/y", "", "h", "/r?to=http://x/y"),     # the first "://" only
    ("http:///p", "", "", "/p"),
    ("http://h", "", "other", "http://h"),                         # no path: left alone
    ("HTTPS://Example.com:8443/x", "", "other", "HTTPS://Example.com:8443/x"),
    ("HTTPS://Example.com:8443/x", "+https_scheme", "Example.com:8443", "/x"),
])
def test_an_absolute_url_names_the_host(make, url, feature, host, path):
    """varnishd 7.1 (varnishtest): HTTP1_DissectRequest takes the host of http://host/path (and of
    https:// with feature +https_scheme) for a Host header appended last; a URL without a path stays."""
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n", None,
                          *(("-p", f"feature={feature}") if feature else ()))
    with cache.proc.connect() as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: other\r\nX-After: 1\r\n\r\n".encode())
        read_message(sock)
    req = backend.requests[0]
    assert (req.header("Host"), req.url) == (host, path)
    names = [name for name, _ in req.headers]
    assert names.index("X-After") < names.index("Host") if host != "other" else names.index("Host") == 0


def test_an_absolute_url_is_logged_as_varnishd_reads_it(make):
    """varnishd 7.1: the Host swap is logged between the Timestamps and VCL_use, ReqURL is the path."""
    cache, _ = make("vcl 4.1;\nBACKEND\n")
    cache.cli.cmd("debug.xid 9")
    raw(cache, b"GET http://example.com/a HTTP/1.1\r\nHost: other\r\nX-After: 1\r\n\r\n")
    wait_for(lambda: (11, "End", "") in cache.proc.log.records, what="the request's End")
    records = [(tag, text) for vxid, tag, text in cache.proc.log.records if vxid == 11 and tag != "Timestamp"]
    assert records[:8] == [("Begin", "req 10 rxreq"), ("ReqUnset", "Host: other"),
                           ("ReqHeader", "Host: example.com"), ("VCL_use", "boot"), records[4],
                           ("ReqMethod", "GET"), ("ReqURL", "/a"), ("ReqProtocol", "HTTP/1.1")]
    assert records[8:11] == [("ReqHeader", "X-After: 1"), ("ReqHeader", "Host: example.com"),
                             ("ReqHeader", "X-Forwarded-For: 127.0.0.1")]


def test_a_relative_url_that_looks_absolute_is_left_alone(make):
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n")
    raw(cache, b"GET /http://x/y HTTP/1.1\r\nHost: other\r\n\r\n")
    raw(cache, b"GET ftp://x/y HTTP/1.1\r\nHost: other\r\n\r\n")
    assert [(r.header("Host"), r.url) for r in backend.requests] == [("other", "/http://x/y"),
                                                                     ("other", "ftp://x/y")]


def test_the_shared_log_of_a_request(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n")
    cache.cli.cmd("debug.xid 9")
    cache.get("/logged", headers={"X-In": "1"})
    wait_for(lambda: (11, "End", "") in cache.proc.log.records, what="the request's End")
    records = [(vxid, tag, text) for vxid, tag, text in cache.proc.log.records if vxid == 11]
    tags = [tag for _, tag, _ in records]
    assert tags[:4] == ["Begin", "Timestamp", "Timestamp", "VCL_use"]
    text = dict((tag, text) for _, tag, text in records if tag not in ("Timestamp", "ReqHeader"))
    assert text["Begin"] == "req 10 rxreq" and text["VCL_use"] == "boot"
    assert text["ReqMethod"] == "GET" and text["ReqURL"] == "/logged" and text["ReqProtocol"] == "HTTP/1.1"
    assert text["ReqStart"].startswith("127.0.0.1 ") and text["ReqStart"].endswith(" a0")
    assert ("VCL_call", "RECV") in [(t, x) for _, t, x in records]
    assert ("VCL_return", "hash") in [(t, x) for _, t, x in records]
    assert text["RespStatus"] == "200" and text["RespProtocol"] == "HTTP/1.1"
    assert tags[-1] == "End"
    req_hdr, req_body, req_total, resp_hdr, resp_body, resp_total = map(int, text["ReqAcct"].split())
    assert req_hdr == req_total > 30 and req_body == 0 and resp_body == 5
    assert resp_total == resp_hdr + resp_body and resp_hdr > 100


def test_closing_mid_wait_leaves_no_busy_object(make):
    release = threading.Event()

    def slow(req):
        release.wait(10)
        return Resp(body=b"late")

    cache, backend = make("vcl 4.1;\nBACKEND\n", slow)
    counters = cache.proc.server.counters
    first = cache.proc.connect()
    first.sendall(b"GET /c HTTP/1.1\r\nHost: test\r\n\r\n")
    wait_for(lambda: backend.requests, what="the fetch")
    second = socket.create_connection(("127.0.0.1", cache.proc.port), timeout=5)
    second.sendall(b"GET /c HTTP/1.1\r\nHost: test\r\n\r\n")
    wait_for(lambda: counters.busy_sleep == 1, what="the waiting list")
    second.close()
    release.set()
    assert read_message(first)[1] == b"late"
    first.close()
    assert cache.get("/c")[2] == b"late" and len(backend.requests) == 1


def test_a_run_time_failure_in_a_vcl_recv_that_waits_is_a_503(make):
    cache, _ = make("vcl 4.1;\n" + WAITS + "set req.http.n = std.integer(req.http.x); }\n")
    head, closed = closes(cache, b"GET / HTTP/1.1\r\nHost: a\r\nX: nan\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 VCL failed\r\n") and closed
    assert cache.proc.server.counters.vcl_fail == 1


def test_an_abandoned_fetch_is_a_503_for_the_client(make):
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_backend_response { return (abandon); }\n")
    status, _, _ = cache.get("/x")
    assert status == 503
    status, _, _ = cache.get("/x")                 # nothing was cached, no busy object left behind
    assert status == 503 and cache.proc.server.counters.cache_miss == 2


def test_a_failing_vcl_synth_is_a_bare_500_and_close(make):
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (synth(404)); }\nsub vcl_synth { return (fail); }\n")
    """varnishd 7.1 (varnishtest): the status line alone (http1_minimal_response), logged as the response
    after the Process timestamp, and the connection closes."""
    cache.cli.cmd("debug.xid 9")
    head, closed = closes(cache, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head == b"HTTP/1.1 500 Internal Server Error\r\n\r\n" and closed
    assert cache.proc.server.counters.sc_vcl_failure == 1
    wait_for(lambda: (11, "End", "") in cache.proc.log.records, what="the request's End")
    records = [(tag, text.split(":")[0] if tag == "Timestamp" else text)
               for vxid, tag, text in cache.proc.log.records if vxid == 11]
    at = records.index(("Timestamp", "Process"))
    assert records[at - 3:at] == [("VCL_call", "SYNTH"), ("VCL_Error", "Failed from VCL"), ("VCL_return", "fail")]
    assert records[at + 1:] == [("RespProtocol", "HTTP/1.1"), ("RespStatus", "500"),
                                ("RespReason", "Internal Server Error"), ("Timestamp", "Resp"),
                                ("ReqAcct", "27 0 27 38 0 38"), ("End", "")]


def test_more_object_headers_than_http_max_hdr_is_a_500(make):
    many = [(f"X-{i}", "v") for i in range(24)]     # fits the fetch, not the delivery
    cache, _ = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(headers=many if req.url == "/many" else [], body=b"b"),
                    "-p", "http_max_hdr=32")
    status, _, _ = cache.get("/many")
    c = cache.proc.server.counters
    assert status == 500 and c.losthdr > 0
    assert cache.get("/few")[0] == 200


def test_a_gzipped_object_for_a_client_without_gzip_gets_a_weak_etag(make):
    import gzip

    body = gzip.compress(b"hello " * 100)
    cache, _ = make("vcl 4.1;\nBACKEND\n",
                    lambda req: Resp(headers=[("Content-Encoding", "gzip"), ("ETag", '"abc"')], body=body))
    cache.cli.cmd("debug.xid 999")
    _, h, got = cache.get("/z")
    assert h["etag"] == 'W/"abc"' and got == b"hello " * 100
    _, h, got = cache.get("/z", headers={"Accept-Encoding": "gzip"})
    assert h["etag"] == '"abc"' and got == body
    # varnishd 7.1.1 (varnishtest -v): the change is logged where it is made, after Via
    log = cache.proc.log
    wait_for(lambda: (1001, "End", "") in log.records, what="the first request's End")
    records = [(t, x.split(":")[0] if x.startswith(("X-Varnish", "Age", "Date")) else x)
               for v, t, x in list(log.records) if v == 1001 and t in ("RespHeader", "RespUnset", "VCL_call")]
    at = records.index(("VCL_call", "DELIVER"))
    assert records[at - 6:at + 1] == [
        ("RespHeader", "X-Varnish"), ("RespHeader", "Age"), ("RespHeader", "Via: 1.1 varnish (Varnish/7.1)"),
        ("RespUnset", 'ETag: "abc"'), ("RespHeader", 'ETag: W/"abc"'), ("RespHeader", "Accept-Ranges: bytes"),
        ("VCL_call", "DELIVER")]
    assert ("RespHeader", 'ETag: "abc"') in records[:at]


def test_a_stale_object_in_grace_is_delivered_while_it_is_refreshed(make):
    n = iter(range(1, 100))
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_backend_response { set beresp.ttl = 0.1s; set beresp.grace = 1h; }\n",
                          lambda req: Resp(body=b"v%d" % next(n)))
    assert cache.get("/g")[2] == b"v1"
    wait_for(lambda: cache.get("/g")[2] == b"v1" and cache.proc.server.counters.cache_hit_grace >= 1,
             what="a grace hit")
    wait_for(lambda: len(backend.requests) == 2, what="the background fetch")
    wait_for(lambda: cache.get("/g")[2] == b"v2", what="the refreshed object")


@pytest.mark.parametrize("debug, synced", [("+syncvsl", True), ("none", False)])
def test_debug_syncvsl_writes_a_waiting_request_s_records_before_it_waits(make, debug, synced):
    cache, _ = make("vcl 4.1;\n" + WAITS + "}\n", None, "-p", f"debug={debug}")
    cache.cli.cmd("debug.xid 99")
    cache.get("/nobody")
    log = cache.proc.log
    wait_for(lambda: (101, "End", "") in log.records, what="the request's End")
    assert (log.writes[101] > 1) is synced          # once before each wait, or all at the end
    assert log.kinds[101] == {"c"}                  # a client transaction, each part
    tags = [tag for vxid, tag, _ in log.records if vxid == 101]
    assert tags[0] == "Begin" and tags.count("Begin") == 1 and tags[-1] == "End"


def test_a_post_on_a_grace_hit_waits_for_the_background_fetch_to_take_its_body(make):
    n = iter(range(1, 100))
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (hash); }\n"
                          "sub vcl_backend_response { set beresp.ttl = 0.1s; set beresp.grace = 1h; }\n",
                          lambda req: Resp(body=b"v%d" % next(n)))
    assert cache.get("/p")[2] == b"v1"
    c = cache.proc.server.counters
    wait_for(lambda: cache.get("/p", method="POST", body=b"data")[2] == b"v1" and c.cache_hit_grace >= 1,
             what="a grace hit for the POST")
    wait_for(lambda: len(backend.requests) == 2, what="the background fetch")
    assert cache.get("/p", method="POST", body=b"more")[0] == 200


def test_a_piped_request_goes_to_the_backend_as_the_client_sent_it(make):
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pipe); }\n", lambda req: Resp(body=b"p"))
    cache.cli.cmd("debug.xid 49")
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /p HTTP/1.0\r\nHost: a\r\nRange: bytes=0-1\r\nAccept-Encoding: br\r\n"
                     b"Content-Length: 4\r\n\r\nbody")
        read_message(sock)
    req = backend.requests[0]
    assert (req.method, req.proto, req.body) == ("POST", "HTTP/1.0", b"body")
    assert req.header("Range") == "bytes=0-1" and req.header("Accept-Encoding") == "br"
    assert req.header("X-Varnish") == "51" and req.header("Connection") == "close"


def test_a_labelled_vcl_fetches_from_its_own_default_backend(make):
    cache, backend = make("vcl 4.1;\nbackend default none;\n", lambda req: Resp(body=b"from the backend"))
    other = (f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n'
             'sub vcl_recv { return (pass); }\n')
    assert cache.cli.cmd("vcl.inline other << EOF\n" + other + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label l2 other")[0] == 200
    main = "vcl 4.1;\nbackend default none;\nsub vcl_recv { return (vcl(l2)); }\n"
    assert cache.cli.cmd("vcl.inline main << EOF\n" + main + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use main")[0] == 200
    status, _, body = cache.get("/x")
    assert (status, body) == (200, b"from the backend")


def test_a_synth_response_and_its_log_records_as_varnishd_writes_them(make):
    """varnishd 7.1 (varnishtest -v): the head of a vcl_synth response with two synthetic() calls, its
    records in order, and return (restart) from vcl_synth; s_synth counts both synths."""
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_recv {\n if (req.url == "/s") { return (synth(404)); }\n'
                          ' if (req.url == "/r" && req.restarts == 0) { return (synth(700)); } }\n'
                          'sub vcl_synth {\n if (resp.status == 700) { set req.url = "/after"; return (restart); }\n'
                          ' synthetic("ab");\n synthetic("cd");\n return (deliver);\n}\n',
                          lambda req: Resp(body=b"after"))
    cache.cli.cmd("debug.xid 1000")
    head, body, _ = raw(cache, b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 404 Not Found" and body == b"abcd"
    assert [ln.split(b": ")[0] for ln in lines[1:] if ln] == [b"Date", b"Server", b"X-Varnish", b"Content-Length",
                                                             b"Connection"]
    assert lines[2:6] == [b"Server: Varnish", b"X-Varnish: 1002", b"Content-Length: 4", b"Connection: keep-alive"]
    wait_for(lambda: any(r[0] == 1002 and r[1] == "End" for r in list(cache.proc.log.records)), what="the log")
    records = [(tag, text) for vxid, tag, text in list(cache.proc.log.records)
               if vxid == 1002 and tag in ("RespProtocol", "RespStatus", "RespReason", "RespHeader", "Timestamp",
                                           "Storage")]
    at = records.index(("RespProtocol", "HTTP/1.1"))
    got = [(tag, text.split(":")[0] if tag in ("Timestamp",) or text.startswith("Date:") else text)
           for tag, text in records[at:at + 11]]
    assert got == [("RespProtocol", "HTTP/1.1"), ("RespStatus", "404"), ("RespReason", "Not Found"),
                   ("RespHeader", "Date"), ("RespHeader", "Server: Varnish"), ("RespHeader", "X-Varnish: 1002"),
                   ("Timestamp", "Process"), ("RespHeader", "Content-Length: 4"), ("Storage", "malloc Transient"),
                   ("RespHeader", "Connection: keep-alive"), ("Timestamp", "Resp")]
    status, _, body = cache.get("/r")
    assert (status, body) == (200, b"after") and [r.url for r in backend.requests] == ["/after"]
    assert cache.proc.server.counters.s_synth == 2


def test_the_lookup_follows_req_hash_always_miss_req_ttl_and_req_hash_ignore_vary(make):
    n = [0]

    def count(req):
        n[0] += 1
        return Resp(headers=[("Cache-Control", "max-age=100"), ("Age", "50"), ("Vary", "X-V")],
                    body=b"%d" % n[0])

    cache, backend = make('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv {\n'
                          ' if (req.http.miss) { set req.hash_always_miss = true; }\n'
                          ' if (req.http.ttl) { set req.ttl = std.duration(req.http.ttl, 0s); }\n'
                          ' if (req.http.any) { set req.hash_ignore_vary = true; }\n}\n', count)
    assert cache.get("/a", headers={"X-V": "1"})[2] == b"1"
    assert cache.get("/a", headers={"X-V": "1"})[2] == b"1"                       # a hit
    assert cache.get("/a", headers={"X-V": "1", "miss": "1"})[2] == b"2"          # always a miss
    assert cache.get("/a", headers={"X-V": "1", "ttl": "60s"})[2] == b"2"         # 50 s old: fresh
    assert cache.get("/a", headers={"X-V": "1", "ttl": "10s"})[2] == b"3"         # too old for req.ttl
    assert cache.get("/a", headers={"X-V": "2"})[2] == b"4"                       # another variant
    status, h, body = cache.get("/a", headers={"X-V": "9", "any": "1"})
    assert body in (b"3", b"4") and h["x-varnish"].count(" ") == 1                 # any variant hits
    assert len(backend.requests) == 4


def test_vcl_pass_returns_synth_or_restart_and_a_pass_links_its_fetch(make):
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n'
                          'sub vcl_pass {\n if (req.url == "/s") { return (synth(403, "Not here")); }\n'
                          ' if (req.url == "/r") { set req.url = "/after"; return (restart); } }\n',
                          lambda req: Resp(body=req.url.encode()))
    assert cache.get("/s")[:1] == (403,)
    status, _, body = cache.get("/r")
    assert (status, body) == (200, b"/after")
    cache.cli.cmd("debug.xid 99")
    cache.get("/p")
    wait_for(lambda: (101, "End", "") in cache.proc.log.records, what="the request's End")
    assert (101, "Link", "bereq 102 pass") in cache.proc.log.records      # varnishd: VCL_return fetch, Link
    assert [r.url for r in backend.requests] == ["/after", "/p"] and cache.proc.server.counters.s_pass == 2


def test_a_restart_ends_the_old_request_in_the_log_as_varnishd(make):
    """varnishd 7.1 (cnt_restart, VSL_ChgId): the old vxid's last records are its Restart timestamp, a
    Link to the new vxid and End, a client ("c") transaction; the new one begins linked back."""
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.restarts == 0) { return (restart); } }\n')
    log = cache.proc.log
    kinds = {}
    write = log.write

    def recording(vxid, kind, records, tail=b""):
        kinds.setdefault(vxid, set()).add(kind)
        write(vxid, kind, records, tail)

    log.write = recording
    cache.cli.cmd("debug.xid 99")
    assert cache.get("/")[0] == 200
    wait_for(lambda: (102, "End", "") in log.records, what="the restarted request's End")
    old = [(tag, text.split(":")[0] if tag == "Timestamp" else text) for vxid, tag, text in log.records
           if vxid == 101]
    assert old[-3:] == [("Timestamp", "Restart"), ("Link", "req 102 restart"), ("End", "")]
    assert (102, "Begin", "req 101 restart") in log.records and kinds[101] == kinds[102] == {"c"}


def test_a_conditional_request_restarted_into_a_hit_gets_its_304(make):
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_deliver { if (req.restarts == 0 && req.http.again) '
                          '{ return (restart); } }\n', lambda req: Resp(headers=[("ETag", '"e"')], body=b"x"))
    assert cache.get("/c")[0] == 200
    status, h, body = cache.get("/c", headers={"If-None-Match": '"e"', "again": "1"})
    assert (status, body, h["x-varnish"].count(" ")) == (304, b"", 1) and len(backend.requests) == 1


def test_a_synth_200_answers_a_range_request_with_206(make):
    """varnishd 7.1 (varnishtest): resp.filters of a synth response include range: 206, bytes 0-1/5."""
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (synth(200)); }\n'
                    'sub vcl_synth { synthetic("hello"); return (deliver); }\n')
    status, h, body = cache.get("/", headers={"Range": "bytes=0-1"})
    assert (status, h["content-range"], body) == (206, "bytes 0-1/5", b"he")


def test_vcl_synth_sees_the_connection_close_suggested_before_a_late_100(make):
    """cnt_synth sets "Connection: close" for a client still waiting for its 100 (VCL may remove it)."""
    cache, _ = make('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv { std.late_100_continue(true); return (synth(403)); }\n'
                    'sub vcl_synth { set resp.http.seen = resp.http.Connection; }\n')
    cache.cli.cmd("debug.xid 9")
    with cache.proc.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        head, _ = read_message(sock)
    assert head.split(b"\r\n")[3:6] == [b"X-Varnish: 11", b"Connection: close", b"seen: close"]
    wait_for(lambda: (11, "End", "") in cache.proc.log.records, what="the request's End")
    resp = [text for vxid, tag, text in cache.proc.log.records if vxid == 11 and tag in ("RespHeader", "RespUnset")]
    assert resp[2:5] == ["X-Varnish: 11", "Connection: close", "seen: close"] and len(resp) == 8   # no RespUnset


def test_a_synth_body_keeps_the_bytes_it_was_given_and_its_own_length(make):
    """synthetic() passes a header's bytes through as they came (not UTF-8 here); cnt_synth replaces a
    Content-Length VCL set with the body's."""
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (synth(200)); }\n'
                    'sub vcl_synth { set resp.http.Content-Length = "999"; synthetic(req.http.x); return (deliver); }\n')
    head, body, _ = raw(cache, b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n")
    assert body == b"caf\xe9" and head.lower().count(b"\r\ncontent-length: ") == 1
    assert b"\r\nContent-Length: 4\r\n" in head
    wait_for(lambda: [r for r in cache.proc.log.records if r[1] == "End"], what="the log")
    records = [(tag, text) for _, tag, text in cache.proc.log.records]
    at = [tag for tag, _ in records].index("Timestamp", records.index(("VCL_call", "SYNTH")))
    assert records[at + 1:at + 3] == [("RespUnset", "Content-Length: 999"), ("RespHeader", "Content-Length: 4")]


def test_the_lookup_follows_req_hash_ignore_busy_and_req_grace_and_logs_bans(make):
    release = threading.Event()
    n = iter(range(1, 100))

    def slow(req):
        v = next(n)
        if v == 1:
            release.wait(10)
        return Resp(body=b"v%d" % v)

    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_recv {\n if (req.http.ib) { set req.hash_ignore_busy = true; }\n'
                          ' if (req.http.nograce) { set req.grace = 0s; } }\n'
                          'sub vcl_backend_response { set beresp.ttl = 0.001s; set beresp.grace = 1h; return (deliver); }\n',
                          slow)
    c = cache.proc.server.counters
    first = threading.Thread(target=cache.get, args=("/slow",))
    first.start()
    wait_for(lambda: backend.requests, what="the first fetch")
    try:
        assert cache.get("/slow", headers={"ib": "1"})[0] == 200      # did not wait for the busy object
        assert len(backend.requests) == 2 and c.busy_sleep == 0
    finally:
        release.set()
        first.join(10)
    assert cache.get("/g")[2] == b"v3"
    stale = time.time() + 0.01
    wait_for(lambda: time.time() > stale, what="the object past its 1 ms TTL")
    assert cache.get("/g", headers={"nograce": "1"})[2] == b"v4"          # req.grace 0s: a miss
    stale = time.time() + 0.01
    wait_for(lambda: time.time() > stale, what="the object past its 1 ms TTL")
    assert cache.get("/g")[2] == b"v4" and c.cache_hit_grace == 1         # in grace: delivered
    # the grace hit's background fetch must be done first: an object it stores after the ban is new
    def bgfetch_done() -> bool:
        records = list(cache.proc.log.records)
        links = [int(t.split()[1]) for x, tag, t in records if tag == "Link" and t.endswith(" bgfetch")]
        return bool(links) and (links[-1], "End", "") in records
    wait_for(bgfetch_done, what="the background fetch's End")
    cache.cli.cmd("debug.xid 999")
    cache.cli.cmd("ban req.url == /g")
    cache.get("/g")
    wait_for(lambda: (1001, "End", "") in cache.proc.log.records, what="the request's End")
    assert [t for x, tag, t in cache.proc.log.records if x == 1001 and tag == "ExpBan"][0].endswith(" banned lookup")


def test_a_grace_hit_refreshes_in_the_background_and_a_miss_revalidates_the_stale_object(make):
    """A stale object in grace: delivered, with a background fetch linked as varnishd's (Link bereq N
    bgfetch, bereq.is_bgfetch); a miss past req.grace fetches at once, revalidating the stale object."""
    n = iter(range(1, 100))

    def backend_resp(req):
        if req.header("If-None-Match") == '"e"':
            return Resp(status=304, headers=[("ETag", '"e"')])
        return Resp(headers=[("ETag", '"e"')], body=b"v%d" % next(n))

    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.http.m) { set req.grace = 0s; } }\n'
                          'sub vcl_backend_fetch { set bereq.http.bg = bereq.is_bgfetch; }\n'
                          'sub vcl_backend_response { set beresp.ttl = 0.001s; set beresp.grace = 1h;\n'
                          ' set beresp.http.was304 = beresp.was_304; return (deliver); }\n', backend_resp)
    c = cache.proc.server.counters
    assert cache.get("/g")[2] == b"v1"
    stale = time.time() + 0.01
    wait_for(lambda: time.time() > stale, what="the object past its 1 ms TTL")
    cache.cli.cmd("debug.xid 99")
    status, h, body = cache.get("/g")
    assert (status, body, c.cache_hit_grace, c.cache_hit) == (200, b"v1", 1, 1)
    wait_for(lambda: len(backend.requests) == 2 and (102, "End", "") in cache.proc.log.records,
             what="the background fetch")
    assert backend.requests[1].header("bg") == "true" and backend.requests[1].header("If-None-Match") == '"e"'
    assert (101, "Link", "bereq 102 bgfetch") in cache.proc.log.records
    assert (102, "Begin", "bereq 101 bgfetch") in cache.proc.log.records
    stale = time.time() + 0.01
    wait_for(lambda: time.time() > stale, what="the refreshed object past its 1 ms TTL")
    status, h, body = cache.get("/g", headers={"m": "1"})
    assert (status, body, h["was304"]) == (200, b"v1", "true") and backend.requests[2].header("bg") == "false"
    assert backend.requests[2].header("If-None-Match") == '"e"' and c.cache_hit_grace == 1 and c.cache_miss == 2


def test_a_hit_is_logged_with_the_object_s_xid_ttl_grace_and_keep_and_hitmiss_hitpass_reach_vcl(make):
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_backend_response {\n'
                    ' if (bereq.url == "/hfm") { set beresp.uncacheable = true; set beresp.ttl = 50s; return (deliver); }\n'
                    ' if (bereq.url == "/hfp") { return (pass(40s)); }\n'
                    ' set beresp.ttl = 100s; set beresp.grace = 7s; set beresp.keep = 3s; }\n'
                    'sub vcl_deliver { set resp.http.hm = req.is_hitmiss; set resp.http.hp = req.is_hitpass; }\n')
    cache.cli.cmd("debug.xid 99")
    cache.get("/h")                                     # session 100, request 101, its fetch 102
    cache.get("/h")                                     # session 103, request 104: the hit
    wait_for(lambda: (104, "End", "") in cache.proc.log.records, what="the hit's End")
    (hit,) = [text for vxid, tag, text in cache.proc.log.records if vxid == 104 and tag == "Hit"]
    xid, ttl, grace, keep = hit.split(" ")
    assert (xid, grace, keep) == ("102", "7.000000", "3.000000") and 98 < float(ttl) <= 100
    for url, flags in (("/hfm", ("true", "false")), ("/hfp", ("false", "true"))):
        first, again = cache.get(url)[1], cache.get(url)[1]
        assert (first["hm"], first["hp"], again["hm"], again["hp"]) == ("false", "false", *flags)


def test_a_one_byte_body_goes_to_the_backend_and_the_next_request_follows(make):
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n", lambda req: Resp(body=req.body or b"-"))
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        assert read_message(sock)[1] == b"x"
        sock.sendall(b"GET /n HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_message(sock)[1] == b"-"
    assert [(r.method, r.url) for r in backend.requests] == [("POST", "/b"), ("GET", "/n")]


# A call that awaits (tinykvm.live_update_file of a file that is not there: false at once) makes the
# subroutine it is in run in the state's coroutine twin (ast_hit, ast_deliver, ...).
AWAIT = 'if (tinykvm.live_update_file("p", "/nonexistent/p")) { }'
STATE_SUBS = """
sub vcl_recv { if (req.method == "PURGE") { return (purge); } }
sub vcl_hit { WAIT if (req.http.on-hit == "pass") { return (pass); } if (req.http.on-hit == "synth") { return (synth(702, "from hit")); } }
sub vcl_miss { WAIT if (req.http.on-miss == "pass") { return (pass); } if (req.http.on-miss == "synth") { return (synth(703, "from miss")); } }
sub vcl_pass { WAIT if (req.http.on-pass == "synth") { return (synth(704, "from pass")); } }
sub vcl_purge { WAIT return (synth(705, "purged")); }
sub vcl_deliver { WAIT set resp.http.delivered = req.url; if (req.http.on-deliver == "synth") { return (synth(706, "from deliver")); } }
sub vcl_synth { WAIT set resp.http.synthed = resp.status; set resp.http.restarts = req.restarts; if (req.http.on-synth == "restart" && req.restarts == 0) { return (restart); } }
"""


@pytest.mark.parametrize("waits", [False, True], ids=["sync", "async"])
def test_each_state_acts_alike_whether_its_subroutine_waits_or_not(make, waits):
    vcl = "vcl 4.1;\nimport tinykvm;\nBACKEND\n" + STATE_SUBS.replace("WAIT", AWAIT if waits else "")
    many = [(f"X-{i}", "v") for i in range(24)]
    cache, backend = make(vcl, lambda req: Resp(headers=many if req.url == "/many" else [], body=req.url.encode()),
                          "-p", "http_max_hdr=32")
    server = cache.proc.server
    c = server.counters
    if waits:
        assert {"vcl_hit", "vcl_miss", "vcl_pass", "vcl_purge", "vcl_deliver", "vcl_synth"} <= server.active_vcl.async_subs
    # miss, then hit; vcl_deliver's header on both
    assert cache.get("/a")[::2] == (200, b"/a") and cache.get("/a")[1]["delivered"] == "/a"
    assert (c.cache_miss, c.cache_hit) == (1, 1)
    # vcl_hit's pass and synth
    status, _, body = cache.get("/a", headers={"on-hit": "pass"})
    assert (status, body, c.cache_hit, c.s_pass) == (200, b"/a", 2, 1)
    status, h, _ = cache.get("/a", headers={"on-hit": "synth"})
    assert (status, h["synthed"]) == (702, "702") and c.cache_hit == 2
    # vcl_miss's pass and synth: no object is left busy, nothing is cached
    status, _, body = cache.get("/b", headers={"on-miss": "pass"})
    assert (status, body, c.s_pass, c.cache_miss) == (200, b"/b", 2, 1)
    assert cache.get("/b", headers={"on-miss": "synth"})[0] == 703
    # vcl_pass's synth
    assert cache.get("/a", headers={"on-hit": "pass", "on-pass": "synth"})[0] == 704 and c.cache_hit == 3
    # vcl_purge's synth, and the purge itself
    status, h, _ = cache.get("/a", method="PURGE")
    assert (status, h["synthed"], c.n_purges) == (705, "705", 1)
    assert cache.get("/gone", method="PURGE")[0] == 705 and c.n_purges == 2      # each counts
    fetched = len(backend.requests)
    cache.get("/a")
    assert len(backend.requests) == fetched + 1
    # vcl_deliver's synth; vcl_synth's restart goes back to vcl_recv
    assert cache.get("/a", headers={"on-deliver": "synth"})[0] == 706 and c.cache_hit == 4
    status, h, _ = cache.get("/a", headers={"on-hit": "synth", "on-synth": "restart"})
    assert (status, h["synthed"], h["restarts"]) == (702, "702", "1") and c.cache_hit == 4
    # an object with more headers than http_max_hdr leaves for delivery: varnishd 7.1.1's bare 500
    # after vcl_deliver (the client workspace overflowed; vcl_synth does not run)
    status, h, _ = cache.get("/many")
    assert status == 500 and "synthed" not in h and c.losthdr > 0


def test_a_switch_to_a_label_logs_and_rolls_back_as_varnishd(make):
    """varnishd 7.1 (varnishtest -v): VCL_use "... via LABEL" goes before VCL_return vcl; the request goes
    back to how it was received (what the first vcl_recv set is gone) and its X-Forwarded-For is made
    again, logged as such; the labelled VCL's vcl_recv runs next."""
    cache, _ = make("vcl 4.1;\nbackend default none;\n")
    first = ('vcl 4.1;\nbackend default none;\n'
             'sub vcl_recv { return (synth(200, "vcl1 " + req.url + " " + req.http.first + " " + req.http.X-Forwarded-For)); }\n')
    assert cache.cli.cmd("vcl.inline vcl1 << EOF\n" + first + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label l1 vcl1")[0] == 200
    second = ('vcl 4.1;\nbackend default none;\n'
              'sub vcl_recv { set req.http.first = "yes"; set req.url = "/changed"; return (vcl(l1)); }\n')
    assert cache.cli.cmd("vcl.inline vcl2 << EOF\n" + second + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use vcl2")[0] == 200
    cache.cli.cmd("debug.xid 999")
    head, _, _ = raw(cache, b"GET /orig HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nHost: h\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 vcl1 /orig  1.2.3.4, 127.0.0.1"
    wait_for(lambda: (1001, "End", "") in cache.proc.log.records, what="the request's End")
    records = [(tag, text) for vxid, tag, text in list(cache.proc.log.records) if vxid == 1001]
    at = records.index(("VCL_call", "RECV"))
    assert records[at:at + 9] == [
        ("VCL_call", "RECV"), ("ReqHeader", "first: yes"), ("ReqURL", "/changed"), ("VCL_use", "vcl1 via l1"),
        ("VCL_return", "vcl"), ("ReqUnset", "X-Forwarded-For: 1.2.3.4"),
        ("ReqHeader", "X-Forwarded-For: 1.2.3.4, 127.0.0.1"), ("VCL_call", "RECV"), ("VCL_return", "synth")]


def test_an_esi_include_starts_in_the_vcl_its_top_request_started_in(make):
    """As tests/vtc/fid_esi_vcl0.vtc (which passes on varnishd 7.1): the top request switches to a
    label, its ESI include starts in the VCL the top request started in."""
    def respond(req):
        if req.url == "/top":
            return Resp(body=b'<P><esi:include src="/inc"/></P>')
        return Resp(body=req.url.encode())

    cache, server = make("vcl 4.1;\nbackend default none;\n", respond)
    backend = f'backend default {{ .host = "127.0.0.1"; .port = "{server.port}"; }}\n'
    esi = "sub vcl_backend_response { set beresp.do_esi = true; }\n"
    label = ('vcl 4.1;\n' + backend + esi +
             'sub vcl_recv { if (req.url == "/inc") { set req.url = "/wrong"; } }\n')
    assert cache.cli.cmd("vcl.inline lab << EOF\n" + label + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label lab1 lab")[0] == 200
    top = ('vcl 4.1;\n' + backend + esi +
           'sub vcl_recv { if (req.url == "/top") { return (vcl(lab1)); } if (req.url == "/inc") { set req.url = "/right"; } }\n')
    assert cache.cli.cmd("vcl.inline top << EOF\n" + top + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use top")[0] == 200
    assert cache.get("/top")[::2] == (200, b"<P>/right</P>")


def test_a_pipe_past_pipe_sess_max_is_a_vcl_failure_and_the_pipe_is_logged_as_varnishd(make):
    """varnishd 7.1 (varnishtest -v, pipe_sess_max=1): the piped bereq keeps the client's headers, its
    Connection replaced by "Connection: close" after X-Varnish, and vcl_pipe sees bereq.backend; the
    request links its bereq before vcl_pipe runs. A pipe past pipe_sess_max is a 503 "VCL failed"
    that closes with VCL_FAILURE, each one counted in pipe_limited."""
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (pipe); }\n'
                          'sub vcl_pipe { set bereq.http.be = bereq.backend; }\n',
                          lambda req: Resp(body=b"piped", linger=True), "-p", "pipe_sess_max=1")
    c = cache.proc.server.counters
    cache.cli.cmd("debug.xid 999")
    first = cache.proc.connect()
    try:
        first.sendall(b"GET /held HTTP/1.1\r\nConnection: keep-alive\r\nX-A: 1\r\nHost: h\r\n\r\n")
        assert read_message(first)[1] == b"piped"
        wait_for(lambda: c.n_pipe == 1, what="one pipe open")
        assert backend.requests[0].headers == [("X-A", "1"), ("Host", "h"), ("X-Forwarded-For", "127.0.0.1"),
                                               ("X-Varnish", "1001"), ("Connection", "close"), ("be", "default")]
        for _ in range(2):
            head, closed = closes(cache, b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n")
            assert head.split(b"\r\n")[0] == b"HTTP/1.1 503 VCL failed" and b"Connection: close" in head
            assert closed
        wait_for(lambda: c.sc_vcl_failure == 2, what="two closes")
        assert c.pipe_limited == 2 and c.s_pipe == 3 and c.n_pipe == 1
    finally:
        first.close()
    wait_for(lambda: (1001, "End", "") in cache.proc.log.records, what="the piped request's End")
    records = [(tag, text) for vxid, tag, text in list(cache.proc.log.records) if vxid == 1001]
    at = records.index(("VCL_return", "lookup"))
    assert records[at + 1:at + 4] == [("Link", "bereq 1002 pipe"), ("VCL_call", "PIPE"), ("VCL_return", "pipe")]
    assert ("SessClose", "VCL_FAILURE") in [(t, x.split()[0]) for _, t, x in list(cache.proc.log.records)
                                           if t == "SessClose"]
    assert cache.proc.log.kinds[1001] == {"c"}          # a client transaction, as varnishd's


def test_a_synth_reads_an_unread_request_body_first_unless_the_connection_closes(make):
    """varnishd 7.1 (varnishtest -v): before a synth response on a connection kept open, the unread
    body is read (through a Transient object: Storage, then Timestamp ReqBody); when the request or the
    response says Connection: close it is left unread."""
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (synth(200, "s " + req.url)); }\n'
                    'sub vcl_synth { if (req.url == "/close") { set resp.http.connection = "close"; } }\n')
    cache.cli.cmd("debug.xid 999")
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        assert read_message(sock)[0].startswith(b"HTTP/1.1 200 s /a\r\n")
        sock.sendall(b"POST /close HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        assert read_message(sock)[0].startswith(b"HTTP/1.1 200 s /close\r\n")
        assert sock.recv(1) == b""
    head, _, _ = raw(cache, b"POST /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc")
    assert head.startswith(b"HTTP/1.1 200 s /b\r\n")
    wait_for(lambda: (1004, "End", "") in cache.proc.log.records, what="the last request's End")
    log = list(cache.proc.log.records)

    def after_synth(vxid):
        records = [(t, x) for v, t, x in log if v == vxid]
        at = records.index(("VCL_return", "deliver"))
        return [(t, x if t == "Storage" else x.split(":")[0]) for t, x in records[at + 1:]
                if t in ("Storage", "Timestamp")], records[-2][1].split()[1]

    read = [("Timestamp", "Process"), ("Storage", "malloc Transient"), ("Timestamp", "ReqBody"),
            ("Storage", "malloc Transient"), ("Timestamp", "Resp")]
    unread = [("Timestamp", "Process"), ("Storage", "malloc Transient"), ("Timestamp", "Resp")]
    assert [after_synth(vxid) for vxid in (1001, 1002, 1004)] == [(read, "3"), (unread, "0"), (unread, "0")]
    assert cache.proc.server.counters.s_req_bodybytes == 3       # the sum of ReqAcct's, as varnishd's


@pytest.mark.parametrize("mask", ["+Hash", "default"])
def test_hash_data_of_a_concatenation_hashes_its_parts_apart(make, mask):
    """As tests/vtc/fid_hash_strands.vtc (which passes on varnishd 7.1): each part of a hash_data()
    concatenation is hashed on its own, an unset one as a NUL byte, and logged as a Hash record when
    vsl_mask lets Hash through; the digest (req.hash) is varnishd's."""
    cache, _ = make('vcl 4.1;\nimport blob;\nBACKEND\nsub vcl_recv { return (hash); }\n'
                    'sub vcl_hash { hash_data("a" + req.http.nosuch + "b" + req.http.x); hash_data(req.http.nosuch);'
                    ' hash_data(req.url); return (lookup); }\n'
                    'sub vcl_deliver { set resp.http.hash = blob.encode(HEX, blob=req.hash); }\n',
                    None, "-p", f"vsl_mask={mask}")
    cache.cli.cmd("debug.xid 1000")
    status, h, _ = cache.get("/u", headers={"x": "yz"})
    # sha256 of "a" NUL "b" "yz" NUL, NUL NUL, "/u" NUL
    assert (status, h["hash"]) == (200, "54669dd08042ddf949a543f0e6236af03ea07128ca1b16680b91fa69354c3959")
    wait_for(lambda: (1002, "End", "") in cache.proc.log.records, what="the request's End")
    hashes = [text for vxid, tag, text in list(cache.proc.log.records) if vxid == 1002 and tag == "Hash"]
    assert hashes == (["a", "b", "yz", "/u"] if mask == "+Hash" else [])
    # the same digest from plain strings: the object is found again
    assert cache.get("/u", headers={"x": "yz"})[1]["x-varnish"].count(" ") == 1


def test_the_built_in_hash_is_logged_part_by_part(make):
    """varnishd 7.1 with vsl_mask=+Hash: the built-in vcl_hash logs req.url, then the Host."""
    cache, _ = make("vcl 4.1;\nBACKEND\n", None, "-p", "vsl_mask=+Hash")
    cache.cli.cmd("debug.xid 1000")
    cache.get("/p")
    wait_for(lambda: (1002, "End", "") in cache.proc.log.records, what="the request's End")
    assert [text for vxid, tag, text in list(cache.proc.log.records) if vxid == 1002 and tag == "Hash"] == \
        ["/p", "test"]


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "to-eof"])
def test_a_hit_on_an_object_still_streaming_logs_its_bytes_so_far(make, announced):
    """varnishd 7.1 (varnishtest -v): the Hit record of an object whose body is still arriving adds the
    bytes fetched so far, then the length the backend announced, if it did ("Hit 1002 118.4 10 0 5 8")."""
    release = threading.Event()

    def pieces():
        yield b"abc"
        release.wait(10)
        yield b"def"

    cache, _ = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(body_gen=pieces, length=6 if announced else None,
                                                           close=not announced))
    cache.cli.cmd("debug.xid 999")
    first, second = cache.proc.connect(), cache.proc.connect()
    try:
        first.sendall(b"GET /s HTTP/1.1\r\nHost: h\r\n\r\n")
        got = b""
        while not got.endswith(b"abc") and b"3\r\nabc\r\n" not in got:
            got += first.recv(100)
        second.sendall(b"GET /s HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_for(lambda: cache.proc.server.counters.cache_hit == 1, what="the second request's hit")
    finally:
        release.set()
        first.close()
        second.close()
    wait_for(lambda: (1004, "End", "") in cache.proc.log.records, what="the second request's End")
    records = list(cache.proc.log.records)
    (hit,) = [x for v, t, x in records if v == 1004 and t == "Hit"]
    # the object's xid is its bereq's (which xids the two sessions took first depends on when the
    # server accepted the second connection)
    (bereq,) = [v for v, t, x in records if t == "Begin" and x.startswith("bereq ")]
    xid, ttl, grace, keep, *streaming = hit.split()
    assert (xid, grace, keep) == (str(bereq), "10.000000", "0.000000") and 119 < float(ttl) <= 120
    assert streaming == (["3", "6"] if announced else ["3"])


def test_hash_data_hashes_the_bytes_as_received(make):
    """HSH_AddString hashes a string's bytes as they are (varnishd has no notion of text encodings): a
    header that is not UTF-8 is hashed byte for byte, logged as a Hash record and found again."""
    import hashlib

    cache, _ = make('vcl 4.1;\nimport blob;\nBACKEND\nsub vcl_recv { return (hash); }\n'
                    'sub vcl_hash { hash_data(req.http.x + "-"); hash_data(req.http.x); return (lookup); }\n'
                    'sub vcl_deliver { set resp.http.hash = blob.encode(HEX, blob=req.hash); }\n',
                    None, "-p", "vsl_mask=+Hash")
    for _ in range(2):
        head, _, _ = raw(cache, b"GET /u HTTP/1.1\r\nHost: h\r\nx: \xff\xfe\r\n\r\n")
        assert b"\r\nhash: " + hashlib.sha256(b"\xff\xfe-\0\xff\xfe\0").hexdigest().encode() + b"\r\n" in head
    assert b"\r\nX-Varnish: " in head and head.split(b"\r\nX-Varnish: ")[1].split(b"\r\n")[0].count(b" ") == 1


def test_pipes_open_at_once_are_each_counted_in_n_pipe(make):
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (pipe); }\n',
                    lambda req: Resp(body=b"piped", linger=True))
    c = cache.proc.server.counters
    socks = [cache.proc.connect() for _ in range(2)]
    try:
        for n, sock in enumerate(socks, 1):
            sock.sendall(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_message(sock)[1] == b"piped"
            wait_for(lambda: c.n_pipe == n, what=f"{n} pipes open")  # noqa: B023
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: c.n_pipe == 0, what="the pipes closed")
    assert c.s_pipe == 2 and c.sc_tx_pipe == 2


def test_each_grace_hit_counts_while_the_refresh_is_under_way(make):
    release = threading.Event()
    n = iter(range(1, 100))

    def respond(req):
        version = next(n)
        if version > 1:
            release.wait(10)            # the background refresh takes its time
        return Resp(body=b"v%d" % version)

    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_backend_response { set beresp.ttl = 0.1s; set beresp.grace = 1h; }\n",
                          respond)
    c = cache.proc.server.counters
    try:
        assert cache.get("/g")[2] == b"v1"
        wait_for(lambda: cache.get("/g")[2] == b"v1" and c.cache_hit_grace == 1, what="a first grace hit")
        wait_for(lambda: len(backend.requests) == 2, what="the background refresh")
        assert cache.get("/g")[2] == b"v1" and c.cache_hit_grace == 2 and len(backend.requests) == 2
    finally:
        release.set()


def test_std_rollback_of_req_as_varnishd(make):
    """tests/vtc/fid_std_rollback.vtc (passes on varnishd 7.1.1): req as received, before
    X-Forwarded-For; in vcl_deliver too; the rollback itself logs nothing."""
    vcl = ('vcl 4.1;\nimport std;\nBACKEND\n'
           'sub vcl_recv {\n set req.http.a = "1";\n set req.url = "/changed";\n unset req.http.h1;\n'
           ' std.rollback(req);\n'
           ' set req.http.seen = "url=" + req.url + " a=" + req.http.a + " h1=" + req.http.h1 +'
           ' " xff=" + req.http.X-Forwarded-For;\n set req.http.b = "2";\n return (pass);\n}\n'
           'sub vcl_deliver {\n set req.http.d = "4";\n std.rollback(req);\n'
           ' set resp.http.after = "url=" + req.url + " b=" + req.http.b + " d=" + req.http.d;\n}\n')
    cache, backend = make(vcl, lambda req: Resp())
    status, headers, _ = cache.get("/orig", headers={"h1": "v"})
    assert status == 200 and headers["after"] == "url=/orig b= d="
    sent = backend.requests[0]
    assert sent.url == "/orig" and sent.header("b") == "2"
    assert sent.header("seen") == "url=/orig a= h1=v xff="
    log = cache.proc.log
    wait_for(lambda: "seen: url=/orig a= h1=v xff=" in log.texts("ReqHeader"), what="the request's log")
    assert log.texts("ReqUnset")[:1] == ["h1: v"]


def test_return_vcl_after_a_restart_is_refused_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest, varnishlog -g request): vcl_recv's return (vcl(l1)) once the request
    restarted switches nothing; vcl_hash still runs, then `VCL_Error Illegal return(vcl): Not after
    restarts` and a 503 synth from the active VCL, the connection kept open."""
    cache, _ = make("vcl 4.1;\nbackend default none;\n")
    first = ('vcl 4.1;\nbackend default none;\n'
             'sub vcl_recv { return (synth(200, "vcl1 " + req.url + " " + req.restarts)); }\n')
    assert cache.cli.cmd("vcl.inline vcl1 << EOF\n" + first + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label l1 vcl1")[0] == 200
    second = ('vcl 4.1;\nbackend default none;\n'
              'sub vcl_recv { if (req.restarts == 0) { set req.url = "/changed"; return (restart); }\n'
              ' return (vcl(l1)); }\n'
              'sub vcl_synth { set resp.http.where = "vcl2"; }\n')
    assert cache.cli.cmd("vcl.inline vcl2 << EOF\n" + second + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use vcl2")[0] == 200
    cache.cli.cmd("debug.xid 999")
    head, _, closed = raw(cache, b"GET /orig HTTP/1.1\r\nHost: h\r\n\r\n", AGAIN)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable" and b"where: vcl2" in lines and not closed
    wait_for(lambda: (1002, "End", "") in cache.proc.log.records, what="the restarted request's End")
    records = [(tag, text) for vxid, tag, text in list(cache.proc.log.records) if vxid == 1002]
    at = records.index(("VCL_call", "RECV"))
    assert records[at:at + 6] == [
        ("VCL_call", "RECV"), ("VCL_return", "vcl"), ("VCL_call", "HASH"), ("VCL_return", "lookup"),
        ("VCL_Error", "Illegal return(vcl): Not after restarts"), ("RespProtocol", "HTTP/1.1")]
    assert not any(tag == "VCL_use" for tag, _ in records)


@pytest.mark.parametrize("waits", [False, True], ids=["sync", "async"])
def test_an_object_whose_fields_filled_beresp_is_a_500_synth(make, waits):
    """tests/vtc/fid_ws_hdr_slots.vtc's /beresp (passes on varnishd 7.1.1): with http_max_hdr=32,
    vcl_backend_response sets 30 fields; the object is made but cannot be decoded for delivery:
    `Error Too many headers to Decode object (33 vs. 32)`, then vcl_synth's 500 (not a bare one)."""
    fields = "".join(f' set beresp.http.x{i} = "{i}";' for i in range(30))
    vcl = ("vcl 4.1;\nimport tinykvm;\nBACKEND\nsub vcl_recv { return (pass); }\n"
           "sub vcl_backend_response {" + fields + " }\n"
           "sub vcl_deliver { " + (AWAIT if waits else "") + " set resp.http.deliver = \"yes\"; }\n")
    cache, _ = make(vcl, lambda req: Resp(body=b"ok"), "-p", "http_max_hdr=32")
    assert ("vcl_deliver" in cache.proc.server.active_vcl.async_subs) == waits
    status, h, body = cache.get("/beresp")
    assert status == 500 and "deliver" not in h and h["content-type"].startswith("text/html")
    assert b"Internal Server Error" in body
    wait_for(lambda: "Too many headers to Decode object (33 vs. 32)" in cache.proc.log.texts("Error"),
             what="the request's Error record")


def test_a_synth_with_no_room_in_transient_closes_unanswered_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest, -s Transient=default,1m -p nuke_limit=0, an object leaving 1008 bytes
    of Transient): the synth gets no storage: `Error Could not get storage` (no Storage record), no
    response, the connection closed (sc_overload), SMA.Transient.c_fail 1. With room it is logged
    `Storage malloc Transient` after its Content-Length."""
    vcl = ('vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.url == "/synth") { return (synth(200)); } }\n'
           'sub vcl_synth { set resp.body = "0123456789"; return (deliver); }\n'
           'sub vcl_backend_response { set beresp.storage = storage.Transient; unset beresp.http.Date;'
           ' set beresp.ttl = 100s; }\n')
    cache, _ = make(vcl, lambda req: Resp(body=b"b" * 1047400), "-s", "Transient=default,1m", "-p", "nuke_limit=0")
    server = cache.proc.server
    log = cache.proc.log
    assert cache.get("/synth")[::2] == (200, b"0123456789")
    wait_for(lambda: "Content-Length: 10" in log.texts("RespHeader"), what="the first synth's log")
    records = [(tag, text) for _, tag, text in list(log.records)]
    at = records.index(("RespHeader", "Content-Length: 10"))
    assert records[at + 1] == ("Storage", "malloc Transient")
    assert cache.get("/big")[0] == 200
    assert server.counters.extra["SMA.Transient.g_space"] == 1008
    first = len(log.records)
    with cache.proc.connect() as sock:
        sock.sendall(b"GET /synth HTTP/1.1\r\nHost: h\r\n\r\n")
        assert sock.recv(100) == b""
    wait_for(lambda: server.counters.sc_overload == 1, what="sc_overload")
    wait_for(lambda: "Could not get storage" in log.texts("Error"), what="the Error record")
    records = [(tag, text) for _, tag, text in list(log.records)[first:]]
    assert ("Storage", "malloc Transient") not in records
    assert server.counters.extra["SMA.Transient.c_fail"] == 1


def test_a_vcl_synth_that_sets_more_fields_than_fit_is_a_bare_500(make):
    """tests/vtc/fid_ws_hdr_slots.vtc's /synth (passes on varnishd 7.1.1): http_max_hdr=32 and 30 fields
    set in vcl_synth overflow the client workspace: a bare 500, none of them, the connection closed."""
    fields = "".join(f' set resp.http.x{i} = "{i}";' for i in range(30))
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { return (synth(201)); }\nsub vcl_synth {' + fields + ' }\n',
                    None, "-p", "http_max_hdr=32")
    head, closed = closes(cache, b"GET /synth HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and b"x0:" not in head and closed
    assert cache.proc.server.counters.ws_client_overflow == 1


def test_the_labelled_vcl_s_vcl_recv_fills_the_same_client_workspace(make):
    """varnishd 7.1.1 (varnishtest, http_max_hdr=32): after return (vcl(l1)), l1's vcl_recv setting 30
    request fields overflows the client workspace: a bare 500, the connection closed."""
    cache, _ = make("vcl 4.1;\nbackend default none;\n", None, "-p", "http_max_hdr=32")
    fields = "".join(f' set req.http.x{i} = "{i}";' for i in range(30))
    label = 'vcl 4.1;\nbackend default none;\nsub vcl_recv {' + fields + ' return (synth(200)); }\n'
    assert cache.cli.cmd("vcl.inline vcl1 << EOF\n" + label + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label l1 vcl1")[0] == 200
    main = 'vcl 4.1;\nbackend default none;\nsub vcl_recv { return (vcl(l1)); }\n'
    assert cache.cli.cmd("vcl.inline main << EOF\n" + main + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use main")[0] == 200
    head, closed = closes(cache, b"GET /orig HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and closed
    assert cache.proc.server.counters.ws_client_overflow == 1


def test_misses_turned_pass_keep_the_connection(make):
    """vcl_miss's return (pass) gives up the busy object it would have filled; the connection serves
    the next request as varnishd's does (keep-alive)."""
    cache, backend = make('vcl 4.1;\nBACKEND\nsub vcl_miss { return (pass); }\n', lambda req: Resp(body=b"x"))
    with cache.proc.connect() as sock:
        for _ in range(3):
            sock.sendall(b"GET /m HTTP/1.1\r\nHost: a\r\n\r\n")
            head, body = read_message(sock)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"x"
    assert len(backend.requests) == 3 and cache.proc.server.counters.s_pass == 3


def _fields(n: int, name: str = "req") -> str:
    return "".join(f' set {name}.http.x{i} = "{i}";' for i in range(n))


def test_std_rollback_logs_what_follows_moves_req_top_and_clears_an_overflow_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest -v, http_max_hdr=32): after std.rollback(req) the request's changes
    are logged again (ReqUnset, ReqHeader) and req_top is the rolled-back request; a rollback of an
    overflowed workspace counts ws_client_overflow once and the request goes on (200); setting too
    many fields after a rollback overflows again (bare 500); std.rollback() in vcl_pipe fails
    (VCL_Error "Cannot rollback in vcl_pipe {}", 503)."""
    vcl = ('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv {\n if (req.url == "/pipe") { return (pipe); }\n'
           ' set req.http.a = "1";\n if (req.url == "/ovf") {' + _fields(30) + ' }\n std.rollback(req);\n'
           ' if (req.url == "/after") {' + _fields(30) + ' }\n'
           ' unset req.http.h1;\n set req.http.b = "2";\n return (synth(200));\n}\n'
           'sub vcl_pipe { std.rollback(req); }\n'
           'sub vcl_synth { set resp.http.top-a = req_top.http.a; set resp.http.top-b = req_top.http.b;'
           ' set resp.http.h1 = req.http.h1; }\n')
    cache, _ = make(vcl, None, "-p", "http_max_hdr=32")
    server = cache.proc.server
    log = cache.proc.log
    status, h, _ = cache.get("/r", headers={"h1": "v"})
    assert (status, h["top-a"], h["top-b"], h["h1"]) == (200, "", "2", "")
    wait_for(lambda: "b: 2" in log.texts("ReqHeader"), what="the request's log")
    records = [(tag, text) for _, tag, text in list(log.records) if tag in ("ReqUnset", "ReqHeader")]
    at = records.index(("ReqUnset", "h1: v"))
    assert records[at + 1] == ("ReqHeader", "b: 2")
    for n in (1, 2):
        assert cache.get("/ovf")[0] == 200
        assert server.counters.ws_client_overflow == n
    head, closed = closes(cache, b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ") and closed
    head, closed = closes(cache, b"GET /pipe HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 VCL failed\r\n") and closed
    wait_for(lambda: "Cannot rollback in vcl_pipe {}" in log.texts("VCL_Error"), what="the pipe's VCL_Error")


def test_std_rollback_of_resp_is_a_vcl_failure(make):
    """std.rollback() restores req or bereq only. varnishd 7.1.1 panics on any other (VRT_Rollback's
    WRONG()); here the task fails (503) and req is left as it is."""
    vcl = ('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv { set req.http.a = "1"; }\n'
           'sub vcl_deliver { std.rollback(resp); }\nsub vcl_synth { set resp.http.a = req.http.a; }\n')
    cache, _ = make(vcl)
    status, h, _ = cache.get("/")
    assert status == 503 and h["a"] == "1"


def test_an_esi_include_rolls_back_to_its_own_request_and_switches_vcl_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest -v): the top request switched to label l1 (so its includes start in
    the active VCL); an include's std.rollback(req) takes it back to the include as it started, req_top
    still the top request; an include's return (vcl(l1)) rolls it back too (Req_Rollback in
    VPI_vcl_select), then its X-Forwarded-For is made again. (The X-Forwarded-For of an include after
    std.rollback() is left out: varnishd's is the top request's as received, ours its own.)"""
    def respond(req):
        return Resp(body=b'<P><esi:include src="/inc"/>|<esi:include src="/sw"/></P>')

    cache, server = make("vcl 4.1;\nbackend default none;\n", respond)
    backend = f'backend default {{ .host = "127.0.0.1"; .port = "{server.port}"; }}\n'
    shown = ('" url=" + req.url + " x=" + req.http.x + " top=" + req_top.url + " topx=" + req_top.http.x')
    label = ('vcl 4.1;\n' + backend + 'sub vcl_recv { if (req.url == "/top") { return (pass); } return (synth(200)); }\n'
             'sub vcl_backend_response { set beresp.do_esi = true; }\n'
             'sub vcl_synth { synthetic("lab" + ' + shown + ' + " xff=" + req.http.X-Forwarded-For); return (deliver); }\n')
    assert cache.cli.cmd("vcl.inline vcl1 << EOF\n" + label + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label l1 vcl1")[0] == 200
    top = ('vcl 4.1;\nimport std;\n' + backend +
           'sub vcl_recv {\n if (req.url == "/top") { return (vcl(l1)); }\n'
           ' set req.http.x = "changed";\n set req.url = req.url + "-changed";\n'
           ' if (req.url == "/sw-changed") { return (vcl(l1)); }\n std.rollback(req);\n return (synth(200));\n}\n'
           'sub vcl_synth { synthetic("inc" + ' + shown + '); return (deliver); }\n')
    assert cache.cli.cmd("vcl.inline vcl2 << EOF\n" + top + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use vcl2")[0] == 200
    status, _, body = cache.get("/top", headers={"X-Forwarded-For": "1.2.3.4", "x": "orig"})
    assert (status, body) == (200, b"<P>inc url=/inc x=orig top=/top topx=orig|"
                                   b"lab url=/sw x=orig top=/top topx=orig xff=1.2.3.4, 127.0.0.1</P>")


def test_a_miss_and_a_grace_refresh_send_the_request_body_when_vcl_makes_them_a_post(make):
    """varnishd 7.1.1 (varnishtest): bereq.method set to POST in vcl_backend_fetch, a miss sends the
    client's body, and so does the background fetch of a grace hit."""
    n = iter(range(1, 100))
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (hash); }\n"
                          'sub vcl_backend_fetch { set bereq.method = "POST"; return (fetch); }\n'
                          "sub vcl_backend_response { set beresp.ttl = 0.1s; set beresp.grace = 1h; }\n",
                          lambda req: Resp(body=b"v%d" % next(n)))
    assert cache.get("/p", method="POST", body=b"abc")[2] == b"v1"
    c = cache.proc.server.counters
    wait_for(lambda: cache.get("/p", method="POST", body=b"defg")[2] == b"v1" and c.cache_hit_grace >= 1,
             what="a grace hit for the POST")
    wait_for(lambda: len(backend.requests) == 2, what="the background fetch")
    assert [(r.method, r.body) for r in backend.requests] == [("POST", b"abc"), ("POST", b"defg")]


def test_a_grace_hit_is_delivered_once_its_background_fetch_took_the_unread_body(make):
    """VBF_Fetch: a background fetch that may read the client's body (not cached) holds the grace hit
    until the body is sent (BOS_REQ_DONE): nothing is answered before the body comes."""
    n = iter(range(1, 100))
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (hash); }\n"
                          'sub vcl_backend_fetch { set bereq.method = "POST"; return (fetch); }\n'
                          "sub vcl_backend_response { set beresp.ttl = 0.1s; set beresp.grace = 1h; }\n",
                          lambda req: Resp(body=b"v%d" % next(n), close=True))
    assert cache.get("/p")[2] == b"v1"
    c = cache.proc.server.counters
    obj = cache.proc.server.storage.heads[next(iter(cache.proc.server.storage.heads))].ocs[0]
    wait_for(lambda: time.time() >= obj.t_origin + obj.ttl, what="the object to go stale")
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /p HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\n")
        wait_for(lambda: backend.connections == 2, what="the background fetch's connection")
        sock.setblocking(False)
        try:
            early = sock.recv(100)
        except BlockingIOError:
            early = b""
        sock.setblocking(True)
        assert early == b"" and c.cache_hit_grace == 1
        sock.sendall(b"wxyz")
        assert read_message(sock)[1] == b"v1"
    wait_for(lambda: len(backend.requests) == 2, what="the background fetch")
    assert backend.requests[1].body == b"wxyz"


def test_a_restart_after_a_grace_hit_leaves_the_refresh_to_its_fetch(make):
    """A grace hit hands its busy object to the background fetch: a restart from vcl_deliver has none
    to give up, and the refresh still lands."""
    n = iter(range(1, 100))
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_backend_response { set beresp.ttl = 0.1s; set beresp.grace = 1h; }\n"
                          "sub vcl_deliver { if (obj.hits > 0 && req.restarts == 0) { return (restart); }\n"
                          " set resp.http.restarts = req.restarts; }\n",
                          lambda req: Resp(body=b"v%d" % next(n)))
    assert cache.get("/g")[2] == b"v1"
    c = cache.proc.server.counters
    # the restarted request finds the stale object again (a grace hit) or the refreshed one
    wait_for(lambda: cache.get("/g")[1].get("restarts") == "1" and c.cache_hit_grace >= 1, what="a grace hit")
    wait_for(lambda: cache.get("/g")[2] == b"v2", what="the refreshed object")
    assert len(backend.requests) == 2


def test_a_busy_object_gone_before_its_request_waits_is_looked_up_again():
    """A lookup that found a busy object runs the waiting list as a task; when the busy object is gone
    by the time it runs (the fetch abandoned it in between), the request looks up again instead of
    waiting for a wake-up that will never come. In one loop, in memory, so the order is exact."""
    from inproc import RecordingLog

    from cacheserver.fsm import _digest_of
    from cacheserver.protocol import ClientProtocol
    from cacheserver.server import Server
    from vcl.runtime import HttpMessage

    async def main():
        srv = Server()
        srv.vsl = RecordingLog()
        srv.vcl_load("boot", 'vcl 4.1;\nbackend default none;\nsub vcl_miss { return (synth(299)); }\n', "<inline>")
        digest = _digest_of("/w\0a\0")
        busy = srv.storage.lookup(digest, HttpMessage(), time.time()).busy
        conn = ClientProtocol(srv)
        sink = MemoryTransport()
        conn.connection_made(sink)
        conn.data_received(b"GET /w HTTP/1.1\r\nHost: a\r\n\r\n")
        srv.storage.abandon(busy)
        for _ in range(100):
            if not conn.busy:
                break
            await asyncio.sleep(0)
        conn.connection_lost(None)
        return srv, sink

    srv, sink = asyncio.run(main())
    assert bytes(sink.out).startswith(b"HTTP/1.1 299 ")
    assert srv.counters.busy_sleep == 0


def test_a_synth_after_an_overflow_in_vcl_recv_loses_its_printed_fields_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest -v, http_max_hdr=32): vcl_recv set 30 fields (overflowed), then
    return (synth(201)): X-Varnish is lost as a printed field (Error, then LostHeader), and so is
    Content-Length, twice (vcl_synth's, then the delivery's); `Error workspace_client overflow` and the
    bare 500 follow. A synth after std.cache_req_body() does not read the body again: one Storage record
    after Process. In vcl_synth, resp.time is not before req.time."""
    vcl = ('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv {\n if (req.url == "/ovf") {' + _fields(30) +
           ' return (synth(201)); }\n if (req.url == "/cached") { std.cache_req_body(1KB); }\n return (synth(200));\n}\n'
           'sub vcl_synth { set resp.http.ge = (resp.time >= req.time); }\n')
    cache, _ = make(vcl, None, "-p", "http_max_hdr=32")
    cache.cli.cmd("debug.xid 999")
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /cached HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        head, _ = read_message(sock)
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nge: true\r\n" in head
        sock.sendall(b"GET /ovf HTTP/1.1\r\nHost: h\r\n\r\n")
        assert read_message(sock)[0] == b"HTTP/1.1 500 Internal Server Error\r\nServer: Varnish\r\nConnection: close\r\n\r\n"
    log = cache.proc.log
    wait_for(lambda: (1002, "End", "") in log.records, what="the second request's End")
    records = [(v, t, x) for v, t, x in list(log.records) if v in (1001, 1002)]
    first = [(t, x if t == "Storage" else x.split(":")[0]) for v, t, x in records
             if v == 1001 and t in ("Timestamp", "Storage")]
    assert first == [("Timestamp", "Start"), ("Timestamp", "Req"), ("Storage", "malloc Transient"),
                     ("Timestamp", "ReqBody"), ("Timestamp", "Process"), ("Storage", "malloc Transient"),
                     ("Timestamp", "Resp")]
    second = [(t, x) for v, t, x in records if v == 1002]
    at = second.index(("RespStatus", "201"))
    losses = [(t, x.split(": ")[0]) for t, x in second[at:] if t in ("Error", "LostHeader")]
    assert losses == [("Error", "out of workspace (req)"), ("LostHeader", "X-Varnish"),
                      ("Error", "out of workspace (req)"), ("LostHeader", "Content-Length"),
                      ("Error", "out of workspace (req)"), ("LostHeader", "Content-Length"),
                      ("Error", "workspace_client overflow")]
    assert ("LostHeader", "X-Varnish: 1002") in second


def test_an_esi_include_whose_vcl_synth_fails_adds_nothing_to_its_page(make):
    """varnishd 7.1.1 panics here (ESI has no minimal response for cnt_synth's failure); here the
    include adds nothing and the page goes on."""
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_recv { if (req.url == "/inc") { return (synth(200)); } }\n'
                    'sub vcl_backend_response { set beresp.do_esi = true; }\n'
                    'sub vcl_synth { return (fail); }\n',
                    lambda req: Resp(body=b'<P><esi:include src="/inc"/></P>'))
    assert cache.get("/top")[::2] == (200, b"<P></P>")


def test_return_vcl_after_an_overflow_rolls_the_workspace_back_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest, http_max_hdr=32): vcl_recv overflows the client workspace, then
    returns vcl(l1): the rollback counts ws_client_overflow once and clears it, the label answers."""
    cache, _ = make("vcl 4.1;\nbackend default none;\n", None, "-p", "http_max_hdr=32")
    label = 'vcl 4.1;\nbackend default none;\nsub vcl_recv { return (synth(200)); }\nsub vcl_synth { set resp.http.lab = "yes"; }\n'
    assert cache.cli.cmd("vcl.inline vcl1 << EOF\n" + label + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.label l1 vcl1")[0] == 200
    main = 'vcl 4.1;\nbackend default none;\nsub vcl_recv {' + _fields(30) + ' return (vcl(l1)); }\n'
    assert cache.cli.cmd("vcl.inline main << EOF\n" + main + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use main")[0] == 200
    cache.cli.cmd("debug.xid 999")
    status, h, _ = cache.get("/sw")
    assert (status, h.get("lab")) == (200, "yes")
    wait_for(lambda: (1001, "End", "") in cache.proc.log.records, what="the request's End")
    assert cache.proc.server.counters.ws_client_overflow == 1


def test_a_restarted_lookup_and_a_miss_are_logged_and_counted_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest): a request that misses, restarts from vcl_synth and looks up
    again counts hcb_nolock twice (only a lookup after the waiting list skips it); a miss's fetch is
    linked as `Link bereq N fetch`."""
    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_miss { if (req.url == "/r") { if (req.restarts == 0) '
                    '{ return (synth(700)); } return (synth(200)); } }\n'
                    'sub vcl_synth { if (resp.status == 700) { return (restart); } }\n')
    c = cache.proc.server.counters
    assert cache.get("/r")[0] == 200 and c.hcb_nolock == 2
    cache.cli.cmd("debug.xid 999")
    assert cache.get("/f")[0] == 200
    wait_for(lambda: (1001, "End", "") in cache.proc.log.records, what="the request's End")
    assert [x for v, t, x in list(cache.proc.log.records) if v == 1001 and t == "Link"] == ["bereq 1002 fetch"]


def test_an_object_whose_fields_fill_resp_loses_them_where_varnishd_logs_it(make):
    """varnishd 7.1.1 (varnishtest -v, http_max_hdr=32, an object with 24 fields of its own): X-Varnish
    still fits, Age and Via are lost (Error, LostHeader, LostHeader), then Accept-Ranges, all before
    vcl_deliver; then the bare 500."""
    many = [(f"X-{i}", "v") for i in range(24)]
    cache, _ = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(headers=many, body=b"b"), "-p", "http_max_hdr=32")
    cache.cli.cmd("debug.xid 999")
    assert cache.get("/many")[0] == 500
    log = cache.proc.log
    wait_for(lambda: (1001, "End", "") in log.records, what="the request's End")
    records = [(t, x.split(":")[0]) for v, t, x in list(log.records)
               if v == 1001 and t in ("RespHeader", "LostHeader", "Error", "VCL_call")]
    at = records.index(("RespHeader", "X-23"))
    assert records[at + 1:at + 11] == [
        ("RespHeader", "Content-Length"), ("RespHeader", "Date"), ("RespHeader", "X-Varnish"),
        ("Error", "out of workspace (req)"), ("LostHeader", "Age"), ("LostHeader", "Via"),
        ("Error", "out of workspace (req)"), ("Error", "out of workspace (req)"), ("LostHeader", "Accept-Ranges"),
        ("VCL_call", "DELIVER")]


def test_a_delivery_after_vcl_recv_overflowed_loses_its_printed_fields_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest -v, http_max_hdr=32, vcl_recv setting 30 fields): the printed
    fields (X-Varnish, Age, Accept-Ranges) are lost, each after its Error; Via, a plain one, still
    fits; then `Error workspace_client overflow` and the bare 500."""
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv {" + _fields(30) + " }\n", lambda req: Resp(body=b"b"),
                    "-p", "http_max_hdr=32")
    cache.cli.cmd("debug.xid 999")
    assert cache.get("/o")[0] == 500
    log = cache.proc.log
    wait_for(lambda: (1001, "End", "") in log.records, what="the request's End")
    records = [(t, x.split(":")[0]) for v, t, x in list(log.records)
               if v == 1001 and t in ("RespHeader", "LostHeader", "Error", "VCL_call", "RespStatus")]
    at = records.index(("RespStatus", "200"))
    assert records[at + 1:] == [
        ("RespHeader", "Content-Length"), ("RespHeader", "Date"),
        ("Error", "out of workspace (req)"), ("LostHeader", "X-Varnish"),
        ("Error", "out of workspace (req)"), ("LostHeader", "Age"), ("RespHeader", "Via"),
        ("Error", "out of workspace (req)"), ("LostHeader", "Accept-Ranges"), ("VCL_call", "DELIVER"),
        ("RespHeader", "Connection"), ("Error", "workspace_client overflow"), ("RespStatus", "500")]


def test_a_big_synth_body_goes_through_the_range_filter_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest): a 300000-byte vcl_synth body asked for with Range: its last 10
    bytes as a 206 (streamed through the range filter, past what is filtered in one go)."""
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (synth(200)); }\n"
                    "sub vcl_synth {" + " synthetic(req.http.x);" * 50 + " return (deliver); }\n")
    status, h, body = cache.get("/", headers={"Range": "bytes=299990-", "x": "y" * 6000})
    assert (status, h["content-range"], body) == (206, "bytes 299990-299999/300000", b"y" * 10)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_grace_hit_with_no_body_to_stream_is_delivered_while_its_refresh_still_connects(make, method):
    """varnishd 7.1.1 (varnishtest, a background fetch whose backend's accept queue is full): with no
    request body, or one cached by std.cache_req_body(), the grace hit does not wait for its background
    fetch (BOS_REQ_DONE is set as the bereq is made): it is delivered while the connect is still under
    way (backend_fail 0)."""
    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(0)
    port = stall.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))      # the accept queue is full from here
    try:
        vcl = ("vcl 4.1;\nimport std;\nBACKEND\n"
               "sub vcl_recv { std.cache_req_body(1KB); return (hash); }\n"
               f'backend stall {{ .host = "127.0.0.1"; .port = "{port}"; .connect_timeout = 3s; }}\n'
               "sub vcl_backend_fetch { if (bereq.is_bgfetch) { set bereq.backend = stall; } }\n"
               "sub vcl_backend_response { set beresp.ttl = 0.1s; set beresp.grace = 1h; }\n")
        cache, _ = make(vcl, lambda req: Resp(body=b"v1"))
        c = cache.proc.server.counters
        assert cache.get("/g")[2] == b"v1"
        obj = cache.proc.server.storage.heads[next(iter(cache.proc.server.storage.heads))].ocs[0]
        wait_for(lambda: time.time() >= obj.t_origin + obj.ttl, what="the object to go stale")
        assert cache.get("/g", method=method, body=b"abc" if method == "POST" else b"")[2] == b"v1"
        assert (c.cache_hit_grace, c.backend_fail) == (1, 0)
    finally:
        queued.close()
        stall.close()


def test_what_vcl_deliver_sees_of_resp_and_obj_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest -v): in vcl_deliver resp.time is not before req.time; resp.filters
    is " gunzip" for a gzipped object and a client without gzip, " range" for a HEAD with a Range
    (answered 206, as a GET would be, without a body); obj.uncacheable and obj.storage of a cached
    object, a hit-for-miss, a hit-for-pass and an object with no TTL, grace or keep; a conditional
    hit is a 304 Not Modified; the delivery is logged Start, Req, Fetch, Process, Resp."""
    import gzip

    def respond(req):
        if req.url == "/gz":
            return Resp(headers=[("Content-Encoding", "gzip"), ("ETag", '"abc"')], body=gzip.compress(b"hello " * 3))
        if req.url == "/c":
            return Resp(headers=[("ETag", '"e"')], body=b"cond")
        return Resp(body=b"0123456789")

    cache, _ = make('vcl 4.1;\nBACKEND\nsub vcl_backend_response {\n'
                    ' if (bereq.url == "/hfm") { set beresp.uncacheable = true; }\n'
                    ' if (bereq.url == "/hfp") { return (pass(10s)); }\n'
                    ' if (bereq.url == "/ttl0") { set beresp.ttl = 0s; set beresp.grace = 0s; set beresp.keep = 0s; }\n}\n'
                    'sub vcl_deliver {\n set resp.http.ge = (resp.time >= req.time);\n'
                    ' set resp.http.f = "<" + resp.filters + ">";\n set resp.http.u = obj.uncacheable;\n'
                    ' set resp.http.s = obj.storage;\n}\n', respond)
    seen = {}
    for url in ("/gz", "/hfm", "/hfp", "/ttl0", "/c"):
        status, h, _ = cache.get(url)
        seen[url] = (status, h["ge"], h["f"], h["u"], h["s"])
    assert seen == {"/gz": (200, "true", "< gunzip>", "false", "storage.s0"),
                    "/hfm": (200, "true", "<>", "true", "storage.Transient"),
                    "/hfp": (200, "true", "<>", "true", "storage.Transient"),
                    "/ttl0": (200, "true", "<>", "true", "storage.Transient"),
                    "/c": (200, "true", "<>", "false", "storage.s0")}
    cache.cli.cmd("debug.xid 999")
    with cache.proc.connect() as sock:
        sock.sendall(b'GET /c HTTP/1.1\r\nHost: test\r\nIf-None-Match: "e"\r\n\r\n')
        assert read_message(sock)[0].startswith(b"HTTP/1.1 304 Not Modified\r\n")
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
    head = data.split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 206 Partial Content\r\n") and data.endswith(b"\r\n\r\n")
    assert b"\r\nf: < range>\r\n" in head and b"\r\nContent-Range: bytes 0-1/10\r\nContent-Length: 2\r\n" in head
    wait_for(lambda: (1001, "End", "") in cache.proc.log.records, what="the 304's End")
    assert [x.split(":")[0] for v, t, x in list(cache.proc.log.records) if v == 1001 and t == "Timestamp"] == \
        ["Start", "Req", "Process", "Resp"]


def test_req_hash_of_plain_parts_and_of_none_as_varnishd(make):
    """The default vsl_mask (no Hash records: the digest of the joined parts, cached by text): a
    URL not seen before with a byte that is not UTF-8 hashes as its bytes, then NUL, the Host, NUL;
    no hash_data() at all is SHA-256 of nothing (varnishd 7.1.1, varnishtest: e3b0...b855)."""
    import hashlib
    import uuid

    cache, _ = make('vcl 4.1;\nimport blob;\nBACKEND\n'
                    'sub vcl_hash { if (req.url != "/none") { hash_data(req.url); hash_data(req.http.host); }'
                    ' return (lookup); }\n'
                    'sub vcl_miss { set req.http.hash = blob.encode(HEX, blob=req.hash); return (synth(200)); }\n'
                    'sub vcl_synth { set resp.http.hash = req.http.hash; }\n')
    url = b"/u\xff" + uuid.uuid4().hex.encode()
    head, _, _ = raw(cache, b"GET " + url + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b"\r\nhash: " + hashlib.sha256(url + b"\0h\0").hexdigest().encode() + b"\r\n" in head
    head, _, _ = raw(cache, b"GET /none HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b"\r\nhash: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\r\n" in head


def test_accept_encoding_server_ip_an_esi_pipe_a_label_s_return_vcl_and_a_failed_recv_as_varnishd(make):
    """varnishd 7.1.1 (varnishtest -v): Accept-Encoding "gzip, deflate" is washed to "gzip" before
    vcl_hash, the new field last; server.ip is the local address; an ESI include whose vcl_recv returns pipe is fetched as
    a pass (`VCL_Error vcl_recv{} returns pipe for ESI included object.  Doing pass.`, two spaces);
    return (vcl) from a labelled VCL is refused (`Illegal return(vcl): Only from active VCL`, 503); a
    failed vcl_recv sends no 100 Continue; each request logs the active VCL's name (VCL_use)."""
    def respond(req):
        return Resp(body=b'<P><esi:include src="/inc"/></P>' if req.url == "/top" else b"inc")

    cache, server = make("vcl 4.1;\nbackend default none;\n", respond)
    for name, text in (("vcl1", "sub vcl_recv { return (synth(200)); }\n"),
                       ("vcl2", "sub vcl_recv { return (vcl(l2)); }\n")):
        assert cache.cli.cmd(f"vcl.inline {name} << EOF\nvcl 4.1;\nbackend default none;\n{text}EOF")[0] == 200
        assert cache.cli.cmd(f"vcl.label {'l2' if name == 'vcl1' else 'l1'} {name}")[0] == 200
    main = (f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{server.port}"; }}\n'
            'sub vcl_recv {\n if (req.url == "/inc") { return (pipe); }\n if (req.url == "/lab") { return (vcl(l1)); }\n'
            ' if (req.url == "/fail") { return (fail); }\n}\n'
            'sub vcl_backend_response { set beresp.do_esi = true; }\n'
            'sub vcl_deliver { set resp.http.ae = req.http.Accept-Encoding; set resp.http.sip = server.ip; }\n')
    assert cache.cli.cmd("vcl.inline main << EOF\n" + main + "EOF")[0] == 200
    assert cache.cli.cmd("vcl.use main")[0] == 200
    cache.cli.cmd("debug.xid 999")
    status, h, body = cache.get("/top", headers={"Accept-Encoding": "gzip, deflate"})
    assert (status, h["ae"], h["sip"], body) == (200, "gzip", "127.0.0.1", b"<P>inc</P>")
    # http_ForceHeader: the washed Accept-Encoding goes last (after X-Forwarded-For)
    assert [n for n, _ in server.requests[0].headers] == ["Host", "X-Forwarded-For", "Accept-Encoding", "X-Varnish"]
    assert cache.get("/lab")[0] == 503
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /fail HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        head, _ = read_message(sock)
    assert head.startswith(b"HTTP/1.1 503 VCL failed\r\n")
    log = cache.proc.log
    wait_for(lambda: "Failed from VCL" in log.texts("VCL_Error"), what="the failed request's log")
    errors = log.texts("VCL_Error")
    assert "vcl_recv{} returns pipe for ESI included object.  Doing pass." in errors
    records = list(log.records)
    (vxid,) = {v for v, t, x in records if (t, x) == ("VCL_Error", "Failed from VCL")}
    failed = [(t, x) for v, t, x in records if v == vxid and t in ("VCL_call", "VCL_return")]
    assert failed == [("VCL_call", "RECV"), ("VCL_return", "fail"), ("VCL_call", "SYNTH"), ("VCL_return", "deliver")]
    assert "Illegal return(vcl): Only from active VCL" in errors
    assert (1001, "VCL_use", "main") in log.records


def test_hits_are_logged_as_client_transactions(make):
    """A hit from the object's head template logs its last records in one write: still a client
    transaction ("c", as varnishd's), as the miss before it."""
    cache, _ = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(body=b"t"))
    cache.cli.cmd("debug.xid 999")
    for _ in range(3):
        assert cache.get("/t")[2] == b"t"
    log = cache.proc.log
    wait_for(lambda: (1006, "End", "") in log.records, what="the third request's End")
    assert [log.kinds[v] for v in (1001, 1004, 1006)] == [{"c"}] * 3
