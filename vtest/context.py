"""State shared by everything in one running test, and the way a test ends from any thread."""
from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .errors import TestFailure, TestSkip
from .log import EntityLog, Log
from .macros import Macros

RESULT_TAG = "#VTEST-RESULT"


class TestContext:
    def __init__(self, log: Log, macros: Macros, *, tmpdir: str, testdir: str,
                 timeout: float, varnishd: str | None) -> None:
        self.log = log
        self.macros = macros
        self.tmpdir = tmpdir
        self.testdir = testdir
        self.timeout = timeout
        self.varnishd = varnishd
        self.servers: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}
        self.varnishes: dict[str, Any] = {}
        self.barriers: dict[str, Any] = {}
        self.top = EntityLog(log, "top")
        self._end_lock = threading.Lock()
        self._ended = False
        self.cleanups: list[Callable[[], None]] = []
        self.varnishd_params: list[str] = []  # vtest -p name=val, for every varnishd
        # vtest --dump-counters DIR: each varnish's counters go to DIR/<case>.<vN>.json at its end.
        self.dump_counters: str | None = None
        self.case_name = "test"

    def finish(self, status: str, reason: str = "") -> None:
        """Report the outcome and leave the process at once; the first caller wins."""
        with self._end_lock:
            first = not self._ended
            self._ended = True
        if not first:
            # Another thread is already ending the test (and will exit the process): park here.
            while True:
                time.sleep(3600)
        if status == "failed":
            self.log.write(0, "top", f"TEST FAILED: {reason}")
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:  # cleanup must never mask the result
                pass
        reason_line = reason.replace("\n", " ")
        os.write(1, f"{RESULT_TAG} {status} {self.log.elapsed():.3f} {reason_line}\n".encode())
        os._exit({"passed": 0, "failed": 1, "skipped": 77}[status])

    def spawn(self, entity: Any, fn: Callable[[], None]) -> threading.Thread:
        """Run fn in a thread; a failure there ends the test unless the entity was cancelled."""
        def body() -> None:
            try:
                fn()
            except TestSkip as e:
                self.finish("skipped", str(e))
            except TestFailure as e:
                if getattr(entity, "cancelled", False):
                    return
                entity.log(0, str(e))
                self.finish("failed", f"{entity.name}: {e}")
            except SystemExit:
                return
            except Exception as e:
                if getattr(entity, "cancelled", False):
                    return
                entity.log(0, traceback.format_exc())
                self.finish("failed", f"{entity.name}: internal error {e!r}")

        t = threading.Thread(target=body, name=entity.name, daemon=True)
        t.start()
        return t
