"""The client request state machine, shaped like Varnish's cache_req_fsm.c.

One method per state, each returning the name of the next state (None when the request is done).
States that must wait (a backend fetch, a pipe, a subroutine calling an async vmod function) have an
async twin; `run_sync` runs states until one of those, `run_async` finishes the request from there.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING

from cacheserver.http1 import DATES, reason_for, serialize_head
from cacheserver.storage import CachedObject
from vcl.runtime import Action, Context, HttpMessage, VCLFailure

if TYPE_CHECKING:
    from cacheserver.protocol import ClientProtocol

log = logging.getLogger("cacheserver.fsm")

# States that always wait on I/O.
_ALWAYS_ASYNC = frozenset({"fetch", "pipe"})
# The subroutine each state runs, for states that are async when that subroutine is.
_STATE_SUB = {"recv": "vcl_recv", "hash": "vcl_hash", "hit": "vcl_hit", "miss": "vcl_miss",
              "pass": "vcl_pass", "purge": "vcl_purge", "deliver": "vcl_deliver",
              "synth": "vcl_synth"}


class ClientRequest:
    """One client request on its way from vcl_recv to the wire."""

    def __init__(self, session: ClientProtocol, req: HttpMessage, body: bytes, keep_alive: bool,
                 raw_index: int) -> None:
        self.session = session
        self.server = session.server
        self.body = body
        self.keep_alive = keep_alive
        self.raw_index = raw_index     # which message this was in the session's raw byte log
        self.state: str | None = "recv"
        self.vcl = self.server.active_vcl
        self.obj: CachedObject | None = None   # the object being delivered
        self.digest: bytes = b""
        self.synth_status = 0
        self.synth_reason = ""
        self._next_after_hash = "lookup"
        self._fetch_pass = False
        server = self.server
        self.ctx = Context(
            method="recv", req=req, req_top=req, client_ip=session.client_ip, remote_ip=session.client_ip,
            server_ip=session.local_ip, local_ip=session.local_ip, session=session, vcl=self.vcl,
            server=server, xid=server.next_xid(), hash_parts=[], req_time=time.time(),
            backend_hint=self.vcl.default_backend, server_hostname=server.hostname,
            server_identity=server.identity, client_identity=session.client_ip.addr,
            hash_always_miss=False, hash_ignore_busy=False, can_gzip=False,
            is_hitmiss=False, is_hitpass=False,
        )

    # -- drivers ----------------------------------------------------------------------------------

    def _must_wait(self, state: str) -> bool:
        if state in _ALWAYS_ASYNC:
            return True
        sub = _STATE_SUB.get(state)
        return sub is not None and sub in self.vcl.async_subs

    def run_sync(self) -> bool:
        """Run states until done (True) or until one must wait (False: call run_async)."""
        state = self.state
        while state is not None:
            if self._must_wait(state):
                self.state = state
                return False
            state = getattr(self, "st_" + state)()
            if self.session.stolen:
                state = None
        self.state = None
        return True

    async def run_async(self) -> None:
        state = self.state
        while state is not None:
            if self._must_wait(state):
                state = await getattr(self, "ast_" + state)()
            else:
                state = getattr(self, "st_" + state)()
            if self.session.stolen:
                state = None
        self.state = None

    # -- running VCL ------------------------------------------------------------------------------

    def call(self, sub: str) -> Action:
        ctx = self.ctx
        ctx.method = sub
        try:
            return self.vcl.subs[sub](ctx)
        except VCLFailure as exc:
            return self._failed(sub, exc)

    async def acall(self, sub: str) -> Action:
        ctx = self.ctx
        ctx.method = sub
        try:
            fn = self.vcl.subs[sub]
            if sub in self.vcl.async_subs:
                return await fn(ctx)
            return fn(ctx)
        except VCLFailure as exc:
            return self._failed(sub, exc)

    def _failed(self, sub: str, exc: Exception) -> Action:
        self.server.counters.vcl_fail += 1
        self.ctx.log.append(("VCL_Error", str(exc)))
        log.warning("VCL failure in %s: %s", sub, exc)
        return Action("fail")

    def _to_synth(self, status: int, reason: str = "") -> str:
        self.synth_status = status
        self.synth_reason = reason
        return "synth"

    def _fail_state(self) -> str:
        # Varnish: a VCL failure is a 503 synth, and the connection is closed after it.
        self.keep_alive = False
        self.server.counters.sc_vcl_failure += 1
        return self._to_synth(503, "VCL failed")

    def _common(self, action: Action, allowed: dict[str, str]) -> str | None:
        """Map an action to the next state: `allowed` names the simple ones for this state."""
        name = action.name
        if name in allowed:
            return allowed[name]
        if name == "synth":
            status = int(action.args[0]) if action.args else 503
            reason = action.args[1] if len(action.args) > 1 else ""
            return self._to_synth(status, reason or "")
        if name == "restart":
            return "restart"
        if name == "fail":
            return self._fail_state()
        log.error("action %s not handled here", name)
        return self._fail_state()

    # -- states -----------------------------------------------------------------------------------

    def st_restart(self) -> str:
        ctx = self.ctx
        ctx.restarts += 1
        if ctx.restarts > self.server.params.max_restarts:
            self.keep_alive = False
            return self._to_synth(503, "Too many restarts")
        ctx.xid = self.server.next_xid()
        ctx.hash_parts = []
        self.obj = None
        return "recv"

    def st_recv(self) -> str:
        return self._after_recv(self.call("vcl_recv"))

    async def ast_recv(self) -> str:
        return self._after_recv(await self.acall("vcl_recv"))

    def _after_recv(self, action: Action) -> str:
        name = action.name
        if name == "vcl":
            label = self.server.vcl_labels.get(action.args[0])
            if label is not None:
                self.vcl = self.ctx.vcl = label
                return "recv"
            return self._fail_state()
        if name == "pass":
            self.ctx.is_hitpass = False
            self._next_after_hash = "pass"
        elif name == "pipe":
            self._next_after_hash = "pipe"
        elif name == "purge":
            self._next_after_hash = "purge"
        else:
            self._next_after_hash = "lookup"
        return self._common(action, {"hash": "hash", "lookup": "hash", "pass": "hash", "pipe": "hash",
                                     "purge": "hash"})

    def st_hash(self) -> str:
        return self._after_hash(self.call("vcl_hash"))

    async def ast_hash(self) -> str:
        return self._after_hash(await self.acall("vcl_hash"))

    def _after_hash(self, action: Action) -> str:
        if action.name != "lookup":
            return self._common(action, {})
        digest = hashlib.sha256()
        for part in self.ctx.hash_parts:
            digest.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
            digest.update(b"#")
        self.digest = self.ctx.hash = digest.digest()
        return self._next_after_hash

    def st_lookup(self) -> str:
        ctx = self.ctx
        storage = self.server.storage
        if ctx.hash_always_miss:
            obj = None
        else:
            obj = storage.lookup(self.digest, ctx.req, ctx.req_time)
        if obj is None:
            self.server.counters.cache_miss += 1
            return "miss"
        if obj.hit_for_pass:
            self.server.counters.cache_hitpass += 1
            ctx.is_hitpass = True
            return "pass"
        if obj.hit_for_miss:
            self.server.counters.cache_hitmiss += 1
            ctx.is_hitmiss = True
            return "miss"
        self.server.counters.cache_hit += 1
        obj.hits += 1
        self.obj = obj
        self._set_obj_fields(obj)
        return "hit"

    def _set_obj_fields(self, obj: CachedObject) -> None:
        ctx = self.ctx
        ctx.obj = obj.http
        ctx.obj_ttl = obj.ttl - (ctx.req_time - obj.t_origin)
        ctx.obj_grace = obj.grace
        ctx.obj_keep = obj.keep
        ctx.obj_hits = obj.hits
        ctx.obj_age = ctx.req_time - obj.t_origin
        ctx.obj_uncacheable = False

    def st_hit(self) -> str:
        return self._after_hit(self.call("vcl_hit"))

    async def ast_hit(self) -> str:
        return self._after_hit(await self.acall("vcl_hit"))

    def _after_hit(self, action: Action) -> str:
        if action.name == "deliver":
            return "deliver"
        if action.name in ("pass", "miss"):
            self.obj = None
            return action.name
        return self._common(action, {})

    def st_miss(self) -> str:
        return self._after_miss(self.call("vcl_miss"))

    async def ast_miss(self) -> str:
        return self._after_miss(await self.acall("vcl_miss"))

    def _after_miss(self, action: Action) -> str:
        if action.name == "fetch":
            self.server.counters.s_fetch += 1
            self._fetch_pass = False
            return "fetch"
        return self._common(action, {"pass": "pass"})

    def st_pass(self) -> str:
        return self._after_pass(self.call("vcl_pass"))

    async def ast_pass(self) -> str:
        return self._after_pass(await self.acall("vcl_pass"))

    def _after_pass(self, action: Action) -> str:
        if action.name == "fetch":
            self.server.counters.s_pass += 1
            self._fetch_pass = True
            return "fetch"
        return self._common(action, {})

    def st_purge(self) -> str:
        self.server.storage.purge(self.digest)
        self.server.counters.n_purges += 1
        return self._after_purge(self.call("vcl_purge"))

    async def ast_purge(self) -> str:
        self.server.storage.purge(self.digest)
        self.server.counters.n_purges += 1
        return self._after_purge(await self.acall("vcl_purge"))

    def _after_purge(self, action: Action) -> str:
        return self._common(action, {})

    async def ast_fetch(self) -> str:
        from cacheserver.fetch import fetch_object

        obj = await fetch_object(self, is_pass=self._fetch_pass)
        if self.session.closed:
            return None
        if obj is None:            # vcl_backend_error returned abandon
            return self._to_synth(503, "Backend fetch failed")
        self.obj = obj
        self._set_obj_fields(obj)
        return "deliver"

    async def ast_pipe(self) -> str:
        from cacheserver.fetch import make_bereq
        from cacheserver.pipe import pipe_request

        ctx = self.ctx
        ctx.bereq = make_bereq(ctx.req, True, ctx.client_ip.addr, self.server.next_xid())
        action = await self.acall("vcl_pipe")
        if action.name != "pipe":
            return self._common(action, {})
        self.server.counters.s_pipe += 1
        await pipe_request(self)
        self.keep_alive = False
        return None

    def st_deliver(self) -> str | None:
        obj = self.obj
        ctx = self.ctx
        resp = obj.http.copy()
        resp.proto = "HTTP/1.1"
        headers = resp.headers
        headers.unset("X-Varnish")
        headers.add("X-Varnish", f"{ctx.xid} {obj.xid}" if obj.cached and obj.hits > 0 else str(ctx.xid))
        headers.add("Age", str(max(0, int(ctx.req_time - obj.t_origin))))
        headers.add("Via", "1.1 varnish (Varnish/7.1)")
        if (self.server.params.http_range_support and resp.status == 200
                and "accept-ranges" not in headers):
            headers.add("Accept-Ranges", "bytes")
        ctx.resp = resp
        action = self.call("vcl_deliver")
        if action.name == "deliver":
            return self._transmit(resp, obj.body)
        return self._common(action, {})

    async def ast_deliver(self) -> str | None:
        return self.st_deliver()

    def st_synth(self) -> str | None:
        ctx = self.ctx
        status = self.synth_status
        reason = self.synth_reason or reason_for(status)
        resp = HttpMessage(proto="HTTP/1.1", status=status, reason=reason)
        resp.headers.add("Date", DATES.now())
        resp.headers.add("Server", "Varnish")
        resp.headers.add("X-Varnish", str(ctx.xid))
        ctx.resp = resp
        ctx.synth_body = []
        self.server.counters.s_synth += 1
        action = self.call("vcl_synth")
        if action.name == "deliver":
            body = "".join(ctx.synth_body).encode("utf-8", "surrogateescape")
            return self._transmit(resp, body)
        if action.name == "restart":
            return "restart"
        # fail (or anything else) in vcl_synth: a bare 500 and close, as Varnish does
        self.keep_alive = False
        bare = HttpMessage(proto="HTTP/1.1", status=500, reason="Internal Server Error")
        bare.headers.add("Date", DATES.now())
        bare.headers.add("Server", "Varnish")
        bare.headers.add("X-Varnish", str(ctx.xid))
        return self._transmit(bare, b"")

    async def ast_synth(self) -> str | None:
        return self.st_synth()

    def _transmit(self, resp: HttpMessage, body: bytes) -> None:
        headers = resp.headers
        ctx = self.ctx
        is_head = ctx.req.method == "HEAD"
        headers.unset("Content-Length")
        headers.unset("Transfer-Encoding")
        if not (resp.status < 200 or resp.status in (204, 304)):
            headers.add("Content-Length", str(len(body)))
        if not self.keep_alive or (headers.get("Connection") or "").lower() == "close":
            self.keep_alive = False
        headers.unset("Connection")
        headers.add("Connection", "keep-alive" if self.keep_alive else "close")
        head = serialize_head(resp)
        counters = self.server.counters
        counters.s_resp_hdrbytes += len(head)
        transport = self.session.transport
        if is_head or resp.status < 200 or resp.status in (204, 304) or not body:
            transport.write(head)
        else:
            counters.s_resp_bodybytes += len(body)
            transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                transport.write(body)
        return None
