"""The benchmarks' origin: a bare asyncio + httptools server, fast enough that the server in front of
it is what gets measured. Every answer is prepared once; the path picks it:

    /obj, /o/N, /miss/N, /pass/obj   1 KiB, max-age=3600 (the VCL shortens /miss/ to 1 s)
    /obj100k                         100 KiB, max-age=3600
    /gzip                            a 16 KiB HTML page, gzipped (Content-Encoding: gzip)
    /esi/page, /esi/frag/N           a page of ESI_FRAGMENTS includes, and its 1 KiB fragments
    /pass/big?bytes=N                N bytes (default 1 GiB) streamed with backpressure
    anything else                    1 KiB
    /__origin/count                  how many requests it answered so far (not counted itself): the
                                     harness's way to see how many of a load's requests were fetches

    python -m bench.origin PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools

from bench.tiny_http import BODY, GZ_PAGE

BIG_DEFAULT = 1 << 30
BIG_CHUNK = 256 * 1024
ESI_FRAGMENTS = 10
BODY_100K = b"y" * (100 * 1024)


def esi_page() -> bytes:
    """2 KiB of markup around ESI_FRAGMENTS includes."""
    body = b"<html><body>\n<p>" + b"p" * 1000 + b"</p>\n"
    for i in range(ESI_FRAGMENTS):
        body += b'<div><esi:include src="/esi/frag/%d"/></div>\n' % i
    return body + b"<p>" + b"q" * 1000 + b"</p>\n</body></html>\n"


def esi_fragment(n: int) -> bytes:
    return (b"<b>fragment %d</b>" % n).ljust(1024, b".")


def esi_assembled() -> bytes:
    """The page a client must receive: each include replaced by its fragment."""
    page = esi_page()
    for i in range(ESI_FRAGMENTS):
        page = page.replace(b'<esi:include src="/esi/frag/%d"/>' % i, esi_fragment(i))
    return page


def response(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=3600\r\n"
    return head + b"".join(h + b"\r\n" for h in extra) + b"Content-Length: %d\r\n\r\n" % len(body) + body


DEFAULT = response(BODY)
EXACT = {
    b"/obj100k": response(BODY_100K),
    b"/gzip": response(GZ_PAGE, b"Content-Encoding: gzip"),
    b"/esi/page": response(esi_page()),
}
FRAGMENTS = [response(esi_fragment(i)) for i in range(ESI_FRAGMENTS)]
BIG_BUFFER = memoryview(b"z" * BIG_CHUNK)


def answer_for(url: bytes) -> bytes | int:
    """The prepared response for url, or the byte count of a streamed body."""
    path, _, query = url.partition(b"?")
    if path == b"/pass/big":
        size = BIG_DEFAULT
        if query.startswith(b"bytes="):
            size = int(query[6:])
        return size
    if path.startswith(b"/esi/frag/"):
        return FRAGMENTS[int(path[10:]) % ESI_FRAGMENTS]
    return EXACT.get(path, DEFAULT)


COUNT_PATH = b"/__origin/count"


class Origin(asyncio.Protocol):
    answered = 0                        # requests answered, over all connections
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.left = 0                   # bytes of a streamed body still to send
        self.paused = False
        self.queue: list[bytes | int] = []    # answers waiting behind a streamed body

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, ValueError):
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        if self.url == COUNT_PATH:
            answer = response(b"%d" % Origin.answered)
        else:
            Origin.answered += 1
            answer = answer_for(self.url)
        self.url = b""
        if self.left or self.queue:
            self.queue.append(answer)
        else:
            self.send(answer)

    def send(self, answer: bytes | int) -> None:
        if isinstance(answer, bytes):
            self.transport.write(answer)
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % answer)
        self.left = answer
        self.pump()

    def pump(self) -> None:
        while self.left and not self.paused:
            n = min(self.left, BIG_CHUNK)
            self.transport.write(BIG_BUFFER[:n])
            self.left -= n
        while not self.left and self.queue and not self.paused:
            self.send(self.queue.pop(0))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Origin, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
