"""The docs' /tcp after the steal, in process: CPU time (or instructions) per request that
programs/hello.py answers on its stolen keep-alive connections, against the bare asyncio server
(bench/tiny_http.py's protocol) answering the same client. No wrk, so the figure holds on a loaded
machine; the ratio is that of the /tcp target (>= 0.8x the bare server).

    python bench/steal_micro.py [--rounds 5] [--requests 40000] [--conns 16] [--compare-root DIR]
                                [--instructions]

A client in another process (not counted) holds `--conns` connections and, turn after turn, sends
one `GET /tcp` on each and reads every answer. For the program, the measured process reads each
connection's first request (as the server does before tinykvm.steal()), hands the socket to the
program's event loop (kvm_api/loop.py) as a steal and runs that loop, with the program's Print
lines going to /dev/null; for the bare server, asyncio serves the sockets. `--instructions` counts
instructions under callgrind (two runs, `--requests` apart, so start-up cancels out).
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

# The client: CONNS connections, each sends a request and reads the whole answer, turn after turn.
CLIENT = r'''
import socket, sys
port, conns, turns, ctrl_fd = (int(a) for a in sys.argv[1:5])
ANSWER_LEN = int(sys.argv[5])
REQUEST = b"GET /tcp HTTP/1.1\r\nHost: bench\r\n\r\n"
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
for turn in range(turns + 1):           # the first turn is the one the steal answers
    for s in socks:
        s.sendall(REQUEST)
    for s in socks:
        got = 0
        while got < ANSWER_LEN:
            data = s.recv(65536)
            if not data:
                sys.exit(f"connection closed after {got} bytes in turn {turn}")
            got += len(data)
socket.socket(fileno=ctrl_fd).close()   # the end: the measured loop stops
'''

# The measured process: `program` (the kvm_api loop running hello.py) or `bare` (asyncio).
CHILD = r'''
import asyncio, os, runpy, socket, subprocess, sys, time
mode, bare_path, conns, turns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, os.path.dirname(bare_path))
from tiny_http import FixedResponse, RESPONSES

listener = socket.create_server(("127.0.0.1", 0))
ctrl, ctrl_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
client = subprocess.Popen([sys.executable, "-c", os.environ["STEAL_MICRO_CLIENT"],
                           str(listener.getsockname()[1]), str(conns), str(turns), str(ctrl_peer.fileno()),
                           str(len(RESPONSES["hello"]))], pass_fds=(ctrl_peer.fileno(),))
ctrl_peer.close()
socks = [listener.accept()[0] for _ in range(conns)]
t0 = time.process_time()
if mode == "program":
    from kvm_api import _state
    from kvm_api.loop import EventLoop
    from kvm_api.output import LineWriter

    _state.output = sys.stdout = LineWriter(os.open(os.devnull, os.O_WRONLY), "hello: ")
    hello = runpy.run_path("programs/hello.py")       # defines the callbacks; main() is not run
    cb = _state.callbacks
    cb.on_connect, cb.on_read, cb.on_disconnect = hello["on_connected"], hello["on_read"], hello["on_disconnect"]
    _state.loop = loop = EventLoop(ctrl, cb)
    for i, s in enumerate(socks):
        s.recv(65536)                                 # the request the server reads before the steal
        loop._dispatch({"op": "steal", "id": i, "remote": "127.0.0.1", "arg": "/tcp"}, b"", [s.detach()])
    loop.run()
else:
    FixedResponse.response = RESPONSES["hello"]

    async def serve():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(ctrl.fileno(), lambda: done.done() or done.set_result(None))
        for s in socks:
            await loop.connect_accepted_socket(FixedResponse, s)
        await done

    asyncio.run(serve())
used = time.process_time() - t0
if client.wait() != 0:
    sys.exit("the client failed")
sys.__stdout__.write(f"{used}\n")
'''


def _run(root: Path, mode: str, conns: int, turns: int, under: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(root), STEAL_MICRO_CLIENT=CLIENT, PYTHONHASHSEED="0")
    done = subprocess.run([*under, sys.executable, "-c", CHILD, mode, str(ROOT / "bench" / "tiny_http.py"),
                           str(conns), str(turns)], cwd=root, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"steal_micro {mode} in {root} failed:\n{done.stderr}")
    return done.stdout if not under else done.stderr


def us_per_request(root: Path, mode: str, conns: int, requests: int) -> float:
    turns = requests // conns
    return float(_run(root, mode, conns, turns, []).split()[-1]) / (turns * conns) * 1e6


def instructions(root: Path, mode: str, conns: int, requests: int) -> float:
    """Instructions per request under callgrind: a run of `requests` more minus a run of none."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install -y valgrind)")
    _run(root, mode, conns, 0, [])      # writes the bytecode of changed files outside the counted runs
    turns = requests // conns
    counts = []
    for n in (0, turns):
        err = _run(root, mode, conns, n, ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"])
        counts.append(int(re.search(r"Collected : (\d+)", err).group(1)))
    return (counts[1] - counts[0]) / (turns * conns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--compare-root", type=Path, default=None, metavar="DIR")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per request under valgrind instead of timing (one round)")
    args = ap.parse_args()
    runs = [("bare asyncio", ROOT, "bare"), ("this checkout", ROOT, "program")]
    if args.compare_root is not None:
        runs.append((str(args.compare_root), args.compare_root.resolve(), "program"))
    if args.instructions:
        requests = min(args.requests, 4000)
        for name, root, mode in runs:
            print(f"{name:30s} {instructions(root, mode, args.conns, requests):,.0f} instructions/request")
        return
    results: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(args.rounds):
        for name, root, mode in runs:
            results[name].append(us_per_request(root, mode, args.conns, args.requests))
    bare = statistics.median(results["bare asyncio"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:30s} {median:6.2f} us/request, {bare / median:.2f}x the bare server's rate "
              f"(median of {len(values)}: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
