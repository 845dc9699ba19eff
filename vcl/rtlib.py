"""Helpers the generated code calls: type-to-string conversions, regexes, ACLs, C-style arithmetic.

Everything expensive (regex compilation, ACL networks) happens in constructors, which the generated
module runs once at load; the methods used per request only match.
"""

from __future__ import annotations

import base64
import math
import re
import time
from email.utils import formatdate

from vcl.acl import Acl  # noqa: F401 - generated code uses rt.Acl, rt.Regex, rt.regsub
from vcl.regex import Regex, regsub  # noqa: F401
from vcl.runtime import IP, Action, BackendSpec, VCLFailure

# VRT_SetHdr's validhdr(): control characters other than SP and HT (CR, LF, DEL...)
_BAD_HEADER_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def set_hdr(headers, name: str, value: str) -> None:
    """`set X.http.NAME = value`: a value a header cannot carry fails the task ("Bad header")
    instead of being sent."""
    if _BAD_HEADER_CHAR.search(value):
        raise VCLFailure(f"Bad header {name}: {value}")
    headers.set(name, value)


# ------------------------------------------------------------------ conversions to STRING


# VRT_INTEGER_MAX and VRT_DECIMAL_MAX: larger numbers have no string form and fail the task.
INT_MAX = 999999999999999
REAL_MAX = 999999999999.999


def s_int(value: int) -> str:
    """INT in string context (VRT_INT_string)."""
    if abs(value) > INT_MAX:
        raise VCLFailure("INT overflow converting to string (%X)" % value)   # VRT_INT_string: %jX
    return str(value)


def s_real(value: float | None) -> str:
    """REAL and DURATION in string context: 3 decimals (VRT_REAL_string); -0.0 prints "-0.000" as in C."""
    if value is None:
        value = 0.0
    if not abs(value) <= REAL_MAX:      # also NaN
        raise VCLFailure("REAL overflow converting to string (%e)" % value)  # VRT_REAL_string: %e
    return "%.3f" % value


def s_bytes(value: float | None) -> str:
    """BYTES in string context: a whole number of bytes (varnishd 7.1 prints 11264, not 11264.000);
    beyond VRT_INTEGER_MAX it fails as an INT does."""
    value = value or 0.0
    if not abs(value) <= INT_MAX:
        raise VCLFailure("INT overflow converting to string (%X)" % int(value))
    return "%.0f" % value


_last_time: list = [None, ""]


def s_time(value: float | None) -> str:
    """TIME in string context: an HTTP date (VRT_TIME_string). Dates have one-second resolution,
    so the last one formatted is reused (`now` is formatted on many requests each second)."""
    second = int(value or 0.0)
    last = _last_time
    if last[0] != second:
        last[1] = formatdate(second, usegmt=True)
        last[0] = second
    return last[1]


def s_bool(value: object) -> str:
    return "true" if value else "false"


def s_ip(value: IP | None) -> str:
    return "" if value is None else value.addr


def s_backend(value: object) -> str:
    """BACKEND in string context: its VCL name; "" when there is none."""
    if value is None:
        return ""
    name = getattr(value, "vcl_name", None) or getattr(value, "name", None)
    return str(name) if name is not None else str(value)


def s_named(value: object) -> str:
    """ACL, PROBE, STEVEDORE in string context: the name."""
    if value is None:
        return ""
    return str(getattr(value, "name", value))


def s_stevedore(value: str | None) -> str:
    """STEVEDORE in string context: "storage.NAME", its VCL symbol (VRT_STEVEDORE_string).
    A stevedore is represented by its name."""
    return "" if value is None else f"storage.{value}"


def set_line1(ctx, msg, field: str, value: str, name: str, tag: str) -> None:
    """`set req.url = ...` and the other line fields: never empty (VCL fails instead, as
    VRT_l_req_url and friends), and logged under the message's tag (ReqURL, BerespReason, ...) as
    varnishd's http_SetH logs every change."""
    if not value:
        raise VCLFailure(f"Setting {name} to empty string is not allowed")
    setattr(msg, field, value)
    ctx.log.append((tag, value))


