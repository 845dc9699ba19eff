"""Why varnishd 7.1 refuses a client request head, and how its log says so.

Our parser (llhttp) refuses a head by its own rules; the answer is varnishd's bare 400 either way,
but the request's transaction in the log follows varnishd's checks, which this module runs again on
the raw head: HTTP1_DissectRequest (the request line, the header lines, the body's framing) and
the first checks of cnt_recv (one Host, one Content-Length).

A head refused by the dissection logs BogoHeader (for a bad header line) and HttpGarbage: the
buffer as received, cut where the dissection had put its first NUL (after the method, once that
was read). One refused by cnt_recv was dissected: its request is logged (ReqStart, the request
line and headers), then a BogoHeader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# varnishd's character classes (vct.h)
_SP = b" \t"
_LWS = b" \t\r\n"
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
HDR_FIRST = 5          # the start line takes varnishd's first five header slots


def _ctl(c: int) -> bool:
    return c < 0x20 or c == 0x7F


def _hdrval(c: int) -> bool:
    return c == 0x09 or not _ctl(c)


def _crlf(buf: bytes, i: int) -> int:
    """The length of a line end at i: 2 for CRLF, 1 for a bare LF, 0 for none (vct_iscrlf)."""
    if buf[i:i + 2] == b"\r\n":
        return 2
    return 1 if buf[i:i + 1] == b"\n" else 0


@dataclass
class Refusal:
    """What varnishd logs of a refused request head, beyond its Begin and Timestamps."""
    bogo: str | None = None             # the BogoHeader record, if any
    garbage: bytes | None = None        # HttpGarbage's text: set when the dissection refused the head
    method: str = ""                    # dissected (garbage is None): the request line and headers
    url: str = ""
    proto: str = ""
    headers: list[str] = field(default_factory=list)
    head_bytes: int = 0                 # ReqAcct's header bytes
    passes: bool = False                # varnishd takes the head: only our parser refused it
    incomplete: bool = False            # the head's end has not come: varnishd would read on

    @property
    def dissected(self) -> bool:
        return self.garbage is None


def _cut(buf: bytes, end: int | None = None) -> bytes:
    """The buffer as varnishd's "%.*s" prints it: up to `end`, and never past a NUL."""
    text = buf if end is None else buf[:end]
    nul = text.find(b"\0")
    return text if nul < 0 else text[:nul]


def _dissect(raw: bytes, hdr_len: int, max_hdr: int) -> Refusal | tuple:
    """http1_splitline and http1_dissect_hdrs on a head, request or response: a Refusal when they
    refuse it, else (its three start-line fields, its header lines, its size, the Refusal to give
    if a later check refuses it)."""
    # -- the request line (http1_splitline) --
    n = len(raw)
    p = 0
    while p < n and raw[p] in _LWS:
        p += 1
    while p < n and raw[p] not in _SP:
        if _ctl(raw[p]):
            return Refusal(garbage=_cut(raw), head_bytes=n)
        p += 1
    method_end = p
    method = _cut(raw, method_end)             # from here on, garbage is the method: a NUL follows it
    refused = Refusal(garbage=method, head_bytes=n)
    if p >= n:
        refused.incomplete = True
        return refused
    while p < n and raw[p] in _SP:
        p += 1
    url_start = p
    while p < n and raw[p] not in _LWS:
        if _ctl(raw[p]):
            return refused
        p += 1
    url = raw[url_start:p]
    if not url:
        return refused
    while p < n and raw[p] in _SP:
        p += 1
    proto_start = p
    while p < n and not _crlf(raw, p):
        if _ctl(raw[p]) and raw[p] not in _SP:
            return refused
        p += 1
    proto = raw[proto_start:p]
    i = _crlf(raw, p)
    if not i:
        refused.incomplete = p >= n
        return refused
    p += i
    # -- the header lines (http1_dissect_hdrs) --
    headers: list[bytes] = []
    while p < n:
        if _crlf(raw, p):
            break
        q = r = p
        while r < n:
            if _hdrval(raw[r]):
                r += 1
                continue
            i = _crlf(raw, r)
            if not i:
                refused.bogo = "Header has ctrl char 0x%02x" % raw[r]
                return refused
            q = r
            r += i
            if r >= n or _crlf(raw, r) or raw[r] not in _SP:
                break        # else a folded line goes on: its line end counts as blanks
        line = raw[p:q].replace(b"\r\n", b"  ").replace(b"\n", b" ")
        if not line:
            break
        show = line[:20].decode("latin-1")
        if len(line) > hdr_len:
            refused.bogo = "Header too long: " + show
            return refused
        if line[0] in _LWS:
            refused.bogo = "1st header has white space: " + show
            return refused
        if line[:1] == b":":
            refused.bogo = "Missing header name: " + show
            return refused
        line = line.rstrip(_SP)
        colon = line.find(b":")
        name = line if colon < 0 else line[:colon]
        for c in name:
            if c not in _TCHAR:
                refused.bogo = "Illegal char 0x%02x in header name" % c
                return refused
        if colon < 0:
            refused.bogo = "Header without ':' " + show
            return refused
        if HDR_FIRST + len(headers) >= max_hdr:
            refused.bogo = "Too many headers: " + show
            return refused
        headers.append(line)
        p = r
    if p >= n:
        refused.incomplete = True        # no end of the head: varnishd would still be reading it
        return refused
    return method_end, url, proto, headers, p + _crlf(raw, p), refused


