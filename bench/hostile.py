"""Memory soak against hostile clients: cacheserver and varnishd side by side, same VCL, same origin.

    python3 bench/hostile.py [--only NAME]... [--varnishd PATH | --no-varnishd] [--no-cacheserver]

Each attack runs against a freshly started server (so RSS figures do not carry over from one attack to
the next) and reports, per server: RSS of the whole instance before the attack (after warm-up: the 10 MB
object is already cached), its peak while the attack ran, RSS after the attacker went away (plus
SETTLE seconds), growth = peak - before, how the attacker's connection(s) ended, and whether the server
stayed responsive (a normal GET from another connection, every PROBE_EVERY s, answered within 2 s).
RSS is the sum of VmRSS over the server's process tree (varnishd: manager + cache child).

The table goes to stdout and, as JSON, to bench/results/hostile-<date>.json. See bench/README.md.
Importing this module starts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

try:
    from common import ROOT, free_port, wait_port
    from procs import process_tree
except ImportError:  # imported as bench.hostile from the repository root
    from bench.common import ROOT, free_port, wait_port
    from bench.procs import process_tree

# ---------------------------------------------------------------------------------------------------
# Parameters (sized for a 2-core, 24 GB machine; every attack stays within ~30 s).

MB = 1 << 20
BIG_SIZE = 10 * MB                  # the object the hit / pass attacks ask for
SMALL_SIZE = 1024                   # what the responsiveness probe asks for
STORAGE = "malloc,256m"
PARAMS = {                          # -p for both servers
    "timeout_idle": "5",
    "send_timeout": "5",
    "idle_send_timeout": "3",
}
RSS_CAP_MB = 12_000                 # an attack stops early once the server's RSS passes this
SAMPLE_EVERY = 0.1                  # RSS sampling period (s)
PROBE_EVERY = 1.0                   # responsiveness probe period (s)
PROBE_TIMEOUT = 2.0                 # a probe slower than this is a failure
SETTLE = 2.0                        # after the attacker is gone, wait this long before "after" RSS
CLIENT_RCVBUF = 4096                # SO_RCVBUF of the clients that do not read

PIPELINE_DEPTHS = (50, 100)         # pipelined-hits-50, pipelined-hits-100
PIPELINE_HOLD = 6.0                 # send everything, then do not read for this long
PIPELINE_READ = 2.0                 # then read (as fast as it comes) for this long and close

FLOOD_CHUNK = 256 * 1024            # the floods send in chunks of this size
FLOOD_STALL = 5.0                   # no byte accepted for this long: the server stopped reading
FLOOD_DEADLINE = 25.0               # a flood gives up after this long
FLOOD_LINGER = 3.0                  # after the last byte, wait this long for an answer or a close

ENDLESS_HEADER_BYTES = 160 * MB     # header value without CRLF

POST_CLIENTS = 5
POST_BYTES = 100 * MB
POST_DEADLINE = 30.0

HEREDOC_BYTES = 400 * MB            # body of `vcl.inline x << EOF`, never terminated
HEREDOC_LINE = 1024                 # in lines of this length ("a" * 1023 + "\n")

SLOW_READERS = 50
SLOW_READER_WINDOW = 12.0           # watch the server close them for this long
SLOW_READER_RSS_AT = 10.0           # the RSS reading the brief asks for

SLOWLORIS_CONNECTIONS = 1000
SLOWLORIS_CHECKPOINTS = (6, 10, 20)  # seconds after the last connection opened
SLOWLORIS_HEAD = (b"GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: slowloris" + b"-" * 60
                  + b"\r\nAccept: */*\r\n\r\n")   # > 20 bytes: never complete within the attack

VCL_TEMPLATE = """vcl 4.1;

backend default {
    .host = "127.0.0.1";
    .port = "%d";
}

