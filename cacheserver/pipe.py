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


async def pipe_request(request: ClientRequest) -> None:
    session = request.session
    server = request.server
    ctx = request.ctx
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
    bereq = ctx.bereq or ctx.req
    body = request.body
    chunked = body.length is None
    if chunked:
        # the body is parsed (de-chunked) as it arrives: send it on framed as it came
        bereq.headers.set("Transfer-Encoding", "chunked")
    head = _request_head(bereq)
    server.counters.s_pipe_hdrbytes += len(head)
    vbe = live(backend)
    vbe.req += 1
    vbe.pipe_hdrbytes += len(head)
    writer.write(head)
    try:
        async for data in body.chunks():
            writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
    except (ReqBodyError, ConnectionError, OSError):
        writer.close()
        session.close()
        return
    writer.write(session.take_held())
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
            session.transport.write(data)
            await session.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        session.pipe_to = None
        writer.close()
        session.close_reason = session.close_reason or "sc_tx_pipe"
        session.close()

