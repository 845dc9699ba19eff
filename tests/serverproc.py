"""Run `cacheserver` as a real process for tests, and talk raw HTTP/1 to it."""

from __future__ import annotations

import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m cacheserver ARGS -a 127.0.0.1:0`, waiting until it says where it listens.

    The start wait is generous (a loaded 2-core machine has taken over 15 s to import and compile
    VCL) yet costs nothing when the start is fast: each output line is read as it comes."""

    def __init__(self, *args: str, cwd: Path | None = None, timeout: float = 60.0,
                 max_fds: int | None = None, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")

        def limit_fds() -> None:
            if max_fds is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cacheserver", "-a", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd or ROOT, env=env,
            preexec_fn=limit_fds if max_fds is not None else None)
        self.output: list[str] = []
        self._pending = b""
        self.port = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.readline(deadline - time.monotonic())
            if line is None:
                break
            m = re.match(r"Listening on [^ ]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if line.startswith("Child launched OK"):
                return
        self.stop()
        raise RuntimeError(f"server did not start within {timeout:g} s:\n" + "".join(self.output))

    def readline(self, timeout: float) -> str | None:
        """The next output line, or None on timeout/EOF. Reads the raw fd: a buffered reader could
        hold lines that select() cannot see."""
        deadline = time.monotonic() + max(timeout, 0)
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self._pending += chunk
        raw, _, self._pending = self._pending.partition(b"\n")
        line = raw.decode("utf-8", "replace") + "\n"
        self.output.append(line)
        return line

    def wait_for_output(self, pattern: str, timeout: float = 5.0) -> str:
        """The first output line (past or future) matching pattern."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.output[seen:]:
                if re.search(pattern, line):
                    return line
            seen = len(self.output)
            left = deadline - time.monotonic()
            if left <= 0 or self.readline(left) is None and self.proc.poll() is not None:
                raise AssertionError(f"no output matching {pattern!r}:\n" + "".join(self.output))

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rest = (self._pending + self.proc.stdout.read()).decode("utf-8", "replace")
        self._pending = b""
        if rest:
            self.output.append(rest)
        return self.proc.returncode

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]


# Bytes read past the end of a response (pipelined answers), kept per socket for the next read.
_LEFTOVER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1 response (head, body), framed by Content-Length or by close."""
    data = _LEFTOVER.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, first = data.partition(b"\r\n\r\n")
    rest = bytearray(first)             # appended in place: a big body is not copied per read
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if m:
        length = int(m.group(1))
        while len(rest) < length:
            chunk = sock.recv(max(65536, min(length - len(rest), 1 << 20)))
            if not chunk:
                break
            rest += chunk
        if len(rest) > length:
            _LEFTOVER[sock] = bytes(rest[length:])
        return head + b"\r\n\r\n", bytes(rest[:length])
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return head + b"\r\n\r\n", bytes(rest)
        rest += chunk


def read_at_least(sock: socket.socket, size: int, timeout: float = 10.0) -> bytes:
    """What the socket sends until `size` bytes have come (more if they came in the same read); the
    connection closing first fails the test with what came."""
    sock.settimeout(timeout)
    data = _LEFTOVER.pop(sock, b"")
    while len(data) < size:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = _LEFTOVER.pop(sock, b"")
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def memory_kb(pid: int, field: str = "VmRSS") -> int:
    """A process's memory from /proc/PID/status, in KiB: VmRSS (all resident) or RssAnon (what it
    allocated, leaving out file-backed pages such as the shared log's mmap'd ring)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")
