"""Edge Side Includes: the esi fetch filter (VFP) and the esi delivery filter (VDP), as varnishd 7.1.

Fetch: `EsiVFP` runs the parser (esi_parse.py) over the body as it is stored, unchanged, and leaves the
parse on the object (`oc.esi_data`, Varnish's OA_ESIDATA); its errors and warnings count in
`esi_errors` / `esi_warnings`. A body with no ESI in it gets no parse and is delivered as it is.

Delivery: `EsiVDP` walks the stored body along the parse: verbatim ranges go on down the chain, each
include becomes a subrequest (`ClientRequest.esi_child`, cache_esi_deliver.c's ved_include) that runs
the whole VCL with `req.esi_level` one deeper and delivers its body in place, through its own filters
(a nested ESI page, a gunzip). A fragment is passed on piece by piece as it is read or fetched, through
a one-piece handoff, so a slow or big fragment never sits whole in memory; a cached small one is
delivered without a task. `max_esi_depth` stops include loops; a fragment that fails is delivered as
its response says (a 503 page included), and one whose body breaks off stops the page only with the
`esi_include_onerror` feature and no `onerror="continue"`, as in varnishd 7.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from cacheserver.esi_gzip import GZIP_HEADER, GzCrc, GzipRuns, Splicer
from cacheserver.esi_parse import EsiDoc, EsiFeatures, EsiParser, Include
from cacheserver.filters import Filter, FilterError, replace_builtin, vary_accept_encoding, weaken_etag

if TYPE_CHECKING:
    from cacheserver.filters import DeliverCtx, FetchCtx

log = logging.getLogger("cacheserver.esi")

# A fragment whose whole body is stored and at most this big is handed over in one piece, with no task.
SYNC_FRAGMENT = 256 * 1024

_FEATURES: dict[str, EsiFeatures] = {}


def esi_features(params: object) -> EsiFeatures:
    """The ESI flags of the `feature` parameter ("+esi_disable_xml_check,..."), parsed once per value."""
    text = params.text("feature") if hasattr(params, "text") else str(getattr(params, "feature", ""))
    feats = _FEATURES.get(text)
    if feats is None:
        on = {item.strip().lstrip("+") for item in text.split(",") if not item.strip().startswith("-")}
        feats = EsiFeatures(
            disable_xml_check="esi_disable_xml_check" in on,
            ignore_other_elements="esi_ignore_other_elements" in on,
            remove_bom="esi_remove_bom" in on,
            ignore_https="esi_ignore_https" in on,
            include_onerror="esi_include_onerror" in on,
        )
        if len(_FEATURES) < 64:
            _FEATURES[text] = feats
    return feats


class EsiVFP(Filter):
    """Parse the body for ESI as it is stored (beresp.do_esi); the bytes pass through unchanged."""

    name = "esi"
    kind = "vfp"

    def open(self, fc: FetchCtx) -> bool:
        if fc.http.status == 206:
            # a part of a page cannot be parsed: the fetch fails (vfp_esi_init), unless VCL made it
            # some other status
            raise FilterError("Attempted ESI on partial (206) response")
        bereq = getattr(fc, "bereq", None)
        self.fc = fc
        self.parser = EsiParser(bereq.url if bereq is not None else "/", esi_features(fc.params))
        return True

    def push(self, data: bytes) -> Iterable[bytes]:
        self.parser.feed(data)
        return (data,)

    def end(self) -> Iterable[bytes]:
        finish_parse(self.parser, self.fc)
        return ()


class EsiGzipVFP(EsiVFP):
    """esi_gzip: parse a plain body (a gzipped backend's arrives gunzipped) and store it gzipped, each
    verbatim range its own run of deflate blocks (esi_gzip.py), as varnishd's vfp_esi_gzip."""

    name = "esi_gzip"
    runs: GzipRuns | None = None

    def open(self, fc: FetchCtx) -> bool:
        super().open(fc)
        params = fc.params
        self.runs = GzipRuns(self.parser, params.gzip_level, params.gzip_memlevel)
        headers = fc.http.headers
        headers.unset("Content-Encoding")
        headers.unset("Content-Length")
        headers.add("Content-Encoding", "gzip")
        vary_accept_encoding(fc.http)
        fc.oc.gzipped = True
        fc.counters.n_gzip += 1
        return True

    def push(self, data: bytes) -> Iterable[bytes]:
        return self.runs.push(data)

    def close(self) -> None:
        """Closed before its end (the fetch failed): VGZ_Destroy still logs what went through, the
        start bit set once the gzip header was out, no last or stop bit."""
        if self.runs is not None and self.fc.log is not None:
            size = self.runs.size
            out = self.runs.cpos if size else 0
            self.fc.log.append(("Gzip", "G F E %d %d %d 0 0" % (size, out, 80 if size else 0)))
        self.runs = None

    def end(self) -> Iterable[bytes]:
        doc = finish_parse(self.parser, self.fc, self.runs.out_at)
        runs, self.runs = self.runs, None
        tail, bits = runs.end(doc is not None)
        if self.fc.log is not None:
            # VGZ_Destroy's record for the page's gzip: gzip, fetch, ESI; bytes in and out; bits
            self.fc.log.append(("Gzip", "G F E %d %d %d %d %d" % (runs.size, runs.cpos, *bits[:3])))
        if doc is not None:
            doc.gz = runs.gz
        self.fc.oc.gzip_bits = bits
        return tail


def finish_parse(parser: EsiParser, fc: FetchCtx, out_at=None) -> EsiDoc | None:
    """The parse ends: count and log its complaints, store it on the object. Each complaint is logged
    "after" VEP's o_last: the output bytes stored when the run before the current one was emitted
    (`out_at` maps a body offset to that in a body stored gzipped)."""
    doc = parser.finish()
    counters = fc.counters
    counters.esi_errors += len(parser.errors)
    counters.esi_warnings += len(parser.warnings)
    vsl = getattr(fc, "log", None)
    if vsl is not None:
        for kind, at, text in parser.diag:
            if kind:
                text = f"{kind} after {out_at(at) if out_at is not None else at} {text}"
            vsl.append(("ESI_xmlerror", text))
    fc.oc.esi_data = doc
    return doc


class EsiVDP(Filter):
    """Assemble an ESI page: verbatim ranges of the stored body, and includes as subrequests.

    A page stored gzipped is delivered gzipped (runs as stored, includes spliced in, a new trailer);
    a "gunzip" filter after this one makes it plain for clients that want it so. Inside a gzipped
    parent page, it sends its runs without header or trailer and reports its CRC to the parent."""

    name = "esi"
    kind = "vdp"
    is_async = True

    def open(self, dc: DeliverCtx) -> bool:
        oc = dc.oc
        doc = oc.esi_data if oc is not None else None
        if doc is None:
            return False                  # no ESI in this object: the filter steps aside (VDP init 1)
        request = self.request = dc.request
        self.gzip = doc.gz is not None and oc.gzipped
        self.segments = doc.gz if self.gzip else doc.segments
        # gzip: the CRC and length of each piece, in page order (includes fill theirs when done)
        self.parts: list[GzCrc] = []
        self.report = request.esi_gz_state if self.gzip else None   # nested in a gzipped page
        dc.gzip_spliced = self.gzip and self.report is None
        self.started = False
        self.i = 0                        # next segment
        self.pos = 0                      # body offset of the next byte pushed
        weaken_etag(dc.http)              # RFC2616_Weaken_Etag: unset, then added at the end
        if dc.length != 0:
            dc.length = -1                # the page's length is known only once it is out
        return True

    def push(self, data: bytes) -> Iterable[object]:
        return (_coalesce(self._walk(data, False)),)

    def end(self) -> Iterable[object]:
        return (_coalesce(self._walk(b"", True)),)

    def _walk(self, data: bytes, last: bool) -> Iterable[object]:
        segs = self.segments
        start = self.pos
        end = self.pos = start + len(data)
        out: list[object] = []
        if self.gzip and not self.started and self.report is None:
            out.append(GZIP_HEADER)
        self.started = True
        while self.i < len(segs):
            seg = segs[self.i]
            if isinstance(seg, Include):
                out.append(self._include(seg))
                self.i += 1
                continue
            lo, hi = seg[0], seg[1]
            if lo >= end:
                break
            if hi > start:
                if self.gzip and lo >= start:
                    part = GzCrc()
                    part.add(seg[3], seg[2])
                    self.parts.append(part)
                out.append(data[max(lo - start, 0):min(hi, end) - start])
            if hi > end:
                break
            self.i += 1
        if last:
            if self.i < len(segs):
                # the stored body was shorter than its parse: deliver the includes that are left
                out.extend(self._include(s) for s in segs[self.i:] if isinstance(s, Include))
                self.i = len(segs)
            if self.gzip:
                out.append(self._trailer())
        return out

    async def _trailer(self) -> AsyncIterator[bytes]:
        # runs after every include before it has been delivered, so all CRCs are in
        total = GzCrc()
        for part in self.parts:
            total.add(part.crc, part.length)
        if self.report is not None:
            self.report.add(total.crc, total.length)
            return
        yield total.trailer()

    def _include(self, inc: Include) -> AsyncIterator[bytes]:
        gz = None
        if self.gzip:
            gz = GzCrc()
            self.parts.append(gz)
        return include_body(self.request, inc, gz)


# Pieces of a page are gathered up to this size before they go down the chain: a page of small
# stored fragments goes out in a few writes, not one per piece.
COALESCE = 65536
# What include_body yields before it waits on a fragment: send what was gathered first.
_FLUSH = b""


async def _coalesce(items: list[object]) -> AsyncIterator[bytes]:
    buf = bytearray()
    for item in items:
        parts = (item,) if isinstance(item, (bytes, bytearray, memoryview)) else None
        if parts is None:
            async for part in item:
                if not part:
                    if buf:
                        yield bytes(buf)
                        buf.clear()
                    continue
                buf += part
                if len(buf) >= COALESCE:
                    yield bytes(buf)
                    buf.clear()
            continue
        buf += item
        if len(buf) >= COALESCE:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


async def include_body(parent, inc: Include, gz: GzCrc | None = None) -> AsyncIterator[bytes]:
    """The body of one include, as its subrequest delivers it, piece by piece. In a gzipped page
    (`gz` given) the pieces are deflate data and `gz` gets their CRC and length."""
    ctx = parent.ctx
    server = parent.server
    depth = server.params.max_esi_depth
    if ctx.esi_level >= depth:
        ctx.log.append(("VCL_Error", f"ESI depth limit reached (param max_esi_depth = {depth})"))
        return
    if parent.session.closed:
        return                          # nobody will see the rest of the page
    child = parent.esi_child(inc, gz is not None)
    server.counters.esi_req += 1        # ved_include: one more subrequest made

    def pieces(data: bytes) -> Iterable[bytes]:
        return (data,) if gz is None else child.esi_splicer.push(data)

    try:
        done = child.run_sync()
    except Exception:  # a broken subrequest must not take the page down with it
        log.exception("ESI subrequest failed")
        child._release()
        return
    if not done:
        yield _FLUSH                    # the fragment may take a while: what came before goes out now
        handoff: asyncio.Queue = asyncio.Queue(maxsize=1)
        child.esi_sink = handoff.put
        task = asyncio.get_running_loop().create_task(_run_child(child, handoff))
        try:
            while (piece := await handoff.get()) is not None:
                for part in pieces(piece):
                    yield part
                yield _FLUSH            # a fragment still arriving goes out as it comes
            await task
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
    if child.esi_body:
        # a stored fragment, handed over whole
        for part in pieces(child.esi_body):
            yield part
    if gz is not None and child.esi_splicer is not None:
        _copy_crc(gz, child.esi_splicer.finish(child.esi_gz_state))
    if child.esi_failed and esi_features(server.params).include_onerror and not inc.onerror_continue:
        # varnishd 7.1: with esi_include_onerror, a fragment that broke off ends the whole page
        raise FilterError("ESI include failed")


def _include_req(base, inc: Include, gzip: bool):
    """The request an include starts from: `base` made a GET of its URL, as ved_include does."""
    req = base.copy()
    req.url = inc.src
    req.method = "GET"
    req.proto = "HTTP/1.1"
    headers = req.headers
    if inc.host:
        headers.unset("Host")
        headers.add("Host", inc.host)
    for name in ("If-Modified-Since", "If-None-Match", "Range", "Accept-Encoding", "Content-Length",
                 "Transfer-Encoding"):
        headers.unset(name)
    if gzip:
        headers.add("Accept-Encoding", "gzip")
    return req


def _vsl_esi_begin(parent, child) -> None:
    """An include's records begin as varnishd's ved_include begins them: `Begin req PARENT esi`, its
    start, the URL it was given; linked from the page's request, not from the session."""
    ctx = child.ctx
    link = ("Link", f"req {ctx.xid} rxreq")
    sess_log = parent.session.vsl
    if sess_log and sess_log[-1] == link:
        sess_log.pop()
    # the pre-joined run: Begin, Timestamp Start, Timestamp Req, VCL_use, then ReqStart and on
    run = ctx.log[0][1].split("\0")
    ctx.log[0] = ("Begin", "\0".join([f"req {parent.ctx.xid} esi", run[1], f"ReqURL {ctx.req.url}", *run[4:]]))
    parent.ctx.log.append(("Link", f"req {ctx.xid} esi"))


def _copy_crc(dst: GzCrc, src: GzCrc) -> None:
    dst.crc, dst.length = src.crc, src.length


async def _run_child(child, handoff: asyncio.Queue) -> None:
    try:
        await child.run_async()
    except asyncio.CancelledError:
        raise                           # the page went away: nobody waits for the end
    except Exception:  # the page goes on without the rest of this fragment
        log.exception("ESI subrequest failed")
        child.esi_failed = True
    await handoff.put(None)


class EsiRequest:
    """The ESI side of ClientRequest (fsm.py): making subrequests, and a subrequest's delivery into
    its parent page instead of onto the wire (VED_transport)."""

    parent = None           # the request whose page includes this one (None: a client's request)
    req0 = None             # the request as received, before VCL changed it (varnishd's http0)
    esi_sink = None         # async callable taking the body pieces of a subrequest
    esi_body = None         # a small stored fragment, handed over whole
    esi_failed = False      # the fragment's body broke off
    esi_gz_state = None     # in a gzipped parent page: the CRC a nested gzipped ESI page reports
    esi_splicer = None      # in a gzipped parent page: makes this fragment's body deflate data
    esi_inc = None          # the include this subrequest is for

    def _esi_req0(self):
        """This request as received (varnishd's http0). A subrequest's is made when first needed,
        from its parent's and its include, so a fragment with no includes of its own costs no copy."""
        if self.req0 is None and self.parent is not None:
            self.req0 = _include_req(self.parent._esi_req0(), self.esi_inc, self.esi_gz_state is not None)
        return self.req0 if self.req0 is not None else self.ctx.req

    def esi_child(self, inc: Include, gzip: bool = False):
        """A subrequest for `inc` (ved_include): the parent's request as received, made a plain GET
        of the include's URL, with no conditionals, Range or body, accepting gzip only when the page
        it goes into is gzipped."""
        from cacheserver.reqbody import ReqBody

        req = _include_req(self._esi_req0(), inc, gzip)
        child = type(self)(self.session, req, ReqBody.empty(), False, self.raw_index)
        if gzip:
            child.esi_gz_state = GzCrc()
        child.parent = self
        child.esi_inc = inc
        # ved_include: an include starts in the VCL its top request started in when that one
        # switched VCL (return (vcl(...))), else in its parent's
        top = self
        while top.parent is not None:
            top = top.parent
        vcl = child.vcl = top.vcl0 or self.vcl
        ctx = child.ctx
        pctx = self.ctx
        ctx.vcl = vcl
        ctx.backend_hint = vcl.default_backend
        ctx.esi_level = pctx.esi_level + 1
        ctx.req_top = pctx.req_top
        ctx.req_time = pctx.req_time
        _vsl_esi_begin(self, child)
        return child

    def _esi_transmit(self, resp, oc) -> str | None:
        """A subrequest's delivery (ved_deliver): no head, its body (through its own filters) goes
        into the parent's page."""
        status = resp.status
        if status < 200 or status in (204, 304) or (oc.complete and oc.length == 0):
            self._drop_object()
            return None
        try:
            chain, _ = self._open_vdps(resp, oc, oc.length if oc.complete else -1)
        except FilterError as exc:
            self.ctx.log.append(("Error", str(exc)))
            self._drop_object()
            return None
        if self.esi_gz_state is not None:
            self.esi_splicer = self._esi_splicer(resp, oc, chain)
        if chain is None and oc.complete and not oc.failed and oc.length <= SYNC_FRAGMENT:
            self.esi_body = oc.body()
            self.acct_body = len(self.esi_body)
            self._drop_object()
            return None
        self.vdp_chain = chain
        return "esibody"

    def _esi_splicer(self, resp, oc, chain) -> Splicer:
        """How this fragment's body becomes deflate data in the gzipped page it goes into."""
        limit = self.server.params.gzip_buffer
        names = [f.name for f in chain.filters] if chain is not None else []
        if "esi" in names and oc.esi_data is not None and oc.esi_data.gz is not None and oc.gzipped:
            return Splicer("raw", None, limit)          # a nested gzipped page: runs as stored
        encoding = (resp.headers.get("Content-Encoding") or "").lower()
        if oc.gzipped and encoding == "gzip" and "gunzip" not in names:
            if not names:
                # ved_gzgz; the bits are known once the object is complete: ast_esibody waits for
                # that, as varnishd does, unless the body is not kept (a pass: it streams through
                # a bounded window, so it is inflated instead)
                if oc.complete:
                    return Splicer("gzgz", oc.gzip_bits, limit)
                if oc.keep_body:
                    return Splicer("gzgz_wait", None, limit)
            return Splicer("inflate", None, limit)
        return Splicer("plain", None, limit)

    async def ast_esibody(self) -> None:
        """Read the fragment as it is stored (or still fetched) and pass it on, a piece at a time."""
        oc = self.oc
        bo = self.bo
        outer = self.esi_sink

        async def sink(data) -> None:
            if isinstance(data, (bytes, bytearray, memoryview)):
                self.acct_body += len(data)        # this include's ReqAcct: what it put in the page
            await outer(data)

        chain, self.vdp_chain = self.vdp_chain, None
        session = self.session
        splicer = self.esi_splicer
        if splicer is not None and splicer.kind == "gzgz_wait":
            # varnishd waits for the whole object (its gzip bits are known only then); one that
            # failed is left out of the page
            while not (oc.complete or oc.failed or session.closed):
                await oc.wait_more()
            splicer.set_bits(oc.gzip_bits if oc.complete and not oc.failed else None)
            if oc.failed or session.closed:
                splicer.kind = "plain"            # nothing of it goes into the page
                if bo is not None and bo.oc is oc and bo.reader is not None:
                    oc.close_reader(bo.reader)
                    bo.reader = None
                self.oc = self.bo = None
                if chain is not None:
                    chain.close()
                return None                       # (ved_gzgz: left out, not an error)
        cell = bo.reader if bo is not None and bo.oc is oc and bo.reader is not None else oc.open_reader()
        try:
            while not session.closed:
                data = oc.read(cell)
                if not data:
                    if oc.complete or oc.failed:
                        break
                    await oc.wait_more()
                    continue
                if chain is not None:
                    await chain.apush(data, sink)
                else:
                    await sink(data)
            if chain is not None and oc.complete and not oc.failed and not session.closed:
                await chain.aend(sink)
        except FilterError as exc:
            self.ctx.log.append(("Error", str(exc)))
            self.esi_failed = True
        finally:
            if chain is not None:
                chain.close()
            oc.close_reader(cell)
            if bo is not None:
                bo.reader = None
            self.bo = None
            self.oc = None
        if oc.failed:
            self.esi_failed = True
        return None


replace_builtin(EsiVFP)
replace_builtin(EsiGzipVFP)
replace_builtin(EsiVDP)