sub vcl_recv {
    if (req.method == "POST" || req.url ~ "^/pass/") {
        return (pass);
    }
}
"""


# ---------------------------------------------------------------------------------------------------
# The origin: /big and /pass/big are 10 MB, anything else 1 KiB, POST bodies are read and discarded.

def _origin_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Cache-Control: max-age=3600\r\nContent-Length: %d\r\n\r\n" % len(body))


_BIG = memoryview(b"")
_SMALL = b"s" * SMALL_SIZE


async def _origin_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            received = 0
            if "content-length" in headers:
                left = int(headers["content-length"])
                while left:
                    chunk = await reader.read(min(left, MB))
                    if not chunk:
                        return
                    left -= len(chunk)
                    received += len(chunk)
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass
                        break
                    while size:
                        chunk = await reader.read(min(size, MB))
                        if not chunk:
                            return
                        size -= len(chunk)
                        received += len(chunk)
                    await reader.readexactly(2)
            if method == "POST":
                body: bytes | memoryview = b"received %d\n" % received
            elif path.endswith("/big"):
                body = _BIG
            else:
                body = _SMALL
            writer.write(_origin_response(body))
            for i in range(0, len(body), 256 * 1024):
                writer.write(body[i:i + 256 * 1024])
                await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _origin_main(port: int) -> None:
    global _BIG
    _BIG = memoryview(b"b" * BIG_SIZE)
    server = await asyncio.start_server(_origin_connection, "127.0.0.1", port, limit=1 << 20, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------------------------
# Processes and their memory.

def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_mb(pids: list[int], key: str = "VmRSS") -> float:
    return sum(status_kb(p, key) for p in pids) / 1024


def tree_fds(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def server_held(server_port: int, client_ports: set[int]) -> set[int]:
    """Client ports whose server-side socket a process still holds (inode != 0 in /proc/net/tcp).

    This works without reading from the client socket: a server that closes a connection with unsent
    data leaves an orphan (inode 0) in FIN_WAIT1, which the non-reading client would never see.
    """
    held = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, inode = fields[1], fields[2], fields[9]
                    if int(local.rsplit(":", 1)[1], 16) != server_port:
                        continue
                    rport = int(remote.rsplit(":", 1)[1], 16)
                    if rport in client_ports and inode != "0":
                        held.add(rport)
        except OSError:
            continue
    return held


def _popen(cmd: list[str], log: Path, root: Path = ROOT) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(root))
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Setup:
    """The files both servers share: the VCL, the CLI secret, in a directory user `varnish` can read."""

    def __init__(self, origin_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
        os.chmod(self.dir, 0o755)       # varnishd drops to user varnish
        self.vcl = self.dir / "hostile.vcl"
        self.vcl.write_text(VCL_TEMPLATE % origin_port)
        self.secret = self.dir / "secret"
        self.secret.write_text("hostile-bench-secret\n")
        for path in (self.vcl, self.secret):
            os.chmod(path, 0o644)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Target:
    """One running server instance: HTTP port, admin port, its process tree."""

    name = ""
    root = ROOT                      # the checkout whose code runs (cacheserver)

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.port = free_port()
        self.admin_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=setup.dir))
        os.chmod(self.workdir, 0o755)
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.initial_pids: set[int] = set()

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = _popen(self.command(), self.log, self.root)
        try:
            wait_port(self.port, 30)
            wait_port(self.admin_port, 30)
        except RuntimeError:
            _stop(self.proc)
            raise RuntimeError(f"{self.name} did not start; log:\n{self.log_tail()}") from None

    def settled(self) -> None:
        """Called once warm-up is done: remember the processes that make up the instance."""
        self.initial_pids = set(self.pids())

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def health(self) -> str | None:
        """None while the instance is the one we started; else what happened to it."""
        if self.proc is None or self.proc.poll() is not None:
            return f"CRASHED (exit status {self.proc.returncode if self.proc else '?'})"
        gone = self.initial_pids - set(self.pids())
        if gone:
            return f"process(es) {sorted(gone)} died (child restarted?)"
        return None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cacheserver(Target):
    name = "cacheserver"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cacheserver", "-f", str(self.setup.vcl), "-a", f"127.0.0.1:{self.port}",
               "-n", str(self.workdir / "n"), "-T", f"127.0.0.1:{self.admin_port}",
               "-S", str(self.setup.secret), "-s", STORAGE]
        for name, value in PARAMS.items():
            cmd += ["-p", f"{name}={value}"]
        return cmd


class Varnishd(Target):
    name = "varnishd"
    binary = "/usr/sbin/varnishd"

    def command(self) -> list[str]:
        cmd = [self.binary, "-F", "-f", str(self.setup.vcl), "-a", f"127.0.0.1:{self.port}",
               "-n", str(self.workdir / "n"), "-T", f"127.0.0.1:{self.admin_port}",
               "-S", str(self.setup.secret), "-s", STORAGE]
        for name, value in PARAMS.items():
            cmd += ["-p", f"{name}={value}"]
        return cmd


# ---------------------------------------------------------------------------------------------------
# Plain HTTP from a well-behaved client (warm-up and responsiveness probe).

def http_get(port: int, path: str, timeout: float) -> tuple[int, int]:
    """GET path on a new connection; returns (status, body bytes). Raises OSError/TimeoutError."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % path.encode())
        buf = bytearray()
        head_end, length = -1, None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("probe timed out")
            s.settimeout(left)
            data = s.recv(1 << 20)
            if not data:
                break
            buf += data
            if head_end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    for line in bytes(buf[:head_end]).split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
            if head_end >= 0 and length is not None and len(buf) - head_end - 4 >= length:
                break
        if head_end < 0:
            raise ConnectionError("no response head")
        status = int(bytes(buf[:head_end]).split(b" ", 2)[1])
        return status, len(buf) - head_end - 4


