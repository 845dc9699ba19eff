"""The API a tinykvm program imports; it mirrors kvm_api.h of libvmod-tinykvm.

A program is a Python file the server runs in its own process (`python -m kvm_api.host`). It sets
its callbacks and calls wait_for_requests(), which never returns: it runs one event loop serving
every connection that `tinykvm.steal(program, arg)` hands over.

Callbacks (all optional; `fd` is the connection's file descriptor number in this process):
    on_connect(fd: int, remote: str, arg: str) -> bool
        A connection arrived. Truthy accepts it; falsy refuses it (the server keeps it and
        tinykvm.steal() returns false). Without an on_connect every connection is refused.
        Bytes the server had already read past the request arrive as the first on_read.
    on_read(fd: int, data: bytes) -> None
    on_writable(fd: int) -> None
        Buffered output of an earlier short write() has all gone out.
    on_disconnect(fd: int, reason: str) -> None
        Called once when the connection closes; reason is "Disconnected" (the peer closed, or
        the program called shutdown(fd, SHUT_RDWR)), "Reset" (ECONNRESET/EPIPE) or "Error"
        (anything else, including an exception raised by a callback of this connection).
    on_get(url: str, arg: str) -> tuple[int, str, bytes | str]
        set_backend_get(): the program as a backend (tinykvm.program(), to_string(), synth()) for
        GET and HEAD; returns (status, content_type, body), e.g. (200, "text/plain", b"Hi\\n"),
        optionally a fourth item: response headers ({"Cache-Control": "max-age=60"} or pairs).
        Or it calls backend_response(status, content_type, body, headers), which ends it there.
        A body that is neither bytes nor str is an iterable of pieces: it is streamed.
    on_post(url: str, arg: str, content_type: str, body: bytes) -> same as on_get
        set_backend_post(): every other method (POST, PUT, ...). request() has the rest of the
        request: method, headers, the VCL's config string.

An exception in a callback prints its traceback on stderr (the server logs it) and closes that
connection only.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

from kvm_api import _state
from kvm_api._printf import cformat

__all__ = [
    "Request", "request", "set_backend_post", "backend_response",
    "Print", "write", "shutdown", "buffered", "pause_reading", "resume_reading",
    "set_socket_on_connect", "set_socket_on_read",
    "set_socket_on_writable", "set_socket_on_disconnect", "set_backend_get", "wait_for_requests",
    "SHUT_RD", "SHUT_WR", "SHUT_RDWR",
]

SHUT_RD = socket.SHUT_RD
SHUT_WR = socket.SHUT_WR
SHUT_RDWR = socket.SHUT_RDWR


def Print(fmt: str, *args: object) -> None:  # noqa: N802 - the name of kvm_api.h
    """Write to the program's output: each line goes to the server's log stream as "<program>: <line>".

    With arguments, `fmt` is a C printf format ("%d", "%s", "%zu", "%p", ...).
    """
    sys.stdout.write(cformat(fmt, args) if args else fmt)   # flushed by the program's loop


def write(fd: int, data: bytes | bytearray | memoryview | str) -> int:
    """Send on a connection without ever blocking; returns len(data), or -1 if fd is not open.

    What the socket does not take now is buffered and sent when it is writable; once such a
    buffer has drained, on_writable(fd) is called.
    """
    loop = _state.loop
    if loop is None:
        return -1
    if isinstance(data, str):
        data = data.encode()
    return loop.write(fd, bytes(data))


def shutdown(fd: int, how: int) -> int:
    """Shut a connection down (SHUT_RD, SHUT_WR or SHUT_RDWR); returns 0, or -1 if fd is not open.

    SHUT_WR sends FIN after the buffered output. SHUT_RDWR closes the connection once the
    buffered output went out, and on_disconnect(fd, "Disconnected") is called.
    """
    loop = _state.loop
    return -1 if loop is None else loop.shutdown(fd, how)


def buffered(fd: int) -> int:
    """Bytes written to fd that the socket has not taken yet; -1 if fd is not open."""
    loop = _state.loop
    return -1 if loop is None else loop.buffered(fd)


def pause_reading(fd: int) -> int:
    """Stop on_read for fd until resume_reading(fd) (back-pressure); 0, or -1 if fd is not open."""
    loop = _state.loop
    return -1 if loop is None else loop.set_paused(fd, True)


def resume_reading(fd: int) -> int:
    """Deliver fd's input to on_read again after pause_reading(fd); 0, or -1 if fd is not open."""
    loop = _state.loop
    return -1 if loop is None else loop.set_paused(fd, False)


def set_socket_on_connect(fn: Callable[[int, str, str], object] | None) -> None:
    _state.callbacks.on_connect = fn


def set_socket_on_read(fn: Callable[[int, bytes], object] | None) -> None:
    _state.callbacks.on_read = fn


def set_socket_on_writable(fn: Callable[[int], object] | None) -> None:
    _state.callbacks.on_writable = fn


def set_socket_on_disconnect(fn: Callable[[int, str], object] | None) -> None:
    _state.callbacks.on_disconnect = fn


def set_backend_get(fn: Callable[[str, str], tuple[int, str, bytes | str]] | None) -> None:
    """fn(url, arg) -> (status, content_type, body): answers GET and HEAD backend requests."""
    _state.callbacks.on_get = fn


@dataclass
class Request:
    """The backend request being answered (tinykvm.program(), to_string(), synth())."""

    method: str
    url: str
    arg: str
    headers: list[tuple[str, str]]
    body: bytes
    config: str = ""              # the `config` string of tinykvm.program()

    def header(self, name: str) -> str | None:
        """The first header called `name` (any case), or None."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)


def request() -> Request | None:
    """The request being answered now (inside on_get / on_post), else None."""
    return _state.request  # type: ignore[return-value]


class BackendResponse(BaseException):
    """Raised by backend_response(): the answer, carried out of the callback (as the original,
    whose backend_response() does not return)."""

    def __init__(self, status: int, content_type: str, body: bytes | str | Iterable[bytes],
                 headers: object = ()) -> None:
        super().__init__(status)
        self.response = (status, content_type, body, headers)


def backend_response(status: int, content_type: str, body: bytes | str | Iterable[bytes] = b"",
                     headers: dict[str, str] | Iterable[tuple[str, str]] = ()) -> None:
    """Answer the current backend request and end the callback there. `body` may be an iterable
    of bytes pieces (a generator): it is streamed to the server piece by piece."""
    raise BackendResponse(status, content_type, body, headers)


def set_backend_post(fn: Callable[[str, str, str, bytes], object] | None) -> None:
    """fn(url, arg, content_type, body): answers POST (and every method but GET and HEAD)."""
    _state.callbacks.on_post = fn


def wait_for_requests() -> None:
    """Serve connections until the server goes away; never returns (exits the process)."""
    from kvm_api.loop import EventLoop  # only a program process needs the loop

    host = _state.host
    if host is None:
        raise RuntimeError("wait_for_requests() works only in a program started by the server "
                           "(python -m kvm_api.host)")
    if _state.loop is not None:
        raise RuntimeError("wait_for_requests() is already running")
    host.waited = True
    if host.settings:
        from kvm_api.limits import apply_request_limits

        apply_request_limits(host.settings)
    _state.loop = EventLoop(host.ctrl, _state.callbacks)
    _state.loop.run()
    raise SystemExit(0)
