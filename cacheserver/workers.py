"""varnishd's worker thread pools, as this server's counterpart: tasks on one event loop.

varnishd gives each client request and each backend fetch a worker thread from its pools; a herder
keeps every pool at `thread_pool_min` threads at least, breeds one when work finds none idle (up to
`thread_pool_max`), and retires threads idle for `thread_pool_timeout`. Here requests and fetches are
asyncio tasks, so there are no threads to keep, but the operator's figures keep their meaning:
`MAIN.threads` is the number of workers varnishd's rules would keep for the requests and fetches
this server actually ran at the same time (`MAIN.pools`, `threads_created`, `threads_destroyed`,
`threads_limited` with them), and `WorkThread` records (masked by default) mark each start and end.
Accounting only: a task never waits for a worker here (a loop task costs no thread stack).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cacheserver.server import Server

# How often the herder looks (varnishd's wakes when work is queued, or after thread_pool_timeout).
HERD_INTERVAL = 1.0


class WorkerPools:
    """The worker count, kept by varnishd's herder rules from the tasks in progress."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.busy = 0             # requests and fetches in progress
        self.last_use = 0.0       # the last time work started: idle workers retire timeout after it
        self._next_id = 0
        self._ids: list[int] = []   # the workers kept (MAIN.threads), by number
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Breed the minimum, then herd once a second (the child's start)."""
        self.last_use = time.monotonic()
        self.herd()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _bounds(self) -> tuple[int, int]:
        params = self.server.params
        pools = int(params.thread_pools)
        return pools * int(params.thread_pool_min), pools * int(params.thread_pool_max)

    def acquire(self) -> None:
        """A request or a fetch starts: it takes an idle worker, or one is bred for it."""
        self.busy += 1
        self.last_use = time.monotonic()
        size = len(self._ids)
        if self.busy > size:
            if size < self._bounds()[1]:
                self._breed()
            else:
                self.server.counters.threads_limited += 1

    def release(self) -> None:
        self.busy -= 1

    def herd(self) -> None:
        """Keep the minimum; retire workers above it, or above the maximum, once idle long enough."""
        lo, hi = self._bounds()
        ids = self._ids
        while len(ids) < lo:
            self._breed()
        idle_for = time.monotonic() - self.last_use
        while len(ids) > max(lo, self.busy) and (len(ids) > hi or idle_for >= self.server.params.thread_pool_timeout):
            self._retire()
        self.server.counters.pools = int(self.server.params.thread_pools)
        try:
            self._timer = asyncio.get_running_loop().call_later(HERD_INTERVAL, self.herd)
        except RuntimeError:          # no loop (a server object in a unit test): herd on demand
            self._timer = None

    def _breed(self) -> None:
        self._next_id += 1
        self._ids.append(self._next_id)
        counters = self.server.counters
        counters.threads = len(self._ids)
        counters.threads_created += 1
        self._log(self._next_id, "start")

    def _retire(self) -> None:
        ident = self._ids.pop()
        counters = self.server.counters
        counters.threads = len(self._ids)
        counters.threads_destroyed += 1
        self._log(ident, "end")

    def _log(self, ident: int, event: str) -> None:
        vsl = self.server.vsl
        if vsl.wants("WorkThread"):
            # varnishd prints the thread's address; ours is the worker's number, shaped alike
            vsl.write(0, "-", [("WorkThread", "0x%012x %s" % (ident, event))])
