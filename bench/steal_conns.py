"""The docs' /tcp one connection at a time: what each steal hand-off costs the server and the program.

    python bench/steal_conns.py [--connections 2000] [--clients 4] [--rounds 3] [--compare-root DIR]...

Each client thread opens a connection, sends `GET /tcp`, reads the program's answer and closes, again
and again: every connection goes through accept, parse, vcl_recv, tinykvm.steal() (the fd to the
program by SCM_RIGHTS, its on_connect, its reply) and the program's close. Reports connections per
second and the CPU time per connection of the server and of its program process, from /proc (the
figure that holds on a loaded machine). `--compare-root` adds another checkout's cacheserver, run in
alternation with this one (a fresh server per run).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, cacheserver_cmd, cpu_seconds, free_port, start, stop  # noqa: E402

REQUEST = b"GET /tcp HTTP/1.1\r\nHost: bench\r\n\r\n"
END = b"Hello World!\n"
TIMEOUT = 10.0


def one_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(REQUEST)
        got = b""
        while not got.endswith(END):
            data = sock.recv(4096)
            if not data:
                raise RuntimeError(f"connection closed after {got!r}")
            got += data


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def measure(root: Path, connections: int, clients: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="steal-conns-") as work:
        proc = start(cacheserver_cmd(port, "-f", str(root / "default.vcl"), "-n", f"{work}/n"), port, cwd=root)
        try:
            one_connection(port)                  # the program process starts on the first steal
            programs = children(proc.pid)
            if not programs:
                raise RuntimeError("no program process after the first steal")
            before = [cpu_seconds(p) for p in (proc.pid, *programs)]
            errors: list[BaseException] = []

            def client(n: int) -> None:
                try:
                    for _ in range(n):
                        one_connection(port)
                except BaseException as exc:      # reported below; the other clients go on
                    errors.append(exc)

            threads = [threading.Thread(target=client, args=(connections // clients,)) for _ in range(clients)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
            after = [cpu_seconds(p) for p in (proc.pid, *programs)]
        finally:
            stop(proc)
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    done = connections // clients * clients
    spent = [(b - a) / done * 1e6 for a, b in zip(before, after, strict=True)]
    return {"rate": done / wall, "server_us": spent[0], "program_us": sum(spent[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare-root", action="append", default=[], type=Path)
    ns = ap.parse_args()
    roots = [ROOT, *ns.compare_root]
    runs: dict[Path, list[dict]] = {r: [] for r in roots}
    for _ in range(ns.rounds):
        for root in roots:
            r = measure(root, ns.connections, ns.clients)
            runs[root].append(r)
            print(f"{str(root):32s} {r['rate']:7.0f} conn/s  server {r['server_us']:6.1f} us/conn  "
                  f"program {r['program_us']:6.1f} us/conn", flush=True)
    print("medians:")
    for root, rs in runs.items():
        print(f"{str(root):32s} {statistics.median(r['rate'] for r in rs):7.0f} conn/s  server "
              f"{statistics.median(r['server_us'] for r in rs):6.1f} us/conn  program "
              f"{statistics.median(r['program_us'] for r in rs):6.1f} us/conn")


if __name__ == "__main__":
    main()
