"""A streamed miss or pass whose body came with the backend's head goes to the client in one write
(head and body together), and one whose body has not come yet still gets its head at once."""

from __future__ import annotations

import asyncio

import pytest

from cacheserver.protocol import ClientProtocol
from cacheserver.server import Server

RESPONSE = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello"


async def _exchange(path: str, origin_gap: asyncio.Event | None = None) -> tuple[list[bytes], bytes]:
    """GET path through an in-process server; (the client transport's writes, what the client got)."""

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            if origin_gap is None:
                writer.write(RESPONSE)
            else:                                 # the head now, the body only when told
                head, body = RESPONSE.split(b"\r\n\r\n")
                writer.write(head + b"\r\n\r\n")
                await origin_gap.wait()
                writer.write(body)
            await writer.drain()

    origin_server = await asyncio.start_server(origin, "127.0.0.1", 0)
    port = origin_server.sockets[0].getsockname()[1]
    srv = Server()
    srv.vcl_load("boot", 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "%d"; }\n'
                 'sub vcl_recv { if (req.url ~ "^/pass") { return (pass); } }\n' % port, "t.vcl")
    srv.vcl_use("boot")
    writes: list[bytes] = []

    class Counting(ClientProtocol):
        def connection_made(self, transport):
            write = transport.write

            def counted(data):
                writes.append(bytes(data))
                write(data)
            transport.write = counted
            super().connection_made(transport)

    server = await asyncio.get_running_loop().create_server(lambda: Counting(srv), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if origin_gap is not None:
            assert writes and writes[0].endswith(b"\r\n\r\n")      # the head did not wait for the body
            origin_gap.set()
        got += await asyncio.wait_for(reader.readexactly(5), 10)
    finally:
        writer.close()
        server.close()
        origin_server.close()
    return writes, got


@pytest.mark.parametrize("path", ["/miss", "/pass"])
def test_head_and_body_in_one_write(path):
    writes, got = asyncio.run(_exchange(path))
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nhello")
    assert writes == [got]


@pytest.mark.parametrize("path", ["/miss", "/pass"])
def test_head_goes_first_when_the_body_is_late(path):
    writes, got = asyncio.run(_exchange(path, asyncio.Event()))
    assert got.endswith(b"\r\n\r\nhello")
    assert len(writes) == 2 and writes[1] == b"hello"
