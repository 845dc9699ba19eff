"""HTTP caching rules as Varnish applies them (cache_rfc2616.c): TTLs, dates, collected headers."""

from __future__ import annotations

import re

from vcl.runtime import Context, Headers
from vmods.vnum import date_postel, parse_http_date

# Statuses RFC2616_Ttl gives a TTL to; others get -1 (uncacheable by the built-in VCL).
_CACHEABLE = frozenset({200, 203, 204, 300, 301, 304, 404, 410, 414})
_CACHEABLE_IF_TOLD = frozenset({302, 307})
_UINT_MAX = 2 ** 32 - 1
_SEPCTL = frozenset('()<>@,;:\\"/[]?={} \t') | frozenset(chr(c) for c in range(32)) | {"\x7f"}
_ULONG = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


def rfc2616_time(text: str) -> int:
    """rfc2616_time(): a number of seconds (strtoul), 0 when anything but blanks, ',' or '.' follows."""
    if text.startswith("-"):
        return 0
    m = _ULONG.match(text)
    if not m:
        return 0
    val = int(m.group(2))
    if val > 2 ** 64 - 1:
        val = 2 ** 64 - 1          # strtoul: ULONG_MAX when out of range, sign or not
    elif m.group(1) == "-" and val:
        val = 2 ** 64 - val        # strtoul negates in unsigned arithmetic
    if val > _UINT_MAX:
        return _UINT_MAX
    rest = text[m.end():].lstrip(" \t")
    return val if rest[:1] in ("", ",", ".") else 0


def header_field(value: str, name: str) -> str | None | bool:
    """http_GetHdrField: the value after `name=` in a comma list, None without '=', False if absent.

    `name` must begin an element and be followed by a separator, a control or the end (so `xmax-age`
    is not `max-age`); the first element that matches decides.
    """
    h, e, fl, lname = 0, len(value), len(name), name.lower()
    while h + fl <= e:
        if value[h] in " \t\r\n,":
            h += 1
            continue
        if (h + fl == e or value[h + fl] in _SEPCTL) and value[h:h + fl].lower() == lname:
            h += fl
            while h < e and value[h] in " \t":
                h += 1
            if h < e and value[h] == "=":
                h += 1
                while h < e and value[h] in " \t":
                    h += 1
                return value[h:]
            return None
        while h < e and value[h] != ",":
            h += 1
    return False


# Dates parsed lately: a backend's Date changes once a second and its Expires seldom, and parsing one
# costs more than the rest of compute_ttl. Cleared when full.
_DATES: dict[tuple[str, bool], float | None] = {}
_DATES_MAX = 64


def parse_date(text: str | None) -> float | None:
    """VTIM_parse, strict as varnishd (exact case, two-digit day, GMT) unless feature
    http_date_postel; None when it does not parse."""
    if not text:
        return None
    key = (text, date_postel())
    when = _DATES.get(key, _DATES)
    if when is not _DATES:
        return when
    when = parse_http_date(text) or None
    if len(_DATES) >= _DATES_MAX:
        _DATES.clear()
    _DATES[key] = when
    return when


def compute_ttl(ctx: Context, params, now: float, log: bool = False, uncacheable: bool = False) -> float:
    """beresp.ttl/grace/keep as RFC2616_Ttl sets them; returns the object's origin time (now - Age).
    With `log`, the TTL record varnishd writes for it ("RFC ttl grace keep now origin date expires
    max-age cacheable")."""
    headers = ctx.beresp.headers
    age_text = headers.get("Age")
    age = float(rfc2616_time(age_text)) if age_text is not None else 0.0
    ctx.beresp_age = age
    ctx.beresp_grace = params.default_grace
    ctx.beresp_keep = params.default_keep
    status = ctx.beresp.status
    # Several Cache-Control fields were joined into one before this (http_CollectHdr).
    cc = ", ".join(headers.get_all("Cache-Control")) if "Cache-Control" in headers else None
    ttl = -1.0
    date = parse_date(headers.get("Date")) or 0.0
    expires = parse_date(headers.get("Expires")) or 0.0
    max_age_seen = 0
    if status in _CACHEABLE or status in _CACHEABLE_IF_TOLD:
        ttl = params.default_ttl if status in _CACHEABLE else -1.0
        max_age = None
        if cc is not None:
            max_age = header_field(cc, "s-maxage")
            if max_age is False:
                max_age = header_field(cc, "max-age")
        if isinstance(max_age, str):
            ttl = float(rfc2616_time(max_age))
            max_age_seen = int(ttl)
        else:
            if expires == 0:
                pass                         # no (usable) Expires: the default stands
            elif expires < date:
                ttl = 0.0                    # the backend says it has expired already
            elif date == 0 or abs(date - now) < params.clock_skew:
                ttl = 0.0 if expires < now else expires - now
            else:
                ttl = float(int(expires - date))    # clocks disagree: Expires relative to Date
        if ttl >= 0 and cc is not None:
            swr = header_field(cc, "stale-while-revalidate")
            if isinstance(swr, str):
                ctx.beresp_grace = float(rfc2616_time(swr))
    # VCL reads what is left of the TTL (VRT_r_beresp_ttl: a TTL <= 0 reads as 0, minus the age).
    ctx.beresp_ttl = max(ttl, 0.0) - age
    if log:
        ctx.log.append(("TTL", "RFC %.0f %.0f %.0f %.0f %.0f %.0f %.0f %d %s" % (
            ttl, ctx.beresp_grace, ctx.beresp_keep, now, now - age, date, expires, max_age_seen,
            "uncacheable" if uncacheable else "cacheable")))
    return now - age


def collect_header(headers: Headers, name: str) -> None:
    """http_CollectHdr: several fields of one name become one, comma-joined, where the first was."""
    values = headers.get_all(name)
    if len(values) > 1:
        headers.set(name, ", ".join(values))


def bad_vary(vary: str | None) -> bool:
    """A Vary varnishd cannot record (a field name over 127 bytes) makes the response a pass."""
    return vary is not None and any(len(part.strip()) > 127 for part in vary.split(","))
