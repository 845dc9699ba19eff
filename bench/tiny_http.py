"""A bare asyncio + httptools server answering every request with one fixed response.

    python bench/tiny_http.py PORT hello    # the docs' /tcp answer: the baseline for tcp_bench
    python bench/tiny_http.py PORT object   # a cacheable 1 KiB object: the origin for hit_bench
"""

from __future__ import annotations

import asyncio
import sys

import httptools

BODY = b"x" * 1024
RESPONSES = {
    "hello": (b"HTTP/1.1 200 OK\r\nServer: Varnish Cache Edgerprise\r\nContent-Type: text/plain\r\n"
              b"Content-Length: 13\r\n\r\nHello World!\n"),
    "object": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=3600\r\n"
               b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY,
}


class FixedResponse(asyncio.Protocol):
    response = b""

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(self.response)


async def main(port: int, kind: str) -> None:
    FixedResponse.response = RESPONSES[kind]
    server = await asyncio.get_running_loop().create_server(FixedResponse, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