def status_error(code: int, what: str) -> str | None:
    """Why a status VCL gives (`set resp.status`, `return (synth())`) is refused, or None: it must be
    0-65535 with its last three digits at least 100 (VRT_synth, VRT_l_resp_status)."""
    if code < 0:
        return f"{what} ({code}) is negative"
    if code > 65535:
        return f"{what} ({code}) > 65535"
    if code % 1000 < 100:
        return f"illegal {what} ({code}) (..0##)"
    return None


def status_action(name: str, code: int, reason: str = "") -> Action:
    """return (synth(code, reason)) / return (error(...)) with a status not known at load."""
    err = status_error(code, f"return({name}()) status code")
    if err is not None:
        raise VCLFailure(err)
    return Action(name, (code, reason))


def set_status(ctx, msg, value: int, name: str, prefix: str) -> None:
    """`set beresp.status` / `set resp.status` (VRT_l_beresp_status): 100-65535 with the last three
    digits at least 100; the reason becomes the standard one for status % 1000 (VCL may use the
    digits above for its own signalling: only status % 1000 reaches the wire and the log)."""
    err = status_error(value, name)
    if err is not None:
        raise VCLFailure(err)
    from cacheserver.http1 import reason_for  # the server's reason table
    msg.status = value
    msg.reason = reason_for(value % 1000)
    ctx.log += ((prefix + "Status", "%03d" % (value % 1000)), (prefix + "Reason", msg.reason))


def s_blob(value: bytes | None) -> str:
    """BLOB in string context: base64 between colons, an RFC 8941 byte sequence (VRT_BLOB_string)."""
    if value is None:
        return ""
    return ":" + base64.b64encode(bytes(value)).decode("ascii") + ":"


_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}
_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_upper(s: str) -> str:
    """toupper(3) in the C locale, as varnishd: only ASCII letters change."""
    return s.translate(_UPPER)


def ascii_lower(s: str) -> str:
    return s.translate(_LOWER)


def s_null(value: str | None) -> str:
    """An unset STRING printed by C's printf: "(null)"."""
    return "(null)" if value is None else value


def named(obj: object, name: str) -> object:
    """A `new NAME = ...` object learns its VCL name as obj.vcl_name (unless it set one itself):
    a director prints as its name, like any backend."""
    if getattr(obj, "vcl_name", None) is None:
        try:
            obj.vcl_name = name
        except AttributeError:
            pass   # objects with __slots__ and no vcl_name slot keep no name
    return obj


def resolve_backend(value: object, ctx, depth: int = 0):
    """The BackendSpec a BACKEND value stands for: a BackendSpec is itself; a director (any object
    with resolve(ctx), e.g. from vmod directors) is asked, possibly through other directors.
    None: no backend (e.g. `backend default none;`, or a director with no healthy backend)."""
    while value is not None and not isinstance(value, BackendSpec):
        resolve = getattr(value, "resolve", None)
        if resolve is None or depth > 16:
            return None
        value = resolve(ctx)
        depth += 1
    return value


def backend_name(value: object) -> str | None:
    return None if value is None else s_backend(value)


def backend_ip(value: object) -> IP | None:
    host = getattr(value, "host", None)
    return IP(host, int(getattr(value, "port", 0) or 0)) if host else None


def streq(a: str | None, b: str | None) -> bool:
    """VRT_strcmp(a, b) == 0: an unset string equals nothing, not even another unset one."""
    return a is not None and b is not None and a == b


def strcmp(a: str | None, b: str | None) -> int:
    if a is None or b is None:
        return 1
    return (a > b) - (a < b)


# ------------------------------------------------------------------ arithmetic with C semantics


