"""tunnel tNAME: a TCP relay between a client and a server whose transfer the spec can pause and meter.

Spec commands: pause, send N (N bytes source -> destination while paused), recv N (destination ->
source), resume, plus barrier and delay. A spec that ends paused resumes the tunnel.
"""
from __future__ import annotations

import select
import socket
import threading
import time
from typing import TYPE_CHECKING

from .entities import Entity, connect, parse_sockaddr
from .errors import TestFailure
from .http import _close
from .parse import split_commands

if TYPE_CHECKING:
    from .context import TestContext

CHUNK = 1024


class Tunnel(Entity):
    prefix = "t"

    def __init__(self, ctx: TestContext, name: str) -> None:
        super().__init__(ctx, name)
        self.connect_spec = "${v1_sock}"
        self.listen_spec = "127.0.0.1 0"
        self.lsock: socket.socket | None = None
        self.cond = threading.Condition()
        self.state = "stopped"          # stopped, accept, running, paused, done
        self.start_paused = False
        self.work = {"send": 0, "recv": 0}  # bytes each lane may still move while paused
        self.quiet = 0                   # bumped by the relay each time it is idle while paused
        self.open = False
        self.poll_thread: threading.Thread | None = None
        self.socks: list[socket.socket] = []

    # ---- setup --------------------------------------------------------------------------
    def listen(self) -> None:
        if self.lsock is not None:
            self.lsock.close()
        host, port = parse_sockaddr(self.listen_spec)  # type: ignore[misc]
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)
        self.lsock = s
        addr, lport = s.getsockname()[:2]
        self.listen_spec = f"{addr} {lport}"  # later starts reuse the same port
        self.ctx.macros.define(f"{self.name}_addr", str(addr))
        self.ctx.macros.define(f"{self.name}_port", str(lport))
        self.ctx.macros.define(f"{self.name}_sock", f"{addr} {lport}")
        self.log(1, f"Listen on {addr} {lport}")

    def start(self, paused: bool = False) -> None:
        if self.thread is not None:
            raise TestFailure(f"Tunnel {self.name} already running")
        self.log(2, "Starting tunnel")
        self.listen()
        with self.cond:
            self.state = "accept"
            self.start_paused = paused
            self.work = {"send": 0, "recv": 0}
        spec = self.spec
        self.thread = self.ctx.spawn(self, lambda: self._run_spec(spec))

    # ---- the spec thread ----------------------------------------------------------------------
    def _run_spec(self, spec: str) -> None:
        assert self.lsock is not None
        conn, _ = self.lsock.accept()
        self.log(3, f"Accepted socket fd is {conn.fileno()}")
        target = self.ctx.macros.expand(self.connect_spec)
        try:
            dest = connect(parse_sockaddr(target), 10.0)
        except OSError as e:
            raise TestFailure(f"Failed to open {target}: {e}") from e
        self.log(3, f"Connected socket fd is {dest.fileno()}")
        self.socks = [conn, dest]
        with self.cond:
            self.open = True
            self.state = "paused" if self.start_paused else "running"
        self.poll_thread = self.ctx.spawn(self, lambda: self._relay(conn, dest))
        for cmd in split_commands(spec):
            toks = [self.ctx.macros.expand(t) for t in cmd.tokens]
            self.log(3, " ".join(toks))
            self._command(toks)
        with self.cond:
            paused = self.state == "paused"
        if paused:
            self._resume()
        with self.cond:
            self.state = "done"
            self.cond.notify_all()

    def _command(self, toks: list[str]) -> None:
        name, args = toks[0], toks[1:]
        if name == "pause" and not args:
            self._pause()
        elif name in ("send", "recv") and len(args) == 1:
            self._meter(name, int(args[0]))
        elif name == "resume" and not args:
            self._resume()
        elif name == "barrier":
            from .barrier import cmd_barrier
            cmd_barrier(self.ctx, self.log, args)
        elif name == "delay":
            from .runner import cmd_delay
            cmd_delay(self.ctx, self.log, args)
        else:
            raise TestFailure(f"Unknown tunnel spec: {' '.join(toks)}")

    def _wait_quiet(self, seen: int, what: str) -> None:
        """Wait (holding cond) until the relay has been idle since `seen` with no metered bytes left."""
        deadline = time.monotonic() + self.ctx.timeout
        while self.open and (self.quiet <= seen or self.work["send"] or self.work["recv"]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure(f"Tunnel {what}: timeout")
            self.cond.wait(min(left, 0.5))

    def _pause(self) -> None:
        with self.cond:
            if not self.open:
                raise TestFailure("Tunnel already closed")
            if self.state == "paused":
                raise TestFailure("Tunnel already paused")
            self.state = "paused"
            self._wait_quiet(self.quiet, "pause")

    def _meter(self, lane: str, n: int) -> None:
        with self.cond:
            if not self.open:
                raise TestFailure("Tunnel already closed")
            if self.state != "paused":
                raise TestFailure("Tunnel still running")
            self.work[lane] = n
            self._wait_quiet(self.quiet, lane)
            if self.work[lane]:
                raise TestFailure("Tunnel closed before the bytes were transferred")

    def _resume(self) -> None:
        with self.cond:
            if not self.open:
                raise TestFailure("Tunnel already closed")
            if self.state != "paused":
                raise TestFailure("Tunnel already running")
            self.state = "running"
            self.cond.notify_all()

    # ---- the relay thread ------------------------------------------------------------------------
    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        lanes = [("send", src, dst, "Sending"), ("recv", dst, src, "Receiving")]
        while True:
            readable, _, _ = select.select([src, dst], [], [], 0.1)
            for lane, rfd, wfd, action in lanes:
                if rfd not in readable:
                    continue
                with self.cond:
                    budget, state = self.work[lane], self.state
                if state == "paused" and budget == 0:
                    continue
                try:
                    data = rfd.recv(min(budget, CHUNK) if budget else CHUNK)
                except OSError:
                    data = b""
                if not data:
                    self._close()
                    return
                self.log(3, f"{action} {len(data)} bytes")
                try:
                    wfd.sendall(data)
                except OSError as e:
                    self._close()
                    raise TestFailure(f"Write failed: {e}") from e
                with self.cond:
                    if self.work[lane]:
                        self.work[lane] -= len(data)
            with self.cond:
                if self.state == "paused" and not self.work["send"] and not self.work["recv"]:
                    self.quiet += 1
                    self.cond.notify_all()

    def _close(self) -> None:
        with self.cond:
            self.open = False
            self.cond.notify_all()
        for s in self.socks:
            _close(s)

    # ---- -wait / end of test --------------------------------------------------------------------
    def wait(self) -> None:
        super().wait()
        t = self.poll_thread
        while t is not None and t.is_alive():
            t.join(0.5)
        self.poll_thread = None
        with self.cond:
            self.state = "stopped"

    def cancel(self) -> None:
        self.cancelled = True
        self._close()
        if self.lsock is not None:
            self.lsock.close()
            self.lsock = None
