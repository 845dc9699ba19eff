"""The client request state machine, shaped like Varnish's cache_req_fsm.c.

    recv(+hash) -> lookup -> hit | miss | pass | (waitinglist) ; recv -> pipe | purge | synth
    hit/miss/pass -> fetch -> deliver -> transmit ; any -> restart -> recv ; any -> synth -> transmit

One method per state, each returning the name of the next state (None when the request is done);
STATES lists them all. States that must wait (a fetch, a busy object, a pipe, streaming a body still
arriving, a subroutine calling an async vmod function) have an async twin; `run_sync` runs states until one of those,
`run_async` finishes the request from there. A cache hit never leaves run_sync.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from typing import TYPE_CHECKING

from cacheserver import storage as st
from cacheserver.deliver import Delivery, resp_filters_default
from cacheserver.esi import EsiRequest
from cacheserver.fetch import BusyObj
from cacheserver.filters import accepts_gzip, weaken_etag
from cacheserver.h1refuse import HDR_FIRST
from cacheserver.http1 import DATES, reason_for
from cacheserver.ranges import not_modified, object_last_modified
from cacheserver.reqbody import ReqBody
from cacheserver.rfc2616 import collect_header
from cacheserver.stevedores import TRANSIENT
from cacheserver.storage import SYNTH_OBJECT, ObjCore
from cacheserver.vclcall import CALL_NAMES, acall_sub, call_sub
from cacheserver.vsl import float1, floats, floats_bytes
from vcl.compiler import BUILTIN_RETURNS
from vcl.rtlib import end_task, restart_task, s_ip
from vcl.runtime import Action, Context, HttpMessage, VCLFailure, Workspace

if TYPE_CHECKING:
    from cacheserver.protocol import ClientProtocol

log = logging.getLogger("cacheserver.fsm")

# Every client state, listed once: the VCL subroutines it calls, or WAITS for a state that always
# waits on I/O (it has only its coroutine, `ast_NAME`). A state with subroutines runs as `st_NAME`,
# or as its coroutine twin `ast_NAME` when the VCL makes one of them await; one with none only as
# `st_NAME`. The step tables at the end of this file find each state's methods (and fail at import
# if one is missing).
WAITS = None
STATES: dict[str, tuple[str, ...] | None] = {
    "recv": ("vcl_recv", "vcl_hash"), "lookup": (), "waitinglist": WAITS, "hit": ("vcl_hit",),
    "bgwait": WAITS, "miss": ("vcl_miss",), "pass": ("vcl_pass",), "fetch": WAITS,
    "purge": ("vcl_purge",), "pipe": WAITS, "restart": (), "deliver": ("vcl_deliver",),
    "synth": ("vcl_synth",), "synthbody": WAITS, "stream": WAITS, "send": WAITS, "esibody": WAITS}
_ALWAYS_ASYNC = frozenset(state for state, subs in STATES.items() if subs is WAITS)
_VIA = "1.1 varnish (Varnish/7.1)"
_MINIMAL_500 = b"HTTP/1.1 500 Internal Server Error\r\n\r\n"     # after vcl_synth fails (cnt_synth)
# The records of a subroutine the server runs in place of its built-in code (CompiledVCL.builtin_only)
_BUILTIN_CALL = {sub: ("VCL_call", f"{CALL_NAMES[sub]}\0VCL_return {action.name}")
                 for sub, action in [*BUILTIN_RETURNS.items(), ("vcl_hash", Action("lookup"))]}


def _wait_states(vcl) -> frozenset[str]:
    """The states that must run asynchronously with this VCL, worked out once per VCL."""
    states = vcl.__dict__.get("wait_states")
    if states is None:
        states = vcl.wait_states = frozenset(_ALWAYS_ASYNC | {
            state for state, subs in STATES.items() if subs and any(sub in vcl.async_subs for sub in subs)})
    return states


def _session_fields(session, server) -> dict:
    """The Context fields every request of a session starts with, made once per session."""
    client_ip, local_ip = session.client_ip, session.local_ip
    fields = dict(
        client_ip=client_ip, remote_ip=client_ip, server_ip=local_ip, local_ip=local_ip, session=session,
        server=server, server_hostname=server.hostname, server_identity=server.identity,
        client_identity=client_ip.addr, hash_always_miss=False, hash_ignore_busy=False, can_gzip=False,
        is_hitmiss=False, is_hitpass=False, req_ttl=-1.0, req_grace=-1.0,
        sess_xid=getattr(session, "xid", 0), local_endpoint=getattr(session, "local_endpoint", None),
        local_socket=getattr(session, "listen_name", None),
        # resp.filters until VCL sets it: a plain function of ctx (a bound method would make a
        # reference cycle per request, left to the cyclic GC)
        filters_default=resp_filters_default)
    if getattr(session, "transport", None) is not None:      # connected: its addresses are known
        try:
            session.ctx_fields = fields
        except AttributeError:
            pass
    return fields


def _client_close_reason(req: HttpMessage) -> str:
    """Why the client's own request ends its connection (varnishd's http_DoConnection)."""
    return "sc_req_close" if "close" in (req.headers.get("Connection") or "").lower() else "sc_req_http10"


def _may_esi(vcl) -> bool:
    """Can this VCL make ESI objects? Only then is each request's head kept as received (a copy
    costs microseconds on every hit). Worked out once per VCL."""
    may = vcl.__dict__.get("may_esi")
    if may is None:
        src = getattr(vcl, "python_source", "") or ""
        may = vcl.may_esi = "do_esi" in src or "filters" in src
    return may


def _may_switch(vcl) -> bool:
    """Can this VCL's vcl_recv return (vcl(...)), or call std.rollback()? Only then is the request
    kept as received (varnishd's http0) for the rollback. Worked out once per VCL."""
    may = vcl.__dict__.get("may_switch")
    if may is None:
        src = getattr(vcl, "python_source", "") or ""
        may = vcl.may_switch = "Action('vcl'" in src or "std_rollback(" in src
    return may


class ClientRequest(Delivery, EsiRequest):
    """One client request on its way from vcl_recv to the wire (delivery: deliver.py)."""

    # What every request starts with, as class attributes: a request sets only what differs.
    late100 = False                 # std.late_100_continue(true): answer Expect when read
    body_failed = False             # std.cache_req_body() could not have it: close unanswered
    body_storage = None             # what a cached body holds in Transient storage
    rushed = False                  # woken from the waiting list: looks up again without the hash
    oc: ObjCore | None = None       # the object being delivered
    busy: ObjCore | None = None     # a busy object this request must have fetched
    stale: ObjCore | None = None    # a stale object to revalidate (keep)
    bo: BusyObj | None = None
    bg: BusyObj | None = None       # a background fetch that may still read our body
    is_hit = False
    vcl0 = None                     # set by return (vcl(...)): the VCL the request started in
    received = None                 # the request as received, while its VCL may switch to another
    from_pass = False
    digest = b""
    synth_status = 0
    synth_reason = ""
    synth_data = b""                # vcl_synth's body, while the request body is read first
    is_grace = False
    chunked = False                 # the body being streamed goes out chunked
    vdp_chain = None                # delivery filters for the "stream" state
    send_deadline = 0.0             # send_timeout for the body being streamed
    _template_wanted = False        # this plain delivery's head should become a hit template
    vsl_tail = None                 # a template hit's last records: (payload template, its first values)
    send_data: memoryview | None = None   # a big body the "send" state writes
    acct_req = 0                    # request head bytes, for ReqAcct
    acct_hdr = acct_body = 0
    acct_continue = 0               # a "100 Continue" sent: counted with the response head bytes

    def __init__(self, session: ClientProtocol, req: HttpMessage, body: ReqBody, keep_alive: bool,
                 raw_index: int, expect: str | None = None, defer_xid: bool = False,
                 moved: list | None = None) -> None:
        self.session = session
        server = self.server = session.server
        self.body = body                     # read by the fetch (or std.cache_req_body) as it arrives
        self.keep_alive = keep_alive
        self.close_reason = None if keep_alive else _client_close_reason(req)
        self.raw_index = raw_index     # which message this was in the session's raw byte log
        self.state: str | None = "recv"
        vcl = self.vcl = server.active_vcl
        self.method0 = req.method            # HEAD-ness is judged on the request as received
        fields = getattr(session, "ctx_fields", None)
        if fields is None:
            fields = _session_fields(session, server)
        ctx = self.ctx = Context.starting_with(fields)
        ctx.method = "recv"
        ctx.req = ctx.req_top = req
        ctx.task = weakref.ref(self)        # no cycle: a finished request goes at once
        ws = self.ws = Workspace("req", server.params.http_max_hdr - HDR_FIRST, server.counters)
        req.headers.ws = ws
        ctx.vcl = vcl
        ctx.hash_parts = []
        ctx.req_time = time.time()
        ctx.backend_hint = vcl.default_backend
        ctx.sess_timeout_idle = server.params.timeout_idle
        self.t_prev = self.t_start = self.ctx.req_time
        self._vsl_begin("rxreq", self.ctx.sess_xid, expect, moved)
        if not defer_xid:
            self.take_xid()

    def take_xid(self) -> None:
        """The request's vxid, taken when it starts: a pipelined request's comes after the fetches
        of the requests before it, as varnishd reads one request at a time."""
        self.ctx.xid = self.server.next_xid()
        if hasattr(self.session, "vsl_link"):
            self.session.vsl_link(self.ctx.xid)

    # -- the shared log ---------------------------------------------------------------------------

    def _vsl_begin(self, reason: str, parent: int, expect: str | None = None,
                   moved: list | None = None) -> None:
        ctx = self.ctx
        req = ctx.req
        t = self.t_start
        ip = ctx.client_ip
        if reason == "restart":
            ctx.log.append(("Begin", f"req {parent} {reason}"))
            self._ts("Start")            # counted from the first request's start, as varnishd
            ctx.log.append(("ReqStart", "%s %d %s\0ReqMethod %s\0ReqURL %s\0ReqProtocol %s"
                            % (ip.addr, ip.port, ctx.local_socket or "a0", req.method, req.url, req.proto)))
        elif expect is None and moved is None:
            # one pre-joined run of records (cacheserver/vsl.py), one format: this is every request
            ts = float1(t)
            ctx.log.append(("Begin", "req %d %s\0Timestamp Start: %s 0.000000 0.000000\0"
                                     "Timestamp Req: %s 0.000000 0.000000\0%sReqMethod %s\0ReqURL %s\0ReqProtocol %s"
                            % (parent, reason, ts, ts, self._begin_middle(), req.method, req.url, req.proto)))
        else:
            ts = float1(t)
            ctx.log.append(("Begin", "req %d %s\0Timestamp Start: %s 0.000000 0.000000\0"
                                     "Timestamp Req: %s 0.000000 0.000000" % (parent, reason, ts, ts)))
            ctx.log += moved or ()       # the Host an absolute URL named, as the head was read
            ctx.log.append(("VCL_use", self.vcl.__dict__.get("name") or "boot"))
            if expect is not None:
                # cnt_transport unsets a 100-continue Expect before the request is logged
                ctx.log.append(("ReqUnset", "Expect: " + expect))
            ctx.log.append(("ReqStart", "%s %d %s\0ReqMethod %s\0ReqURL %s\0ReqProtocol %s"
                            % (ip.addr, ip.port, ctx.local_socket or "a0", req.method, req.url, req.proto)))
        req.headers.log_to(ctx.log, "ReqHeader", "ReqUnset")

    def _begin_middle(self) -> str:
        """The VCL_use and ReqStart records, the same for every request of a session in one VCL:
        made once per session and VCL."""
        session = self.session
        vcl = self.vcl
        made = getattr(session, "begin_middle", None)
        if made is None or made[0] is not vcl:
            ctx = self.ctx
            ip = ctx.client_ip
            made = (vcl, "VCL_use %s\0ReqStart %s %d %s\0" % (vcl.__dict__.get("name") or "boot", ip.addr, ip.port,
                                                               ctx.local_socket or "a0"))
            if getattr(session, "transport", None) is not None:    # connected: as _session_fields
                try:
                    session.begin_middle = made
                except AttributeError:
                    pass
        return made[1]

    def _vsl_sync(self) -> None:
        """debug +syncvsl: what the request logged so far goes out before it waits (varnishd writes
        each record at once then); the rest follows under the same vxid."""
        ctx = self.ctx
        self.server.vsl.write(ctx.xid, "c", ctx.log)
        del ctx.log[:]                 # the same list: headers log their changes into it

    def _ts(self, event: str) -> None:
        now = time.time()
        self.ctx.log.append(("Timestamp", event + ": " + floats(now, now - self.t_start, now - self.t_prev)))
        self.t_prev = now

    vsl_timestamp = _ts     # std.timestamp (ctx.task): counted from the request's own last Timestamp

    def vcl_rollback(self, message: HttpMessage) -> None:
        """std.rollback(req): the request as received again (Req_Rollback: HTTP_Clone from http0,
        before X-Forwarded-For), unlogged; a fresh PRIV_TASK; the workspace rolled back."""
        ctx = self.ctx
        if ctx.method == "vcl_pipe":
            raise VCLFailure("Cannot rollback in vcl_pipe {}")       # (VRT_Rollback)
        # (self.received is kept whenever the VCL calls std.rollback(): _may_switch)
        if message is not ctx.req:
            raise VCLFailure("std.rollback() restores req or bereq only")     # (varnishd panics)
        restart_task(ctx)
        if self.ws.overflowed:
            self.server.counters.ws_client_overflow += 1
            self.ws.overflowed = False
        req = self.received.copy()
        req.headers.vsl = (ctx.log, "ReqHeader", "ReqUnset")
        req.headers.ws = self.ws
        ctx.req = req
        if self.parent is None:
            ctx.req_top = req

    def _vsl_end(self) -> None:
        """The request is done: its task's finalizers run, then its last records go, then the whole
        task into the shared log."""
        ctx = self.ctx
        if ctx.priv_task:
            end_task(ctx)
        if ctx.log and ctx.log[-1][0] == "PipeAcct":
            # a piped request ends with its PipeAcct, as varnishd's (no response, no ReqAcct)
            ctx.log.append(("End", ""))
            self.server.vsl.write(ctx.xid, "c", ctx.log)
            return
        now = time.time()
        req = self.acct_req
        hdr, body = self.acct_hdr + self.acct_continue, self.acct_body
        # request body bytes read: on a connection that closes, only what was read (varnishd leaves
        # the rest unread); one kept open reads it all
        rx = self.body.received if self.keep_alive else self.body.taken
        counters = self.server.counters
        counters.s_req_hdrbytes += req                 # varnishd sums ReqAcct's into them (not a pipe's)
        counters.s_req_bodybytes += rx
        if self.vsl_tail is not None:
            # a template hit: its last records from the template's payload (deliver.py)
            template, values = self.vsl_tail
            self.server.vsl.write(ctx.xid, "c", ctx.log, template % (
                *values, floats_bytes(now, now - self.t_start, now - self.t_prev), req, rx, req + rx, hdr, body, hdr + body))
            return
        if self.ws.overflowed:
            self.server.counters.ws_client_overflow += 1
        if self.body_failed and not hdr:
            # ended unanswered after vcl_recv (cnt_recv's req.body error): no Resp timestamp
            ctx.log.append(("ReqAcct", "%d %d %d %d %d %d\0End " % (req, rx, req + rx, hdr, body, hdr + body)))
        else:
            ctx.log.append(("Timestamp", "Resp: %s\0ReqAcct %d %d %d %d %d %d\0End "
                            % (floats(now, now - self.t_start, now - self.t_prev), req, rx, req + rx, hdr, body,
                               hdr + body)))
        self.server.vsl.write(ctx.xid, "c", ctx.log)

    # -- drivers ----------------------------------------------------------------------------------

    def _must_wait(self, state: str) -> bool:
        return state in _wait_states(self.vcl)

    def run_sync(self) -> bool:
        """Run states until done (True) or until one must wait (False: call run_async)."""
        state = self.state
        session = self.session
        vcl = self.vcl
        waits = vcl.__dict__.get("wait_states") or _wait_states(vcl)     # (made once per VCL)
        while state is not None:
            if self.vcl is not vcl:            # return (vcl(label)) switched it
                vcl = self.vcl
                waits = _wait_states(vcl)
            if state in waits:
                self.state = state
                return False
            state = _SYNC_STEPS[state](self)
            if session.stolen:
                state = None
        self.state = None
        self._vsl_end()
        return True

    async def run_async(self) -> None:
        state = self.state
        try:
            while state is not None:
                if self._must_wait(state):
                    if "syncvsl" in str(self.server.params.debug):
                        self._vsl_sync()
                    state = await _ASYNC_STEPS[state](self)
                else:
                    state = _SYNC_STEPS[state](self)
                if self.session.stolen:
                    state = None
        finally:
            self._release()
            self._vsl_end()
        self.state = None

    def _release(self) -> None:
        """Whatever happens to the request, a busy object it held must not block others forever."""
        if self.busy is not None:
            self.server.storage.abandon(self.busy)
            self.busy = None
        if self.bo is not None:
            self.bo.close_reader()

    # -- running VCL ------------------------------------------------------------------------------

    def call(self, sub: str) -> Action:
        ctx = self.ctx
        # (not while VCL_trace is on: the built-in code's blocks are traced too)
        action = None if self.vcl.traced else self.vcl.builtin_only.get(sub)
        if action is None:
            return call_sub(self.vcl, ctx, sub)
        # the built-in code alone, which does nothing but return (vcl_hash: hash): done here
        ctx.method = sub
        if sub == "vcl_hash":
            _builtin_hash(ctx)
        ctx.log.append(_BUILTIN_CALL[sub])
        return action

    async def acall(self, sub: str) -> Action:
        if sub not in self.vcl.async_subs:
            return self.call(sub)
        return await acall_sub(self.vcl, self.ctx, sub)

    def _to_synth(self, status: int, reason: str = "") -> str:
        self.synth_status = status
        self.synth_reason = reason
        return "synth"

    def _fail_state(self) -> str:
        # Varnish: a VCL failure is a 503 synth, and the connection is closed after it.
        self.keep_alive = False
        self.close_reason = "sc_vcl_failure"
        return self._to_synth(503, "VCL failed")

    def _common(self, action: Action) -> str:
        """The actions every client state handles alike: synth, restart, fail."""
        name = action.name
        if name == "synth":
            status, reason = action.args       # VCC gives synth() both (the reason "" when left out)
            return self._to_synth(int(status), reason or "")
        if name == "restart":
            return "restart"
        return self._fail_state()          # fail: VCC lets a state return nothing else here

    # -- recv / hash ------------------------------------------------------------------------------

    def _recv_setup(self) -> None:
        ctx = self.ctx
        req = ctx.req
        if ctx.restarts == 0 and self.received is None and _may_switch(self.vcl):
            self.received = req.copy()
        if ctx.restarts == 0 and self.parent is None:    # an ESI subrequest starts from its parent's
            headers = req.headers
            # (a scan for the names before the lists of values: most requests have neither)
            xff = headers.get_all("X-Forwarded-For") if headers.get_lower("x-forwarded-for") is not None else None
            if xff:
                headers.unset("X-Forwarded-For")
            ip = ctx.client_ip.addr
            headers.add("X-Forwarded-For", f"{', '.join(xff)}, {ip}" if xff else ip, printf=True)
            if headers.count("cache-control") > 1:
                collect_header(headers, "Cache-Control")
            if _may_esi(self.vcl):
                self.req0 = req.copy()          # what ESI subrequests start from (varnishd's http0)
        ctx.backend_hint = self.vcl.default_backend
        ctx.req_ttl = -1.0
        ctx.req_grace = -1.0
        ctx.hash_always_miss = False
        ctx.hash_ignore_busy = False
        ctx.hash_parts = []
        ctx.is_hitmiss = ctx.is_hitpass = False

    def _recv_steps(self):
        """cnt_recv, written once for both drivers: yields each subroutine to call and is sent back
        its action (a vcl(LABEL) switch runs vcl_recv again, in the new VCL)."""
        self._recv_setup()
        action = yield "vcl_recv"
        if action.name == "vcl" and self.ctx.restarts == 0:     # (after a restart: _after_recv refuses it)
            if not self._switch_vcl(action):
                return self._fail_state()
            self._recv_setup()
            action = yield "vcl_recv"
        if self.session.stolen:          # tinykvm.steal() took the connection: nothing more to do
            return None
        self._recv_continue(action)
        self._wash_accept_encoding(action)
        # (a req.body that failed to cache ends the request before vcl_hash, unless vcl_recv failed)
        hash_action = (yield "vcl_hash") if action.name != "fail" and not self.body_failed else action
        return self._after_recv(action, hash_action)

    def st_recv(self) -> str | None:
        steps = self._recv_steps()
        try:
            sub = next(steps)
            while True:
                sub = steps.send(self.call(sub))
        except StopIteration as done:
            return done.value

    async def ast_recv(self) -> str | None:
        steps = self._recv_steps()
        try:
            sub = next(steps)
            while True:
                sub = steps.send(await self.acall(sub))
        except StopIteration as done:
            return done.value

    def _switch_vcl(self, action: Action) -> bool:
        label = action.args[0]              # VCC gives return (vcl(...)) its label's name
        target = self.server.vcl_labels.get(label)
        if target is None:
            return False
        if self.vcl0 is None:
            self.vcl0 = self.vcl            # the VCL this request started in (ESI includes start there)
        log = self.ctx.log
        if log and log[-1] == ("VCL_return", "vcl"):
            # varnishd logs the switch as VCL makes it, before the return
            log.insert(len(log) - 1, ("VCL_use", f"{target.__dict__.get('name')} via {label}"))
        # the new VCL's vcl_recv sees the request as received, an ESI include's too (VPI_vcl_select's
        # Req_Rollback): what the first vcl_recv changed is gone, a workspace overflow with it
        self.vcl_rollback(self.ctx.req)
        self.vcl = self.ctx.vcl = target
        return True                         # (_recv_setup then takes the new VCL's default backend)

    def _recv_continue(self, action: Action) -> None:
        """A client waiting on `Expect: 100-continue` gets it once vcl_recv is done, unless VCL
        failed or chose std.late_100_continue(true) (then it comes when the body is read)."""
        if action.name != "fail" and not self.late100 and self.body.want_continue is not None:
            self.body.send_continue()

    def _wash_accept_encoding(self, action: Action) -> None:
        """Between vcl_recv and vcl_hash, for the sake of Vary (cnt_recv): gzip or nothing."""
        if action.name in ("pipe", "pass", "fail") or not self.server.params.http_gzip_support:
            return
        headers = self.ctx.req.headers
        ae = headers.get("Accept-Encoding")
        if ae is not None and accepts_gzip(ae):
            if ae.lower() != "gzip":          # http_ForceHeader keeps an equal value as it is,
                headers.unset("Accept-Encoding")      # else the new one goes last
                headers.add("Accept-Encoding", "gzip", printf=True)
        elif ae is not None:
            headers.unset("Accept-Encoding")

    def _hash_and_log(self, ctx: Context, parts: list) -> bytes:
        """The lookup digest part by part, with a Hash record for each when vsl_mask lets them through;
        a hash_data() of STRANDS (a tuple) hashes each piece on its own, an unset one as a NUL."""
        digest = hashlib.sha256()
        log_hash = self.server.vsl.wants("Hash")
        for part in parts:
            if isinstance(part, tuple):
                for p in part:
                    digest.update(b"\0" if p is None else p.encode("utf-8", "surrogateescape"))
                    if log_hash and p is not None:
                        ctx.log.append(("Hash", p))
            else:                     # a str (rtlib.hash_data; an unset one is "\0")
                digest.update(part.encode("utf-8", "surrogateescape"))
                if log_hash and part != "\0":
                    ctx.log.append(("Hash", part))
            digest.update(b"\0")      # varnishd's field separator (HSH_AddString(NULL))
        return digest.digest()

    def _after_recv(self, action: Action, hash_action: Action) -> str | None:
        name = action.name
        ctx = self.ctx
        if self.body_failed and name != "fail":
            # std.cache_req_body() failed (too big, client gone): varnishd closes, answering nothing
            self.session.close_reason = "sc_rx_body"
            self.keep_alive = False
            self.session.close()
            return None
        if name == "fail" or hash_action.name == "fail":
            return self._fail_state()
        parts = ctx.hash_parts
        if not self.server.vsl.wants("Hash") and _all_str(parts):
            # the common case in one call: each part followed by varnishd's field separator
            # (HSH_AddString(NULL)), the same digest as the loop below
            self.digest = ctx.hash = _digest_of("\0".join(parts) + "\0" if parts else "")
        else:
            self.digest = ctx.hash = self._hash_and_log(ctx, parts)
        if name == "hash":
            return "lookup"
        if name == "pipe" and ctx.esi_level > 0:
            ctx.log.append(("VCL_Error", "vcl_recv{} returns pipe for ESI included object.  Doing pass."))  # (sic: two spaces)
            name = "pass"
        if name in ("pass", "pipe", "purge"):
            return name
        if name == "vcl":
            # varnishd's cnt_recv: a 503 synth, the connection kept (what vcl_hash did stays done)
            ctx.log.append(("VCL_Error", "Illegal return(vcl): "
                            + ("Not after restarts" if ctx.restarts else "Only from active VCL")))
            return self._to_synth(503)
        return self._common(action)

    # -- lookup -----------------------------------------------------------------------------------

    def st_lookup(self) -> str:
        ctx = self.ctx
        r = self.server.storage.lookup(
            self.digest, ctx.req, ctx.req_time, always_miss=bool(ctx.hash_always_miss),
            ignore_busy=bool(ctx.hash_ignore_busy), req_ttl=ctx.req_ttl, req_grace=ctx.req_grace,
            ignore_vary=bool(ctx.hash_ignore_vary), log=ctx.log, rushed=self.rushed)
        self.rushed = False             # a restart's lookup searches the tree again
        kind = r.kind
        if kind == st.BUSY:
            return "waitinglist"
        if kind == st.MISS:
            self.busy, self.stale = r.busy, r.oc
            return "miss"
        if kind == st.HITMISS:
            ctx.log.append(("HitMiss", _hit_text(r.oc or r.busy)))
            ctx.is_hitmiss = True
            self.busy, self.stale = r.busy, r.replaces
            return "miss"
        if kind == st.HITPASS:
            ctx.log.append(("HitPass", _hit_text(r.oc)))
            ctx.is_hitpass = True
            return "pass"
        self.oc = r.oc
        self.busy = r.busy          # set on a grace hit that must refresh the object
        self.is_grace = kind == st.GRACE
        self._set_obj_fields(r.oc)
        oc = r.oc
        hit = "%d %s" % (oc.xid, floats(ctx.obj_ttl, ctx.obj_grace, ctx.obj_keep))
        if not oc.complete:
            # still being fetched: the bytes so far, and the length when the backend announced one
            hit += " %d %d" % (oc.length, oc.expected) if oc.expected else " %d" % oc.length
        ctx.log.append(("Hit", hit))
        return "hit"

    async def ast_waitinglist(self) -> str:
        head = self.server.storage.heads.get(self.digest)
        if head is None or not any(oc.busy for oc in head.ocs):
            return "lookup"
        fut = asyncio.get_running_loop().create_future()
        head.add_waiter(fut)
        self.server.counters.busy_sleep += 1
        await fut
        self.server.counters.busy_wakeup += 1
        self.rushed = True
        if self.session.closed:
            return None
        return "lookup"

    def _set_obj_fields(self, oc: ObjCore) -> None:
        ctx = self.ctx
        ctx.obj = oc.http
        age = time.time() - oc.t_origin        # now, not the request's start: a fetch may have taken a while
        ctx.obj_ttl = oc.ttl - age
        ctx.obj_grace = oc.grace
        ctx.obj_keep = oc.keep
        ctx.obj_hits = oc.hits
        ctx.obj_age = age
        # varnishd: a pass object or one made uncacheable (hit-for-miss and hit-for-pass markers are,
        # fetch.py); not one merely kept out of the cache (no TTL, or a backend error's), which is no
        # OC_F_PRIVATE there
        ctx.obj_uncacheable = oc.head is None or oc.uncacheable
        # pass and synthetic objects live in Transient, as in varnishd
        ctx.obj_storage = oc.store or (TRANSIENT if oc.private else None)
        ctx.obj_can_esi = oc.esi_data is not None
        ctx.obj_time = oc.t_origin

    # -- hit / miss / pass ------------------------------------------------------------------------

    def st_hit(self) -> str:
        return self._after_hit(self.call("vcl_hit"))

    async def ast_hit(self) -> str:
        return self._after_hit(await self.acall("vcl_hit"))

    def _after_hit(self, action: Action) -> str:
        name = action.name
        counters = self.server.counters
        if name == "deliver":
            if self.busy is not None:
                # grace: deliver the stale object, refresh it in the background
                bo = BusyObj(self.server, self.vcl, self.ctx, self.busy, self.oc, "bg", self.body)
                self.ctx.log.append(("Link", f"bereq {bo.ctx.bereq_xid} bgfetch"))
                self.busy = None
                bo.start()
                if self.body.present and self.body.cached is None:
                    self.bg = bo       # it may send the body: hold on to it until it has (VBF_Fetch)
            counters.cache_hit += 1
            if self.is_grace:
                counters.cache_hit_grace += 1
            self.is_hit = True
            return "bgwait" if self.bg is not None else "deliver"
        self.oc = None
        self._drop_busy()
        if name == "pass":
            counters.cache_hit += 1
            self.is_hit = True           # X-Varnish shows the pass object's xid, as varnishd does
            return "pass"
        return self._common(action)

    async def ast_bgwait(self) -> str:
        bo, self.bg = self.bg, None
        await bo.req_done
        return "deliver"

    def _drop_busy(self) -> None:
        if self.busy is not None:
            self.server.storage.abandon(self.busy)
            self.busy = None

    def st_miss(self) -> str:
        return self._after_miss(self.call("vcl_miss"))

    async def ast_miss(self) -> str:
        return self._after_miss(await self.acall("vcl_miss"))

    def _after_miss(self, action: Action) -> str:
        if action.name == "fetch":
            self.server.counters.cache_miss += 1
            self.bo = BusyObj(self.server, self.vcl, self.ctx, self.busy, self.stale, "miss", self.body)
            self.ctx.log.append(("Link", f"bereq {self.bo.ctx.bereq_xid} fetch"))
            self.oc, self.busy, self.stale = self.busy, None, None
            self.bo.start()
            return "fetch"
        self._drop_busy()
        self.stale = None
        if action.name == "pass":
            return "pass"
        return self._common(action)

    def st_pass(self) -> str:
        return self._after_pass(self.call("vcl_pass"))

    async def ast_pass(self) -> str:
        return self._after_pass(await self.acall("vcl_pass"))

    def _after_pass(self, action: Action) -> str:
        if action.name == "fetch":
            self.server.counters.s_pass += 1
            self.from_pass = True
            self.oc = ObjCore()
            self.bo = BusyObj(self.server, self.vcl, self.ctx, self.oc, None, "pass", self.body)
            self.ctx.log.append(("Link", f"bereq {self.bo.ctx.bereq_xid} pass"))
            self.bo.start()
            return "fetch"
        return self._common(action)

    async def ast_fetch(self) -> str | None:
        bo = self.bo
        await bo.ready
        self._ts("Fetch")
        oc = self.oc
        if oc.http is None or oc.failed:
            bo.close_reader()
            self.bo = None
            self.oc = None
            return self._to_synth(503)
        self._set_obj_fields(oc)
        self.ctx.obj_hits = 0      # not a hit, whatever others did with the object meanwhile
        return "deliver"

    # -- purge / pipe -----------------------------------------------------------------------------

    def st_purge(self) -> str:
        self.server.storage.purge(self.digest)
        self.server.counters.n_purges += 1
        return self._common(self.call("vcl_purge"))

    async def ast_purge(self) -> str:
        self.server.storage.purge(self.digest)
        self.server.counters.n_purges += 1
        return self._common(await self.acall("vcl_purge"))

    async def ast_pipe(self) -> str | None:
        from cacheserver.fetch import make_bereq
        from cacheserver.pipe import pipe_request

        ctx = self.ctx
        server = self.server
        server.counters.s_pipe += 1
        bereq = make_bereq(ctx.req, True, ctx.xid, False, keep_proto=True)
        bereq.headers.set("Connection", "close")
        ctx.bereq = bereq
        ctx.bereq_backend = ctx.backend_hint
        self.pipe_xid = server.next_xid()    # the pipe's backend transaction, linked before vcl_pipe
        ctx.log.append(("Link", f"bereq {self.pipe_xid} pipe"))
        action = await self.acall("vcl_pipe")
        if action.name != "pipe":
            return self._common(action)
        counters = server.counters
        limit = server.params.pipe_sess_max
        if limit and counters.n_pipe >= limit:
            counters.pipe_limited += 1
            return self._fail_state()          # varnishd: 503 "VCL failed", closed as VCL_FAILURE
        counters.n_pipe += 1
        try:
            await pipe_request(self)
        finally:
            counters.n_pipe -= 1
        self.keep_alive = False
        self.close_reason = "sc_tx_pipe"
        return None

    # -- restart ----------------------------------------------------------------------------------

    def st_restart(self) -> str:
        ctx = self.ctx
        self._release()
        self.bo = None
        self.oc = None
        self.is_hit = False
        self.from_pass = False
        ctx.restarts += 1
        if ctx.restarts > self.server.params.max_restarts:
            ctx.log.append(("VCL_Error", "Too many restarts"))
            return self._to_synth(503)
        old = ctx.xid
        ctx.xid = self.server.next_xid()
        # as varnishd: the old request ends here, linking to the new one, which begins afresh
        self._ts("Restart")
        ctx.log.append(("Link", f"req {ctx.xid} restart"))
        ctx.log.append(("End", ""))
        self.server.vsl.write(old, "c", ctx.log)
        ctx.log = []
        self._vsl_begin("restart", old)
        return "recv"

    # -- deliver / synth / transmit ---------------------------------------------------------------

    def st_deliver(self) -> str | None:
        if self._plain_hit():
            if self.is_hit and self._deliver_from_template():
                return "send" if self.send_data is not None else None
            self._template_wanted = self.oc.fast_head is None    # shared, it costs the object nothing
        if self._undecodable():
            return self._to_synth(500)
        self._prepare_deliver()
        return self._after_deliver(None)

    def _undecodable(self) -> bool:
        """varnishd's HTTP_Decode refuses an object whose header fields filled its beresp (their count
        and the start line's, plus one, pass http_max_hdr): 500 synth before vcl_deliver."""
        n = len(self.oc.http.headers) + HDR_FIRST + 1
        limit = self.server.params.http_max_hdr
        if n <= limit:
            return False
        self.ctx.log.append(("Error", "Too many headers to Decode object (%d vs. %d)" % (n, limit)))
        self._drop_object()
        return True

    async def ast_deliver(self) -> str | None:
        if self._undecodable():
            return self._to_synth(500)
        self._prepare_deliver()
        return self._after_deliver(await self.acall("vcl_deliver"))

    def _prepare_deliver(self) -> None:
        oc = self.oc
        ctx = self.ctx
        resp = oc.http.copy()
        resp.proto = "HTTP/1.1"
        headers = resp.headers
        ws = headers.ws = self.ws
        # this client gets another representation (gunzipped), with a weak ETag
        weaken = (oc.gzipped and self.server.params.http_gzip_support
                  and not accepts_gzip(ctx.req.headers.get("Accept-Encoding")))
        # a workspace that overflowed, headers that may not fit, or an ETag to weaken: log as we
        # add, so that the losses and the change fall among the RespHeader records where varnishd
        # logs them (RespUnset of the strong ETag, then the weak one)
        tight = weaken or ws.overflowed or len(headers) + 4 > ws.hdr_cap
        if tight:
            _log_resp(ctx.log, resp)
        # objects are stored without X-Varnish and Age (fetch.py), so these are plain appends
        headers.add("X-Varnish", f"{ctx.xid} {oc.xid}" if self.is_hit else str(ctx.xid), printf=True)
        headers.add("Age", str(max(0, int(time.time() - oc.t_origin))), printf=True)
        headers.add("Via", _VIA)
        if weaken:
            weaken_etag(resp)
        if self.server.params.http_range_support and resp.status == 200 and oc.head is not None:
            # before vcl_deliver, as varnishd 7.1 (VCL may remove it); pass and synth do not announce
            # (OC_F_PRIVATE); a hash object kept out of the cache (no TTL left) still does
            headers.unset("Accept-Ranges")
            headers.add("Accept-Ranges", "bytes", printf=True)
        ctx.resp = resp
        ctx.resp_time = self.t_prev      # resp.time: the last Timestamp before vcl_deliver
        ctx.obj_time = oc.t_origin
        ctx.resp_filters = None
        ctx.obj_oc = oc                  # what resp.filters is chosen for (no cycle: oc knows no ctx)
        if not tight:
            _log_resp(ctx.log, resp)

    def _after_deliver(self, action: Action | None) -> str | None:
        ctx = self.ctx
        if action is None:
            action = self.call("vcl_deliver")
        self._ts("Process")
        if action.name != "deliver":
            self._drop_object()
            return self._common(action)
        resp = ctx.resp
        req_headers = ctx.req.headers
        if (not self.from_pass and resp.status == 200 and self.oc is not None
                and ("If-None-Match" in req_headers or "If-Modified-Since" in req_headers)
                and not_modified(ctx.req, resp, ctx.req_time, self._last_modified())):
            resp.status, resp.reason = 304, reason_for(304)
        return self._transmit(resp, self.oc)

    def _last_modified(self) -> float:
        return object_last_modified(self.oc.http.headers, self.oc.t_origin)

    def _drop_object(self) -> None:
        if self.bo is not None:
            self.bo.close_reader()
            self.bo = None
        self.oc = None

    def st_synth(self) -> str | None:
        self._prepare_synth()
        return self._after_synth(None)

    async def ast_synth(self) -> str | None:
        self._prepare_synth()
        return self._after_synth(await self.acall("vcl_synth"))

    def _prepare_synth(self) -> None:
        ctx = self.ctx
        status = self.synth_status       # checked by VCL's return (rtlib.status_action)
        reason = self.synth_reason or reason_for(status % 1000)
        resp = HttpMessage(proto="HTTP/1.1", status=status, reason=reason)
        resp.headers.ws = self.ws
        _log_resp(ctx.log, resp)
        resp.headers.add("Date", DATES.now())
        resp.headers.add("Server", "Varnish")
        resp.headers.add("X-Varnish", str(ctx.xid), printf=True)
        if self.body.want_continue is not None:
            # the client still waits for a 100 and has not sent its body: suggest closing rather
            # than reading it (VCL may veto by removing the header)
            resp.headers.add("Connection", "close")
        ctx.resp = resp
        ctx.resp_time = time.time()      # resp.time: when the synth began (cnt_synth), as its Date
        ctx.resp_filters = None
        ctx.obj_oc = None
        ctx.synth_body = []
        self.server.counters.s_synth += 1

    def _synth_reads_body(self) -> bool:
        """VRB_Ignore before a synth is delivered: unless the connection is to close (the client's or
        the response's Connection: close), a request body still unread is read to its end first,
        through a Transient object as varnishd's vrb_pull (a client waiting for a 100 gets it)."""
        body = self.body
        if not body.present or body.state != "unread" or not self.keep_alive:
            return False
        conn = self.ctx.resp.headers.get("Connection")
        if conn is not None and conn.lower() == "close":
            return False
        self.ctx.log.append(("Storage", "malloc Transient"))
        return True

    async def ast_synthbody(self) -> str | None:
        await self.body.discard()
        self._ts("ReqBody")
        return self._synth_deliver()

    def _synth_deliver(self) -> str | None:
        ctx = self.ctx
        held = self.server.storage.hold_transient(SYNTH_OBJECT, len(self.synth_data))
        if held is None:
            # varnishd's cnt_synth: no response at all, the connection is closed (overload)
            ctx.log.append(("Error", "Could not get storage"))
            self.keep_alive = False
            self.close_reason = "sc_overload"
            return None
        ctx.log.append(("Storage", "malloc Transient"))     # where varnishd keeps the synth body
        oc = ObjCore()
        oc.append(self.synth_data)
        oc.finish(True)
        oc.http = ctx.resp
        self.oc = oc
        self.from_pass = True
        self.is_hit = False
        try:
            return self._transmit(ctx.resp, oc, synth=True)
        finally:
            self.server.storage.release_held(held)

    def _after_synth(self, action: Action | None) -> str | None:
        ctx = self.ctx
        if action is None:
            action = self.call("vcl_synth")
        self._ts("Process")
        if action.name == "restart":
            return "restart"
        if action.name == "deliver":
            body = "".join(ctx.synth_body or []).encode("utf-8", "surrogateescape")
            ctx.resp.headers.unset("Content-Length")
            ctx.resp.headers.add("Content-Length", str(len(body)), printf=True)
            self.synth_data = body
            if self._synth_reads_body():
                return "synthbody"
            return self._synth_deliver()
        # fail (or anything else) in vcl_synth: a bare 500 and close, as Varnish does
        self.keep_alive = False
        self.close_reason = "sc_vcl_failure"
        if self.parent is None:
            # http1_minimal_response: the status line alone, logged as a response
            ctx.log += (("RespProtocol", "HTTP/1.1"), ("RespStatus", "500"), ("RespReason", "Internal Server Error"))
            self.acct_hdr = len(_MINIMAL_500)
            if not self.session.closed:
                self.session.transport.write(_MINIMAL_500)
            return None
        # an ESI include (where varnishd 7.1.1 panics: ESI has no minimal response) adds nothing
        # to its page
        self._drop_object()
        return None

# each state's methods, by name (see STATES)
_SYNC_STEPS = {state: getattr(ClientRequest, "st_" + state) for state, subs in STATES.items() if subs is not WAITS}
_ASYNC_STEPS = {state: getattr(ClientRequest, "ast_" + state) for state, subs in STATES.items()
                if subs is WAITS or subs}


# The digests of recent short hash inputs: a hit's SHA-256 (a fresh OpenSSL context each time) costs
# more than a dict lookup. Bounded in entries and key length; started over when full.
_DIGESTS: dict[str, bytes] = {}
_DIGESTS_MAX = 4096
_DIGEST_KEY_MAX = 512


def _digest_of(text: str) -> bytes:
    """sha256 of the joined hash parts (with their separators), as HSH_AddString makes it."""
    digest = _DIGESTS.get(text)
    if digest is None:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
        if len(text) <= _DIGEST_KEY_MAX:
            if len(_DIGESTS) >= _DIGESTS_MAX:
                _DIGESTS.clear()
            _DIGESTS[text] = digest
    return digest


def _all_str(parts: list) -> bool:
    """No STRANDS (tuples) or bytes among the hash parts (a loop: cheaper than all() of a generator)."""
    for part in parts:
        if type(part) is not str:
            return False
    return True


def _builtin_hash(ctx: Context) -> None:
    """The built-in vcl_hash: hash_data(req.url), then req.http.host if set, else server.ip."""
    req = ctx.req
    host = req.headers.get("host")
    ctx.hash_parts += (req.url, host if host is not None else s_ip(ctx.server_ip))


def _hit_text(oc: ObjCore) -> str:
    """HitMiss / HitPass: the marker object's vxid and the TTL it has left."""
    return "%d %.6f" % (oc.xid, oc.ttl - (time.time() - oc.t_origin))


def _log_resp(records: list, resp: HttpMessage) -> None:
    records.extend((("RespProtocol", resp.proto), ("RespStatus", str(resp.status % 1000)),
                    ("RespReason", resp.reason)))
    resp.headers.log_to(records, "RespHeader", "RespUnset")
