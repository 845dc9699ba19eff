"""The client connection (protocol.py) where the mutation run found no test: timeouts and their close
reasons, limits on heads, requests refused after the ones before them are answered, pipelining past
the queue bound, half-closed clients, byte counters, the session's log records. In-process servers.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest
from inproc import InProcServer, MemoryTransport, RecordingLog, wait_for
from serverproc import read_all, read_at_least, read_response
from test_cache_support import Backend, Resp, read_message

from cacheserver.http1 import BAD_REQUEST
from cacheserver.stevedores import TRANSIENT

ECHO = """vcl 4.1;
import std;
backend default none;
sub vcl_recv {
    if (req.url == "/body") { std.cache_req_body(10KB); return (synth(200, "got " + req.http.content-length)); }
    return (synth(200, req.method + " " + req.url));
}
"""

# ECHO's vcl_recv may wait (std.cache_req_body): its requests run in the async driver; these do not
SYNC = 'vcl 4.1;\nbackend default none;\nsub vcl_recv { return (synth(200, req.method + " " + req.url)); }\n'


@pytest.fixture
def start():
    made: list[InProcServer] = []

    def factory(vcl: str = ECHO, **params: str) -> InProcServer:
        made.append(InProcServer(vcl, params))
        return made[-1]

    yield factory
    for srv in made:
        srv.stop()


def status(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


def status_lines(data: bytes) -> list[bytes]:
    """The status lines of the responses in data (synth bodies do not end with CRLF)."""
    return re.findall(rb"HTTP/1\.1 \d\d\d [^\r\n]*(?=\r\n)", data)


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_an_idle_keepalive_connection_is_closed_after_timeout_idle(start):
    srv = start(timeout_idle="0.3")
    c = srv.server.counters
    with srv.connect() as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /a"
        assert closed_by_server(sock)
        assert time.monotonic() - t0 >= 0.3
    # after a request as before any (varnishd 7.1 counts both as sc_rx_close_idle, checked with varnishtest)
    wait_for(lambda: c.sc_rx_close_idle == 1, what="the close")
    # closed while waiting for a request: not in sess_closed (varnishd counts it at request end)
    assert c.sc_rx_timeout == 0 and c.sess_closed_err == 0 and c.sess_closed == 0


def test_a_head_that_trickles_in_is_a_receive_timeout(start):
    srv = start(timeout_idle="0.5")
    c = srv.server.counters
    with srv.connect() as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\n")
        # bytes keep coming, but the head is not in by timeout_idle: closed all the same
        while time.monotonic() - t0 < 5:
            try:
                sock.sendall(b"X: y\r\n")
            except OSError:
                break
            if closed_by_server(sock, 0.1):
                break
        assert time.monotonic() - t0 >= 0.5
    wait_for(lambda: c.sc_rx_timeout == 1, what="sc_rx_timeout")
    assert c.sess_closed_err == 1 and c.sc_rx_close_idle == 0


def test_timeout_idle_zero_never_closes(start):
    srv = start(timeout_idle="0")
    assert srv.server.params.timeout_idle == 0
    with srv.connect() as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock)
        assert not closed_by_server(sock, 0.3)
        sock.sendall(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /b"


def test_a_client_that_does_not_read_is_dropped_after_idle_send_timeout(start):
    big = b"x" * (16 << 20)
    backend = Backend(lambda req: Resp(body=big))
    try:
        srv = start(f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n',
                    idle_send_timeout="0.3")
        c = srv.server.counters
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # before connect: a small window
        with sock:
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: c.sc_tx_error == 1, timeout=15, what="sc_tx_error")
        assert c.sess_closed_err == 1
    finally:
        backend.close()


def test_the_session_log_opens_and_closes_with_its_reason(start):
    srv = start()
    with srv.connect() as sock:
        local = sock.getsockname()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        read_all(sock)
    wait_for(lambda: srv.log.texts("SessClose"), what="SessClose")
    (opened,) = srv.log.texts("SessOpen")
    peer, port, name, laddr, lport, t, fd = opened.split()
    assert (peer, int(port), name, laddr, int(lport)) == (local[0], local[1], "a0", "127.0.0.1", srv.port)
    assert abs(float(t) - time.time()) < 60 and int(fd) > 2
    reason, duration = srv.log.texts("SessClose")[0].split()
    assert reason == "REQ_CLOSE" and 0 <= float(duration) < 60
    assert "sess 0 HTTP/1" in srv.log.texts("Begin")


def test_a_long_session_flushes_its_log_in_parts(start):
    srv = start()
    with srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 70)
        for _ in range(70):
            read_response(sock)
        session = [r for r in list(srv.log.records) if r[1] == "Begin" and r[2] == "sess 0 HTTP/1"]
        assert len(session) == 1         # flushed before the session ended: 64 records at most held
        vxid = session[0][0]
        links = [r for r in list(srv.log.records) if r[0] == vxid and r[1] == "Link"]
        assert 60 <= len(links) < 70


@pytest.mark.parametrize("request_bytes, counter, close, dissected", [
    # two Hosts: refused by cnt_recv once dissected, closed RX_BAD (varnishd 7.1.1)
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "client_req_400", "sc_rx_bad", True),
    (b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx", "client_req_400", "sc_rx_junk", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", "client_req_417", "sc_rx_junk", True),
    (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", "client_req_400", "sc_rx_junk", False),
])
def test_refused_requests_are_answered_after_the_ones_before_them(start, request_bytes, counter, close, dissected):
    srv = start()
    c = srv.server.counters
    with srv.connect() as sock:
        sock.sendall(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n" + request_bytes
                     + b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        data = read_all(sock)
    lines = status_lines(data)
    refusal = b"HTTP/1.1 417 Expectation Failed" if counter == "client_req_417" else status(BAD_REQUEST)
    assert lines == [b"HTTP/1.1 200 GET /1", b"HTTP/1.1 200 GET /2", refusal]
    wait_for(lambda: getattr(c, close) == 1, what=close)
    assert getattr(c, counter) == 1 and c.sess_closed_err == 1
    assert c.client_req == 2 + dissected


@pytest.mark.parametrize("param, value, request_bytes", [
    ("http_req_hdr_len", "100", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 120 + b"\r\n\r\n"),
    ("http_max_hdr", "32", b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: v\r\n" % i for i in range(40)) + b"\r\n"),
])
def test_heads_past_their_limits_are_bad_requests(start, param, value, request_bytes):
    srv = start(**{param: value})
    with srv.connect() as sock:
        sock.sendall(request_bytes)
        assert status(read_all(sock)) == status(BAD_REQUEST)
    small = request_bytes.replace(b"u" * 120, b"u" * 80).replace(b"v" * 120, b"v" * 80)
    if param == "http_max_hdr":
        small = b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: v\r\n" % i for i in range(20)) + b"\r\n"
    with srv.connect() as sock:
        sock.sendall(small)
        assert status(read_response(sock)[0]).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("end", [b"", b"\r\n"], ids=["unfinished", "complete"])
def test_a_head_past_http_req_size_is_closed_unanswered(start, end):
    """varnishd 7.1 cuts off a head that outgrows http_req_size, finished or not, without an answer
    (sc_rx_overflow, no client_req_400: checked with varnishtest)."""
    srv = start(http_req_size="1024", http_req_hdr_len="512")
    c = srv.server.counters
    with srv.connect() as sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: %s\r\n" % (i, b"v" * 200) for i in range(6)) + end)
        except OSError:
            pass
        assert read_all(sock) == b""
    wait_for(lambda: c.sc_rx_overflow == 1, what="sc_rx_overflow")
    assert c.client_req_400 == 0
    with srv.connect() as sock:            # within the limit: fine
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: %s\r\n" % (i, b"v" * 200) for i in range(3))
                     + b"\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /"


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_many_pipelined_requests_are_all_answered_in_order(start, sync):
    srv = start(SYNC if sync else ECHO)
    n = 200                                 # well past the queue bound: the rest is held, then parsed
    with srv.connect() as sock:
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(n)))
        got = [status(read_response(sock)[0]) for _ in range(n)]
    assert got == [b"HTTP/1.1 200 GET /%d" % i for i in range(n)]
    # each request but the last found the next one's bytes read already (a read may end between two)
    assert n - 3 <= srv.server.counters.sess_readahead <= n - 1


def drive(vcl: str, *reads: bytes, **params: str):
    """Feed `reads` to one connection of a Server running `vcl`, each as one read, on a loop of its
    own; (server, transport) once every request is answered, or stuck (a body still to come). Reads
    are exact, so where one ends is no accident of the network. A callable among the reads is called
    with the connection instead (the client stops or starts reading: conn.pause_writing()), and
    awaited if it returns a coroutine (closed_within)."""
    from cacheserver.protocol import ClientProtocol
    from cacheserver.server import Server

    async def main():
        srv = Server()
        srv.vsl = RecordingLog()
        for name, value in params.items():
            srv.params.set(name, value)
        srv.vcl_load("boot", vcl, "<inline>")
        conn = ClientProtocol(srv)
        sink = MemoryTransport()
        conn.connection_made(sink)
        for data in reads:
            if callable(data):
                waits = data(conn)
                if asyncio.iscoroutine(waits):
                    await waits
            else:
                conn.data_received(data)
            for _ in range(100):          # a request that waits runs as a task: let it get as far as it can
                if not conn.busy:
                    break
                await asyncio.sleep(0)
        conn.connection_lost(None)
        return srv, sink

    return asyncio.run(main())


async def closed_within(conn, seconds: float = 10.0) -> None:
    """Let the connection's loop run until it closes (its timers fire), for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not conn.closed and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_answers_the_client_does_not_read_are_dropped_after_idle_send_timeout():
    """A client that stops reading while its answers are written at once (no fetch): after
    idle_send_timeout the connection is dropped as TX_ERROR (varnishd 7.1, as with a fetched body)."""
    srv, sink = drive(SYNC, lambda conn: conn.pause_writing(), b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
                      b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n", closed_within, idle_send_timeout="0.1")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /1"] and sink.closed
    assert srv.counters.sc_tx_error == 1 and srv.counters.sess_closed_err == 1
    assert [t.split()[0] for t in srv.vsl.texts("SessClose")] == ["TX_ERROR"]


