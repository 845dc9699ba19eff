"""The backend side: connection pool, timeouts, failures, body framings, retries, directors."""

from __future__ import annotations

import gzip
import socket
import threading
import time

import pytest
from inproc import wait_for
from serverproc import memory_kb
from test_cache_support import Backend, Resp, cache_factory

make = pytest.fixture(cache_factory)


def test_backend_connections_are_kept_alive_and_reused(make):
    cache, backend = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n")
    for i in range(5):
        assert cache.get(f"/{i}")[0] == 200
    assert backend.connections == 1
    c = cache.cli.counters()
    assert c["backend_conn"] == 1 and c["backend_reuse"] == 4 and c["backend_req"] == 5


def test_no_automatic_headers_and_no_decompression(make):
    packed = gzip.compress(b"plain text" * 10)
    cache, backend = make("vcl 4.1;\nBACKEND\n",
                          lambda req: Resp(headers=[("Content-Encoding", "gzip")], body=packed))
    status, h, body = cache.get("/", headers={"Accept-Encoding": "gzip"})
    assert body == packed and h["content-encoding"] == "gzip"
    names = {n.lower() for n, _ in backend.requests[0].headers}
    assert names == {"host", "accept-encoding", "x-forwarded-for", "x-varnish"}
    assert backend.requests[0].header("Accept-Encoding") == "gzip"


@pytest.mark.parametrize("kind", ["chunked", "close", "length"])
def test_body_framings(make, kind):
    data = b"0123456789" * 1000

    def respond(req):
        if kind == "chunked":
            return Resp(chunks=[(0, data[:3000]), (0.01, data[3000:])])
        if kind == "close":
            return Resp(body=data, close=True)
        return Resp(body=data)

    cache, _ = make("vcl 4.1;\nBACKEND\n", respond)
    for _ in range(2):                       # the miss (streamed) and the hit
        status, h, body = cache.get("/")
        assert status == 200 and body == data
    c = cache.cli.counters()
    assert c["fetch_" + {"chunked": "chunked", "close": "eof", "length": "length"}[kind]] == 1


def _assert_503(cache) -> None:
    status, h, body = cache.get("/")
    assert status == 503
    assert b"Backend fetch failed" in body and h["retry-after"] == "5"


def test_refused_connection_is_503_and_the_server_keeps_serving(make):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    vcl = f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{port}"; }}\n'
    cache, _ = make(vcl)
    for _ in range(2):
        _assert_503(cache)
    c = cache.cli.counters()
    assert c["backend_fail"] == 2 and c["fetch_failed"] >= 2


@pytest.mark.parametrize("raw", [
    b"garbage\r\n\r\n",
    b"",                                                  # closed without a word
])
def test_garbage_and_resets_are_503(make, raw):
    cache, _ = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(raw=raw))
    _assert_503(cache)


def test_first_byte_timeout(make):
    vcl = """vcl 4.1;
BACKEND
sub vcl_backend_fetch { set bereq.first_byte_timeout = 0.3s; }
"""
    cache, _ = make(vcl, lambda req: Resp(delay=10, body=b"late"))    # (far past the timeout and the bound)
    t0 = time.monotonic()
    _assert_503(cache)
    assert time.monotonic() - t0 < 5


def test_between_bytes_timeout_before_delivery_is_503(make):
    vcl = """vcl 4.1;
BACKEND
sub vcl_backend_fetch { set bereq.between_bytes_timeout = 0.3s; }
sub vcl_backend_response { set beresp.do_stream = false; }
"""
    cache, _ = make(vcl, lambda req: Resp(chunks=[(0, b"a"), (10, b"b")]))    # (a late timer cannot miss it)
    _assert_503(cache)


