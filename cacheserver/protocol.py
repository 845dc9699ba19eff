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
from cacheserver.h1refuse import HDR_FIRST, refusal
from cacheserver.http1 import (
    BAD_REQUEST,
    CONTINUE_100,
    EXPECTATION_FAILED,
    chunk_size_error,
    chunked_error,
    needs_relaxing,
    relax_head,
    text,
    wire,
)
from cacheserver.programs import ProgramError
from cacheserver.reqbody import NO_BODY, ReqBody
from cacheserver.stevedores import TRANSIENT
from cacheserver.storage import OBJECT_OVERHEAD, SEGMENT_OVERHEAD
from vcl.runtime import IP, Headers, HttpMessage, VCLFailure

# the socket options varnishd's acceptor sets on a TCP listen socket (Linux), in its order
SOCKOPTS = ("SO_LINGER", "SO_KEEPALIVE", "SO_SNDTIMEO", "SO_RCVTIMEO", "TCP_NODELAY", "TCP_KEEPIDLE",
            "TCP_KEEPCNT", "TCP_KEEPINTVL")

if TYPE_CHECKING:
    from cacheserver.server import Server

log = logging.getLogger("cacheserver.client")

# Held-back bytes past which the connection stops reading until the current request is done.
_MAX_HELD = 256 * 1024
# Parsed requests waiting their turn, and the slice parsed at a time, before the rest is held.
_MAX_QUEUED = 32
_FEED_SLICE = 16 * 1024
# Raw bytes kept for locating a stolen request's end; beyond this a steal with leftovers is refused.
_MAX_RAW = 1024 * 1024
# The same for a piped request (any VCL may pipe: the built-in one pipes unknown methods); beyond this
# the requests pipelined behind it that were already parsed are not sent on.
_MAX_PIPE_RAW = 32 * 1024


# RFC 9110 token: what Varnish accepts as a method
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RequestTooLarge(Exception):
    """A request broke one of the http_req_* limits."""


class HeadOverflow(Exception):
    """The request head grew past http_req_size before it was complete: varnishd closes, unanswered."""


