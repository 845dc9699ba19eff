"""Shared pieces of the cache tests: a scriptable backend on loopback, a server with its admin CLI.

The backend is a real TCP server (one thread per connection) that records every request and answers
with what the test's `respond(req)` returns, including slow, chunked, read-to-close and broken replies.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from serverproc import ServerProcess

from cacheserver.admin import auth_response


@dataclass
class Req:
    method: str
    url: str
    proto: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


@dataclass
class Resp:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0                   # before the status line
    chunks: list[tuple[float, bytes]] | None = None   # chunked body: (delay before, data)
    close: bool = False                  # no length: the body ends when the connection closes
    raw: bytes | None = None             # send these bytes instead
    length: int | None = None            # announce this Content-Length (default: len(body))
    body_gen: Callable[[], object] | None = None      # an iterator of body pieces (with length)
    linger: bool = False                 # stay open although the request said Connection: close


class Backend:
    def __init__(self, respond: Callable[[Req], Resp]) -> None:
        self.respond = respond
        self.requests: list[Req] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, url, proto = lines[0].split(" ", 2)
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
                req = Req(method, url, proto, headers, b"")
                length = int(req.header("Content-Length") or 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                req.body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.requests.append(req)
                resp = self.respond(req)
                if not self._answer(conn, req, resp):
                    return
                if "close" in (req.header("Connection") or "").lower() and not resp.linger:
                    return         # as real servers do (probes read to the close)
        except OSError:
            pass
        finally:
            conn.close()

    def _answer(self, conn: socket.socket, req: Req, r: Resp) -> bool:
        if r.delay:
            time.sleep(r.delay)
        if r.raw is not None:
            conn.sendall(r.raw)
            return False
        lines = [f"HTTP/1.1 {r.status} X"] + [f"{n}: {v}" for n, v in r.headers]
        if r.chunks is not None:
            lines.append("Transfer-Encoding: chunked")
        elif r.close:
            lines.append("Connection: close")
        else:
            lines.append(f"Content-Length: {r.length if r.length is not None else len(r.body)}")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if req.method == "HEAD":
            return True
        if r.chunks is not None:
            for pause, data in r.chunks:
                time.sleep(pause)
                conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            conn.sendall(b"0\r\n\r\n")
            return True
        if r.body_gen is not None:
            for piece in r.body_gen():
                conn.sendall(piece)
            return not r.close
        conn.sendall(r.body)
        return not r.close


class CLI:
    """The server's admin CLI (-T with -S secret_file): answers the 107 challenge, then commands."""

    def __init__(self, host: str, port: int, secret_file: Path) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        status, challenge = self.read()
        assert status == 107, (status, challenge)
        status, text = self.cmd("auth " + auth_response(challenge[:32], secret_file.read_bytes()))
        assert status == 200, (status, text)

    def read(self) -> tuple[int, str]:
        while b"\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, _, self.buf = self.buf.partition(b"\n")
        status, length = int(line[:3]), int(line[4:])
        while len(self.buf) < length + 1:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:length], self.buf[length + 1:]
        return status, body.decode()

    def cmd(self, text: str) -> tuple[int, str]:
        self.sock.sendall(text.encode() + b"\n")
        return self.read()

    def counters(self) -> dict[str, int]:
        status, text = self.cmd("counters.list")
        assert status == 200, text
        out = {}
        for line in text.splitlines():
            m = re.match(r"(\S+)\s+(\d+)", line)
            if m:
                out[m.group(1).removeprefix("MAIN.")] = int(m.group(2))
        return out


class Cache:
    """A cacheserver process with a VCL (BACKEND replaced by the backend's address) and its CLI."""

    def __init__(self, tmp: Path, vcl: str, backend: Backend | None, *args: str) -> None:
        port = backend.port if backend is not None else 9
        text = vcl.replace("BACKEND", f'backend default {{ .host = "127.0.0.1"; .port = "{port}"; }}')
        path = tmp / "test.vcl"
        path.write_text(text)
        secret = tmp / "cli_secret"
        secret.write_bytes(b"test secret\n")
        secret.chmod(0o600)
        self.proc = ServerProcess("-f", str(path), "-T", "127.0.0.1:0", "-S", str(secret), *args)
        line = self.proc.wait_for_output(r"Admin CLI on ")
        host, cport = line.split("Admin CLI on ")[1].split()[:2]
        self.cli = CLI(host, int(cport), secret)

    @property
    def port(self) -> int:
        return self.proc.port

    def get(self, url: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes = b"", sock: socket.socket | None = None) -> tuple[int, dict[str, str], bytes]:
        own = sock is None
        sock = sock or self.proc.connect()
        try:
            lines = [f"{method} {url} HTTP/1.1", "Host: test"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            if body:
                lines.append(f"Content-Length: {len(body)}")
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            if method == "HEAD":
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    assert chunk, data
                    data += chunk
                head, payload = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", b""
            else:
                head, payload = read_message(sock)
        finally:
            if own:
                sock.close()
        status_line, *fields = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        hdrs: dict[str, str] = {}
        for f in fields:
            n, _, v = f.partition(":")
            hdrs.setdefault(n.strip().lower(), v.strip())
        return int(status_line.split()[1]), hdrs, payload

    def stop(self) -> None:
        self.cli.sock.close()
        self.proc.stop()


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response: (head, body) framed by Content-Length, chunked encoding, or close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if status in (204, 304) or 100 <= status < 200:
        return head + b"\r\n\r\n", b""
    if m:
        length = int(m.group(1))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head + b"\r\n\r\n", rest
    if re.search(rb"\r\ntransfer-encoding:\s*chunked", head, re.IGNORECASE):
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            if size == 0:
                return head + b"\r\n\r\n", body
            body += rest[:size]
            rest = rest[size + 2:]
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return head + b"\r\n\r\n", rest
        rest += chunk


def cache_factory(tmp_path):
    """The `make` fixture: make(vcl, respond, *args) -> (Cache, Backend), stopped after the test.

    Test modules declare it with `make = pytest.fixture(cache_factory)`.
    """
    yield from caches_of(Cache, tmp_path)


def caches_of(cache_class, tmp_path):
    """make(vcl, respond, *args) -> (cache_class instance, Backend); all stopped when resumed."""
    made: list = []

    def factory(vcl: str, respond: Callable[[Req], Resp] | None = None, *args: str):
        backend = Backend(respond or (lambda req: Resp(body=b"hello")))
        cache = cache_class(tmp_path, vcl, backend, *args)
        made.append((cache, backend))
        return cache, backend

    yield factory
    for cache, backend in made:
        cache.stop()
        backend.close()
