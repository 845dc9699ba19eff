"""What asyncio reports about the server's own loop, as an operator wants it: a counter and one line.

An accept() that fails for want of descriptors (EMFILE) or memory repeats for as long as the shortage
lasts; asyncio's default handler prints a traceback each time. Here each failed accept counts in
varnishd's sess_fail_* counters and the log gets at most one line a second, saying how many more were
folded into it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

log = logging.getLogger("cacheserver")

# accept() failures by errno, as varnishd counts them (sess_fail_*)
_ACCEPT_FAILURES = {
    errno.ECONNABORTED: "sess_fail_econnaborted",
    errno.EINTR: "sess_fail_eintr",
    errno.EMFILE: "sess_fail_emfile",
    errno.ENFILE: "sess_fail_emfile",
    errno.EBADF: "sess_fail_ebadf",
    errno.ENOMEM: "sess_fail_enomem",
    errno.ENOBUFS: "sess_fail_enomem",
}


class LoopReports:
    """An asyncio exception handler: counts accept() failures, rate-limits every report to 1/s."""

    def __init__(self, counters: Any, interval: float = 1.0) -> None:
        self.counters = counters
        self.interval = interval
        self._last = -interval
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = context.get("message") or "unexpected error"
        if isinstance(exc, OSError) and "accept" in message:
            self.counters.sess_fail += 1
            name = _ACCEPT_FAILURES.get(exc.errno, "sess_fail_other")
            setattr(self.counters, name, getattr(self.counters, name) + 1)
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        self._last, self.suppressed = now, 0
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        log.error("%s%s%s", message, detail, more)
