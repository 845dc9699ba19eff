"""The backend HTTP/1.1 client (cacheserver.beconn) and BusyObj on top of it, against raw origins.

Two kinds of tests: a real server process with an origin that scripts the socket byte by byte, and
BusyObj driven directly in an event loop with a ReqBody fed by hand at a controlled pace.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable

import pytest
from polling import async_wait_for, wait_for
from serverproc import memory_kb
from test_cache_support import Cache, read_message

from cacheserver.fetch import BusyObj
from cacheserver.params import Params
from cacheserver.reqbody import ReqBody
from cacheserver.server import Server
from cacheserver.storage import ObjCore
from vcl.runtime import Context, Headers, HttpMessage


class RawOrigin:
    """A backend that hands each accepted socket to `handler(sock, index)`, recording the raw bytes
    of every request head (and body, per Content-Length or chunked framing) it reads."""

    def __init__(self, handler: Callable[[RawOrigin, socket.socket, int], None]) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                index = self.connections
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(10)
        try:
            self.handler(self, conn, index)
        except OSError:
            pass
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> bytes | None:
        """One request, raw; None when the connection closed first."""
        buf = getattr(conn, "_pending", b"")
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return None
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        if m:
            n = int(m.group(1))
            while len(rest) < n:
                rest += conn.recv(65536)
            body, rest = rest[:n], rest[n:]
        elif re.search(rb"\r\ntransfer-encoding: *chunked", head, re.I):
            while not rest.endswith(b"0\r\n\r\n"):
                rest += conn.recv(65536)
            body, rest = rest, b""
        else:
            body = b""
        with self.lock:
            self.requests.append(head + b"\r\n\r\n" + body)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served(tmp_path):
    """served(handler, vcl, *args) -> (Cache, RawOrigin), both stopped after the test."""
    made: list = []

    def factory(handler, vcl: str = "vcl 4.1;\nBACKEND\n", *args: str):
        origin = RawOrigin(handler)
        text = vcl.replace("BACKEND", f'backend default {{ .host = "127.0.0.1"; .port = "{origin.port}"; }}')
        cache = Cache(tmp_path, text, None, *args)
        made.append((cache, origin))
        return cache, origin

    yield factory
    for cache, origin in made:
        cache.stop()
        origin.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answer_all(origin: RawOrigin, conn: socket.socket, index: int) -> None:
    while origin.read_request(conn) is not None:
        conn.sendall(OK)


def _raw(cache: Cache, request: bytes) -> tuple[int, bytes, bytes]:
    with cache.proc.connect() as sock:
        sock.sendall(request)
        head, body = read_message(sock)
    return int(head.split(b" ", 2)[1]), head, body


# -- the request as VCL left it ---------------------------------------------------------------------

def test_bereq_reaches_the_backend_exactly_as_vcl_left_it(served):
    vcl = """vcl 4.1;
BACKEND
sub vcl_recv { return (pass); }
sub vcl_backend_fetch {
    unset bereq.http.host;
    if (bereq.url == "/host") { set bereq.http.Host = "vcl.example"; }
}
"""
    cache, origin = served(answer_all, vcl)
    req = b"GET %s HTTP/1.1\r\nHost: client.example\r\nX-A: 1\r\nx-dup: one\r\nX-A: 2\r\nX-Dup: two\r\n\r\n"
    assert _raw(cache, req % b"/host")[0] == 200
    assert _raw(cache, req % b"/nohost")[0] == 200
    fields = b"X-A: 1\r\nx-dup: one\r\nX-A: 2\r\nX-Dup: two\r\nX-Forwarded-For: 127.0.0.1\r\n"
    first, second = origin.requests
    # duplicates and their order and spelling kept, the Host VCL set where VCL put it, nothing added
    assert re.fullmatch(rb"GET /host HTTP/1.1\r\n" + re.escape(fields)
                        + rb"X-Varnish: \d+\r\nHost: vcl.example\r\n\r\n", first), first
    # no Host left by VCL: the backend's .host_header (its .host when not given), last, as varnishd
    assert re.fullmatch(rb"GET /nohost HTTP/1.1\r\n" + re.escape(fields)
                        + rb"X-Varnish: \d+\r\nHost: 127.0.0.1\r\n\r\n", second), second


# -- timeouts ---------------------------------------------------------------------------------------

def _timeouts_vcl(first_byte: str, between: str) -> str:
    return f"""vcl 4.1;