def test_a_client_that_reads_again_is_served_then_idle_from_then():
    """The client reads its answers again: what it sent meanwhile is answered, and the connection is
    then idle, closed after timeout_idle as RX_CLOSE_IDLE (not a send timeout)."""
    srv, sink = drive(SYNC, lambda conn: conn.pause_writing(), b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
                      b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n", lambda conn: conn.resume_writing(), closed_within,
                      idle_send_timeout="0.2", timeout_idle="0.3")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /1", b"HTTP/1.1 200 GET /2"] and sink.closed
    assert srv.counters.sc_rx_close_idle == 1 and srv.counters.sc_tx_error == 0
    assert [t.split()[0] for t in srv.vsl.texts("SessClose")] == ["RX_CLOSE_IDLE"]


def test_a_broken_chunk_after_the_answer_closes_without_a_word():
    """varnishd 7.1 (varnishtest): a miss answered (503, no backend) while its chunked body is still
    coming, then a bad chunk: the client gets the 503, then the close; no 400 (client_req_400 0)."""
    miss = "vcl 4.1;\nbackend default none;\nsub vcl_recv { return (hash); }\n"
    srv, sink = drive(miss, b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                      b"zz\r\n")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 503 Backend fetch failed"]
    assert sink.out.endswith(b"</html>\n") and sink.closed
    assert (srv.counters.client_req, srv.counters.client_req_400) == (1, 0)


