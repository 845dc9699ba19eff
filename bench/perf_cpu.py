"""Server CPU time per request for the hot paths: 1 KiB hit, 100 KiB hit, pass, miss (distinct URLs).

    python bench/perf_cpu.py [--only hit1k,hit100k,pass,miss] [--seconds 4] [--rounds 3]
                             [--compare-root DIR] [--compare-env VAR=VALUE] [--connections 16]

Each scenario starts a fresh cacheserver in front of a bare asyncio origin (this file, `--origin`),
runs wrk, and divides the server process's CPU time (utime + stime from /proc) by the requests wrk
made: a figure that holds on a loaded machine, where req/s does not. With --compare-root, another
checkout runs the same scenario in alternation (A B A B ...), and the ratio is printed (a path
ending in `varnishd`, e.g. /usr/sbin/varnishd, runs varnishd with the same VCL and flags); with
--compare-env, this checkout again with that environment variable set (CACHESERVER_LOOP=asyncio). The miss
scenario also reports the server's RSS growth per cached object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, cacheserver_cmd, cpu_seconds, free_port, start, stop, wrk


def wrk_script(url: str, seconds: int, connections: int, script: str) -> dict:
    """wrk with a Lua script (common.wrk takes none): {'rps', 'errors', 'requests'}."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": errors + (int(m.group(1)) if m else 0)}

SMALL = b"x" * 1024
BIG = b"y" * (100 * 1024)
VCL = ('vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{port}"; }}\n'
       "sub vcl_recv {{ if (req.url ~ \"^/pass\") {{ return (pass); }} }}\n")
# wrk: every request a URL of its own (each connection its own prefix)
MISS_LUA = """
local n = 0
local id = 0
setup = function(thread) end
init = function(args) id = math.random(1, 1000000000) end
request = function()
  n = n + 1
  return wrk.format("GET", "/m/" .. id .. "/" .. n)
end
"""


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _tree(pid: int) -> list[int]:
    """pid and its descendants (varnishd: the manager and its cache child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def tree_rss_kb(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            total += rss_kb(p)
        except OSError:
            pass
    return total


def origin_main(port: int) -> None:
    import httptools

    def response(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=3600\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body

    small, big = response(SMALL), response(BIG)

    class Origin(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""

        def on_url(self, url):
            self.url = url

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self):
            self.transport.write(big if self.url.startswith(b"/big") else small)

    async def serve():
        server = await asyncio.get_running_loop().create_server(Origin, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def run_one(root: Path, scenario: str, origin_port: int, seconds: int, connections: int,
            env: dict[str, str]) -> dict:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="perf-cpu-")
    vcl = Path(workdir) / "perf.vcl"
    vcl.write_text(VCL.format(port=origin_port))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        if root.name == "varnishd":
            os.chmod(workdir, 0o755)            # varnishd drops to user varnish
            os.chmod(vcl, 0o644)
            proc = start([str(root), "-F", "-n", f"{workdir}/n", "-a", f"127.0.0.1:{port}", "-f", str(vcl),
                          "-s", "malloc,1g"], port)
        else:
            proc = start(cacheserver_cmd(port, "-f", str(vcl), "-n", workdir, "-s", "malloc,1g"), port,
                         cwd=root, root=root)      # cwd: python -m imports from there first
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        url = {"hit1k": "/obj", "hit100k": "/big", "pass": "/pass", "miss": "/m"}[scenario]
        script = None
        if scenario == "miss":
            script = Path(workdir) / "miss.lua"
            script.write_text(MISS_LUA)
        else:
            wrk(f"http://127.0.0.1:{port}{url}", 1, connections)        # warm (and cache)
        rss0 = tree_rss_kb(proc.pid)
        before = tree_cpu_seconds(proc.pid)
        if script:
            r = wrk_script(f"http://127.0.0.1:{port}{url}", seconds, connections, str(script))
        else:
            r = wrk(f"http://127.0.0.1:{port}{url}", seconds, connections)
        r["cpu_us"] = (tree_cpu_seconds(proc.pid) - before) / max(r["requests"], 1) * 1e6
        r["rss_growth_kb"] = tree_rss_kb(proc.pid) - rss0
        return r
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--origin", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--only", default="hit1k,hit100k,pass,miss")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--compare-root", type=Path)
    ap.add_argument("--compare-env", metavar="VAR=VALUE")
    args = ap.parse_args()
    if args.origin:
        origin_main(args.origin)
        return
    origin_port = free_port()
    origin = start([sys.executable, str(Path(__file__).resolve()), "--origin", str(origin_port)], origin_port)
    builds = [("this", ROOT, {})]
    if args.compare_root:
        builds.append(("compared", args.compare_root.resolve(), {}))
    elif args.compare_env:
        var, _, value = args.compare_env.partition("=")
        builds.append(("compared", ROOT, {var: value}))
    try:
        for scenario in args.only.split(","):
            figures: dict[str, list[dict]] = {name: [] for name, _, _ in builds}
            for _ in range(args.rounds):
                for name, root, env in builds:
                    figures[name].append(run_one(root, scenario, origin_port, args.seconds, args.connections,
                                                 env))
            line = f"{scenario:8s}"
            medians = {}
            for name, _, _ in builds:
                runs = figures[name]
                cpu = medians[name] = statistics.median(r["cpu_us"] for r in runs)
                rps = statistics.median(r["rps"] for r in runs)
                errors = sum(r["errors"] for r in runs)
                line += f"  {name}: {cpu:7.1f} us/req ({rps:7.0f} req/s, errors {errors})"
                if scenario == "miss":
                    per = statistics.median(r["rss_growth_kb"] * 1024 / max(r["requests"], 1) for r in runs)
                    line += f" {per:.0f} B RSS/object"
            if len(builds) > 1:
                line += f"  cpu ratio this/compared {medians['this'] / medians['compared']:.3f}"
            print(line, flush=True)
    finally:
        stop(origin)


if __name__ == "__main__":
    main()