def test_between_bytes_timeout_breaks_a_streamed_body(make):
    """Streaming (the default): the client has the head and the first chunk, then the connection
    closes with no last chunk, as varnishd 7.1.1 does (tests/vtc/r00010.vtc, checked with varnishtest)."""
    vcl = """vcl 4.1;
BACKEND
sub vcl_backend_fetch { set bereq.between_bytes_timeout = 0.3s; }
"""
    cache, _ = make(vcl, lambda req: Resp(chunks=[(0, b"a"), (10, b"b")]))    # (a late timer cannot miss it)
    data = b""
    with cache.proc.connect() as sock:
        sock.settimeout(10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head
    assert body == b"1\r\na\r\n"                 # "b" and the last chunk never come
    assert cache.cli.counters()["fetch_failed"] == 1


def test_connect_timeout_parameter(make):
    # a listener whose backlog is full does not complete new connections
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    vcl = f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{port}"; }}\n'
    cache, _ = make(vcl, None, "-p", "connect_timeout=0.3", "-p", "first_byte_timeout=0.3")
    t0 = time.monotonic()
    assert cache.get("/")[0] == 503
    assert time.monotonic() - t0 < 2
    for s in fillers:
        s.close()
    sock.close()


def test_retry_and_max_retries(make):
    vcl = """vcl 4.1;
BACKEND
sub vcl_backend_response { if (beresp.status == 500) { return (retry); } }
sub vcl_backend_error { set beresp.http.retries = bereq.retries; }
"""
    n = iter(range(100))
    cache, backend = make(vcl, lambda req: Resp(status=500 if next(n) < 2 else 200, body=b"ok"))
    status, _, body = cache.get("/a")
    assert (status, body) == (200, b"ok")
    assert len(backend.requests) == 3
    cache2, backend2 = make(vcl, lambda req: Resp(status=500))
    status, h, _ = cache2.get("/b")
    assert status == 503 and h["retries"] == "5"        # counted past max_retries, as in varnishd
    assert len(backend2.requests) == 5


def test_abandon_is_503_from_vcl_synth(make):
    vcl = "vcl 4.1;\nBACKEND\nsub vcl_backend_response { return (abandon); }\n"
    cache, _ = make(vcl)
    status, h, _ = cache.get("/")
    assert status == 503 and h["server"] == "Varnish"


def test_vcl_backend_error_can_deliver_its_own_page(make):
    vcl = """vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "9"; }
sub vcl_backend_error {
    set beresp.status = 200;
    set beresp.http.content-type = "text/plain";
    synthetic("fallback");
    return (deliver);
}
"""
    cache, _ = make(vcl)
    status, _, body = cache.get("/")
    assert (status, body) == (200, b"fallback")


def test_streaming_delivers_before_the_backend_finishes(make):
    release = threading.Event()

    def pieces():
        yield b"first part|"
        release.wait(5)
        yield b"second part"

    cache, _ = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(body_gen=pieces, length=22))
    with cache.proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"first part|" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert b"second part" not in data
        release.set()
        while not data.endswith(b"second part"):
            data += sock.recv(65536)


@pytest.mark.parametrize("mode", ["pass", "uncacheable"])
def test_a_large_body_streams_through_with_bounded_memory(make, mode):
    size = 1 << 28          # four times the bound below: a body held whole would show
    block = b"z" * (1 << 20)

    def pieces():
        for _ in range(size // len(block)):
            yield block

    vcl = "vcl 4.1;\nBACKEND\n" + (
        "sub vcl_recv { return (pass); }\n" if mode == "pass"
        else "sub vcl_backend_response { set beresp.uncacheable = true; return (deliver); }\n")
    cache, _ = make(vcl, lambda req: Resp(body_gen=pieces, length=size))
    before = memory_kb(cache.proc.proc.pid)
    peak = before
    with cache.proc.connect() as sock:
        sock.settimeout(60)             # a bound on a stall, not on the machine's speed
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        got = len(head.split(b"\r\n\r\n", 1)[1])
        n = 0
        while got < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            got += len(chunk)
            n += 1
            if n % 64 == 0:
                peak = max(peak, memory_kb(cache.proc.proc.pid))
    assert got == size
    assert peak - before < 64 * 1024, (before, peak)


def test_cacheable_object_bigger_than_storage_is_delivered_not_kept(make):
    body = b"q" * (3 << 20)
    cache, backend = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(body=body), "-s", "malloc,1m")
    for _ in range(2):
        assert cache.get("/huge")[2] == body
    assert len(backend.requests) == 2
    assert cache.cli.counters()["n_object"] == 0


DIRECTORS = """vcl 4.1;
import directors;
backend b1 { .host = "127.0.0.1"; .port = "P1"; }
backend b2 { .host = "127.0.0.1"; .port = "P2"; }
sub vcl_init {
    new rr = directors.round_robin();
    rr.add_backend(b1);
    rr.add_backend(b2);
    new fb = directors.fallback();
    fb.add_backend(b1);
    fb.add_backend(b2);
    new h = directors.hash();
    h.add_backend(b1, 1.0);
    h.add_backend(b2, 1.0);
    new sh = directors.shard();
    sh.add_backend(b1);
    sh.add_backend(b2);
    sh.reconfigure();
    new rnd = directors.random();
    rnd.add_backend(b1, 1.0);
    rnd.add_backend(b2, 0.0);
}
sub vcl_recv {
    if (req.url ~ "^/rr") { set req.backend_hint = rr.backend(); }
    if (req.url ~ "^/fb") { set req.backend_hint = fb.backend(); }
    if (req.url ~ "^/h") { set req.backend_hint = h.backend(req.url); }
    if (req.url ~ "^/sh") { set req.backend_hint = sh.backend(by=URL); }
    if (req.url ~ "^/rnd") { set req.backend_hint = rnd.backend(); }
    return (pass);
}
sub vcl_deliver { set resp.http.hint = req.backend_hint; }
"""


