"""Plain cache hits in process: CPU time per pipelined hit through ClientProtocol.data_received, with
no sockets and no wrk, so the figure holds on a loaded machine. With --compare-root, another
checkout (e.g. the base of a change) is measured in alternation with this one, in the same run.

    python bench/hit_micro.py [--rounds 5] [--compare-root DIR] [--log] [--per-read N] [--instructions]

The object (1 KiB, cacheable) is put in the cache directly; every request is then a hit on the
plain-hit template path. Prints the median us/hit per checkout. `--log` writes the shared log (a work
directory in /tmp), which the default leaves out; `--per-read 1` hands data_received one request at a
time, as a client waiting for each answer does (default 100 pipelined).
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

CHILD = r'''
import asyncio, hashlib, os, pathlib, sys, tempfile, time
from cacheserver.protocol import ClientProtocol
from cacheserver.server import Server
from vcl.runtime import HttpMessage


class Sink(asyncio.Transport):
    def write(self, data): pass
    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)
    def is_closing(self): return False
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def abort(self): pass


async def main():
    srv = Server()
    if os.environ.get("HIT_MICRO_LOG"):
        srv.open_log(pathlib.Path(tempfile.mkdtemp(prefix="hit-micro-")))
    srv.vcl_load("boot", 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "9"; }\n', "x.vcl")
    srv.vcl_use("boot")
    digest = hashlib.sha256(b"/obj\0x\0").digest()
    req = HttpMessage("GET", "/obj", "HTTP/1.1")
    oc = srv.storage.lookup(digest, req, time.time()).busy
    oc.http = HttpMessage(proto="HTTP/1.1", status=200, reason="OK")
    oc.http.headers.add("Content-Length", "1024")
    oc.t_origin, oc.ttl, oc.xid = time.time(), 3600.0, 1
    oc.append(b"x" * 1024)
    srv.storage.unbusy(oc, req, None, None)
    oc.finish(True)
    proto = ClientProtocol(srv)
    proto.connection_made(Sink())
    per_read = int(os.environ.get("HIT_MICRO_PER_READ", "100"))
    batch = b"GET /obj HTTP/1.1\r\nHost: x\r\n\r\n" * per_read
    for _ in range(2000 // per_read):
        proto.data_received(batch)
    t0 = time.process_time()
    hits = int(os.environ.get("HIT_MICRO_HITS", "50000"))
    for _ in range(hits // per_read):
        proto.data_received(batch)
    used = time.process_time() - t0
    assert srv.counters.cache_hit >= 2000 + hits, "not hits: the benchmark no longer fits the server"
    print(used / max(hits, 1) * 1e6)

asyncio.run(main())
'''


def instructions(root: Path, log: bool, per_read: int, hits: int = 2000) -> float:
    """Instructions per hit under valgrind's callgrind: the same count whatever else the machine
    runs (two runs, `hits` apart, so start-up and the VCL compile cancel out)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install -y valgrind)")
    # a run without valgrind first: the bytecode of files changed since is then written, so neither
    # counted run compiles it (the first would, biasing the difference by the compile)
    subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True, check=True,
                   env=dict(os.environ, PYTHONPATH=str(root), HIT_MICRO_HITS="0"))
    counts = []
    for n in (0, hits):
        env = dict(os.environ, PYTHONPATH=str(root), HIT_MICRO_PER_READ=str(per_read), HIT_MICRO_HITS=str(n),
                   PYTHONHASHSEED="0")
        if log:
            env["HIT_MICRO_LOG"] = "1"
        err = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                              sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True,
                             env=env, check=True).stderr
        counts.append(int(re.search(r"Collected : (\d+)", err).group(1)))
    return (counts[1] - counts[0]) / hits


def one(root: Path, log: bool, per_read: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(root), HIT_MICRO_PER_READ=str(per_read))
    if log:
        env["HIT_MICRO_LOG"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True,
                         env=env, check=True).stdout
    return float(out.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compare-root", type=Path, default=None, metavar="DIR")
    ap.add_argument("--log", action="store_true", help="write the shared log too")
    ap.add_argument("--per-read", type=int, default=100, choices=(1, 10, 100, 1000),
                    help="requests handed to data_received at a time")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per hit under valgrind instead of timing (one round)")
    args = ap.parse_args()
    roots = [("this checkout", ROOT)]
    if args.compare_root is not None:
        roots.append((str(args.compare_root), args.compare_root.resolve()))
    if args.instructions:
        for name, root in roots:
            print(f"{name:30s} {instructions(root, args.log, args.per_read):,.0f} instructions/hit")
        return
    runs: dict[str, list[float]] = {name: [] for name, _ in roots}
    for _ in range(args.rounds):
        for name, root in roots:
            runs[name].append(one(root, args.log, args.per_read))
    for name, values in runs.items():
        print(f"{name:30s} {statistics.median(values):6.2f} us/hit (median of {len(values)}: "
              f"{', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
