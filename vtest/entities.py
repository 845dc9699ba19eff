"""server sNAME / client cNAME: threads that run a spec over their connections."""
from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import TestFailure
from .http import Http, _close
from .log import EntityLog

if TYPE_CHECKING:
    from .context import TestContext


class _Cancelled(Exception):
    """A server thread that outlived its run (after -break) leaves quietly."""


def _quiet_cancel(fn: Callable[[], None]) -> None:
    try:
        fn()
    except _Cancelled:
        pass


def parse_sockaddr(text: str) -> tuple[str, int] | str:
    """"IP PORT", "IP:PORT", "[v6]:PORT" or "/unix/path"."""
    text = text.strip()
    if text.startswith("/"):
        return text
    parts = text.split()
    if len(parts) == 2:
        host, port = parts
    elif len(parts) == 1 and text.startswith("["):
        host, _, port = text[1:].partition("]:")
    elif len(parts) == 1 and text.count(":") == 1:
        host, port = text.split(":")
    elif len(parts) == 1:
        host, port = text, "0"
    else:
        raise TestFailure(f"Bad socket address: {text!r}")
    try:
        return host.strip("[]"), int(port)
    except ValueError as e:
        raise TestFailure(f"Bad port in {text!r}") from e


def connect(target: tuple[str, int] | str, timeout: float) -> socket.socket:
    if isinstance(target, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(target)
        return s
    return socket.create_connection(target, timeout=timeout)


class Entity:
    prefix = "?"

    def __init__(self, ctx: TestContext, name: str) -> None:
        if not name.startswith(self.prefix):
            raise TestFailure(f"{type(self).__name__} name must start with '{self.prefix}' (got {name})")
        self.ctx = ctx
        self.name = name
        self.log = EntityLog(ctx.log, name)
        self.spec = ""
        self.repeat = 1
        self.keepalive = False
        self.cancelled = False
        self.thread: threading.Thread | None = None

    def wait(self) -> None:
        if self.thread is None:
            raise TestFailure(f"{self.name} not started")
        self.log(2, f"Waiting for {type(self).__name__.lower()}")
        # Poll so a failure elsewhere (os._exit) is never blocked by join.
        while self.thread.is_alive():
            self.thread.join(0.5)
        self.thread = None


class Server(Entity):
    prefix = "s"

    def __init__(self, ctx: TestContext, name: str) -> None:
        super().__init__(ctx, name)
        self.listen_spec = "127.0.0.1 0"
        self.lsock: socket.socket | None = None
        self.dispatch = False
        self.conns: list[socket.socket] = []
        self.generation = 0
        self.subs: list[Server] = []  # -dispatch: one per connection, cancelled with us

    def bind(self) -> None:
        if self.lsock is not None:
            return
        target = parse_sockaddr(self.listen_spec)
        if isinstance(target, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(target)
            addr, port = target, "-"
            self.ctx.macros.define(f"{self.name}_sock", target)
        else:
            fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(target)
            except OSError as e:
                raise TestFailure(f"Server listen address ({self.listen_spec}) cannot be resolved/bound: {e}") \
                    from e
            addr, port = s.getsockname()[:2]
            self.ctx.macros.define(f"{self.name}_sock", f"{addr} {port}")
        s.listen(100)
        self.lsock = s
        self.ctx.macros.define(f"{self.name}_addr", str(addr))
        self.ctx.macros.define(f"{self.name}_port", str(port))
        self.log(1, f"Listen on {addr} {port}")

    def accept_one(self, generation: int | None = None) -> socket.socket:
        """Accept a connection; a thread of an older run (before -break) gives up instead."""
        if generation is None:
            generation = self.generation
        while True:
            lsock = self.lsock
            if lsock is None or generation != self.generation:
                raise _Cancelled()
            r, _, _ = select.select([lsock], [], [], 0.2)
            if not r:
                continue
            if generation != self.generation:
                raise _Cancelled()
            try:
                lsock.settimeout(0.2)
                conn, _ = lsock.accept()
                conn.settimeout(None)
                break
            except (BlockingIOError, socket.timeout):
                continue
            except OSError as e:
                raise TestFailure(f"Accept failed: {e}") from e
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) if conn.family != socket.AF_UNIX else None
        self.conns.append(conn)
        self.log(3, "accepted fd %d" % conn.fileno())
        return conn

    def start(self) -> None:
        if self.thread is not None:
            raise TestFailure(f"Server {self.name} already running")
        self.bind()
        self.cancelled = False
        self.generation += 1
        gen = self.generation
        self.log(2, "Starting server")
        spec = self.spec
        run = self._dispatch if self.dispatch else self._serve
        self.thread = self.ctx.spawn(self, lambda: _quiet_cancel(lambda: run(spec, gen)))

    def _serve(self, spec: str, gen: int) -> None:
        _sessions(self, spec, lambda: self.accept_one(gen), is_client=False, closing="shutting")

    def _dispatch(self, spec: str, gen: int) -> None:
        if self.name != "s0":
            raise TestFailure("-dispatch only works on s0")
        n = 0
        while True:
            conn = self.accept_one(gen)
            n += 1
            sub = Server(self.ctx, f"s{n}")
            self.subs.append(sub)

            def one(c=conn, sub=sub) -> None:
                Http(self.ctx, sub.log, c, is_client=False, entity=sub).run(spec)
                _close(c)
            self.ctx.spawn(sub, one)

    def break_(self) -> None:
        """-break: stop the running spec but keep listening on the same address."""
        self.generation += 1
        self.cancelled = True
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()
        self.thread = None

    def cancel(self) -> None:
        """Stop the server at the end of the test: errors after this point are ignored."""
        self.generation += 1
        self.cancelled = True
        for sub in self.subs:
            sub.cancelled = True
        if self.lsock is not None:
            try:
                self.lsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.lsock.close()
            self.lsock = None
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()
        self.thread = None


class Client(Entity):
    prefix = "c"

    def __init__(self, ctx: TestContext, name: str) -> None:
        super().__init__(ctx, name)
        self.connect_spec = "${v1_sock}"
        self.proxy: tuple[int, str] | None = None

    def start(self) -> None:
        if self.thread is not None:
            raise TestFailure(f"Client {self.name} already running")
        self.log(2, "Starting client")
        # Macros are resolved now, so the client uses the addresses valid at -start.
        target_text = self.ctx.macros.expand(self.connect_spec)
        spec = self.spec
        self.thread = self.ctx.spawn(self, lambda: self._run(target_text, spec))

    def _open(self, target_text: str) -> socket.socket:
        target = parse_sockaddr(target_text)
        self.log(3, f"Connect to {target_text}")
        try:
            s = connect(target, self.ctx.timeout)
        except OSError as e:
            raise TestFailure(f"Failed to open {target_text}: {e}") from e
        if s.family != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.log(3, f"connected fd {s.fileno()} to {target_text}")
        if self.proxy is not None:
            s.sendall(proxy_header(self.proxy[0], self.proxy[1]))
        return s

    def _run(self, target_text: str, spec: str) -> None:
        _sessions(self, spec, lambda: self._open(target_text), is_client=True, closing="closing")


def _sessions(entity, spec: str, connect, *, is_client: bool, closing: str) -> None:
    """Run `spec` -repeat times, on one connection with -keepalive, else on a new one each time."""
    conn: socket.socket | None = None
    for _ in range(entity.repeat):
        if conn is None or not entity.keepalive:
            conn = connect()
        http = Http(entity.ctx, entity.log, conn, is_client=is_client, entity=entity)
        http.run(spec)
        conn = http.sock
        if not entity.keepalive and conn is not None:
            entity.log(3, "%s fd %d" % (closing, conn.fileno()))
            _close(conn)
            conn = None
    if conn is not None:
        _close(conn)


def proxy_header(version: int, text: str) -> bytes:
    """PROXY protocol header for "CLIENTIP:PORT SERVERIP:PORT"."""
    parts = text.split()
    if len(parts) != 2:
        raise TestFailure(f"-proxy{version} needs 'CLIENT:PORT SERVER:PORT', got {text!r}")
    (ca, cp), (sa, sp) = (_hostport(p) for p in parts)
    cip, sip = ipaddress.ip_address(ca), ipaddress.ip_address(sa)
    if version == 1:
        fam = "TCP4" if cip.version == 4 else "TCP6"
        return f"PROXY {fam} {cip} {sip} {cp} {sp}\r\n".encode()
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    if cip.version == 4:
        body = cip.packed + sip.packed + struct.pack("!HH", cp, sp)
        return sig + b"\x21\x11" + struct.pack("!H", len(body)) + body
    body = cip.packed + sip.packed + struct.pack("!HH", cp, sp)
    return sig + b"\x21\x21" + struct.pack("!H", len(body)) + body


def _hostport(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)
