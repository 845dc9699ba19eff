"""Range requests (cache_range.c) and conditional requests (RFC2616_Do_Cond) answered from cache."""

from __future__ import annotations

import math

from cacheserver.rfc2616 import parse_date
from vcl.runtime import Headers, HttpMessage


class RangeError(Exception):
    """The Range header cannot be satisfied: 416."""


_SSIZE_MAX = 2 ** 63 - 1


def _digits(value: str, i: int) -> tuple[int, int, bool]:
    """The ASCII digits at value[i:] as vrg_dorange reads them: (number, next index, any digit)."""
    j = i
    while j < len(value) and "0" <= value[j] <= "9":
        j += 1
    return (int(value[i:j]) if j > i else 0), j, j > i


def parse_range(value: str, length: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range of an object of `length` bytes (vrg_dorange).

    None means "ignore the header and send the whole object" (200); RangeError means 416. No blank
    is allowed anywhere after `bytes=` and only one range is served, as varnishd 7.1.
    """
    if length < 0:
        return None                  # length still unknown (streaming): send it all
    if value[:6].lower() != "bytes=":
        raise RangeError("Not Bytes")
    lo, i, has_lo = _digits(value, 6)
    if lo > _SSIZE_MAX:
        raise RangeError("Low number too big")
    if value[i:i + 1] != "-":
        raise RangeError("Missing hyphen")
    hi, i, has_hi = _digits(value, i + 1)
    if hi > _SSIZE_MAX:
        raise RangeError("High number too big")
    if i != len(value):
        raise RangeError("Trailing stuff")
    if not has_lo and not has_hi:
        raise RangeError("Neither high nor low")
    if not has_lo:
        if hi == 0:
            raise RangeError("No low, high is zero")
        lo, hi = max(length - hi, 0), length - 1
    elif hi >= length or not has_hi:
        hi = length - 1
    if hi < lo:
        raise RangeError("high smaller than low")
    # vrg_dorange's "low range beyond object" cannot happen with a known length: hi <= length - 1
    # already, so lo >= length is lo > hi above.
    return lo, hi


def _weak(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def not_modified(req: HttpMessage, resp: HttpMessage, t_req: float, last_modified: float) -> bool:
    """RFC2616_Do_Cond: True when the client's If-None-Match / If-Modified-Since says its copy is current.

    If-None-Match alone decides when present: its whole value against the ETag (no lists, no `*`),
    weakly, or strongly when the request has a Range. `last_modified` is the object's own time for
    If-Modified-Since when the response has no Last-Modified.
    """
    headers = req.headers
    inm = headers.get("If-None-Match")
    if inm is not None:
        etag = resp.headers.get("ETag")
        if etag is None:
            return False
        if "Range" in headers:
            return not inm.startswith("W/") and not etag.startswith("W/") and inm == etag
        return _weak(inm) == _weak(etag)
    ims_text = headers.get("If-Modified-Since")
    if ims_text is None:
        return False
    ims = parse_date(ims_text)
    if not ims or ims > t_req:
        return False
    lm_text = resp.headers.get("Last-Modified")
    if lm_text is not None:
        lm = parse_date(lm_text)
        return bool(lm) and lm <= ims
    return last_modified <= ims


def object_last_modified(stored: Headers, t_origin: float) -> float:
    """OA_LASTMODIFIED: the stored Last-Modified (0 when it does not parse), else the second the
    object was made (floor of t_origin); never the Date header."""
    text = stored.get("Last-Modified")
    if text is not None:
        return parse_date(text) or 0.0
    return float(math.floor(t_origin))


def if_range_matches(req: Headers, resp: Headers) -> bool:
    """vrg_ifrange: whether a Range is served given If-Range (absent: yes).

    A strong ETag must equal the response's strong ETag; a date must equal the response's
    Last-Modified, which needs a Date and must not be more than 60s after it.
    """
    cond = req.get("If-Range")
    if cond is None:
        return True
    if cond.startswith("W/"):
        return False
    if cond.startswith('"'):
        etag = resp.get("ETag")
        return etag is not None and not etag.startswith("W/") and etag == cond
    when = parse_date(cond)
    date = parse_date(resp.get("Date"))
    lm = parse_date(resp.get("Last-Modified"))
    if not when or not date or not lm or lm > date + 60:
        return False
    return lm == when
