"""vmod std: Varnish's standard library (the 7.1 function set), as impl(ctx, *args) functions.

Conversion functions follow Varnish: when the conversion of `s` fails the fallback is returned, and
without a fallback the task fails (VCLFailure). Hooks into the server are looked up on ctx.server /
ctx.session (see each function) so this module stays free of I/O of its own, except fileread(),
file_exists(), getenv() and syslog(), which are file/system functions by definition.
"""

from __future__ import annotations

import math
import os
import random as _random
import re
import syslog as _syslog
import time as _time
from calendar import timegm
from email.utils import parsedate_tz

from vcl.rtlib import INT_MAX, REAL_MAX, ascii_lower, ascii_upper
from vcl.runtime import IP, Context, HeaderRef, HttpMessage, VCLFailure, parse_ip
from vmods import Param, Vmod

VMOD = Vmod("std")


def _opt(name: str, type_: str, default: object = None) -> Param:
    return Param(name, type_, default, optional=True)


# ------------------------------------------------------------------ numeric


@VMOD.func("random", "REAL", [Param("lo", "REAL"), Param("hi", "REAL")])
def random(ctx: Context, lo: float, hi: float) -> float:
    return _random.uniform(lo, hi)


@VMOD.func("round", "REAL", [Param("r", "REAL")])
def round_(ctx: Context, r: float) -> float:
    # round(3): halfway cases away from zero (Python's round() is banker's rounding).
    return math.copysign(math.floor(abs(r) + 0.5), r)


# ------------------------------------------------------------------ strings


@VMOD.func("collect", "VOID", [Param("hdr", "HEADER"), _opt("sep", "STRING", ", ")])
def collect(ctx: Context, hdr: HeaderRef, sep: str | None = ", ") -> None:
    if ctx.obj is not None and hdr.message is ctx.obj:
        raise VCLFailure("std.collect(): obj.http headers cannot be changed")
    values = hdr.message.headers.get_all(hdr.name)
    if len(values) > 1:
        hdr.message.headers.set(hdr.name, (sep if sep is not None else "").join(values))


@VMOD.func("querysort", "STRING", [Param("url", "STRING")])
def querysort(ctx: Context, url: str | None) -> str | None:
    if url is None:
        return None
    path, sep, query = url.partition("?")
    if not sep:
        return url
    params = [p for p in query.split("&") if p]
    if not params:
        return path + "?"      # varnishd keeps the '?' of an empty query
    params.sort()
    return path + "?" + "&".join(params)


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


def _fnmatch_regex(pattern: str, pathname: bool, noescape: bool, period: bool) -> str:
    """fnmatch(3) pattern -> Python regex, with FNM_PATHNAME / FNM_NOESCAPE / FNM_PERIOD."""
    out = []
    i, n = 0, len(pattern)
    any_char = "[^/]" if pathname else "."
    while i < n:
        c = pattern[i]
        # A leading period (start, or after '/' with pathname) only matches a literal period.
        leading = period and (i == 0 or (pathname and pattern[i - 1] == "/"))
        guard = "(?!\\.)" if leading else ""
        if c == "\\" and not noescape and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(guard + any_char + "*")
        elif c == "?":
            out.append(guard + any_char)
        elif c == "[":
            start = i + 2 if pattern[i + 1:i + 2] in ("!", "^") else i + 1
            end = pattern.find("]", start + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                neg = body[:1] in ("!", "^")
                if neg:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                extra = "/" if neg and pathname else ""
                out.append(guard + "[" + ("^" if neg else "") + body + extra + "]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@VMOD.func("fnmatch", "BOOL", [Param("pattern", "STRING"), Param("subject", "STRING"),
                               _opt("pathname", "BOOL", True), _opt("noescape", "BOOL", False),
                               _opt("period", "BOOL", False)])
def fnmatch(ctx: Context, pattern: str | None, subject: str | None, pathname: bool = True,
            noescape: bool = False, period: bool = False) -> bool:
    if pattern is None or subject is None:
        raise VCLFailure("std.fnmatch(): pattern or subject is NULL")
    regex = _fnmatch_regex(pattern, pathname, noescape, period)
    return re.fullmatch(regex, subject, re.S) is not None


# ------------------------------------------------------------------ files

_FILE_CACHE: dict[str, str | None] = {}


@VMOD.func("fileread", "STRING", [Param("path", "STRING")])
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


