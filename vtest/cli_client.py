"""The runner's side of the Varnish CLI protocol: status line, body, trailing newline; auth."""
from __future__ import annotations

import hashlib
import socket
import time

from .errors import TestFailure

CLI_HEADER_LEN = 13  # "%-3d %-8d\n"


def auth_response(challenge: str, secret: bytes) -> str:
    """sha256(challenge + "\\n" + secret + challenge + "\\n") in hex, as varnish-cli(7) describes."""
    h = hashlib.sha256()
    h.update(challenge.encode() + b"\n" + secret + challenge.encode() + b"\n")
    return h.hexdigest()


class CliConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure("CLI rx timeout")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout as e:
                raise TestFailure("CLI rx timeout") from e
            except OSError as e:
                raise TestFailure(f"CLI rx failed: {e}") from e
            if not data:
                raise TestFailure("CLI connection closed")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_result(self, timeout: float = 20.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        head = self._read(CLI_HEADER_LEN, deadline).decode("latin-1")
        try:
            status, length = int(head[:3]), int(head[4:12])
        except ValueError as e:
            raise TestFailure(f"CLI bad header {head!r}") from e
        body = self._read(length + 1, deadline)[:-1]
        return status, body.decode("latin-1")

    def ask(self, cmd: str, timeout: float = 20.0) -> tuple[int, str]:
        try:
            self.sock.sendall(cmd.encode("latin-1", "replace") + b"\n")
        except OSError as e:
            raise TestFailure(f"CLI tx failed: {e}") from e
        return self.read_result(timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
