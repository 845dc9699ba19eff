"""A bare asyncio + httptools server answering every request with one fixed response.

    python bench/tiny_http.py PORT hello    # the docs' /tcp answer: the baseline of `python -m bench tcp`
    python bench/tiny_http.py PORT object   # a cacheable 1 KiB object
    python bench/tiny_http.py PORT gzip     # a cacheable gzipped 16 KiB page

Its bodies are also what bench/origin.py (the harness's origin) serves.
"""

from __future__ import annotations

import asyncio
import sys
import zlib

import httptools

BODY = b"x" * 1024
# a page of HTML-ish text (compresses about 5:1, as real pages do), gzipped as an origin would
PAGE = b"".join(b"<li class=\"item-%d\"><a href=\"/product/%d\">Product number %d</a> %s</li>\n"
                % (i, i * 7919 % 10007, i, b"lorem ipsum dolor sit amet"[: i % 27]) for i in range(220))[:16384]
_z = zlib.compressobj(6, zlib.DEFLATED, 31)
GZ_PAGE = _z.compress(PAGE) + _z.flush()
RESPONSES = {
    "hello": (b"HTTP/1.1 200 OK\r\nServer: Varnish Cache Edgerprise\r\nContent-Type: text/plain\r\n"
              b"Content-Length: 13\r\n\r\nHello World!\n"),
    "object": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=3600\r\n"
               b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY,
    "gzip": (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: max-age=3600\r\n"
             b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(GZ_PAGE)) + GZ_PAGE,
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