@VMOD.func("blobread", "BLOB", [Param("file", "STRING")])
def blobread(ctx: Context, file: str | None) -> bytes:
    """The file's bytes, read once and then cached; an unreadable file fails the task."""
    if file is None:
        raise VCLFailure("std.blobread(): no file name")
    if file not in _BLOB_CACHE:
        try:
            with open(file, "rb") as f:
                _BLOB_CACHE[file] = f.read()
        except OSError as exc:
            raise VCLFailure(f"std.blobread(): cannot read {file}: {exc.strerror}") from None
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
    live = getattr(be, "live", None)
    if live is None:
        return getattr(be, "host", None) is not None or getattr(be, "path", None) is not None
    flag = getattr(live, "healthy", True)
    return bool(flag(ctx) if callable(flag) else flag)


@VMOD.func("port", "INT", [Param("ip", "IP")])
def port(ctx: Context, ip: IP | None) -> int:
    return 0 if ip is None else int(ip.port or 0)


# ------------------------------------------------------------------ conversions


def _number(text: str) -> float:
    """A decimal number as varnishd's VNUM reads it: digits past the third decimal are ignored."""
    whole, dot, frac = text.partition(".")
    return float(f"{whole}{dot}{frac[:3]}") if dot and frac else float(whole or "0")


def _only_one(fname: str, given: list[object]) -> None:
    if sum(v is not None for v in given) > 1:
        raise VCLFailure(f"std.{fname}(): only one argument may be given")


def _fallback(fname: str, fallback, what: str):
    if fallback is None:
        raise VCLFailure(f"std.{fname}(): conversion failed: {what}")
    return fallback


_INT = re.compile(r"\s*(-?[0-9]+)\s*")      # varnishd takes no '+' sign
_REAL = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*")
_DURATION = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*(ms|s|m|h|d|w|y)\s*")
_DUR_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_BYTES = re.compile(r"\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*([bkmgtp]?)(b?)\s*", re.I)
_BYTE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}


@VMOD.func("integer", "INT", [_opt("s", "STRING"), _opt("fallback", "INT"), _opt("bool", "BOOL"),
                              _opt("bytes", "BYTES"), _opt("duration", "DURATION"), _opt("real", "REAL"),
                              _opt("time", "TIME")])
def integer(ctx: Context, s=None, fallback=None, bool_=None, bytes_=None, duration=None, real=None,
            time=None) -> int:
    _only_one("integer", [s, bool_, bytes_, duration, real, time])
    if bool_ is not None:
        return 1 if bool_ else 0
    for value in (bytes_, duration, real, time):
        if value is not None:
            if math.isnan(value) or math.isinf(value) or abs(value) >= 2 ** 63:
                return _fallback("integer", fallback, "out of range")
            return math.trunc(value)     # a C cast: toward zero
    if s is not None:
        m = _INT.fullmatch(s)
        if m and abs(int(m.group(1))) <= INT_MAX:
            return int(m.group(1))
    return _fallback("integer", fallback, repr(s))


# The deprecated 4.x conversions, still in 7.1's std: round half away from zero, fallback when the
# value is not finite or too big for an INT.
@VMOD.func("real2integer", "INT", [Param("r", "REAL"), Param("fallback", "INT")])
def real2integer(ctx: Context, r: float, fallback: int) -> int:
    if not math.isfinite(r) or abs(r) >= 2 ** 63:
        return fallback
    return int(round_(ctx, r))


@VMOD.func("time2integer", "INT", [Param("t", "TIME"), Param("fallback", "INT")])
def time2integer(ctx: Context, t: float, fallback: int) -> int:
    return real2integer(ctx, t, fallback)


@VMOD.func("real2time", "TIME", [Param("r", "REAL"), Param("fallback", "TIME")])
def real2time(ctx: Context, r: float, fallback: float) -> float:
    return r if math.isfinite(r) else fallback


@VMOD.func("time2real", "REAL", [Param("t", "TIME"), Param("fallback", "REAL")])
def time2real(ctx: Context, t: float, fallback: float) -> float:
    return t if math.isfinite(t) else fallback


@VMOD.func("real", "REAL", [_opt("s", "STRING"), _opt("fallback", "REAL"), _opt("integer", "INT"),
                            _opt("bool", "BOOL"), _opt("bytes", "BYTES"), _opt("duration", "DURATION"),
                            _opt("time", "TIME")])
def real(ctx: Context, s=None, fallback=None, integer_=None, bool_=None, bytes_=None, duration=None,
         time=None) -> float:
    _only_one("real", [s, integer_, bool_, bytes_, duration, time])
    if bool_ is not None:
        return 1.0 if bool_ else 0.0
    for value in (integer_, bytes_, duration, time):
        if value is not None:
            return float(value)
    if s is not None:
        m = _REAL.fullmatch(s)
        if m and abs(_number(m.group(1))) <= REAL_MAX:
            return _number(m.group(1))
    return _fallback("real", fallback, repr(s))


@VMOD.func("duration", "DURATION", [_opt("s", "STRING"), _opt("fallback", "DURATION"), _opt("real", "REAL"),
                                    _opt("integer", "INT")])
