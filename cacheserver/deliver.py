"""Delivery: cnt_transmit and the HTTP/1 writer (cache_req_fsm.c, cache_http1_deliver.c).

`Delivery` is mixed into ClientRequest (fsm.py). `_transmit` decides, as varnishd's cnt_transmit,
whether a body is sent and which delivery filters (VDP) run: `resp.filters` when VCL set it, else
`vdp_default_list()` (esi, gunzip, range). Opening the filters may change the head (gunzip drops
Content-Encoding, range makes a 206) and the delivered length; then the framing is decided once
(Content-Length, chunked, or close) and the body goes out through one writer:

- no filters and a complete object (the plain hit): head and body written at once, or through the
  async "send" state a slice at a time when big (`_write`, `ast_send`);
- anything else (a body still arriving, or filters): the async "stream" state reads the object as
  it grows, runs the chain, and `_send_piece` frames each piece (chunked or not) and waits for the
  client to read (idle_send_timeout, send_timeout) before the next.

Every wait for the client is bounded in time, and at most about one slice (plus a gzip_buffer of
filter output) is held per client.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cacheserver import hit_template
from cacheserver.filters import (
    Chain,
    DeliverCtx,
    FilterError,
    accepts_gzip,
    open_chain,
    stack,
    vdp_default_list,
)
from cacheserver.http1 import serialize_head
from cacheserver.ranges import if_range_matches
from cacheserver.vsl import floats_bytes

if TYPE_CHECKING:
    from cacheserver.storage import ObjCore
    from vcl.runtime import HttpMessage

# Request headers that make a hit other than plain (a range, a conditional): lowercased names
_NOT_PLAIN = frozenset(("range", "if-none-match", "if-modified-since"))
# Writes at least this big go out as two writes (no concatenation copy).
_BIG = 65536
# Bodies past this are sent by the async "send" state, a slice at a time, each slice waiting for the
# client to read (idle_send_timeout, send_timeout): a client costs at most about this much buffer.
_DIRECT = 256 * 1024
_SLICE = 256 * 1024
_LOST_HEADERS_500 = b"HTTP/1.1 500 Internal Server Error\r\nServer: Varnish\r\nConnection: close\r\n\r\n"


def resp_filters_default(ctx) -> str:
    """resp.filters as varnishd would choose them for this response (resp_Get_Filter_List)."""
    oc = ctx.obj_oc
    params = ctx.server.params
    req_headers = ctx.req.headers
    resp = ctx.resp
    return vdp_default_list(
        esi=oc is not None and oc.esi_data is not None and ctx.esi is not False,   # req.esi, resp.do_esi
        gunzip=(params.http_gzip_support and oc is not None and oc.gzipped
                and not accepts_gzip(req_headers.get("Accept-Encoding"))),
        range_=(params.http_range_support and resp is not None and resp.status == 200
                and "Range" in req_headers))


class Delivery:
    """The delivery half of ClientRequest: transmit, plain-hit templates, the writer."""

    # a streamed response's head, held until the first body bytes so both go in one send
    stream_head: bytes | None = None

    # -- plain hits -------------------------------------------------------------------------------
    # Most hits are a GET for a whole, complete object, with the built-in vcl_deliver (which changes
    # nothing). Their response head differs from one hit to the next only in X-Varnish and Age, so
    # the object's first such delivery (its miss, or a hit) leaves a template (hit_template.py) and
    # later hits fill in those two values.

    def _plain_hit(self) -> bool:
        """A delivery of the plain kind: a hit on a whole object, or the miss that fetched a cacheable
        one (still arriving, maybe: see _keep_template)."""
        oc = self.oc
        if not ((oc.complete if self.is_hit else not oc.private) and self.keep_alive
                and self.method0 == "GET" and not self.ws.overflowed and "vcl_deliver" in self.vcl.builtin_only and not self.vcl.traced):
            return False
        headers = self.ctx.req.headers
        if oc.gzipped or oc.esi_data is not None:
            # a filter may be needed (gunzip for this client, ESI): only the plain gzip client
            if oc.esi_data is not None or not accepts_gzip(headers.get("Accept-Encoding")):
                return False
        return self.ctx.req.proto == "HTTP/1.1" and headers.has_none(_NOT_PLAIN)

    def _deliver_from_template(self) -> bool:
        oc = self.oc
        template = oc.fast_head
        if template is None or template.vcl is not self.vcl or template.params_gen != self.server.params.generation:
            return False        # cut under another VCL or other parameters (http_max_hdr, ...): redo
        if oc.hits > 1 and type(template) is hit_template.HitTemplate:
            template = oc.fast_head = template.bind(oc.http)      # a hot object: its fields made once
        now = time.time()
        age = max(0, int(now - oc.t_origin))
        xid = self.ctx.xid
        head = template.head(oc.http, xid, oc.xid, age)
        # the records from RespProtocol to End, formatted once the request is done (_vsl_end)
        self.vsl_tail = (template.records(oc.http), (xid, oc.xid, age, floats_bytes(now, now - self.t_start,
                                                                                      now - self.t_prev)))
        self.t_prev = now
        self.acct_hdr = len(head)
        body = oc.body()
        counters = self.server.counters
        counters.s_resp_hdrbytes += len(head)
        counters.s_resp_bodybytes += len(body)
        if len(body) < _BIG:
            self.acct_body = len(body)
            self.session.transport.write(head + body)      # _write's small case, one call less
        else:
            self._write(head, body)
        self._drop_object()
        return True

    def _keep_template(self, head: bytes) -> None:
        """Cut the head of a plain delivery around its X-Varnish and Age values, for the next hits."""
        self._template_wanted = False
        oc = self.oc
        xid = self.ctx.xid
        xid_line = b"X-Varnish: %d %d\r\n" % (xid, oc.xid) if self.is_hit else b"X-Varnish: %d\r\n" % xid
        # a miss streams what is still arriving chunked when its length is unknown: not a hit's head
        if not self.keep_alive or self.ctx.resp.status != 200 or b"\r\nTransfer-Encoding:" in head:
            return
        oc.fast_head = hit_template.make(self.vcl, self.server.params.generation, oc.http, head, xid_line,
                                         _template_records(head))

    # -- the writer -------------------------------------------------------------------------------

    def _write(self, head: bytes, body: bytes | memoryview) -> None:
        """Head and a whole body: at once when small, else through the "send" state (send_data)."""
        transport = self.session.transport
        size = self.acct_body = len(body)
        if size < _BIG:
            transport.write(head + body)
        elif size <= _DIRECT:
            transport.write(head)
            transport.write(body)
        else:
            transport.write(head)
            self.send_data = memoryview(body)

    async def ast_send(self) -> None:
        """A big body, a slice at a time, never more than one slice ahead of what the client read."""
        data, self.send_data = self.send_data, None
        session = self.session
        transport = session.transport
        deadline = time.monotonic() + self.server.params.send_timeout
        for start in range(0, len(data), _SLICE):
            if session.closed:
                break
            transport.write(data[start:start + _SLICE])
            await session.drain(deadline)
        if session.closed:
            self.keep_alive = False
        return None

    async def _send_piece(self, data: bytes | memoryview) -> None:
        """One piece of a streamed body: framed, written, and the client given time to read it."""
        session = self.session
        if session.closed:
            return
        transport = session.transport
        size = len(data)
        self.server.counters.s_resp_bodybytes += size
        self.acct_body += size
        for start in range(0, size, _SLICE) if size > _SLICE else (0,):
            part = data[start:start + _SLICE] if size > _SLICE else data
            n = len(part)
            if self.chunked:
                if n < _BIG:
                    transport.write(b"%x\r\n" % n + bytes(part) + b"\r\n")
                else:
                    transport.write(b"%x\r\n" % n)
                    transport.write(part)
                    transport.write(b"\r\n")
            else:
                transport.write(part)
            await session.drain(self.send_deadline)
            if session.closed:
                return

    # -- transmit ---------------------------------------------------------------------------------

    def _if_range(self, resp: HttpMessage) -> bool:
        """If-Range: the range applies only to the representation the client names."""
        return if_range_matches(self.ctx.req.headers, resp.headers)

    def _open_vdps(self, resp: HttpMessage, oc: ObjCore, resp_len: int) -> tuple[Chain | None, int]:
        """Stack and open the delivery filters; (None, length) when there are none."""
        ctx = self.ctx
        names = ctx.resp_filters
        if names is None:
            ctx.obj_oc = oc
            names = resp_filters_default(ctx)
        ctx.log.append(("Filters", names))
        if not names or names.isspace():
            return None, resp_len
        server = self.server
        dc = DeliverCtx(resp, oc, ctx.req, resp_len, server.params, server.counters, self,
                        self.bo is not None and self.bo.streamed)
        chain = open_chain(stack("vdp", names, self.vcl), dc)
        if not chain.filters:
            return None, dc.length
        return chain, dc.length

    def _transmit(self, resp: HttpMessage, oc: ObjCore, synth: bool = False) -> str | None:
        """cnt_transmit + HTTP/1 delivery: filters, framing, then the bytes (or the streaming state)."""
        if self.parent is not None:
            return self._esi_transmit(resp, oc)         # an ESI include: into the parent's page
        headers = resp.headers
        ctx = self.ctx
        status = resp.status
        complete = oc.complete
        cl_text = headers.get("Content-Length")
        clval = int(cl_text) if cl_text is not None and cl_text.strip().isdigit() else -1
        resp_len = oc.length if complete else clval
        if self.method0 == "HEAD":
            sendbody = -1 if self.from_pass and not synth else 0
        elif status < 200 or status in (204, 304):
            resp_len = -1
            sendbody = 0
        else:
            sendbody = 1
        chain = None
        if sendbody >= 0:
            try:
                chain, resp_len = self._open_vdps(resp, oc, resp_len)
            except FilterError as exc:
                # varnishd: "Failure to push processors", and the connection goes, unanswered
                if exc.record is not None:
                    ctx.log.append(exc.record)
                ctx.log.append(("Error", "Failure to push processors"))
                self.keep_alive = False
                self.session.close()
                self._drop_object()
                return None
        if sendbody < 0:
            sendbody = 0                 # pass + HEAD: the backend's Content-Length stands
        elif not (clval >= 0 and clval == resp_len):
            headers.unset("Content-Length")
            if resp_len >= 0 and (sendbody or self.method0 == "HEAD"):
                # a HEAD learns the length a GET would get (of the delivered representation)
                headers.add("Content-Length", str(resp_len), printf=True)
        headers.unset("Transfer-Encoding")
        conn = headers.get("Connection")
        if conn is None:
            headers.add("Connection", "keep-alive" if self.keep_alive else "close")
        elif conn.lower() == "close":
            self.keep_alive = False        # VCL's (or a synth's) Connection: close stays where it is
        elif not self.keep_alive:
            headers.unset("Connection")
            headers.add("Connection", "close")
        chunked = False
        if sendbody and resp_len < 0:
            if ctx.req.proto == "HTTP/1.1":
                headers.add("Transfer-Encoding", "chunked")
                chunked = True
            else:
                self.keep_alive = False
                self.close_reason = "sc_tx_eof"
                headers.set("Connection", "close")
        if self.ws.overflowed:
            return self._ws_overflowed(chain)
        head = serialize_head(resp)
        if self._template_wanted and chain is None:
            self._keep_template(head)
        counters = self.server.counters
        counters.s_resp_hdrbytes += len(head)
        self.acct_hdr = len(head)
        transport = self.session.transport
        if not sendbody or resp_len == 0:
            transport.write(head)
            if chain is not None:
                chain.close()
            self._drop_object()
            return None
        self.chunked = chunked
        if chain is None and complete:
            body = oc.body()
            counters.s_resp_bodybytes += len(body)
            self._write(head, body)
            self._drop_object()
            return "send" if self.send_data is not None else None
        if chain is not None and complete and not chain.is_async and 0 <= resp_len <= _DIRECT \
                and oc.length <= _DIRECT and (oc.gzip_bits is None or oc.gzip_bits[3] <= _DIRECT):
            # small and whole (inflated too): filter it here and write at once
            try:
                out = b"".join([*chain.push(oc.body()), *chain.end()])
            except FilterError as exc:
                if exc.record is not None:
                    ctx.log.append(exc.record)
                out = None
            finally:
                chain.close()
            self._drop_object()
            if out is None:
                transport.write(head)
                self.keep_alive = False
                self.session.close()
                return None
            counters.s_resp_bodybytes += len(out)
            self._write(head, out)
            return "send" if self.send_data is not None else None
        if chain is None:
            self.stream_head = head      # goes out with the first body bytes (ast_stream)
        else:
            transport.write(head)
        self.vdp_chain = chain
        return "stream"

    def _ws_overflowed(self, chain) -> None:
        """The request's workspace overflowed (a header lost, vmod_workspace...): varnishd's
        V1D_Deliver answers a bare 500 instead and closes (v1d_error)."""
        if chain is not None:
            chain.close()
        self.ctx.log += (("Error", "workspace_client overflow"), ("RespProtocol", "HTTP/1.1"),
                         ("RespStatus", "500"), ("RespReason", "Internal Server Error"))
        self.server.counters.client_resp_500 += 1
        self.keep_alive = False
        self.close_reason = "sc_tx_eof"
        self.session.transport.write(_LOST_HEADERS_500)
        self._drop_object()
        return None

    def _flush_head(self) -> None:
        head, self.stream_head = self.stream_head, None
        if head is not None and not self.session.closed:
            self.session.transport.write(head)

    async def ast_stream(self) -> str | None:
        """Deliver a body through the filters, or one still arriving from the backend."""
        oc = self.oc
        session = self.session
        transport = session.transport
        counters = self.server.counters
        bo = self.bo
        chain, self.vdp_chain = self.vdp_chain, None
        cell = bo.reader if bo is not None and bo.oc is oc and bo.reader is not None else oc.open_reader()
        deadline = self.send_deadline = time.monotonic() + self.server.params.send_timeout
        chunked = self.chunked
        failed = False
        try:
            whole = chain is not None and oc.complete
            if whole:
                # whole already: filter the stored body a slice at a time (no copy of it)
                body = memoryview(oc.body())
                for start in range(0, len(body), _SLICE):
                    if session.closed:
                        break
                    await chain.apush(body[start:start + _SLICE], self._send_piece)
            while not session.closed and not whole:
                data = oc.read(cell)
                if not data:
                    if self.stream_head is not None:
                        self._flush_head()          # nothing to send with it yet: no waiting
                    if oc.complete or oc.failed:
                        break
                    if not await oc.wait_more(deadline - time.monotonic()):
                        # send_timeout: the whole response took too long
                        self.keep_alive = False
                        session.send_timed_out()
                        break
                    continue
                if chain is not None:
                    await chain.apush(data, self._send_piece)
                    continue
                counters.s_resp_bodybytes += len(data)
                self.acct_body += len(data)
                head, self.stream_head = self.stream_head, None
                if chunked:
                    frame = b"%x\r\n" % len(data)
                    if len(data) < _BIG:
                        transport.write(b"".join((head, frame, data, b"\r\n")) if head else
                                        frame + data + b"\r\n")
                    else:
                        transport.write(head + frame if head else frame)
                        transport.write(data)
                        transport.write(b"\r\n")
                elif head and len(data) < _BIG:
                    transport.write(head + data)
                else:
                    if head:
                        transport.write(head)
                    transport.write(data)
                await session.drain(deadline)
            if chain is not None and oc.complete and not session.closed:
                await chain.aend(self._send_piece)
        except FilterError as exc:
            # a filter found the body bad mid-delivery: the client can be told only by closing
            if exc.record is not None:
                self.ctx.log.append(exc.record)
            failed = True
        finally:
            self._flush_head()
            if chain is not None:
                chain.close()
            oc.close_reader(cell)
            if bo is not None:
                bo.reader = None
            self.bo = None
            self.oc = None
        if oc.failed or failed:
            # the backend failed mid-body: the client cannot be told but by closing
            self.keep_alive = False
            self.close_reason = "sc_tx_error"
            if failed:
                session.close()
            return None
        if chunked and not session.closed:
            transport.write(b"0\r\n\r\n")
        return None


def _template_records(head: bytes) -> bytes:
    """A plain hit's records from RespProtocol to End, cut once from its head, as an encoded payload
    (VslWriter.write's tail) and a %-template for: xid, object xid, age, the Process timestamp's
    three times, the Resp timestamp's three, and ReqAcct's six numbers."""
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    proto, _, rest = lines[0].partition(" ")
    status, _, reason = rest.partition(" ")
    parts: list[list] = [[("RespProtocol", proto), ("RespStatus", status), ("RespReason", reason)], [], []]
    conn: list = []
    part = 0
    for line in lines[1:]:
        if not line:
            continue
        if line.startswith("X-Varnish: "):
            part = 1
        elif line.startswith("Age: "):
            part = 2
        elif line.startswith("Connection: "):
            conn.append(("RespHeader", line))
        else:
            parts[part].append(("RespHeader", line))
    parts[2] += [("VCL_call", "DELIVER"), ("VCL_return", "deliver")]
    esc = [[(t, x.replace("%", "%%")) for t, x in part] for part in parts]
    conn_rec = conn[0] if conn else ("RespHeader", "Connection: keep-alive")
    run = (esc[0] + [("RespHeader", "X-Varnish: %d %d")] + esc[1] + [("RespHeader", "Age: %d")] + esc[2]
           + [("Timestamp", "Process: %s"), ("Filters", ""),     # a plain hit's empty list
              (conn_rec[0], conn_rec[1].replace("%", "%%")),
              ("Timestamp", "Resp: %s"), ("ReqAcct", "%d %d %d %d %d %d"), ("End", "")])
    return "\0".join(map(" ".join, run)).encode("utf-8", "surrogateescape")
