"""tinykvm programs on the request path, in one run: requests/s and CPU time per request.

    python bench/program_backend_bench.py [--seconds 5] [--connections 16] [--concurrency 2]

Rows (every request reaches its producer; nothing is served from the cache):
  program   return (pass) to tinykvm.program("hello")   (hello's on_get in a program process)
  plain     return (pass) to an HTTP backend (bench/tiny_http.py, 1 KiB)
  synth     return (synth(200)) and tinykvm.synth(0, "hello") in vcl_synth
  vsynth    cacheserver's own synthetic "Hello World!" (synth without a program)
  varnishd  varnishd's synth of the same body, when varnishd is installed
CPU per request is the server process's (and, for program rows, its program processes') user +
system time over the run divided by the requests: a figure that holds on a loaded machine.
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

VCL = """vcl 4.1;
import tinykvm;
backend origin {{ .host = "127.0.0.1"; .port = "{origin}"; }}

sub vcl_init {{
    tinykvm.configure("hello", {{"{{ "concurrency": {concurrency} }}"}});
    tinykvm.start("hello", async = false);
}}

sub vcl_recv {{
    if (req.url == "/synth") {{ return (synth(200)); }}
    if (req.url == "/vsynth") {{ return (synth(201)); }}
    return (pass);
}}

sub vcl_backend_fetch {{
    if (bereq.url == "/program") {{
        set bereq.backend = tinykvm.program("hello", bereq.url);
    }} else {{
        set bereq.backend = origin;
    }}
}}

sub vcl_synth {{
    if (resp.status == 200) {{
        tinykvm.synth(0, "hello", req.url);
    }} else {{
        set resp.status = 200;
        set resp.http.Content-Type = "text/plain";
        set resp.body = "Hello World!" + {{"
"}};
    }}
    return (deliver);
}}
"""

VARNISH_VCL = """vcl 4.1;
backend default none;
sub vcl_recv { return (synth(200)); }
sub vcl_synth {
    set resp.http.Content-Type = "text/plain";
    set resp.body = "Hello World!" + {"
"};
    return (deliver);
}
"""


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def tree_cpu(pid: int) -> float:
    total = cpu_seconds(pid)
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except FileNotFoundError:
            pass
    return total


def measure(url: str, pid: int, seconds: int, connections: int) -> tuple[dict, float, float]:
    """(wrk result, server CPU s/request, server + programs CPU s/request)."""
    wrk(url, 1, connections)                        # warm up (starts processes, fills pools)
    own, both = cpu_seconds(pid), tree_cpu(pid)
    r = wrk(url, seconds, connections)
    n = max(r["requests"], 1)
    return r, (cpu_seconds(pid) - own) / n, (tree_cpu(pid) - both) / n


def run_varnishd(seconds: int, connections: int) -> tuple[dict, float] | None:
    varnishd = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)
    if varnishd is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="tkbench-"))
    work.chmod(0o755)
    vcl = work / "synth.vcl"
    vcl.write_text(VARNISH_VCL)
    vcl.chmod(0o644)
    port = free_port()
    proc = subprocess.Popen([varnishd, "-F", "-n", str(work / "n"), "-a", f"127.0.0.1:{port}",
                             "-f", str(vcl), "-s", "malloc,64m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        wrk(f"http://127.0.0.1:{port}/", 1, connections)
        before = tree_cpu(proc.pid)
        r = wrk(f"http://127.0.0.1:{port}/", seconds, connections)
        return r, (tree_cpu(proc.pid) - before) / max(r["requests"], 1)
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=2, help="hello's backend processes")
    args = ap.parse_args()

    origin_port = free_port()
    origin = start([sys.executable, str(ROOT / "bench" / "tiny_http.py"), str(origin_port), "object"],
                   origin_port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as d:
            vcl = Path(d) / "bench.vcl"
            vcl.write_text(VCL.format(origin=origin_port, concurrency=args.concurrency))
            port = free_port()
            proc = start(cacheserver_cmd(port, "-f", str(vcl)), port)
            try:
                for name, path in (("program", "/program"), ("plain", "/plain"), ("synth", "/synth"),
                                   ("vsynth", "/vsynth")):
                    r, own, both = measure(f"http://127.0.0.1:{port}{path}", proc.pid, args.seconds,
                                           args.connections)
                    rows.append((name, r, own, both))
            finally:
                stop(proc)
    finally:
        stop(origin)
    for name, r, own, both in rows:
        print(f"{name:9s} {r['rps']:9.0f} req/s  errors {r['errors']:4d}  server CPU {own * 1e6:6.0f} us/req"
              f"  with programs {both * 1e6:6.0f} us/req")
    v = run_varnishd(args.seconds, args.connections)
    if v is None:
        print("varnishd  not installed")
    else:
        r, cpu = v
        print(f"varnishd  {r['rps']:9.0f} req/s  errors {r['errors']:4d}  varnishd CPU {cpu * 1e6:6.0f} us/req")


if __name__ == "__main__":
    main()
