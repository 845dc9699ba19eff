"""The processes that serve one program's backend requests, and the limits they run under.

`concurrency` processes at most, each answering one request at a time; a request finding all busy
waits in a bounded queue (`max_queue` waiting, `queue_timeout` seconds each), past which it fails
(503 for the client). A request that runs past `max_request_time` has its process killed; the
next request gets a fresh one. A process that fails to start or crashes counts toward a back-off:
after two failures in a row, starts are refused for 0.5 s, doubling up to 30 s, until one succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from cacheserver.programs import ProgramError, ProgramResponse, _Program, exit_words

if TYPE_CHECKING:
    from cacheserver.programs import ProgramManager

log = logging.getLogger("cacheserver.programs")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


class WorkerPool:
    def __init__(self, manager: ProgramManager, name: str) -> None:
        self.manager = manager
        self.name = name
        self.concurrency = manager.config(name).concurrency
        self._slots = asyncio.Semaphore(self.concurrency)
        self.queued = 0
        self.idle: list[_Program] = []
        self.workers: set[_Program] = set()
        self.failures = 0               # start failures and crashes in a row
        self.not_before = 0.0           # monotonic time before which no process is started
        self.last_error = ""
        self.lost = 0                   # processes gone that a new start replaces (a restart)
        self.closed = False

    # -- a request ---------------------------------------------------------------------------------

    async def request(self, head: dict, body: bytes) -> ProgramResponse:
        """Run one backend request; ProgramError (with its reason) when it cannot be answered."""
        cfg = self.manager.config(self.name)
        stats = self.manager.stats_for(self.name)
        stats.requests += 1
        try:
            await self._acquire(cfg)
        except ProgramError as e:
            stats.fail(e.reason)
            raise
        t0 = time.monotonic()
        worker = None
        try:
            worker = await self._take(cfg)
            resp = await worker.request(head, body, cfg.max_request_time)
        except ProgramError as e:
            self._slots.release()
            stats.request_time += time.monotonic() - t0
            stats.fail(e.reason)
            if worker is not None:
                self._finished(worker, e)
            raise
        except BaseException:
            self._slots.release()
            if worker is not None:
                worker.kill_now()
                self._drop(worker)
            raise
        if not resp.streaming:
            self._slots.release()
            stats.request_time += time.monotonic() - t0
            self._finished(worker, None)
            return resp

        def done(err: ProgramError | None) -> None:
            self._slots.release()
            stats.request_time += time.monotonic() - t0
            if err is not None:
                stats.fail(err.reason)
            self._finished(worker, err)

        resp.on_done = done
        return resp

    async def _acquire(self, cfg) -> None:
        if self._slots.locked() and self.queued >= cfg.max_queue:
            raise ProgramError(f"program '{self.name}': {self.queued} requests already wait "
                               f"(max_queue {cfg.max_queue})", "queue_full")
        self.queued += 1
        try:
            async with asyncio.timeout(cfg.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise ProgramError(f"program '{self.name}': no free process within {cfg.queue_timeout:g} s "
                               "(queue_timeout)", "queue_timeout") from None
        finally:
            self.queued -= 1

    async def _take(self, cfg) -> _Program:
        while self.idle:
            worker = self.idle.pop()
            if worker.alive:
                return worker
            self._drop(worker)
        return await self._start(cfg)

    async def _start(self, cfg) -> _Program:
        if self.closed:
            raise ProgramError("the program manager is closed", "error")
        wait = self.not_before - time.monotonic()
        if wait > 0:
            raise ProgramError(f"program '{self.name}' is backing off for {wait:.1f} s after "
                               f"{self.failures} failures ({self.last_error})", "backoff")
        stats = self.manager.stats_for(self.name)
        try:
            worker = await self.manager.spawn(self.name, cfg)
        except ProgramError as e:
            self._failed(str(e))
            log.warning("program '%s' failed to start: %s%s", self.name, e, self._backoff_words())
            raise
        stats.starts += 1
        if self.lost:
            self.lost -= 1
            stats.restarts += 1
        self.workers.add(worker)
        return worker

    def _finished(self, worker: _Program, err: ProgramError | None) -> None:
        """A request ended: the process serves again, or goes (crashed, killed, out of memory)."""
        if err is None or (worker.alive and not err.recycle and err.reason == "exception"):
            if err is None:
                self.failures = 0
                self.not_before = 0.0
            if worker.alive and not self.closed and worker in self.workers:
                self.idle.append(worker)
                return
        if err is not None and err.reason == "crash":
            self._failed(str(err))
            asyncio.get_running_loop().create_task(self._log_crash(worker, self._backoff_words()))
        worker.kill_now()
        self._drop(worker)

    async def _log_crash(self, worker: _Program, then: str) -> None:
        """One line per crash, once the exit status (the signal) is known."""
        try:
            rc = await asyncio.wait_for(asyncio.shield(worker.proc.wait()), 2.0)
        except TimeoutError:
            rc = None
        log.warning("program '%s' (pid %d) %s while serving a request%s", self.name, worker.proc.pid,
                    exit_words(rc), then)

    def _drop(self, worker: _Program) -> None:
        if worker in self.workers:
            self.workers.discard(worker)
            self.lost += 1

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if self.failures >= 2:
            delay = min(BACKOFF_FIRST * 2 ** (self.failures - 2), BACKOFF_MAX)
            self.not_before = time.monotonic() + delay

    def _backoff_words(self) -> str:
        wait = self.not_before - time.monotonic()
        return f"; next start in {wait:.1f} s" if wait > 0 else "; restarting"

    # -- the pool's life ---------------------------------------------------------------------------

    def add_idle(self, worker: _Program) -> None:
        """A process started elsewhere (start(), live update) joins the pool."""
        self.workers.add(worker)
        self.idle.append(worker)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.alive]

    async def close(self, grace: float) -> None:
        """End every process: idle ones now, busy ones are killed too (their requests fail)."""
        self.closed = True
        workers, self.workers, self.idle = list(self.workers), set(), []
        await asyncio.gather(*(w.terminate(grace) for w in workers))
