"""vmod std: Varnish's standard library (the 7.1 function set), as impl(ctx, *args) functions.

Conversion functions follow Varnish: when the conversion of `s` fails the fallback is returned, and
without a fallback the task fails (VCLFailure). Hooks into the server are looked up on ctx.server /
ctx.session (see each function) so this module stays free of I/O of its own, except fileread(),
file_exists(), getenv() and syslog(), which are file/system functions by definition.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import socket
import syslog as _syslog
import time as _time

from vcl.rtlib import INT_MAX, ascii_lower, ascii_upper, ban_string
from vcl.runtime import IP, Context, HeaderRef, HttpMessage, VCLFailure, parse_ip
from vmods import Param, Vmod, vnum
from vmods.vrnd import TESTABLE

VMOD = Vmod("std")


def _opt(name: str, type_: str, default: object = None) -> Param:
    return Param(name, type_, default, optional=True)


# ------------------------------------------------------------------ numeric


@VMOD.func("random", "REAL", [Param("lo", "REAL"), Param("hi", "REAL")])
def random(ctx: Context, lo: float, hi: float) -> float:
    """lo + (hi - lo) * x, x from varnishd's testable generator (repeatable after debug.srandom)."""
    return TESTABLE.double() * (hi - lo) + lo


@VMOD.func("round", "REAL", [Param("r", "REAL")])
def round_(ctx: Context, r: float) -> float:
    # round(3): halfway cases away from zero (Python's round() is banker's rounding).
    return math.copysign(math.floor(abs(r) + 0.5), r)


# ------------------------------------------------------------------ strings


@VMOD.func("collect", "VOID", [Param("hdr", "HEADER"), _opt("sep", "STRING", ", ")])
def collect(ctx: Context, hdr: HeaderRef, sep: str | None) -> None:     # the compiler passes ", "
    if ctx.obj is not None and hdr.message is ctx.obj:
        raise VCLFailure("std.collect(): header argument can not be used here")
    headers = hdr.message.headers
    values = headers.get_all(hdr.name)
    if len(values) > 1:
        # an empty or unset separator is ", " (http_CollectHdrSep), as varnishd 7.1.1 answers; the
        # fields are joined in place, and varnishd logs no Unset/Header records for it
        vsl, headers.vsl = headers.vsl, None
        try:
            headers.set(hdr.name, (sep or ", ").join(values))
        finally:
            headers.vsl = vsl


def _signed_chars(b: bytes) -> list[int]:
    """A string as C's `char` sees it on x86: bytes over 0x7f are negative."""
    return [c - 256 if c > 127 else c for c in b]


def _prefix_cmp(a: list[int], b: list[int]) -> int:
    """querysort's comparison: the first difference within the shorter one; a prefix is "equal"."""
    for x, y in zip(a, b, strict=False):
        if x != y:
            return x - y
    return 0


@VMOD.func("querysort", "STRING", [Param("", "STRING")])
def querysort(ctx: Context, url: str | None) -> str | None:
    """The query parameters sorted, empty ones dropped (vmod_std_querysort.c): a URL without '&'
    after its '?' is returned as it is; the sort is glibc's stable merge sort on a prefix compare."""
    if url is None:
        return None
    raw = url.encode("utf-8", "surrogateescape")
    q = raw.find(b"?")
    if q < 0 or raw.find(b"&", q) < 0:
        return url
    params = [p for p in raw[q + 1:].split(b"&") if p]
    keyed = sorted(params, key=functools.cmp_to_key(
        lambda a, b: _prefix_cmp(_signed_chars(a), _signed_chars(b))))
    return (raw[:q + 1] + b"&".join(keyed)).decode("utf-8", "surrogateescape")


@VMOD.func("toupper", "STRING", [Param("s", "STRANDS")])
def toupper(ctx: Context, s: str) -> str:
    return ascii_upper(s)


@VMOD.func("tolower", "STRING", [Param("s", "STRANDS")])
def tolower(ctx: Context, s: str) -> str:
    return ascii_lower(s)


