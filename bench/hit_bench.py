"""Cache hits of a 1 KiB object: cacheserver against the real varnishd (when installed), same origin,
same wrk settings, in the same run. Prints both rates and their ratio.

    python bench/hit_bench.py [--seconds 5] [--connections 16] [--varnishd /usr/sbin/varnishd]
                              [--compare-root DIR] [--rounds N]

--compare-root runs a second cacheserver from another checkout (e.g. one without the shared log) in
the same run, alternating with this one for --rounds rounds, and prints the ratio of the two.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, cacheserver_cmd, free_port, start, stop, wait_port, wrk
from pass_bench import cpu_seconds


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
    ap.add_argument("--compare-root", type=Path, help="another checkout of cacheserver to measure too")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    origin_port = free_port()
    origin = start([sys.executable, str(ROOT / "bench" / "tiny_http.py"), str(origin_port), "object"], origin_port)
    results = {}
    builds = [("cacheserver", ROOT)]
    if args.compare_root:
        builds.append((f"cacheserver ({args.compare_root})", args.compare_root.resolve()))
    try:
        for _ in range(args.rounds):
            for name, root in builds:
                port = free_port()
                workdir = tempfile.mkdtemp(prefix="bench-cacheserver-")
                proc = start(cacheserver_cmd(port, "-b", f"127.0.0.1:{origin_port}", "-n", workdir), port,
                             root=root)
                try:
                    wrk(f"http://127.0.0.1:{port}/obj", 1, args.connections)
                    before = cpu_seconds(proc.pid)
                    r = wrk(f"http://127.0.0.1:{port}/obj", args.seconds, args.connections)
                    # CPU per request holds up on a loaded machine better than the rate does
                    r["cpu"] = cpu_seconds(proc.pid) - before
                finally:
                    stop(proc)
                    shutil.rmtree(workdir, ignore_errors=True)
                prev = results.get(name)
                if prev is not None:       # rounds: sums, divided at the end
                    r = {k: prev[k] + r[k] for k in ("rps", "errors", "cpu", "requests")}
                results[name] = r
        for name, _ in builds:
            results[name]["rps"] /= args.rounds
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
        cpu = f"  server CPU {r['cpu'] / max(r['requests'], 1) * 1e6:.1f} us/request" if "cpu" in r else ""
        print(f"{name:20s} {r['rps']:10.0f} req/s  errors {r['errors']}{cpu}")
    if args.compare_root:
        this, other = results["cacheserver"], results[builds[1][0]]
        print(f"{'ratio this/compared':20s} {this['rps'] / other['rps']:10.3f} req/s, "
              f"{(this['cpu'] / this['requests']) / (other['cpu'] / other['requests']):.3f} CPU per request")
    if "varnishd" in results:
        print(f"{'ratio ours/varnishd':20s} {results['cacheserver']['rps'] / results['varnishd']['rps']:10.2f}")
    else:
        print("varnishd not installed: no ratio (apt-get install -y varnish)")


if __name__ == "__main__":
    main()
