"""The client side's HTTP/1 handling, against a real server process."""

from __future__ import annotations

import time

import pytest
from inproc import InProcServer
from serverproc import read_all, read_response

ECHO_METHOD = """vcl 4.1;
backend default none;
sub vcl_recv {
    if (req.method == "PRI") { return (synth(405)); }
    return (synth(200, req.method + " " + req.url));
}
sub vcl_synth {
    set resp.http.X = req.http.X;
}
"""


@pytest.fixture(scope="module")
def server():
    srv = InProcServer(ECHO_METHOD)      # in-process, so that mutmut sees protocol.py run
    yield srv
    srv.stop()


def status_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("method", [b"GET", b"BAN", b"REFRESH", b"X-My.Method", b"PURGE"])
def test_any_token_is_a_method(server, method):
    with server.connect() as sock:
        sock.sendall(method + b" /u HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _ = read_response(sock)
        assert status_line(head) == b"HTTP/1.1 200 " + method + b" /u"


def test_pipelined_custom_methods_keep_their_order(server):
    with server.connect() as sock:
        sock.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nBAN /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"BANSTR /3 HTTP/1.1\r\nHost: x\r\n\r\nGET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
        lines = [status_line(read_response(sock)[0]) for _ in range(4)]
        assert lines == [b"HTTP/1.1 200 GET /1", b"HTTP/1.1 200 BAN /2", b"HTTP/1.1 200 BANSTR /3",
                         b"HTTP/1.1 200 GET /4"]


def test_a_custom_method_split_across_reads(server):
    with server.connect() as sock:
        sock.sendall(b"BA")
        time.sleep(0.2)
        sock.sendall(b"NG /split HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_line(read_response(sock)[0]) == b"HTTP/1.1 200 BANG /split"


def test_a_custom_method_with_a_body(server):
    with server.connect() as sock:
        sock.sendall(b"MAGIC /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /n HTTP/1.1\r\n\r\n")
        assert status_line(read_response(sock)[0]) == b"HTTP/1.1 200 MAGIC /b"
        assert status_line(read_response(sock)[0]) == b"HTTP/1.1 200 GET /n"


def test_pri_reaches_vcl(server):
    with server.connect() as sock:
        sock.sendall(b"PRI /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_line(read_response(sock)[0]) == b"HTTP/1.1 405 Method Not Allowed"


@pytest.mark.parametrize("garbage", [b"B(N / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n\r\nB@D / HTTP/1.1\r\n\r\n"])
def test_a_method_that_is_no_token_is_a_bad_request(server, garbage):
    with server.connect() as sock:
        sock.sendall(garbage)
        data = read_all(sock)
        assert data.endswith(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def test_utf8_and_raw_bytes_in_headers_round_trip(server):
    with server.connect() as sock:
        for value in ("æøå".encode(), b"\xff\xfe raw"):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + value + b"\r\n\r\n")
            assert b"\r\nX: " + value + b"\r\n" in read_response(sock)[0]


def test_content_length_beyond_int64_is_a_bad_request(server):
    with server.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n")
        assert read_all(sock) == b"HTTP/1.1 400 Bad Request\r\n\r\n"