@pytest.mark.parametrize("body, error", [
    (b"Content-Length: 10\r\n\r\nabc", "straight insufficient bytes"),
    (b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", "chunked read err"),
], ids=["straight", "chunked"])
def test_a_body_that_stops_coming_times_out_as_varnishd_logs_it(body, error):
    """varnishd 7.1 (varnishtest -v, timeout_idle=1, std.cache_req_body(10KB)): a body that stops coming
    fails after timeout_idle with two FetchErrors, the read's (EAGAIN) then its reader's; ReqBody
    timestamp, unanswered, RX_BODY."""
    vcl = ('vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv {\n'
           ' set req.http.cached = std.cache_req_body(10KB);\n return (synth(200, "got " + req.http.cached)); }\n')
    srv, sink = drive(vcl, b"POST /b HTTP/1.1\r\nHost: a\r\n" + body, closed_within, timeout_idle="0.2")
    assert sink.out == b"" and sink.closed
    assert srv.vsl.texts("FetchError") == ["Resource temporarily unavailable", error]
    assert [t.split(":")[0] for t in srv.vsl.texts("Timestamp")].count("ReqBody") == 1
    assert [t.split()[0] for t in srv.vsl.texts("SessClose")] == ["RX_BODY"] and srv.counters.sc_rx_body == 1


def test_a_bare_lf_head_begun_after_a_full_read_of_requests():
    """A read of a whole request and the start of the next head, together past http_req_size: the
    request is answered, the head goes on in the next read with bare LFs, taken as varnishd takes them."""
    first = b"GET /1 HTTP/1.1\r\nHost: a\r\nX: " + b"p" * 220 + b"\r\n\r\n"
    srv, sink = drive(SYNC, first + b"GET /2 HTTP/1.1\r\n", b"Host: a\n\n", http_req_size="256")
    assert len(first) + 17 > 256
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /1", b"HTTP/1.1 200 GET /2"]


def test_http_req_hdr_len_bounds_a_header_line_to_the_byte():
    """varnishd 7.1 (varnishtest, http_req_hdr_len=100): a header line of 100 bytes is answered, 101 is
    a 400."""
    for size, answer in ((100, b"HTTP/1.1 200 GET /"), (101, status(BAD_REQUEST))):
        line = b"X: " + b"v" * (size - 3)
        srv, sink = drive(SYNC, b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n", http_req_hdr_len="100")
        assert status_lines(bytes(sink.out)) == [answer]


def test_a_header_value_loses_the_blanks_around_it():
    """varnishd 7.1 (varnishtest): "X:  abX \t " reaches VCL as "abX"."""
    vcl = 'vcl 4.1;\nbackend default none;\nsub vcl_recv { return (synth(200, "[" + req.http.x + "]")); }\n'
    srv, sink = drive(vcl, b"GET / HTTP/1.1\r\nHost: a\r\nX:  abX \t \r\n\r\n")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 [abX]"]


def test_a_client_that_half_closes_mid_body_cuts_it_short():
    """varnishd 7.1 (varnishtest -v): a client that shuts its side down before the end of a
    Content-Length body: the body read fails ("straight insufficient bytes"), unanswered, RX_BODY."""
    vcl = ('vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv {\n'
           ' set req.http.cached = std.cache_req_body(10KB);\n return (synth(200, "got " + req.http.cached)); }\n')
    srv, sink = drive(vcl, b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
                      lambda conn: conn.eof_received(), closed_within)
    assert sink.out == b"" and sink.closed and srv.vsl.texts("FetchError") == ["straight insufficient bytes"]
    assert [t.split()[0] for t in srv.vsl.texts("SessClose")] == ["RX_BODY"]


def test_sess_readahead_counts_requests_whose_successor_is_already_read():
    """varnishd 7.1 (varnishtest): three requests and the start of a fourth in one read: 3, the fourth
    counting nothing when its end comes alone."""
    req = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"
    srv, sink = drive(SYNC, b"".join(req % i for i in range(3)) + b"GET /4 HTTP/1.1\r\nHo", b"st: a\r\n\r\n")
    assert status_lines(bytes(sink.out))[3] == b"HTTP/1.1 200 GET /4" and srv.counters.sess_readahead == 3
    srv, _ = drive(SYNC, req % 1 + req % 2, req % 3)          # the second's bytes came with the first
    assert srv.counters.sess_readahead == 1 and srv.counters.s_req_hdrbytes == 3 * len(req % 1)
    # 64 requests of 256 bytes fill a parse slice exactly: the rest is held, and counted as read ahead
    pad = [req % i for i in range(128)]
    one = [r[:-2] + b"X: " + b"p" * (256 - len(r) - 5) + b"\r\n\r\n" for r in pad]
    srv, sink = drive(SYNC, b"".join(one))
    assert {len(r) for r in one} == {256} and len(status_lines(bytes(sink.out))) == 128
    assert srv.counters.sess_readahead == 127
    # bad bytes read with a request are read ahead too (varnishtest: a request, then "G\x01ET ...": 1)
    junk = b"G\x01ET / HTTP/1.1\r\n\r\n"
    srv, sink = drive(SYNC, req % 1 + junk)
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /1", status(BAD_REQUEST)]
    assert srv.counters.sess_readahead == 1
    srv, sink = drive(ECHO, b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n", b"ab" + junk)
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 got 2", status(BAD_REQUEST)]
    assert srv.counters.sess_readahead == 1


@pytest.mark.parametrize("vcl", [SYNC, ECHO], ids=["sync", "async"])
def test_a_response_that_says_connection_close_closes_as_sc_resp_close(start, vcl):
    srv = start(vcl.replace("sub vcl_recv {", 'sub vcl_synth { set resp.http.Connection = "close"; }\nsub vcl_recv {'))
    with srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head, _ = read_response(sock)
        assert b"\r\nConnection: close\r\n" in head and closed_by_server(sock)
    c = srv.server.counters
    wait_for(lambda: c.sc_resp_close == 1, what="sc_resp_close")
    wait_for(lambda: srv.log.texts("SessClose"), what="SessClose")
    assert srv.log.texts("SessClose")[0].startswith("RESP_CLOSE ")


def test_a_half_closed_client_gets_its_answers_then_the_close(start):
    srv = start(timeout_idle="30")          # the close must come from the half-close, not a timeout
    for urls in ([b"/1"], [b"/1", b"/2"]):
        with srv.connect() as sock:
            sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % url for url in urls))
            sock.shutdown(socket.SHUT_WR)
            data = b""
            sock.settimeout(5)
            while chunk := sock.recv(65536):      # TimeoutError: never closed
                data += chunk
        assert status_lines(data) == [b"HTTP/1.1 200 GET " + url for url in urls]
    wait_for(lambda: srv.server.counters.sc_rem_close == 2, what="sc_rem_close")


def test_request_byte_counters(start):
    srv = start()
    c = srv.server.counters
    head = b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
    with srv.connect() as sock:
        sock.sendall(head + b"hello")
        h, _ = read_response(sock)
    assert status(h) == b"HTTP/1.1 200 got 5"
    wait_for(lambda: c.s_req_bodybytes == 5, what="the body bytes, counted when the request ends")
    assert c.s_req_hdrbytes == len(head)
    assert c.client_req == 1


def test_a_body_for_a_request_that_waits_arrives_while_it_runs(start):
    srv = start()
    with srv.connect() as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        sock.sendall(b"2\r\nde\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 got 5"
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /next"


def test_a_body_cut_short_by_the_client_leaves_the_server_serving(start):
    srv = start()
    with srv.connect() as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nshort")
        sock.shutdown(socket.SHUT_WR)
        read_all(sock)
    with srv.connect() as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_message(sock)[0]).startswith(b"HTTP/1.1 200 ")


def test_a_read_bigger_than_a_parse_slice_is_parsed_in_order(start):
    srv = start()
    pad = b"X-Pad: " + b"p" * 200 + b"\r\n"
    n = 150                                     # about 35 KB in one write: several 16 KB slices
    with srv.connect() as sock:
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n%s\r\n" % (i, pad) for i in range(n)))
        got = [status(read_response(sock)[0]) for _ in range(n)]
    assert got == [b"HTTP/1.1 200 GET /%d" % i for i in range(n)]


def test_requests_after_an_upgrade_request_are_still_http(start):
    srv = start()
    with srv.connect() as sock:
        sock.sendall(b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                     b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /up"
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /next"


def test_a_cached_request_body_that_transient_cannot_hold_closes_unanswered(start):
    # (a malloc store is at least 1M, as varnishd's: the body must be bigger than that)
    srv = InProcServer(ECHO.replace("cache_req_body(10KB)", "cache_req_body(2MB)"),
                       storage=["Transient=malloc,1m"])
    try:
        with srv.connect() as sock:
            sock.sendall(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 1100000\r\n\r\n" + b"b" * 1_100_000)
            assert read_all(sock) == b""
        wait_for(lambda: srv.server.counters.sc_rx_body == 1, what="sc_rx_body")
        with srv.connect() as sock:              # a small one fits
            sock.sendall(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            assert status(read_response(sock)[0]) == b"HTTP/1.1 200 got 5"
    finally:
        srv.stop()


def test_a_client_that_reads_late_still_gets_everything(start):
    big = b"y" * (3 << 20)
    backend = Backend(lambda req: Resp(body=big))
    try:
        srv = start(f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n',
                    idle_send_timeout="10")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        with sock:
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: any(s.paused_writing for s in list(srv.server.sessions)), what="backpressure")
            for _ in range(2):
                head, body = read_response(sock)
                assert status(head) == b"HTTP/1.1 200 X" and len(body) == len(big)
        assert srv.server.counters.sc_tx_error == 0
    finally:
        backend.close()


def test_send_timeout_ends_a_response_whose_backend_stalls_mid_body(start):
    """A streamed body waiting on its backend past send_timeout: the connection closes, counted as a
    transmit error, and the part already sent reached the client."""
    backend = Backend(lambda req: Resp(chunks=[(0.0, b"first"), (10.0, b"late")]))    # (far past the bound)
    try:
        srv = start(f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n'
                    "sub vcl_recv { return (pass); }\n", send_timeout="0.5")
        with srv.connect() as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            t0 = time.monotonic()
            data = read_all(sock, timeout=10)
            assert time.monotonic() - t0 < 6
        assert data.startswith(b"HTTP/1.1 200") and b"first" in data and b"late" not in data
        wait_for(lambda: srv.server.counters.sc_tx_error == 1, timeout=5, what="sc_tx_error")
    finally:
        backend.close()


# -- the idle timer, driven by hand: a fake loop records what is armed, a fake clock says the time ----

class _Loop:
    def __init__(self) -> None:
        self.armed: list[tuple[float, object]] = []

    def call_later(self, delay, callback):
        self.armed.append((delay, callback))
        return _Timer()


class _Timer:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def idle(monkeypatch):
    """A ClientProtocol with timeout_idle 10 s, a fake loop and a clock at 1000 (set `clock[0]`)."""
    from types import SimpleNamespace

    from cacheserver import protocol as protocol_mod
    from cacheserver.counters import Counters
    from cacheserver.params import Params

    loop = _Loop()
    clock = [1000.0]
    monkeypatch.setattr(protocol_mod.asyncio, "get_running_loop", lambda: loop)
    monkeypatch.setattr(protocol_mod.time, "monotonic", lambda: clock[0])
    params = Params()
    params.set("timeout_idle", "10")
    conn = protocol_mod.ClientProtocol(SimpleNamespace(params=params, counters=Counters(), sessions=set()))
    conn.transport = _Transport()
    return SimpleNamespace(conn=conn, loop=loop, clock=clock, params=params)


def test_the_idle_timer_is_armed_for_timeout_idle_and_not_at_all_for_zero(idle):
    idle.conn._arm_idle_timer()
    assert [d for d, _ in idle.loop.armed] == [10.0] and idle.loop.armed[0][1] == idle.conn._check_idle
    idle.params.set("timeout_idle", "0")
    idle.conn._arm_idle_timer()
    assert len(idle.loop.armed) == 1


@pytest.mark.parametrize("state", ["busy", "queue", "write_blocked"])
def test_a_connection_with_work_in_hand_is_looked_at_again_a_full_timeout_later(idle, state):
    conn = idle.conn
    if state == "queue":
        conn.queue.append(object())
    else:
        setattr(conn, state, True)
    conn.idle_since = conn.last_active = 0.0        # long ago: would be idle otherwise
    conn._check_idle()
    assert [(d, cb) for d, cb in idle.loop.armed] == [(10.0, conn._check_idle)]
    assert conn.idle_timer is not None and not conn.transport.aborted and conn.close_reason is None


def test_a_connection_idle_for_less_than_timeout_idle_waits_the_rest(idle):
    conn = idle.conn
    conn.idle_since = 1000.0 - 4
    conn._check_idle()
    assert idle.loop.armed == [(6.0, conn._check_idle)] and conn.idle_timer is not None
    idle.clock[0] = 1000.0 + 5.99                  # 9.99 s idle: the rest is short, but at least 50 ms
    conn._check_idle()
    assert idle.loop.armed[-1][0] == pytest.approx(0.05) and not conn.transport.aborted


def test_idle_for_exactly_timeout_idle_closes_with_its_reason(idle):
    conn = idle.conn
    conn.idle_since = 1000.0 - 10
    conn._check_idle()
    assert conn.transport.aborted and conn.close_reason == "sc_rx_close_idle" and idle.loop.armed == []


@pytest.mark.parametrize("begun", ["_in_head", "_relaxing", "_method_hold"])
def test_a_head_begun_and_not_finished_in_time_is_a_receive_timeout(idle, begun):
    conn = idle.conn
    setattr(conn, begun, b"GE" if begun == "_method_hold" else True)
    conn.idle_since = 0.0
    conn._check_idle()
    assert conn.transport.aborted and conn.close_reason == "sc_rx_timeout"


def test_a_body_still_arriving_counts_from_its_last_bytes(idle):
    conn = idle.conn
    conn._sink = object()                      # a body for a finished request is still coming
    conn.idle_since = 0.0
    conn.last_active = 1000.0 - 3
    conn._check_idle()
    assert idle.loop.armed == [(7.0, conn._check_idle)] and not conn.transport.aborted
    conn._sink = None                          # no body: the idle time counts from idle_since
    conn._check_idle()
    assert conn.transport.aborted


def test_a_closed_connection_is_left_alone(idle):
    conn = idle.conn
    conn.closed = True
    conn.busy = True
    conn._check_idle()
    assert idle.loop.armed == [] and not conn.transport.aborted


def test_a_client_that_reads_steadily_but_too_slowly_is_dropped_at_send_timeout(start):
    """send_timeout bounds a whole response even when the client keeps reading (idle_send_timeout
    never fires): varnishd closes it then (sc_tx_error), without the rest of the body."""
    big = b"z" * (8 << 20)
    backend = Backend(lambda req: Resp(body=big))
    try:
        srv = start(f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n',
                    send_timeout="1", idle_send_timeout="30")
        c = srv.server.counters
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        got = 0
        with sock:
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            sock.settimeout(10)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and c.sc_tx_error == 0:
                try:
                    data = sock.recv(16384)
                except ConnectionError:
                    break
                if not data:
                    break
                got += len(data)
                time.sleep(0.01)            # about 1.6 MB/s at most: 8 MB takes 5 s, past send_timeout
        # (the server's kernel still sends what it had buffered after the close: stop reading at it)
        wait_for(lambda: c.sc_tx_error == 1, what="sc_tx_error")
        assert got < len(big) and c.sess_closed_err == 1
    finally:
        backend.close()


STEAL = """vcl 4.1;
import tinykvm;
backend default none;
sub vcl_recv {
    if (req.url ~ "^/steal/") {
        if (tinykvm.steal(regsub(req.url, "^/steal/", ""))) { return (synth(599)); }
        return (synth(200, "refused"));
    }
    return (synth(200, "plain"));
}
"""

DIES_ON_CONNECT = """import os
from kvm_api import set_socket_on_connect, set_socket_on_read, wait_for_requests

def on_connect(fd, remote, arg):
    os._exit(3)

set_socket_on_connect(on_connect)
set_socket_on_read(lambda fd, data: None)
wait_for_requests()
"""


@pytest.mark.parametrize("program, source", [
    ("broken", "raise RuntimeError('broken at load')\n"),
    ("dies", DIES_ON_CONNECT),
], ids=["fails-to-load", "dies-during-the-steal"])
def test_a_steal_whose_program_fails_is_a_vcl_failure_and_the_server_goes_on(start, tmp_path, program, source):
    (tmp_path / f"{program}.py").write_text(source)
    srv = start(STEAL)
    srv.server.programs.search_dirs = [tmp_path]
    c = srv.server.counters
    for n in (1, 2):                            # each failure counts
        with srv.connect() as sock:
            sock.sendall(f"GET /steal/{program} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            head, _ = read_response(sock)
            assert status(head) == b"HTTP/1.1 503 VCL failed"
            assert closed_by_server(sock)
        wait_for(lambda: c.sc_vcl_failure == n, timeout=10, what="sc_vcl_failure")  # noqa: B023
    assert c.steal_failed == 2 and c.steal_ok == 0
    assert any(f"program '{program}'" in text for text in srv.log.texts("VCL_Error"))
    with srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 plain"


def test_hits_written_at_once_stop_the_connection_until_the_client_reads(start):
    """Cache hits are written inside data_received: when they back the transport up, the connection
    takes no further request until the client has read them (and then answers all); a client that
    never reads is dropped after idle_send_timeout (sc_tx_error)."""
    body = b"h" * (200 << 10)                      # below the size sent by the async "send" state
    backend = Backend(lambda req: Resp(headers=[("Cache-Control", "max-age=60")], body=body))
    try:
        srv = start(f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n',
                    idle_send_timeout="1", timeout_idle="3")
        c = srv.server.counters
        with srv.connect() as sock:
            sock.sendall(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock)[1] == body
        n = 20
        for then in ("another request", "the idle timeout"):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            with sock:
                sock.connect(("127.0.0.1", srv.port))
                sock.sendall(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n" * n)
                wait_for(lambda: any(s.write_blocked for s in list(srv.server.sessions)), what="blocked writes")
                assert c.cache_hit < n * 2           # the rest waits, unparsed
                for _ in range(n):
                    head, got = read_response(sock)
                    assert status(head) == b"HTTP/1.1 200 X" and got == body
                if then == "another request":         # the connection takes requests again
                    sock.sendall(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n")
                    assert read_response(sock)[1] == body
                else:                                 # and its idle timer still works
                    assert closed_by_server(sock, 10)
        assert c.cache_hit == 2 * n + 1 and c.sc_tx_error == 0
        wait_for(lambda: c.sc_rx_close_idle >= 1, what="the idle close")
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with stuck:
            stuck.connect(("127.0.0.1", srv.port))
            stuck.sendall(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n" * 40)
            wait_for(lambda: c.sc_tx_error == 1, timeout=10, what="sc_tx_error")
        assert c.sess_closed_err == 1
    finally:
        backend.close()


def test_a_stolen_connection_leaves_the_server_for_the_program(start):
    """tinykvm.steal() that the program accepts: what the client sent after the request head goes to
    the program first, the session is forgotten (no close counted) and steal_ok counts it."""
    srv = start(STEAL)
    c = srv.server.counters
    for n in (1, 2):                            # each steal counts
        with srv.connect() as sock:
            sock.sendall(b"GET /steal/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcdef")
            assert read_at_least(sock, 6) == b"abcdef"                 # the body, then the bytes after it, and no response
            sock.sendall(b"more")
            assert sock.recv(100) == b"more"
            # the server counts the steal once the program's answer reached its loop: poll, do not race
            wait_for(lambda: c.steal_ok == n and not srv.server.sessions, what="the steal counted")  # noqa: B023
    assert c.steal_failed == 0 and c.steal_refused == 0
    assert c.sess_closed == 0 and c.sess_closed_err == 0 and c.sc_rem_close == 0


def test_a_body_still_arriving_when_stolen_goes_to_the_program_as_sent(start):
    """A steal while the request's body is still coming: the program gets the part read so far, then
    the rest straight from the socket, nothing added between."""
    srv = start(STEAL)
    with srv.connect() as sock:
        sock.sendall(b"POST /steal/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabcd")
        wait_for(lambda: srv.server.counters.steal_ok == 1, timeout=30, what="the steal")   # a program starts
        sock.sendall(b"efghij")
        assert read_at_least(sock, 10) == b"abcdefghij"


GREET = """from kvm_api import set_socket_on_connect, set_socket_on_read, write, wait_for_requests

peers = {}

def on_connect(fd, remote, arg):
    peers[fd] = (remote, arg)
    return arg != "refuse"

def on_read(fd, data):
    remote, arg = peers[fd]
    write(fd, ("%s|%s|" % (remote, arg)).encode() + data)

set_socket_on_connect(on_connect)
set_socket_on_read(on_read)
wait_for_requests()
"""

STEAL_ARG = """vcl 4.1;
import std;
import tinykvm;
backend default none;
sub vcl_recv {
    if (req.http.cache-body) { std.cache_req_body(1KB); }
    if (tinykvm.steal("greet", req.http.arg)) { return (synth(599)); }
    return (synth(200, "refused " + req.http.arg));
}
"""


def test_a_steal_passes_the_client_address_the_argument_and_a_cached_body(start, tmp_path):
    (tmp_path / "greet.py").write_text(GREET)
    srv = start(STEAL_ARG)
    srv.server.programs.search_dirs = [tmp_path]
    c = srv.server.counters
    with srv.connect() as sock:
        host, port = sock.getsockname()
        for n in (1, 2):                         # refused: VCL goes on, the connection still serves
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\narg: refuse\r\n\r\n")
            assert status(read_response(sock)[0]) == b"HTTP/1.1 200 refused refuse"
            assert c.steal_refused == n
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\narg: yes\r\ncache-body: 1\r\nContent-Length: 4\r\n\r\nbody")
        want = f"{host}:{port}|yes|body".encode()
        assert read_at_least(sock, len(want)) == want
        wait_for(lambda: c.steal_ok == 1, what="the steal counted")


def test_http_req_size_bounds_the_whole_head_to_the_byte():
    """varnishd 7.1 (varnishtest, http_req_size=256): a head of 256 bytes is answered, 257 closed unanswered."""
    base = b"GET /x HTTP/1.1\r\nHost: a\r\nX: "
    for size, answered in ((256, True), (257, False)):
        head = base + b"p" * (size - len(base) - 4) + b"\r\n\r\n"
        srv, sink = drive(SYNC, head, http_req_size="256")
        assert len(head) == size and (bytes(sink.out[:15]) == b"HTTP/1.1 200 GE") is answered
        assert (sink.out == b"" and srv.counters.sc_rx_overflow == 1) is not answered


@pytest.mark.parametrize("start", [b"GET / HTTP/1.1\r\nX: ", b"GET / HTTP/1.1\nX: ", b"GET bar?", b"AAAA"],
                         ids=["head", "bare-lf-head", "odd-url", "method"])
def test_an_unended_head_that_fills_http_req_size_is_closed_at_once(start):
    """varnishd 7.1 (varnishtest, http_req_size=256): 256 bytes of a head with no end yet are closed
    unanswered at once (RX_OVERFLOW), however the head is made; 255 are held for more."""
    for size, closed in ((255, False), (256, True)):
        srv, sink = drive(SYNC, start + b"p" * (size - len(start)), http_req_size="256")
        assert sink.out == b"" and sink.closed is closed and srv.counters.sc_rx_overflow == closed
    # a request before it in the same read does not count: its head is whole (256 bytes read in all)
    first = b"GET /1 HTTP/1.1\r\n\r\n"
    srv, sink = drive(SYNC, first + start + b"p" * (256 - len(first) - len(start)), http_req_size="256")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /1"] and not sink.closed


@pytest.mark.parametrize("reads, answers", [
    ((b"POST fo", b"o HTTP/1.1\r\nHost: a\r\n\r\n"), [b"POST foo"]),
    ((b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST fo", b"o HTTP/1.1\r\nHost: a\r\n\r\n"), [b"GET /a", b"POST foo"]),
    ((b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", b"GET fo", b"o HTTP/1.1\r\nHost: a\r\n\r\n"), [b"GET /a", b"GET foo"]),
    ((b"BAN fo", b"o HTTP/1.1\r\nHost: a\r\n\r\nGET x", b"y HTTP/1.1\r\n\r\n"), [b"BAN foo", b"GET xy"]),
    ((b"GET f", b"o", b"o", b" HTTP/1.1\r\n\r\n"), [b"GET foo"]),
    ((b"GET /a HTTP/1.1\r\n\r\nGET 1", b"x HTTP/1.1\r\n\r\n"), [b"GET /a", b"GET 1x"]),   # refused at once
    ((b"FOO 1", b"x HTTP/1.1\r\n\r\n"), [b"FOO 1x"]),       # an unknown method too (varnishtest)
    ((b"GET fooXbar HTTP/1.1\r\n\r\n",), [b"GET fooXbar"]),
])
def test_a_url_llhttp_refuses_is_taken_however_the_reads_cut_it(reads, answers):
    """varnishd takes any URL token; llhttp refuses "foo" only at its end when its start looked like a
    scheme, a read or more later: the head is parsed again from its start, its method kept."""
    srv, sink = drive(SYNC, *reads)
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 " + a for a in answers]


def test_a_url_llhttp_refuses_cut_by_a_read_is_bounded_by_http_req_size():
    """varnishd 7.1 (varnishtest, http_req_hdr_len=100, http_req_size=256): "GET bar?x...x" cut before its
    end is answered with 150 x's (a URL is no header line), closed unanswered with 300."""
    srv, sink = drive(SYNC, b"GET bar?" + b"x" * 150, b" HTTP/1.1\r\nHost: a\r\n\r\n",
                      http_req_hdr_len="100", http_req_size="256")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET bar?" + b"x" * 150]
    srv, sink = drive(SYNC, b"GET bar?" + b"x" * 300, http_req_hdr_len="100", http_req_size="256")
    assert sink.out == b"" and sink.closed and srv.counters.sc_rx_overflow == 1
    assert srv.counters.client_req_400 == 0


def test_a_method_cut_by_a_read_is_bounded_by_http_req_size():
    """varnishd 7.1 (varnishtest, http_req_hdr_len=100, http_req_size=256): a method of 120 letters cut
    before its end is answered; 300 letters with no end are closed unanswered (sc_rx_overflow)."""
    srv, sink = drive(SYNC, b"A" * 120, b" /m HTTP/1.1\r\nHost: a\r\n\r\n", http_req_hdr_len="100",
                      http_req_size="256")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 " + b"A" * 120 + b" /m"]
    srv, sink = drive(SYNC, b"A" * 300, http_req_size="256")
    assert sink.out == b"" and sink.closed and srv.counters.sc_rx_overflow == 1
    assert srv.counters.client_req_400 == 0


def test_a_bare_lf_head_waiting_for_its_end_was_read_ahead():
    """varnishd 7.1 (varnishtest): a request followed in its read by the start of a head with bare LFs
    counts in sess_readahead; a request after the bare-LF one is parsed as usual."""
    srv, sink = drive(SYNC, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\nHost: a\n", b"\n",
                      b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /%d" % i for i in (1, 2, 3)]
    assert srv.counters.sess_readahead == 1


def test_held_bytes_a_parse_leaves_behind_are_counted_to_the_byte():
    """Bytes held while the client does not read its answers are parsed once it reads, until the queue is
    full again: what that leaves held still counts against the 256 KiB bound, to the byte, when the
    client stops reading again (a write-blocked connection does not read either way)."""
    from cacheserver.protocol import _MAX_HELD, _MAX_QUEUED

    def post(url: bytes, size: int) -> bytes:
        """A POST request of `size` bytes, head and body."""
        head = b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %%d\r\n\r\n" % url
        n = next(n for n in range(size, 0, -1) if len(head % n) + n == size)
        return head % n + b"x" * n

    many = b"".join(b"GET /%02d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(_MAX_QUEUED + 8))
    b, c = post(b"/b", 100_000), post(b"/c", 100_000)
    d = post(b"/d", _MAX_HELD - len(b) - len(c) + 1)
    states = []

    def more(conn):
        for data in (d[:-1], d[-1:]):       # held to exactly the bound, then one byte past it
            conn.data_received(data)
            states.append((conn.held_size, sum(map(len, conn.held))))

    def read_one(conn):                     # the client reads one answer, then stops reading again
        write = conn.transport.write

        def write_then_stall(data):
            write(data)
            if b" GET /00" in data:
                conn.pause_writing()
        conn.transport.write = write_then_stall
        conn.resume_writing()

    srv, sink = drive(SYNC, lambda conn: conn.pause_writing(), b"GET /0 HTTP/1.1\r\nHost: a\r\n\r\n", many, b, c,
                      read_one, more)
    assert len(b) == len(c) == 100_000 and len(b + c + d) == _MAX_HELD + 1
    assert states == [(_MAX_HELD, _MAX_HELD), (_MAX_HELD + 1, _MAX_HELD + 1)]
    assert status_lines(bytes(sink.out))[:2] == [b"HTTP/1.1 200 GET /0", b"HTTP/1.1 200 GET /00"]


def test_nothing_held_after_bad_bytes_is_read_once_the_client_reads_again():
    """Reads held while the client does not read its answers: the requests before the bad bytes are
    answered, then the 400, and nothing of a later read (varnishd reads a connection in order)."""
    srv, sink = drive(SYNC, lambda conn: conn.pause_writing(), b"GET /0 HTTP/1.1\r\nHost: a\r\n\r\n",
                      b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\nG\x01ET / HTTP/1.1\r\n\r\n",
                      b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n", lambda conn: conn.resume_writing())
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /0", b"HTTP/1.1 200 GET /2", status(BAD_REQUEST)]
    assert sink.closed and srv.counters.client_req_400 == 1 and srv.counters.client_req == 2


@pytest.mark.parametrize("proto, interim", [(b"1.1", True), (b"1.0", False)])
def test_expect_100_continue_is_answered_for_http11_only(proto, interim):
    """cnt_transport: a 100 for HTTP/1.1 only; the Expect header is gone before vcl_recv either way, its
    ReqUnset logged (varnishd 7.1, varnishtest)."""
    vcl = ('vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv {\n std.cache_req_body(1KB);\n'
           ' return (synth(200, req.proto + " [" + req.http.Expect + "]")); }\n')
    head = b"POST /b HTTP/%s\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n" % proto
    srv, sink = drive(vcl, head, b"ab")
    assert sink.out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n") is interim
    assert status_lines(bytes(sink.out))[-1] == b"HTTP/1.1 200 HTTP/" + proto + b" []"
    assert srv.vsl.texts("ReqUnset") == ["Expect: 100-Continue"]


def test_an_unknown_expectation_is_a_417_logged_with_its_head_bytes():
    head = b"GET /e HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n"
    srv, sink = drive(SYNC, head)
    assert sink.out.startswith(b"HTTP/1.1 417 ") and sink.closed and srv.counters.client_req_417 == 1
    (acct,) = srv.vsl.texts("ReqAcct")
    assert acct.split()[:3] == [str(len(head)), "0", str(len(head))]



@pytest.mark.parametrize("headers, answer", [(26, b"HTTP/1.1 200 GET /"), (28, b"HTTP/1.1 400 Bad Request")])
def test_http_max_hdr_counts_the_request_line_s_slots(headers, answer):
    """varnishd 7.1 (varnishtest, http_max_hdr=32): 26 headers are answered, 28 refused (5 slots go to the
    request line)."""
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"H%02d: v\r\n" % i for i in range(headers)) + b"\r\n"
    srv, sink = drive(SYNC, head, http_max_hdr="32")
    assert status_lines(bytes(sink.out)) == [answer]


def test_refused_heads_are_logged_and_counted_as_varnishd(start):
    """varnishd 7.1 (varnishtest -v, a VCL that answers synth): the request transaction of each head it
    refuses before vcl_recv, record by record, the session's close reason, and the counters."""
    srv = start(SYNC)
    srv.call(_use_vcl1(srv.server))
    c = srv.server.counters
    srv.server.set_xid(999)
    cases = [
        (b"GET / HTTP/1.1\r\nFoo\r\n\r\n", b"HTTP/1.1 400 Bad Request", "RX_JUNK", [
            ("BogoHeader", "Header without ':' Foo"), ("HttpGarbage", "GET"), ("RespProtocol", "HTTP/1.1"),
            ("RespStatus", "400"), ("RespReason", "Bad Request"), ("ReqAcct", "23 0 23 28 0 28"), ("End", "")]),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"HTTP/1.1 400 Bad Request", "RX_BAD", [
            ("VCL_use", "vcl1"), ("ReqStart", "127.0.0.1 PORT a0"), ("ReqMethod", "GET"), ("ReqURL", "/"),
            ("ReqProtocol", "HTTP/1.1"), ("ReqHeader", "Host: a"), ("ReqHeader", "Host: b"),
            ("BogoHeader", "Multiple Host: headers"), ("RespProtocol", "HTTP/1.1"), ("RespStatus", "400"),
            ("RespReason", "Bad Request"), ("ReqAcct", "36 0 36 28 0 28"), ("End", "")]),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n", b"HTTP/1.1 417 Expectation Failed", "RX_JUNK", [
            ("VCL_use", "vcl1"), ("RespProtocol", "HTTP/1.1"), ("RespStatus", "417"),
            ("RespReason", "Expectation Failed"), ("ReqAcct", "40 0 40 35 0 35"), ("End", "")]),
        (b"GET\r\n\r\n", b"HTTP/1.1 400 Bad Request", "RX_JUNK", [
            ("HttpGarbage", "GET\r\n\r\n"), ("RespProtocol", "HTTP/1.1"), ("RespStatus", "400"),
            ("RespReason", "Bad Request"), ("ReqAcct", "7 0 7 28 0 28"), ("End", "")]),
        # another expectation: each counts
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: bar\r\n\r\n", b"HTTP/1.1 417 Expectation Failed", "RX_JUNK", [
            ("VCL_use", "vcl1"), ("RespProtocol", "HTTP/1.1"), ("RespStatus", "417"),
            ("RespReason", "Expectation Failed"), ("ReqAcct", "40 0 40 35 0 35"), ("End", "")]),
        # a method that is no token (tests/h1refuse's table, from varnishd 7.1.1's log)
        (b"G\x01ET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request", "RX_JUNK", [
            ("HttpGarbage", "G\x01ET / HTTP/1.1\r\n\r\n"), ("RespProtocol", "HTTP/1.1"), ("RespStatus", "400"),
            ("RespReason", "Bad Request"), ("ReqAcct", "19 0 19 28 0 28"), ("End", "")]),
    ]
    for n, (data, answer, close, records) in enumerate(cases):
        sess, req = 1000 + 2 * n, 1001 + 2 * n
        with srv.connect() as sock:
            port = sock.getsockname()[1]
            sock.sendall(data)
            got = read_all(sock)
            assert got.split(b"\r\n")[0] == answer and closed_by_server(sock)
        wait_for(lambda: (sess, "End", "") in srv.log.records, what="the session's End")  # noqa: B023
        log = list(srv.log.records)
        assert [(t, x) for v, t, x in log if v == sess and t in ("Link", "SessClose")] == [
            ("Link", f"req {req} rxreq"), ("SessClose", f"{close} " + srv.log.texts("SessClose")[n].split()[1])]
        got = [(t, x) for v, t, x in log if v == req]
        start_ts = got[1][1].split()[1]
        assert got[:3] == [("Begin", f"req {sess} rxreq"), ("Timestamp", f"Start: {start_ts} 0.000000 0.000000"),
                           ("Timestamp", f"Req: {start_ts} 0.000000 0.000000")]
        assert abs(float(start_ts) - time.time()) < 60
        assert got[3:] == [(t, x.replace("PORT", str(port))) for t, x in records]
        assert srv.log.kinds[sess] == srv.log.kinds[req] == {"c"}
    assert (c.client_req_400, c.client_req_417, c.client_req) == (4, 2, 3)
    assert (c.s_req_hdrbytes, c.s_resp_hdrbytes) == (106 + 40 + 19, 119 + 35 + 28)
    assert (c.sc_rx_junk, c.sc_rx_bad, c.sess_closed_err) == (5, 1, 6)


async def _use_vcl1(server) -> None:
    """The VCL varnishtest loads first is "vcl1" (the refusals log its name)."""
    server.vcl_load("vcl1", SYNC, "<inline>")
    server.vcl_use("vcl1")


def test_a_100_continue_is_logged_and_counted_with_the_response_head(start):
    """varnishd 7.1 (varnishtest -v, std.cache_req_body in vcl_recv): the 100 is logged as a response
    where vcl_recv reads the body, and its 25 bytes count in ReqAcct's and s_resp_hdrbytes' header bytes."""
    srv = start(ECHO)
    c = srv.server.counters
    head = b"POST /body HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    with srv.connect() as sock:
        sock.sendall(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n")
        before = len(read_response(sock)[0])
        sock.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        final, body = read_response(sock)
    assert status(final) == b"HTTP/1.1 200 got 3"
    final_head = len(final)
    wait_for(lambda: len(srv.log.texts("ReqAcct")) == 2, what="the request's ReqAcct")
    records = [(t, x) for _, t, x in list(srv.log.records)]
    at = len(records) - 1 - records[::-1].index(("VCL_call", "RECV"))     # the second request's
    assert records[at + 1:at + 5] == [("Storage", "malloc Transient"), ("RespProtocol", "HTTP/1.1"),
                                      ("RespStatus", "100"), ("RespReason", "Continue")]
    assert records[at + 5][1].startswith("ReqBody: ")
    req_head = len(head)        # (69 in varnishd's run, whose URL was "/")
    assert srv.log.texts("ReqAcct")[1] == f"{req_head} 3 {req_head + 3} {25 + final_head} {len(body)} " \
                                          f"{25 + final_head + len(body)}"
    assert c.s_resp_hdrbytes == before + 25 + final_head


def test_std_cache_req_body_logs_and_rewrites_the_request_as_varnishd(start):
    """varnishd 7.1 (varnishtest -v, std.cache_req_body(3B)): a chunked body is cached and the request
    then says its Content-Length (logged as vrb_pull and VRB_Cache each do it: twice), a body of exactly
    the size is cached, a bigger one is a FetchError, false, and the connection closes unanswered."""
    backend = Backend(lambda req: Resp(body=b"ok"))
    try:
        srv = start(f'vcl 4.1;\nimport std;\nbackend b {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n'
                    'sub vcl_recv { set req.http.cached = std.cache_req_body(3B);\n'
                    ' if (req.url == "/s") { return (synth(200, "c " + req.http.cached)); }\n return (pass); }\n')
        srv.server.set_xid(999)
        with srv.connect() as sock:
            sock.sendall(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            assert read_response(sock)[1] == b"ok"
            sock.sendall(b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
            assert status(read_response(sock)[0]) == b"HTTP/1.1 200 c true"
            sock.sendall(b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd")
            assert read_all(sock) == b""
        chunked_head = b"POST /s HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n"
        with srv.connect() as sock:
            sock.sendall(chunked_head + b"4\r\nabcd\r\n0\r\n\r\n")
            assert read_all(sock) == b""
        assert backend.requests[0].headers == [("Host", "h"), ("X-Forwarded-For", "127.0.0.1"),
                                               ("Content-Length", "3"), ("cached", "true"), ("X-Varnish", "1002")]
        assert backend.requests[0].body == b"abc"
        wait_for(lambda: (1005, "End", "") in srv.log.records, what="the last session's End")
        log = list(srv.log.records)

        def in_recv(vxid):
            records = [(t, x.split(":")[0] if t == "Timestamp" else x) for v, t, x in log if v == vxid]
            at = records.index(("VCL_call", "RECV"))
            return records[at + 1:records.index(("VCL_return", "pass" if vxid == 1001 else "synth"))]

        assert in_recv(1001) == [("Storage", "malloc Transient"), ("Timestamp", "ReqBody"),
                                 ("ReqUnset", "Transfer-Encoding: chunked"), ("ReqHeader", "Content-Length: 3"),
                                 ("ReqUnset", "Transfer-Encoding: chunked"), ("ReqHeader", "Content-Length: 3"),
                                 ("ReqHeader", "cached: true")]
        assert in_recv(1003) == [("Storage", "malloc Transient"), ("Timestamp", "ReqBody"),
                                 ("ReqHeader", "cached: true")]
        # too big, as its Content-Length says: not read at all; chunked: read up to the limit
        assert in_recv(1004) == [("FetchError", "Request body too big to cache"), ("ReqHeader", "cached: false")]
        assert [x for v, t, x in log if v == 1004 and t == "ReqAcct"] == ["48 0 48 0 0 0"]   # (Host: h)
        assert in_recv(1006) == [("Storage", "malloc Transient"), ("FetchError", "Request body too big to cache"),
                                 ("Timestamp", "ReqBody"), ("ReqHeader", "cached: false")]
        n = len(chunked_head)
        assert [x for v, t, x in log if v == 1006 and t == "ReqAcct"] == [f"{n} 4 {n + 4} 0 0 0"]
        assert [x.split()[0] for v, t, x in log if v in (1000, 1005) and t == "SessClose"] == ["RX_BODY"] * 2
        # each cached body's Transient storage was given back when its request ended
        transient = srv.server.storage.stevedores[TRANSIENT]
        wait_for(lambda: transient.bytes == 0 and transient.allocs == 0, what="Transient empty again")
    finally:
        backend.close()


def test_a_request_body_the_backend_does_not_take_stops_the_client_s_reads(start):
    """Flow control: a body sent on to a backend that does not read piles up only to the body's high
    water mark, then the connection stops reading the client; it reads again as the backend takes it."""
    import threading

    size = 16 << 20
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)    # no autotuned window
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    srv = start(f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{listener.getsockname()[1]}"; }}\n'
                'sub vcl_recv { return (pass); }\n', timeout_idle="30")
    got = bytearray()
    client = srv.connect()
    sender = threading.Thread(target=lambda: client.sendall(
        b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size), daemon=True)
    try:
        sender.start()
        conn, _ = listener.accept()
        conn.settimeout(10)
        (session,) = srv.server.sessions

        states = []

        def paused():
            states.append(srv.call(_reading(session)))
            return not states[-1][0]

        wait_for(paused, timeout=5, what="the client's reads paused")
        _, held, received = states[-1]
        assert held < 1 << 20 and received < size      # bounded: the rest waits in the client's socket
        while True:                       # the backend takes it all now
            got += conn.recv(1 << 20)
            if len(got) >= size and got.endswith(b"x" * 16):
                head, _, body = bytes(got).partition(b"\r\n\r\n")
                if len(body) == size:
                    break
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        sender.join(10)
        assert read_response(client)[1] == b"ok"
        assert body == b"x" * size
    finally:
        client.close()
        listener.close()


async def _reading(session) -> tuple[bool, int, int]:
    """Whether the connection reads, the body bytes it holds, the body bytes it received."""
    body = session.current.body
    return session.transport.is_reading(), body._held, body.received


def test_bytes_read_while_a_request_waits_are_held_up_to_a_bound():
    """While a request waits for its backend, what the client pipelines after it is held unparsed, to
    256 KB: then the connection stops reading; once the request is done, all of it is answered in order."""
    from cacheserver.protocol import ClientProtocol
    from cacheserver.server import Server

    one = b"GET /%04d HTTP/1.1\r\nHost: a\r\nX: %s\r\n\r\n"
    reqs = [one % (i, b"p" * (1024 - len(one % (i, b"")))) for i in range(320)]
    assert all(len(r) == 1024 for r in reqs)

    async def main():
        release = asyncio.Event()

        async def backend(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
            await writer.drain()
            await reader.read()

        listener = await asyncio.start_server(backend, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        srv = Server()
        srv.vsl = RecordingLog()
        srv.vcl_load("boot", f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{port}"; }}\n'
                             'sub vcl_recv { if (req.url == "/slow") { return (pass); }\n'
                             ' return (synth(200, req.method + " " + req.url)); }\n', "<inline>")
        conn = ClientProtocol(srv)
        sink = MemoryTransport()
        conn.connection_made(sink)
        conn.data_received(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.busy
        states = []
        for n in range(5):                  # five reads of 64 KB: held, the reads stop past 256 KB
            conn.data_received(b"".join(reqs[64 * n:64 * n + 64]))
            states.append((conn.held_size, sink.reading))
        release.set()
        deadline = time.monotonic() + 10
        while len(status_lines(bytes(sink.out))) < 321 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        conn.connection_lost(None)
        listener.close()
        return states, bytes(sink.out), sink.reading

    states, out, reading = asyncio.run(main())
    kb = 1024
    assert states == [(64 * kb, True), (128 * kb, True), (192 * kb, True), (256 * kb, True), (320 * kb, False)]
    assert status_lines(out) == [b"HTTP/1.1 200 OK"] + [b"HTTP/1.1 200 GET /%04d" % i for i in range(320)]
    assert reading                          # reading again once the held bytes were parsed


@pytest.mark.parametrize("before", [b"", b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"], ids=["first", "second"])
def test_a_stolen_request_hands_over_the_requests_pipelined_after_it(start, before):
    """The program gets exactly the bytes read past the stolen request, whole requests pipelined in
    the same read included (and nothing of the ones before it, answered first)."""
    srv = start(STEAL)
    after = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"
    with srv.connect() as sock:
        sock.sendall(before + b"GET /steal/echo HTTP/1.1\r\nHost: a\r\n\r\n" + after)
        sock.settimeout(10)
        got = b""
        while not got.endswith(after):
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        if before:
            assert got.startswith(b"HTTP/1.1 200 plain\r\n") and got.count(b"HTTP/1.1 200") == 1
            got = got[got.index(b"GET /next"):]
        assert got == after
        wait_for(lambda: srv.server.counters.steal_ok == 1, what="the steal counted")


@pytest.mark.parametrize("chunks, error", [
    ((b"zz\r\n",), "chunked header non-hex"),
    ((b"2\r\nab\r\n", b"zz\r\n"), "chunked header non-hex"),       # in a later read
    ((b"2\r\nabX\r\n",), "chunked tail no NL"),
    ((b"12345678901234567890\r\n",), "chunked header too long"),
    ((b"8000000000000000\r\nab",), "bogusly large chunk size"),      # llhttp takes it (64 bits)
])
def test_a_broken_chunk_fails_the_body_and_is_no_bad_request(chunks, error):
    """varnishd 7.1 (varnishtest -v, std.cache_req_body(10KB)): a bad chunk in a request body is a
    FetchError in the words of its chunked reader; no 400 (client_req_400 stays 0), no answer, and the
    connection closes as RX_BODY."""
    vcl = ('vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv {\n'
           ' set req.http.cached = std.cache_req_body(10KB);\n return (synth(200, "got " + req.http.cached)); }\n')
    head = b"POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv, sink = drive(vcl, head + chunks[0], *chunks[1:])
    assert sink.out == b"" and sink.closed and srv.vsl.texts("FetchError") == [error]
    c = srv.counters
    assert (c.client_req, c.client_req_400, c.sc_rx_body, c.sc_rx_junk) == (1, 0, 1, 0)
    assert [t.split()[0] for t in srv.vsl.texts("SessClose")] == ["RX_BODY"]


def test_std_cache_req_body_that_fails_is_logged_as_varnishd():
    """varnishd 7.1 (varnishtest -v, std.cache_req_body(4MB), Transient of 1 MB): a body Transient
    cannot hold, and bodies the client cuts short, are each a FetchError in varnishd's words, then the
    ReqBody timestamp; the connection closes unanswered (RX_BODY)."""
    srv = InProcServer('vcl 4.1;\nimport std;\nbackend b none;\n'
                       'sub vcl_recv { set req.http.cached = std.cache_req_body(4MB);\n'
                       ' return (synth(200, "c " + req.http.cached)); }\n', storage=["Transient=malloc,1m"])
    try:
        _cache_req_body_fails(srv)
    finally:
        srv.stop()


def _cache_req_body_fails(srv: InProcServer) -> None:
    srv.server.set_xid(999)
    sends = [b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 2000000,
             b"POST /cut HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
             b"POST /cutc HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"]
    for data in sends:
        with srv.connect() as sock:
            sock.sendall(data)
            if b"/cut" in data:
                sock.shutdown(socket.SHUT_WR)         # the client gives up on its body
            assert read_all(sock) == b""
    wait_for(lambda: (1004, "End", "") in srv.log.records, what="the last session's End")
    log = list(srv.log.records)

    def in_recv(vxid):
        records = [(t, x.split(":")[0] if t == "Timestamp" else x) for v, t, x in log if v == vxid]
        return records[records.index(("VCL_call", "RECV")) + 1:records.index(("VCL_return", "synth"))]

    for vxid, error in ((1001, "Could not get storage"), (1003, "straight insufficient bytes"),
                        (1005, "chunked insufficient bytes")):
        assert in_recv(vxid) == [("Storage", "malloc Transient"), ("FetchError", error), ("Timestamp", "ReqBody"),
                                 ("ReqHeader", "cached: false")]
    assert [x.split()[1:3] for v, t, x in log if v in (1003, 1005) and t == "ReqAcct"] == [["3", "54"], ["2", "62"]]
    assert [x.split()[0] for v, t, x in log if t == "SessClose"] == ["RX_BODY"] * 3


def test_bytes_that_arrive_while_a_pipe_opens_go_to_the_backend_after_the_request():
    """return (pipe): what the client sends while the pipe is being opened is held, then sent on to the
    backend right after the request, as varnishd's pipe copies whatever follows the request."""
    from cacheserver.protocol import ClientProtocol
    from cacheserver.server import Server

    async def main():
        got = bytearray()
        done = asyncio.Event()

        async def backend(reader, writer):
            while not got.endswith(b"bytes, then more"):
                data = await reader.read(65536)
                if not data:
                    break
                got.extend(data)
            done.set()
            writer.close()

        listener = await asyncio.start_server(backend, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        srv = Server()
        srv.vsl = RecordingLog()
        srv.vcl_load("boot", f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{port}"; }}\n'
                             'sub vcl_recv { return (pipe); }\n', "<inline>")
        conn = ClientProtocol(srv)
        sink = MemoryTransport()
        conn.connection_made(sink)
        conn.data_received(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.busy
        conn.data_received(b"h" * 200_000)                 # before the pipe is open: held, past
        conn.data_received(b"eld bytes" * 10_000)          # 256 KB the connection stops reading
        assert conn.held_size == 290_000 and not sink.reading
        for _ in range(1000):
            if conn.pipe_to is not None:
                break
            await asyncio.sleep(0.005)
        assert sink.reading                                # the held bytes went on: reading again
        conn.data_received(b", then more")                 # once open: straight through
        await asyncio.wait_for(done.wait(), 10)
        conn.connection_lost(None)
        listener.close()
        return bytes(got)

    got = asyncio.run(main())
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"GET /p HTTP/1.1\r\n") and rest == b"h" * 200_000 + b"eld bytes" * 10_000 + b", then more"


# Sessions idle past timeout_linger go to varnishd's waiter (sess_herd); the bytes that wake one schedule
# a request task, which debug.reqpool.fail can make fail (tests/vtc/fid_reqpool_herd.vtc has varnishd
# 7.1.1's counts for the same steps).
def test_sessions_idle_past_timeout_linger_are_herded_and_a_failed_task_closes_them(start):
    srv = start(SYNC, timeout_linger="10")
    c = srv.server.counters
    srv.server.reqpool_fail = 0b10                 # debug.reqpool.fail "_F": the second attempt fails
    with srv.connect() as sock:
        for _ in range(2):                         # never idle past the linger: no attempt made
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
            assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /a"
    assert (c.sess_herd, srv.server.reqpool_fail) == (0, 0b10)
    srv.server.params.set("timeout_linger", "0.05")
    with srv.connect() as sock:
        sock.sendall(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /b"
        time.sleep(0.3)                            # past the linger (longer only makes it surer)
        sock.sendall(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /c"
        assert c.sess_herd == 1
        time.sleep(0.3)
        sock.sendall(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
        assert closed_by_server(sock)              # the second attempt failed: nothing read
    wait_for(lambda: c.sc_overload == 1, what="the OVERLOAD close")
    assert (c.sess_herd, c.sess_closed_err, c.client_req) == (2, 1, 4)
    assert srv.server.reqpool_fail == 0
    assert [t.split()[0] for t in srv.log.texts("SessClose")][-1] == "OVERLOAD"
    assert "Failing due to reqpoolfail (next= 0x0)" in srv.log.texts("Debug")


def test_a_session_that_sends_while_its_request_runs_is_not_herded(start):
    # the worker has the session while a request runs (a slow fetch here): bytes it receives then, a
    # pipelined request, wake nothing from the waiter, however long the session has been busy
    backend = Backend(lambda req: Resp(body=b"slow", delay=0.4))
    try:
        srv = start(f'vcl 4.1;\nbackend b {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n'
                    "sub vcl_recv { return (pass); }\n", timeout_linger="0.05")
        c = srv.server.counters
        srv.server.reqpool_fail = 1                # a herd would also fail: the session would close
        with srv.connect() as sock:
            sock.sendall(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: len(backend.requests) == 1, what="the fetch")
            time.sleep(0.1)                        # busy past the linger
            sock.sendall(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
            assert [status(read_response(sock)[0]) for _ in range(2)] == [b"HTTP/1.1 200 X"] * 2
        assert (c.sess_herd, c.sc_overload, srv.server.reqpool_fail) == (0, 0, 1)
    finally:
        backend.close()


def test_a_head_begun_before_the_linger_is_not_herded_and_a_failed_herd_reads_nothing(start):
    """varnishd 7.1 (varnishtest): a session waits in the waiter only with nothing begun; a head (or a
    method) begun, then 0.3 s of silence past timeout_linger, then its end: answered, sess_herd 0. A
    herded session whose request task fails (debug.reqpool.fail) reads nothing: junk it sent is no 400."""
    srv = start(SYNC, timeout_linger="0.05")
    c = srv.server.counters
    srv.server.reqpool_fail = 1                    # a herd's task would fail: the session would close
    with srv.connect() as sock:
        for first, rest, answer in ((b"GET / HTTP/1.1\r\nHost: a", b"\r\n\r\n", b"GET /"),
                                    (b"XYZ", b"ZY / HTTP/1.1\r\nHost: a\r\n\r\n", b"XYZZY /")):
            sock.sendall(first)
            time.sleep(0.3)
            sock.sendall(rest)
            assert status(read_response(sock)[0]) == b"HTTP/1.1 200 " + answer
    assert (c.sess_herd, c.sc_overload, srv.server.reqpool_fail) == (0, 0, 1)
    with srv.connect() as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /a"
        time.sleep(0.3)
        sock.sendall(b"bad\x01 / HTTP/1.1\r\n\r\n")
        assert read_all(sock) == b""
    wait_for(lambda: c.sc_overload == 1, what="the OVERLOAD close")
    assert (c.sess_herd, c.client_req_400, c.sc_rx_junk) == (1, 0, 0)


def test_a_chunked_body_cut_by_a_lost_connection_mid_chunk_and_the_session_is_forgotten(start):
    """varnishd 7.1 (varnishtest -v, std.cache_req_body): a client gone in the middle of a chunk's data
    fails the body as "chunked insufficient bytes" (its chunked reader's words for a read that gets
    nothing there), RX_BODY; here the connection is lost with no EOF first (a reset). And a session
    gone is forgotten by the server (no set of dead sessions that grows)."""
    def lost(conn):
        conn.connection_lost(ConnectionResetError())
        return asyncio.sleep(0.05)                 # the request reading the body sees it fail

    srv, sink = drive(ECHO, b"POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", lost)
    assert srv.vsl.texts("FetchError") == ["chunked insufficient bytes"] and sink.out == b""
    assert srv.counters.sc_rx_body == 1 and not srv.sessions
    live = start()
    with live.connect() as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status(read_response(sock)[0]) == b"HTTP/1.1 200 GET /a"
        assert len(live.server.sessions) == 1
    wait_for(lambda: not live.server.sessions, what="no session left")


def test_a_bare_lf_head_after_a_whole_request_in_the_same_read():
    """varnishd 7.1 (varnishtest): a request and a bare-LF one in one read: both answered, once each."""
    srv, sink = drive(SYNC, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\nHost: a\n\n",
                      b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /1", b"HTTP/1.1 200 GET /2", b"HTTP/1.1 200 GET /3"]


@pytest.mark.parametrize("chunk", [b"8000000000000000\r\nab", b"zz\r\n"], ids=["bogusly-large", "non-hex"])
def test_a_bad_chunk_in_a_body_no_one_reads_closes_after_the_answer_as_rx_body(chunk):
    """varnishd 7.1 (varnishtest): a synth answer to a request whose chunked body goes bad (a size llhttp
    takes but varnishd refuses, or no hex at all): the answer, then the close, counted in sc_rx_body;
    the request after it is not read, and no 400. (varnishd's answer also says Connection: close; ours
    says keep-alive: left, see notes/proto.md.)"""
    srv, sink = drive(SYNC, b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
                      b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 POST /b"] and sink.closed
    c = srv.counters
    assert (c.client_req, c.client_req_400, c.sc_rx_body, c.sc_rem_close) == (1, 0, 1, 0)
    assert [t.split()[0] for t in srv.vsl.texts("SessClose")] == ["RX_BODY"]


def test_a_client_that_stops_reading_twice_is_answered_as_it_reads_and_its_close_is_logged():
    """Three requests in one read to a client that is not reading: the first answer is written, then
    nothing until it reads; it reads one more answer and stops again. The third waits; when the client
    goes, the session's close is still counted and logged (its idle time is kept through the stalls)."""
    def read_one(conn):
        write = conn.transport.write

        def write_then_stall(data):
            write(data)
            conn.pause_writing()
        conn.transport.write = write_then_stall
        conn.resume_writing()

    three = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in (1, 2, 3))
    srv, sink = drive(SYNC, lambda conn: conn.pause_writing(), three, read_one)
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 GET /1", b"HTTP/1.1 200 GET /2"] and not sink.closed
    assert [t.split()[0] for t in srv.vsl.texts("SessClose")] == ["REM_CLOSE"] and srv.counters.sc_rem_close == 1


def test_an_http10_post_needs_a_length_or_keep_alive_and_sessions_are_counted():
    """varnishd 7.1 (varnishtest): an HTTP/1.0 POST or PUT with no length is taken (no body) with
    "Connection: keep-alive" (any case), and is a 400 without it; one connection is one s_sess and one
    sess_conn; local.ip is the address the connection came in on."""
    vcl = 'vcl 4.1;\nbackend default none;\nsub vcl_recv { return (synth(200, req.method + " " + local.ip)); }\n'
    srv, sink = drive(vcl, b"POST /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
                      b"POST /b HTTP/1.0\r\nHost: a\r\n\r\n")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 POST 127.0.0.1", status(BAD_REQUEST)] and sink.closed
    c = srv.counters
    assert (c.s_sess, c.sess_conn, c.client_req_400) == (1, 1, 1)
    srv, sink = drive(vcl, b"PUT /a HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n")
    assert status_lines(bytes(sink.out)) == [b"HTTP/1.1 200 PUT 127.0.0.1"]
