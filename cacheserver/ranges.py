"""Range requests (cache_range.c) and conditional requests (RFC2616_Do_Cond) answered from cache."""

from __future__ import annotations

from cacheserver.rfc2616 import parse_date
from vcl.runtime import HttpMessage


class RangeError(Exception):
    """The Range header cannot be satisfied: 416."""


def parse_range(value: str, length: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range of an object of `length` bytes.

    None means "ignore the header and send the whole object" (200); RangeError means 416.
    """
    if length < 0:
        return None                  # length still unknown (streaming): send it all
    if value[:6].lower() != "bytes=":
        raise RangeError("Not Bytes")
    spec = value[6:].strip()
    lo_text, sep, hi_text = spec.partition("-")
    if not sep:
        raise RangeError("Missing hyphen")
    lo_text, hi_text = lo_text.strip(), hi_text.strip()
    if (lo_text and not lo_text.isdigit()) or (hi_text and not hi_text.isdigit()):
        raise RangeError("Trailing stuff")
    if not lo_text and not hi_text:
        raise RangeError("Neither high nor low")
    if not lo_text:
        suffix = int(hi_text)
        if length < 0:
            return None
        lo, hi = max(length - suffix, 0), length - 1
    else:
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else -1
        if length >= 0 and (hi < 0 or hi >= length):
            hi = length - 1
        if hi < 0:
            return None
    if lo > hi:
        raise RangeError("low > high")
    if length >= 0 and lo >= length:
        raise RangeError("low range beyond object")
    return lo, hi


def _etag_weak(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def not_modified(req: HttpMessage, resp: HttpMessage, t_req: float, last_modified: float) -> bool:
    """True when the client's If-None-Match / If-Modified-Since says its copy is current.

    `last_modified` is the object's own time (Last-Modified, else Date, else fetch time) for IMS.
    """
    headers = req.headers
    inm = headers.get("If-None-Match")
    etag = resp.headers.get("ETag")
    if inm is not None and etag is not None:
        if inm.strip() == "*":
            return True
        mine = _etag_weak(etag)
        return any(_etag_weak(t) == mine for t in inm.split(","))
    ims_text = headers.get("If-Modified-Since")
    if ims_text is None:
        return False
    ims = parse_date(ims_text)
    if ims is None or ims > t_req:
        return False
    lm_text = resp.headers.get("Last-Modified")
    if lm_text is not None:
        lm = parse_date(lm_text)
        return lm is not None and lm <= ims
    return last_modified <= ims
