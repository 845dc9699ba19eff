"""Range requests (cache_range.c) and conditional requests (RFC2616_Do_Cond) answered from cache."""

from __future__ import annotations

from cacheserver.rfc2616 import parse_date
from vcl.runtime import HttpMessage


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
