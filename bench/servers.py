"""The processes a benchmark runs: the origin, cacheserver, varnishd and the bare asyncio server.

cacheserver and varnishd get the same VCL, storage and parameters (SETTINGS), each in its own work
directory under one world-readable temporary directory (varnishd drops to user `varnish`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, free_port
from bench.procs import process_tree

STORAGE = "malloc,1g"            # room for 100k objects and their overhead in both servers
# One thread pool: cacheserver serves from one event loop; varnishd keeps its default 100..5000 workers
# in that pool (it needs a thread per connection, so fewer threads would only starve it).
PARAMS = {"thread_pools": "1"}
START_TIMEOUT = 30.0             # varnishd compiles the VCL with cc before it listens

SYNTH_BODY = "Hello from VCL: a synthetic answer, no backend involved.\n"

VCL = """vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "%(origin)d"; }

sub vcl_recv {
    if (req.url ~ "^/pass/") {
        return (pass);
    }
    if (req.url == "/synth") {
        return (synth(200, "OK"));
    }
}

sub vcl_synth {
    if (req.url == "/synth") {
        set resp.http.Content-Type = "text/plain";
        synthetic({"%(synth)s"});
        return (deliver);
    }
}

sub vcl_backend_response {
    if (bereq.url == "/esi/page") {
        set beresp.do_esi = true;
    }
    if (bereq.url ~ "^/miss/") {
        set beresp.ttl = 1s;
        set beresp.grace = 0s;
        set beresp.keep = 0s;
    }
}
"""


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Workspace:
    """A world-readable temporary directory holding the shared VCL and every server's work directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-"))
        os.chmod(self.dir, 0o755)
        self.vcl = self.dir / "bench.vcl"

    def write_vcl(self, origin_port: int) -> Path:
        self.vcl.write_text(VCL % {"origin": origin_port, "synth": SYNTH_BODY})
        os.chmod(self.vcl, 0o644)
        return self.vcl

    def subdir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.dir))
        os.chmod(path, 0o755)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Process:
    """One server: the command that starts it, the port it answers on, its process tree."""

    label = ""

    def __init__(self, workspace: Workspace, label: str = "") -> None:
        self.workspace = workspace
        self.label = label or self.label
        self.port = free_port()
        self.workdir = workspace.subdir(self.label.split("@")[0].replace(" ", "-"))
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(ROOT))

    def cwd(self) -> Path:
        return ROOT

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.cwd(), env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.label} did not start; its log:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (varnishd -F then stops its child), SIGKILL after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.label} is not running"
        return self.proc.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Process:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Origin(Process):
    label = "origin"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.origin", str(self.port)]


class Bare(Process):
    """The bare asyncio + httptools server answering the docs' hello bytes: the ceiling for /tcp."""

    label = "bare asyncio"

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "tiny_http.py"), str(self.port), "hello"]


class Cacheserver(Process):
    """cacheserver with `vcl`; `root` is the checkout whose code runs (--compare-root)."""

    label = "cacheserver"

    def __init__(self, workspace: Workspace, vcl: Path, root: Path = ROOT, label: str = "") -> None:
        super().__init__(workspace, label)
        self.vcl = vcl
        self.root = root

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.root))

    def cwd(self) -> Path:
        return self.root

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cacheserver", "-f", str(self.vcl), "-a", f"127.0.0.1:{self.port}",
               "-n", str(self.workdir / "n"), "-s", STORAGE]
        for name, value in PARAMS.items():
            cmd += ["-p", f"{name}={value}"]
        return cmd


class Varnishd(Process):
    label = "varnishd"

    def __init__(self, workspace: Workspace, vcl: Path, binary: str) -> None:
        super().__init__(workspace)
        self.vcl = vcl
        self.binary = binary

    def command(self) -> list[str]:
        cmd = [self.binary, "-F", "-n", str(self.workdir / "n"), "-a", f"127.0.0.1:{self.port}",
               "-T", "127.0.0.1:0", "-f", str(self.vcl), "-s", STORAGE]
        for name, value in PARAMS.items():
            cmd += ["-p", f"{name}={value}"]
        return cmd


def find_varnishd() -> str | None:
    found = shutil.which("varnishd")
    if found:
        return found
    return "/usr/sbin/varnishd" if os.access("/usr/sbin/varnishd", os.X_OK) else None