@VMOD.func("strstr", "STRING", [Param("s1", "STRING"), Param("s2", "STRING")])
def strstr(ctx: Context, s1: str | None, s2: str | None) -> str | None:
    """The rest of s1 from the first s2; unset (false in a condition) when not found."""
    if s1 is None or s2 is None:
        return None
    i = s1.find(s2)
    return None if i < 0 else s1[i:]


# fnmatch(3) itself, as varnishd calls it: its bracket expressions, escapes and FNM_PATHNAME /
# FNM_PERIOD rules are the reference, and Python's fnmatch module implements none of those flags.
_libc = ctypes.CDLL(None, use_errno=False)
_libc_fnmatch = _libc.fnmatch
_libc_fnmatch.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)
_libc_fnmatch.restype = ctypes.c_int
_FNM_PATHNAME, _FNM_NOESCAPE, _FNM_PERIOD = 1, 2, 4
# varnishd matches bytes in the C locale ("?" is one byte, [[:alpha:]] ASCII letters); Python runs
# in the environment's (UTF-8) locale, so each call switches its thread to a C locale.
_libc.newlocale.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_libc.newlocale.restype = ctypes.c_void_p
_libc.uselocale.argtypes = (ctypes.c_void_p,)
_libc.uselocale.restype = ctypes.c_void_p
_LC_CTYPE_MASK, _LC_COLLATE_MASK = 1 << 0, 1 << 3       # glibc's category masks
_C_LOCALE = _libc.newlocale(_LC_CTYPE_MASK | _LC_COLLATE_MASK, b"C", None)


@VMOD.func("fnmatch", "BOOL", [Param("pattern", "STRING"), Param("subject", "STRING"),
                               _opt("pathname", "BOOL", True), _opt("noescape", "BOOL", False),
                               _opt("period", "BOOL", False)])
def fnmatch(ctx: Context, pattern: str | None, subject: str | None, pathname: bool, noescape: bool,
            period: bool) -> bool:     # the compiler passes the defaults
    if pattern is None:
        raise VCLFailure("std.fnmatch(): pattern is NULL")
    if subject is None:
        raise VCLFailure("std.fnmatch(): subject is NULL")
    flags = (_FNM_PATHNAME if pathname else 0) | (_FNM_NOESCAPE if noescape else 0) | \
        (_FNM_PERIOD if period else 0)
    pat = pattern.encode("utf-8", "surrogateescape")       # C reads each up to a NUL
    sub = subject.encode("utf-8", "surrogateescape")
    previous = _libc.uselocale(_C_LOCALE)
    try:
        return _libc_fnmatch(pat, sub, flags) == 0
    finally:
        _libc.uselocale(previous)


# ------------------------------------------------------------------ files

_FILE_CACHE: dict[str, str | None] = {}


@VMOD.func("fileread", "STRING", [Param("", "STRING")], priv_args=1)
def fileread(ctx: Context, path: str | None) -> str | None:
    """The file's text, read once and then cached, as Varnish does; unset when unreadable."""
    if path is None:
        return None
    if path not in _FILE_CACHE:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                _FILE_CACHE[path] = f.read()
        except OSError:
            return None
    return _FILE_CACHE[path]


_BLOB_CACHE: dict[str, bytes] = {}


@VMOD.func("blobread", "BLOB", [Param("", "STRING")], priv_args=1)
def blobread(ctx: Context, file: str | None) -> bytes | None:
    """The file's bytes, read once and then cached; no blob (NULL) when there is no file name or the
    file cannot be read, as varnishd 7.1.1 answers (the task goes on)."""
    if file is None:
        return None
    if file not in _BLOB_CACHE:
        try:
            with open(file, "rb") as f:
                _BLOB_CACHE[file] = f.read()
        except OSError:
            return None
    return _BLOB_CACHE[file]


@VMOD.func("file_exists", "BOOL", [Param("path", "STRING")])
def file_exists(ctx: Context, path: str | None) -> bool:
    return path is not None and os.path.exists(path)


# ------------------------------------------------------------------ type inspection


@VMOD.func("healthy", "BOOL", [Param("be", "BACKEND")])
def healthy(ctx: Context, be: object) -> bool:
    """A backend's health: a director's healthy(ctx), else the live backend's `healthy` flag."""
    if be is None:
        return False
    check = getattr(be, "healthy", None)
    if callable(check):
        return bool(check(ctx))
    if be.live is None:         # a VCL not loaded in a server: no health known, so healthy as a backend
        return be.host is not None or be.path is not None
    return bool(be.live.healthy)


