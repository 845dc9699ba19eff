"""HTTP caching rules as Varnish applies them (cache_rfc2616.c): TTLs, dates, collected headers."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

from vcl.runtime import Context, Headers

# Statuses RFC2616_Ttl gives a TTL to; others get -1 (uncacheable by the built-in VCL).
_CACHEABLE = frozenset({200, 203, 204, 300, 301, 304, 404, 410, 414})
_CACHEABLE_IF_TOLD = frozenset({302, 307})
_CC_FIELD = re.compile(r"(?:^|,)\s*(s-maxage|max-age|stale-while-revalidate)\s*(?:=\s*\"?(-?\d*))?",
                       re.IGNORECASE)
_AGE = re.compile(r"\s*(\d+)")


def parse_date(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def compute_ttl(ctx: Context, params, now: float) -> float:
    """beresp.ttl/grace/keep as RFC2616_Ttl sets them; returns the object's origin time (now - Age)."""
    headers = ctx.beresp.headers
    age = 0.0
    age_text = headers.get("Age")
    if age_text:
        digits = _AGE.match(age_text)
        if digits:
            age = float(digits.group(1))
    ctx.beresp_age = age
    ctx.beresp_grace = params.default_grace
    ctx.beresp_keep = params.default_keep
    status = ctx.beresp.status
    cc = {}
    for cc_text in headers.get_all("Cache-Control"):
        for m in _CC_FIELD.finditer(cc_text):
            cc.setdefault(m.group(1).lower(), m.group(2) or "")
    ttl = -1.0
    if status in _CACHEABLE or status in _CACHEABLE_IF_TOLD:
        ttl = params.default_ttl if status in _CACHEABLE else -1.0
        max_age = cc.get("s-maxage", cc.get("max-age"))
        if max_age is not None and max_age != "":
            ttl = 0.0 if max_age.startswith("-") else float(max_age)
        else:
            expires = parse_date(headers.get("Expires")) if "Expires" in headers else None
            date = parse_date(headers.get("Date"))
            if "Expires" in headers:
                if expires is None:
                    ttl = 0.0        # an unparseable Expires means "already expired"
                elif date is not None and expires < date:
                    ttl = 0.0
                elif date is None or abs(date - now) < 10:
                    ttl = max(expires - now, 0.0)
                else:
                    ttl = float(int(expires - date))
        swr = cc.get("stale-while-revalidate")
        if ttl >= 0 and swr:
            ctx.beresp_grace = 0.0 if swr.startswith("-") else float(swr)
    # VCL sees the remaining TTL; the object keeps its origin time.
    ctx.beresp_ttl = ttl - age if ttl > 0 else ttl
    return now - age


def collect_header(headers: Headers, name: str) -> None:
    """http_CollectHdr: several fields of one name become one, comma-joined, where the first was."""
    values = headers.get_all(name)
    if len(values) > 1:
        headers.set(name, ", ".join(values))


def bad_vary(vary: str | None) -> bool:
    """A Vary varnishd cannot record (a field name over 127 bytes) makes the response a pass."""
    return vary is not None and any(len(part.strip()) > 127 for part in vary.split(","))
