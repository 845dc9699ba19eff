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
    """A text stream for sys.stdout / sys.stderr that prefixes every line with the program's name.

    write() only keeps the text: splitting it into lines, prefixing and encoding happen once per
    flush for everything written since, as write() runs once per Print (once per request in the
    docs' hello).
    """

    # slots: attribute access on a subclass of io's C base class is several times slower through
    # its __dict__
    __slots__ = ("_fd", "_prefix", "_joiner", "_partial", "_pending", "_size", "_lock", "autoflush")

    def __init__(self, fd: int, prefix: str, *, autoflush: bool = True) -> None:
        super().__init__()
        self._fd = fd
        self._prefix = prefix.encode()
        self._joiner = b"\n" + self._prefix
        self._partial = b""                  # the start of a line without its newline yet
        self._pending: list[str] = []        # text written since the last flush
        self._size = 0                       # its length
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
        # a list append is atomic, so the lock is only taken where the text is taken out
        self._pending.append(s)
        self._size += len(s)
        if self.autoflush or self._size > MAX_BUFFER:
            self.flush()
        return len(s)

    def pending(self) -> bool:
        """Text waits to be written."""
        return bool(self._pending)

    def flush(self) -> None:
        """Write the complete lines written so far (a partial line waits for its newline)."""
        with self._lock:
            if self._pending:
                self._write_lines(final=False)

    def close_out(self) -> None:
        """At exit: everything, a partial line too."""
        with self._lock:
            self._write_lines(final=True)

    def _write_lines(self, *, final: bool) -> None:
        pending, self._pending, self._size = self._pending, [], 0
        data = self._partial + "".join(pending).encode("utf-8", "replace")
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if b"\r" in data:
            lines = [line.rstrip(b"\r") for line in lines]
        if len(self._partial) > MAX_BUFFER or (final and self._partial):
            lines.append(self._partial)      # a huge line without newline, or the last: cut it
            self._partial = b""
        if lines:
            self._write_out(self._prefix + self._joiner.join(lines) + b"\n")

    def _write_out(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            pass                                     # the log fd is gone: nothing to tell
        finally:
            view.release()
