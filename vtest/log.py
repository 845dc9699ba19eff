"""Per-test log in varnishtest's shape: level stars, entity name, elapsed time, text."""
from __future__ import annotations

import os
import threading
import time

_STARS = ("----", "*   ", "**  ", "*** ", "****")


class Log:
    """Writes straight to a file descriptor so nothing is lost when the worker exits abruptly."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def write(self, level: int, name: str, text: str) -> None:
        stars = _STARS[min(max(level, 0), 4)]
        head = f"{stars} {name:<5} {self.elapsed():.3f} "
        lines = text.split("\n") if text else [""]
        out = "".join(head + ln + "\n" for ln in lines)
        with self._lock:
            os.write(self.fd, out.encode("latin-1", "replace"))

    def dump(self, level: int, name: str, prefix: str, data: bytes | str, limit: int = 4096) -> None:
        """Log data that may be binary, one line per line of data, escaped like varnishtest does."""
        if isinstance(data, str):
            data = data.encode("latin-1", "replace")
        if len(data) > limit:
            data = data[:limit]
        text = "".join(_esc(b) for b in data)
        lines = text.split("\\n\n")
        self.write(level, name, "\n".join(f"{prefix}|{ln}" + ("\\n" if i < len(lines) - 1 else "")
                                          for i, ln in enumerate(lines) if ln or i < len(lines) - 1))


def _esc(b: int) -> str:
    if b == 10:
        return "\\n\n"
    if b == 13:
        return "\\r"
    if b == 9:
        return "\\t"
    if 32 <= b < 127 and b != 92:
        return chr(b)
    if b == 92:
        return "\\\\"
    return f"\\x{b:02x}"


class EntityLog:
    """A Log bound to one entity name (top, c1, s1, v1...)."""

    def __init__(self, log: Log, name: str) -> None:
        self.log = log
        self.name = name

    def __call__(self, level: int, text: str) -> None:
        self.log.write(level, self.name, text)

    def dump(self, level: int, prefix: str, data: bytes | str) -> None:
        self.log.dump(level, self.name, prefix, data)
