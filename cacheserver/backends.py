"""Backends at run time: the shared aiohttp session (a keep-alive pool per backend), health, directors.

A VCL `backend` is a vcl.runtime.BackendSpec (pure data). Here it gets its live state (`spec.live`):
admin health as set by `backend.set_health`, probe health (probes report through `set_probe_health`,
the hook a prober uses), a connection count for .max_connections, and per-backend counters.
Directors (vmods.directors) are anything with `resolve(ctx)`; `resolve()` follows them to a backend.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp

from vcl.runtime import BackendSpec

if TYPE_CHECKING:
    from cacheserver.server import Server


class LiveBackend:
    """What the server knows about one backend while it runs."""

    __slots__ = ("admin", "probe_healthy", "probe_good", "probe_log", "changed", "conns", "req", "fail",
                 "unhealthy", "busy")

    def __init__(self) -> None:
        self.admin = "auto"            # auto | healthy | sick (backend.set_health)
        self.probe_healthy = True      # what the last probe said; True without a probe
        self.probe_good = None         # good polls in the probe window (None: not probed)
        self.probe_log: list[bool] = []  # the latest poll results, oldest first (backend.list -p)
        self.changed = time.time()
        self.conns = 0                 # connections in use now (for .max_connections)
        self.req = 0
        self.fail = 0
        self.unhealthy = 0
        self.busy = 0

    @property
    def healthy(self) -> bool:
        if self.admin == "healthy":
            return True
        if self.admin == "sick":
            return False
        return self.probe_healthy


def live(spec: BackendSpec) -> LiveBackend:
    state = spec.live
    if state is None:
        state = spec.live = LiveBackend()
    return state


def set_admin_health(spec: BackendSpec, state: str) -> None:
    """`backend.set_health NAME auto|healthy|sick`."""
    if state not in ("auto", "healthy", "sick"):
        raise ValueError(f"Invalid state {state}")
    b = live(spec)
    if b.admin != state:
        b.admin = state
        b.changed = time.time()


def set_probe_health(spec: BackendSpec, healthy: bool) -> None:
    """The hook for probes: report the result of the probe window."""
    b = live(spec)
    if b.probe_healthy != healthy:
        b.probe_healthy = healthy
        b.changed = time.time()


def healthy(backend: object, ctx=None) -> bool:
    """std.healthy() / director health: a backend's own, a director's through its members."""
    if backend is None:
        return False
    if isinstance(backend, BackendSpec):
        return backend.host is not None and live(backend).healthy
    check = getattr(backend, "healthy", None)
    if check is None:
        return True
    return bool(check(ctx))


def resolve(backend: object, ctx) -> BackendSpec | None:
    """Follow directors down to one backend; None when none is usable."""
    for _ in range(16):               # directors of directors, with a bound against loops
        if backend is None or isinstance(backend, BackendSpec):
            return backend
        resolver = getattr(backend, "resolve", None)
        if resolver is None:
            return None
        backend = resolver(ctx)
    return None


class _Response(aiohttp.ClientResponse):
    """Remembers its connection's protocol: a response that says Connection: close (perhaps only
    after VCL changed beresp) must close a connection aiohttp may already have pooled again."""

    protocol = None

    async def start(self, connection):
        self.protocol = connection.protocol
        return await super().start(connection)


def make_session(server: Server) -> aiohttp.ClientSession:
    """One ClientSession for all backend fetches; its connector keeps a pool per host:port."""
    counters = server.counters
    trace = aiohttp.TraceConfig()

    def connected(ctx) -> None:
        # first_byte_timeout counts from here: the fetch passes its timeout as trace_request_ctx
        request_ctx = getattr(ctx, "trace_request_ctx", None)
        if isinstance(request_ctx, dict) and "timeout" in request_ctx:
            request_ctx["timeout"].reschedule(asyncio.get_running_loop().time() + request_ctx["first_byte"])

    async def on_create(session, ctx, params) -> None:
        counters.backend_conn += 1
        connected(ctx)

    async def on_reuse(session, ctx, params) -> None:
        counters.backend_reuse += 1
        connected(ctx)

    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True,
                                     keepalive_timeout=server.params.backend_idle_timeout, ttl_dns_cache=None)
    params = server.params
    # http_resp_hdr_len / http_max_hdr bound what a backend may send, as in varnishd
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, trace_configs=[trace],
                                 skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar(),
                                 max_line_size=params.http_resp_hdr_len, max_field_size=params.http_resp_hdr_len,
                                 max_headers=params.http_max_hdr, read_bufsize=1 << 16,
                                 response_class=_Response)


def take_idle_connection(session: aiohttp.ClientSession | None, host: str, port: int):
    """An idle pooled connection to host:port as (reader, writer), taken out of the pool; or None.

    `return (pipe)` uses it as varnishd does: a pipe goes over a kept-alive backend connection when
    there is one. This reaches into aiohttp's connector pool, so anything unexpected means "none".
    """
    if session is None:
        return None
    try:
        conns = session.connector._conns
        for key in list(conns):
            if key.host != host or key.port != port or key.is_ssl:
                continue
            queue = conns[key]
            while queue:
                protocol, _ = queue.pop()
                transport = protocol.transport
                if protocol.is_connected() and transport is not None and not transport.is_closing():
                    if not queue:
                        del conns[key]
                    return _streams_over(transport)
                protocol.close()
            del conns[key]
    except (AttributeError, KeyError, TypeError):
        return None
    return None


def _streams_over(transport: asyncio.Transport):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    stream_protocol = asyncio.StreamReaderProtocol(reader)
    transport.set_protocol(stream_protocol)
    stream_protocol.connection_made(transport)
    if not transport.is_reading():
        transport.resume_reading()
    return reader, asyncio.StreamWriter(transport, stream_protocol, reader, loop)

