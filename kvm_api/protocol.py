"""The control channel between the server and a program process.

Both ends hold one end of an AF_UNIX SOCK_SEQPACKET socketpair. SEQPACKET keeps message
boundaries and keeps an SCM_RIGHTS fd attached to exactly the message it was sent with, so no
stream framing is needed. A message is a JSON header plus an optional binary payload; a payload
larger than one frame continues in raw frames that follow it (never interleaved: each side sends a
whole message before the next one).

First frame:  4-byte big-endian header length | JSON header (has "n": total payload length) | payload
Next frames:  payload bytes only, until "n" bytes have arrived

Messages, server -> program:
  {"op": "steal", "id", "remote", "arg"} + prebuffer payload + one fd (SCM_RIGHTS)
  {"op": "request", "id", "method", "url", "arg", "headers": [[name, value]...], "config"}
                                           + request body payload ("get": the same, of old)
Program -> server:
  {"op": "ready", "pid"}                   the program called wait_for_requests()
  {"op": "error", "message"}               the program failed to load (then it exits)
  {"op": "reply", "id", "accepted": bool}  answer to "steal"
  {"op": "response", "id", "status", "content_type", "headers"} + body payload, or with
      "stream": true and no payload, then {"op": "chunk", "id"} + piece ... {"op": "end", "id"[, "error"]},
      or {"op": "response", "id", "error"[, "recycle"]}  (recycle: the process is out of memory)
  {"op": "closed", "reason"}               a stolen connection was closed (Disconnected/Reset/Error)
"""

from __future__ import annotations

import json
import os
import struct

CHUNK = 64 * 1024            # payload bytes per frame
MAX_HEADER = 60 * 1024       # keeps a first frame well below the kernel's SEQPACKET size limit
MAX_FRAME = 4 + MAX_HEADER + CHUNK
MAX_BODY = 1 << 30           # a whole (not streamed) response or request body at most
MAX_FDS = 4                  # a message carries one fd; room for a few so extras are seen (and closed)

_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    """A malformed frame on the control channel."""


def encode(header: dict, payload: bytes = b"") -> list[bytes]:
    """Split one message into frames."""
    head = json.dumps({**header, "n": len(payload)}, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"message header too large ({len(head)} bytes)")
    frames = [_LEN.pack(len(head)) + head + payload[:CHUNK]]
    frames.extend(payload[i:i + CHUNK] for i in range(CHUNK, len(payload), CHUNK))
    return frames


class Assembler:
    """Joins frames back into (header, payload, fds) messages."""

    def __init__(self) -> None:
        self._header: dict | None = None
        self._payload = bytearray()
        self._fds: list[int] = []

    def feed(self, frame: bytes, fds: list[int] = ()) -> tuple[dict, bytes, list[int]] | None:
        """Take one frame (and the fds received with it); return a whole message when complete.

        On ProtocolError every fd of the broken message has been closed already, so a bad peer
        cannot make us leak descriptors.
        """
        try:
            return self._feed(frame, list(fds))
        except ProtocolError:
            for fd in {*fds, *self._fds}:
                _close_fd(fd)
            self._header, self._payload, self._fds = None, bytearray(), []
            raise

    def _feed(self, frame: bytes, fds: list[int]) -> tuple[dict, bytes, list[int]] | None:
        if self._header is None:
            if len(frame) < 4:
                raise ProtocolError("short frame")
            (hlen,) = _LEN.unpack_from(frame)
            try:
                header = json.loads(frame[4:4 + hlen])
            except ValueError as e:
                raise ProtocolError(f"bad header: {e}") from None
            if not isinstance(header, dict) or not isinstance(header.get("n"), int) or header["n"] < 0:
                raise ProtocolError("bad header")
            self._header = header
            self._payload = bytearray(frame[4 + hlen:])
            self._fds = fds
        else:
            if fds:
                raise ProtocolError("fd attached to a continuation frame")
            self._payload += frame
        want = self._header["n"]
        if len(self._payload) > want:
            raise ProtocolError("payload longer than announced")
        if len(self._payload) < want:
            return None
        msg = (self._header, bytes(self._payload), self._fds)
        self._header, self._payload, self._fds = None, bytearray(), []
        return msg


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
