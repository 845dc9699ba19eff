"""gzip delivery: a cached, gzipped 16 KiB page hit by clients that do not take gzip (the server
gunzips it on every delivery) and by clients that do (sent as stored), cacheserver against the real
varnishd in the same run, same origin, same wrk settings.

    python bench/gzip_bench.py [--seconds 5] [--connections 16] [--varnishd /usr/sbin/varnishd]
                               [--compare-root DIR]

Prints req/s per server and client kind, and the ratio ours/varnishd. --compare-root also runs the
cacheserver of another checkout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.request
import zlib
from pathlib import Path

from common import ROOT, cacheserver_cmd, cpu_seconds, free_port, start, stop, wrk
from hit_bench import run_varnishd

CLIENTS = {"plain client (gunzip)": (), "gzip client": ("Accept-Encoding: gzip",)}


def check(port: int) -> None:
    """Both representations are right before anything is measured."""
    sys.path.insert(0, str(ROOT / "bench"))
    from tiny_http import PAGE

    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/page")) as r:
        assert r.headers.get("Content-Encoding") is None and r.read() == PAGE
    req = urllib.request.Request(f"http://127.0.0.1:{port}/page", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req) as r:
        assert r.headers.get("Content-Encoding") == "gzip"
        assert zlib.decompress(r.read(), 31) == PAGE


def measure(port: int, seconds: int, connections: int, pid: int | None = None) -> dict:
    """req/s per client kind; with pid (ours), the server's CPU time per request too."""
    check(port)
    out = {}
    for kind, headers in CLIENTS.items():
        wrk(f"http://127.0.0.1:{port}/page", 1, connections, headers=headers)
        before = cpu_seconds(pid) if pid is not None else 0.0
        out[kind] = wrk(f"http://127.0.0.1:{port}/page", seconds, connections, headers=headers)
        if pid is not None:
            out[kind]["cpu_us"] = (cpu_seconds(pid) - before) / max(out[kind]["requests"], 1) * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--varnishd", default=shutil.which("varnishd") or "/usr/sbin/varnishd")
    ap.add_argument("--compare-root", type=Path, default=None, metavar="DIR")
    args = ap.parse_args()

    origin_port = free_port()
    origin = start([sys.executable, str(ROOT / "bench" / "tiny_http.py"), str(origin_port), "gzip"], origin_port)
    results: dict[str, dict] = {}
    try:
        roots = [("cacheserver", ROOT)]
        if args.compare_root is not None:
            roots.append((f"cacheserver@{args.compare_root.name}", args.compare_root.resolve()))
        for name, root in roots:
            port = free_port()
            proc = start(cacheserver_cmd(port, "-b", f"127.0.0.1:{origin_port}"), port, cwd=root)
            try:
                results[name] = measure(port, args.seconds, args.connections, proc.pid)
            except AssertionError:
                print(f"{name}: wrong representation delivered, not measured")
            finally:
                stop(proc)
        if os.path.exists(args.varnishd):
            port = free_port()
            proc, workdir = run_varnishd(args.varnishd, port, origin_port)
            try:
                results["varnishd"] = measure(port, args.seconds, args.connections)
            finally:
                stop(proc)
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        stop(origin)
    for name, per_kind in results.items():
        for kind, r in per_kind.items():
            cpu = f"  server CPU {r['cpu_us']:.1f} us/request" if "cpu_us" in r else ""
            print(f"{name:24s} {kind:24s} {r['rps']:10.0f} req/s  errors {r['errors']}{cpu}")
    if "varnishd" in results and "cacheserver" in results:
        for kind in CLIENTS:
            ratio = results["cacheserver"][kind]["rps"] / results["varnishd"][kind]["rps"]
            print(f"{'ratio ours/varnishd':24s} {kind:24s} {ratio:10.2f}")
    elif "varnishd" not in results:
        print("varnishd not installed: no ratio (apt-get install -y varnish)")


if __name__ == "__main__":
    main()
