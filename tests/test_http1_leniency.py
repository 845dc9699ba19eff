"""Request heads varnishd 7.1 takes although llhttp refuses them (bare LF line ends, folded lines), and
bad input answered only after the requests before it. Expected outcomes observed on varnishd 7.1.1."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from inproc import InProcServer
from serverproc import read_all, read_response

from cacheserver.http1 import needs_relaxing, relax_head


class _Echo(BaseHTTPRequestHandler):
    """Answers with the X header it got, so a test sees how a folded line arrived."""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = (self.headers.get("X") or "-").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    srv = InProcServer('vcl 4.1;\nbackend b { .host = "127.0.0.1"; .port = "%d"; }\n'
                       'sub vcl_recv { return (pass); }\n' % httpd.server_address[1])
    yield srv
    srv.stop()
    httpd.shutdown()


def ask(server: InProcServer, *parts: bytes) -> tuple[bytes, bytes]:
    sock = server.connect()
    for part in parts:
        sock.sendall(part)
        time.sleep(0.05)
    head, body = read_response(sock)
    sock.close()
    return head, body


def test_bare_lf_line_ends_are_taken(server):
    head, body = ask(server, b"GET / HTTP/1.1\nHost: a\nX: lf\n\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"lf"


def test_a_folded_line_joins_the_one_before_it(server):
    head, body = ask(server, b"GET / HTTP/1.1\r\nHost: a\r\nX: one\r\n two\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"one   two"          # the CRLF became two spaces, as varnishd does


def test_a_bare_lf_head_split_across_reads(server):
    head, body = ask(server, b"GET / HTTP/1.1\r\nHo", b"st: a\nX: split\n", b"\n")
    assert body == b"split"


def test_a_bare_lf_head_after_a_pipelined_request(server):
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX: first\r\n\r\nGET / HTTP/1.1\r\nHo")
    time.sleep(0.05)
    sock.sendall(b"st: a\nX: second\n\n")
    assert read_response(sock)[1] == b"first"
    assert read_response(sock)[1] == b"second"
    sock.close()


def test_a_space_before_the_colon_is_still_refused(server):
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n")
    assert read_all(sock) == b"HTTP/1.1 400 Bad Request\r\n\r\n"
    sock.close()


def test_bad_input_is_answered_after_the_requests_before_it(server):
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX: ok\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.endswith(b"\r\n\r\nokHTTP/1.1 400 Bad Request\r\n\r\n")


def test_relax_head_rewrites_only_the_head():
    assert relax_head(b"GET / HTTP/1.1\nHost: a\nX: y\n\tz\n\nbody\nmore") == \
        b"GET / HTTP/1.1\r\nHost: a\r\nX: y  z\r\n\r\nbody\nmore"      # varnishd: blanks become spaces
    assert relax_head(b"GET / HTTP/1.1\nHost: a\n") is None            # its end has not come
    assert not needs_relaxing(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbinary\nbody")
    assert needs_relaxing(b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n")