def warm_up(target: Target) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            status, n = http_get(target.port, "/big", 10)
            if status == 200 and n == BIG_SIZE:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name} does not serve /big; log:\n{target.log_tail()}")
        time.sleep(0.2)
    for path in ("/big", "/small", "/small"):
        http_get(target.port, path, 10)


class Monitor:
    """Samples the instance's RSS and probes it with normal GETs, each in a thread."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.pids = target.pids()
        self.samples: list[tuple[float, float]] = []
        self.probes: list[float | None] = []
        self.capped = threading.Event()
        self._stop_sampling = threading.Event()
        self._stop_probing = threading.Event()
        self._threads: list[threading.Thread] = []
        self.t0 = time.monotonic()

    def rss_now(self) -> float:
        self.pids = self.target.pids() or self.pids
        return tree_mb(self.pids)

    def hwm(self) -> float:
        return tree_mb(self.target.pids(), "VmHWM")

    def start(self) -> None:
        self.t0 = time.monotonic()
        for fn in (self._sample, self._probe):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._threads.append(t)

    def stop_probing(self) -> None:
        self._stop_probing.set()

    def stop(self) -> None:
        self._stop_probing.set()
        self._stop_sampling.set()
        for t in self._threads:
            t.join()

    def sleep(self, seconds: float) -> bool:
        """Sleep; False (early) if the RSS cap was hit."""
        return not self.capped.wait(seconds)

    def _sample(self) -> None:
        n = 0
        while not self._stop_sampling.is_set():
            if n % 10 == 0:
                self.pids = self.target.pids() or self.pids
            n += 1
            rss = tree_mb(self.pids)
            self.samples.append((time.monotonic() - self.t0, rss))
            if rss > RSS_CAP_MB:
                self.capped.set()
            self._stop_sampling.wait(SAMPLE_EVERY)

    def _probe(self) -> None:
        while True:  # the first probe at once, so that even a short attack gets one
            t0 = time.monotonic()
            try:
                status, n = http_get(self.target.port, "/small", PROBE_TIMEOUT)
                ok = status == 200 and n == SMALL_SIZE
            except OSError:
                ok = False
            elapsed = time.monotonic() - t0
            self.probes.append(elapsed if ok and elapsed <= PROBE_TIMEOUT else None)
            if self._stop_probing.wait(max(PROBE_EVERY - elapsed, 0)):
                break

    @property
    def peak(self) -> float:
        return max((rss for _, rss in self.samples), default=0.0)

    def responsive(self) -> str:
        if not self.probes:
            return "n/a (no probe)"
        failed = sum(p is None for p in self.probes)
        worst = max((p for p in self.probes if p is not None), default=0.0)
        if failed:
            return f"no ({failed}/{len(self.probes)} probes failed)"
        return f"yes ({len(self.probes)} probes, max {worst:.2f}s)"


# ---------------------------------------------------------------------------------------------------
# Attacker helpers.

def slow_socket() -> socket.socket:
    """A client socket with a small receive buffer (set before connect, so the window is small)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    return s


