"""Cache hits of a 1 KiB object: cacheserver against the real varnishd (when installed), same origin,
same wrk settings, in the same run. Prints both rates and their ratio.

    python bench/hit_bench.py [--seconds 5] [--connections 16] [--varnishd /usr/sbin/varnishd]
                              [--compare-root DIR]

--compare-root runs the cacheserver of another checkout (e.g. the main branch's worktree) too, in
the same run, so that a change is measured against its base under the same load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, cacheserver_cmd, cpu_seconds, free_port, start, stop, wait_port, wrk


def run_varnishd(varnishd: str, port: int, origin: int) -> tuple[subprocess.Popen, str]:
    workdir = tempfile.mkdtemp(prefix="bench-varnishd-")
    os.chmod(workdir, 0o755)         # varnishd drops to user varnish
    proc = subprocess.Popen([varnishd, "-F", "-n", workdir, "-a", f"127.0.0.1:{port}",
                             "-b", f"127.0.0.1:{origin}", "-s", "malloc,256m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, workdir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--varnishd", default=shutil.which("varnishd") or "/usr/sbin/varnishd")
    ap.add_argument("--compare-root", type=Path, default=None, metavar="DIR",
                    help="also run this checkout's cacheserver (e.g. the base branch)")
    args = ap.parse_args()

    origin_port = free_port()
    origin = start([sys.executable, str(ROOT / "bench" / "tiny_http.py"), str(origin_port), "object"], origin_port)
    results = {}
    try:
        roots = [("cacheserver", ROOT)]
        if args.compare_root is not None:
            roots.append((f"cacheserver@{args.compare_root.name}", args.compare_root.resolve()))
        for name, root in roots:
            port = free_port()
            proc = start(cacheserver_cmd(port, "-b", f"127.0.0.1:{origin_port}"), port, cwd=root)
            try:
                wrk(f"http://127.0.0.1:{port}/obj", 1, args.connections)
                before = cpu_seconds(proc.pid)
                results[name] = wrk(f"http://127.0.0.1:{port}/obj", args.seconds, args.connections)
                used = cpu_seconds(proc.pid) - before
                results[name]["cpu_us"] = used / max(results[name]["requests"], 1) * 1e6
            finally:
                stop(proc)
        if os.path.exists(args.varnishd):
            port = free_port()
            proc, workdir = run_varnishd(args.varnishd, port, origin_port)
            try:
                wrk(f"http://127.0.0.1:{port}/obj", 1, args.connections)
                results["varnishd"] = wrk(f"http://127.0.0.1:{port}/obj", args.seconds, args.connections)
            finally:
                stop(proc)
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        stop(origin)
    for name, r in results.items():
        cpu = f"  server CPU {r['cpu_us']:.1f} us/request" if "cpu_us" in r else ""
        print(f"{name:20s} {r['rps']:10.0f} req/s  errors {r['errors']}{cpu}")
    if "varnishd" in results:
        print(f"{'ratio ours/varnishd':20s} {results['cacheserver']['rps'] / results['varnishd']['rps']:10.2f}")
    else:
        print("varnishd not installed: no ratio (apt-get install -y varnish)")


if __name__ == "__main__":
    main()