BACKEND
sub vcl_recv {{ return (pass); }}
sub vcl_backend_fetch {{
    set bereq.first_byte_timeout = {first_byte};
    set bereq.between_bytes_timeout = {between};
}}
"""


def test_first_byte_timeout_is_not_cut_short_by_between_bytes_timeout(served):
    def slow_first_byte(origin, conn, index):
        origin.read_request(conn)
        time.sleep(1.5)                          # (a slower machine only makes this longer)
        conn.sendall(OK)

    # first_byte_timeout far beyond the 1.5 s, so a loaded machine cannot make it fire
    cache, _ = served(slow_first_byte, _timeouts_vcl("20s", "0.5s"))
    status, _, body = _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"ok")


def test_between_bytes_timeout_applies_inside_the_head(served):
    def stall_after_status_line(origin, conn, index):
        origin.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        conn.recv(1)                             # until the server hangs up (the socket's timeout: 10 s)

    cache, _ = served(stall_after_status_line, _timeouts_vcl("20s", "0.5s"))
    t0 = time.monotonic()
    assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 503
    assert time.monotonic() - t0 < 8.0          # between_bytes (0.5 s), not first_byte (20 s)


def test_first_byte_timeout_when_nothing_comes(served):
    def silent(origin, conn, index):
        origin.read_request(conn)
        conn.recv(1)                             # until the server hangs up (the socket's timeout: 10 s)

    cache, _ = served(silent, _timeouts_vcl("2s", "0.2s"))
    t0 = time.monotonic()
    assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 503
    # not before first_byte_timeout (nor at between_bytes_timeout); the 2 s of slack above it absorb a
    # loaded machine and still fail a timeout taken twice (4 s) or never (the origin's 10 s)
    assert 1.95 < time.monotonic() - t0 < 4.0


# -- the response head's limits ---------------------------------------------------------------------


def test_a_head_bigger_than_http_resp_size_fails_with_bounded_memory(served):
    sent = []

    def endless_head(origin, conn, index):
        origin.read_request(conn)
        line = b"X-Junk: " + b"a" * 1000 + b"\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        total = 0
        try:
            while total < 64 << 20:            # 64 MB of head, unless the server hangs up
                conn.sendall(line * 64)
                total += len(line) * 64
        finally:
            sent.append(total)

    # http_max_hdr at its maximum: only http_resp_size (32k) can stop this head
    cache, _ = served(endless_head, "vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n",
                      "-p", "http_max_hdr=65535")
    before = memory_kb(cache.proc.proc.pid)
    status, _, body = _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and b"Backend fetch failed" in body
    assert memory_kb(cache.proc.proc.pid) - before < 20 * 1024
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent and sent[0] < 16 << 20           # the server hung up long before 64 MB
    c = cache.cli.counters()
    assert c["fetch_failed"] == 1 and c["backend_fail"] == 0


def test_backend_1xx_fails_the_fetch_as_varnishd_does(served):
    # varnishd 7.1 takes a 100 Continue as the response: fetch_1xx, "Body cannot be fetched", 503
    def interim_first(origin, conn, index):
        while origin.read_request(conn) is not None:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)

    cache, origin = served(interim_first, "vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n")
    assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 503
    assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 503
    c = cache.cli.counters()
    assert c["fetch_1xx"] == 2 and c["fetch_failed"] == 2
    assert origin.connections == 2               # a connection that did that is not used again


# -- the pool and the one extra chance --------------------------------------------------------------

def test_a_fresh_connection_reset_before_the_response_is_not_retried(served):
    def reset(origin, conn, index):
        origin.read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    cache, origin = served(reset)
    assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 503
    assert len(origin.requests) == 1 and origin.connections == 1
    c = cache.cli.counters()
    assert c["backend_retry"] == 0 and c["backend_fail"] == 0 and c["fetch_failed"] == 1


def _drop_second_request(origin, conn, index):
    """Connection 1 answers one request and drops the next unanswered; later ones answer all."""
    if index == 1:
        origin.read_request(conn)
        conn.sendall(OK)
        origin.read_request(conn)
        return
    answer_all(origin, conn, index)


def test_a_recycled_connection_closed_by_the_backend_gets_one_extra_chance(served):
    cache, origin = served(_drop_second_request, "vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n")
    with cache.proc.connect() as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_message(sock)
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
    assert len(origin.requests) == 3 and origin.connections == 2
    c = cache.cli.counters()
    assert c["backend_retry"] == 1 and c["backend_reuse"] == 1 and c["backend_conn"] == 2
    assert c["backend_recycle"] == 2


def test_no_extra_chance_when_the_request_body_cannot_be_resent(served):
    cache, origin = served(_drop_second_request, "vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n")
    with cache.proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_message(sock)[1] == b"ok"
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        head, _ = read_message(sock)
    assert head.startswith(b"HTTP/1.1 503")
    assert len(origin.requests) == 2 and cache.cli.counters()["backend_retry"] == 0


def test_idle_connections_closed_by_the_backend_or_by_backend_idle_timeout(served):
    first_closed = threading.Event()
    idle_for: list[float] = []

    def close_when_idle(origin, conn, index):
        origin.read_request(conn)
        if index == 1:
            conn.sendall(OK)                     # then close while the connection idles
            conn.close()
            first_closed.set()
            return
        conn.sendall(OK)
        sent = time.monotonic()                  # the server's idle time starts after this
        conn.settimeout(10)
        if conn.recv(1) == b"":                  # the server closes it after backend_idle_timeout
            idle_for.append(time.monotonic() - sent)

    cache, origin = served(close_when_idle, "vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n",
                           "-p", "backend_idle_timeout=3")
    assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    assert first_closed.wait(10)                 # (the server's peek at reuse sees a close on loopback at once)
    assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    assert cache.cli.counters()["backend_retry"] == 0      # the closed one was never used again
    wait_for(lambda: idle_for, what="the server closing the idle connection")
    # never before the 3 s (one monotonic clock for both processes); 2.5 s of slack for a loaded
    # machine, and a timeout taken twice (6 s) still fails
    assert 2.95 < idle_for[0] < 5.5, idle_for


def test_bare_lf_line_ends_and_a_body_ending_at_close(served):
    def lf_only(origin, conn, index):
        origin.read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\nConnection: close\n\nline 1\nline 2\n")

    cache, _ = served(lf_only)
    status, _, body = _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"line 1\nline 2\n")
    assert cache.cli.counters()["fetch_eof"] == 1


def test_http10_response_without_keep_alive_is_not_reused(served):
    def http10(origin, conn, index):
        while origin.read_request(conn) is not None:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    cache, origin = served(http10, "vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n")
    for _ in range(2):
        assert _raw(cache, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    assert origin.connections == 2


# -- BusyObj with a request body fed by hand --------------------------------------------------------

class AsyncOrigin:
    """An origin in the test's own event loop; `handle(reader, writer)` per connection."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> AsyncOrigin:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


