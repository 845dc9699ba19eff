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
import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import kvm_api
import programs as _bundled
from kvm_api import protocol

log = logging.getLogger("cacheserver.programs")

BUNDLED_DIR = Path(_bundled.__file__).resolve().parent
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# The directory holding the kvm_api package, so the program process imports the same one.
_API_ROOT = str(Path(kvm_api.__file__).resolve().parent.parent)


class ProgramError(Exception):
    """A program could not be found, failed to load, or died while a steal was pending."""


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


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class _Program:
    """One running program process and its control channel."""

    def __init__(self, name: str, path: Path, proc: asyncio.subprocess.Process,
                 ctrl: socket.socket) -> None:
        self.name = name
        self.path = path
        self.proc = proc
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
    async def start(cls, name: str, path: Path, python: str, timeout: float) -> _Program:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_API_ROOT, env.get("PYTHONPATH")) if p)
            proc = await asyncio.create_subprocess_exec(
                # An fd closed only by the garbage collector is a leak: say so in the log.
                python, "-W", "always::ResourceWarning", "-m", "kvm_api.host", "--name", name, "--control-fd", str(child.fileno()),
                str(path),
                # the program writes its lines to our log stream itself (kvm_api/output.py)
                stdin=asyncio.subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                stderr=sys.stderr.fileno(), pass_fds=(child.fileno(),), env=env,
                start_new_session=True,   # a terminal's ^C goes to the server, which ends us
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()                 # the child has its copy; ours would hide its exit
        parent.setblocking(False)
        prog = cls(name, path, proc, parent)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(prog.ready)
        except TimeoutError:
            await prog.kill()
            raise ProgramError(f"program '{name}' did not call wait_for_requests() "
                               f"within {timeout:g} s") from None
        except ProgramError:
            await prog.kill()
            raise
        except BaseException:           # cancelled: no await here, but no process left behind
            prog.kill_now()
            raise
        log.info("program '%s' started (pid %d, %s)", name, proc.pid, path)
        return prog

    # -- requests ---------------------------------------------------------------------------------

    async def steal(self, sock: socket.socket, remote: str, arg: str, prebuffer: bytes,
                    timeout: float) -> bool:
        rid, fut = self._new_request()
        try:
            async with asyncio.timeout(timeout):
                await self._send({"op": "steal", "id": rid, "remote": remote, "arg": arg},
                                 bytes(prebuffer), [sock.fileno()])
                return bool(await asyncio.shield(fut))
        except TimeoutError:
            log.warning("program '%s' did not answer a connection within %g s: killing it",
                        self.name, timeout)
            await self.kill()
            return False
        finally:
            self.pending.pop(rid, None)

    async def get(self, url: str, arg: str, timeout: float) -> tuple[int, str, bytes]:
        rid, fut = self._new_request()
        try:
            async with asyncio.timeout(timeout):
                await self._send({"op": "get", "id": rid, "url": url, "arg": arg})
                return await asyncio.shield(fut)
        except TimeoutError:
            await self.kill()
            raise ProgramError(f"program '{self.name}' did not answer a GET within {timeout:g} s") from None
        finally:
            self.pending.pop(rid, None)

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
        fut = self.pending.get(header.get("id"))
        if fut is None or fut.done():
            return                      # an answer after we gave up on it
        if op == "reply":
            fut.set_result(bool(header.get("accepted")))
        elif op == "response":
            if "error" in header:
                fut.set_exception(ProgramError(f"program '{self.name}': {header['error']}"))
            else:
                fut.set_result((int(header.get("status", 500)), str(header.get("content_type", "")),
                                payload))

    # -- life and death ---------------------------------------------------------------------------

    def _death_message(self) -> str:
        if self.error:
            return self.error
        rc = self.proc.returncode
        return f"program '{self.name}' exited" + (f" (status {rc})" if rc is not None else "")

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
        # Retrieved at once (.exception()): a waiter that already gave up must not log a warning.
        for fut in [self.ready, *self.pending.values()]:
            if not fut.done():
                fut.set_exception(ProgramError(self._death_message()))
                fut.exception()

    async def _watch_exit(self) -> None:
        rc = await self.proc.wait()
        if self.alive:
            level = logging.INFO if rc == 0 else logging.WARNING
            log.log(level, "program '%s' (pid %d) exited with status %d", self.name, self.proc.pid, rc)
        self._died(f"exited with status {rc}")

    def kill_now(self) -> None:
        """SIGKILL without waiting (the exit watcher reaps the process)."""
        self._died("killed")
        if self.proc.returncode is None:
            try:
                self.proc.kill()
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
            try:
                self.proc.terminate()
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)
            except ProcessLookupError:
                pass
            except TimeoutError:
                log.warning("program '%s' ignored SIGTERM: killing it", self.name)
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
        await self._reap(grace=5.0)

    async def _reap(self, grace: float) -> None:
        done, pending = await asyncio.wait(self.tasks, timeout=grace)
        for t in pending:               # e.g. a grandchild holds the output pipe open
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                log.warning("program '%s': %r", self.name, t.exception())


class ProgramManager:
    """Starts, feeds and stops the program processes of one server."""

    def __init__(self, search_dirs: Sequence[str | Path] = (BUNDLED_DIR,), *, timeout: float = 5.0,
                 load_timeout: float = 10.0, python: str = sys.executable) -> None:
        self.search_dirs = [Path(d) for d in search_dirs]   # the server may replace it on VCL load
        self.timeout = timeout              # for on_connect (and on_get) to answer
        self.load_timeout = load_timeout    # for a new process to reach wait_for_requests()
        self.python = python
        self._programs: dict[str, _Program] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    async def _get(self, name: str) -> _Program:
        if self._closed:
            raise ProgramError("the program manager is closed")
        try:
            path = find_program(name, self.search_dirs)
        except ValueError as e:
            raise ProgramError(str(e)) from None
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:                # two first steals start one process
            prog = self._programs.get(name)
            if prog is not None and prog.alive:
                return prog
            if prog is not None:
                await prog.kill()       # reap the dead one before its successor starts
            if path is None:
                where = ", ".join(str(d) for d in self.search_dirs) or "no directory"
                raise ProgramError(f"program '{name}' not found ({name}.py in {where})")
            prog = await _Program.start(name, path, self.python, self.load_timeout)
            if self._closed:            # close() ran while we started it
                await prog.terminate(grace=1.0)
                raise ProgramError("the program manager is closed")
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
        """Ask the program's set_backend_get() callback: (status, content_type, body)."""
        prog = await self._get(name)
        return await prog.get(url, arg, self.timeout)

    def pid(self, name: str) -> int | None:
        """The pid of program `name` while it runs, else None."""
        prog = self._programs.get(name)
        return prog.proc.pid if prog is not None and prog.alive else None

    def running(self) -> dict[str, int]:
        """{name: pid} of every running program."""
        return {n: p.proc.pid for n, p in self._programs.items() if p.alive}

    async def close(self, grace: float = 1.0) -> None:
        """End every program process (SIGTERM, then SIGKILL after `grace` s) and wait for them."""
        self._closed = True
        progs, self._programs = list(self._programs.values()), {}
        await asyncio.gather(*(p.terminate(grace) for p in progs))
