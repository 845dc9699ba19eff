"""The backend side: vcl_backend_fetch -> fetch -> vcl_backend_response / vcl_backend_error.

Fetches use the server's aiohttp ClientSession; the result becomes a CachedObject, stored when
cacheable (or as a hit-for-miss / hit-for-pass marker), and handed back to the client request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from cacheserver.http1 import DATES, HOP_BY_HOP, reason_for
from cacheserver.storage import CachedObject
from vcl.runtime import Action, Context, Headers, HttpMessage, VCLFailure

if TYPE_CHECKING:
    from cacheserver.fsm import ClientRequest

log = logging.getLogger("cacheserver.fetch")

# Statuses Varnish caches by default (RFC2616_Ttl); others get ttl -1.
_CACHEABLE = frozenset({200, 203, 204, 300, 301, 302, 304, 307, 308, 404, 410, 414})
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_S_MAXAGE = re.compile(r"(?:^|,)\s*s-maxage\s*=\s*\"?(\d+)", re.IGNORECASE)
_SWR = re.compile(r"(?:^|,)\s*stale-while-revalidate\s*=\s*\"?(\d+)", re.IGNORECASE)


class FetchError(Exception):
    """The backend could not give a response (refused, timeout, reset, garbage)."""


def _date(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def compute_ttl(ctx: Context, params, now: float) -> None:
    """beresp.ttl/grace/keep and the object's origin time, as Varnish's RFC2616_Ttl does."""
    beresp = ctx.beresp
    headers = beresp.headers
    age = 0.0
    age_text = headers.get("Age")
    if age_text and age_text.strip().isdigit():
        age = float(age_text.strip())
    ctx.beresp_age = age
    ctx.beresp_grace = params.default_grace
    ctx.beresp_keep = params.default_keep
    if beresp.status not in _CACHEABLE:
        ctx.beresp_ttl = -1.0
        return
    cc = headers.get("Cache-Control") or ""
    swr = _SWR.search(cc)
    if swr:
        ctx.beresp_grace = float(swr.group(1))
    m = _S_MAXAGE.search(cc) or _MAX_AGE.search(cc)
    if m:
        ctx.beresp_ttl = max(float(m.group(1)) - age, 0.0)
        return
    expires = _date(headers.get("Expires"))
    if expires is not None:
        date = _date(headers.get("Date")) or now
        ctx.beresp_ttl = max(expires - date, 0.0) if expires > date else 0.0
        return
    ctx.beresp_ttl = params.default_ttl - age if age < params.default_ttl else 0.0


def make_bereq(req: HttpMessage, is_pass: bool, client_ip: str, xid: int) -> HttpMessage:
    bereq = req.copy()
    headers = bereq.headers
    for name in HOP_BY_HOP:
        headers.unset(name)
    if not is_pass:
        # A cache fill asks for the whole object, whatever the client asked.
        if bereq.method == "HEAD":
            bereq.method = "GET"
        for name in ("Range", "If-None-Match", "If-Modified-Since", "If-Range", "If-Match",
                     "If-Unmodified-Since"):
            headers.unset(name)
    xff = headers.get("X-Forwarded-For")
    headers.set("X-Forwarded-For", f"{xff}, {client_ip}" if xff else client_ip)
    headers.unset("X-Varnish")
    headers.add("X-Varnish", str(xid))
    bereq.proto = "HTTP/1.1"
    return bereq


async def _http_fetch(server, ctx: Context, body: bytes) -> tuple[HttpMessage, bytes]:
    backend = ctx.bereq_backend
    if backend is None or getattr(backend, "host", None) is None:
        raise FetchError("no backend")
    bereq = ctx.bereq
    params = server.params
    connect = ctx.connect_timeout if ctx.connect_timeout is not None else params.connect_timeout
    first_byte = ctx.first_byte_timeout if ctx.first_byte_timeout is not None else params.first_byte_timeout
    between = ctx.between_bytes_timeout if ctx.between_bytes_timeout is not None else params.between_bytes_timeout
    host = backend.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = URL(f"http://{host}:{backend.port}{bereq.url if bereq.url.startswith('/') else '/' + bereq.url}",
              encoded=True)
    headers = [(n, v) for n, v in bereq.headers.items()]
    timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=between)
    counters = server.counters
    counters.backend_req += 1
    try:
        async with asyncio.timeout(connect + first_byte):
            response = await server.http_session.request(
                bereq.method, url, headers=headers, data=body or None, allow_redirects=False,
                auto_decompress=False, timeout=timeout, skip_auto_headers=("User-Agent", "Accept-Encoding",
                                                                          "Accept", "Content-Type"),
            )
        async with response:
            if bereq.method == "HEAD":
                payload = b""
            else:
                payload = await response.read()
            fields = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in response.raw_headers]
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        counters.backend_fail += 1
        raise FetchError(str(exc) or type(exc).__name__) from exc
    counters.backend_conn += 1
    beresp = HttpMessage(proto=f"HTTP/{response.version.major}.{response.version.minor}",
                         status=response.status, reason=response.reason or reason_for(response.status),
                         headers=Headers(fields))
    for name in HOP_BY_HOP:
        beresp.headers.unset(name)
    beresp.headers.unset("Content-Length")
    return beresp, payload


def _call(vcl, ctx: Context, sub: str):
    ctx.method = sub
    try:
        result = vcl.subs[sub](ctx)
    except VCLFailure as exc:
        ctx.log.append(("VCL_Error", str(exc)))
        return Action("fail")
    return result


async def _acall(vcl, ctx: Context, sub: str) -> Action:
    result = _call(vcl, ctx, sub)
    if sub in vcl.async_subs:
        try:
            result = await result
        except VCLFailure as exc:
            ctx.log.append(("VCL_Error", str(exc)))
            return Action("fail")
    return result


async def fetch_object(request: ClientRequest, is_pass: bool) -> CachedObject | None:
    """Run the backend side for a miss or a pass; None means the fetch was abandoned."""
    server = request.server
    vcl = request.vcl
    creq = request.ctx
    xid = server.next_xid()
    ctx = Context(
        method="vcl_backend_fetch", bereq=make_bereq(creq.req, is_pass, creq.client_ip.addr, xid),
        bereq_xid=xid, bereq_backend=creq.backend_hint, bereq_uncacheable=is_pass, vcl=vcl, server=server,
        client_ip=creq.client_ip, server_ip=creq.server_ip, local_ip=creq.local_ip, remote_ip=creq.remote_ip,
        server_hostname=creq.server_hostname, server_identity=creq.server_identity, is_bgfetch=False,
        is_hitpass=creq.is_hitpass, is_hitmiss=creq.is_hitmiss, xid=creq.xid,
    )
    ctx.retries = 0
    params = server.params
    while True:
        action = await _acall(vcl, ctx, "vcl_backend_fetch")
        if action.name == "abandon":
            return None
        if action.name not in ("fetch", "error"):
            return None if action.name != "fail" else await _error(request, ctx, is_pass)
        if action.name == "error":
            outcome = await _error(request, ctx, is_pass, action)
        else:
            try:
                beresp, payload = await _http_fetch(server, ctx, request.body if is_pass else b"")
            except FetchError as exc:
                ctx.log.append(("FetchError", str(exc)))
                outcome = await _error(request, ctx, is_pass)
            else:
                outcome = await _response(request, ctx, is_pass, beresp, payload)
        if outcome == "retry":
            ctx.retries += 1
            if ctx.retries > params.max_retries:
                outcome = await _error(request, ctx, is_pass)
                if outcome == "retry":
                    return None
            else:
                server.counters.backend_retry += 1
                continue
        return outcome


async def _response(request: ClientRequest, ctx: Context, is_pass: bool, beresp: HttpMessage,
                    payload: bytes):
    server = request.server
    now = time.time()
    ctx.beresp = beresp
    ctx.beresp_uncacheable = is_pass
    ctx.do_stream = True
    ctx.was_304 = False
    ctx.beresp_backend = ctx.bereq_backend
    compute_ttl(ctx, server.params, now)
    action = await _acall(request.vcl, ctx, "vcl_backend_response")
    name = action.name
    if name == "retry":
        return "retry"
    if name == "abandon":
        return None
    if name in ("error", "fail"):
        return await _error(request, ctx, is_pass, action if name == "error" else None)
    obj = _object(ctx, beresp, payload, now)
    if name == "pass":
        # return (pass(DURATION)): remember to pass for that long
        ttl = float(action.args[0]) if action.args else server.params.default_ttl
        marker = _object(ctx, beresp, b"", now)
        marker.ttl, marker.grace, marker.keep, marker.hit_for_pass = ttl, 0.0, 0.0, True
        server.storage.insert(request.digest, request.ctx.req, marker)
        return obj
    if is_pass:
        return obj
    if ctx.beresp_uncacheable:
        if ctx.beresp_ttl > 0:
            marker = _object(ctx, beresp, b"", now)
            marker.hit_for_miss = True
            marker.grace = marker.keep = 0.0
            server.storage.insert(request.digest, request.ctx.req, marker)
        return obj
    if ctx.beresp_ttl + ctx.beresp_grace + ctx.beresp_keep > 0:
        server.storage.insert(request.digest, request.ctx.req, obj)
    return obj


def _object(ctx: Context, beresp: HttpMessage, payload: bytes, now: float) -> CachedObject:
    vary = beresp.headers.get("Vary")
    names = tuple(sorted({n.strip().lower() for n in vary.split(",") if n.strip()})) if vary else ()
    return CachedObject(http=beresp, body=payload, t_origin=now - (ctx.beresp_age or 0.0),
                        ttl=float(ctx.beresp_ttl), grace=float(ctx.beresp_grace or 0.0),
                        keep=float(ctx.beresp_keep or 0.0), xid=ctx.bereq_xid, vary=names)


async def _error(request: ClientRequest, ctx: Context, is_pass: bool, action: Action | None = None):
    """vcl_backend_error: a synthetic object, 503 "Backend fetch failed" unless VCL says otherwise."""
    server = request.server
    status = int(action.args[0]) if action is not None and action.args else 503
    reason = (action.args[1] if action is not None and len(action.args) > 1 else "") or (
        "Backend fetch failed" if status == 503 else reason_for(status))
    beresp = HttpMessage(proto="HTTP/1.1", status=status, reason=reason)
    beresp.headers.add("Date", DATES.now())
    beresp.headers.add("Server", "Varnish")
    ctx.beresp = beresp
    ctx.synth_body = []
    ctx.beresp_ttl = 0.0
    ctx.beresp_grace = 0.0
    ctx.beresp_keep = 0.0
    ctx.beresp_uncacheable = True
    server.counters.fetch_failed += 1
    result = await _acall(request.vcl, ctx, "vcl_backend_error")
    if result.name == "retry":
        return "retry"
    if result.name != "deliver":
        return None
    body = "".join(ctx.synth_body).encode("utf-8", "surrogateescape")
    obj = _object(ctx, beresp, body, time.time())
    if not is_pass and ctx.beresp_ttl > 0 and not ctx.beresp_uncacheable:
        server.storage.insert(request.digest, request.ctx.req, obj)
    return obj
