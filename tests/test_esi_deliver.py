"""ESI delivery against a real cacheserver process: big pages stay bounded in memory, slow fragments
are streamed, fragments that break off end the page only when varnishd's esi_include_onerror says so.

The markup cases (what a page looks like, includes, depth, req_top...) are .vtc files in tests/vtc
(e01001-e01005), which pass against varnishd 7.1 too.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from polling import wait_for
from serverproc import ServerProcess, memory_kb

MB = 1024 * 1024
# /frag/slow sends its first half, then waits for the test to have seen it (at most 20 s) for the rest
SLOW_SEEN = threading.Event()
SLOW_RELEASES: list[bool] = []         # per /frag/slow: True when the test let the rest go, False if the wait ran out


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
        if url.path == "/page/big":
            # n includes of fragments of `size` bytes each
            body = b"<html>" + b"".join(b'<i><esi:include src="/frag/big/%d?size=%d"/></i>\n' % (i, q["size"])
                                         for i in range(q["n"])) + b"</html>"
            return self._send(body)
        if url.path.startswith("/frag/big/"):
            size = q["size"]
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            unit = (url.path.encode() + b"|").ljust(1024, b"-")
            left = size
            while left:
                n = min(left, len(unit))
                self.wfile.write(unit[:n])
                left -= n
            return None
        if url.path == "/page/slow":
            return self._send(b'<p>before<esi:include src="/frag/slow"/>after</p>')
        if url.path == "/frag/slow":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"slow1")
            self.wfile.flush()
            SLOW_RELEASES.append(SLOW_SEEN.wait(20))
            self.wfile.write(b"slow2")
            return None
        if url.path.startswith("/page/trunc"):
            cont = b' onerror="continue"' if "continue" in url.path else b""
            return self._send(b'<p>A<esi:include src="/frag/trunc%s"%s/>B</p>' % (url.path[-2:].encode(), cont))
        if url.path.startswith("/frag/trunc"):
            # announces 100 bytes, sends 5 and closes (a moment later: the client is reading by then)
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"short")
            self.wfile.flush()
            time.sleep(0.3)
            self.close_connection = True
            return None
        return self._send(b"[" + url.path.encode() + b"]")

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def origin():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


VCL = """vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "%d"; }
sub vcl_recv {
    if (req.url ~ "^/frag/(big|slow|trunc)") { return (pass); }
}
sub vcl_backend_response {
    if (bereq.url ~ "^/page/") { set beresp.do_esi = true; }
}
"""


def _server(origin: int, tmp_path_factory, *args: str) -> ServerProcess:
    vcl = tmp_path_factory.mktemp("esi") / "esi.vcl"
    vcl.write_text(VCL % origin)
    return ServerProcess("-f", str(vcl), *args)


@pytest.fixture(scope="module")
def server(origin, tmp_path_factory):
    srv = _server(origin, tmp_path_factory)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def server_onerror(origin, tmp_path_factory):
    srv = _server(origin, tmp_path_factory, "-p", "feature=+esi_include_onerror")
    yield srv
    srv.stop()


class ChunkedReader:
    """Reads one chunked response from a socket as it comes, a chunk at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.head = self._until(b"\r\n\r\n")

    def _fill(self) -> bool:
        data = self.sock.recv(262144)
        self.buf += data
        return bool(data)

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._fill():
                raise EOFError(self.buf[-200:])
        out, _, self.buf = self.buf.partition(sep)
        return out

    def chunks(self):
        """Each chunk's data; EOFError when the connection closes before the last chunk."""
        while True:
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            while len(self.buf) < size + 2:
                if not self._fill():
                    raise EOFError("closed in a chunk")
            data, self.buf = self.buf[:size], self.buf[size + 2:]
            if size == 0:
                return
            yield data


