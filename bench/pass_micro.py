"""Passes in process: CPU time (or instructions) per `return (pass)` request through
ClientProtocol.data_received, with a real backend connection to an origin in another process (its
work is not counted), so the figure holds on a loaded machine. The sibling of hit_micro.py.

    python bench/pass_micro.py [--rounds 5] [--compare-root DIR] [--log] [--instructions]

Each request is fed alone and waited for (a client waiting for each answer); the origin answers
1 KiB with Content-Length on a keep-alive connection, so every pass reuses it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the origin: bare asyncio + httptools, one prepared answer; runs in its own process (not counted)
ORIGIN = r'''
import asyncio, sys, httptools
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024

class Origin(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        self.transport.write(ANSWER)

async def main():
    server = await asyncio.get_running_loop().create_server(Origin, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
'''

CHILD = r'''
import asyncio, os, pathlib, subprocess, sys, tempfile, time
from cacheserver.protocol import ClientProtocol
from cacheserver.server import Server


class Sink(asyncio.Transport):
    def write(self, data): pass
    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)
    def is_closing(self): return False
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def abort(self): pass


class Client(ClientProtocol):
    """Tells the benchmark when each (asynchronous) request is done."""
    done = None

    async def _run_async(self, request):
        await super()._run_async(request)
        self.done.set_result(None)


async def main():
    origin = subprocess.Popen([sys.executable, "-c", os.environ["PASS_MICRO_ORIGIN"]], stdout=subprocess.PIPE)
    try:
        port = int(origin.stdout.readline())
        srv = Server()
        if os.environ.get("PASS_MICRO_LOG"):
            srv.open_log(pathlib.Path(tempfile.mkdtemp(prefix="pass-micro-")))
        srv.vcl_load("boot", 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "%d"; }\n'
                     'sub vcl_recv { return (pass); }\n' % port, "x.vcl")
        srv.vcl_use("boot")
        proto = Client(srv)
        proto.connection_made(Sink())
        request = b"GET /pass HTTP/1.1\r\nHost: x\r\n\r\n"
        loop = asyncio.get_running_loop()

        async def one():
            proto.done = loop.create_future()
            proto.data_received(request)
            await proto.done

        for _ in range(200):
            await one()
        n = int(os.environ.get("PASS_MICRO_N", "5000"))
        t0 = time.process_time()
        for _ in range(n):
            await one()
        used = time.process_time() - t0
        assert srv.counters.s_pass >= 200 + n and srv.counters.backend_reuse >= n, "not reused passes"
        print(used / max(n, 1) * 1e6)
    finally:
        origin.kill()
        origin.wait()

asyncio.run(main())
'''


def _env(root: Path, log: bool, n: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), PASS_MICRO_ORIGIN=ORIGIN, PYTHONHASHSEED="0")
    if n is not None:
        env["PASS_MICRO_N"] = str(n)
    if log:
        env["PASS_MICRO_LOG"] = "1"
    return env


def instructions(root: Path, log: bool, n: int = 1000) -> float:
    """Instructions per pass under valgrind's callgrind (the origin's process is not traced): two
    runs, `n` passes apart, so start-up and the VCL compile cancel out."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install -y valgrind)")
    # a run without valgrind first, so neither counted run compiles bytecode (see hit_micro.py)
    subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True, check=True, env=_env(root, log, 0))
    counts = []
    for k in (0, n):
        err = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                              sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True,
                             env=_env(root, log, k), check=True).stderr
        counts.append(int(re.search(r"Collected : (\d+)", err).group(1)))
    return (counts[1] - counts[0]) / n


def one(root: Path, log: bool) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True,
                         env=_env(root, log), check=True).stdout
    return float(out.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compare-root", type=Path, default=None, metavar="DIR")
    ap.add_argument("--log", action="store_true", help="write the shared log too")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per pass under valgrind instead of timing (one round)")
    args = ap.parse_args()
    roots = [("this checkout", ROOT)]
    if args.compare_root is not None:
        roots.append((str(args.compare_root), args.compare_root.resolve()))
    if args.instructions:
        for name, root in roots:
            print(f"{name:30s} {instructions(root, args.log):,.0f} instructions/pass")
        return
    runs: dict[str, list[float]] = {name: [] for name, _ in roots}
    for _ in range(args.rounds):
        for name, root in roots:
            runs[name].append(one(root, args.log))
    for name, values in runs.items():
        print(f"{name:30s} {statistics.median(values):6.2f} us/pass (median of {len(values)}: "
              f"{', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