def first_line(data: bytes) -> str:
    return data.split(b"\n", 1)[0].strip().decode("latin-1")[:60]


@dataclass
class FloodResult:
    sent: int = 0
    seconds: float = 0.0
    ended: str = ""                  # "closed", "reset", "stalled", "open", "capped"
    reply: bytes = b""

    def describe(self, total: int) -> str:
        mb = f"{self.sent / MB:.1f} MB"
        reply = f"'{first_line(self.reply)}' " if self.reply else ""
        if self.ended in ("closed", "reset"):
            how = "closed" if self.ended == "closed" else "reset"
            return f"{reply}{how} by server after {mb}, {self.seconds:.1f}s"
        if self.ended == "stalled":
            return f"{reply}timeout: server stopped reading after {mb} (still open)"
        if self.ended == "capped":
            return f"{reply}stopped at RSS cap after {mb}"
        if self.sent < total:
            return f"{reply}timeout: {mb} accepted in {self.seconds:.0f}s, still reading, still open"
        return f"{reply}timeout: all {total / MB:.0f} MB accepted, still open after {self.seconds:.1f}s"


def flood(sock: socket.socket, prefix: bytes, total: int, payload: bytes, mon: Monitor) -> FloodResult:
    """Send prefix then `total` bytes of `payload` (repeated) as fast as the server takes them,
    reading whatever comes back; stop when the server closes, stops reading, or everything is sent."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    r = FloodResult()
    t0 = last_progress = time.monotonic()
    pending = memoryview(prefix)
    body_left = total
    done_at = None
    try:
        while True:
            now = time.monotonic()
            r.seconds = now - t0
            if mon.capped.is_set():
                r.ended = "capped"
                break
            if done_at is None and now - last_progress > FLOOD_STALL:
                r.ended = "stalled"
                break
            if now - t0 > FLOOD_DEADLINE or (done_at is not None and now - done_at > FLOOD_LINGER):
                r.ended = "open"
                break
            for _key, events in sel.select(0.2):
                if events & selectors.EVENT_READ:
                    data = sock.recv(65536)
                    if not data:
                        r.ended = "closed"
                        return r
                    if len(r.reply) < 512:
                        r.reply += data[:512]
                if events & selectors.EVENT_WRITE:
                    if not pending and body_left:
                        n = min(body_left, len(payload))
                        pending = memoryview(payload)[:n]
                        body_left -= n
                    if pending:
                        try:
                            n = sock.send(pending)
                        except BlockingIOError:
                            n = 0
                        pending = pending[n:]
                        r.sent += n
                        last_progress = time.monotonic()
                    if not pending and not body_left and done_at is None:
                        done_at = time.monotonic()
                        sel.modify(sock, selectors.EVENT_READ)
    except (ConnectionResetError, BrokenPipeError):
        r.ended = "reset"
    finally:
        r.seconds = time.monotonic() - t0
        sel.close()
    return r


# ---------------------------------------------------------------------------------------------------
# The attacks. Each takes the target and its monitor, closes everything it opened, and returns a dict
# with at least "outcome" (how the attacker's connection(s) ended).

def attack_pipelined_hits(target: Target, mon: Monitor, depth: int) -> dict:
    s = slow_socket()
    s.connect(("127.0.0.1", target.port))
    port = s.getsockname()[1]
    s.sendall(b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n" * depth)
    mon.sleep(PIPELINE_HOLD)
    rss_hold = mon.rss_now()
    held = bool(server_held(target.port, {port}))
    got, ended = 0, "open"
    s.settimeout(0.2)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < PIPELINE_READ:
            try:
                data = s.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                ended = "closed"
                break
            got += len(data)
    except ConnectionResetError:
        ended = "reset"
    s.close()
    total = depth * BIG_SIZE
    read = f"{got / MB:.0f}/{total / MB:.0f} MB read"
    if not held:
        outcome = f"closed by server within {PIPELINE_HOLD:.0f}s ({read})"
    elif ended != "open":
        outcome = f"open at {PIPELINE_HOLD:.0f}s, {ended} by server while reading ({read})"
    else:
        outcome = f"timeout: open at {PIPELINE_HOLD + PIPELINE_READ:.0f}s ({read}), closed by us"
    return {"outcome": outcome, "rss_at_hold_mb": round(rss_hold, 1), "held_at_hold": held,
            "bytes_read": got}


def attack_endless_header(target: Target, mon: Monitor) -> dict:
    s = socket.create_connection(("127.0.0.1", target.port))
    r = flood(s, b"GET /small HTTP/1.1\r\nHost: bench\r\nX-Endless: ", ENDLESS_HEADER_BYTES,
              b"a" * FLOOD_CHUNK, mon)
    s.close()
    return {"outcome": r.describe(ENDLESS_HEADER_BYTES), "sent": r.sent, "seconds": round(r.seconds, 2),
            "reply": first_line(r.reply)}


def attack_big_post(target: Target, mon: Monitor) -> dict:
    chunk = b"p" * MB
    results: list[str] = [""] * POST_CLIENTS
    times: list[float] = [0.0] * POST_CLIENTS

    def one(i: int) -> None:
        t0 = time.monotonic()
        deadline = t0 + POST_DEADLINE
        try:
            with socket.create_connection(("127.0.0.1", target.port), timeout=10) as s:
                s.sendall(b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: %d\r\n\r\n" % POST_BYTES)
                left = POST_BYTES
                while left:
                    if mon.capped.is_set():
                        results[i] = "stopped at RSS cap"
                        return
                    s.settimeout(max(deadline - time.monotonic(), 0.01))
                    n = min(left, len(chunk))
                    s.sendall(chunk[:n])
                    left -= n
                data = b""
                while b"\n" not in data.partition(b"received ")[2]:    # the origin's answer: bytes it got
                    s.settimeout(max(deadline - time.monotonic(), 0.01))
                    more = s.recv(4096)
                    if not more:
                        break
                    data += more
                if not data:
                    results[i] = "closed by server"
                    return
                results[i] = first_line(data).split(" ", 1)[1][:3]
                got = data.partition(b"received ")[2].split(b"\n")[0]
                if got != b"%d" % POST_BYTES:
                    results[i] += f" (origin got {got.decode('latin-1') or '?'} bytes)"
        except TimeoutError:
            results[i] = "timeout"
        except (ConnectionResetError, BrokenPipeError):
            results[i] = "reset by server"
        except OSError as exc:
            results[i] = f"error {exc.__class__.__name__}"
        finally:
            times[i] = time.monotonic() - t0

    threads = [threading.Thread(target=one, args=(i,)) for i in range(POST_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(results)
    outcome = ", ".join(f"{n}x {what}" for what, n in counts.most_common()) + f" (slowest {max(times):.1f}s)"
    return {"outcome": outcome, "results": results, "seconds": [round(t, 2) for t in times]}


def attack_cli_heredoc(target: Target, mon: Monitor) -> dict:
    s = socket.create_connection(("127.0.0.1", target.admin_port), timeout=5)
    banner = b""
    s.settimeout(1)
    try:
        while len(banner) < 13 or not banner.endswith(b"\n\n"):
            data = s.recv(4096)
            if not data:
                break
            banner += data
    except TimeoutError:
        pass
    line = b"a" * (HEREDOC_LINE - 1) + b"\n"
    r = flood(s, b"vcl.inline x << EOF\n", HEREDOC_BYTES, line * (FLOOD_CHUNK // len(line)), mon)
    s.close()
    return {"outcome": r.describe(HEREDOC_BYTES), "banner": first_line(banner), "sent": r.sent,
            "seconds": round(r.seconds, 2), "reply": first_line(r.reply)}


def attack_slow_reader(target: Target, mon: Monitor, path: str) -> dict:
    socks = []
    for _ in range(SLOW_READERS):
        s = slow_socket()
        s.connect(("127.0.0.1", target.port))
        s.sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
        socks.append(s)
    ports = {s.getsockname()[1] for s in socks}
    t0 = time.monotonic()
    closed_at: dict[int, float] = {}
    seen: set[int] = set()           # accepted (a connection waiting in the accept queue has no inode yet)
    rss_at = None
    while True:
        now = time.monotonic() - t0
        held = server_held(target.port, ports)
        seen |= held
        for port in seen - closed_at.keys() - held:
            closed_at[port] = now
        if rss_at is None and now >= SLOW_READER_RSS_AT:
            rss_at = mon.rss_now()
        if now >= SLOW_READER_WINDOW or (len(closed_at) == len(ports) and rss_at is not None):
            break
        if not mon.sleep(0.25):
            break
    for s in socks:
        s.close()
    times = sorted(closed_at.values())
    rss = f"; RSS at {SLOW_READER_RSS_AT:.0f}s {rss_at:.0f} MB" if rss_at is not None else ""
    if times:
        outcome = (f"{len(times)}/{SLOW_READERS} closed by server, time-to-close median "
                   f"{statistics.median(times):.1f}s max {times[-1]:.1f}s")
        if len(times) < SLOW_READERS:
            outcome += f"; {SLOW_READERS - len(times)} open at {SLOW_READER_WINDOW:.0f}s (timeout)"
    else:
        outcome = f"timeout: 0/{SLOW_READERS} closed by server in {SLOW_READER_WINDOW:.0f}s"
    if len(seen) < SLOW_READERS:
        outcome += f"; {SLOW_READERS - len(seen)} never seen accepted"
    return {"outcome": outcome + rss, "rss_at_10s_mb": round(rss_at, 1) if rss_at is not None else None,
            "time_to_close": [round(t, 2) for t in times]}


def attack_slowloris(target: Target, mon: Monitor) -> dict:
    """Non-blocking connects (all in flight at once, so a slow accept queue delays no drip); every
    connection gets its first byte when it connects, then one more byte each second. "Open at 6 s"
    counts the connections the server still held 6 s after that connection was established."""
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    connecting: set[int] = set()
    for i in range(SLOWLORIS_CONNECTIONS):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", target.port))
        sel.register(s, selectors.EVENT_WRITE, i)
        connecting.add(i)
    open_client: dict[int, tuple[socket.socket, int]] = {}   # id -> (socket, bytes sent)
    connected_at: dict[int, float] = {}                       # client port -> seconds after t0
    seen: set[int] = set()                                    # ports the server was seen holding
    server_closed_at: dict[int, float] = {}
    ends: Counter[str] = Counter()
    client_closed_at: list[float] = []
    last = SLOWLORIS_CHECKPOINTS[-1]
    next_tick = t0 + 1.0
    next_poll = t0

    def drop(i: int, how: str) -> None:
        s, _ = open_client.pop(i)
        sel.unregister(s)
        s.close()
        ends[how] += 1
        client_closed_at.append(time.monotonic() - t0)

    def drip(i: int) -> None:
        s, n = open_client[i]
        try:
            n += s.send(SLOWLORIS_HEAD[n:n + 1])
        except BlockingIOError:
            pass
        except OSError:
            drop(i, "reset by server")
            return
        open_client[i] = (s, n)

    while not mon.capped.is_set():
        now = time.monotonic()
        if now >= next_poll:
            next_poll += 0.25
            held = server_held(target.port, set(connected_at))
            seen |= held
            for port in seen - held - server_closed_at.keys():
                server_closed_at[port] = now - t0
            youngest = max(connected_at.values(), default=0.0)
            if now - t0 > last + youngest + 0.5 and not connecting or now - t0 > last + 10:
                break
        if now >= next_tick:
            next_tick += 1.0
            for i in list(open_client):
                drip(i)
        timeout = min(next_tick, next_poll) - time.monotonic()
        for key, _events in sel.select(max(timeout, 0)):
            s, i = key.fileobj, key.data
            if i in connecting:
                connecting.discard(i)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sel.unregister(s)
                    s.close()
                    ends[f"connect failed ({os.strerror(err)})"] += 1
                    continue
                connected_at[s.getsockname()[1]] = time.monotonic() - t0
                sel.modify(s, selectors.EVENT_READ, i)
                open_client[i] = (s, 0)
                drip(i)
                continue
            try:
                data = s.recv(4096)
            except OSError:
                drop(i, "reset by server")
                continue
            drop(i, f"'{first_line(data)}' then closed" if data else "closed by server")
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    lifetimes = {port: server_closed_at.get(port, float("inf")) - t for port, t in connected_at.items()}
    counts = {f"{cp}s": sum(life > cp for life in lifetimes.values()) for cp in SLOWLORIS_CHECKPOINTS}
    summary = ", ".join(f"{cp}: {n}" for cp, n in counts.items())
    outcome = f"open (server-side) at {summary} of {len(connected_at)}"
    closed = sorted(life for life in lifetimes.values() if life != float("inf"))
    if closed:
        outcome += f"; {len(closed)} closed by server, after {closed[0]:.1f}-{closed[-1]:.1f}s"
    if ends:
        outcome += "; client saw " + ", ".join(f"{n}x {how}" for how, n in ends.most_common(3))
    return {"outcome": outcome, "connected": len(connected_at), "open_at_age": counts,
            "never_seen_accepted": len(connected_at.keys() - seen), "ends": dict(ends),
            "last_connect_s": round(max(connected_at.values(), default=0), 2),
            "server_lifetimes": [round(t, 2) for t in closed],
            "client_close_times": [round(t, 2) for t in sorted(client_closed_at)]}


@dataclass
class Attack:
    name: str
    fn: Callable[..., dict]
    kwargs: dict = field(default_factory=dict)


ATTACKS = [
    *(Attack(f"pipelined-hits-{d}", attack_pipelined_hits, {"depth": d}) for d in PIPELINE_DEPTHS),
    Attack("endless-header", attack_endless_header),
    Attack("big-post", attack_big_post),
    Attack("cli-heredoc", attack_cli_heredoc),
    Attack("slow-reader-hit", attack_slow_reader, {"path": "/big"}),
    Attack("slow-reader-pass", attack_slow_reader, {"path": "/pass/big"}),
    Attack("slowloris", attack_slowloris),
]


# ---------------------------------------------------------------------------------------------------
# Running and reporting.

def run_one(attack: Attack, target: Target) -> dict:
    row: dict = {"attack": attack.name, "server": target.name}
    target.start()
    try:
        warm_up(target)
        time.sleep(1.0)
        target.settled()
        mon = Monitor(target)
        before = mon.rss_now()
        fds_before = tree_fds(target.pids())
        mon.start()
        t0 = time.monotonic()
        try:
            detail = attack.fn(target, mon, **attack.kwargs)
        except Exception as exc:  # noqa: BLE001 - a failed attack is a row, not the end of the run
            detail = {"outcome": f"attack failed: {exc.__class__.__name__}: {exc}"}
        duration = time.monotonic() - t0
        mon.stop_probing()
        time.sleep(SETTLE)
        after = mon.rss_now()
        mon.stop()
        health = target.health()
        row.update(
            rss_before_mb=round(before, 1), rss_peak_mb=round(max(mon.peak, after), 1),
            rss_after_mb=round(after, 1), growth_mb=round(max(mon.peak, after) - before, 1),
            retained_mb=round(after - before, 1), hwm_mb=round(mon.hwm(), 1),
            fds_before=fds_before, fds_after=tree_fds(target.pids()),
            outcome=detail.pop("outcome"), responsive=mon.responsive(),
            probe_seconds=[None if p is None else round(p, 3) for p in mon.probes],
            attack_seconds=round(duration, 1), capped=mon.capped.is_set(), health=health or "ok",
            detail=detail)
        if health:
            row["responsive"] = f"{health}; {row['responsive']}"
            row["log_tail"] = target.log_tail()
    finally:
        target.stop()
    return row


COLUMNS = [("attack", "attack"), ("server", "server"), ("rss_before_mb", "before MB"), ("rss_peak_mb", "peak MB"),
           ("rss_after_mb", "after MB"), ("growth_mb", "growth MB"), ("outcome", "attacker outcome"),
           ("responsive", "responsive")]


def format_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _varnishd_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
        return (out.stderr or out.stdout).splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only attacks whose name starts with NAME (repeatable): "
                         + ", ".join(a.name for a in ATTACKS))
    ap.add_argument("--varnishd", metavar="PATH", default=shutil.which("varnishd") or "/usr/sbin/varnishd",
                    help="varnishd 7.1 binary (default: from PATH)")
    ap.add_argument("--no-varnishd", action="store_true", help="run against cacheserver only")
    ap.add_argument("--no-cacheserver", action="store_true", help="run against varnishd only")
    ap.add_argument("--cacheserver-root", metavar="DIR", type=Path, default=ROOT,
                    help="run the cacheserver of this checkout (default: the one this file is in)")
    ap.add_argument("--out", metavar="FILE", help="JSON output (default bench/results/hostile-<date>.json)")
    ap.add_argument("--origin", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.origin:
        asyncio.run(_origin_main(args.origin))
        return 0

    attacks = [a for a in ATTACKS if not args.only or any(a.name.startswith(n) for n in args.only)]
    if not attacks:
        ap.error(f"no attack matches {args.only}")
    servers: list[type[Target]] = []
    if not args.no_cacheserver:
        Cacheserver.root = args.cacheserver_root.resolve()
        servers.append(Cacheserver)
    if not args.no_varnishd:
        if os.path.exists(args.varnishd):
            Varnishd.binary = args.varnishd
            servers.append(Varnishd)
        else:
            print(f"varnishd not found at {args.varnishd}: cacheserver only (apt-get install -y varnish)",
                  file=sys.stderr)
    _raise_nofile()

    origin_port = free_port()
    origin = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--origin", str(origin_port)],
                              cwd=ROOT)
    setup = Setup(origin_port)
    rows: list[dict] = []
    started = time.monotonic()
    try:
        wait_port(origin_port)
        for attack in attacks:
            for server in servers:
                print(f"# {attack.name} against {server.name} ...", file=sys.stderr, flush=True)
                try:
                    row = run_one(attack, server(setup))
                except RuntimeError as exc:
                    row = {"attack": attack.name, "server": server.name, "outcome": f"could not run: {exc}",
                           "responsive": "n/a"}
                rows.append(row)
                print(f"#   {row.get('growth_mb', '?')} MB growth; {row['outcome']}; {row['responsive']}",
                      file=sys.stderr, flush=True)
    finally:
        _stop(origin)
        setup.cleanup()

    now = _dt.datetime.now(_dt.timezone.utc)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "commit": _git_commit(Cacheserver.root),
        "cacheserver_root": str(Cacheserver.root),
        "varnishd": _varnishd_version(args.varnishd) if Varnishd in servers else None,
        "seconds": round(time.monotonic() - started, 1),
        "params": {name: value for name, value in globals().items() if name.isupper() and
                   isinstance(value, (int, float, str, tuple, dict)) and name != "VCL_TEMPLATE"},
        "rows": rows,
    }
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"hostile-{now:%Y-%m-%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=lambda v: v.decode("latin-1")) + "\n")
    print(format_table(rows))
    print(f"\n{len(rows)} runs in {report['seconds']:.0f}s at commit {report['commit']}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