def test_a_100mb_page_of_many_fragments_stays_bounded(server):
    """100 fragments of 1 MB (passed, so none is cached) make a 100 MB page: the server's memory grows
    by less than 48 MB while it delivers it (no fragment, and not the page, is held whole)."""
    n, size = 100, MB
    sock = server.connect()
    sock.settimeout(30)
    sock.sendall(b"GET /page/big?n=%d&size=%d HTTP/1.1\r\nHost: a\r\n\r\n" % (n, size))
    reader = ChunkedReader(sock)
    assert reader.head.startswith(b"HTTP/1.1 200")
    assert re.search(rb"(?i)\r\ntransfer-encoding: chunked", reader.head)
    before = memory_kb(server.proc.pid)
    peak = 0
    total = 0
    seen = set()
    tail = b""
    for i, data in enumerate(reader.chunks()):
        total += len(data)
        for m in re.finditer(rb"/frag/big/(\d+)\|", tail + data):
            seen.add(int(m.group(1)))
        tail = data[-64:]
        if i % 50 == 0:
            peak = max(peak, memory_kb(server.proc.pid) - before)
            time.sleep(0.001)          # a client a little slower than the loopback
    sock.close()
    markup = len(b"<html></html>") + n * len(b"<i></i>\n")
    assert total == n * size + markup
    assert seen == set(range(n))
    print(f"100 MB ESI page: server RSS grew by at most {peak} KiB")   # shown with pytest -s
    assert peak < 48 * 1024, f"RSS grew by {peak} KiB"


def test_a_slow_fragment_is_streamed(server):
    """What comes before a slow fragment, and the fragment's first bytes, reach the client before the
    fragment is complete: the origin sends the rest only once the client has shown it the first bytes
    (by order, not by the clock: a slow machine cannot flip it)."""
    SLOW_SEEN.clear()
    SLOW_RELEASES.clear()
    sock = server.connect()
    sock.settimeout(30)
    sock.sendall(b"GET /page/slow HTTP/1.1\r\nHost: a\r\n\r\n")
    reader = ChunkedReader(sock)
    got = b""
    for data in reader.chunks():
        got += data
        if b"slow1" in got and not SLOW_SEEN.is_set():
            assert got == b"<p>beforeslow1", got
            SLOW_SEEN.set()
    sock.close()
    assert got == b"<p>beforeslow1slow2after</p>"
    assert SLOW_RELEASES == [True]             # slow2 left the origin after the client had slow1


def _get_page(server: ServerProcess, url: bytes) -> tuple[bytes, bool]:
    sock = server.connect()
    sock.settimeout(10)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % url)
    reader = ChunkedReader(sock)
    got = b""
    try:
        for data in reader.chunks():
            got += data
        complete = True
    except EOFError:
        complete = False
    sock.close()
    return got, complete


def test_a_fragment_that_breaks_off_does_not_stop_the_page(server):
    got, complete = _get_page(server, b"/page/trunc01")
    assert complete and got.startswith(b"<p>A") and got.endswith(b"B</p>")


def test_with_esi_include_onerror_a_broken_fragment_ends_the_page(server_onerror):
    got, complete = _get_page(server_onerror, b"/page/trunc02")
    assert not complete and got.startswith(b"<p>A") and not got.endswith(b"B</p>")


def test_onerror_continue_goes_on_after_a_broken_fragment(server_onerror):
    got, complete = _get_page(server_onerror, b"/page/trunc-continue03")
    assert complete and got.startswith(b"<p>A") and got.endswith(b"B</p>")


def test_a_client_gone_mid_page_leaves_nothing_behind(server):
    """The client hangs up in the middle of a fragment: the subrequest is dropped, its backend
    connection too, and the server goes on serving."""
    before = server.fd_count()
    for _ in range(3):
        sock = server.connect()
        sock.settimeout(10)
        sock.sendall(b"GET /page/big?n=20&size=%d HTTP/1.1\r\nHost: a\r\n\r\n" % MB)
        got = 0
        while got < 300_000:
            got += len(sock.recv(65536))
        sock.close()
    wait_for(lambda: server.fd_count() <= before + 4, what="the dropped subrequests' connections closed")
    got, complete = _get_page(server, b"/page/trunc-continue04")
    assert complete and got.endswith(b"B</p>")
    assert server.fd_count() <= before + 4
