"""Body filters, shaped like Varnish's VFP (fetch) and VDP (delivery) processors (cache_filter.h).

The contract
------------
A filter is a small object made fresh for each body it processes; its class carries its `name`
(what `beresp.filters` / `resp.filters` list) and `kind` ("vfp" or "vdp").

    open(fc) -> bool      Called once, before the first byte, with a FetchCtx (VFP) or DeliverCtx
                          (VDP). It may change the headers (fc.http) and, for a VDP, the delivered
                          length (dc.length, -1: unknown). Returning False leaves the filter out of
                          this chain (Varnish's VFP_NULL / a VDP init returning > 0).
    push(data) -> Iterable[bytes]
                          Takes the next piece of the body, returns (or yields) what goes on to the
                          next filter. Output must come in bounded pieces (at most gzip_buffer
                          bytes for expanding filters), so that a 1 GB body never sits in memory.
    end() -> Iterable[bytes]
                          The body is complete: flush what is held back.
    close() -> None       Always called once the chain is done (error or not): release resources.

A filter that finds the body bad raises FilterError: on the fetch side that is a fetch error (503
when nothing was delivered yet, a truncated stream otherwise), on the delivery side the connection
is closed.

A VDP (delivery only) may yield, besides bytes, an async iterator of bytes (e.g. an ESI include's
body as it is fetched): the async chain runner sends each of its pieces through the filters below
it with back-pressure. A chain with such a filter runs only in the async delivery state.

Which filters run is decided apart from running them: `vfp_default_list()` and `vdp_default_list()`
are pure functions of the object and request (vbf_default_filter_list and resp_Get_Filter_List in
Varnish); their result is what `beresp.filters` / `resp.filters` read, VCL may set another list,
and `stack()` turns a list into filter instances. Filters are found by name among the built-in ones
and those of the vmods the VCL imports (`Vmod.filter()` in vmods/__init__.py).

For ESI: the "esi" VFP and VDP and the "esi_gzip" VFP are slots (placeholders here) that
`replace_builtin()` fills; the parse goes to `oc.esi_data` (OA_ESIDATA: its presence puts "esi" in
the default delivery list); a VDP reaches the request through `DeliverCtx.request` and may yield async
iterators (include bodies); `oc.gzip_bits` and `crc32_combine` let esi_gzip.py make one gzip stream
of gzipped and plain pieces for gzip clients (the "gunzip" VDP below "esi" serves the others).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Union

from cacheserver.deflate_scan import DeflateError, GzipScanner
from vcl.rtlib import req_gzip as accepts_gzip  # noqa: F401 - RFC2616_Req_Gzip, shared with VCL

if TYPE_CHECKING:
    from cacheserver.storage import ObjCore
    from vcl.runtime import HttpMessage

Piece = Union[bytes, AsyncIterator[bytes]]

# Size of the gzip header zlib writes (no name, no extra field): where the deflate data starts.
_GZIP_HEADER = 10


class FilterError(Exception):
    """A filter could not process the body (bad gzip, ...), or a filter list names no filter.

    `record` is what the task logs for it (None: the filter logged its own, as varnishd's)."""

    def __init__(self, message: str, record: tuple[str, str] | None = ("Error", "")) -> None:
        super().__init__(message)
        self.record = (record[0], record[1] or message) if record is not None else None


@dataclass(slots=True)
class FetchCtx:
    """What a VFP sees: the response headers it may rewrite and the object being filled."""

    http: HttpMessage          # beresp as VCL left it; becomes the object's headers
    oc: ObjCore
    params: object
    counters: object
    bereq: HttpMessage | None = None   # what was asked for (ESI resolves relative includes on its URL)
    log: list | None = None            # the fetch's log records (ESI_xmlerror)


@dataclass(slots=True)
class DeliverCtx:
    """What a VDP sees: the response about to go out, the object, and the delivered length."""

    http: HttpMessage          # resp; a VDP may change it until the head is written
    oc: ObjCore | None
    req: HttpMessage           # the client's request (Range, Accept-Encoding, ...)
    length: int                # delivered body length, -1 when unknown
    params: object
    counters: object
    request: object = None     # the ClientRequest (ESI needs its session, VCL and context)
    fetched: bool = False      # this request ran the fetch: it delivers as the body arrives
    gzip_spliced: bool = False  # an ESI page is made one gzip stream above (its bits are its own)


class Filter:
    """Base class: a filter that passes everything through (subclasses override what they need)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def open(self, fc) -> bool:
        return True

    def push(self, data: bytes) -> Iterable[Piece]:
        return (data,)

    def end(self) -> Iterable[Piece]:
        return ()

    def close(self) -> None:
        pass


# -- the gzip headers Varnish rewrites ------------------------------------------------------------

def weaken_etag(http: HttpMessage) -> None:
    """RFC2616_Weaken_Etag: a changed representation keeps only a weak validator."""
    etag = http.headers.get("ETag")
    if etag is None or etag.startswith("W/"):
        return
    http.headers.unset("ETag")
    http.headers.add("ETag", "W/" + etag)


def vary_accept_encoding(http: HttpMessage) -> None:
    """RFC2616_Vary_AE: the representation depends on Accept-Encoding."""
    vary = http.headers.get("Vary")
    if vary is None:
        http.headers.add("Vary", "Accept-Encoding")
        return
    if any(t.strip().lower() == "accept-encoding" for t in vary.split(",")):
        return
    http.headers.unset("Vary")
    http.headers.add("Vary", vary + ", Accept-Encoding")


# -- gzip, gunzip, testgunzip ----------------------------------------------------------------------
# The object records Varnish's OA_GZIPBITS as oc.gzip_bits = (start_bit, last_bit, stop_bit, length):
# where the deflate data starts, the BFINAL bit of its last block, where it stops (bit offsets in the
# stored body), and the uncompressed length. An ESI page splices gzipped fragments with these bits.
# zlib does not report block positions: deflate_scan.py finds them as the body passes (gzip, gunzip
# and testgunzip all scan, as varnishd's zlib records them for each). Past SCAN_MAX_BYTES of gzip data
# a body is not scanned (the work is bounded): its last and stop bits stay -1, and an ESI page that
# includes it inflates it and sends it as stored blocks instead. A pass (private object: delivered once,
# never spliced from the cache) is not scanned either: the scan costs several times what the inflate
# does, on every such request; its Gzip record shows -1 where varnishd's shows the bits.

SCAN_MAX_BYTES = 1 << 20


def _bounded_inflate(d, data: bytes, limit: int, counter=None) -> Iterator[bytes]:
    """Inflate `data`, yielding at most `limit` bytes at a time (zip bombs stay bounded); what comes
    out is added to `counter.size_out`, when given."""
    try:
        out = d.decompress(data, limit)
        while True:
            if out:
                if counter is not None:
                    counter.size_out += len(out)
                yield out
            tail = d.unconsumed_tail
            if not tail or d.eof:
                break
            out = d.decompress(tail, limit)
    except zlib.error as exc:
        raise FilterError(f"Invalid Gzip data: {exc}") from None
    if d.eof and d.unused_data:
        raise FilterError("Junk after gzip data")


class _BitScan:
    """The gzip bits of a body as it passes, within SCAN_MAX_BYTES; (start, -1, -1) when unknown."""

    __slots__ = ("scanner", "bits")

    def __init__(self, scan: bool = True) -> None:
        self.scanner: GzipScanner | None = GzipScanner(SCAN_MAX_BYTES) if scan else None
        self.bits = (_GZIP_HEADER * 8, -1, -1)

    def feed(self, data: bytes) -> None:
        if self.scanner is not None:
            try:
                self.scanner.feed(data)
            except DeflateError:      # past the bound, or what zlib will refuse anyway
                self._give_up()

    def end(self) -> tuple[int, int, int]:
        if self.scanner is not None:
            try:
                self.bits = tuple(self.scanner.end())
            except DeflateError:
                self._give_up()
            self.scanner = None
        return self.bits

    def _give_up(self) -> None:
        start = self.scanner.start
        self.bits = (start if start >= 0 else _GZIP_HEADER * 8, -1, -1)
        self.scanner = None


def _log_gzip(fc, ident: str, size_in: int, size_out: int, bits: tuple) -> None:
    """VGZ_Destroy's record: what, bytes in and out, start, last and stop bit."""
    log = getattr(fc, "log", None)
    if log is not None:
        log.append(("Gzip", "%s %d %d %d %d %d" % (ident, size_in, size_out, *bits[:3])))


class _GzipBase(Filter):
    kind = "vfp"

    def __init__(self) -> None:
        self.fc: FetchCtx | None = None
        self.limit = 32768
        self.scan: _BitScan | None = None
        self.size_in = 0
        self.size_out = 0

    def _applies(self, fc: FetchCtx) -> bool:
        # gzip makes no sense on a partial response; it is a 1:1 transform, so leave it be
        return fc.http.status != 206

    def _open_inflate(self, fc: FetchCtx) -> bool:
        """Start inflating a gzipped body (gunzip, testgunzip); False when the body is not gzip."""
        if not self._applies(fc) or (fc.http.headers.get("Content-Encoding") or "").lower() != "gzip":
            return False
        self.fc = fc
        self.limit = fc.params.gzip_buffer
        self.z = zlib.decompressobj(16 + 15)
        self.scan = _BitScan(not fc.oc.private)
        return True

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        """Check and inflate the next piece; after the gzip stream's end nothing may come."""
        if self.z.eof:
            if data:
                raise FilterError("Junk after gzip data")
            return
        self.size_in += len(data)
        self.scan.feed(data)
        yield from _bounded_inflate(self.z, data, self.limit, self)

    def _ended(self) -> None:
        if not self.z.eof:
            raise FilterError(self.end_error)
        self.fc.oc.gzip_bits = (*self.scan.end(), self.size_out)

    def close(self) -> None:
        if self.fc is not None and self.scan is not None:
            _log_gzip(self.fc, self.ident, self.size_in, self.size_out, self.scan.end())
            self.scan = None


class GzipVFP(_GzipBase):
    """Compress a plain body as it is stored (beresp.do_gzip), as varnishd: gzip_level, gzip_memlevel,
    a 32 KB window, no flush before the end (so the bytes are varnishd's, zlib being the same)."""

    name = "gzip"
    ident = "G F -"

    def open(self, fc: FetchCtx) -> bool:
        if not self._applies(fc) or "Content-Encoding" in fc.http.headers:
            return False
        params = fc.params
        self.fc = fc
        self.z = zlib.compressobj(params.gzip_level, zlib.DEFLATED, 16 + 15, params.gzip_memlevel)
        self.scan = _BitScan(not fc.oc.private)
        fc.counters.n_gzip += 1
        fc.oc.gzipped = True
        headers = fc.http.headers
        headers.unset("Content-Encoding")
        headers.unset("Content-Length")
        weaken_etag(fc.http)
        headers.add("Content-Encoding", "gzip")
        vary_accept_encoding(fc.http)
        return True

    def push(self, data: bytes) -> Iterable[bytes]:
        self.size_in += len(data)
        out = self.z.compress(data)
        if not out:
            return ()
        self.size_out += len(out)
        self.scan.feed(out)
        return (out,)

    def end(self) -> Iterable[bytes]:
        tail = self.z.flush(zlib.Z_FINISH)
        self.size_out += len(tail)
        self.scan.feed(tail)
        self.fc.oc.gzip_bits = (*self.scan.end(), self.size_in)
        return (tail,)


class GunzipVFP(_GzipBase):
    """Store a gzipped body plain (beresp.do_gunzip)."""

    name = "gunzip"
    ident = "U F -"
    end_error = "Gunzip error at the very end"

    def open(self, fc: FetchCtx) -> bool:
        if not self._open_inflate(fc):
            return False
        fc.counters.n_gunzip += 1
        fc.oc.gzipped = False
        fc.http.headers.unset("Content-Encoding")
        fc.http.headers.unset("Content-Length")
        weaken_etag(fc.http)
        return True

    def push(self, data: bytes) -> Iterable[bytes]:
        return self._inflate(data)

    def end(self) -> Iterable[bytes]:
        self._ended()
        self.fc.oc.gzip_bits = None       # the stored body is plain: it has no bits
        return ()


class TestGunzipVFP(_GzipBase):
    """Check a backend's gzip as it is stored unchanged, and learn its bits and uncompressed length."""

    name = "testgunzip"
    ident = "u F -"
    end_error = "tGunzip failed"

    def open(self, fc: FetchCtx) -> bool:
        if not self._open_inflate(fc):
            return False
        fc.counters.n_test_gunzip += 1
        fc.oc.gzipped = True
        vary_accept_encoding(fc.http)
        return True

    def push(self, data: bytes) -> Iterable[bytes]:
        for _ in self._inflate(data):
            pass
        return (data,) if data else ()

    def end(self) -> Iterable[bytes]:
        self._ended()
        return ()


# -- crc32_combine (zlib's, which Python's zlib lacks), for one gzip stream of many pieces (ESI): the
# GF(2) operators for 2**k zero bytes are worked out once, at import --------------------------------

def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def _zero_operators() -> list[list[int]]:
    one_bit = [0xEDB88320] + [1 << n for n in range(31)]   # one zero bit
    op = _gf2_square(_gf2_square(one_bit))                   # four zero bits
    ops = []
    for _ in range(64):
        op = _gf2_square(op)                                 # 1, 2, 4, ... zero bytes
        ops.append(op)
    return ops


_OPS = _zero_operators()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A+B from crc(A), crc(B) and len(B)."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_OPS[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


# -- delivery filters ------------------------------------------------------------------------------

class GunzipVDP(Filter):
    """Deliver a gzipped object plain to a client that does not accept gzip."""

    name = "gunzip"
    kind = "vdp"

    def open(self, dc: DeliverCtx) -> bool:
        self.limit = dc.params.gzip_buffer
        self.z = zlib.decompressobj(16 + 15)
        self.dc = dc
        self.size_in = self.size_out = 0
        dc.counters.n_gunzip += 1
        dc.http.headers.unset("Content-Encoding")
        known = dc.length >= 0       # not when a filter above (ESI) already made it unknown
        dc.length = -1
        oc = dc.oc
        # the uncompressed length is known once the whole object is in (varnishd: no busy object
        # any more, so never for the request that ran the fetch)
        if (known and oc is not None and oc.complete and not dc.fetched and oc.gzip_bits is not None
                and oc.gzip_bits[3]):
            dc.length = oc.gzip_bits[3]
        return True

    def push(self, data: bytes) -> Iterable[bytes]:
        if self.z.eof:
            if data:
                self._junk()
            return ()
        return self._inflate(data)

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        """vdp_gunzip_bytes: pushes its buffer whenever it is full (gzip_buffer) or the stream
        ended; the stream's end with input left over fails before the last buffer is pushed."""
        z = self.z
        try:
            out = z.decompress(data, self.limit)
            while True:
                self.size_out += len(out)
                if z.eof and z.unused_data:
                    self.size_in += len(data) - len(z.unused_data)
                    self._junk()
                if out:
                    yield out
                tail = z.unconsumed_tail
                if not tail or z.eof:
                    break
                out = z.decompress(tail, self.limit)
        except zlib.error as exc:
            raise FilterError(f"Invalid Gzip data: {exc}") from None
        self.size_in += len(data)

    def _junk(self) -> None:
        log = getattr(getattr(self.dc.request, "ctx", None), "log", None)
        if log is not None:
            log.append(("Gzip", "G(un)zip error: 1 (junk after VGZ_END)"))
        raise FilterError("junk after VGZ_END", record=None)

    def close(self) -> None:
        """VGZ_Destroy's "U D -" record. The bits are those of what was inflated: an ESI page made
        gzipped on delivery ends with an empty stored final block before its 8-byte trailer."""
        dc = self.dc
        log = getattr(getattr(dc.request, "ctx", None), "log", None)
        if log is None:
            return
        if dc.gzip_spliced:
            last = (self.size_in - 13) * 8 if self.z.eof else -1
            bits = (_GZIP_HEADER * 8, last, last + 40 if last >= 0 else -1)
        elif dc.oc is not None and dc.oc.gzip_bits is not None:
            bits = dc.oc.gzip_bits
        else:
            bits = (_GZIP_HEADER * 8, -1, -1)
        log.append(("Gzip", "U D - %d %d %d %d %d" % (self.size_in, self.size_out, *bits[:3])))


class RangeVDP(Filter):
    """Answer a Range request on the delivered representation (cache_range.c): 206 with the span,
    416 when it cannot be satisfied, the whole body when the range does not apply."""

    name = "range"
    kind = "vdp"

    def __init__(self) -> None:
        self.lo, self.hi = 0, -1
        self.pos = 0

    def open(self, dc: DeliverCtx) -> bool:
        from cacheserver.http1 import reason_for
        from cacheserver.ranges import RangeError, parse_range

        rng = dc.req.headers.get("Range")
        if rng is None or dc.http.status != 200:
            return False
        if_range = getattr(dc.request, "_if_range", None)
        if if_range is not None and not if_range(dc.http):
            return False
        resp = dc.http
        try:
            span = parse_range(rng, dc.length)
        except RangeError:
            if dc.length >= 0:
                resp.headers.add("Content-Range", f"bytes */{dc.length}")
            resp.status, resp.reason = 416, "Requested Range Not Satisfiable"
            dc.length = 0
            return True                 # lo > hi: nothing passes
        if span is None:
            return False
        self.lo, self.hi = span
        total = dc.length
        resp.headers.add("Content-Range",
                         f"bytes {self.lo}-{self.hi}/{total}" if total >= 0 else f"bytes {self.lo}-{self.hi}/*")
        dc.length = self.hi - self.lo + 1
        resp.status, resp.reason = 206, reason_for(206)
        return True

    def push(self, data: bytes) -> Iterable[bytes]:
        start, self.pos = self.pos, self.pos + len(data)
        if self.pos <= self.lo or start > self.hi:
            return ()
        return (data[max(self.lo - start, 0):self.hi + 1 - start],)


class EsiSlotVDP(Filter):
    """Placeholder for ESI delivery (another branch fills it in): passes the body through."""

    name = "esi"
    kind = "vdp"

    def open(self, dc: DeliverCtx) -> bool:
        return False


class EsiSlotVFP(Filter):
    """Placeholder for the ESI parser at fetch time (another branch fills it in)."""

    name = "esi"
    kind = "vfp"

    def open(self, fc: FetchCtx) -> bool:
        return False


class EsiGzipSlotVFP(Filter):
    """Placeholder for ESI parsing of a body stored gzipped: gzips what comes through for now."""

    name = "esi_gzip"
    kind = "vfp"

    def open(self, fc: FetchCtx) -> bool:
        self.gzip = GzipVFP()
        return self.gzip.open(fc)

    def push(self, data: bytes) -> Iterable[bytes]:
        return self.gzip.push(data)

    def end(self) -> Iterable[bytes]:
        return self.gzip.end()


# -- registry and lists ----------------------------------------------------------------------------

@dataclass
class Registry:
    """Filters by kind and name. The built-in one is shared; each vmod may add its own."""

    vfp: dict[str, type[Filter]] = field(default_factory=dict)
    vdp: dict[str, type[Filter]] = field(default_factory=dict)

    def add(self, cls: type[Filter]) -> type[Filter]:
        table = self.vfp if cls.kind == "vfp" else self.vdp
        if cls.kind not in ("vfp", "vdp") or not cls.name:
            raise ValueError(f"filter {cls!r} needs a name and a kind (vfp or vdp)")
        if cls.name in table and table[cls.name] is not cls:
            raise ValueError(f"{cls.name}: {cls.kind.upper()} name already used")
        table[cls.name] = cls
        return cls


BUILTIN = Registry()
for _cls in (TestGunzipVFP, GunzipVFP, GzipVFP, EsiSlotVFP, EsiGzipSlotVFP, EsiSlotVDP, GunzipVDP,
             RangeVDP):
    BUILTIN.add(_cls)
del _cls


def replace_builtin(cls: type[Filter]) -> None:
    """Put another implementation in a built-in slot (the ESI filters fill the "esi" slots)."""
    (BUILTIN.vfp if cls.kind == "vfp" else BUILTIN.vdp)[cls.name] = cls


def _vmod_registries(vcl) -> list[Registry]:
    out = []
    for name in sorted(getattr(vcl, "uses", ()) or ()):
        try:
            from vmods import load
            vmod = load(name)
        except LookupError:
            continue
        registry = getattr(vmod, "filters", None)
        if registry is not None:
            out.append(registry)
    return out


def stack(kind: str, names: str, vcl=None) -> list[Filter]:
    """Fresh filter instances for a filter list, top first; FilterError names one not found."""
    registries = [BUILTIN] + _vmod_registries(vcl)
    out = []
    rest = names
    for word in names.split():
        for registry in registries:
            cls = getattr(registry, kind).get(word)
            if cls is not None:
                break
        else:
            rest = names[names.index(word):]
            raise FilterError(f"Filter '...{rest}' not found")
        out.append(cls())
    return out


def vfp_default_list(*, body_none: bool, content_length: int | None, content_encoding: str | None,
                     do_gzip: bool, do_gunzip: bool, do_esi: bool, gzip_support: bool) -> str:
    """The fetch filters a body gets unless VCL sets beresp.filters (vbf_default_filter_list)."""
    if body_none or content_length == 0:
        return ""
    if not gzip_support:
        do_gzip = do_gunzip = False
    is_gzip = content_encoding is not None and content_encoding.lower() == "gzip"
    is_plain = content_encoding is None
    do_gunzip = do_gunzip and is_gzip        # only a gzipped body is gunzipped
    do_gzip = do_gzip and is_plain           # only a plain one is gzipped
    out = ""
    if do_gunzip or (is_gzip and do_esi):
        out += " gunzip"
    if do_esi and (do_gzip or (is_gzip and not do_gunzip)):
        return out + " esi_gzip"
    if do_esi:
        return out + " esi"
    if do_gzip:
        out += " gzip"
    if is_gzip and not do_gunzip:
        out += " testgunzip"
    return out


def vdp_default_list(*, esi: bool, gunzip: bool, range_: bool) -> str:
    """The delivery filters a response gets unless VCL sets resp.filters (resp_Get_Filter_List)."""
    out = ""
    if esi:
        out += " esi"
    if gunzip:
        out += " gunzip"
    if range_:
        out += " range"
    return out


# -- running a chain -------------------------------------------------------------------------------

class Chain:
    """Opened filters, top first. push()/end() run them synchronously (bytes only); apush()/aend()
    run them in the async delivery state, where a VDP may also yield async iterators."""

    __slots__ = ("filters", "is_async")

    def __init__(self, filters: list[Filter]) -> None:
        self.filters = filters
        self.is_async = any(getattr(f, "is_async", False) for f in filters)

    def push(self, data: bytes) -> Iterator[bytes]:
        return self._run(0, data)

    def end(self) -> Iterator[bytes]:
        return self._end(0)

    def _run(self, i: int, data: bytes) -> Iterator[bytes]:
        if i == len(self.filters):
            if data:
                yield data
            return
        for piece in self.filters[i].push(data):
            yield from self._run(i + 1, piece)

    def _end(self, i: int) -> Iterator[bytes]:
        if i == len(self.filters):
            return
        for piece in self.filters[i].end():
            yield from self._run(i + 1, piece)
        yield from self._end(i + 1)

    async def apush(self, data: bytes, sink) -> None:
        """Send `data` through the chain into `sink` (an async callable taking bytes)."""
        await self._arun(0, data, sink)

    async def aend(self, sink) -> None:
        for i in range(len(self.filters)):
            for piece in self.filters[i].end():
                await self._apiece(i + 1, piece, sink)

    async def _arun(self, i: int, data: bytes, sink) -> None:
        if i == len(self.filters):
            if data:
                await sink(data)
            return
        for piece in self.filters[i].push(data):
            await self._apiece(i + 1, piece, sink)

    async def _apiece(self, i: int, piece: Piece, sink) -> None:
        if isinstance(piece, (bytes, bytearray, memoryview)):
            await self._arun(i, piece, sink)
            return
        async for part in piece:
            await self._arun(i, part, sink)

    def close(self) -> None:
        """Close each filter once (a second call does nothing)."""
        filters, self.filters = self.filters, []
        for f in filters:
            try:
                f.close()
            except Exception:  # closing must not hide the error that ended the chain
                pass


def open_chain(filters: list[Filter], fc) -> Chain:
    """Open filters top first, leaving out those that decline (VFP_NULL)."""
    opened = []
    try:
        for f in filters:
            if f.open(fc):
                opened.append(f)
    except Exception:
        Chain(opened).close()
        raise
    return Chain(opened)
