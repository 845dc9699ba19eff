"""The client side: one asyncio.Protocol per connection, parsing with httptools (llhttp).

Requests are handled one at a time in arrival order. The common path (a synthetic response or a cache
hit) runs to completion inside data_received with no task; a request that must wait (a backend fetch,
an async vmod call such as tinykvm.steal) hands itself to the FSM's async driver, and bytes arriving
meanwhile are held unparsed until it is done.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from cacheserver.fsm import ClientRequest
from cacheserver.http1 import BAD_REQUEST, text
from cacheserver.programs import ProgramError
from vcl.runtime import IP, Headers, HttpMessage, VCLFailure

if TYPE_CHECKING:
    from cacheserver.server import Server

log = logging.getLogger("cacheserver.client")

# Held-back bytes past which the connection stops reading until the current request is done.
_MAX_HELD = 256 * 1024
# Raw bytes kept for locating a stolen request's end; beyond this a steal with leftovers is refused.
_MAX_RAW = 1024 * 1024


# RFC 9110 token: what Varnish accepts as a method
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RequestTooLarge(Exception):
    """A request broke one of the http_req_* limits."""


class ClientProtocol(asyncio.Protocol):
    def __init__(self, server: Server, listen_name: str = "a0") -> None:
        self.server = server
        self.listen_name = listen_name       # local.socket: the -a name it came in on
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[ClientRequest] = deque()
        self.busy = False          # a request is being handled asynchronously
        self.closed = False
        self.stolen = False        # the socket was handed to a tinykvm program
        self.held: list[bytes] = []  # bytes that arrived while busy, not yet parsed
        self.held_size = 0
        self.last_active = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.write_drained: asyncio.Future | None = None
        self.paused_writing = False
        self.pipe_to: asyncio.StreamWriter | None = None   # set while the request is piped
        self.current: ClientRequest | None = None          # the request being handled
        # request being parsed
        self._url = b""
        self._fields: list[list[str]] = []
        self._head_size = 0
        self._body: list[bytes] = []
        self._head: HttpMessage | None = None
        self._keep_alive = True
        # raw-byte tracking, only while the active VCL may steal the connection
        self._raw: bytearray | None = None
        self._raw_done = 0       # messages completed inside _raw
        self._in_message = False
        self._method_override: str | None = None   # a method llhttp does not know, parsed as GET
        self._method_hold = b""                    # the start of such a method, cut by a read
        self.client_ip: IP = IP("0.0.0.0")
        self.local_ip: IP = IP("0.0.0.0")

    # -- connection events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        counters = self.server.counters
        counters.sess_conn += 1
        counters.s_sess += 1
        self.xid = self.server.next_xid()      # a session takes a transaction id, as in Varnish
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        local = transport.get_extra_info("sockname") or ("0.0.0.0", 0)
        self.client_ip = IP(peer[0], peer[1])
        self.local_ip = IP(local[0], local[1])
        self.local_endpoint = f"[{local[0]}]:{local[1]}" if ":" in local[0] else f"{local[0]}:{local[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sessions.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.sessions.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.write_drained is not None and not self.write_drained.done():
            self.write_drained.set_result(None)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.write_drained is not None and not self.write_drained.done():
            self.write_drained.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if self.paused_writing and not self.closed:
            self.write_drained = asyncio.get_running_loop().create_future()
            await self.write_drained

    def _arm_idle_timer(self) -> None:
        timeout = self.server.params.timeout_idle
        if timeout > 0:
            self.idle_timer = asyncio.get_running_loop().call_later(timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: cheaper than rescheduling on every request.
        if self.closed:
            return
        timeout = self.server.params.timeout_idle
        idle_for = time.monotonic() - self.last_active
        if self.busy or self.queue or idle_for < timeout:
            delay = max(timeout - idle_for, 0.05) if not self.busy else timeout
            self.idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)
            return
        self.server.counters.sc_rx_timeout += 1
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.stolen or self.closed:
            return
        if self.pipe_to is not None:
            self.server.counters.s_pipe_in += len(data)
            self.pipe_to.write(data)
            return
        if self.busy:
            self.held.append(data)
            self.held_size += len(data)
            if self.held_size > _MAX_HELD:
                self.transport.pause_reading()
            return
        self._feed(data)
        if self.queue:
            self.run_queue()

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the answers to what it sent; then we close.
        if not self.queue and not self.busy:
            self.close()
            return None
        self._keep_alive = False
        return True

    # -- parsing ----------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        vcl = self.server.active_vcl
        if vcl is not None and "vcl_recv" in vcl.async_subs:   # this VCL may steal connections
            if self._raw is None or (not self._in_message and not self.queue):
                self._raw = bytearray(data)
                self._raw_done = 0
            elif len(self._raw) < _MAX_RAW:
                self._raw += data
        if self._method_hold:
            data, self._method_hold = self._method_hold + data, b""
        while data:
            at_start = not self._in_message
            done_before = self._raw_done
            if at_start and data.startswith(b"PRI "):
                # llhttp would wait for the rest of an HTTP/2 preface; Varnish hands PRI to VCL
                data = self._custom_method(data, 0)
                continue
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # llhttp stops after a request with Upgrade:; what follows is HTTP again (or, when
                # the request is stolen, travels with the socket)
                data = data[upgrade.args[0]:]
                self.parser = httptools.HttpRequestParser(self)
            except httptools.HttpParserInvalidMethodError as exc:
                # llhttp knows a fixed list of methods; Varnish takes any token (BAN, REFRESH, ...)
                completed = self._raw_done - done_before
                if not at_start:
                    self.bad_request(exc)
                    return
                offset = _end_of_message(data, completed) if completed else 0
                data = self._custom_method(data, offset)
            except (httptools.HttpParserError, RequestTooLarge, UnicodeDecodeError) as exc:
                self.bad_request(exc)
                return

    def _custom_method(self, data: bytes, offset: int) -> bytes:
        """Parse the request at `offset` with a stand-in method, remembering the real one."""
        rest = data[offset:]
        space = rest.find(b" ")
        self.parser = httptools.HttpRequestParser(self)
        self._in_message = False        # the failed parser had begun this message
        if space < 0:
            if len(rest) < 64 and _TOKEN.fullmatch(rest):
                self._method_hold = rest          # the method was cut short by the read
            else:
                self.bad_request()
            return b""
        method = rest[:space]
        if not _TOKEN.fullmatch(method):
            self.bad_request()
            return b""
        self._method_override = text(method)
        return b"GET" + rest[space:]

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._fields = []
        self._head_size = 0
        self._body = []
        self._head = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.params.http_req_hdr_len:
            raise RequestTooLarge("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        params = self.server.params
        size = len(name) + len(value) + 4
        self._head_size += size
        if size > params.http_req_hdr_len or self._head_size > params.http_req_size:
            raise RequestTooLarge("header too long")
        if len(self._fields) >= params.http_max_hdr:
            raise RequestTooLarge("too many headers")
        field = name.decode("utf-8", "surrogateescape")     # http1.text(), inlined: per header
        self._fields.append([field, value.decode("utf-8", "surrogateescape"), field.lower()])

    def on_headers_complete(self) -> None:
        parser = self.parser
        length = self._content_length()
        if length is not None and length >= 1 << 63:
            raise RequestTooLarge("Content-Length out of range")
        headers = Headers.adopt(self._fields)
        # Request smuggling shapes: llhttp refuses CL+TE and duplicate Content-Length itself.
        method = self._method_override or text(parser.get_method())
        self._method_override = None
        self._head = HttpMessage(
            method, text(self._url),
            "HTTP/" + parser.get_http_version(), headers=headers)
        self._keep_alive = parser.should_keep_alive()

    def _content_length(self) -> int | None:
        for field in self._fields:
            if field[2] == "content-length":
                value = field[1].strip()
                return int(value) if value.isdigit() else None
        return None

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._raw_done += 1
        head = self._head
        if head is None:
            return
        self.server.counters.client_req += 1
        self.queue.append(ClientRequest(self, head, b"".join(self._body), self._keep_alive,
                                        self._raw_done))
        self._head = None

    def bad_request(self, exc: Exception | None = None) -> None:
        """Malformed input: Varnish's bare 400, then close. Nothing else is answered."""
        self.server.counters.client_req_400 += 1
        self.server.counters.sc_rx_bad += 1
        self.queue.clear()
        if self.transport is not None and not self.closed:
            self.transport.write(BAD_REQUEST)
        self.close()

    # -- running requests -------------------------------------------------------------------------

    def run_queue(self) -> None:
        """Handle queued requests in order until one needs to wait."""
        while self.queue and not self.busy and not self.closed:
            request = self.current = self.queue.popleft()
            if not request.run_sync():
                self.busy = True
                asyncio.get_running_loop().create_task(self._run_async(request))
                return
            if not request.keep_alive:
                self.close()
                return

    async def _run_async(self, request: ClientRequest) -> None:
        try:
            await request.run_async()
        except Exception:  # a bug must cost this connection only, never the server
            log.exception("request failed")
            self.close()
        self.busy = False
        if self.stolen or self.closed:
            return
        if not request.keep_alive:
            self.close()
            return
        self.last_active = time.monotonic()
        if self.held:
            held, self.held, self.held_size = self.held, [], 0
            self.transport.resume_reading()
            for data in held:
                if self.closed:
                    return
                self._feed(data)
        self.run_queue()

    def take_held(self) -> bytes:
        """Bytes received but not parsed, removed from the connection (for pipe)."""
        held = b"".join(self.held)
        self.held, self.held_size = [], 0
        if self.transport is not None:
            self.transport.resume_reading()
        return held

    # -- tinykvm.steal() --------------------------------------------------------------------------

    def bytes_after(self, request: ClientRequest) -> bytes | None:
        """The raw bytes the server read past `request` (pipelined requests, a body not consumed).

        None when they cannot be told apart (raw tracking overflowed).
        """
        held = b"".join(self.held)
        if not self.queue and not self._in_message:
            return held
        raw = self._raw
        if raw is None or len(raw) >= _MAX_RAW:
            return None
        end = _end_of_message(bytes(raw), request.raw_index)
        return bytes(raw[end:]) + held

    async def steal(self, program: str, argument: str) -> bool:
        """Hand this connection to `program`; True once its on_connect accepted it.

        Responses still queued for the client are flushed first, so that nothing we owed it is lost
        and the program's bytes come after ours.
        """
        request = self.current
        transport = self.transport
        if request is None or transport is None or self.closed:
            return False
        transport.set_write_buffer_limits(high=0)
        await self.drain()
        transport.set_write_buffer_limits()
        if self.closed:
            return False
        after = self.bytes_after(request)
        if after is None:
            raise VCLFailure("steal(): cannot separate the request from the bytes after it")
        transport.pause_reading()
        remote = f"{self.client_ip.addr}:{self.client_ip.port}"
        try:
            accepted = await self.server.programs.steal(
                program, transport.get_extra_info("socket"), remote, argument, request.body + after)
        except ProgramError as exc:
            self.server.counters.steal_failed += 1
            if not self.closed:
                transport.resume_reading()
            raise VCLFailure(f"steal(): program '{program}': {exc}") from None
        if not accepted or self.closed:
            self.server.counters.steal_refused += 1
            if not self.closed:
                transport.resume_reading()
            return False
        self.server.counters.steal_ok += 1
        self.detach()
        return True

    def detach(self) -> None:
        """Forget the socket after a program took it: close our descriptor, send nothing."""
        self.stolen = True
        self.queue.clear()
        self.held.clear()
        self.server.sessions.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.transport is not None:
            self.transport.abort()


class _Counter:
    """A parser target that only counts complete messages."""

    def __init__(self) -> None:
        self.done = 0

    def on_message_complete(self) -> None:
        self.done += 1


def _messages_in(prefix: bytes) -> int:
    counter = _Counter()
    try:
        httptools.HttpRequestParser(counter).feed_data(prefix)
    except httptools.HttpParserError:
        pass
    return counter.done


def _end_of_message(raw: bytes, n: int) -> int:
    """Offset just past the n-th complete message in raw (which starts at a message boundary).

    httptools reports no offsets, so this bisects on fresh parsers; it runs only when a stolen
    request was followed by more bytes in the same read.
    """
    lo, hi = 0, len(raw)
    while lo < hi:
        mid = (lo + hi) // 2
        if _messages_in(raw[:mid]) >= n:
            hi = mid
        else:
            lo = mid + 1
    return lo