@VMOD.func("port", "INT", [Param("ip", "IP")])
def port(ctx: Context, ip: IP | None) -> int:
    return 0 if ip is None else int(ip.port or 0)


# ------------------------------------------------------------------ conversions


# Optional arguments left out are UNSET (varnishd's valid_NAME is false); repr() is "Ellipsis", so
# the compiler can emit it as the default. An unset STRING passed explicitly is None, which differs.
UNSET = ...
_INT_MAX = (1 << 53) - 1        # conversions go through a double: beyond 2**53 they would round


def _conv(name: str, type_: str) -> Param:
    return Param(name, type_, UNSET, optional=True)


def _onearg(fname: str, *args: object) -> None:
    """Exactly one value to convert: "std.real: too many arguments" / "not enough arguments"."""
    given = sum(a is not UNSET for a in args)
    if given != 1:
        raise VCLFailure(f"std.{fname}: {'too many' if given > 1 else 'not enough'} arguments")


def _given(value: object) -> bool:
    return value is not UNSET and value is not None


@VMOD.func("integer", "INT", [_conv("s", "STRING"), _conv("fallback", "INT"), _conv("bool", "BOOL"),
                              _conv("bytes", "BYTES"), _conv("duration", "DURATION"), _conv("real", "REAL"),
                              _conv("time", "TIME")])
def integer(ctx: Context, s=UNSET, fallback=UNSET, bool_=UNSET, bytes_=UNSET, duration=UNSET, real=UNSET,
            time=UNSET) -> int:
    _onearg("integer", s, bool_, bytes_, duration, real, time)
    if bool_ is not UNSET:
        return 1 if bool_ else 0
    if bytes_ is not UNSET:
        return int(bytes_)
    errtxt = None
    r = math.nan
    if _given(s):
        try:
            value, end = vnum.parse_number(s)
            if end == len(s) and value == math.trunc(value):
                return int(value)
        except vnum.NumError as exc:
            errtxt = str(exc)
    for value in (duration, real, time):
        if value is not UNSET:
            r = value
    if not math.isnan(r) and not math.isinf(r):
        r = math.trunc(r)
        if -INT_MAX <= r <= INT_MAX:        # VRT_INTEGER_MAX, as varnishd 7.1.1 answers
            return int(r)
    if fallback is not UNSET:
        return fallback
    raise VCLFailure(f"std.integer: conversion failed: {errtxt}" if errtxt else "std.integer: conversion failed")


@VMOD.func("real", "REAL", [_conv("s", "STRING"), _conv("fallback", "REAL"), _conv("integer", "INT"),
                            _conv("bool", "BOOL"), _conv("bytes", "BYTES"), _conv("duration", "DURATION"),
                            _conv("time", "TIME")])
def real(ctx: Context, s=UNSET, fallback=UNSET, integer_=UNSET, bool_=UNSET, bytes_=UNSET, duration=UNSET,
         time=UNSET) -> float:
    _onearg("real", s, integer_, bool_, bytes_, duration, time)
    if bool_ is not UNSET:
        return 1.0 if bool_ else 0.0
    for value in (integer_, bytes_, duration, time):
        if value is not UNSET:
            return float(value)
    errtxt = None
    if _given(s):
        try:
            return vnum.parse_decimal(s)
        except vnum.NumError as exc:
            errtxt = str(exc) or None
    if fallback is not UNSET:
        return fallback
    raise VCLFailure(f"std.real: conversion failed: {errtxt}" if errtxt else "std.real: conversion failed")


@VMOD.func("duration", "DURATION", [_conv("s", "STRING"), _conv("fallback", "DURATION"), _conv("real", "REAL"),
                                    _conv("integer", "INT")])
def duration(ctx: Context, s=UNSET, fallback=UNSET, real_=UNSET, integer_=UNSET) -> float:
    _onearg("duration", s, real_, integer_)
    if real_ is not UNSET:
        return float(real_)
    if integer_ is not UNSET:
        return float(integer_)
    if s is not UNSET:
        r = vnum.duration(s)
        if not math.isnan(r):
            return r
    if fallback is not UNSET:
        return fallback
    raise VCLFailure("std.duration: conversion failed")


