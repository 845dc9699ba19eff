"""vmod cookie (Varnish 7.1): parse a Cookie header into the task's cookie list, inspect and change
it, and write it back with get_string().

The list lives in PRIV_TASK (ctx.priv_task), so the client and backend tasks each have their own.
Parsing, filtering and formatting follow vmod_cookie.c, quirks included: a name runs to the next '=',
empty names or values are ignored, and parse() of an empty header keeps the current list.
"""

from __future__ import annotations

from vcl.regex import Regex
from vcl.rtlib import s_time
from vcl.runtime import Context
from vmods import Param, Vmod

VMOD = Vmod("cookie")

_SPACE = " \t\n\v\f\r"      # isspace(3) in the C locale


def _jar(ctx: Context) -> dict[str, str]:
    """The task's cookies, name -> value, in the order they were set."""
    task = ctx.priv_task
    if not isinstance(task, dict):
        task = ctx.priv_task = {}
    jar = task.get("cookie")
    if jar is None:
        jar = task["cookie"] = {}
    return jar


def _debug(ctx: Context, text: str) -> None:
    ctx.log.append(("Debug", text))


@VMOD.func("parse", "VOID", [Param("cookieheader", "STRING")])
def parse(ctx: Context, cookieheader: str | None) -> None:
    if not cookieheader:
        _debug(ctx, "cookie: nothing to parse")
        return
    jar = _jar(ctx)
    jar.clear()              # parsing twice in one task starts over
    p, n, count = 0, len(cookieheader), 0
    while p < n:
        while p < n and cookieheader[p] in _SPACE:
            p += 1
        eq = cookieheader.find("=", p)
        if eq < 0:
            break
        name = cookieheader[p:eq]
        end = cookieheader.find(";", eq + 1)
        if end < 0:
            end = n
        set_(ctx, name, cookieheader[eq + 1:end])
        count += 1
        if end >= n:
            break
        p = end + 1
    _debug(ctx, f"cookie: parsed {count} cookies.")


@VMOD.func("set", "VOID", [Param("cookiename", "STRING"), Param("value", "STRING")])
def set_(ctx: Context, cookiename: str | None, value: str | None) -> None:
    if not cookiename or not value:
        return
    _jar(ctx)[cookiename] = value


@VMOD.func("isset", "BOOL", [Param("cookiename", "STRING")])
def isset(ctx: Context, cookiename: str | None) -> bool:
    return bool(cookiename) and cookiename in _jar(ctx)


@VMOD.func("get", "STRING", [Param("cookiename", "STRING")])
def get(ctx: Context, cookiename: str | None) -> str | None:
    if not cookiename:
        return None
    return _jar(ctx).get(cookiename)


@VMOD.func("get_re", "STRING", [Param("expression", "REGEX")])
def get_re(ctx: Context, expression: Regex) -> str | None:
    """The value of the first cookie whose name matches."""
    for name, value in _jar(ctx).items():
        _debug(ctx, f"cookie: checking {name}")
        if expression.match(name):
            return value
    return None


@VMOD.func("delete", "VOID", [Param("cookiename", "STRING")])
def delete(ctx: Context, cookiename: str | None) -> None:
    if cookiename:
        _jar(ctx).pop(cookiename, None)


@VMOD.func("clean", "VOID", [])
def clean(ctx: Context) -> None:
    _jar(ctx).clear()


def _names(listing: str | None) -> set[str]:
    """A comma-separated list of names; leading whitespace of each name is skipped."""
    names = set()
    for item in (listing or "").split(","):
        item = item.lstrip(_SPACE)
        if item:
            names.add(item)
    return names


def _keep_only(ctx: Context, wanted) -> None:
    jar = _jar(ctx)
    for name in [n for n in jar if not wanted(n)]:
        del jar[name]


@VMOD.func("keep", "VOID", [Param("filterstring", "STRING")])
def keep(ctx: Context, filterstring: str | None) -> None:
    names = _names(filterstring)
    _keep_only(ctx, lambda n: n in names)


@VMOD.func("filter", "VOID", [Param("filterstring", "STRING")])
def filter_(ctx: Context, filterstring: str | None) -> None:
    names = _names(filterstring)
    _keep_only(ctx, lambda n: n not in names)


def _re_filter(ctx: Context, expression: Regex, keep_matching: bool) -> None:
    jar = _jar(ctx)
    for name in list(jar):
        if expression.match(name) != keep_matching:
            what = "Removing cookie" if keep_matching else "Removing matching cookie"
            _debug(ctx, f"{what} {name} (value: {jar[name]})")
            del jar[name]


@VMOD.func("keep_re", "VOID", [Param("expression", "REGEX")])
def keep_re(ctx: Context, expression: Regex) -> None:
    _re_filter(ctx, expression, True)


@VMOD.func("filter_re", "VOID", [Param("expression", "REGEX")])
def filter_re(ctx: Context, expression: Regex) -> None:
    _re_filter(ctx, expression, False)


@VMOD.func("get_string", "STRING", [])
def get_string(ctx: Context) -> str:
    """The cookies as a Cookie header value: "a=1; b=2;" (empty when there are none)."""
    return " ".join(f"{name}={value};" for name, value in _jar(ctx).items())


@VMOD.func("format_date", "STRING", [Param("now", "TIME"), Param("timedelta", "DURATION")])
def format_date(ctx: Context, now: float, timedelta: float) -> str:
    """An HTTP date (RFC 1123) for now + timedelta, e.g. for an Expires attribute."""
    return s_time(now + timedelta)


# 7.1 keeps the old name as an alias
VMOD.functions["format_rfc1123"] = VMOD.functions["format_date"]