def duration(ctx: Context, s=None, fallback=None, real_=None, integer_=None) -> float:
    _only_one("duration", [s, real_, integer_])
    if real_ is not None:
        return float(real_)
    if integer_ is not None:
        return float(integer_)
    if s is not None:
        m = _DURATION.fullmatch(s)
        if m:
            return _number(m.group(1)) * _DUR_UNITS[m.group(2)]
    return _fallback("duration", fallback, repr(s))


@VMOD.func("bytes", "BYTES", [_opt("s", "STRING"), _opt("fallback", "BYTES"), _opt("real", "REAL"),
                              _opt("integer", "INT")])
def bytes_(ctx: Context, s=None, fallback=None, real_=None, integer_=None) -> float:
    _only_one("bytes", [s, real_, integer_])
    for value in (real_, integer_):
        if value is not None:
            if value < 0:
                return _fallback("bytes", fallback, "negative")
            return float(math.floor(value))
    if s is not None:
        m = _BYTES.fullmatch(s)
        if m:
            scale = _BYTE_UNITS[m.group(2).lower()]
            value = _number(m.group(1))
            if scale > 1 or value == int(value):      # no fraction of a byte
                return float(math.floor(value * scale))
    return _fallback("bytes", fallback, repr(s))


@VMOD.func("ip", "IP", [Param("s", "STRING"), _opt("fallback", "IP"), _opt("resolve", "BOOL", True),
                        _opt("p", "STRING")])
def ip(ctx: Context, s: str | None, fallback: IP | None = None, resolve: bool = True,
       p: str | None = None) -> IP:
    if s is not None:
        result = parse_ip(s, p or "80", resolve)
        if result is not None:
            return result
    return _fallback("ip", fallback, repr(s))


_ISO = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\s*")
_NUM_TIME = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*")


def _parse_time(s: str) -> float | None:
    m = _NUM_TIME.fullmatch(s)
    if m:
        return float(m.group(1))
    m = _ISO.fullmatch(s)
    if m:
        y, mo, d, h, mi, se = (int(x) for x in m.groups())
        return float(timegm((y, mo, d, h, mi, se, 0, 0, 0)))
    parsed = parsedate_tz(s)
    if parsed is None:
        return None
    tz = parsed[9] or 0
    return float(timegm(parsed[:9]) - tz)


@VMOD.func("time", "TIME", [_opt("s", "STRING"), _opt("fallback", "TIME"), _opt("real", "REAL"),
                            _opt("integer", "INT")])
def time(ctx: Context, s=None, fallback=None, real_=None, integer_=None) -> float:
    _only_one("time", [s, real_, integer_])
    for value in (real_, integer_):
        if value is not None:
            if value < 0:
                return _fallback("time", fallback, "negative")
            return float(value)
    if s is not None:
        t = _parse_time(s)
        if t is not None:
            return t
    return _fallback("time", fallback, repr(s))


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


@VMOD.func("timestamp", "VOID", [Param("s", "STRANDS")])
def timestamp(ctx: Context, s: str) -> None:
    now = _time.time()
    start = ctx.req_time or now
    ctx.log.append(("Timestamp", f"{s}: {now:.6f} {now - start:.6f} {now - start:.6f}"))


# ------------------------------------------------------------------ control


@VMOD.func("syntax", "BOOL", [Param("version", "REAL")])
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
    hook = getattr(ctx.session, "set_ip_tos", None)
    if hook is not None:
        hook(tos)


@VMOD.func("rollback", "VOID", [Param("h", "HTTP")])
def rollback(ctx: Context, h: HttpMessage) -> None:
    """Restore req or bereq to what it was on arrival (hook: server.vcl_rollback(ctx, message))."""
    hook = getattr(ctx.server, "vcl_rollback", None)
    if hook is None:
        raise VCLFailure("std.rollback() is not supported by this server")
    hook(ctx, h)


@VMOD.func("ban", "BOOL", [Param("spec", "STRING")])
def ban(ctx: Context, spec: str | None) -> bool:
    add = getattr(ctx.server, "ban", None)
    error = None
    if add is None:
        error = "no server to add the ban to"
    else:
        try:
            result = add(spec or "")
            if isinstance(result, str) and result:
                error = result
        except Exception as exc:  # noqa: BLE001 - any ban error is reported, as Varnish does
            error = str(exc)
    task = ctx.priv_task if isinstance(ctx.priv_task, dict) else {}
    task["std.ban_error"] = error or ""
    ctx.priv_task = task
    return error is None


@VMOD.func("ban_error", "STRING", [])
def ban_error(ctx: Context) -> str:
    task = ctx.priv_task if isinstance(ctx.priv_task, dict) else {}
    return task.get("std.ban_error", "")
