"""The backend HTTP/1.1 client: one asyncio Protocol per connection, a keep-alive pool per address.

Shaped like varnishd's cache_tcp_pool.c (idle connections reused last-in first-out, closed after
backend_idle_timeout or when the backend closes or talks while idle) and cache_http1_fetch.c (the
request goes out exactly as bereq holds it; the response head is bounded by http_resp_size,
http_resp_hdr_len and http_max_hdr; first_byte_timeout runs from the sent request to the first
response byte, between_bytes_timeout between reads after that, head included).

The response is parsed by httptools (llhttp). Body bytes are queued in the protocol until the fetch
takes them; past READ_HIGH queued bytes the socket stops being read, so a backend can never get
further ahead of the object's consumers than that.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import time
from typing import TYPE_CHECKING

import httptools

from cacheserver.h1refuse import HDR_FIRST, Refusal, response_refusal
from cacheserver.http1 import needs_relaxing, relax_head

if TYPE_CHECKING:
    from cacheserver.server import Server

# Body bytes queued in a connection before it stops reading from the backend.
READ_HIGH = 256 * 1024
# Header names as received -> (name, lowercased name), shared by every object that has them: a cached
# object then holds its own values only (about 100 bytes less per field). Bounded: past it, new names
# are decoded per response as before.
_NAMES: dict[bytes, tuple[str, str]] = {}
_NAMES_MAX = 1024
# Values of the fields most responses repeat ("text/html", "max-age=3600", "1024"), shared the same
# way: about 50 bytes less per such field of every cached object. Bounded like _NAMES.
_SHARED_VALUES = frozenset(("content-type", "cache-control", "content-length", "content-encoding", "vary",
                            "server", "accept-ranges", "connection", "content-language"))
_VALUES: dict[bytes, str] = {}
_VALUES_MAX = 4096
_VALUE_MAX_LEN = 128
# A request body up to this size, when already whole, goes out in the same write as the head.
SMALL_BODY = 64 * 1024


class ConnError(Exception):
    """The exchange on one connection failed.

    `nothing` is True when not one byte of a response arrived: varnishd's condition for the single
    extra chance on a recycled connection (the backend may have closed it while it sat idle).
    """

    def __init__(self, reason: str, nothing: bool = False) -> None:
        super().__init__(reason)
        self.nothing = nothing


# A Content-Length llhttp refuses goes past it under this name (BackendConn._relax).
_CL_NAME = re.compile(rb"(?im)^content-length(?=[ \t]*:)")
_CL_HIDDEN = b"X-Cacheserver-Unparsed-Content-Length"


def _bad_cl(exc: Exception) -> bool:
    """llhttp refused the head over its Content-Length: a bogus value, or more than one field."""
    text = str(exc)
    return "Invalid character in Content-Length" in text or "Duplicate Content-Length" in text


def _hide_cl(head: bytes) -> bytes:
    """The Content-Length fields llhttp must not see: varnishd frames the body by the first one
    (http_GetContentLength), so that one stays when it is a number; the others, or all when the
    first is bogus (the fetch then fails as varnishd's: fetch_bad), go under another name."""
    first = _CL_NAME.search(head)
    if first is None:
        return head
    line_end = head.find(b"\r\n", first.end())
    value = head[first.end():line_end if line_end >= 0 else len(head)].lstrip(b" \t")[1:]
    if value.strip(b" \t").isdigit():
        return head[:first.end()] + _CL_NAME.sub(_CL_HIDDEN, head[first.end():])
    return _CL_NAME.sub(_CL_HIDDEN, head)


class _HeadLimit(Exception):
    """Raised from a parser callback: the response head broke a size limit."""


def _on_timer(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


_HEAD_END = re.compile(rb"\n\r?\n")     # where varnishd finds a head's end


class BackendConn(asyncio.Protocol):
    """One connection to a backend, carrying one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.reused = False           # taken from the pool rather than freshly connected
        self.idle_since = 0.0
        self.closed = False
        self._busy = False            # an exchange is under way (data while idle is an error)
        self._parser = None           # kept across exchanges while it stays in a clean state
        self._spent = False           # the parser cannot take another message
        self._waiter: asyncio.Future | None = None
        self._write_paused = False
        self._read_paused = False
        self._begin(False, 0, 0, 0)

    # -- one exchange ---------------------------------------------------------------------------

    def _begin(self, head_only: bool, resp_size: int, hdr_len: int, max_hdr: int) -> None:
        self.head_only = head_only    # a HEAD request: the response ends with its head
        self.head_room = resp_size    # head bytes the backend may still send (http_resp_size)
        self.hdr_len = hdr_len
        self.max_fields = max_hdr - HDR_FIRST
        self.got = False              # any response byte arrived
        self.head_done = False
        self.head_len = 0             # the head's bytes as received, once it is complete
        self.done = False             # the whole response arrived
        self.error: str | None = None
        self.garbage: Refusal | None = None   # a head varnishd's dissection refuses (http format error)
        self.extra = False            # bytes past the response: the connection cannot be reused
        self.status = 0
        self.reason = b""
        self.version = "1.1"
        self.keep_alive = False
        self.fields: list[list[str]] = []
        self.chunked = False
        self.has_te = False
        self.clen: int | None = None
        self.body: list[bytes] = []
        self.held = 0
        self.head_raw = b""           # the head's bytes so far (bounded by http_resp_size)
        self.relaxing = False         # a folded or bare-LF head, held until its end to parse again
        self.hide_cl = False          # parse it again with Content-Length renamed (_hide_cl)

    def start(self, head_only: bool, resp_size: int, hdr_len: int, max_hdr: int) -> None:
        """Prepare for a new request on this connection."""
        self._begin(head_only, resp_size, hdr_len, max_hdr)
        self._busy = True
        if self._parser is None or self._spent:
            self._new_parser()

    def _new_parser(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        # varnishd takes a bare LF as a line end in a backend's head
        self._parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self._spent = False

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # a backend talking on an idle connection: it cannot be trusted with a request
            self.close()
            return
        self.got = True
        if self.done or self.error is not None:
            self.extra = True         # nothing more was asked for
            self._wake()
            return
        if not self.head_done:
            room = self.head_room
            if len(data) > room:
                # feed at most what http_resp_size allows; the head must end inside it
                self._feed(data[:room])
                if self.error is None and not self.head_done:
                    self.error = "overflow"
                if self.error is not None:
                    self._wake()
                    return
                data = data[room:]
            else:
                self.head_room = room - len(data)
        if data:
            self._feed(data)
        if self.held > READ_HIGH and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def _feed(self, data: bytes) -> None:
        if not self.head_done:
            self.head_raw += data
            if self.relaxing:
                self._relax()
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: a 1xx like any other, the fetch refuses it
            self._spent = True
            if not self.head_done:
                self.error = "Received junk"
        except httptools.HttpParserError as exc:
            self._spent = True
            if not self.head_done and self.error is None and (needs_relaxing(self.head_raw) or _bad_cl(exc)):
                self.relaxing = True          # llhttp refuses folded lines; varnishd joins them
                self._relax()
                return
            if self.done:
                self.extra = True     # garbage after a complete response: only the reuse suffers
            elif self.error is None:
                if self.head_done:
                    self.error = f"body: {exc}"
                else:
                    self._head_refused(self.head_raw)

    def _relax(self) -> None:
        """Parse the head again, from a fresh parser, with its folded lines joined as varnishd's
        http1_dissect_hdrs joins them; until its end has come, hold it. A Content-Length llhttp
        refuses ("bogus") goes past it under another name: varnishd takes the head and fails the
        fetch when it sees it cannot know the body's length (fetch_bad)."""
        raw = self.head_raw
        fixed = relax_head(raw)
        if fixed is None:
            return
        if self.hide_cl:
            end = fixed.index(b"\r\n\r\n")
            fixed = _hide_cl(fixed[:end]) + fixed[end:]
        self.relaxing = False
        self.head_raw = b""
        self.reason, self.fields, self.clen, self.chunked, self.has_te = b"", [], None, False, False
        self._new_parser()
        try:
            self._parser.feed_data(fixed)
        except httptools.HttpParserError as exc:
            self._spent = True
            if not self.head_done and not self.hide_cl and self.error is None and _bad_cl(exc):
                self.hide_cl = True
                self.head_raw = raw
                self._relax()
                return
            if self.error is None:
                if self.head_done:
                    self.error = f"body: {exc}"
                else:
                    self._head_refused(raw)
        except httptools.HttpParserUpgrade:
            self._spent = True
            if not self.head_done:
                self.error = "Received junk"

    def _head_refused(self, raw: bytes) -> None:
        """llhttp refused the head: varnishd's dissection says how the fetch fails (HttpGarbage and
        "http format error" for a whole head it refuses too)."""
        why = response_refusal(raw, self.hdr_len, self.max_fields + HDR_FIRST)
        if why is not None and not why.incomplete:
            self.garbage = why
            self.error = "http format error"
        else:
            self.error = "Received junk"

    def eof_received(self) -> bool:
        if self.head_done and not self.done and self.error is None and self.clen is None \
                and not self.chunked:
            self.done = True          # a body delimited by the end of the connection
        self._spent = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._spent = True
        if self._busy and not self.done and self.error is None:
            self.error = "backend closed" if exc is None else f"backend closed: {exc}"
        if not self._busy:
            self.pool.discard(self)
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        if self.done:
            self.extra = True         # a message after the one we took (a final one after a 1xx)
            return
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            self.extra = True
            return
        if len(name) + len(value) + 2 > self.hdr_len:
            self.error = "Header too long"
            raise _HeadLimit
        fields = self.fields
        if len(fields) >= self.max_fields:
            self.error = "Too many headers"
            raise _HeadLimit
        value = value.rstrip(b" \t")     # llhttp keeps the blanks that end a value; varnishd strips them
        if name == _CL_HIDDEN:
            name = b"Content-Length"
        names = _NAMES.get(name)
        if names is None:
            names = (name.decode("utf-8", "surrogateescape"),)
            names += (names[0].lower(),)
            if len(_NAMES) < _NAMES_MAX:
                _NAMES[name] = names
        field, lname = names
        text = _VALUES.get(value) if lname in _SHARED_VALUES else None
        if text is None:
            text = value.decode("utf-8", "surrogateescape")
            if lname in _SHARED_VALUES and len(value) <= _VALUE_MAX_LEN and len(_VALUES) < _VALUES_MAX:
                _VALUES[value] = text
        fields.append([field, text, lname])
        if lname == "content-length" and self.clen is None:     # the first one frames the body
            self.clen = int(text.strip()) if text.strip().isdigit() else -1
        elif lname == "transfer-encoding":
            self.has_te = True
            self.chunked = "chunked" in text.lower()

    def on_headers_complete(self) -> None:
        if self.done:
            self.extra = True
            return
        parser = self._parser
        self.status = parser.get_status_code()
        self.version = parser.get_http_version()
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        # the head's bytes as they came, to its empty line (VBE beresp_hdrbytes); 0 when a
        # relaxed (refolded) head was parsed instead: counted from its fields then
        end = _HEAD_END.search(self.head_raw)
        self.head_len = end.end() if end else 0
        self.head_raw = b""
        if self.head_only or self.status < 200:
            # no body follows, whatever the head says; llhttp does not know what we asked,
            # so this parser's state is spent
            self.done = True
            self._spent = True

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.extra = True
            return
        self.body.append(body)
        self.held += len(body)

    def on_message_complete(self) -> None:
        self.done = True

    # inside a chunk's data (from its size line to its end): how a broken-off body is named
    in_chunk = False

    def on_chunk_header(self) -> None:
        self.in_chunk = True

    def on_chunk_complete(self) -> None:
        self.in_chunk = False

    # -- waiting ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _wait(self, timeout: float) -> bool:
        """Wait for news from the connection; False when `timeout` seconds passed without any."""
        if timeout <= 0:
            return False
        fut = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _on_timer, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._waiter = None

    # -- the fetch's side -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnError("backend write error: connection closed")
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        """Back-pressure for the request body: wait until the socket took what was written."""
        while self._write_paused:
            if self.closed:
                raise ConnError("backend write error: connection closed")
            if not await self._wait(timeout):
                raise ConnError("backend write error: timeout")

    async def read_head(self, first_byte: float, between: float) -> None:
        """Wait for the whole response head: first_byte_timeout for its first byte, then
        between_bytes_timeout for each further read (varnishd's HTC_RxStuff deadlines)."""
        deadline = self.loop.time() + first_byte
        while not self.head_done:
            if self.error is not None:
                raise ConnError(self.error, nothing=not self.got)
            if self.closed:
                raise ConnError("backend closed", nothing=not self.got)
            if self.got:
                if not await self._wait(between):
                    raise ConnError("timeout")
            elif not await self._wait(deadline - self.loop.time()):
                raise ConnError("first byte timeout", nothing=True)

    async def read_body(self, between: float) -> bytes:
        """The next body bytes, b"" at the end; raises ConnError when the body breaks off."""
        while True:
            body = self.body
            if body:
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self.held = 0
                if self._read_paused and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                return data
            if self.done:
                return b""
            if self.error is not None:
                raise ConnError(self.error)
            if self.closed:
                raise ConnError("backend closed")
            if not await self._wait(between):
                raise ConnError("timeout")

    def release(self, reuse: bool) -> None:
        """The exchange is over: back to the pool if the connection is clean, else closed."""
        self._busy = False
        if reuse and self.done and not self.body and self.error is None and not self.extra and self.keep_alive:
            # varnishd recycles (and counts) what it did not mean to close, not knowing yet whether
            # the server has gone: its waiter drops such a connection later
            self.pool.server.counters.backend_recycle += 1
            if self.closed or self.transport is None or self.transport.is_closing():
                self.close()
                return
            if self._read_paused:
                self._read_paused = False
                self.transport.resume_reading()
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self._busy = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.pool.discard(self)


class Pool:
    """Idle keep-alive connections to one backend address."""

    def __init__(self, server: Server, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.idle: list[BackendConn] = []      # oldest first; taken from the end
        self._timer: asyncio.TimerHandle | None = None
        self.holddown_until = 0.0              # no new connection tried before then (wall clock)

    async def connect(self, timeout: float) -> BackendConn:
        """A new connection, within connect_timeout. A refusal that says retrying is useless holds
        further attempts down for a while (varnishd's vcp_open: backend_remote_error_holddown for
        ECONNREFUSED/ENETUNREACH, backend_local_error_holddown for EACCES/EPERM/EADDRNOTAVAIL);
        meanwhile each attempt fails at once with errno 0."""
        if time.time() < self.holddown_until:
            raise OSError(0, "Success")
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(lambda: BackendConn(self), self.host, self.port)
        except OSError as exc:
            params = self.server.params
            hold = (params.backend_remote_error_holddown if exc.errno in (errno.ECONNREFUSED, errno.ENETUNREACH)
                    else params.backend_local_error_holddown
                    if exc.errno in (errno.EACCES, errno.EPERM, errno.EADDRNOTAVAIL) else 0)
            if hold > 0:
                self.holddown_until = time.time() + hold
            raise
        return conn

    def take(self) -> BackendConn | None:
        """The most recently used idle connection that is still good, or None."""
        idle = self.idle
        limit = self.server.params.backend_idle_timeout
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since >= limit or not _still_open(conn.transport):
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def put(self, conn: BackendConn) -> None:
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._timer is None:
            self._arm()

    def discard(self, conn: BackendConn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def _arm(self) -> None:
        if self.idle:
            when = self.idle[0].idle_since + self.server.params.backend_idle_timeout
            self._timer = self.loop.call_at(when, self._sweep)
        else:
            self._timer = None

    def _sweep(self) -> None:
        """backend_idle_timeout: close what sat idle that long (the oldest are first)."""
        limit = self.server.params.backend_idle_timeout
        now = self.loop.time()
        while self.idle and now - self.idle[0].idle_since >= limit:
            self.idle.pop(0).close()
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.idle:
            self.idle.pop().close()


class Pools:
    """Every backend address's pool (varnishd shares a pool between backends of one address)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._pools: dict[tuple[str, int], Pool] = {}

    def get(self, host: str, port: int) -> Pool:
        pool = self._pools.get((host, port))
        if pool is None:
            pool = self._pools[(host, port)] = Pool(self.server, host, port)
        return pool

    def take_streams(self, host: str, port: int):
        """An idle connection to host:port as asyncio (reader, writer), out of the pool; or None.

        `return (pipe)` uses it: varnishd pipes over a kept-alive backend connection when it has one.
        """
        pool = self._pools.get((host, port))
        conn = pool.take() if pool is not None else None
        if conn is None:
            return None
        transport = conn.transport
        reader = asyncio.StreamReader(limit=1 << 16)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return reader, asyncio.StreamWriter(transport, protocol, reader, pool.loop)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _still_open(transport: asyncio.BaseTransport | None) -> bool:
    """An idle connection's server has not closed it, though the loop may not have seen that yet
    (varnishd's waiter watches its idle ones): a peek that finds EOF, an error or stray bytes."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return True                     # not a socket (a test double): nothing to look at
    try:
        with socket.socket(fileno=sock.fileno()) as raw:
            try:
                raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                return False            # readable while idle: EOF, or bytes no request asked for
            except BlockingIOError:
                return True
            except OSError:
                return False
            finally:
                raw.detach()            # the transport still owns the descriptor
    except OSError:
        return False
