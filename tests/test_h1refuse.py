"""h1refuse: what varnishd 7.1 logs of a head it refuses. Each case's records were read from
varnishd 7.1.1's log for the same bytes (tests/vtc/fid_vsl_garbage.vtc, fid_vsl_backend_close.vtc
check a part of them against it on the wire)."""

from __future__ import annotations

import pytest

from cacheserver.h1refuse import refusal, response_refusal

REQUESTS = [
    # raw head, BogoHeader, HttpGarbage, ReqAcct's header bytes
    (b"GET\r\n\r\n", None, b"GET\r\n\r\n", 7),
    (b"G\x01ET / HTTP/1.1\r\n\r\n", None, b"G\x01ET / HTTP/1.1\r\n\r\n", 19),
    (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", None, b"GET", 27),
    (b"GET /\r\n\r\n", None, b"GET", 9),
    (b"GET / FOO/1.1\r\n\r\n", None, b"GET", 17),
    (b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", None, b"GET", 39),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", None, b"POST", 44),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", None, b"POST", 53),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", None, b"GET", 65),
    (b"POST / HTTP/1.0\r\n\r\n", None, b"POST", 19),
    (b"PUT / HTTP/1.0\r\nConnection: close\r\n\r\n", None, b"PUT", 37),
    (b"HEAD / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", None, b"HEAD", 38),
    (b"GET / HTTP/1.1\r\n: foo\r\n\r\n", "Missing header name: : foo", b"GET", 25),
    (b"GET / HTTP/1.1\r\nFoo\r\n\r\n", "Header without ':' Foo", b"GET", 23),
    (b"GET / HTTP/1.1\r\n Foo: bar\r\n\r\n", "1st header has white space:  Foo: bar", b"GET", 29),
    (b"GET / HTTP/1.1\r\nX-A: b\rc\r\n\r\n", "Header has ctrl char 0x0d", b"GET", 28),
    (b"GET / HTTP/1.1\r\nFoo : bar\r\n\r\n", "Illegal char 0x20 in header name", b"GET", 29),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: x\r\n" % i for i in range(60)) + b"\r\n",
     "Too many headers: H59: x", b"GET", 488),
]


@pytest.mark.parametrize("raw, bogo, garbage, size", REQUESTS)
def test_request_heads_the_dissection_refuses(raw, bogo, garbage, size):
    why = refusal(raw, 8192, 64)
    assert (why.bogo, why.garbage, why.head_bytes, why.dissected) == (bogo, garbage, size, False)


def test_heads_cnt_recv_refuses_are_logged_dissected():
    why = refusal(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 8192, 64)
    assert why.dissected and (why.method, why.url, why.proto, why.headers, why.bogo, why.head_bytes) == \
        ("GET", "/", "HTTP/1.1", ["Host: a", "Host: b"], "Multiple Host: headers", 36)
    why = refusal(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 8192, 64)
    assert why.dissected and (why.bogo, why.head_bytes) == ("Multiple Content-Length: headers", 57)
    # an absolute URL's host replaces the Host headers first (HTTP1_DissectRequest)
    why = refusal(b"GET http://h/p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 8192, 64)
    assert why.passes and not why.dissected


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nFoo: bar\n  baz\n\n",          # bare LFs and a folded line: varnishd takes them
    b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: x\r\n" % i for i in range(59)) + b"\r\n",
])
def test_heads_varnishd_takes(raw):
    assert refusal(raw, 8192, 64).passes


def test_a_head_not_ended_is_incomplete():
    assert refusal(b"GET / HTTP/1.1\r\nHost: a\r\n", 8192, 64).incomplete
    assert not refusal(b"GET / HTTP/1.1\r\nFoo\r\nHost: a\r\n", 8192, 64).incomplete   # refused already


@pytest.mark.parametrize("raw, bogo, garbage", [
    (b"HTTP/1.1\r\n\r\n", None, b"HTTP/1.1\r\n\r\n"),
    (b"HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n", "Header has ctrl char 0x01", b"HTTP/1.1"),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", None, b"HTTP/1.1"),
    (b"HTTP/0.9 200 OK\r\n\r\n", None, b"HTTP/0.9"),
])
def test_response_heads_refused(raw, bogo, garbage):
    why = response_refusal(raw, 8192, 64)
    assert (why.bogo, why.garbage, why.head_bytes) == (bogo, garbage, len(raw))


def test_response_heads_taken():
    assert response_refusal(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 8192, 64) is None
    assert response_refusal(b"HTTP/1.0 404\r\n\r\n", 8192, 64) is None      # the reason is optional
