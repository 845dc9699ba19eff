"""The bundled socket programs (programs/echo.py, programs/websocket_echo.py) behind
examples/websocket.vcl: a real cacheserver process, real program processes, real sockets, and a
soak of 10,000 stolen connections that must leave every process's fds where they were."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from polling import wait_for, wait_steady
from serverproc import ROOT, ServerProcess, read_all, read_response
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.utilities import generate_accept_token

VCL = ROOT / "examples" / "websocket.vcl"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="            # RFC 6455 1.3's sample key...
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="      # ...and the accept value it gives
ECHO_REQUEST = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
IO_TIMEOUT = 10.0


def ws_request(key: str = KEY, *, version: str = "13", method: str = "GET", upgrade: str = "websocket",
               connection: str = "keep-alive, Upgrade") -> bytes:
    return (f"{method} /ws HTTP/1.1\r\nHost: x\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\n"
            f"Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode()


# examples/websocket.vcl plus a route that shows tinykvm.stats(), for the soak's counter checks
STATS_ROUTE = '''
sub vcl_recv {
	if (req.url == "/.stats") {
		return (synth(200, "stats"));
	}
}

sub vcl_synth {
	if (resp.reason == "stats") {
		set resp.http.Content-Type = "application/json";
		set resp.body = tinykvm.stats();
		return (deliver);
	}
}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    vcl = tmp_path_factory.mktemp("ws") / "websocket_stats.vcl"
    source = VCL.read_text()
    at = source.index("sub vcl_recv")
    vcl.write_text(source[:at] + STATS_ROUTE + "\n" + source[at:])
    srv = ServerProcess("-f", str(vcl))
    yield srv
    srv.stop()


def steal_stats(port: int) -> dict[str, dict]:
    """The steal counters of tinykvm.stats(), per program."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"GET /.stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return {name: prog["steal"] for name, prog in json.loads(body).items() if "steal" in prog}


# -- blocking clients -------------------------------------------------------------------------------

def recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(IO_TIMEOUT)
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


class WsClient:
    """A client WebSocket over a blocking socket: the handshake by hand, the framing by wsproto."""

    def __init__(self, server: ServerProcess, request: bytes | None = None) -> None:
        self.sock = server.connect()
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.sendall(request or ws_request())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, head
            head += chunk
        self.head, _, rest = head.partition(b"\r\n\r\n")
        self.ws = Connection(ConnectionType.CLIENT, trailing_data=rest)
        self.pending: list = []

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def next_event(self):
        while not self.pending:
            self.pending.extend(self.ws.events())
            if self.pending:
                break
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
        return self.pending.pop(0)

    def message(self) -> str | bytes:
        """One whole message, its fragments joined."""
        parts = []
        while True:
            event = self.next_event()
            assert isinstance(event, Message), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)


# -- echo -------------------------------------------------------------------------------------------

def test_echo_returns_what_came_with_the_request_and_after_it(server):
    """Bytes read past the request head (a body, non-HTTP bytes, a pipelined request) are echoed
    first, in order; a half-close gets the rest and then the close."""
    with server.connect() as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"def\x81\x00\xff GET / HTTP/1.1\r\n\r\n")
        expected = b"abcdef\x81\x00\xff GET / HTTP/1.1\r\n\r\n"
        assert recv_exactly(sock, len(expected)) == expected
        sock.sendall(b"more")
        assert recv_exactly(sock, 4) == b"more"
        sock.sendall(b"last")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"last"
    with server.connect() as sock:              # a word that is not a method, cut by nothing
        sock.sendall(ECHO_REQUEST + b"hello")
        assert recv_exactly(sock, 5) == b"hello"
    junk = bytes(range(256)) * 1024             # more than the server parses at a time
    with server.connect() as sock:
        sock.sendall(ECHO_REQUEST + junk)
        assert recv_exactly(sock, len(junk)) == junk


