"""barrier bNAME cond|sock N [-cyclic] / barrier bNAME sync."""
from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

from .errors import TestFailure
from .log import EntityLog

if TYPE_CHECKING:
    from .context import TestContext


class Barrier:
    def __init__(self, ctx: TestContext, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.cond = threading.Condition()
        self.expected = 0
        self.waiters = 0
        self.cyclic = False
        self.cycle = 0
        self.kind = ""
        self.lsock: socket.socket | None = None
        self.conns: list[socket.socket] = []

    def setup(self, kind: str, count: int, cyclic: bool) -> None:
        if self.kind:
            raise TestFailure(f"Barrier {self.name} already initialized")
        if kind not in ("cond", "sock"):
            raise TestFailure(f"Barrier {self.name}: unknown type {kind}")
        if count < 2:
            raise TestFailure(f"Barrier({self.name}) use error: wrong expectation ({count})")
        self.kind, self.expected, self.cyclic = kind, count, cyclic
        if kind == "sock":
            self._listen()

    def _listen(self) -> None:
        # VCL (vtc.barrier_sync) connects here; each connection is one waiter, released by closing it.
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        self.lsock = s
        addr, port = s.getsockname()[:2]
        self.ctx.macros.define(f"{self.name}_sock", f"{addr}:{port}")  # varnishtest's form for the vtc vmod
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        assert self.lsock is not None
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            with self.cond:
                self.conns.append(conn)
            threading.Thread(target=self._sync_conn, args=(conn,), daemon=True).start()

    def _sync_conn(self, conn: socket.socket) -> None:
        try:
            self.sync(None)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def sync(self, log: EntityLog | None) -> None:
        if not self.kind:
            raise TestFailure(f"Barrier {self.name} is not initialized")
        with self.cond:
            self.waiters += 1
            if self.waiters > self.expected:
                raise TestFailure(f"Barrier({self.name}) use error: more waiters than the {self.expected} expected")
            if log is not None:
                log(3, f"Barrier({self.name}) wait {self.waiters} of {self.expected}")
            if self.waiters == self.expected:
                self.cycle += 1
                if self.cyclic:
                    self.waiters = 0
                self.cond.notify_all()
                return
            my_cycle = self.cycle
            deadline = time.monotonic() + self.ctx.timeout
            while self.cycle == my_cycle:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestFailure(f"Barrier({self.name}) timeout")
                self.cond.wait(min(left, 1.0))
        if log is not None:
            log(3, f"Barrier({self.name}) wake")


def cmd_barrier(ctx: TestContext, log: EntityLog, av: list[str]) -> None:
    if not av:
        raise TestFailure("barrier: missing name")
    name = av[0]
    if not name.startswith("b"):
        raise TestFailure(f"Barrier name must start with 'b' ({name})")
    with ctx.macros._lock:
        b = ctx.barriers.get(name)
        if b is None:
            b = ctx.barriers[name] = Barrier(ctx, name)
    rest = av[1:]
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("cond", "sock"):
            if i + 1 >= len(rest):
                raise TestFailure(f"barrier {name}: missing count")
            cyclic = i + 2 < len(rest) and rest[i + 2] == "-cyclic"
            b.setup(a, int(rest[i + 1]), cyclic)
            i += 3 if cyclic else 2
        elif a == "sync":
            b.sync(log)
            i += 1
        else:
            raise TestFailure(f"Unknown barrier argument: {a}")