@VMOD.func("bytes", "BYTES", [_conv("s", "STRING"), _conv("fallback", "BYTES"), _conv("real", "REAL"),
                              _conv("integer", "INT")])
def bytes_(ctx: Context, s=UNSET, fallback=UNSET, real_=UNSET, integer_=UNSET) -> float:
    _onearg("bytes", s, real_, integer_)
    if s is not UNSET:
        try:
            r = vnum.to_bytes(s)
            if r <= _INT_MAX:
                return float(r)
        except vnum.NumError:
            pass
    if real_ is not UNSET and not math.isnan(real_) and real_ >= 0:
        rr = math.trunc(real_) if not math.isinf(real_) else real_
        if rr <= _INT_MAX:
            return float(rr)
    if integer_ is not UNSET and integer_ >= 0:
        return float(integer_)
    if fallback is not UNSET:
        return fallback
    raise VCLFailure("std.bytes: conversion failed")


@VMOD.func("ip", "IP", [Param("s", "STRING"), _conv("fallback", "IP"), Param("resolve", "BOOL", True, optional=True),
                        _conv("p", "STRING")])
def ip(ctx: Context, s: str | None, fallback=UNSET, resolve: bool = True, p=UNSET) -> IP:
    """s (with port p, default 80) as an address; names are resolved unless resolve=false."""
    if s is not None:
        result = parse_ip(s, p if _given(p) else "80", resolve)
        if result is not None:
            return result
    if fallback is not UNSET and fallback is not None:
        return fallback
    raise VCLFailure("std.ip: conversion failed")


@VMOD.func("time", "TIME", [_conv("s", "STRING"), _conv("fallback", "TIME"), _conv("real", "REAL"),
                            _conv("integer", "INT")])
def time(ctx: Context, s=UNSET, fallback=UNSET, real_=UNSET, integer_=UNSET) -> float:
    """An HTTP date, an ISO 8601 time (UTC) or seconds since the epoch (> 0)."""
    _onearg("time", s, real_, integer_)
    if integer_ is not UNSET:
        return float(integer_)
    if real_ is not UNSET:
        return float(real_)
    if _given(s):
        t = vnum.parse_http_date(s)
        if t:
            return t
        r = vnum.vnum(s)
        if not math.isnan(r) and r > 0:
            return r
    if fallback is not UNSET:
        return fallback
    raise VCLFailure("std.time: conversion failed")


# The deprecated 4.x conversions, still in 7.1's std: fallback when the value is not finite or too big.
@VMOD.func("real2integer", "INT", [Param("r", "REAL"), Param("fallback", "INT")])
def real2integer(ctx: Context, r: float, fallback: int) -> int:
    if not math.isfinite(r) or abs(r) > vnum.DECIMAL_MAX:       # VRT_REAL_is_valid
        return fallback
    value = int(round_(ctx, r))
    return value if abs(value) <= INT_MAX else fallback         # VRT_INT_is_valid


@VMOD.func("time2integer", "INT", [Param("t", "TIME"), Param("fallback", "INT")])
def time2integer(ctx: Context, t: float, fallback: int) -> int:
    if not math.isfinite(t):
        return fallback
    value = round_(ctx, t)
    return int(value) if abs(value) <= INT_MAX else fallback        # VRT_INT_is_valid


@VMOD.func("real2time", "TIME", [Param("r", "REAL"), Param("fallback", "TIME")])
def real2time(ctx: Context, r: float, fallback: float) -> float:
    return r if math.isfinite(r) else fallback


@VMOD.func("time2real", "REAL", [Param("t", "TIME"), Param("fallback", "REAL")])
def time2real(ctx: Context, t: float, fallback: float) -> float:
    return t if math.isfinite(t) else fallback


@VMOD.func("strftime", "STRING", [Param("time", "TIME"), Param("format", "STRING")])
def strftime(ctx: Context, t: float, fmt: str | None) -> str:
    try:
        return _time.strftime(fmt or "", _time.gmtime(t))
    except (ValueError, OverflowError):
        return ""


