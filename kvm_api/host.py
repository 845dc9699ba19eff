"""Runs one program file in this process: `python -m kvm_api.host --name N --control-fd FD FILE`.

The server starts it with one end of a SEQPACKET socketpair as FD. The program file runs as
`__main__`, so both `if __name__ == "__main__": main()` and top-level calls work; it must call
wait_for_requests(), which tells the server it is ready and serves until the control channel
closes. A program that fails or returns before that is reported to the server as an "error"
message and the process exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from kvm_api import _state, protocol
from kvm_api.limits import apply_boot_limits
from kvm_api.output import LineWriter

LOAD_FAILED = 3
ORPHAN_GRACE = 1.0     # seconds the main thread gets to exit by itself once the server is gone


def _watch_server(fd: int) -> None:
    """Exit even if a callback hangs, once the server's end of the control channel is closed."""
    poller = select.poll()
    poller.register(fd, 0)          # POLLHUP is always reported; no data is consumed here
    while True:
        events = poller.poll()
        if any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events):
            break
    time.sleep(ORPHAN_GRACE)
    if _state.output is not None:
        _state.output.close_out()
    os._exit(0)


def _report(ctrl: socket.socket, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    try:
        ctrl.setblocking(True)
        for frame in protocol.encode({"op": "error", "message": message}):
            ctrl.send(frame)
    except OSError:
        pass                        # the server is gone; nobody to tell


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvm_api.host")
    ap.add_argument("--name", required=True)
    ap.add_argument("--control-fd", type=int, required=True)
    ap.add_argument("--settings", default="{}", help="limits as JSON (kvm_api.limits)")
    ap.add_argument("program")
    ap.add_argument("args", nargs="*")
    ns = ap.parse_args(argv)

    # A background process group of the server's terminal: writing to it must not stop us (tostop).
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    # stdout and stderr are the server's log stream: every line goes there as "<name>: <line>"
    _state.output = out = LineWriter(sys.stderr.fileno(), f"{ns.name}: ")
    sys.stdout = sys.stderr = out
    try:
        with socket.socket(fileno=ns.control_fd) as ctrl:
            return _run(ns, ctrl)
    finally:
        out.close_out()


def _run(ns: argparse.Namespace, ctrl: socket.socket) -> int:
    threading.Thread(target=_watch_server, args=(ns.control_fd,), daemon=True,
                     name="kvm_api-watchdog").start()
    settings = json.loads(ns.settings)
    _state.host = host = _state.Host(ns.name, ctrl, settings=settings)

    path = Path(ns.program).resolve()
    sys.argv = [str(path), *ns.args]
    sys.path.insert(0, str(path.parent))    # the program may import modules beside it
    try:
        apply_boot_limits(settings, path)
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        if host.waited:             # wait_for_requests() ended: the server closed the channel
            return 0
        _report(ctrl, f"program '{ns.name}' exited (status {e.code}) without calling wait_for_requests()")
        return LOAD_FAILED
    except BaseException as e:
        traceback.print_exc(file=sys.stderr)
        where = "while serving" if host.waited else "while loading"
        _report(ctrl, f"program '{ns.name}' failed {where}: {type(e).__name__}: {e}")
        return LOAD_FAILED
    if host.waited:
        return 0
    _report(ctrl, f"program '{ns.name}' did not call wait_for_requests()")
    return LOAD_FAILED


if __name__ == "__main__":
    sys.exit(main())