def test_directors(tmp_path):
    from test_cache_support import Cache

    b1 = Backend(lambda req: Resp(body=b"b1"))
    b2 = Backend(lambda req: Resp(body=b"b2"))
    cache = Cache(tmp_path, DIRECTORS.replace("P1", str(b1.port)).replace("P2", str(b2.port)), None)
    try:
        assert [cache.get("/rr")[2] for _ in range(4)] == [b"b1", b"b2", b"b1", b"b2"]
        assert cache.get("/rr")[1]["hint"] == "rr"
        assert {cache.get("/fb")[2] for _ in range(3)} == {b"b1"}
        for url in ("/h1", "/h2", "/sh/a", "/sh/b"):
            first = cache.get(url)[2]
            assert all(cache.get(url)[2] == first for _ in range(3))     # sticky per key
        assert {cache.get("/rnd")[2] for _ in range(5)} == {b"b1"}          # b2 has weight 0
        # health: b1 sick -> round robin and fallback use b2 only
        assert cache.cli.cmd("backend.set_health b1 sick")[0] == 200
        assert {cache.get("/rr")[2] for _ in range(4)} == {b"b2"}
        assert cache.get("/fb")[2] == b"b2"
        assert cache.cli.cmd("backend.set_health b2 sick")[0] == 200
        assert cache.get("/rr")[0] == 503
        cache.cli.cmd("backend.set_health b1 auto")
        assert cache.get("/fb")[2] == b"b1"
    finally:
        cache.stop()
        b1.close()
        b2.close()


def test_pass_fetch_stops_when_the_client_goes_away(make):
    stopped = threading.Event()

    def pieces():
        try:
            for _ in range(10_000):
                yield b"y" * 65536
                time.sleep(0.002)      # 20 s in all: far longer than the wait below
        finally:
            stopped.set()

    def respond(req):
        if req.url == "/again":
            return Resp(body=b"small")
        return Resp(body_gen=pieces, length=10_000 * 65536)

    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n", respond)
    with cache.proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536)
    # the backend's send fails once the server drops the fetch (long before 655 MB went out)
    assert stopped.wait(10)
    assert cache.get("/again")[0] == 200


def test_backend_response_limits(make):
    def respond(req):
        if req.url == "/long":
            return Resp(headers=[("X-Long", "a" * 9000)], body=b"x")
        return Resp(headers=[(f"X-H{i}", "v") for i in range(70)], body=b"x")

    cache, _ = make("vcl 4.1;\nBACKEND\n", respond)
    assert cache.get("/long")[0] == 503             # a header line over http_resp_hdr_len (8k)
    assert cache.get("/many")[0] == 503             # more than http_max_hdr (64) headers


def test_connection_close_from_vcl_ends_the_backend_connection(make):
    vcl = """vcl 4.1;
BACKEND
sub vcl_recv { return (pass); }
sub vcl_backend_fetch { if (bereq.url == "/req") { set bereq.http.connection = "close"; } }
sub vcl_backend_response { if (bereq.url == "/resp") { set beresp.http.connection = "close"; } }
"""
    cache, backend = make(vcl)
    cache.get("/keep")
    cache.get("/keep")
    assert backend.connections == 1
    cache.get("/req")                  # the request said close
    cache.get("/resp")                 # beresp said close, after the response arrived
    cache.get("/keep")
    assert backend.connections == 3
    assert cache.cli.counters()["VBE.boot.default.conn"] == 0


def test_probes_mark_a_backend_sick_and_healthy_again(tmp_path):
    state = {"up": True}
    vcl = """vcl 4.1;
backend default {
    .host = "127.0.0.1"; .port = "PORT";
    .probe = { .url = "/probe"; .interval = 0.1s; .timeout = 0.5s; .window = 3; .threshold = 2; }
}
sub vcl_recv { return (pass); }
"""

    def respond(req):
        if req.url == "/probe":
            return Resp(status=200 if state["up"] else 500)
        return Resp(body=b"served")

    from test_cache_support import Cache

    backend = Backend(respond)
    cache = Cache(tmp_path, vcl.replace("PORT", str(backend.port)), None)

    def health() -> list[str]:
        """The backend's probe and health columns of backend.list: ["3/3", "healthy"]."""
        return cache.cli.cmd("backend.list")[1].splitlines()[1].split()[2:4]

    try:
        wait_for(lambda: health() in (["2/3", "healthy"], ["3/3", "healthy"]), what="two good polls")
        assert cache.get("/")[2] == b"served"
        state["up"] = False
        wait_for(lambda: health()[1] == "sick", what="sick")
        assert cache.get("/")[0] == 503
        state["up"] = True
        wait_for(lambda: health()[1] == "healthy", what="healthy again")
        assert cache.get("/")[2] == b"served"
        assert any(r.url == "/probe" for r in backend.requests)
    finally:
        cache.stop()
        backend.close()
