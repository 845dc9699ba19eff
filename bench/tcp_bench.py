"""wrk against the docs' /tcp (stolen by tinykvm.steal into the hello program) and against a bare
asyncio+httptools server giving the same answer. Prints both rates and their ratio.

    python bench/tcp_bench.py [--seconds 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import sys

from common import ROOT, cacheserver_cmd, free_port, start, stop, wrk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()

    results = {}
    port = free_port()
    proc = start(cacheserver_cmd(port, "-f", str(ROOT / "default.vcl")), port)
    try:
        wrk(f"http://127.0.0.1:{port}/tcp", 1, args.connections)     # warm up: start the program
        results["cacheserver /tcp (steal -> hello)"] = wrk(f"http://127.0.0.1:{port}/tcp", args.seconds,
                                                           args.connections)
    finally:
        stop(proc)
    port = free_port()
    proc = start([sys.executable, str(ROOT / "bench" / "tiny_http.py"), str(port), "hello"], port)
    try:
        results["bare asyncio+httptools"] = wrk(f"http://127.0.0.1:{port}/tcp", args.seconds, args.connections)
    finally:
        stop(proc)
    for name, r in results.items():
        print(f"{name:40s} {r['rps']:10.0f} req/s  errors {r['errors']}")
    ours, bare = (r["rps"] for r in results.values())
    print(f"{'ratio cacheserver/bare':40s} {ours / bare:10.2f}")


if __name__ == "__main__":
    main()
