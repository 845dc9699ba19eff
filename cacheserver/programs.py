"""Program processes for tinykvm.steal(): one long-lived process per program name.

`ProgramManager.steal()` hands a client socket to the program over a SEQPACKET socketpair
(SCM_RIGHTS plus a JSON header, see kvm_api/protocol.py) and waits, asynchronously, for the
program's on_connect to accept or refuse it. The event loop never blocks on a program: every wait
is async and bounded by `timeout`; a program that does not answer in time is killed (so its copy
of the socket goes) and steal() returns False. A program that dies fails its pending steals with
ProgramError and is started again by the next steal().

Program output (Print, tracebacks) never passes through the server: the program process gets the
server's stderr as its stdout and stderr and writes each line there itself as "<name>: <line>"
(kvm_api/output.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import kvm_api
import programs as _bundled
from cacheserver.program_config import ProgramConfig
from cacheserver.program_stats import ProgramStats
from kvm_api import protocol

log = logging.getLogger("cacheserver.programs")

BUNDLED_DIR = Path(_bundled.__file__).resolve().parent
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# The directory holding the kvm_api package, so the program process imports the same one.
_API_ROOT = str(Path(kvm_api.__file__).resolve().parent.parent)


class ProgramError(Exception):
    """A program could not be found, failed to load, died, or failed a request.

    `reason` names the failure for tinykvm.stats(): boot, crash, timeout, exception, memory,
    queue_full, queue_timeout, backoff, abandoned, not_found, error.
    """

    def __init__(self, message: str, reason: str = "error", *, recycle: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.recycle = recycle          # the process should not serve another request


class ProgramResponse:
    """A program's answer to a backend request: status, type, headers, then the body, whole or
    streamed in pieces (read() until b""). The producing process stays busy until the body ended."""

    MAX_QUEUED = 8                      # pieces held before the program's channel is paused

    def __init__(self, status: int, content_type: str, headers: list[tuple[str, str]],
                 body: bytes | None, prog: _Program | None = None) -> None:
        self.status = status
        self.content_type = content_type
        self.headers = headers
        self.streaming = body is None
        self.length = None if body is None else len(body)
        self._pieces: deque[bytes] = deque([body] if body else [])
        self._done = body is not None
        self._error: ProgramError | None = None
        self._wake: asyncio.Future | None = None
        self._prog = prog
        self.deadline: float | None = None  # loop time the whole body must have come by
        self.on_done: Callable[[ProgramError | None], None] | None = None

    # -- the producing side (the program's control channel) ----------------------------------------

    def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        self._poke()

    def finish(self, error: ProgramError | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        self._poke()
        done, self.on_done = self.on_done, None
        if done is not None:
            done(error)

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    @property
    def backlog(self) -> int:
        return len(self._pieces)

    # -- the consuming side (the fetch) ---------------------------------------------------------------

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end. ProgramError when it broke off or took
        longer than max_request_time (the process is killed then)."""
        while not self._pieces:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            loop = asyncio.get_running_loop()
            self._wake = loop.create_future()
            left = None if self.deadline is None else self.deadline - loop.time()
            try:
                async with asyncio.timeout(left):
                    await self._wake
            except TimeoutError:
                prog = self._prog
                err = ProgramError(f"program '{prog.name if prog else '?'}' did not finish its response "
                                   "within max_request_time: killed", "timeout")
                if prog is not None:
                    log.warning("%s", err)
                    prog.kill_now()
                self.finish(err)
                raise err from None
            finally:
                self._wake = None
        piece = self._pieces.popleft()
        if self._prog is not None and len(self._pieces) < self.MAX_QUEUED // 2:
            self._prog.resume()
        return piece

    async def body(self, limit: int) -> bytes:
        """The whole body; ProgramError if it is longer than `limit` bytes."""
        parts, size = [], 0
        while piece := await self.read():
            size += len(piece)
            if size > limit:
                self.close()
                raise ProgramError(f"program response longer than {limit} bytes", "exception")
            parts.append(piece)
        return b"".join(parts)

    def close(self) -> None:
        """The consumer is done; a body still coming is abandoned (its process is killed)."""
        if not self._done:
            if self._prog is not None:
                self._prog.kill_now()
            self.finish(ProgramError("response abandoned by the fetch", "abandoned"))
        self._pieces.clear()


def check_name(name: str) -> None:
    """Refuse names that could reach a path: only [A-Za-z0-9_.-], not starting with '.'."""
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(f"invalid program name {name!r}: a name has only letters, digits, "
                         "'_', '-' and '.', and does not start with '.'")