def test_echo_of_a_large_payload_holds_back_a_sender_that_does_not_read(server):
    """Until the client reads, the program stops reading once its unsent output passes its high
    water mark: the client's sends stall after a few MB (the sockets' buffers), not after all of
    it. Then everything comes back, byte for byte."""
    total = 48 << 20
    block = hashlib.sha256(b"echo").digest() * 2048          # 64 KiB, not one repeated byte
    payload = block * (total // len(block))
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(ECHO_REQUEST)
        sock.setblocking(False)
        sent = 0
        while sent < total:
            try:
                sent += sock.send(payload[sent:sent + (1 << 20)])
            except BlockingIOError:
                # stalled: back-pressure holds unless the program takes more within a second
                if not select.select([], [sock], [], 1.0)[1]:
                    break
        assert sent < total // 2, f"the program kept reading: {sent} bytes taken without a read"

        received = hashlib.sha256()
        got = 0

        def writer() -> None:
            view = memoryview(payload)
            s = sent
            while s < total:
                select.select([], [sock], [], IO_TIMEOUT)
                try:
                    s += sock.send(view[s:s + (1 << 20)])
                except BlockingIOError:
                    pass

        thread = threading.Thread(target=writer)
        thread.start()
        deadline = time.monotonic() + 60
        while got < total and time.monotonic() < deadline:
            if not select.select([sock], [], [], IO_TIMEOUT)[0]:
                break
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            assert chunk, f"closed after {got} bytes"
            received.update(chunk)
            got += len(chunk)
        thread.join(IO_TIMEOUT)
        assert got == total
        assert received.digest() == hashlib.sha256(payload).digest()


# -- websocket --------------------------------------------------------------------------------------

def test_websocket_handshake_text_binary_ping_and_close(server):
    client = WsClient(server)
    lines = client.head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    assert f"Sec-WebSocket-Accept: {ACCEPT}".encode() in lines
    assert b"Upgrade: websocket" in lines and b"Connection: Upgrade" in lines
    assert generate_accept_token(KEY.encode()).decode() == ACCEPT

    client.send(TextMessage(data="héllo wörld"))
    assert client.message() == "héllo wörld"
    client.send(BytesMessage(data=b"\x00\x01\xff"))
    assert client.message() == b"\x00\x01\xff"
    # a fragmented text message, a ping between its fragments
    client.send(TextMessage(data="frag", message_finished=False))
    client.send(Ping(payload=b"are you there"))
    client.send(TextMessage(data="mented", message_finished=True))
    events = [client.next_event() for _ in range(3)]
    assert Pong(payload=b"are you there") in events
    texts = [e for e in events if isinstance(e, TextMessage)]
    assert "".join(e.data for e in texts) == "fragmented" and texts[-1].message_finished
    big = os.urandom(3 << 20)                                # more than one read, more than HIGH_WATER
    client.send(BytesMessage(data=big))
    assert client.message() == big

    client.send(CloseConnection(code=1000, reason="bye"))
    event = client.next_event()
    assert isinstance(event, CloseConnection) and (event.code, event.reason) == (1000, "bye")
    assert client.ws.state is ConnectionState.CLOSED
    assert read_all(client.sock) == b""                        # then the program closes the TCP side
    client.sock.close()


def test_websocket_frame_sent_with_the_handshake_is_echoed(server):
    frame = Connection(ConnectionType.CLIENT).send(TextMessage(data="eager"))
    client = WsClient(server, ws_request() + frame)
    assert client.head.startswith(b"HTTP/1.1 101 ")
    assert client.message() == "eager"
    client.sock.close()


@pytest.mark.parametrize("garbage, code", [
    (b"\x81\x05hello", 1002),                                  # unmasked client frame
    (b"\x8f\x80\x00\x00\x00\x00", 1002),                       # reserved opcode
    (b"\x82\xff" + b"\xff" * 12, 1002),                        # a 64-bit length with its top bit set
    (b"\x89\xfe\x00\xc8" + b"\x00" * 204, 1002),              # a ping longer than 125 bytes
])
def test_websocket_protocol_errors_get_a_close_frame_and_the_connection_ends(server, garbage, code):
    client = WsClient(server)
    client.sock.sendall(garbage)
    event = client.next_event()
    assert isinstance(event, CloseConnection) and event.code == code, event
    assert read_all(client.sock) == b""
    client.sock.close()


def test_websocket_invalid_utf8_text_is_closed_with_1007(server):
    client = WsClient(server)
    frame = bytearray(Connection(ConnectionType.CLIENT).send(TextMessage(data="ab")))
    frame[0] = 0x81
    mask, payload = frame[2:6], bytes(b ^ frame[2 + i % 4] for i, b in enumerate(b"\xc3\x28"))
    client.sock.sendall(bytes(frame[:2]) + bytes(mask) + payload)
    event = client.next_event()
    assert isinstance(event, CloseConnection) and event.code == 1007, event
    assert read_all(client.sock) == b""
    client.sock.close()


@pytest.mark.parametrize("request_bytes, status", [
    (ws_request("not-a-key"), b"400 Bad WebSocket handshake"),
    (ws_request(base64.b64encode(b"x" * 15).decode()), b"400 Bad WebSocket handshake"),
    (ws_request(version="8"), b"426 Upgrade Required"),
    (ws_request(method="POST"), b"400 Bad WebSocket handshake"),
    (ws_request(upgrade="h2c"), b"400 Bad WebSocket handshake"),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\n\r\n", b"400 Bad WebSocket handshake"),
])
def test_bad_handshakes_are_refused_and_answered_by_vcl(server, request_bytes, status):
    with server.connect() as sock:
        sock.sendall(request_bytes)
        head, _ = read_response(sock)
        assert head.startswith(b"HTTP/1.1 " + status + b"\r\n"), head
        if status.startswith(b"426"):
            assert b"\r\nSec-WebSocket-Version: 13\r\n" in head
        sock.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")    # still the server's
        assert read_response(sock)[0].startswith(b"HTTP/1.1 404 ")


# -- the soak ---------------------------------------------------------------------------------------

async def _read_until_eof(reader: asyncio.StreamReader) -> bytes:
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
    return bytes(data)


async def _ws_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Connection:
    writer.write(ws_request())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return Connection(ConnectionType.CLIENT)


async def _ws_event(reader: asyncio.StreamReader, ws: Connection):
    while True:
        for event in ws.events():
            return event
        ws.receive_data(await reader.read(65536) or None)


def _reset(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def echo_roundtrip(reader, writer, i: int) -> None:
    payload = b"%d " % i * 50
    writer.write(ECHO_REQUEST + payload)
    assert await reader.readexactly(len(payload)) == payload


async def echo_half_close(reader, writer, i: int) -> None:
    writer.write(ECHO_REQUEST + b"half %d" % i)
    writer.write_eof()
    assert await _read_until_eof(reader) == b"half %d" % i


async def echo_early_close(reader, writer, i: int) -> None:
    writer.write(ECHO_REQUEST + b"bye")          # closed at once: maybe before the steal, maybe after


async def echo_reset(reader, writer, i: int) -> None:
    writer.write(ECHO_REQUEST + b"x")
    assert await reader.readexactly(1) == b"x"
    _reset(writer)


async def ws_roundtrip(reader, writer, i: int) -> None:
    ws = await _ws_open(reader, writer)
    writer.write(ws.send(TextMessage(data=f"message {i}")))
    event = await _ws_event(reader, ws)
    assert isinstance(event, TextMessage) and event.data == f"message {i}"
    writer.write(ws.send(CloseConnection(code=1000)))
    assert isinstance(await _ws_event(reader, ws), CloseConnection)
    assert await _read_until_eof(reader) == b""


async def ws_garbage(reader, writer, i: int) -> None:
    ws = await _ws_open(reader, writer)
    writer.write(b"\x81\x05hello")                # unmasked: a protocol error
    event = await _ws_event(reader, ws)
    assert isinstance(event, CloseConnection) and event.code == 1002
    await _read_until_eof(reader)


async def ws_mid_frame(reader, writer, i: int) -> None:
    ws = await _ws_open(reader, writer)
    frame = ws.send(BytesMessage(data=b"y" * 200))
    writer.write(frame[:len(frame) // 2])         # then gone, the frame half sent


async def ws_early_close(reader, writer, i: int) -> None:
    writer.write(ws_request())                    # gone before the 101 is read


async def ws_bad_handshake(reader, writer, i: int) -> None:
    writer.write(ws_request("short"))             # refused by the program: VCL answers 400
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head


Kind = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
SOAK_KINDS: list[Kind] = [echo_roundtrip, echo_half_close, echo_early_close, echo_reset, ws_roundtrip,
                          ws_garbage, ws_mid_frame, ws_early_close, ws_bad_handshake]
# How each kind's steal ends, for checks of the steal counters: "ok" (the program took it),
# "refused" (on_connect said no: VCL answered), "ok or none" (the client may be gone before the steal).
STEAL_OUTCOME = {"echo_roundtrip": "ok", "echo_half_close": "ok", "echo_early_close": "ok or none",
                 "echo_reset": "ok", "ws_roundtrip": "ok", "ws_garbage": "ok", "ws_mid_frame": "ok",
                 "ws_early_close": "ok or none", "ws_bad_handshake": "refused"}


async def soak(port: int, count: int, concurrency: int = 64,
               kinds: list[Kind] = SOAK_KINDS) -> Counter[str]:
    """Open `count` connections, cycling through `kinds`, `concurrency` at a time; each client
    closes its socket at the end. Returns how many connections of each kind ran (all succeeded:
    a failing client raises)."""
    done: Counter[str] = Counter()
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        kind = kinds[i % len(kinds)]
        async with limit:
            async with asyncio.timeout(IO_TIMEOUT):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    await kind(reader, writer, i)
                finally:
                    writer.close()
            done[kind.__name__] += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return done


def fd_counts(server: ServerProcess) -> dict[str, int]:
    """Open fds of the server and of each program process, by name."""
    counts = {"server": server.fd_count()}
    for pid in server.children():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        name = argv[argv.index(b"--name") + 1].decode() + ".py"     # the program's name
        counts[name] = len(os.listdir(f"/proc/{pid}/fd"))
    return counts


def wait_for_fds(server: ServerProcess, expected: dict[str, int], timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while (now := fd_counts(server)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_soak_ten_thousand_stolen_connections_leave_fds_at_baseline(server):
    """echo and websocket_echo under 10,000 connections that end in every way we know (served and
    closed, half-closed, reset, gone before or during the steal, gone mid-frame, garbage, a refused
    handshake): afterwards the server and both programs hold exactly the fds they held before."""
    warm = asyncio.run(soak(server.port, len(SOAK_KINDS)))        # both programs running
    assert sum(warm.values()) == len(SOAK_KINDS)
    # the warm-up's connections closed everywhere: the programs hold none, the descriptors settled
    wait_for(lambda: not any(p["held"] for p in steal_stats(server.port).values()), what="the warm-up's closes")
    baseline = wait_steady(lambda: fd_counts(server), what="the descriptors after the warm-up")
    assert set(baseline) == {"server", "echo.py", "websocket_echo.py"}, baseline
    before = steal_stats(server.port)

    started = time.monotonic()
    done = asyncio.run(soak(server.port, 10_000))
    elapsed = time.monotonic() - started
    assert sum(done.values()) == 10_000
    assert set(done) == {k.__name__ for k in SOAK_KINDS} == set(STEAL_OUTCOME)
    assert wait_for_fds(server, baseline) == baseline
    print(f"soak: {dict(done)} in {elapsed:.1f} s")
    deadline = time.monotonic() + 10
    after = steal_stats(server.port)
    while any(p["held"] for p in after.values()) and time.monotonic() < deadline:
        time.sleep(0.05)            # the programs' reports of closed connections may still be on their way
        after = steal_stats(server.port)
    check_steal_counters(before, after, done)


def check_steal_counters(before: dict[str, dict], after: dict[str, dict], done: Counter[str]) -> None:
    """Per program, the soak's steals add up: started = accepted + refused + failed, every accepted
    connection closed (by some reason) and none held, and the outcomes those kinds of client allow."""
    for program, prefix in (("echo", "echo_"), ("websocket_echo", "ws_")):
        b, a = before[program], after[program]
        delta = {k: a[k] - b[k] for k in ("started", "accepted", "refused", "failed")}
        closed = sum(a["closed"].values()) - sum(b["closed"].values())
        assert a["held"] == 0, (program, a)
        assert delta["started"] == delta["accepted"] + delta["refused"] + delta["failed"], (program, delta)
        assert delta["accepted"] == closed, (program, delta, closed)
        assert delta["failed"] == 0, (program, delta)
        kinds = {k: n for k, n in done.items() if k.startswith(prefix)}
        sure = sum(n for k, n in kinds.items() if STEAL_OUTCOME[k] == "ok")
        maybe = sum(n for k, n in kinds.items() if STEAL_OUTCOME[k] == "ok or none")
        refused = sum(n for k, n in kinds.items() if STEAL_OUTCOME[k] == "refused")
        assert sure <= delta["accepted"] <= sure + maybe, (program, delta, kinds)
        assert delta["refused"] == refused, (program, delta, kinds)
