"""The baseline: a bare asyncio + httptools server giving the docs' /tcp answer to every request."""

from __future__ import annotations

import asyncio
import sys

import httptools

HELLO = (b"HTTP/1.1 200 OK\r\nServer: Varnish Cache Edgerprise\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 13\r\n\r\nHello World!\n")


class Hello(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(HELLO)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Hello, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
