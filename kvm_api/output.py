"""A program's own output: each line, prefixed "<program>: ", written straight to the server's log fd.

The server starts a program with its own stderr as the program's stdout and stderr, so program
output never passes through the server's event loop. Lines are buffered here and written whole
(one os.write per batch; a line of up to PIPE_BUF bytes never interleaves with another process's
line on a pipe). The program's event loop flushes when it has nothing to do, and every LOG_DELAY
while it stays busy; outside the loop every write of a complete line is flushed at once.
"""

from __future__ import annotations

import io
import os
import threading

MAX_BUFFER = 64 * 1024      # beyond this much buffered output, write now


class LineWriter(io.TextIOBase):
    """A text stream for sys.stdout / sys.stderr that prefixes every line with the program's name."""

    def __init__(self, fd: int, prefix: str, *, autoflush: bool = True) -> None:
        super().__init__()
        self._fd = fd
        self._prefix = prefix.encode()
        self._partial = b""                  # the start of a line without its newline yet
        self._out = bytearray()              # complete, prefixed lines not written yet
        self._lock = threading.Lock()        # the watchdog thread may flush at exit
        self.autoflush = autoflush           # False while the event loop flushes

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "replace"

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        data = s.encode("utf-8", "replace")
        with self._lock:
            if self._partial:
                data = self._partial + data
            lines = data.split(b"\n")
            self._partial = lines.pop()
            out = self._out
            for line in lines:
                out += self._prefix
                out += line.rstrip(b"\r")
                out += b"\n"
            if len(self._partial) > MAX_BUFFER:          # a huge line without newline: cut it
                self._out += self._prefix + self._partial + b"\n"
                self._partial = b""
            if self._out and (self.autoflush or len(self._out) > MAX_BUFFER):
                self._write_out()
        return len(s)

    def pending(self) -> bool:
        """Complete lines wait to be written."""
        return bool(self._out)

    def flush(self) -> None:
        """Write the complete lines buffered so far (a partial line waits for its newline)."""
        with self._lock:
            if self._out:
                self._write_out()

    def close_out(self) -> None:
        """At exit: everything, a partial line too."""
        with self._lock:
            if self._partial:
                self._out += self._prefix + self._partial + b"\n"
                self._partial = b""
            if self._out:
                self._write_out()

    def _write_out(self) -> None:
        view = memoryview(self._out)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            pass                                     # the log fd is gone: nothing to tell
        finally:
            view.release()
            self._out.clear()
