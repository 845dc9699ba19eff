"""HTTP/1 wire details shared by the client and backend sides: reason phrases, dates, serialisation."""

from __future__ import annotations

import re
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


def chunked_error(llhttp_error: str, buf: bytes = b"") -> str | None:
    """varnishd's words (v1f_pull_chunked) for a chunked body llhttp refused, or None (`buf`: the
    bytes being parsed, to tell a size too long to read from one too large for varnishd)."""
    if llhttp_error in _CHUNK_ERRORS:
        return llhttp_error           # (in varnishd's words already)
    if "chunk size" in llhttp_error and "Invalid character" in llhttp_error:
        return "chunked header non-hex"
    if "after chunk" in llhttp_error:
        return "chunked tail no NL"
    if "Chunk size overflow" in llhttp_error:
        # more than 64 bits: varnishd reads up to 19 digits past the leading zeros
        longest = max((len(m.group(1).lstrip(b"0")) for m in _SIZE_LINE_ANY.finditer(buf)), default=0)
        return "chunked header too long" if longest > 19 else "bogusly large chunk size"
    return None


_CHUNK_ERRORS = ("chunked header non-hex", "chunked tail no NL", "chunked header too long",
                 "bogusly large chunk size")
_LONG_HEX = re.compile(rb"[0-9A-Fa-f]{16}")
_SIZE_LINE_ANY = re.compile(rb"(?:^|\n)[ \t]*([0-9A-Fa-f]{17,})[ \t]*(?:;[^\r\n]*)?\r?\n")
_SIZE_LINE = re.compile(rb"(?:^|\n)[ \t]*([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n\Z")


def chunk_size_error(buf: bytes, data: bytes) -> str | None:
    """A chunk size llhttp took (it reads 64 bits) but varnishd refuses: more than 19 digits past
    the leading zeros, or a value that does not fit its ssize_t. `data` is the chunk's first bytes
    as they lie in `buf` after their size line. None: no such size (or it is not in `buf`)."""
    if _LONG_HEX.search(buf) is None:
        return None                   # (the common case, one scan per read)
    at = buf.find(data)
    while at >= 0:
        line = _SIZE_LINE.search(buf, 0, at)
        if line is not None:
            digits = line.group(1).lstrip(b"0")
            if len(digits) > 19:
                return "chunked header too long"
            return "bogusly large chunk size" if digits and int(digits, 16) >= 1 << 63 else None
        at = buf.find(data, at + 1)
    return None


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def serialize_head(resp: HttpMessage) -> bytes:
    """The status line and header block of a response, ready for the wire."""
    parts = [f"HTTP/1.1 {resp.status % 1000:03d} {resp.reason}\r\n"]   # VCL may set 1xxx: sent mod 1000
    for name, value in resp.headers.items():
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return wire("".join(parts))


# The end of a request head as varnishd finds it (HTTP1_Complete): an empty line, CR optional.
_HEAD_END = re.compile(rb"\n\r?\n")


def needs_relaxing(raw: bytes) -> bool:
    """The head starting raw has a bare-LF line end or a folded line: llhttp refuses, varnishd takes it."""
    raw = raw.lstrip(b"\r\n")
    end = _HEAD_END.search(raw)
    head = raw[:end.end()] if end else raw
    return head.count(b"\n") != head.count(b"\r\n") or b"\n " in head or b"\n\t" in head


def relax_head(raw: bytes) -> bytes | None:
    """The head at the start of raw as llhttp takes it, then the rest of raw; None until its end came.

    Lines end in CRLF; a folded line joins the one before it, its line break turned into spaces, as
    varnishd's http1_dissect_hdrs does.
    """
    raw = raw.lstrip(b"\r\n")
    end = _HEAD_END.search(raw)
    if end is None:
        return None
    lines: list[bytes] = []
    line_break = b""                 # how the previous line ended: b"\n" or b"\r\n"
    for line in raw[:end.start()].split(b"\n"):
        if len(lines) > 1 and line[:1] in (b" ", b"\t"):
            # (a first header line that starts blank is not folded into the request line:
            # varnishd refuses it, see bogo_header)
            # the line break and the blanks that start the continuation all become spaces
            cont = line.removesuffix(b"\r")
            text = cont.lstrip(b" \t")
            lines[-1] += b" " * (len(line_break) + len(cont) - len(text)) + text
        else:
            lines.append(line.removesuffix(b"\r"))
        line_break = b"\r\n" if line.endswith(b"\r") else b"\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + raw[end.end():]
