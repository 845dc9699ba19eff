"""Run exactly one .vtc file in this process (the CLI starts one worker process per test).

Output: the test log on stdout, ending with a "#VTEST-RESULT status seconds reason" line;
exit status 0 passed, 1 failed, 77 skipped.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import traceback

from .context import TestContext
from .errors import TestFailure, TestSkip
from .log import Log
from .macros import Macros
from .runner import Runner


def _bad_backend() -> tuple[socket.socket, str]:
    """A bound, never-listening socket: connecting to it is refused for the whole test."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    addr, port = s.getsockname()[:2]
    return s, f"{addr} {port}"


def run_one(path: str, *, tmpdir: str, timeout: float, varnishd: str | None,
            defines: dict[str, str], params: list[str] | None = None,
            dump_counters: str | None = None) -> None:
    log = Log(1)
    macros = Macros()
    testdir = os.path.dirname(os.path.abspath(path))
    ctx = TestContext(log, macros, tmpdir=tmpdir, testdir=testdir, timeout=timeout, varnishd=varnishd)
    ctx.varnishd_params = list(params or [])
    ctx.dump_counters = dump_counters
    ctx.case_name = os.path.splitext(os.path.basename(path))[0]
    keep, bad = _bad_backend()
    for k, v in {"tmpdir": tmpdir, "testdir": testdir, "pwd": os.getcwd(), "localhost": "127.0.0.1",
                 "bad_ip": "192.0.2.255", "bad_backend": bad, "listen_addr": "127.0.0.1 0"}.items():
        macros.define(k, v)
    for k, v in defines.items():
        macros.define(k, v)
    try:
        with open(path, encoding="latin-1") as f:  # byte-transparent: tests carry raw UTF-8
            text = f.read()
    except OSError as e:
        ctx.finish("failed", f"cannot read {path}: {e}")
        return
    # A watchdog ends a test that overruns, from whatever state it is in.
    timer = threading.Timer(timeout, lambda: ctx.finish("failed", f"TEST TIMED OUT (after {timeout:g}s)"))
    timer.daemon = True
    timer.start()
    try:
        why = Runner.unsupported(text)
        if why:
            raise TestSkip(why)
        os.chdir(tmpdir)
        Runner(ctx).run(text)
    except TestSkip as e:
        ctx.top(1, f"SKIPPING test: {e}")
        ctx.finish("skipped", str(e))
    except TestFailure as e:
        ctx.top(0, str(e))
        ctx.finish("failed", str(e))
    except SystemExit:
        raise
    except Exception as e:
        ctx.top(0, traceback.format_exc())
        ctx.finish("failed", f"internal error: {e!r}")
    keep.close()
    ctx.top(1, "RESETTING after " + path)
    ctx.finish("passed")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vtest-worker")
    p.add_argument("--tmpdir", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--varnishd")
    p.add_argument("-D", action="append", default=[])
    p.add_argument("-p", action="append", default=[])
    p.add_argument("--dump-counters", metavar="DIR")
    p.add_argument("file")
    a = p.parse_args(argv)
    defines = dict(d.split("=", 1) for d in a.D if "=" in d)
    run_one(a.file, tmpdir=a.tmpdir, timeout=a.timeout, varnishd=a.varnishd, defines=defines, params=a.p,
            dump_counters=a.dump_counters)


if __name__ == "__main__":
    main(sys.argv[1:])
