"""The backend side, shaped like Varnish's cache_fetch.c: one BusyObj per backend transaction.

    startfetch (vcl_backend_fetch) -> fetch headers -> vcl_backend_response -> fetchbody -> done
                              \\-> error (vcl_backend_error) ; retry -> startfetch ; abandon/fail -> fail

The fetch runs as its own task and fills an ObjCore; clients stream from that object while the body
still arrives (beresp.do_stream), and other requests waiting on the same busy object are woken as soon
as the headers are known.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import time
import weakref
from typing import TYPE_CHECKING

from cacheserver import backends, vsl
from cacheserver import esi as _esi  # noqa: F401 - fills the filters' esi slots
from cacheserver.beconn import SMALL_BODY, BackendConn, ConnError
from cacheserver.filters import Chain, FetchCtx, FilterError, open_chain, stack, vfp_default_list, weaken_etag
from cacheserver.h1refuse import HDR_FIRST
from cacheserver.http1 import DATES, HOP_BY_HOP, chunked_error, reason_for, text, wire
from cacheserver.reqbody import ReqBody, ReqBodyError
from cacheserver.rfc2616 import bad_vary, collect_header, compute_ttl
from cacheserver.stevedores import TRANSIENT
from cacheserver.storage import ObjCore
from cacheserver.vclcall import acall_sub
from vcl.rtlib import restart_task
from vcl.runtime import Action, BackendSpec, Context, Headers, HttpMessage, VCLFailure, Workspace

if TYPE_CHECKING:
    from cacheserver.server import Server

log = logging.getLogger("cacheserver.fetch")

# Headers a cache fill must not forward: the object is fetched whole and unconditionally.
_FETCH_FILTER = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match",
                 "If-Unmodified-Since", "Cache-Control", "Accept-Ranges", "Content-Range",
                 "Proxy-Authenticate", "Proxy-Authorization")
# Headers of a 304 that must not replace the stored object's.
_NO_MERGE = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection"})


# Why a backend connection is closed, as BackendClose says it: varnishd's sess_close.h descriptions
SC_RESP_CLOSE = "Backend/VCL requested close"
SC_REQ_CLOSE = "Client requested close"
SC_RX_BAD = "Received bad req/resp"
SC_RX_BODY = "Failure receiving req.body"     # (varnishd's words, for a beresp body too)
SC_RX_JUNK = "Received junk data"
SC_RX_OVERFLOW = "Received buffer overflow"
SC_RX_TIMEOUT = "Receive timeout"
SC_TX_ERROR = "Error transaction"
# a failed head read, by its FetchError text (V1F_FetchRespHdr)
_HEAD_CLOSE = {"Received junk": SC_RX_JUNK, "backend closed": SC_RESP_CLOSE, "timeout": SC_RX_TIMEOUT,
               "first byte timeout": SC_RX_TIMEOUT, "overflow": SC_RX_OVERFLOW}


def _body_error_texts(kind: str, error: str, in_chunk: bool) -> tuple[str, ...]:
    """FetchError records for a backend body that broke off, in varnishd's words (cache_http1_vfp.c):
    a read that timed out logs its errno first, then the framing says what was missing."""
    if error.startswith("body: "):
        return (chunked_error(error) or error,)
    if error not in ("timeout", "backend closed"):
        return (error,)
    first = ("Resource temporarily unavailable",) if error == "timeout" else ()
    if kind == "length":
        return first + ("straight insufficient bytes",)
    if kind == "chunked":
        return first + ("chunked insufficient bytes" if in_chunk else "chunked read err",)
    if kind == "eof":
        return first + ("eof socket fail",)
    return first or (error,)


class FetchError(Exception):
    """The backend could not give a response (refused, timeout, reset, garbage)."""


class _LoggedFetchError(FetchError):
    """A FetchError whose record is in the log already (before the BackendClose, as varnishd's)."""


def make_bereq(req: HttpMessage, is_pass: bool, xid: int, gzip: bool, keep_proto: bool = False,
               ws: Workspace | None = None) -> HttpMessage:
    """The backend request for a miss (whole object, GET) or a pass (as the client asked)."""
    bereq = req.copy()
    headers = bereq.headers
    headers.ws = ws
    listed = [t.strip().lower() for v in headers.get_all("Connection") for t in v.split(",")]
    for name in HOP_BY_HOP:
        headers.unset(name)
    for name in listed:
        if name and name not in ("close", "keep-alive"):
            headers.unset(name)
    if not is_pass:
        bereq.method = "GET"
        for name in _FETCH_FILTER:
            headers.unset(name)
        headers.unset("Content-Length")      # a cache fill sends no body (varnishd's HTTPH_R_FETCH)
        if gzip and (headers.get("Accept-Encoding") or "").lower() != "gzip":
            # a cache fill always asks for gzip: clients that do not take it get it gunzipped
            # (http_ForceHeader: a field other than "gzip" goes, a new one comes last)
            headers.unset("Accept-Encoding")
            headers.add("Accept-Encoding", "gzip", printf=True)
    headers.unset("X-Varnish")
    headers.add("X-Varnish", str(xid), printf=True)
    if not keep_proto:
        bereq.proto = "HTTP/1.1"
    return bereq


def _strip_hop_by_hop(headers: Headers) -> None:
    """What an object never stores: hop-by-hop fields and those Connection names."""
    listed = [t.strip().lower() for v in headers.get_all("Connection") for t in v.split(",")]
    for name in HOP_BY_HOP:
        headers.unset(name)
    for name in listed:
        if name:
            headers.unset(name)


_BEGIN = {"miss": "fetch", "pass": "pass", "bg": "bgfetch"}
# Fetch_Body's body status, numbered as varnishd's tbl/body_status.h
_BODY_STATUS = {"none": "0 none", "chunked": "2 chunked", "length": "3 length", "eof": "4 eof"}


def beresp_filters_default(ctx: Context) -> str:
    """beresp.filters as varnishd would choose them now (vbf_default_filter_list)."""
    body_kind, clen = ctx.beresp_body
    return vfp_default_list(
        body_none=body_kind == "none", content_length=clen if body_kind == "length" else None,
        content_encoding=ctx.beresp.headers.get("Content-Encoding"),
        do_gzip=bool(ctx.do_gzip), do_gunzip=bool(ctx.do_gunzip), do_esi=bool(ctx.do_esi),
        gzip_support=bool(ctx.server.params.http_gzip_support))


# Body bytes already received with the head, up to this much, go to the clients with their heads.
_EARLY_BODY = 64 * 1024


class BusyObj:
    """One backend transaction filling `oc` (a busy object in the cache, or a private one for pass)."""

    # BereqAcct: bytes of this fetch (bereq head and body sent, beresp head and body received)
    acct_bereq_hdr = acct_bereq_body = acct_beresp_hdr = acct_beresp_body = 0
    rolled_back = False     # std.rollback(bereq) let this attempt's backend connection go
    _vfp_failed = False     # this attempt's fetch processors failed (varnishd's vfc->failed)

    def __init__(self, server: Server, vcl, creq: Context, oc: ObjCore, stale: ObjCore | None, mode: str,
                 req_body: bytes | ReqBody | None = None) -> None:
        self.server = server
        self.vcl = vcl
        self.oc = oc
        self.stale = stale
        self.mode = mode                    # "miss", "pass" or "bg" (background refresh in grace)
        self.is_pass = mode == "pass"
        if req_body is None or isinstance(req_body, bytes):
            req_body = ReqBody.of(req_body or b"")     # the client side's whole-body path
        self.req_body: ReqBody = req_body
        self.no_retry: str | None = None     # why a retry cannot resend the request (varnishd's no_retry)
        # set once the request (and its body) is sent or the fetch gave up: varnishd's BOS_REQ_DONE,
        # which a client waits for before it lets go of a body the fetch still reads
        # (the loop looked up once: in Python 3.11 each get_running_loop() is a getpid() syscall)
        loop = self.loop = asyncio.get_running_loop()
        self.req_done: asyncio.Future = loop.create_future()
        self._body_read = False               # the response body was read to its end
        self.conn: BackendConn | None = None
        self.body_kind = "none"
        self.ready: asyncio.Future = loop.create_future()
        self.reader = oc.open_reader() if mode != "bg" else None
        self.no_space = False
        self.bereq_close = False
        self._failure_counted = False        # fetch_failed already counted, or VCL chose the error
        self._stop = ""                       # why storing the body stopped ("storage", "gone")
        self.streamed = True                  # the client reads the body as it arrives
        xid = server.next_xid()
        server.counters.s_fetch += 1          # every backend fetch: miss, pass and background
        if mode == "bg":
            server.counters.s_bgfetch += 1
        params = server.params
        self.ws = Workspace("bo", params.http_max_hdr - HDR_FIRST, server.counters)   # bereq, beresp
        self.bereq0 = make_bereq(creq.req, self.is_pass, xid, params.http_gzip_support, ws=self.ws)
        if (stale is not None and not self.is_pass and stale.http is not None and stale.http.status == 200
                and not (stale.hfm or stale.hfp)):     # (a hit-for-miss is superseded, never revalidated)
            self._add_validators(stale)
        self.ctx = Context(
            method="vcl_backend_fetch", bereq=None, bereq_xid=xid, bereq_backend=creq.backend_hint,
            bereq_uncacheable=self.is_pass, vcl=vcl, server=server, client_ip=creq.client_ip,
            server_ip=creq.server_ip, local_ip=creq.local_ip, remote_ip=creq.remote_ip,
            server_hostname=creq.server_hostname, server_identity=creq.server_identity,
            client_identity=creq.client_identity, is_bgfetch=mode == "bg", is_hitpass=creq.is_hitpass,
            is_hitmiss=creq.is_hitmiss, xid=creq.xid, session=None, req=None, req_top=None,
            sess_xid=creq.sess_xid, bereq_body=req_body, hash=creq.hash,
            # as varnishd's startfetch: the storage the object will go to unless VCL says otherwise
            beresp_storage=TRANSIENT if self.is_pass else server.storage.next_stevedore(),
        )
        self.ctx.priv_task = None
        self.ctx.filters_default = beresp_filters_default   # beresp.filters until VCL sets it
        self.creq = creq                     # the client task, for its ReqBody timestamp
        self.t_prev = self.t_start = self.ctx.bereq_time = time.time()   # bereq.time: kept over retries
        self.ctx.task = weakref.ref(self)    # no cycle: a finished fetch goes at once
        self._vsl_begin(creq.xid, _BEGIN.get(mode, "fetch"))

    # -- the shared log ---------------------------------------------------------------------------

    def _vsl_begin(self, parent: int, reason: str) -> None:
        self.ctx.log += (("Begin", f"bereq {parent} {reason}"),
                         ("VCL_use", getattr(self.vcl, "name", None) or "boot"),
                         ("Timestamp", "Start: " + vsl.floats(self.t_start, 0.0, 0.0)))
        self.logged_bereq = False

    def _ts(self, event: str) -> None:
        now = time.time()
        self.ctx.log.append(("Timestamp", event + ": " + vsl.floats(now, now - self.t_start, now - self.t_prev)))
        self.t_prev = now

    vsl_timestamp = _ts     # std.timestamp (ctx.task): counted from the fetch's own last Timestamp

    def vcl_rollback(self, message: HttpMessage) -> None:
        """std.rollback(bereq): bereq as made from the request (Bereq_Rollback: HTTP_Clone from
        bereq0, which has no X-Varnish yet), unlogged; a fresh PRIV_TASK; the workspace rolled back."""
        ctx = self.ctx
        if message is not ctx.bereq:
            raise VCLFailure("std.rollback() restores req or bereq only")
        restart_task(ctx)
        if self.ws.overflowed:
            self.server.counters.ws_backend_overflow += 1
            self.ws.overflowed = False
        if self.conn is not None:
            # vbf_cleanup: the backend is let go of with the body unread (the connection closed,
            # recycled when there is no body); the fetch then has nothing to read from
            if self.body_kind == "none":
                self._release_response()
            else:
                self._close_conn(SC_RESP_CLOSE)
            self.rolled_back = True
        bereq = self.bereq0.copy()
        bereq.headers.unset("X-Varnish")
        bereq.headers.vsl = (ctx.log, "BereqHeader", "BereqUnset")
        bereq.headers.ws = self.ws
        ctx.bereq = bereq

    def _vsl_end(self) -> None:
        ctx = self.ctx
        if self.ws.overflowed:
            self.server.counters.ws_backend_overflow += 1
        ctx.log += (vsl.bereq_acct(self), ("End", ""))
        self.server.vsl.write(ctx.bereq_xid, "b", ctx.log)

    def _add_validators(self, stale: ObjCore) -> None:
        h = stale.http.headers
        lm, etag = h.get("Last-Modified"), h.get("ETag")
        if lm:
            self.bereq0.headers.set("If-Modified-Since", lm)
        if etag:
            self.bereq0.headers.set("If-None-Match", etag)

    def start(self) -> asyncio.Task:
        return self.loop.create_task(self.run())

    def _signal(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    # -- the state machine ------------------------------------------------------------------------

    async def run(self) -> None:
        workers = self.server.workers
        workers.acquire()
        try:
            state = "startfetch"
            while state is not None:
                state = await getattr(self, "stp_" + state)()
        except Exception:  # a bug costs this fetch only
            log.exception("fetch failed")
            await self.stp_fail()
        finally:
            if not self.oc.complete and not self.oc.failed:
                self.oc.finish(False)
            self._req_sent()
            self._signal()
            self._vsl_end()
            workers.release()

    def _req_sent(self) -> None:
        if not self.req_done.done():
            self.req_done.set_result(None)

    async def stp_startfetch(self) -> str | None:
        ctx = self.ctx
        if ctx.bereq is None:
            ctx.bereq = self.bereq0.copy()     # a retry keeps what VCL did to bereq
            ctx.bereq.headers.ws = self.ws
        if not self.logged_bereq:
            self.logged_bereq = True
            bereq = ctx.bereq
            ctx.log += (("BereqMethod", bereq.method), ("BereqURL", bereq.url), ("BereqProtocol", bereq.proto))
            bereq.headers.log_to(ctx.log, "BereqHeader", "BereqUnset")
            if self.ws.ws_pending:
                ctx.log += self.ws.ws_pending   # making bereq lost a header (X-Varnish...)
                self.ws.ws_pending = None
        ctx.beresp = None
        self._vfp_failed = False
        action = await acall_sub(self.vcl, ctx, "vcl_backend_fetch")
        name = action.name
        if name == "fetch":
            return "fetch"
        if name == "error":
            return self._vcl_error(action)
        return "fail"            # abandon, fail

    def _vcl_error(self, action: Action) -> str:
        """return (error(status, reason)) from VCL: vcl_backend_error, not counted as a failed fetch."""
        self._err_status = (action.args[0] if action.args else 503,
                            action.args[1] if len(action.args) > 1 else "")
        self._failure_counted = True
        return "error"

    async def stp_fetch(self) -> str | None:
        ctx = self.ctx
        server = self.server
        self._ts("Fetch")
        backend = backends.resolve(ctx.bereq_backend, ctx)
        if backend is None or backend.host is None:
            ctx.log.append(("FetchError", "No backend"))
            return self._no_beresp()
        state = backends.live(backend)
        if not state.healthy:
            server.counters.backend_unhealthy += 1
            state.unhealthy += 1
            ctx.log.append(("FetchError", "backend %s: unhealthy" % backend.name))
            return self._no_beresp()
        if backend.max_connections and state.conns >= backend.max_connections:
            server.counters.backend_busy += 1
            state.busy += 1
            ctx.log.append(("FetchError", "backend %s: busy" % backend.name))
            return self._no_beresp()
        ctx.beresp_backend = backend
        self.backend = backend
        self.rolled_back = False
        try:
            await self._gethdrs(backend)
        except _LoggedFetchError:
            return self._no_beresp()
        except FetchError as exc:
            ctx.log.append(("FetchError", str(exc)))
            return self._no_beresp()
        return "response"

    def _no_beresp(self) -> str:
        """No response head: varnishd still stamps Beresp once VDI_GetHdr has returned."""
        self._ts("Beresp")
        return "error"

    async def _gethdrs(self, backend: BackendSpec) -> None:
        """Send bereq and read the response head, as varnishd's vbe_dir_gethdrs.

        A connection taken from the pool that fails before one response byte arrived gets one more
        try on a fresh connection (the backend may have closed it while idle), unless the request
        body cannot be sent again. A fresh connection gets no second try.
        """
        ctx = self.ctx
        server = self.server
        params = server.params
        counters = server.counters

        def pick(value, spec_value, default):
            if value is not None:
                return value
            return spec_value if spec_value is not None else default

        connect = pick(ctx.connect_timeout, backend.connect_timeout, params.connect_timeout)
        first_byte = pick(ctx.first_byte_timeout, backend.first_byte_timeout, params.first_byte_timeout)
        self.between = pick(ctx.between_bytes_timeout, backend.between_bytes_timeout,
                            params.between_bytes_timeout)
        headers = ctx.bereq.headers
        if backend.host_header and "Host" not in headers:
            headers.add("Host", backend.host_header)
        self.bereq_close = "close" in (headers.get("Connection") or "").lower()
        if hasattr(backend, "open_response"):      # tinykvm.program(): a program answers, not HTTP
            self.conn = await backend.open_response(self)
            self._conn_delta(backend, 1)
            counters.backend_req += 1
            return
        pool = server.backend_pools.get(backend.host, int(backend.port))
        fresh = False
        while True:
            conn = None if fresh else pool.take()
            if conn is None:
                try:
                    conn = await pool.connect(connect)
                except (OSError, TimeoutError) as exc:
                    counters.backend_fail += 1
                    backends.count_fail(backend, exc)
                    code = errno.ETIMEDOUT if isinstance(exc, TimeoutError) or exc.errno is None else exc.errno
                    raise FetchError(f"backend {backend.name}: fail errno {code} "
                                     f"({os.strerror(code) if code else 'Success'})") from None
                counters.backend_conn += 1
            else:
                counters.backend_reuse += 1
            self.conn = conn
            self._conn_delta(backend, 1)
            self._log_open(conn, backend, fresh or not conn.reused)
            if not conn.reused and getattr(backend, "preamble", b""):
                conn.write(backend.preamble)          # .preamble: first on a new connection
            conn.start(ctx.bereq.method == "HEAD", params.http_resp_size, params.http_resp_hdr_len,
                       params.http_max_hdr)
            try:
                await self._send_req(conn)
                self._ts("Bereq")
                self._req_sent()
                counters.backend_req += 1
                await conn.read_head(first_byte, self.between)
                self.acct_beresp_hdr = backends.head_bytes(conn)
                backends.live(backend).beresp_hdrbytes += self.acct_beresp_hdr
                return
            except FetchError as exc:
                self._close_conn(SC_RX_BODY if str(exc).startswith("req.body") else SC_TX_ERROR)
                raise
            except ConnError as exc:
                if not (exc.nothing and conn.reused) or self.no_retry is not None:
                    # what came of the head counts; the FetchError comes before the close
                    why = conn.garbage
                    self.acct_beresp_hdr = why.head_bytes if why is not None else len(conn.head_raw)
                    backends.live(backend).beresp_hdrbytes += self.acct_beresp_hdr
                    if why is not None:
                        if why.bogo is not None:
                            ctx.log.append(("BogoHeader", why.bogo))
                        ctx.log += (("HttpGarbage", text(why.garbage)), ("BerespStatus", "503"),
                                    ("BerespReason", "Service Unavailable"))
                    ctx.log.append(("FetchError", str(exc)))
                    self._close_conn(SC_RX_JUNK if why is not None else _HEAD_CLOSE.get(str(exc), SC_RX_BAD))
                    raise _LoggedFetchError(str(exc)) from None
                # varnishd's words for a recycled connection that answered nothing
                ctx.log.append(("FetchError", "HTC eof (-1)"))
                self._close_conn(SC_RESP_CLOSE)
                counters.backend_retry += 1
                fresh = True

    def _log_open(self, conn: BackendConn, backend: BackendSpec, new: bool) -> None:
        self._ts("Connected")
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        local = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
        self.conn_fd = sock.fileno() if sock is not None else -1
        laddr = f"{local[0]} {local[1]}" if local else "- -"
        self.ctx.log.append(("BackendOpen", f"{self.conn_fd} {backend.name} {backend.host} {backend.port} {laddr} "
                                            f"{'connect' if new else 'reuse'}"))

    async def _send_req(self, conn: BackendConn) -> None:
        """Write bereq as VCL left it, then the request body, streamed with back-pressure."""
        ctx = self.ctx
        bereq = ctx.bereq
        headers = bereq.headers
        body = self.req_body
        send = ctx.bereq_body is not None and body.present
        if ctx.bereq_body is None and body.present:
            headers.unset("Content-Length")      # `unset bereq.body` takes its length along, as in varnishd
        if send and not self.is_pass and bereq.method in ("GET", "HEAD"):
            send = False       # a cache fill sends a request body only when VCL made it e.g. a POST
        chunked = False
        size = body.length if body.cached is None else sum(map(len, body.cached))
        if send:
            if size is None:
                # a chunked client body not cached: forwarded chunked, as varnishd does
                chunked = True
                headers.add("Transfer-Encoding", "chunked")
            elif "Content-Length" not in headers and "Transfer-Encoding" not in headers:
                # a body must be framed on a kept-alive connection (the cached body's length)
                headers.add("Content-Length", str(size))
        lines = [f"{bereq.method} {bereq.url} {bereq.proto}\r\n"]
        lines += [f"{n}: {v}\r\n" for n, v in headers.items()]
        lines.append("\r\n")
        head = wire("".join(lines))
        backends.live(self.backend).bereq_hdrbytes += len(head)
        self.acct_bereq_hdr += len(head)
        if not send:
            conn.write(head)
            return
        if body.cached is None:
            self.no_retry = "req.body not cached"      # once streamed, the bytes are gone
        whole = body.cached is not None or (body.done and body.error is None)
        if whole and not chunked and size <= SMALL_BODY:
            # all there and small: one write for head and body
            try:
                data = b"".join([part async for part in body.chunks()])
            except ReqBodyError as exc:
                raise FetchError(f"req.body read error: {exc}") from None
            conn.write(head + data)
            backends.live(self.backend).bereq_bodybytes += len(data)
            self.acct_bereq_body += len(data)
            self._req_body_start(body)
            self._req_body_ts(body)
            return
        conn.write(head)
        self._req_body_start(body)
        between = self.between
        try:
            async for data in body.chunks():
                if chunked:
                    conn.write(b"%x\r\n" % len(data))
                    conn.write(data)
                    conn.write(b"\r\n")
                else:
                    conn.write(data)
                backends.live(self.backend).bereq_bodybytes += len(data)
                self.acct_bereq_body += len(data)
                # the next chunk is pulled only once the backend took this one
                await conn.drain(between)
        except ReqBodyError as exc:
            if not chunked or not chunked_error(str(exc)):
                raise FetchError(f"req.body read error: {exc}") from None
            # a chunked body varnishd's VFP refused: it ends the chunked body it was sending, then
            # fails the fetch as a write error (no errno); the client's transaction names the error
            conn.write(b"0\r\n\r\n")
            backends.live(self.backend).bereq_bodybytes += 5
            self.acct_bereq_body += 5
            self._client_body_failed(str(exc), body)
            self.ctx.log += (("FetchError", "req.body read error: 0 (Success)"),
                             ("FetchError", "backend write error: 0 (Success) (Error transaction"))   # (sic)
            raise _LoggedFetchError("backend write error") from None
        if chunked:
            conn.write(b"0\r\n\r\n")
        self._req_body_ts(body)

    def _client_body_failed(self, error: str, body: ReqBody) -> None:
        """The client's body broke off while this fetch read it: logged in the client's transaction,
        whose connection then closes (the rest of its bytes cannot be told from a next request)."""
        creq = self.creq
        if creq is None or self.mode == "bg":
            return
        creq.log.append(("FetchError", error))
        self._req_body_ts(body)
        request = creq.task() if creq.task is not None else None
        if request is not None:
            request.keep_alive = False

    def _req_body_start(self, body: ReqBody) -> None:
        """The fetch starts reading the client's body: varnishd reads it through a Transient object
        (vrb_pull) and logs that first, before a 100 Continue it may send."""
        creq = self.creq
        if creq is not None and body.cached is None and self.mode != "bg":
            creq.log.append(("Storage", "malloc Transient"))

    def _req_body_ts(self, body: ReqBody) -> None:
        """The client's body was read to its end for this fetch: the request's ReqBody timestamp."""
        creq = self.creq
        if creq is not None and body.cached is None and self.mode != "bg":
            now = time.time()
            since = now - (creq.req_time or now)
            creq.log.append(("Timestamp", "ReqBody: %.6f %.6f %.6f" % (now, since, since)))

    async def stp_response(self) -> str | None:
        ctx = self.ctx
        conn = self.conn
        status = conn.status
        # interned: every cached object keeps them, and they are nearly always "HTTP/1.1" and "OK"
        reason = sys.intern(conn.reason.decode("utf-8", "surrogateescape").strip())
        beresp = HttpMessage(proto=sys.intern("HTTP/" + conn.version), status=status,
                             reason=reason or reason_for(status),
                             headers=Headers.adopt(conn.fields))
        beresp.headers.ws = self.ws
        now = time.time()
        if not self._body_status(ctx.bereq.method, conn):
            self._close_conn(SC_RX_BODY)
            ctx.log.append(("Error", "Body cannot be fetched"))
            return "error"
        collect_header(beresp.headers, "Cache-Control")
        collect_header(beresp.headers, "Vary")
        if "Date" not in beresp.headers:
            beresp.headers.add("Date", DATES.now())
        ctx.beresp = beresp
        self._ts("Beresp")
        ctx.beresp_time = self.t_prev
        ctx.log += (("BerespProtocol", beresp.proto), ("BerespStatus", str(status)),
                    ("BerespReason", beresp.reason))
        beresp.headers.log_to(ctx.log, "BerespHeader", "BerespUnset")
        ctx.was_304 = False
        stale = self.stale
        # vbf_304_logic: a 304 is taken when there is an object to revalidate (OF_IMSCAND: a 200
        # with a validator, not a hit-for-miss/pass), whatever VCL made of bereq's conditionals
        ims_cand = (stale is not None and not (stale.hfm or stale.hfp) and stale.http is not None
                    and stale.http.status == 200
                    and ("ETag" in stale.http.headers or "Last-Modified" in stale.http.headers))
        if beresp.status == 304 and not ims_cand and not self.is_pass:
            ctx.log.append(("Error", "304 response but not conditional fetch"))
            self._close_conn(SC_RX_BAD)
            return "error"
        if beresp.status == 304 and stale is not None and stale.complete and not self.is_pass:
            ctx.was_304 = True
            merged = stale.http.copy()
            fresh = beresp.headers
            done: set[str] = set()
            for name, _ in fresh.items():
                lname = name.lower()
                if lname in _NO_MERGE or lname in done:
                    continue
                done.add(lname)
                # every field of that name comes from the 304, in place of the stored ones
                values = fresh.get_all(lname)
                merged.headers.set(name, values[0])
                for value in values[1:]:
                    merged.headers.add(name, value)
            merged.proto = beresp.proto
            ctx.beresp = beresp = merged
        self._body_read = self.body_kind == "none"
        # varnishd logs no RFC TTL for a pass
        self.t_origin = compute_ttl(ctx, self.server.params, now, not self.is_pass)
        if self.is_pass:
            # A private object's TTL is -1 (reads as 0 less its age), no grace, no keep.
            ctx.beresp_ttl, ctx.beresp_grace, ctx.beresp_keep = -ctx.beresp_age, 0.0, 0.0
        ctx.beresp_uncacheable = self.is_pass or bad_vary(beresp.headers.get("Vary"))
        ctx.do_stream = True
        ctx.do_gzip = ctx.do_gunzip = ctx.do_esi = False
        ctx.beresp_filters = None
        ctx.beresp_body = (self.body_kind, conn.clen)     # what the default filter list depends on
        action = await acall_sub(self.vcl, ctx, "vcl_backend_response")
        name = action.name
        if name in ("deliver", "pass"):
            if name == "pass":
                # return (pass(DURATION)): a hit-for-pass object for that long
                ctx.beresp_uncacheable = True
                self.hfp_ttl = float(action.args[0]) if action.args else self.server.params.default_ttl
                ctx.log.append(("TTL", "HFP %d 0 0 %d uncacheable" % (self.hfp_ttl, time.time())))
            else:
                self.hfp_ttl = None
            return "fetchbody"
        if name != "retry":
            self._close_conn(SC_RESP_CLOSE)     # varnishd: abandon, fail and error do not recycle
        self._release_response()
        if name == "retry":
            return "retry"
        if name == "error":
            return self._vcl_error(action)
        return "fail"            # abandon, fail

    def _conn_delta(self, backend: BackendSpec, delta: int) -> None:
        """Connections in use per backend, for .max_connections and VBE.<vcl>.<backend>.conn."""
        state = backends.live(backend)
        state.conns += delta
        if delta > 0:
            state.req += 1

    def _body_status(self, method: str, conn: BackendConn) -> bool:
        """How the body comes (varnishd's body_status, counted as fetch_*); False: it cannot be had."""
        counters = self.server.counters
        status = conn.status
        kind = "none"
        if method == "HEAD":
            counters.fetch_head += 1
        elif status <= 199:
            counters.fetch_1xx += 1        # never expected: varnishd fails the fetch
            kind = "error"
        elif status == 204:
            counters.fetch_204 += 1
            if (conn.clen is not None and conn.clen != 0) or conn.has_te:
                kind = "error"
        elif status == 304:
            counters.fetch_304 += 1
        elif conn.chunked:
            counters.fetch_chunked += 1
            kind = "chunked"
        elif conn.clen is not None and conn.clen > 0:
            counters.fetch_length += 1
            kind = "length"
        elif conn.has_te or (conn.clen is not None and conn.clen < 0):
            counters.fetch_bad += 1
            kind = "error"
        elif conn.clen == 0:
            counters.fetch_none += 1
        else:
            counters.fetch_eof += 1
            kind = "eof"
        self.body_kind = kind
        return kind != "error"

    def _close_conn(self, reason: str) -> None:
        """The connection cannot carry another request: close it (`reason`: an SC_* text above)."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()
            self._conn_delta(self.backend, -1)
            self.ctx.log.append(("BackendClose", f"{getattr(self, 'conn_fd', -1)} {self.backend.name} close {reason}"))

    def _release_response(self) -> None:
        """Done with the backend: a connection whose response was read whole goes back to the pool,
        unless Connection: close was on the request as sent or on beresp as VCL left it."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            beresp = self.ctx.beresp
            # the request said close; or the response did (Connection: close as VCL left it, an
            # HTTP/1.0 one without keep-alive, a body up to the end of the connection; a program's
            # response has no connection of its own to keep)
            reason = SC_REQ_CLOSE if self.bereq_close else SC_RESP_CLOSE if (
                (beresp is not None and "close" in (beresp.headers.get("Connection") or "").lower())
                or not getattr(conn, "keep_alive", True)) else SC_RX_BODY if not self._body_read else None
            conn.release(reason is None)
            self._conn_delta(self.backend, -1)
            self.ctx.log.append(("BackendClose", f"{getattr(self, 'conn_fd', -1)} {self.backend.name} "
                                                 f"{'close ' + reason if reason else 'recycle'}"))

    async def stp_retry(self) -> str | None:
        ctx = self.ctx
        ctx.retries += 1               # counted even when over the limit, as bereq.retries shows
        if ctx.retries > self.server.params.max_retries:
            ctx.log.append(("VCL_Error", "Too many retries, delivering 503"))
            return "error"
        return self._again()

    def _again(self) -> str:
        """varnishd's vbf_stp_retry: a request body streamed once cannot be sent again, so the
        fetch fails rather than send a request without it."""
        if self.no_retry is not None:
            self.ctx.log.append(("Error", f"Retry not possible, {self.no_retry}"))
            return "fail"
        ctx = self.ctx
        old = ctx.bereq_xid
        ctx.bereq_xid = self.server.next_xid()
        # as varnishd: this transaction ends, linking to the retry's
        self._ts("Retry")
        ctx.log += (("Link", f"bereq {ctx.bereq_xid} retry"), ("End", ""))
        self.server.vsl.write(old, "b", ctx.log)
        ctx.log = []
        self.t_prev = self.t_start = time.time()
        self._vsl_begin(old, "retry")
        return "startfetch"

    # -- the object -------------------------------------------------------------------------------

    def _setup_object(self, http: HttpMessage, now_origin: float, age: float = 0.0) -> None:
        """Copy beresp.* to the object and make it visible (unbusy) if it belongs in the cache.
        `age`: the response's Age when its headers came, what beresp.ttl is relative to."""
        ctx = self.ctx
        oc = self.oc
        http = http.copy()
        _strip_hop_by_hop(http.headers)
        http.headers.unset("Age")          # delivery adds its own Age and X-Varnish
        http.headers.unset("X-Varnish")
        self.expected_len = None
        cl = http.headers.get("Content-Length")
        if cl is not None and cl.strip().isdigit() and not ctx.was_304:
            self.expected_len = int(cl.strip())
            oc.expected = self.expected_len
        oc.http = http
        oc.t_origin = now_origin
        # stored from the origin time as varnishd's VRT_l_beresp_ttl does (plus the Age at the
        # headers' arrival, not the clock now): a TTL of 0 stays 0, and such an object is never a hit
        oc.ttl = (ctx.beresp_ttl + age) if ctx.beresp_ttl is not None else 0.0
        oc.grace = max(float(ctx.beresp_grace or 0.0), 0.0)
        oc.keep = max(float(ctx.beresp_keep or 0.0), 0.0)
        oc.xid = ctx.bereq_xid
        oc.hfm = oc.hfp = False
        oc.uncacheable = bool(ctx.beresp_uncacheable) or self.hfp_ttl is not None
        # vbf_allocobj, for every object a fetch makes (an error's too): uncacheable (a pass,
        # beresp.uncacheable) first, else short-lived when all its lifetime is under shortlived
        if self.is_pass or ctx.beresp_uncacheable or self.hfp_ttl is not None:
            self.server.counters.beresp_uncacheable += 1
        elif oc.ttl + oc.grace + oc.keep < self.server.params.shortlived:
            self.server.counters.beresp_shortlived += 1
        if oc.private:
            oc.keep_body = False
            return
        if self.hfp_ttl is not None:
            oc.hfp = True
            oc.ttl, oc.grace, oc.keep = self.hfp_ttl + age, 0.0, 0.0
        elif ctx.beresp_uncacheable:
            oc.hfm = True            # keeps its grace: an expired hit-for-miss still means "miss"
        if oc.hfm or oc.hfp:
            oc.keep_body = False

    def _publish(self) -> None:
        """Make the object visible (unbusy) if it belongs in the cache, else keep it private."""
        ctx = self.ctx
        oc = self.oc
        storage = self.server.storage
        if oc.private:
            return
        age = time.time() - oc.t_origin
        if oc.ttl + oc.grace + oc.keep - age <= 0 and not (oc.hfm or oc.hfp):
            storage.abandon(oc)          # nothing to keep: stays private to this fetch
            oc.private = True
            oc.keep_body = False
            return
        if (oc.hfm or oc.hfp) and oc.ttl - age <= 0:
            storage.abandon(oc)
            oc.private = True
            oc.keep_body = False
            return
        store = ctx.beresp_storage if isinstance(ctx.beresp_storage, str) else None
        if not storage.unbusy(oc, ctx.bereq, oc.http.headers.get("Vary"), store):
            oc.private = True
            oc.drop_body()
            # an object bigger than the store is still delivered while it streams, never after
            self.no_space = oc.size <= storage.max_bytes or not ctx.do_stream
        elif self.stale is not None and self.stale is not oc:
            storage.remove(self.stale)     # the fresh object replaces the one it revalidated

    def _open_vfps(self) -> Chain | None:
        """Stack and open the fetch filters on beresp (they rewrite its headers); None: none."""
        ctx = self.ctx
        names = ctx.beresp_filters
        if names is None:
            names = beresp_filters_default(ctx)
        ctx.log.append(("Filters", names))        # before the filters log their header changes
        if not names or names.isspace():
            return None
        server = self.server
        chain = open_chain(stack("vfp", names, self.vcl),
                           FetchCtx(ctx.beresp, self.oc, server.params, server.counters, ctx.bereq, ctx.log))
        return chain if chain.filters else None

    async def stp_fetchbody(self) -> str | None:
        ctx = self.ctx
        oc = self.oc
        self.no_space = False
        # the stale object goes away once the new one is in: take its body first
        body304 = self.stale.body() if ctx.was_304 else b""
        self._ts("Process")
        if ctx.was_304:
            stale = self.stale
            # the stored body keeps its encoding (vbf_stp_condfetch copies the flags and bits)
            oc.gzipped, oc.gzip_bits, oc.esi_data = stale.gzipped, stale.gzip_bits, stale.esi_data
            oc.gzip_changed = stale.gzip_changed
            if stale.gzip_changed:
                weaken_etag(ctx.beresp)
        chain = None
        if not ctx.was_304 and self.rolled_back:
            # std.rollback(bereq) in vcl_backend_response let the connection go (vbf_stp_fetch)
            ctx.log.append(("FetchError", "No backend connection (rollback?)"))
            self._failure_counted = False
            return "error"
        if not ctx.was_304:
            if self.conn is not None and self.conn.clen == 0:     # an empty body has no encoding
                ctx.beresp.headers.unset("Content-Encoding")
            try:
                chain = self._open_vfps()
            except FilterError as exc:
                ctx.log.append(("FetchError", str(exc)))
                self._close_conn(SC_RX_BODY)
                self._failure_counted = False
                return "error"
            if chain is not None:
                oc.gzip_changed = any(f.name in ("gzip", "gunzip") for f in chain.filters)
        try:
            return await self._fetchbody(chain, body304)
        finally:
            if chain is not None:
                chain.close()

    async def _fetchbody(self, chain: Chain | None, body304: bytes) -> str | None:
        ctx = self.ctx
        oc = self.oc
        raw_expected = self.conn.clen if self.conn is not None and self.body_kind == "length" else None
        self._setup_object(ctx.beresp, self.t_origin, ctx.beresp_age)
        if oc.private and not ctx.was_304 and not self._head_fits_transient():
            # vbf_beresp2obj: no Transient room even for the object's headers; the filters
            # close (their Gzip records) before the connection does
            ctx.log.append(("FetchError", "Could not get storage"))
            if chain is not None:
                chain.close()
            self._vfp_failed = True
            return self._body_failed(False)
        if ctx.was_304:
            oc.append(body304)
            self._release_response()
            self._publish()
            if self.no_space:
                return self._out_of_storage()
            oc.finish(True)
            self._signal()
            return None
        streaming = bool(ctx.do_stream)
        if chain is not None and any(f.name in ("esi", "esi_gzip") for f in chain.filters):
            # an ESI page is delivered once it is whole and parsed (varnishd does not stream it either),
            # so its body is kept even when nothing will cache it
            streaming = False
            oc.keep_body = True
        self.streamed = streaming
        store = oc.store
        if not store:
            hint = ctx.beresp_storage if isinstance(ctx.beresp_storage, str) else None
            store = self.server.storage.store_for(oc, hint)
        # (no body: varnishd's vbf_stp_fetch turns streaming off)
        ctx.log += (("Storage", f"malloc {store}"),
                    ("Fetch_Body", f"{_BODY_STATUS.get(self.body_kind, '3 length')} "
                                   f"{'stream' if streaming and self.body_kind != 'none' else '-'}"))
        conn = self.conn
        between = self.between
        bodyless = self.body_kind == "none"     # HEAD, 204, 304, Content-Length: 0
        received = 0
        if streaming:
            # clients (and requests waiting on the busy object) may read while the body arrives
            self._publish()
            if self.no_space:
                return self._out_of_storage()
            stored = True
            whole = False
            if chain is None and not bodyless and conn is not None and conn.body and conn.held < _EARLY_BODY:
                # bytes that came with the head: stored first, so each client sends its head
                # and them in one write (they are there already: nothing waits on the backend)
                data = await conn.read_body(between)
                received += len(data)
                backends.live(self.backend).beresp_bodybytes += len(data)
                self.acct_beresp_body += len(data)
                stored = await self._store(data)
                # the whole body came with the head: the object is finished before the clients
                # look (they then write it at once, with no streaming state and no wait for more)
                whole = stored and conn.done and not conn.body
            if not whole:
                self._signal()
                # let the waiting clients send their heads first, as varnishd's do at BOS_STREAM
                await asyncio.sleep(0)
            if not stored:
                return self._stored_failed()
        try:
            while not bodyless:
                data = await conn.read_body(between)
                if not data:
                    break
                received += len(data)
                backends.live(self.backend).beresp_bodybytes += len(data)
                self.acct_beresp_body += len(data)
                frag = self.server.storage.fetchfrag
                for part in ((data,) if not frag else
                             (data[i:i + frag] for i in range(0, len(data), frag))):
                    for piece in (chain.push(part) if chain is not None else (part,)):
                        if not await self._store(piece):
                            return self._stored_failed()
            if chain is not None and not bodyless:
                for piece in chain.end():
                    if not await self._store(piece):
                        return self._stored_failed()
                chain.close()       # the filters' Gzip records come before BackendClose, as varnishd's
        except ConnError as exc:
            ctx.log += tuple(("FetchError", t) for t in _body_error_texts(self.body_kind, str(exc), conn.in_chunk))
            return self._body_failed(streaming)
        except FilterError as exc:
            # a body that claims gzip but is not: varnishd's "Invalid Gzip data", a failed fetch
            ctx.log.append(("FetchError", str(exc)))
            ctx.log.append(("FetchError", "Fetch pipeline failed to process"))
            return self._body_failed(streaming)
        self._body_read = True
        if raw_expected is not None and received < raw_expected and not bodyless:
            ctx.log.append(("FetchError", "Premature end of body"))
            return self._body_failed(streaming)
        self._release_response()
        self._ts("BerespBody")
        ctx.log.append(("Length", str(oc.length)))
        if not streaming:
            self._publish()
            if self.no_space:
                # nothing was delivered yet: vcl_backend_error, as varnishd's "Could not get storage"
                ctx.log.append(("FetchError", "Could not get storage"))
                return self._body_failed(False)
        oc.finish(True)
        if oc.private and not oc.store:
            self.server.storage.account_private(oc)
        self.server.storage.trim(oc)
        if not oc.keep_body:
            self.server.storage.slim(oc)    # a hit-for-miss/pass keeps no body: free its storage
        return None

    def _head_fits_transient(self) -> bool:
        """A private object is made in Transient: is there room for it before its body? (Asked
        without charging: its allocations are counted once, by account_private when it is done;
        a refusal is Transient's failed allocation.)"""
        oc = self.oc
        size = oc.size
        head = oc.compute_size(with_body=False)
        oc.size = size
        st = self.server.storage.stevedores[TRANSIENT]
        if st.max_bytes is None or head <= st.space:
            return True
        st.fail()
        return False

    async def _store(self, data: bytes) -> bool:
        """Append one piece to the object; False when the fetch must stop (see _stored_failed)."""
        oc = self.oc
        storage = self.server.storage
        oc.append(data)
        if not storage.grow(oc):          # (it follows the body's segments even while not stored yet)
            storage.remove(oc)
            oc.private = True
            oc.drop_body()
            if oc.size <= storage.max_bytes or not self.ctx.do_stream:
                # (not streamed: nothing reached a client yet, so the fetch fails, as varnishd's)
                self._stop = "storage"
                return False
            # bigger than the whole store while streaming: deliver it, keep nothing
        if not oc.keep_body:
            await oc.wait_space()
            if oc.private and not oc.readers:
                # a pass whose client went away: stop reading what nobody will get
                self._stop = "gone"
                return False
        return True

    def _stored_failed(self) -> str | None:
        if self._stop == "storage":
            if not self.ctx.do_stream:
                self.ctx.log.append(("FetchError", "Could not get storage"))
                return self._body_failed(False)
            return self._out_of_storage()
        self.ctx.log.append(("FetchError", "client gone"))
        return self._body_failed(True)

    def _body_failed(self, streaming: bool) -> str | None:
        """The body broke off: a streamed object fails; one not yet delivered becomes an error."""
        self.server.counters.fetch_failed += 1
        self._close_conn(SC_RX_BODY)
        oc = self.oc
        if streaming:
            if oc.store:
                self.server.storage.remove(oc)
            oc.finish(False)
            return None
        oc.chunks, oc.base, oc.length, oc.buffered, oc.expected = [], 0, 0, 0, 0
        oc.alloc = oc.seg = 0
        oc.keep_body = not oc.private
        self._failure_counted = True
        return "error"

    def _out_of_storage(self) -> None:
        """No room even after evicting nuke_limit objects: the fetch fails, as in varnishd."""
        self.ctx.log.append(("FetchError", "Could not get storage"))
        self.server.counters.fetch_failed += 1
        self._close_conn(SC_RX_BODY)
        self.oc.finish(False)
        return None

    async def stp_error(self) -> str | None:
        """vcl_backend_error: a synthetic object, 503 "Backend fetch failed" unless VCL says otherwise."""
        ctx = self.ctx
        server = self.server
        self._ts("Error")
        status, reason = getattr(self, "_err_status", (503, ""))
        self._err_status = (503, "")
        status = int(status)
        reason = reason or ("Backend fetch failed" if status == 503 else reason_for(status % 1000))
        beresp = HttpMessage(proto="HTTP/1.1", status=status, reason=reason)
        beresp.headers.ws = self.ws
        ctx.log += (("BerespProtocol", beresp.proto), ("BerespStatus", str(status % 1000)),
                    ("BerespReason", reason))
        beresp.headers.log_to(ctx.log, "BerespHeader", "BerespUnset")
        beresp.headers.add("Date", DATES.now())
        beresp.headers.add("Server", "Varnish")
        ctx.beresp = beresp
        ctx.beresp_time = time.time()         # beresp.time: vcl_backend_error was entered
        ctx.synth_body = []
        ctx.beresp_ttl = 0.0
        ctx.beresp_grace = 0.0
        ctx.beresp_keep = 0.0
        ctx.beresp_uncacheable = False
        ctx.was_304 = False
        if not self._failure_counted:
            server.counters.fetch_failed += 1
        self._failure_counted = False
        action = await acall_sub(self.vcl, ctx, "vcl_backend_error")
        if action.name == "retry":
            ctx.retries += 1
            if ctx.retries > server.params.max_retries:
                ctx.log.append(("VCL_Error", "Too many retries, failing"))
                return "fail"
            return self._again()
        if action.name != "deliver":
            return "fail"
        body = "".join(ctx.synth_body or []).encode("utf-8", "surrogateescape")
        self.hfp_ttl = None
        oc = self.oc
        if ctx.beresp_ttl <= 0 or ctx.beresp_uncacheable:
            if not oc.private:
                # varnishd inserts a 0-TTL error object and its expiry thread expires it at once
                server.counters.n_expired += ctx.beresp_ttl <= 0 and not ctx.beresp_uncacheable
                server.storage.abandon(oc)
                oc.private = True
        beresp.headers.unset("Content-Length")
        oc.gzipped, oc.gzip_bits, oc.gzip_changed, oc.esi_data = False, None, False, None
        self._setup_object(beresp, time.time())
        oc.append(body)
        if oc.private:
            # nothing keeps it, yet varnishd allocates it in Transient all the same (and frees it
            # once delivered); with no room there the fetch fails
            held = server.storage.hold_transient(oc.compute_size(with_body=False), len(body))
            if held is None:
                if not self._vfp_failed:      # (VFP_Error logs a fetch attempt's first error only)
                    ctx.log.append(("FetchError", "Could not get storage"))
                return "fail"
            server.storage.release_held(held)
            store = TRANSIENT
        else:
            hint = ctx.beresp_storage if isinstance(ctx.beresp_storage, str) else None
            store = server.storage.store_for(oc, hint)
        ctx.log.append(("Storage", f"malloc {store}"))
        self._publish()
        oc.finish(True)
        ctx.log.append(("Length", str(len(body))))
        return None

    async def stp_fail(self) -> None:
        self._release_response()
        oc = self.oc
        if oc.busy:
            self.server.storage.abandon(oc)
        elif oc.store:
            self.server.storage.remove(oc)
        oc.failed = True
        oc.finish(False)
        return None

    def close_reader(self) -> None:
        if self.reader is not None:
            self.oc.close_reader(self.reader)
            self.reader = None
