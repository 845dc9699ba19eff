"""return (pipe): the request goes to the backend as it came, then bytes flow both ways untouched."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from cacheserver.backends import live, resolve
from cacheserver.http1 import wire
from cacheserver.reqbody import ReqBodyError

if TYPE_CHECKING:
    from cacheserver.fsm import ClientRequest

log = logging.getLogger("cacheserver.pipe")


def _request_head(req) -> bytes:
    lines = [f"{req.method} {req.url} {req.proto}\r\n"]
    lines += [f"{n}: {v}\r\n" for n, v in req.headers.items()]
    lines.append("\r\n")
    return wire("".join(lines))


class _Stamps:
    """The pipe's backend transaction's Timestamp records (its own start and previous event)."""

    def __init__(self) -> None:
        self.start = self.prev = time.time()
        self.records = [("Timestamp", "Start: %.6f 0.000000 0.000000" % self.start)]

    def stamp(self, event: str) -> None:
        now = time.time()
        self.records.append(("Timestamp", "%s: %.6f %.6f %.6f" % (event, now, now - self.start, now - self.prev)))
        self.prev = now


async def pipe_request(request: ClientRequest) -> None:
    session = request.session
    server = request.server
    ctx = request.ctx
    stamps = _Stamps()
    request._ts("Process")
    stamps.stamp("Process")
    backend = resolve(ctx.bereq_backend if ctx.bereq_backend is not None else ctx.backend_hint, ctx)
    if backend is None or backend.host is None:
        session.close_reason = "sc_tx_error"
        session.close()
        return
    idle = server.backend_pools.take_streams(backend.host, int(backend.port))
    if idle is not None:
        reader, writer = idle
        server.counters.backend_reuse += 1
    else:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, int(backend.port)), server.params.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            # varnishd answers nothing: the client sees the connection close
            server.counters.backend_fail += 1
            session.close_reason = "sc_tx_error"
            session.close()
            return
        server.counters.backend_conn += 1
    stamps.stamp("Connected")
    bereq = ctx.bereq or ctx.req
    body = request.body
    chunked = body.length is None
    if chunked:
        # the body is parsed (de-chunked) as it arrives: send it on framed as it came
        bereq.headers.set("Transfer-Encoding", "chunked")
    head = _request_head(bereq)
    server.counters.s_pipe_hdrbytes += request.acct_req     # varnishd counts the client's head
    vbe = live(backend)
    vbe.req += 1
    vbe.pipe_hdrbytes += len(head)
    writer.write(head)
    request._ts("Pipe")
    _log_pipe(request, bereq, backend, writer, stamps)
    session.pipe_in = body_in = 0
    out = 0
    try:
        async for data in body.chunks():
            body_in += len(data)
            server.counters.s_pipe_in += len(data)
            writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
    except (ReqBodyError, ConnectionError, OSError):
        writer.close()
        session.close()
        return
    # what the client sent past this request goes on to the backend, pipelined requests already
    # parsed included (varnishd sends its whole read buffer)
    after = session.bytes_after(request)
    held = session.take_held()
    writer.write(held if after is None else after)
    session.pipe_to = writer
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), server.params.pipe_timeout or None)
            except TimeoutError:
                # pipe_timeout: nothing in either direction for that long ends the pipe
                if time.monotonic() - session.last_active < server.params.pipe_timeout:
                    continue
                break
            if not data or session.closed:
                break
            server.counters.s_pipe_out += len(data)
            vbe.pipe_in += len(data)          # VBE counts from the backend's side
            out += len(data)
            session.transport.write(data)
            await session.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        session.pipe_to = None
        writer.close()
        session.close_reason = session.close_reason or "sc_tx_pipe"
        session.close()
        request._ts("PipeSess")
        # as varnishd: header bytes of the client request and of bereq, bytes piped each way
        ctx.log.append(("PipeAcct", f"{request.acct_req} {len(head)} {body_in + session.pipe_in} {out}"))
        # (the bytes go to PipeAcct: the backend transaction counts none)
        server.vsl.write(request.pipe_xid, "b", [
            ("BackendClose", f"{request.pipe_fd} {backend.name} close Piped transaction"),
            ("BereqAcct", "0 0 0 0 0 0"), ("End", "")])


def _log_pipe(request: ClientRequest, bereq, backend, writer: asyncio.StreamWriter, stamps: _Stamps) -> None:
    """The pipe's backend transaction (the request linked it before vcl_pipe), written at its end
    (Begin first)."""
    ctx = request.ctx
    xid = request.pipe_xid
    sock = writer.get_extra_info("socket")
    local = writer.get_extra_info("sockname") or ("-", "-")
    request.pipe_fd = sock.fileno() if sock is not None else -1
    stamp, process, connected = stamps.records
    records = [("Begin", f"bereq {ctx.xid} pipe"), stamp, ("BereqMethod", bereq.method),
               ("BereqURL", bereq.url), ("BereqProtocol", bereq.proto)]
    records += [("BereqHeader", f"{n}: {v}") for n, v in bereq.headers.items()]
    records += [process, connected]
    records.append(("BackendOpen", f"{request.pipe_fd} {backend.name} {backend.host} {backend.port} "
                                   f"{local[0]} {local[1]} connect"))
    stamps.records = []
    stamps.stamp("Bereq")
    records += stamps.records
    # the transaction's records so far go out now; BackendClose and End when the pipe ends
    request.server.vsl.write(xid, "b", records)

