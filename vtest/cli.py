"""vtest command line: varnishtest's flags, parallel workers, one line per finished test."""
from __future__ import annotations

import argparse
import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from .execute import Outcome, run_test

LOG_TAIL = 40


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtest", description="Run varnishtest (.vtc) test cases.")
    p.add_argument("-j", type=int, default=1, metavar="N", help="run N tests in parallel")
    p.add_argument("-k", action="store_true", help="continue on test failure")
    p.add_argument("-q", action="store_true", help="quiet: report only failures")
    p.add_argument("-v", action="store_true", help="verbose: show the log of every test")
    p.add_argument("-l", action="store_true", help="leave the temporary directory of failed tests")
    p.add_argument("-L", action="store_true", help="always leave the temporary directories")
    p.add_argument("-t", type=float, default=60.0, metavar="SECONDS", help="per-test timeout (default 60)")
    p.add_argument("-D", action="append", default=[], metavar="name=value", help="define a macro")
    p.add_argument("-p", action="append", default=[], metavar="name=value",
                   help="pass a parameter to every varnishd")
    p.add_argument("-n", type=int, default=1, metavar="ITERATIONS", help="run the tests this many times")
    p.add_argument("--varnishd", metavar="PATH",
                   help="run varnish blocks against this varnishd instead of our cacheserver")
    p.add_argument("--dump-counters", metavar="DIR",
                   help="write each varnish's counters to DIR/<case>.<vN>.json when it is stopped at its end")
    p.add_argument("files", nargs="+", metavar="FILE")
    return p


def format_outcome(o: Outcome, verbose: bool) -> str:
    head = f"#    top  TEST {o.path}"
    if o.status == "passed":
        line = f"{head} passed ({o.duration:.3f})"
        return "\n".join(o.log + [line]) if verbose else line
    if o.status == "skipped":
        line = f"{head} skipped ({o.reason})"
        return "\n".join(o.log + [line]) if verbose else line
    log = o.log if verbose else o.log[-LOG_TAIL:]
    return "\n".join(log + [f"{head} FAILED ({o.duration:.3f}) {o.reason}"])


class Progress:
    """A one-line "[done/total]" status, only on a terminal, cleared before other output."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.lock = threading.Lock()

    def emit(self, text: str | None) -> None:
        with self.lock:
            if self.enabled:
                sys.stdout.write("\r\x1b[K")
            if text:
                sys.stdout.write(text + "\n")
            if self.enabled and self.done < self.total:
                sys.stdout.write(f"[{self.done}/{self.total}] running...")
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """The `vtest` console script: exit status 0 only when no test failed."""
    try:
        return _run(build_parser().parse_args(argv))
    except BrokenPipeError:  # output piped into head & co.
        return 1


def _run(a: argparse.Namespace) -> int:
    defines: dict[str, str] = {}
    for d in a.D:
        if "=" not in d:
            print(f"vtest: -D needs name=value, got {d!r}", file=sys.stderr)
            return 2
        k, v = d.split("=", 1)
        defines[k] = v
    for f in a.files:
        if not os.path.isfile(f):
            print(f"vtest: cannot read {f}", file=sys.stderr)
            return 2
    if a.dump_counters and not os.path.isdir(a.dump_counters):
        print(f"vtest: --dump-counters: no such directory {a.dump_counters}", file=sys.stderr)
        return 2
    keep = "always" if a.L else "failed" if a.l else "never"
    progress = Progress(len(a.files) * max(1, a.n), sys.stdout.isatty() and not a.v)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    pending = list(a.files) * max(1, a.n)
    stop = False
    if progress.enabled:
        progress.emit(None)
    with ThreadPoolExecutor(max_workers=max(1, a.j)) as pool:
        running: set[Future[Outcome]] = set()
        while pending or running:
            while pending and not stop and len(running) < max(1, a.j):
                path = pending.pop(0)
                running.add(pool.submit(run_test, path, timeout=a.t, varnishd=a.varnishd,
                                        defines=defines, keep_tmp=keep, params=a.p,
                                        dump_counters=a.dump_counters))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                o = fut.result()
                counts[o.status] += 1
                progress.done += 1
                if o.status == "failed" and not a.k:
                    stop = True  # like varnishtest without -k: start nothing new
                quiet = a.q and o.status != "failed"
                progress.emit(None if quiet else format_outcome(o, a.v))
    progress.emit(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
