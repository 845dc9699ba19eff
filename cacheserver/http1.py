"""HTTP/1 wire details shared by the client and backend sides: reason phrases, dates, serialisation."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from vcl.runtime import HttpMessage

REASONS = {s.value: s.phrase for s in HTTPStatus}
REASONS.update({123: "Unknown HTTP Status", 306: "(Unused)"})

# Hop-by-hop fields (RFC 9110 7.6.1): never forwarded from one connection to the next.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade"})

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
EXPECTATION_FAILED = b"HTTP/1.1 417 Expectation Failed\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


# Text on the wire is UTF-8 with surrogateescape both ways: any byte sequence survives a round trip,
# and strings written in VCL (read as UTF-8) go out as the bytes the VCL file had.
WIRE = "utf-8"
WIRE_ERRORS = "surrogateescape"


def text(raw: bytes) -> str:
    return raw.decode(WIRE, WIRE_ERRORS)


def wire(value: str) -> bytes:
    return value.encode(WIRE, WIRE_ERRORS)


def reason_for(status: int) -> str:
    return REASONS.get(status, "Unknown HTTP Status")


class DateCache:
    """An RFC 1123 date for the Date header, formatted at most once a second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = formatdate(second, usegmt=True)
        return self._text


DATES = DateCache()


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def serialize_head(resp: HttpMessage) -> bytes:
    """The status line and header block of a response, ready for the wire."""
    parts = [f"HTTP/1.1 {resp.status % 1000:03d} {resp.reason}\r\n"]   # VCL may set 1xxx: sent mod 1000
    for name, value in resp.headers.items():
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return wire("".join(parts))