# ------------------------------------------------------------------ logging


@VMOD.func("log", "VOID", [Param("s", "STRANDS")])
def log(ctx: Context, s: str) -> None:
    ctx.log.append(("VCL_Log", s))


@VMOD.func("syslog", "VOID", [Param("priority", "INT"), Param("s", "STRANDS")])
def syslog(ctx: Context, priority: int, s: str) -> None:
    _syslog.syslog(priority, s)


@VMOD.func("timestamp", "VOID", [Param("s", "STRING")])
def timestamp(ctx: Context, s: str | None) -> None:
    """A Timestamp record "LABEL: now since-start since-previous"; an empty label logs nothing."""
    if not s:
        return
    task = ctx.task() if ctx.task is not None else None
    if task is not None:
        task.vsl_timestamp(s)       # VSLb_ts_req / VSLb_ts_busyobj: the task's last Timestamp moves
        return
    now = _time.time()
    start = ctx.req_time or ctx.bereq_time or now
    task = ctx.priv_task if isinstance(ctx.priv_task, dict) else {}
    prev = task.get("std.timestamp", start)
    task["std.timestamp"] = now
    ctx.priv_task = task
    ctx.log.append(("Timestamp", f"{s}: {now:.6f} {now - start:.6f} {now - prev:.6f}"))


# ------------------------------------------------------------------ control


@VMOD.func("syntax", "BOOL", [Param("", "REAL")])
def syntax(ctx: Context, version: float) -> bool:
    vcl_version = getattr(ctx.vcl, "version", 4.1)
    return vcl_version >= version


@VMOD.func("getenv", "STRING", [Param("name", "STRING")])
def getenv(ctx: Context, name: str | None) -> str | None:
    return None if name is None else os.environ.get(name)


@VMOD.func("cache_req_body", "BOOL", [Param("size", "BYTES")], restrict={"vcl_recv"}, is_async=True)
async def cache_req_body(ctx: Context, size: float) -> bool:
    """Reads the whole request body into memory, at most `size` bytes, so that it can be sent again
    (retries, restarts). False when it is bigger or the client broke off: the connection then closes
    after vcl_recv, unanswered, as in varnishd."""
    hook = getattr(ctx.session, "cache_req_body", None)
    if hook is None:
        return False
    return bool(await hook(int(size)))


# varnishd 7.1 takes it anywhere (it only matters in vcl_recv, before the body is read).
@VMOD.func("late_100_continue", "VOID", [Param("late", "BOOL")])
def late_100_continue(ctx: Context, late: bool) -> None:
    hook = getattr(ctx.session, "late_100_continue", None)
    if hook is not None:
        hook(bool(late))


@VMOD.func("set_ip_tos", "VOID", [Param("tos", "INT")])
def set_ip_tos(ctx: Context, tos: int) -> None:
    """IP_TOS (IPv4) or IPV6_TCLASS (IPv6) on the client connection, for what is sent from now on."""
    transport = getattr(ctx.session, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return          # no client connection (a backend task): varnishd asserts there is one
    try:
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        elif sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
    except OSError:
        pass            # VTCP_Check tolerates a connection the peer already closed


@VMOD.func("rollback", "VOID", [Param("h", "HTTP")])
def rollback(ctx: Context, h: HttpMessage) -> None:
    """Restore req or bereq to what it was on arrival (the task's vcl_rollback(message))."""
    hook = getattr(ctx.task() if ctx.task is not None else None, "vcl_rollback", None)
    if hook is None:
        raise VCLFailure("std.rollback() needs a client request or a backend fetch")
    hook(h)


@VMOD.func("ban", "BOOL", [Param("", "STRING")])
def ban(ctx: Context, spec: str | None) -> bool:
    error = ban_string(ctx, spec)
    task = ctx.priv_task if isinstance(ctx.priv_task, dict) else {}
    task["std.ban_error"] = error or ""
    ctx.priv_task = task
    return error is None


@VMOD.func("ban_error", "STRING", [])
def ban_error(ctx: Context) -> str:
    task = ctx.priv_task if isinstance(ctx.priv_task, dict) else {}
    return task.get("std.ban_error", "")