class ExpectationFailed(Exception):
    """An Expect header other than 100-continue: 417 and close. `head_bytes`: the request head's
    size, for its ReqAcct."""

    def __init__(self, head_bytes: int) -> None:
        super().__init__(head_bytes)
        self.head_bytes = head_bytes


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
        now = time.monotonic()
        self.last_active = now     # the last bytes from the client (a request body's pace)
        self.idle_since = now      # when the connection last had nothing to do: a head must be in by
        #                            idle_since + timeout_idle, however it trickles (slowloris)
        self.herded_at = -1.0      # the idle_since of the last idle spell counted in sess_herd
        self.idle_timer: asyncio.TimerHandle | None = None
        self.write_drained: asyncio.Future | None = None
        self.paused_writing = False
        self.write_blocked = False   # responses are backed up: no further request runs until drained
        self.refusal: bytes | None = None   # a 400/417 owed after the requests queued before it
        # a refused request's transaction, logged (and given its vxid) once the refusal is sent
        self._refusal_log: tuple | None = None
        self.send_timer: asyncio.TimerHandle | None = None
        self.pipe_to: asyncio.StreamWriter | None = None   # set while the request is piped
        self.current: ClientRequest | None = None          # the request being handled
        # request being parsed
        self._url = b""
        self._fields: list[list[str]] = []
        self._head_size = 0
        # the raw bytes of a head not complete yet, from earlier reads: bounded by http_req_size, and
        # kept to re-read a head that llhttp refuses where varnishd does not (bare LF, obs-fold);
        # it starts with _prefix_skip complete messages (located only when needed)
        self._head_prefix: bytes | None = None
        self._prefix_skip = 0
        self._relaxing = False     # _head_prefix is such a head, waiting for its end
        self._in_head = False
        self._sink: ReqBody | None = None     # the body the parser is filling
        self._keep_alive = True
        self.eof = False           # the client half-closed: close once what it sent is answered
        self.close_reason: str | None = None   # the sc_* counter the close counts in (see _CLOSE_ERR)
        # raw-byte tracking, only while the active VCL may steal the connection
        self._raw: bytearray | None = None
        self._raw_done = 0       # messages completed inside _raw
        self._feeding = b""      # the bytes llhttp is parsing now
        self._chunk_check = False    # a chunk size was read: check it with the chunk's first bytes
        self._chunk_bad: str | None = None   # varnishd refuses a chunk size llhttp took
        self._in_message = False
        self._method_override: str | None = None   # a method llhttp does not know, parsed as GET
        self._url_override: bytes | None = None    # a URL llhttp refuses, parsed as "/"
        self._method_hold = b""                    # the start of such a method, cut by a read
        self.client_ip: IP = IP("0.0.0.0")
        self.local_ip: IP = IP("0.0.0.0")
        self.vsl: list = []                  # the session's records in the shared log
        self.pipe_in = 0
        self.close_reason: str | None = None   # SessClose's reason, when we close
        self.t_open = 0.0

    # -- connection events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
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
        self.t_open = t = time.time()
        self.vsl += (("Begin", "sess 0 HTTP/1"),
                     ("SessOpen", f"{peer[0]} {peer[1]} {self.listen_name} {local[0]} {local[1]} {t:.6f} "
                                  f"{sock.fileno() if sock is not None else -1}"))
        if self.server.vsl.wants("Debug"):
            # vca_sock_opt_set: Linux's accepted sockets inherit the listen socket's options
            endpoint = self.server.listen_endpoints.get(self.listen_name, self.local_endpoint)
            self.vsl += [("Debug", f"sockopt: {opt} may be inherited for {self.listen_name}={endpoint}")
                         for opt in SOCKOPTS]

    def vsl_link(self, xid: int) -> None:
        self.vsl.append(("Link", f"req {xid} rxreq"))
        if len(self.vsl) >= 64:
            # a long keep-alive session: flush its records a part at a time (bounded buffer)
            self.server.vsl.write(self.xid, "c", self.vsl)
            self.vsl = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.stolen:
            if time.monotonic() - self.idle_since > self.server.params.timeout_linger:
                self._herded()           # it sat in the waiter until it closed
            # one close reason per session, as varnishd's SES_Close: sess_closed or sess_closed_err
            reason = self.close_reason or "sc_rem_close"
            counters = self.server.counters
            setattr(counters, reason, getattr(counters, reason) + 1)
            if reason in _CLOSE_ERR:
                counters.sess_closed_err += 1
            if reason not in _CLOSE_WAITING:
                counters.sess_closed += 1
        if not self.stolen and self.t_open:
            # SessClose names the reason as varnishd's tbl/sess_close.h does (sc_rx_junk: RX_JUNK)
            reason = (self.close_reason or "sc_rem_close")[3:].upper()
            self.vsl.append(("SessClose", "%s %.3f" % (reason, time.time() - self.t_open)))
            self.vsl.append(("End", ""))
            self.server.vsl.write(self.xid, "c", self.vsl)
            self.vsl = []
        if self.pipe_to is not None:
            self.pipe_to.close()        # the client left: so does the pipe's backend side
        self.server.sessions.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.send_timer is not None:
            self.send_timer.cancel()
        if self._sink is not None:
            self._sink.fail("client closed the connection")
            self._sink = None
        if self.write_drained is not None and not self.write_drained.done():
            self.write_drained.set_result(None)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.write_drained is not None and not self.write_drained.done():
            self.write_drained.set_result(None)
        if self.write_blocked:
            self._unblock_writes()

    async def drain(self, deadline: float | None = None) -> None:
        """Wait until the transport's buffer is below its high-water mark.

        A client that reads nothing for idle_send_timeout, or not the whole response by `deadline`
        (send_timeout), loses its connection, as in varnishd.
        """
        if not self.paused_writing or self.closed:
            return
        timeout = self.server.params.idle_send_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        self.write_drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(max(timeout, 0)):
                await self.write_drained
        except TimeoutError:
            self.send_timed_out()

    def send_timed_out(self) -> None:
        self.close_reason = "sc_tx_error"
        self.abort()

    # A hit written in data_received cannot wait: when it leaves the transport backed up, the
    # connection stops taking requests (and reading) until the client has read it.
    def _block_writes(self) -> None:
        self.write_blocked = True
        self.transport.pause_reading()
        timeout = self.server.params.idle_send_timeout
        self.send_timer = asyncio.get_running_loop().call_later(timeout, self._send_stalled)

    def _send_stalled(self) -> None:
        self.send_timer = None
        if self.write_blocked and not self.closed:
            self.send_timed_out()

    def _unblock_writes(self) -> None:
        self.write_blocked = False
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        if self.closed or self.busy:
            return
        self.idle_since = time.monotonic()
        self._resume_parsing()

    def _arm_idle_timer(self) -> None:
        timeout = self.server.params.timeout_idle
        if timeout > 0:
            self.idle_timer = asyncio.get_running_loop().call_later(timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: cheaper than rescheduling on every request.
        if self.closed:
            return
        timeout = self.server.params.timeout_idle
        loop = asyncio.get_running_loop()
        if self.busy or self.queue or self.write_blocked:
            self.idle_timer = loop.call_later(timeout, self._check_idle)
            return
        # A body that still arrives for a finished request counts its time from its last bytes; a
        # head (or nothing) from when the connection went idle, however slowly it trickles in.
        since = self.last_active if self._sink is not None else self.idle_since
        idle_for = time.monotonic() - since
        if idle_for < timeout:
            self.idle_timer = loop.call_later(max(timeout - idle_for, 0.05), self._check_idle)
            return
        # a head begun but not finished is a receive timeout; an idle keep-alive (even after requests:
        # _head_size is the last head's), timeout_idle
        begun = self._in_head or self._relaxing or bool(self._method_hold)
        self.close_reason = "sc_rx_timeout" if begun else "sc_rx_close_idle"
        self.abort()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping whatever the client did not read (timeouts, overflow)."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_active = now = time.monotonic()
        if self.stolen or self.closed or self.refusal is not None:
            return
        if now - self.idle_since > self.server.params.timeout_linger and self._herded() and self._rescheduled():
            return
        if self.pipe_to is not None:
            self.server.counters.s_pipe_in += len(data)
            self.pipe_in += len(data)        # PipeAcct
            self.pipe_to.write(data)
            return
        if (self.busy or self.write_blocked or self.held) and self._sink is None:
            self._hold(data)
            return
        # A body still arriving is parsed at once, even while its request runs: the request reads it.
        self._feed_some(data)
        if self.queue and not self.busy and not self.write_blocked:
            self.run_queue()

    def _herded(self) -> bool:
        """Whether the session waited for a request past timeout_linger, so that varnishd's worker handed
        it to the waiter (counted once per idle spell, when it leaves: sess_herd)."""
        if (self.busy or self.queue or self.held or self._in_message or self._method_hold
                or self._sink is not None or self.pipe_to is not None or self.herded_at == self.idle_since):
            return False
        self.herded_at = self.idle_since
        self.server.counters.sess_herd += 1
        return True

    def _rescheduled(self) -> bool:
        """Data for a herded session: varnishd schedules a request task, which debug.reqpool.fail can
        make fail; the session is then closed (OVERLOAD) with nothing read. False: go on."""
        server = self.server
        if not (server.reqpool_fail and server.reqpool_fails()):
            return False
        self.close_reason = "sc_overload"
        self.close()
        return True

    def _hold(self, data: bytes) -> None:
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > _MAX_HELD:
            self.transport.pause_reading()

    def _feed_some(self, data: bytes) -> None:
        """Parse data a slice at a time while few requests wait; hold the rest (in order) past that.

        A read can hold thousands of tiny pipelined requests; each parsed one costs a request object,
        so parsing stops at _MAX_QUEUED and goes on as the queue drains.
        """
        while data:
            if len(self.queue) >= _MAX_QUEUED and self._sink is None:
                self._hold(data)
                return
            if len(data) <= _FEED_SLICE:
                self._feed(data)
                return
            self._feed(data[:_FEED_SLICE])
            data = data[_FEED_SLICE:]
            if self.closed or self.refusal is not None:
                if self._raw is not None and len(self._raw) < self._raw_limit():
                    self._raw += data       # not HTTP, but a steal may still hand it over
                return

    def eof_received(self) -> bool | None:
        if self.pipe_to is not None:
            self.pipe_to.close()        # the client is done: so is the pipe (it then closes us)
        # A half-closed client still gets the answers to what it sent; then we close (run_queue).
        self.eof = True
        if self._sink is not None:
            self._sink.fail("client closed the connection")
            self._sink = None
        if not self.queue and not self.busy and not self.write_blocked:
            self.close()
            return None
        self._keep_alive = False
        return True

    # -- parsing ----------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        # The raw bytes since the last message boundary with nothing queued: where a stolen or piped
        # request ends in them, what follows goes with the socket or to the pipe's backend.
        if self._raw is None or (not self._in_message and not self.queue):
            self._raw = data            # (usually the only read: no copy)
            self._raw_done = 0
        elif len(self._raw) < self._raw_limit():
            if type(self._raw) is bytes:
                self._raw = bytearray(self._raw)
            self._raw += data
        if self._method_hold:
            data, self._method_hold = self._method_hold + data, b""
        if self._relaxing:
            data = self._relax_head(self._head_prefix + data)
        while data:
            at_start = not self._in_message
            done_before = self._raw_done
            if at_start and data.startswith(b"PRI "):
                # llhttp would wait for the rest of an HTTP/2 preface; Varnish hands PRI to VCL
                data = self._custom_method(data, 0)
                continue
            try:
                self._feeding = data
                self.parser.feed_data(data)
                if self._chunk_bad is not None:
                    self._chunk_bad = None
                    self._refuse(b"")        # its body failed already (on_body): as _body_broke
                    return
                self._keep_head(data, self._raw_done - done_before)
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
                    self.bad_request(exc, self._head_bytes(data, completed))
                    return
                offset = _end_of_message(data, completed) if completed else 0
                data = self._custom_method(data, offset)
            except httptools.HttpParserInvalidURLError as exc:
                # llhttp wants "/..." or a scheme; varnishd takes any URL token ("foo", "bar?x")
                completed = self._raw_done - done_before
                if not at_start:
                    if completed or self._head_prefix is None:
                        self.bad_request(exc, self._head_bytes(data, completed))
                        return
                    # begun in an earlier read (llhttp took "fo" for a scheme's start): from its start
                    data, skip = self._head_prefix + data, self._prefix_skip
                    data = self._custom_url(data, _end_of_message(data, skip) if skip else 0)
                    continue
                offset = _end_of_message(data, completed) if completed else 0
                data = self._custom_url(data, offset)
            except HeadOverflow:
                self.overflow()
                return
            except (httptools.HttpParserError, RequestTooLarge, UnicodeDecodeError) as exc:
                # httptools wraps what a callback raised; the cause is its context
                if isinstance(exc.__context__, ExpectationFailed):
                    self.expectation_failed(exc.__context__.head_bytes)
                    return
                if isinstance(exc.__context__, HeadOverflow):
                    self.overflow()
                    return
                if self._sink is not None and type(exc) is httptools.HttpParserError:
                    self._body_broke(chunked_error(str(exc), self._feeding) or "chunked read err")
                    return
                raw = self._refused_head(data, self._raw_done - done_before, exc)
                if raw is None or not needs_relaxing(raw) or not self._may_relax(raw):
                    self.bad_request(exc, raw if raw is not None else
                                     self._head_bytes(data, self._raw_done - done_before))
                    return
                data = self._relax_head(raw)

    def _keep_head(self, data: bytes, completed: int) -> None:
        """After a read: keep what came of a head still incomplete, and bound it by http_req_size.

        varnishd closes, unanswered, a head that fills http_req_size unended; counting here, before
        httptools holds more, keeps a head that never ends from costing more than about one read.
        """
        if not self._in_head:
            self._head_prefix = None
            return
        if self._head_prefix is not None and not completed:
            self._head_prefix += data              # the head goes on from an earlier read
        else:
            self._head_prefix, self._prefix_skip = data, completed
        limit = self.server.params.http_req_size
        if len(self._head_prefix) >= limit and self._prefix_skip:
            self._head_prefix = self._head_prefix[_end_of_message(self._head_prefix, self._prefix_skip):]
            self._prefix_skip = 0
        if len(self._head_prefix) >= limit:      # a full buffer with no end yet: varnishd's overflow
            self._head_prefix = None
            raise HeadOverflow()

    def _refused_head(self, data: bytes, completed: int, exc: Exception) -> bytes | None:
        """The raw bytes from the start of the head llhttp just refused (None: not a head error)."""
        if type(exc) is not httptools.HttpParserError:
            return None
        return self._head_bytes(data, completed)

    def _may_relax(self, raw: bytes) -> bool:
        """Whether a head llhttp refused may be read again with its bare LFs and folds made plain:
        not when varnishd refuses it as it came (a first header line that starts with a blank
        is no fold to varnishd)."""
        params = self.server.params
        why = refusal(raw, params.http_req_hdr_len, params.http_max_hdr)
        return why.passes or why.incomplete

    def _head_bytes(self, data: bytes, completed: int) -> bytes | None:
        """The raw bytes from the start of the head being read, to the end of this read (None: no
        head is being read)."""
        if not self._in_head:
            return None
        if completed:
            return data[_end_of_message(data, completed):]
        if self._head_prefix is None:
            return data
        raw = self._head_prefix + data
        return raw[_end_of_message(raw, self._prefix_skip):] if self._prefix_skip else raw

    def _relax_head(self, raw: bytes) -> bytes:
        """Parse again, from a fresh parser, a head with bare LFs or folded lines (varnishd takes both).

        Returns what to feed: the head rewritten with CRLFs and its folds joined, then the rest; or b""
        while the head's end has not arrived (held, within http_req_size).
        """
        self.parser = httptools.HttpRequestParser(self)
        self._in_message = self._in_head = False
        fixed = relax_head(raw)
        if fixed is None:
            if len(raw) >= self.server.params.http_req_size:
                self._relaxing, self._head_prefix = False, None
                self.overflow()
                return b""
            self._relaxing, self._head_prefix, self._prefix_skip = True, raw, 0
            self._in_message = True         # a head begun (read ahead, its bytes kept for a steal)
            return b""
        self._relaxing, self._head_prefix = False, None
        return fixed

    def _custom_method(self, data: bytes, offset: int) -> bytes:
        """Parse the request at `offset` with a stand-in method, remembering the real one."""
        rest = data[offset:]
        space = rest.find(b" ")
        self.parser = httptools.HttpRequestParser(self)
        self._in_message = False        # the failed parser had begun this message
        if space < 0:
            if not _TOKEN.fullmatch(rest):
                self.bad_request(head=rest)
            elif len(rest) >= self.server.params.http_req_size:
                self.overflow()             # varnishd: a head that fills http_req_size is closed unanswered
            else:
                self._method_hold = rest          # the method was cut short by the read
            return b""
        method = rest[:space]
        if not _TOKEN.fullmatch(method):
            self.bad_request(head=rest)
            return b""
        self._method_override = text(method)
        return b"GET" + rest[space:]

    def _custom_url(self, data: bytes, offset: int) -> bytes:
        """Parse the request at `offset` with "/" for its URL, remembering the real one."""
        rest = data[offset:]
        self.parser = httptools.HttpRequestParser(self)
        self._in_message = False        # the failed parser had begun this message
        start = rest.find(b" ") + 1
        end = start
        while end < len(rest) and rest[end] not in b" \r\n":
            end += 1
        if start == 0 or end == len(rest):
            # the request line was cut short by the read: held, as varnishd bounds a URL, by
            # http_req_size (not http_req_hdr_len); filling it, closed unanswered
            if len(rest) >= self.server.params.http_req_size:
                self.overflow()
                return b""
            if self._method_override is not None:   # hold the bytes as sent, not our stand-in
                rest = wire(self._method_override) + rest[3:]
                self._method_override = None
            self._method_hold = rest
            return b""
        self._url_override = rest[start:end]
        return rest[:start] + b"/" + rest[end:]

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._url = b""
        self._fields = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        if self._url_override is not None:
            url, self._url_override = self._url_override, None
        self._url += url
        self._head_size += len(url)     # varnishd bounds the URL by http_req_size, not http_req_hdr_len
        if self._head_size > self.server.params.http_req_size:
            raise HeadOverflow()

    def on_header(self, name: bytes, value: bytes) -> None:
        params = self.server.params
        size = len(name) + len(value) + 2   # the line as varnishd measures it: "name: value"
        self._head_size += size + 2
        if self._head_size > params.http_req_size:
            raise HeadOverflow()            # varnishd: past its buffer, the head is cut off unanswered
        if size > params.http_req_hdr_len:
            raise RequestTooLarge("header too long")
        if len(self._fields) + HDR_FIRST >= params.http_max_hdr:
            raise RequestTooLarge("too many headers")
        field = name.decode("utf-8", "surrogateescape")     # http1.text(), inlined: per header
        # llhttp keeps the blanks that end a value; varnishd strips them
        self._fields.append([field, value.rstrip(b" \t").decode("utf-8", "surrogateescape"), field.lower()])

    def on_headers_complete(self) -> None:
        """The head is in: check it as varnishd's HTTP1_DissectRequest does, then queue the request.

        The request runs while its body still arrives; the body goes to its ReqBody.
        """
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise RequestTooLarge(f"HTTP/{version}")       # HTTP/0.9 and 2.0 on this port: 400
        fields = self._fields
        if self._url[:1] != b"/":
            fields, self._url, moved = _absolute_uri(fields, self._url, self.server.params)
        else:
            moved = None
        length = None
        chunked = False
        hosts = 0
        expect = None
        for field in fields:
            lname = field[2]
            if lname == "host":
                hosts += 1
            elif lname == "content-length":
                value = field[1].strip()
                length = int(value) if value.isdigit() else None
            elif lname == "transfer-encoding":
                if not chunked and field[1].strip().lower() != "chunked":
                    raise RequestTooLarge("Transfer-Encoding other than chunked")   # varnishd: BS_ERROR
                chunked = True
            elif lname == "expect":
                expect = field[1]
        if hosts > 1:
            # one Host for VCL and the hash, another for the backend: cache poisoning
            raise RequestTooLarge("duplicate Host header")     # logged as dissected (h1refuse)
        if length is not None and length >= 1 << 63:
            raise RequestTooLarge("Content-Length out of range")
        # Request smuggling shapes: llhttp refuses CL+TE and duplicate Content-Length itself.
        method = self._method_override or text(parser.get_method())
        self._method_override = None
        # the whole head, request line and empty line too, must fit in http_req_size
        if self._head_size + len(method) + 14 > self.server.params.http_req_size:
            raise HeadOverflow()
        if not chunked and length is None:
            if version == "1.0" and method in ("POST", "PUT") and \
                    not any(f[2] == "connection" and f[1].lower() == "keep-alive" for f in fields):
                raise RequestTooLarge("HTTP/1.0 body to the end of the connection")   # RFC 1945 8.3
            length = 0
        if method == "HEAD" and length != 0:
            raise RequestTooLarge("HEAD with a body")
        self._in_head = False            # (until here, a refusal can find the head's bytes)
        self._head_prefix = None
        headers = Headers.adopt(fields)
        want_continue = False
        if expect is not None:
            if expect.strip().lower() != "100-continue":
                raise ExpectationFailed(len(method) + len(version) + 11 + self._head_size)  # (_head_size has the URL)
            want_continue = version == "1.1"
            headers.unset("Expect")
        head = HttpMessage(method, text(self._url), "HTTP/" + version, headers=headers)
        self._keep_alive = parser.should_keep_alive()
        # the head's bytes: request line, header lines (name, ": ", value, CRLF), the empty line
        if length == 0 and not want_continue:
            body = NO_BODY
        else:
            body = ReqBody(None if chunked else length, timeout=self.server.params.timeout_idle,
                           pause=self._pause_body, resume=self._resume_body,
                           want_continue=self._send_continue if want_continue else None)
        request = ClientRequest(self, head, body, self._keep_alive, self._raw_done + 1,
                                expect=expect.strip() if expect is not None else None, defer_xid=True, moved=moved)
        # ReqAcct's header bytes: the request line and the fields as the parser counted them (client_req
        # counts it when it runs: varnishd dissects a pipelined head only then)
        request.acct_req = len(method) + len(version) + 11 + self._head_size
        self.queue.append(request)
        if not body.done:
            self._sink = body

    def _pause_body(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def _resume_body(self) -> None:
        if self.transport is not None and not self.closed and not self.write_blocked:
            self.transport.resume_reading()

    def _send_continue(self) -> None:
        request = self.current          # the request reading its body
        if request is not None:
            # logged and counted as sent whatever the write does (http1_minimal_response)
            request.ctx.log.append(("RespProtocol", "HTTP/1.1\0RespStatus 100\0RespReason Continue"))
            request.acct_continue += len(CONTINUE_100)
            self.server.counters.s_resp_hdrbytes += len(CONTINUE_100)    # varnishd sums ReqAcct's into it
        if self.transport is not None and not self.closed:
            self.transport.write(CONTINUE_100)

    def on_chunk_header(self) -> None:
        self._chunk_check = self._sink is not None

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            if self._chunk_check:
                self._chunk_check = False
                why = chunk_size_error(self._feeding, body)
                if why is not None:
                    # llhttp takes the bytes after it as the chunk; varnishd stops there
                    self._chunk_bad = why
                    self._sink.fail(why)
                    self._sink = None
                    return
            self._sink.feed(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._raw_done += 1
        if self._sink is not None:
            self._sink.finish()
            self._sink = None

    def bad_request(self, exc: Exception | None = None, head: bytes | None = None) -> None:
        """Malformed input: Varnish's bare 400, then close. Nothing else is answered.

        The request's transaction is logged as varnishd logs it (h1refuse): refused by the
        dissection of its head (HttpGarbage), or by cnt_recv once dissected (its request, then a
        BogoHeader)."""
        counters = self.server.counters
        counters.client_req_400 += 1
        self.close_reason = "sc_rx_junk"       # varnishd: a request it cannot dissect is junk
        if head:
            params = self.server.params
            why = refusal(head, params.http_req_hdr_len, params.http_max_hdr)
            if why.dissected:
                counters.client_req += 1
                self.close_reason = "sc_rx_bad"
                ip = self.client_ip
                records = [("ReqStart", f"{ip.addr} {ip.port} {self.listen_name}"), ("ReqMethod", why.method),
                           ("ReqURL", why.url), ("ReqProtocol", why.proto)]
                records += [("ReqHeader", h) for h in why.headers]
                records.append(("BogoHeader", why.bogo))
            else:
                records = [("HttpGarbage", text(why.garbage))]
                if why.bogo is not None:
                    records.insert(0, ("BogoHeader", why.bogo))
            self._refusal_log = (records, "400", "Bad Request", why.head_bytes, len(BAD_REQUEST), why.dissected)
        self._refuse(BAD_REQUEST)

    def _body_broke(self, error: str) -> None:
        """A request body that cannot be parsed (a bad chunk): no bad request but a failed body, as
        varnishd's body fetch fails: its reader gets `error`, nothing more is read, no 400 is sent, and
        the connection closes once the request is done (RX_BODY)."""
        self._sink.fail(error)
        self._sink = None
        self._refuse(b"")

    def _refusal_transaction(self, records: list, status: str, reason: str, head_bytes: int,
                             sent: int, vcl: bool) -> tuple[int, list]:
        """The request transaction of a head refused before vcl_recv (its vxid and records), written
        once the refusal is sent."""
        server = self.server
        xid = server.next_xid()
        self.vsl_link(xid)
        t = "%.6f" % time.time()
        begin = [("Begin", f"req {self.xid} rxreq"), ("Timestamp", f"Start: {t} 0.000000 0.000000"),
                 ("Timestamp", f"Req: {t} 0.000000 0.000000")]
        if vcl:
            active = server.active_vcl
            begin.append(("VCL_use", (active.__dict__.get("name") if active is not None else None) or "boot"))
        return xid, [*begin, *records, ("RespProtocol", "HTTP/1.1"), ("RespStatus", status),
                     ("RespReason", reason),
                     ("ReqAcct", f"{head_bytes} 0 {head_bytes} {sent} 0 {sent}"), ("End", "")]

    def expectation_failed(self, head_bytes: int) -> None:
        server = self.server
        server.counters.client_req_417 += 1
        server.counters.client_req += 1    # varnishd counts it: the request was dissected
        self.close_reason = "sc_rx_junk"
        # a request transaction of its own, answered before vcl_recv (cnt_transport): no ReqStart
        self._refusal_log = ([], "417", "Expectation Failed", head_bytes, len(EXPECTATION_FAILED), True)
        self._refuse(EXPECTATION_FAILED)

    def overflow(self) -> None:
        """A head past http_req_size: varnishd closes without an answer."""
        self.close_reason = "sc_rx_overflow"
        self.queue.clear()
        self.abort()

    def _refuse(self, response: bytes) -> None:
        """Answer bad input once the requests before it are answered (varnishd reads them in order)."""
        if self._sink is not None:
            self._sink.fail("bad request")
            self._sink = None
        if not response:        # a request body that broke (a bad chunk): varnishd closes as RX_BODY
            self.close_reason = self.close_reason or "sc_rx_body"
        self.refusal = response
        self.held.clear()                   # nothing after the bad bytes is read
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
        if not self.queue and not self.busy and not self.write_blocked:
            self._send_refusal()

    def _send_refusal(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(self.refusal)
        if self._refusal_log is not None:
            counters = self.server.counters        # its bytes, as its ReqAcct counts them
            counters.s_req_hdrbytes += self._refusal_log[3]
            counters.s_resp_hdrbytes += self._refusal_log[4]
            xid, records = self._refusal_transaction(*self._refusal_log)
            self.server.vsl.write(xid, "c", records)
            self._refusal_log = None
        self.close()

    # -- running requests -------------------------------------------------------------------------

    def run_queue(self) -> None:
        """Handle queued requests in order until one needs to wait or the client stops reading;
        when the queue runs dry, parse more of what was held."""
        while True:
            while self.queue and not self.busy and not self.closed:
                request = self.current = self.queue.popleft()
                request.take_xid()
                self.server.counters.client_req += 1
                workers = self.server.workers
                workers.acquire()
                try:
                    done = request.run_sync()
                except BaseException:
                    workers.release()
                    raise
                if not done:
                    self.busy = True
                    asyncio.get_running_loop().create_task(self._run_async(request))
                    return
                workers.release()
                self._end_body(request)
                if not request.keep_alive:
                    self.close_reason = self.close_reason or request.close_reason or "sc_resp_close"
                    self.close()
                    return
                if self.queue or self.held or self._in_message or self._method_hold or self.refusal is not None:
                    self.server.counters.sess_readahead += 1    # the next request's bytes (or junk) are here
                if self.paused_writing:
                    self._block_writes()
                    return
            if self.queue or not self.held or self.busy or self.closed or self.refusal is not None:
                break
            self._parse_held()
            if not self.queue:
                break
        if not self.queue:
            if self.refusal is not None and not self.busy:
                self._send_refusal()
            elif self.eof and not self.busy and not self.held:
                self.close()
            self.idle_since = time.monotonic()

    async def _run_async(self, request: ClientRequest) -> None:
        try:
            await request.run_async()
        except Exception:  # a bug must cost this connection only, never the server
            log.exception("request failed")
            self.close()
        finally:
            self.server.workers.release()
        self.busy = False
        if self.stolen or self.closed:
            return
        if request.body.error is not None and self._sink is request.body:
            # the body broke off mid-message (timeout): what follows cannot be parsed as requests
            self.close_reason = "sc_rx_body"
            self.close()
            return
        self._end_body(request)
        if not request.keep_alive:
            self.close_reason = self.close_reason or request.close_reason or "sc_resp_close"
            self.close()
            return
        if self.queue or self.held or self._in_message or self._method_hold or self.refusal is not None:
            self.server.counters.sess_readahead += 1
        self.last_active = self.idle_since = time.monotonic()
        if self.paused_writing:
            self._block_writes()
            return
        self._resume_parsing()

    def _resume_parsing(self) -> None:
        """Read again, and run what was held while the connection was busy."""
        if self.transport is not None and self.held_size <= _MAX_HELD:
            self.transport.resume_reading()
        self.run_queue()

    def _parse_held(self) -> None:
        """Parse held bytes until the queue is long enough again (what is left stays held)."""
        held, self.held, self.held_size = self.held, [], 0
        for i, data in enumerate(held):
            if self.closed or self.refusal is not None:
                return
            self._feed_some(data)
            if self.held:             # it stopped: the rest stays behind what it held
                self.held.extend(held[i + 1:])
                self.held_size += sum(map(len, held[i + 1:]))
                return
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def take_held(self) -> bytes:
        """Bytes received but not parsed, removed from the connection (for pipe)."""
        held = b"".join(self.held)
        self.held, self.held_size = [], 0
        if self.transport is not None:
            self.transport.resume_reading()
        return held

    # -- std.cache_req_body() / std.late_100_continue() -------------------------------------------

    async def cache_req_body(self, size: int) -> bool:
        request = self.current
        if request is None:
            return False
        body = request.body
        if body.present and body.state == "unread" and (body.length is None or body.length <= size):
            request.ctx.log.append(("Storage", "malloc Transient"))   # vrb_pull's object, before a 100
        ok = await body.cache(size)
        if ok and body.present:
            # a cached body lives in Transient storage, as in varnishd, and may not fit there
            length = sum(map(len, body.cached))
            # VRB_Cache makes a private object and a storage segment for the bytes
            holder = _CachedBody(OBJECT_OVERHEAD + SEGMENT_OVERHEAD + length)
            if self.server.storage.stevedores[TRANSIENT].charge(holder, 0, self.server.params.nuke_limit):
                request.body_storage = holder
            else:
                body.cached, body.state, body.error = None, "failed", "Could not get storage"
                ok = False
        if not ok:
            request.body_failed = True
            error = body.error
            if error:
                if "too big" in error or error == "Could not get storage" or chunked_error(error):
                    message = error        # (a broken chunk: already in varnishd's words, _body_broke)
                elif error == "client closed the connection":
                    # varnishd's words for a body that broke off (its fetch processors')
                    message = ("straight" if body.length is not None else "chunked") + " insufficient bytes"
                else:
                    # a read that failed (timed out): v1f_straight_pull's, v1f_chunked_pull's words, after
                    # the read's own error (EAGAIN: SO_RCVTIMEO), as varnishd 7.1 logs both
                    if error.startswith("timeout"):
                        request.ctx.log.append(("FetchError", "Resource temporarily unavailable"))
                    message = "straight insufficient bytes" if body.length is not None else "chunked read err"
                request.ctx.log.append(("FetchError", message))
                if body.length is None or "too big" not in error:
                    request._ts("ReqBody")      # read up to where it stopped (vrb_pull)
        elif body.present:
            request._ts("ReqBody")
            if body.length != length:
                # as vrb_pull: a body that came chunked now says how long it is
                headers = request.ctx.req.headers
                chunked = headers.get("Transfer-Encoding")
                headers.unset("Transfer-Encoding")
                headers.set("Content-Length", str(length))
                if chunked is not None:      # varnishd 7.1 logs it twice (vrb_pull, then VRB_Cache)
                    request.ctx.log += (("ReqUnset", "Transfer-Encoding: " + chunked),
                                        ("ReqHeader", f"Content-Length: {length}"))
        return ok

    def _end_body(self, request: ClientRequest) -> None:
        """The request is done: drop what still comes of its body, free a cached one's storage."""
        if request.body is not NO_BODY:      # (the shared empty body has nothing to drop)
            request.body.ignore()
        holder = request.body_storage
        if holder is not None:
            request.body_storage = None
            self.server.storage.stevedores[TRANSIENT].release(holder)

    def late_100_continue(self, late: bool) -> None:
        if self.current is not None:
            self.current.late100 = late

    # -- tinykvm.steal() --------------------------------------------------------------------------

    def _raw_limit(self) -> int:
        vcl = self.server.active_vcl
        return _MAX_RAW if vcl is not None and "vcl_recv" in vcl.async_subs else _MAX_PIPE_RAW

    def bytes_after(self, request: ClientRequest) -> bytes | None:
        """The raw bytes the server read past `request` (pipelined requests, a body not consumed).

        None when they cannot be told apart (raw tracking overflowed).
        """
        if self._sink is request.body:
            return b""             # its body is still arriving: the rest is on the socket
        held = b"".join(self.held)
        if not self.queue and not self._in_message and self.refusal is None:
            # a method cut short by the read (or any word: it may be no HTTP at all) comes first
            return self._method_hold + held
        raw = self._raw
        if raw is None or len(raw) >= self._raw_limit():
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
        body = request.body
        prebuffer = (body.cached_bytes() if body.cached is not None
                     else b"".join(body.peek_buffered()))
        try:
            accepted = await self.server.programs.steal(
                program, transport.get_extra_info("socket"), remote, argument, prebuffer + after)
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
        self._sink = None
        self.server.sessions.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.send_timer is not None:
            self.send_timer.cancel()
        if self.transport is not None:
            self.transport.abort()


class _CachedBody:
    """A cached request body as Transient storage counts it (it charges objects by .size)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


# The close reasons varnishd counts as errors (tbl/sess_close.h): sess_closed_err, not sess_closed.
_CLOSE_ERR = frozenset({"sc_rx_bad", "sc_rx_body", "sc_rx_junk", "sc_rx_overflow", "sc_rx_timeout",
                        "sc_tx_error", "sc_overload", "sc_pipe_overflow", "sc_range_short",
                        "sc_req_http20", "sc_vcl_failure", "sc_req_http10"})
# sess_closed counts the sessions closed when a request is done (varnishd's H1CLEANUP), whatever the
# reason; these are the closes while waiting for a request (http1_wait), which it does not count.
_CLOSE_WAITING = frozenset({"sc_rem_close", "sc_rx_close_idle", "sc_rx_timeout", "sc_rx_overflow"})



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
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        pass            # past an Upgrade request the bytes are not HTTP: its count is final
    return counter.done


def _absolute_uri(fields: list, url: bytes, params) -> tuple[list, bytes, list | None]:
    """RFC 2616 5.2, as HTTP1_DissectRequest reads it: an absolute URI with a path names the host,
    which replaces every Host header, appended last (https:// only with feature https_scheme).
    Also returns the records varnishd logs for the swap (before VCL_use), None if the URL stays."""
    low = url[:8].lower()
    if low[:7] == b"http://":
        start = 7
    elif low == b"https://" and "https_scheme" in {
            f.strip().lstrip("+") for f in params.text("feature").split(",") if not f.strip().startswith("-")}:
        start = 8
    else:
        return fields, url, None
    slash = url.find(b"/", start)
    if slash < 0:
        return fields, url, None
    host = text(url[start:slash])
    moved = [("ReqUnset", f"{f[0]}: {f[1]}") for f in fields if f[2] == "host"]
    moved.append(("ReqHeader", "Host: " + host))
    fields = [f for f in fields if f[2] != "host"]
    fields.append(["Host", host, "host"])
    return fields, url[slash:], moved


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
