"""The event loop the server runs on: asyncio's, or uvloop's with CACHESERVER_LOOP=uvloop; both
serve hits and passes."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading

import pytest

from cacheserver.main import loop_factory
from tests.serverproc import ServerProcess

try:
    import uvloop
except ImportError:          # an optional extra: the uvloop cases skip
    uvloop = None


def test_default_is_asyncio(monkeypatch):
    monkeypatch.delenv("CACHESERVER_LOOP", raising=False)
    assert loop_factory() is asyncio.new_event_loop
    monkeypatch.setenv("CACHESERVER_LOOP", "asyncio")
    assert loop_factory() is asyncio.new_event_loop


def test_uvloop_on_request(monkeypatch):
    if uvloop is None:
        pytest.skip("uvloop not installed")
    monkeypatch.setenv("CACHESERVER_LOOP", "uvloop")
    assert loop_factory() is uvloop.new_event_loop


def test_uvloop_asked_for_but_missing(monkeypatch):
    monkeypatch.setenv("CACHESERVER_LOOP", "uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)       # import uvloop now raises ImportError
    with pytest.raises(SystemExit, match="not installed"):
        loop_factory()


def test_unknown_loop_is_refused(monkeypatch):
    monkeypatch.setenv("CACHESERVER_LOOP", "trio")
    with pytest.raises(SystemExit, match="expected asyncio or uvloop"):
        loop_factory()


class _Origin:
    """A tiny blocking origin: every request gets a cacheable 5-byte body and a counter bump."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                _, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello")


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serves_on_each_loop(tmp_path, loop):
    if loop == "uvloop" and uvloop is None:
        pytest.skip("uvloop not installed")
    origin = _Origin()
    vcl = tmp_path / "t.vcl"
    vcl.write_text('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "%d"; }\n'
                   'sub vcl_recv { if (req.url ~ "^/pass") { return (pass); } }\n' % origin.port)
    server = ServerProcess("-f", str(vcl), env=dict(os.environ, CACHESERVER_LOOP=loop))
    try:
        first, second = _get(server.port, "/obj"), _get(server.port, "/obj")
        assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"hello")
        assert second.endswith(b"hello") and b"\r\nAge: " in second
        assert origin.requests == 1                   # the second was a hit
        assert _get(server.port, "/pass").endswith(b"hello")
        assert origin.requests == 2
    finally:
        server.stop()
        origin.sock.close()
