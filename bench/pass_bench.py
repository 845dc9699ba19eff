"""Pass requests (every request a backend fetch) of a 1 KiB object: rate and the server's CPU time per
request, measured from /proc over the wrk run.

    python bench/pass_bench.py [--seconds 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from common import ROOT, cacheserver_cmd, free_port, start, stop, wrk

PASS_VCL = "vcl 4.1;\nbackend default {{ .host = \"127.0.0.1\"; .port = \"{port}\"; }}\n" \
           "sub vcl_recv {{ return (pass); }}\n"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()

    origin_port = free_port()
    origin = start([sys.executable, str(ROOT / "bench" / "tiny_http.py"), str(origin_port), "object"], origin_port)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".vcl") as vcl:
            vcl.write(PASS_VCL.format(port=origin_port))
            vcl.flush()
            port = free_port()
            proc = start(cacheserver_cmd(port, "-f", vcl.name), port)
            try:
                wrk(f"http://127.0.0.1:{port}/obj", 1, args.connections)
                before = cpu_seconds(proc.pid)
                r = wrk(f"http://127.0.0.1:{port}/obj", args.seconds, args.connections)
                used = cpu_seconds(proc.pid) - before
            finally:
                stop(proc)
    finally:
        stop(origin)
    print(f"pass {r['rps']:10.0f} req/s  errors {r['errors']}  "
          f"server CPU {used / max(r['requests'], 1) * 1e6:.0f} us/request")


if __name__ == "__main__":
    main()