def _busyobj(port: int, vcl_body: str, body: ReqBody, method: str = "POST",
             headers: list[tuple[str, str]] | None = None) -> tuple[BusyObj, ObjCore, Server]:
    server = Server(Params())
    vcl = server.vcl_load("boot", f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{port}"; }}\n'
                          + vcl_body, "<inline>")
    req = HttpMessage(method=method, url="/up", proto="HTTP/1.1",
                      headers=Headers([("Host", "x")] + (headers or [])))
    creq = Context(req=req, backend_hint=vcl.default_backend, xid=1, sess_xid=0, is_hitpass=False,
                   is_hitmiss=False, server_hostname="h", server_identity="i")
    oc = ObjCore()
    return BusyObj(server, vcl, creq, oc, None, "pass", body), oc, server


async def _finish(bo: BusyObj, oc: ObjCore, server: Server) -> bytes:
    await asyncio.wait_for(bo.start(), 10)
    data = oc.read(bo.reader)          # what a client streaming the pass would get
    bo.close_reader()
    await server.close()
    return data


def test_a_big_request_body_is_streamed_with_back_pressure():
    total = 50 << 20
    block = b"p" * (1 << 20)
    seen: dict[str, object] = {}
    may_read = asyncio.Event()

    async def handle(reader, writer):
        head = await _read_head(reader)
        seen["head"] = head
        seen["first"] = await reader.read(65536)     # the first body bytes
        await may_read.wait()                         # then stop reading: the sender must wait
        got = len(seen["first"])
        while got < total:
            data = await reader.read(1 << 20)
            assert data
            got += len(data)
        seen["got"] = got
        writer.write(OK)
        await writer.drain()

    async def main():
        async with AsyncOrigin(handle) as origin:
            paused = []
            body = ReqBody(total, pause=lambda: paused.append(True), resume=lambda: paused.clear())
            bo, oc, server = _busyobj(origin.port, "", body, headers=[("Content-Length", str(total))])
            task = asyncio.ensure_future(_finish(bo, oc, server))
            fed = 0
            body.feed(block)
            fed += len(block)
            # the origin has the head and first bytes while the client has sent 1 MB of 50
            await async_wait_for(lambda: "first" in seen, what="the origin's first bytes")
            assert seen.get("first") and fed < total
            assert b"\r\ncontent-length: %d\r\n" % total in seen["head"].lower()
            # the origin reads nothing more: the fetch stops pulling, the body stops being read
            while fed < total and not paused:
                body.feed(block)
                fed += len(block)
                await asyncio.sleep(0)
                await asyncio.sleep(0.005)
            assert paused and fed < 24 << 20, fed    # socket buffers and 64k in ReqBody, no more
            may_read.set()
            while fed < total:
                if paused:
                    await async_wait_for(lambda: not paused, what="the fetch pulling again", interval=0.001)
                body.feed(block)
                fed += len(block)
                await asyncio.sleep(0)
            body.finish()
            assert await task == b"ok"
            assert seen["got"] == total and oc.complete

    asyncio.run(main())