def find_program(name: str, search_dirs: Sequence[Path]) -> Path | None:
    """The first `<dir>/<name>.py` over `search_dirs`, or None; ValueError for a bad name."""
    check_name(name)
    for d in search_dirs:
        path = Path(d) / f"{name}.py"
        if path.is_file():
            return path
    return None


def default_search_dirs(vcl_file: str | Path | None) -> list[Path]:
    """Where the server looks for programs: the VCL file's directory, then the bundled programs."""
    dirs = [Path(vcl_file).resolve().parent] if vcl_file else []
    return [*dirs, BUNDLED_DIR]


def exit_words(rc: int | None) -> str:
    """How a process ended, in words: "exited (status 3)", "was killed by SIGSEGV"."""
    if rc is None:
        return "exited"
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited (status {rc})"


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for our unreaped child (None where the kernel has none: plain kill(2) then)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Program:
    """One running program process and its control channel."""

    def __init__(self, name: str, path: Path, proc: asyncio.subprocess.Process,
                 ctrl: socket.socket, stats: ProgramStats | None = None) -> None:
        self.name = name
        self.stats = stats if stats is not None else ProgramStats()
        self.stream: ProgramResponse | None = None   # the streamed response being received
        self.held = 0                   # stolen connections this process holds
        self.quiet = False              # its pool logs how it ended, not the exit watcher
        self._paused = False
        self.path = path
        self.proc = proc
        self._pidfd = _pidfd_open(proc.pid)
        self.ctrl = ctrl
        self.alive = True
        self.error: str | None = None           # the program's own "error" message, if any
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.dead: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, asyncio.Future] = {}
        self._send_lock = asyncio.Lock()         # frames of one message are never interleaved
        self._assembler = protocol.Assembler()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ctrl.fileno(), self._on_ctrl)
        self.tasks = [asyncio.create_task(self._watch_exit())]

    @classmethod
    async def start(cls, name: str, path: Path, python: str, timeout: float, *,
                    settings: dict | None = None, args: Sequence[str] = (),
                    environment: Sequence[str] = (), stats: ProgramStats | None = None) -> _Program:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ)
            env.update(item.split("=", 1) for item in environment)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_API_ROOT, env.get("PYTHONPATH")) if p)
            proc = await asyncio.create_subprocess_exec(
                # An fd closed only by the garbage collector is a leak: say so in the log.
                python, "-W", "always::ResourceWarning", "-m", "kvm_api.host", "--name", name,
                "--control-fd", str(child.fileno()), "--settings", json.dumps(settings or {}),
                str(path), *args,
                # the program writes its lines to our log stream itself (kvm_api/output.py)
                stdin=asyncio.subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                stderr=sys.stderr.fileno(), pass_fds=(child.fileno(),), env=env,
                # Its own process group: a terminal's ^C goes to the server, which ends us. The
                # server's session: the kernel's autogroup schedules us with the server, not as a
                # group of our own that every request must wake (a new session cost 2-3x the rate
                # of /tcp on a loaded machine).
                process_group=0,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()                 # the child has its copy; ours would hide its exit
        parent.setblocking(False)
        prog = cls(name, path, proc, parent, stats)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(prog.ready)
        except TimeoutError:
            await prog.kill()
            raise ProgramError(f"program '{name}' did not call wait_for_requests() "
                               f"within {timeout:g} s", "boot") from None
        except ProgramError as e:
            await prog.kill()
            e.reason = "boot"
            raise
        except BaseException:           # cancelled: no await here, but no process left behind
            prog.kill_now()
            raise
        log.info("program '%s' started (pid %d, %s)", name, proc.pid, path)
        return prog

    # -- requests ---------------------------------------------------------------------------------

    async def steal(self, sock: socket.socket, remote: str, arg: str, prebuffer: bytes,
                    timeout: float) -> bool:
        stats = self.stats
        stats.steal_started += 1
        try:
            rid, fut = self._new_request()
        except ProgramError:
            stats.steal_failed += 1
            raise
        try:
            async with asyncio.timeout(timeout):
                await self._send({"op": "steal", "id": rid, "remote": remote, "arg": arg},
                                 bytes(prebuffer), [sock.fileno()])
                accepted = bool(await asyncio.shield(fut))
        except TimeoutError:
            stats.steal_failed += 1
            log.warning("program '%s' did not answer a connection within %g s: killing it",
                        self.name, timeout)
            await self.kill()
            return False
        except BaseException:
            stats.steal_failed += 1
            raise
        finally:
            self.pending.pop(rid, None)
        if accepted:
            stats.steal_accepted += 1
            self.held += 1
        else:
            stats.steal_refused += 1
        return accepted

    async def get(self, url: str, arg: str, timeout: float) -> tuple[int, str, bytes]:
        """GET through on_get: (status, content_type, whole body)."""
        resp = await self.request({"method": "GET", "url": url, "arg": arg, "headers": []}, b"", timeout)
        return resp.status, resp.content_type, await resp.body(protocol.MAX_BODY)

    async def request(self, head: dict, body: bytes, timeout: float) -> ProgramResponse:
        """A backend request (head: method, url, arg, headers, config); the process is killed
        when it does not answer within `timeout` (its body too must come by then)."""
        rid, fut = self._new_request()
        deadline = self._loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._send({**head, "op": "request", "id": rid}, body)
                resp = await asyncio.shield(fut)
        except TimeoutError:
            self.kill_now()
            err = ProgramError(f"program '{self.name}' did not answer {head.get('method')} "
                               f"{head.get('url')} within {timeout:g} s (max_request_time): killed",
                               "timeout")
            log.warning("%s", err)
            raise err from None
        finally:
            self.pending.pop(rid, None)
        resp.deadline = deadline
        return resp

    def resume(self) -> None:
        """Read the channel again once a streamed body's backlog went down."""
        if self._paused and self.alive:
            self._paused = False
            self._loop.add_reader(self.ctrl.fileno(), self._on_ctrl)

    _ids = itertools.count(1)

    def _new_request(self) -> tuple[int, asyncio.Future]:
        if not self.alive:
            raise ProgramError(self._death_message())
        rid = next(self._ids)
        fut = self._loop.create_future()
        self.pending[rid] = fut
        return rid, fut

    async def _send(self, header: dict, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        async with self._send_lock:
            for i, frame in enumerate(protocol.encode(header, payload)):
                await self._send_frame(frame, fds if i == 0 else ())

    async def _send_frame(self, frame: bytes, fds: Sequence[int]) -> None:
        while True:
            if not self.alive:
                raise ProgramError(self._death_message())
            try:
                if fds:
                    socket.send_fds(self.ctrl, [frame], list(fds))
                else:
                    self.ctrl.send(frame)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self._died(f"program '{self.name}': control channel: {e}")
                raise ProgramError(self._death_message()) from e
            # The program is not reading: wait (async) until it does, or dies.
            writable = self._loop.create_future()
            fd = self.ctrl.fileno()
            self._loop.add_writer(fd, _resolve, writable)
            try:
                await asyncio.wait([writable, self.dead], return_when=asyncio.FIRST_COMPLETED)
            finally:
                if self.alive:
                    self._loop.remove_writer(fd)

    # -- control channel --------------------------------------------------------------------------

    def _on_ctrl(self) -> None:
        why = self._pump()
        if why is not None:
            self._died(why)

    def _pump(self) -> str | None:
        """Handle every frame waiting on the channel; a reason when it is closed or broken."""
        while True:
            try:
                frame = self.ctrl.recv(protocol.MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                return f"control channel: {e}"
            if not frame:
                return "closed its control channel"
            try:
                msg = self._assembler.feed(frame)
            except protocol.ProtocolError as e:
                log.warning("program '%s': bad control message: %s", self.name, e)
                continue
            if msg is not None:
                self._handle(msg[0], msg[1])

    def _handle(self, header: dict, payload: bytes) -> None:
        op = header.get("op")
        if op == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if op == "error":
            self.error = str(header.get("message", "unknown error"))
            return
        if op == "closed":              # a stolen connection the program held is closed
            self.held -= 1
            reason = str(header.get("reason", "Error"))
            self.stats.steal_closed[reason] = self.stats.steal_closed.get(reason, 0) + 1
            return
        if op in ("chunk", "end"):
            stream = self.stream
            if stream is None:
                return
            if op == "chunk":
                stream.feed(payload)
                if stream.backlog >= ProgramResponse.MAX_QUEUED and not self._paused:
                    self._paused = True     # the fetch is slower than the program: stop reading
                    self._loop.remove_reader(self.ctrl.fileno())
            else:
                self.stream = None
                err = header.get("error")
                stream.finish(None if err is None else ProgramError(
                    f"program '{self.name}': {err}", "memory" if header.get("recycle") else "exception",
                    recycle=bool(header.get("recycle"))))
            return
        fut = self.pending.get(header.get("id"))
        if fut is None or fut.done():
            return                      # an answer after we gave up on it
        if op == "reply":
            fut.set_result(bool(header.get("accepted")))
        elif op == "response":
            if "error" in header:
                recycle = bool(header.get("recycle"))
                fut.set_exception(ProgramError(f"program '{self.name}': {header['error']}",
                                               "memory" if recycle else "exception", recycle=recycle))
                return
            headers = [(str(n), str(v)) for n, v in header.get("headers", [])]
            resp = ProgramResponse(int(header.get("status", 500)), str(header.get("content_type", "")),
                                   headers, None if header.get("stream") else payload, self)
            if resp.streaming:
                self.stream = resp
            fut.set_result(resp)

    # -- life and death ---------------------------------------------------------------------------

    def _death_message(self) -> str:
        if self.error:
            return self.error
        return f"program '{self.name}' {exit_words(self.proc.returncode)}"

    def _died(self, why: str) -> None:
        """Mark dead (idempotent): stop reading the channel, fail everything that waits on it."""
        if not self.alive:
            return
        self._pump()                    # an "error" message may still be waiting: it says why
        self.alive = False
        log.debug("program '%s': %s", self.name, why)
        self._loop.remove_reader(self.ctrl.fileno())
        self._loop.remove_writer(self.ctrl.fileno())
        self.ctrl.close()
        self.dead.set_result(None)
        if self.held:                   # the kernel closed what a dead program held
            self.stats.steal_closed["Died"] = self.stats.steal_closed.get("Died", 0) + self.held
            self.held = 0
        if self.stream is not None:
            self.stream.finish(ProgramError(self._death_message(), "crash"))
            self.stream = None
        # Retrieved at once (.exception()): a waiter that already gave up must not log a warning.
        for fut in [self.ready, *self.pending.values()]:
            if not fut.done():
                fut.set_exception(ProgramError(self._death_message(), "crash"))
                fut.exception()

    async def _watch_exit(self) -> None:
        try:
            rc = await self.proc.wait()
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        if self.alive and not self.quiet:
            level = logging.INFO if rc == 0 else logging.WARNING
            log.log(level, "program '%s' (pid %d) %s", self.name, self.proc.pid, exit_words(rc))
        self._died(exit_words(rc))

    def kill_now(self) -> None:
        """SIGKILL without waiting (the exit watcher reaps the process)."""
        self._died("killed")
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        """Signal the process without reaping it. Popen.send_signal() (proc.kill(), proc.terminate())
        polls first: a process that just died is reaped there, out from under asyncio's child watcher,
        which then reports exit status 255 instead of the signal that killed it."""
        if self.proc.returncode is not None:
            return
        try:
            if self._pidfd is not None:       # a pidfd cannot hit a recycled pid
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    async def kill(self) -> None:
        """SIGKILL now; wait for the process and its output."""
        self.kill_now()
        await self._reap(grace=2.0)

    async def terminate(self, grace: float) -> None:
        """Close the channel and SIGTERM; SIGKILL if the process still runs after `grace` s."""
        self._died("stopped")
        if self.proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)
            except TimeoutError:
                log.warning("program '%s' ignored SIGTERM: killing it", self.name)
                self._signal(signal.SIGKILL)
        await self._reap(grace=5.0)

    async def _reap(self, grace: float) -> None:
        done, pending = await asyncio.wait(self.tasks, timeout=grace)
        for t in pending:               # e.g. a grandchild holds the output pipe open
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                log.warning("program '%s': %r", self.name, t.exception())


class ProgramManager:
    """Starts, feeds and stops the program processes of one server.

    Each program has one process for steal() (its stolen connections live there) and a pool of up
    to `concurrency` processes for backend requests (cacheserver.program_pool), started on demand.
    Definitions come from tinykvm.library() / configure() (cacheserver.program_config); a program
    nobody defined is `<name>.py` in the search directories, with the default settings.
    """

    def __init__(self, search_dirs: Sequence[str | Path] = (BUNDLED_DIR,), *, timeout: float = 5.0,
                 load_timeout: float = 10.0, python: str = sys.executable) -> None:
        self.search_dirs = [Path(d) for d in search_dirs]   # the server may replace it on VCL load
        self.timeout = timeout              # for on_connect to answer
        self.load_timeout = load_timeout    # for a new process to reach wait_for_requests()
        self.python = python
        self.configs: dict[str, ProgramConfig] = {}
        self.groups: dict[str, dict] = {}
        self.stats: dict[str, ProgramStats] = {}
        self._programs: dict[str, _Program] = {}
        self._pools: dict[str, WorkerPool] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending_starts: list[tuple[str, bool]] = []
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # -- definitions -------------------------------------------------------------------------------

    def config(self, name: str) -> ProgramConfig:
        cfg = self.configs.get(name)
        return cfg if cfg is not None else ProgramConfig(name)

    def define(self, cfg: ProgramConfig) -> None:
        check_name(cfg.name)
        self.configs[cfg.name] = cfg

    def path_of(self, cfg: ProgramConfig) -> Path:
        """The program file: its `filename`, else <name>.py in the search directories."""
        if cfg.filename is not None:
            if not cfg.filename.is_file():
                raise ProgramError(f"program '{cfg.name}': no file {cfg.filename}", "not_found")
            return cfg.filename
        try:
            path = find_program(cfg.name, self.search_dirs)
        except ValueError as e:
            raise ProgramError(str(e), "not_found") from None
        if path is None:
            where = ", ".join(str(d) for d in self.search_dirs) or "no directory"
            raise ProgramError(f"program '{cfg.name}' not found ({cfg.name}.py in {where})", "not_found")
        return path

    def exists(self, name: str) -> bool:
        try:
            self.path_of(self.config(name))
        except ProgramError:
            return False
        return True

    def serving(self, name: str) -> bool:
        """Program `name` has backend processes now (so its file was found)."""
        pool = self._pools.get(name)
        return pool is not None and bool(pool.workers)

    def stealing(self, name: str) -> bool:
        """Program `name` has its steal() process running now (so its file was found)."""
        prog = self._programs.get(name)
        return prog is not None and prog.alive

    def stats_for(self, name: str) -> ProgramStats:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = ProgramStats()
        return st

    async def spawn(self, name: str, cfg: ProgramConfig | None = None, path: Path | None = None) -> _Program:
        """Start one process of program `name` under its settings (ProgramError if it fails)."""
        if self._closed:
            raise ProgramError("the program manager is closed")
        cfg = cfg or self.config(name)
        path = path or self.path_of(cfg)
        prog = await _Program.start(
            name, path, self.python, cfg.max_boot_time or self.load_timeout, settings=cfg.settings(),
            args=[name, cfg.group, *cfg.main_arguments], environment=cfg.environment,
            stats=self.stats_for(name))
        if self._closed:                # close() ran while we started it
            await prog.terminate(grace=1.0)
            raise ProgramError("the program manager is closed")
        return prog

    # -- steal() -----------------------------------------------------------------------------------

    async def _get(self, name: str) -> _Program:
        if self._closed:
            raise ProgramError("the program manager is closed")
        cfg = self.config(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:                # two first steals start one process
            prog = self._programs.get(name)
            if prog is not None and prog.alive:
                return prog
            if prog is not None:
                await prog.kill()       # reap the dead one before its successor starts
            prog = await self.spawn(name, cfg)
            self._programs[name] = prog
            return prog

    async def steal(self, name: str, sock: socket.socket, remote: str, arg: str,
                    prebuffer: bytes = b"") -> bool:
        """Hand `sock` to program `name`; True when its on_connect accepted the connection.

        True: the program owns the connection; the caller closes its own copy of `sock`.
        False: refused, or no answer within `timeout` (the program was killed); the caller keeps
        the connection. Raises ProgramError when the program cannot be found or loaded, or died
        while this steal was pending (the next steal starts it again).
        """
        prog = await self._get(name)
        return await prog.steal(sock, remote, arg, prebuffer, self.timeout)

    async def backend_get(self, name: str, url: str, arg: str = "") -> tuple[int, str, bytes]:
        """GET through the on_get of the steal process (it sees that process's connections)."""
        prog = await self._get(name)
        return await prog.get(url, arg, self.timeout)

    # -- backend requests --------------------------------------------------------------------------

    def pool(self, name: str) -> WorkerPool:
        pool = self._pools.get(name)
        if pool is None or pool.closed:
            pool = self._pools[name] = WorkerPool(self, name)
        return pool

    async def request(self, name: str, method: str = "GET", url: str = "", arg: str = "",
                      headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                      config: str = "") -> ProgramResponse:
        """A backend request to program `name` (ProgramError, with a reason, when it fails)."""
        if self._closed:
            raise ProgramError("the program manager is closed")
        if not self.serving(name):
            self.path_of(self.config(name))      # not found: a clear error before any queueing
        head = {"method": method, "url": url, "arg": arg, "headers": [list(h) for h in headers],
                "config": config}
        return await self.pool(name).request(head, body)

    # -- start(), invalidate_programs(), live update -----------------------------------------------

    def start_later(self, name: str, wait: bool) -> None:
        """tinykvm.start(): the first process starts with the server (before it serves if `wait`),
        or now in the background when the server already runs."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._pending_starts.append((name, wait))
            return
        self._background(self._start_one(name))

    async def start_pending(self) -> None:
        """Run the start()s VCL asked for before the event loop ran."""
        pending, self._pending_starts = self._pending_starts, []
        waits = [self._start_one(n) for n, wait in pending if wait]
        for name, wait in pending:
            if not wait:
                self._background(self._start_one(name))
        await asyncio.gather(*waits)

    async def _start_one(self, name: str) -> None:
        try:
            prog = await self.spawn(name)
        except ProgramError as e:
            log.warning("tinykvm.start(%s): %s", name, e)
            return
        prog.quiet = True
        self.stats_for(name).starts += 1
        self.pool(name).add_idle(prog)

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def invalidate(self, pattern: str) -> int:
        """Unload the running programs whose name matches `pattern` (all for ""); the next request
        starts them again. Returns how many were unloaded."""
        rx = re.compile(pattern)
        names = {n for n in [*self._programs, *self._pools] if rx.search(n)}
        count = 0
        for name in sorted(names):
            prog = self._programs.pop(name, None)
            pool = self._pools.pop(name, None)
            if (prog is not None and prog.alive) or (pool is not None and pool.workers):
                count += 1
            if prog is not None:
                self._background(prog.terminate(grace=1.0))
            if pool is not None:
                self._background(pool.close(grace=1.0))
        return count

    async def live_update(self, name: str, path: Path) -> None:
        """Swap program `name` for the file `path`: a process of the new file must start first;
        if it does not, the old program stays and ProgramError says why."""
        cfg = replace(self.config(name), filename=Path(path).resolve())
        prog = await self.spawn(name, cfg)
        self.configs[name] = cfg
        self.invalidate("^" + re.escape(name) + "$")
        prog.quiet = True
        self.stats_for(name).starts += 1
        self.pool(name).add_idle(prog)
        log.info("program '%s' updated from %s", name, path)

    # -- state -------------------------------------------------------------------------------------

    def stats_json(self, pattern: str = "", indentation: int = -1) -> str:
        """tinykvm.stats(): JSON per loaded program whose name matches `pattern`."""
        rx = re.compile(pattern)
        out = {}
        for name in sorted(self.stats):
            if not rx.search(name):
                continue
            procs = [p for p in [self._programs.get(name)] if p is not None and p.alive]
            pool = self._pools.get(name)
            if pool is not None:
                procs += [w for w in pool.workers if w.alive]
            held = sum(p.held for p in procs)
            memory = sum(_rss(p.proc.pid) for p in procs)
            out[name] = self.stats[name].as_dict(memory, held)
        if indentation < 0:
            return json.dumps(out, separators=(",", ":"))
        return json.dumps(out, indent=indentation)

    def pid(self, name: str) -> int | None:
        """The pid of program `name`'s steal process while it runs, else None."""
        prog = self._programs.get(name)
        return prog.proc.pid if prog is not None and prog.alive else None

    def running(self) -> dict[str, int]:
        """{name: pid} of every running steal process."""
        return {n: p.proc.pid for n, p in self._programs.items() if p.alive}

    def backend_pids(self, name: str) -> list[int]:
        """The pids of program `name`'s backend processes."""
        pool = self._pools.get(name)
        return pool.pids() if pool is not None else []

    async def close(self, grace: float = 1.0) -> None:
        """End every program process (SIGTERM, then SIGKILL after `grace` s) and wait for them."""
        self._closed = True
        progs, self._programs = list(self._programs.values()), {}
        pools, self._pools = list(self._pools.values()), {}
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(p.terminate(grace) for p in progs), *(p.close(grace) for p in pools),
                             *tasks, return_exceptions=True)


def _rss(pid: int) -> int:
    """Resident memory of a process in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


from cacheserver.program_pool import WorkerPool  # noqa: E402  (it imports this module)