def idiv(a: int, b: int) -> int:
    """INT / INT truncates toward zero, as C does."""
    if b == 0:
        raise VCLFailure("Division by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def imod(a: int, b: int) -> int:
    if b == 0:
        raise VCLFailure("Division by zero")
    return a - b * idiv(a, b)


def fdiv(a: float, b: float) -> float:
    if b == 0:
        raise VCLFailure("Division by zero")
    return a / b


# ------------------------------------------------------------------ misc


def storage_var(ctx, name: str, field: str):
    """storage.NAME.free_space/used_space/happy, from the server's storage when it exposes one."""
    server = getattr(ctx, "server", None)
    getter = getattr(server, "storage_var", None)
    if getter is not None:
        return getter(name, field)
    return True if field == "happy" else 0.0


def fail(message: str) -> None:
    raise VCLFailure(message)


def internal_failure(sub: str, exc: Exception) -> VCLFailure:
    """Any other exception inside compiled VCL: a VCL failure naming the subroutine and the error."""
    return VCLFailure(f"{sub}: {type(exc).__name__}: {exc}")


def fmod(a: float, b: float) -> float:
    if b == 0:
        raise VCLFailure("Division by zero")
    return math.fmod(a, b)


def set_resp_do_esi(ctx, value: bool) -> None:
    """resp.do_esi = false turns ESI processing off for this delivery (req->disable_esi); too late
    once VCL has set resp.filters, as in varnishd."""
    if ctx.resp_filters is not None:
        raise VCLFailure("resp.filters are already fixed, resp.do_esi is undefined")
    ctx.esi = bool(value)


def set_beresp_vfp_flag(ctx, name: str, value: bool) -> None:
    """beresp.do_esi/do_gzip/do_gunzip choose the fetch filters: too late once VCL has set
    beresp.filters (VRT_l_beresp_*: the flag would be undefined). do_stream is not one of them."""
    if ctx.beresp_filters is not None:
        raise VCLFailure(f"beresp.filters are already fixed, beresp.{name} is undefined")
    setattr(ctx, name, value)


def set_req_esi(ctx, value: bool) -> None:
    """req.esi (VCL 4.0): heeded in the top request only, as varnishd's VRT_l_req_esi (an include
    cannot turn ESI off under its parent); resp.do_esi has no such limit."""
    if ctx.esi_level == 0:
        ctx.esi = bool(value)


def body_set(ctx, text: str) -> None:
    """set resp.body / beresp.body = ...: replace the synthetic body."""
    ctx.synth_body = [text]


def body_add(ctx, text: str) -> None:
    """synthetic(...) and set resp.body += ...: append to the synthetic body."""
    if ctx.synth_body is None:
        ctx.synth_body = [text]
    else:
        ctx.synth_body.append(text)


def hash_data(ctx, value: str | None) -> None:
    """hash_data(): each part is followed by a NUL separator; an unset string is itself one NUL byte
    (HSH_AddString(NULL) hashes a zero byte), so it still changes the hash, as in Varnish."""
    if value is None:
        value = "\0"
    if ctx.hash_parts is None:
        ctx.hash_parts = [value]
    else:
        ctx.hash_parts.append(value)


TASK_FINI = "__task_fini__"


def on_task_end(ctx, fn) -> None:
    """Run fn when the task of ctx ends (a PRIV_TASK's fini: vmods' end-of-task work)."""
    task = ctx.priv_task
    if not isinstance(task, dict):
        task = ctx.priv_task = {}
    task.setdefault(TASK_FINI, []).append(fn)


def end_task(ctx) -> None:
    """The task of ctx is over: its PRIV_TASK finalizers run, in the order they were added."""
    task = ctx.priv_task
    if isinstance(task, dict):
        for fn in task.pop(TASK_FINI, ()):
            fn()


def restart_task(ctx) -> None:
    """std.rollback(): the task's finalizers run and it starts again with no PRIV_TASK."""
    if ctx.priv_task:
        end_task(ctx)
        ctx.priv_task = None


def hash_strands(ctx, parts: tuple) -> None:
    """hash_data() of a concatenation: the parts stay apart (cacheserver/fsm.py hashes each, an unset
    one as a NUL byte, then one separator), as VRT_hashdata's STRANDS."""
    if ctx.hash_parts is None:
        ctx.hash_parts = [parts]
    else:
        ctx.hash_parts.append(parts)


def ban_string(ctx, expression: str | None) -> str | None:
    """VRT_ban_string (ban() and std.ban()): add the ban; the error text, logged as VCL_Error, or None.

    The conditions' shape is checked first, with VCL's own words (the CLI's differ)."""
    from cacheserver.bans import BanError, _build_test  # the server's ban rules

    error = None
    # VAV_Parse as VRT_ban_string calls it: words at blanks, quotes are not special
    words = expression.split() if expression is not None else []
    if expression is None:
        error = "Null argument"
    i = 0
    while error is None:
        rest = len(words) - i
        if rest < 3:
            error = ("No ban conditions found.", "Expected comparison operator.", "Expected second operand.")[rest]
            break
        try:
            _build_test(words[i], words[i + 1], words[i + 2])
        except BanError as exc:
            error = str(exc)
            break
        if rest == 3:
            break
        if words[i + 3] != "&&":
            error = f'Expected && between conditions, found "{words[i + 3]}"'
        i += 4
    if error is None:
        add = getattr(getattr(ctx, "server", None), "ban", None)
        if add is None:
            error = "no server to add the ban to"
        else:
            try:
                result = add(words)
                error = result if isinstance(result, str) and result else None
            except Exception as exc:  # noqa: BLE001 - any ban error is reported in the log, like Varnish
                error = str(exc)
    if error is not None:
        ctx.log.append(("VCL_Error", f"ban(): {error}"))
    return error


def ban(ctx, expression: str | None) -> None:
    """ban(): hand the ban expression to the server; errors are logged, not raised (like Varnish)."""
    ban_string(ctx, expression)


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _after_token(element: str, token: str) -> str | None:
    """http_istoken: the rest of a list element that begins with `token` (any case), else None."""
    n = len(token)
    if element[:n].lower() != token or (len(element) > n and element[n] in _TCHAR):
        return None
    return element[n:]


def _qvalue(params: str) -> float:
    """http_GetHdrQ on what follows the token: the first `q=` (lower-case q only) read as varnishd
    reads it (digits, then '.' and digits); no q parameter is 1, a q that is not a number 0."""
    for param in params.split(";"):
        param = param.strip(" \t")
        if param[:1] != "q":
            continue
        rest = param[1:].lstrip(" \t")
        if rest[:1] == "=":
            value = rest[1:].lstrip(" \t")
            break
    else:
        return 1.0
    if not value or not (value[0] == "." or "0" <= value[0] <= "9"):
        return 0.0
    i, q = 0, 0.0
    while i < len(value) and "0" <= value[i] <= "9":
        q = q * 10 + (ord(value[i]) - 48)
        i += 1
    if value[i:i + 1] != ".":
        return q
    f = 0.1
    for ch in value[i + 1:]:
        if not "0" <= ch <= "9":
            break
        q += f * (ord(ch) - 48)
        f *= 0.1
    return q


def req_gzip(value: str | None) -> bool:
    """RFC2616_Req_Gzip (req.can_gzip): an `x-gzip` element (any parameters), or the first `gzip`
    element with a q-value above 0; tokens match in any case, `q` only in lower case."""
    if not value:
        return False
    elements = [e.strip(" \t") for e in value.split(",")]
    if any(_after_token(e, "x-gzip") is not None for e in elements):
        return True
    for element in elements:
        rest = _after_token(element, "gzip")
        if rest is not None:
            return _qvalue(rest) > 0
    return False


def beresp_uncacheable_set(ctx, value: bool) -> None:
    """beresp.uncacheable = value: once true it stays so (VRT_l_beresp_uncacheable complains), and
    each assignment writes the TTL record as the timers' do."""
    if ctx.beresp_uncacheable and not value:
        ctx.log.append(("VCL_Error", "Ignoring attempt to reset beresp.uncacheable"))
    elif value:
        ctx.beresp_uncacheable = True
    _ttl_record(ctx)


def beresp_timer_set(ctx, field: str, value: float) -> None:
    """beresp.ttl/grace/keep = value, and the TTL record varnishd writes for it ("VCL ttl grace keep
    origin cacheable"; the TTL counted from the object's origin, as VRT_l_beresp_ttl stores it)."""
    setattr(ctx, field, value)
    _ttl_record(ctx)


def _ttl_record(ctx) -> None:
    age = ctx.beresp_age or 0.0
    ctx.log.append(("TTL", "VCL %.0f %.0f %.0f %.0f %s" % (
        (ctx.beresp_ttl or 0.0) + age, ctx.beresp_grace or 0.0, ctx.beresp_keep or 0.0, time.time() - age,
        "uncacheable" if getattr(ctx, "beresp_uncacheable", False) else "cacheable")))