def test_a_chunked_request_body_goes_out_chunked():
    requests = []

    async def handle(reader, writer):
        head = await _read_head(reader)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += await asyncio.wait_for(reader.read(65536), 5)
        requests.append(head + data)
        writer.write(OK)
        await writer.drain()

    async def main():
        async with AsyncOrigin(handle) as origin:
            body = ReqBody(None)
            bo, oc, server = _busyobj(origin.port, "", body)
            task = asyncio.ensure_future(_finish(bo, oc, server))
            for piece in (b"hello", b" ", b"world"):
                body.feed(piece)
                await asyncio.sleep(0.02)
            body.finish()
            assert await task == b"ok"

    asyncio.run(main())
    [raw] = requests
    head, _, framed = raw.partition(b"\r\n\r\n")
    assert head.endswith(b"\r\nTransfer-Encoding: chunked")
    assert b"content-length" not in head.lower()
    assert framed == b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"


RETRY_ON_500 = """
sub vcl_backend_response {
    if (beresp.status == 500 && bereq.retries == 0) { return (retry); }
}
"""


def _answer_500_then_200(bodies: list[bytes]):
    async def handle(reader, writer):
        while True:
            try:
                head = await _read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            n = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
            bodies.append(await reader.readexactly(n))
            writer.write(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n" if len(bodies) == 1 else OK)
            await writer.drain()
    return handle


def test_a_cached_request_body_is_replayed_on_retry():
    bodies: list[bytes] = []

    async def main():
        async with AsyncOrigin(_answer_500_then_200(bodies)) as origin:
            body = ReqBody(7)
            body.feed(b"payload")
            body.finish()
            assert await body.cache(1024)            # std.cache_req_body()
            bo, oc, server = _busyobj(origin.port, RETRY_ON_500, body, headers=[("Content-Length", "7")])
            assert await _finish(bo, oc, server) == b"ok"
            assert oc.http.status == 200

    asyncio.run(main())
    assert bodies == [b"payload", b"payload"]


@pytest.mark.parametrize("where", ["vcl_backend_response", "vcl_backend_error"])
def test_retry_after_an_uncached_body_was_sent_fails_the_fetch(where):
    bodies: list[bytes] = []
    vcl = RETRY_ON_500 if where == "vcl_backend_response" else (
        "sub vcl_backend_response { if (beresp.status == 500) { return (error(503)); } }\n"
        "sub vcl_backend_error { return (retry); }\n")

    async def main():
        async with AsyncOrigin(_answer_500_then_200(bodies)) as origin:
            body = ReqBody.of(b"payload")
            bo, oc, server = _busyobj(origin.port, vcl, body, headers=[("Content-Length", "7")])
            await _finish(bo, oc, server)
            assert oc.failed
            assert ("Error", "Retry not possible, req.body not cached") in bo.ctx.log

    asyncio.run(main())
    assert bodies == [b"payload"]                     # never a second request without its body


def test_unset_bereq_body_sends_none():
    heads: list[bytes] = []

    async def handle(reader, writer):
        heads.append(await _read_head(reader))
        writer.write(OK)
        await writer.drain()

    async def main():
        async with AsyncOrigin(handle) as origin:
            body = ReqBody.of(b"payload")
            bo, oc, server = _busyobj(origin.port, "sub vcl_backend_fetch { unset bereq.body; }\n", body,
                                      method="PUT", headers=[("Content-Length", "7")])
            assert await _finish(bo, oc, server) == b"ok"

    asyncio.run(main())
    assert b"content-length" not in heads[0].lower() and b"transfer-encoding" not in heads[0].lower()


def test_header_names_are_shared_between_responses():
    """Cached objects hold their own header values only: the name strings come from one table."""
    from types import SimpleNamespace

    from cacheserver.beconn import BackendConn

    fields = []
    for value in (b"text/plain", b"text/html"):
        conn = BackendConn(SimpleNamespace(loop=None))
        conn.start(False, 32768, 8192, 64)
        conn.on_header(b"Content-Type", value)
        fields.append(conn.fields[0])
    (name1, value1, lname1), (name2, value2, lname2) = fields
    assert (name1, lname1, value1, value2) == ("Content-Type", "content-type", "text/plain", "text/html")
    assert name1 is name2 and lname1 is lname2