def refusal(raw: bytes, hdr_len: int, max_hdr: int) -> Refusal:
    """varnishd's reading of the request head at the start of `raw` (what it has received of the
    connection from that head on). A head that passes every check is described as refused by its
    parse (HttpGarbage, the method): our parser refused it for a reason varnishd does not have."""
    parts = _dissect(raw, hdr_len, max_hdr)
    if isinstance(parts, Refusal):
        return parts
    method_end, url, proto, headers, head_bytes, refused = parts
    method = raw[:method_end].lstrip(_LWS)
    # -- HTTP1_DissectRequest's checks of the parsed request --
    if proto not in (b"HTTP/1.0", b"HTTP/1.1"):
        return refused
    if url[:7].lower() == b"http://" and b"/" in url[7:]:
        host_end = url.index(b"/", 7)
        headers = [h for h in headers if h.split(b":", 1)[0].lower() != b"host"]
        headers.append(b"Host: " + url[7:host_end])
        url = url[host_end:]
    values = {}
    counts = {}
    for h in headers:
        name, _, value = h.partition(b":")
        lname = name.lower()
        counts[lname] = counts.get(lname, 0) + 1
        values.setdefault(lname, value.strip(_SP))
    cl = values.get(b"content-length")
    te = values.get(b"transfer-encoding")
    if cl is not None and not cl.isdigit():
        return refused
    if te is not None and (te.lower() != b"chunked" or cl is not None):
        return refused
    if cl is None and te is None and proto == b"HTTP/1.0" \
            and values.get(b"connection", b"").lower() != b"keep-alive" and method in (b"POST", b"PUT"):
        return refused           # a body up to the end of the connection: not from a client
    if (te is not None or (cl is not None and int(cl) > 0)) and method == b"HEAD":
        return refused
    # -- dissected: cnt_recv's checks --
    text = [s.decode("utf-8", "surrogateescape") for s in (method, url, proto)]
    dissected = Refusal(method=text[0], url=text[1], proto=text[2], head_bytes=head_bytes,
                        headers=[h.decode("utf-8", "surrogateescape") for h in headers])
    if counts.get(b"host", 0) > 1:
        dissected.bogo = "Multiple Host: headers"
    elif counts.get(b"content-length", 0) > 1:
        dissected.bogo = "Multiple Content-Length: headers"
    else:
        refused.passes = True
        return refused
    return dissected


def response_refusal(raw: bytes, hdr_len: int, max_hdr: int) -> Refusal | None:
    """HTTP1_DissectResponse's reading of a backend response head at the start of `raw`: how it is
    refused (a FetchError "http format error" then), or None when varnishd takes it."""
    parts = _dissect(raw, hdr_len, max_hdr)
    if isinstance(parts, Refusal):
        return parts
    proto_end, status, _reason, _headers, _size, refused = parts
    proto = raw[:proto_end].lstrip(_LWS)
    # http_Proto: "HTTP/d.d", else version 0; below 1.0 is refused
    if not (len(proto) == 8 and proto[:5] == b"HTTP/" and proto[5:6].isdigit() and proto[6:7] == b"."
            and proto[7:8].isdigit()) or int(proto[5:6]) * 10 + int(proto[7:8]) < 10:
        return refused
    if len(status) != 3 or not (b"1" <= status[:1] <= b"9") or not status[1:].isdigit():
        return refused
    return None
