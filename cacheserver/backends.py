"""Backends at run time: health, directors (the connection pools are cacheserver.beconn's).

A VCL `backend` is a vcl.runtime.BackendSpec (pure data). Here it gets its live state (`spec.live`):
admin health as set by `backend.set_health`, probe health (probes report through `set_probe_health`,
the hook a prober uses), a connection count for .max_connections, and per-backend counters.
Directors (vmods.directors) are anything with `resolve(ctx)`; `resolve()` follows them to a backend.
"""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING

from vcl.runtime import BackendSpec

if TYPE_CHECKING:
    pass


class LiveBackend:
    """What the server knows about one backend while it runs."""

    __slots__ = ("admin", "probe_healthy", "probe_good", "probe_log", "changed", "conns", "req", "fail",
                 "unhealthy", "busy", "helddown", "probe_bits", "probe_avg", "fails", "bereq_hdrbytes", "bereq_bodybytes",
                 "beresp_hdrbytes", "beresp_bodybytes", "pipe_hdrbytes", "pipe_out", "pipe_in")

    def __init__(self) -> None:
        self.admin = "auto"            # auto | healthy | sick (backend.set_health)
        self.probe_healthy = True      # what the last probe said; True without a probe
        self.probe_good = None         # good polls in the probe window (None: not probed)
        self.probe_log: list[bool] = []  # the latest poll results, oldest first (backend.list -p)
        # varnishd's 64-poll history per outcome (bit 0 the latest): 4/6 connected over IPv4/IPv6,
        # x/X send failed/done, r/R receive failed/done, H happy; and the good polls' average time
        self.probe_bits: dict[str, int] = dict.fromkeys("46UxXrRH", 0)
        self.probe_avg = 0.0
        self.fails: dict[str, int] = {}   # failed connects by errno (VBE.*.fail_econnrefused, ...)
        self.bereq_hdrbytes = self.bereq_bodybytes = 0
        self.beresp_hdrbytes = self.beresp_bodybytes = 0
        self.pipe_hdrbytes = self.pipe_out = self.pipe_in = 0
        self.changed = time.time()
        self.conns = 0                 # connections in use now (for .max_connections)
        self.req = 0
        self.fail = 0
        self.helddown = 0
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


_FAIL_ERRNO = {errno.EACCES: "eacces", errno.EPERM: "eacces", errno.EADDRNOTAVAIL: "eaddrnotavail",
               errno.ECONNREFUSED: "econnrefused", errno.ENETUNREACH: "enetunreach",
               errno.EHOSTUNREACH: "enetunreach", errno.ETIMEDOUT: "etimedout"}
FAIL_REASONS = ("eacces", "eaddrnotavail", "econnrefused", "enetunreach", "etimedout", "other")


def count_fail(spec: BackendSpec, exc: BaseException, probe: bool = False) -> None:
    """A connection to the backend could not be opened: VBE.*.fail and fail_<reason>, as varnishd
    (a probe's failure counts by reason only)."""
    b = live(spec)
    if isinstance(exc, TimeoutError):
        reason = "etimedout"               # connect_timeout
    elif getattr(exc, "errno", None) == 0:
        b.helddown += 1                    # not tried: a holddown is on (VBE_Connect_Error's errno 0)
        return
    else:
        reason = _FAIL_ERRNO.get(getattr(exc, "errno", None) or 0, "other")
    b.fails[reason] = b.fails.get(reason, 0) + 1


def head_bytes(conn: object) -> int:
    """The size of a backend response head as it came (status line, header lines, empty line)."""
    if getattr(conn, "head_len", 0):
        return conn.head_len
    fields = getattr(conn, "fields", ())
    return (len("HTTP/1.1 200 ") + len(getattr(conn, "reason", b"")) + 2
            + sum(len(f[0]) + len(f[1]) + 4 for f in fields) + 2)


def vbe_counters(prefix: str, spec: BackendSpec) -> dict[str, int]:
    """VBE.<vcl>.<backend>.* as varnishstat lists them."""
    b = live(spec)
    out = {"happy": b.probe_bits.get("H", 0), "bereq_hdrbytes": b.bereq_hdrbytes,
           "bereq_bodybytes": b.bereq_bodybytes, "beresp_hdrbytes": b.beresp_hdrbytes,
           "beresp_bodybytes": b.beresp_bodybytes, "pipe_hdrbytes": b.pipe_hdrbytes, "pipe_out": b.pipe_out,
           "pipe_in": b.pipe_in, "conn": b.conns, "req": b.req, "unhealthy": b.unhealthy, "busy": b.busy,
           "fail": b.fail}
    out.update((f"fail_{r}", b.fails.get(r, 0)) for r in FAIL_REASONS)
    out["helddown"] = b.helddown
    return {prefix + k: v for k, v in out.items()}


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
        # a backend on a Unix socket (.path) has no host; `backend NAME none;` has neither
        return (backend.host is not None or backend.path is not None) and live(backend).healthy
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
