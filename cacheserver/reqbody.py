"""A client request body, read as it arrives (Varnish's req body: cache_req_body.c, VRB_*).

The client side (`ClientProtocol`) is the producer: it `feed()`s the parser's body bytes, then calls
`finish()` (the message is complete) or `fail()` (the client went away or was too slow). The request
is the consumer, in one of three ways, as in varnishd:

- `chunks()`: stream it once (a pass or a fetch sends it to the backend chunk by chunk). A second
  stream of a body that was not cached is an error: the bytes are gone.
- `cache(limit)`: `std.cache_req_body()`, read it whole into memory (at most `limit` bytes), after
  which `chunks()` can replay it any number of times (retries, restarts).
- `ignore()`: the request is done without it (a hit, a synth); what still arrives is dropped.

Flow control: at most `HIGH_WATER` unread bytes are held; past that the producer's `pause()` is
called (the connection stops reading) until the consumer has taken them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

# Unread body bytes held before the connection stops reading from the client.
HIGH_WATER = 64 * 1024


class ReqBodyError(Exception):
    """The body cannot be had: the client closed or stalled, it was too big to cache, or it is gone."""


class ReqBody:
    """The body of one client request; `length` is its Content-Length, None when chunked."""

    def __init__(self, length: int | None, *, timeout: float = 5.0,
                 pause: Callable[[], None] | None = None, resume: Callable[[], None] | None = None,
                 want_continue: Callable[[], None] | None = None) -> None:
        self.length = length
        self.timeout = timeout              # the longest wait for the next bytes (timeout_idle)
        self._pause = pause
        self._resume = resume
        # called once, before the first wait for bytes: sends "100 Continue" when the client asked
        self.want_continue = want_continue
        self._chunks: deque[bytes] = deque()
        self._held = 0                      # bytes in _chunks
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self.received = 0                   # body bytes seen so far
        self.taken = 0                      # body bytes handed to a reader (cached, sent on, discarded)
        self.done = length == 0             # every byte has arrived
        self.error: str | None = None       # why the body broke off
        self.state = "none" if length == 0 else "unread"   # unread | taken | cached | ignored | none
        self.cached: list[bytes] | None = [] if length == 0 else None

    @classmethod
    def empty(cls) -> ReqBody:
        """No body: one shared instance (a body of length 0 has no state that changes)."""
        return NO_BODY

    @classmethod
    def of(cls, data: bytes) -> ReqBody:
        """A body that is already whole (tests, ESI subrequests)."""
        body = cls(len(data))
        if data:
            body.feed(data)
            body.finish()
        return body

    @property
    def present(self) -> bool:
        """The request has a body (Content-Length > 0, or chunked)."""
        return self.length != 0

    # -- producer side ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.want_continue is not None and not self._chunks and self.received == len(data):
            self.want_continue = None       # the client sent its body without waiting: no 100
        if self.state == "ignored":
            return
        self._chunks.append(data)
        self._held += len(data)
        if self._held > HIGH_WATER and not self._paused:
            self._paused = True
            if self._pause is not None:
                self._pause()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, reason: str) -> None:
        if not self.done:
            self.error = reason
            self.done = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send_continue(self) -> None:
        """Answer the client's `Expect: 100-continue` now, if it still waits for it."""
        if self.want_continue is not None:
            send, self.want_continue = self.want_continue, None
            send()

    # -- consumer side ------------------------------------------------------------------------------

    async def _next(self) -> bytes:
        """The next bytes as they came, b"" at the end; raises ReqBodyError if the body broke off."""
        while not self._chunks:
            if self.error is not None:
                raise ReqBodyError(self.error)
            if self.done:
                return b""
            self.send_continue()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._waiter
            except TimeoutError:
                self.fail("timeout reading the request body")
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._held -= len(data)
        self.taken += len(data)
        if self._paused and self._held <= HIGH_WATER // 2:
            self._paused = False
            if self._resume is not None:
                self._resume()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk: replayed when cached, else streamed from the client once."""
        if self.cached is not None:
            for data in self.cached:
                yield data
            return
        if self.state != "unread":
            raise ReqBodyError("request body already consumed")
        self.state = "taken"
        while True:
            data = await self._next()
            if not data:
                return
            yield data

    async def cache(self, limit: int) -> bool:
        """std.cache_req_body(limit): read the whole body into memory; False if it is too big or broke off."""
        if self.cached is not None:
            return sum(map(len, self.cached)) <= limit
        if self.state != "unread":
            return False
        if self.length is not None and self.length > limit:
            self.error = "Request body too big to cache"
            self.state = "failed"
            return False
        self.state = "caching"
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                data = await self._next()
                if not data:
                    break
                size += len(data)
                if size > limit:
                    self.error = "Request body too big to cache"
                    self.state = "failed"
                    return False
                parts.append(data)
        except ReqBodyError:
            self.state = "failed"
            return False
        self.cached = parts
        self.state = "cached"
        return True

    async def discard(self) -> None:
        """Read the body to its end and drop it (VRB_Ignore on a connection that stays open); a
        body that breaks off is left to the connection to act on."""
        if self.state != "unread":
            return
        self.state = "taken"
        try:
            while await self._next():
                pass
        except ReqBodyError:
            pass

    def cached_bytes(self) -> bytes | None:
        return b"".join(self.cached) if self.cached is not None else None

    def ignore(self) -> None:
        """The request is done without its body: drop what is held and whatever still comes."""
        if self.state in ("unread", "taken"):
            self.state = "ignored"
        self.want_continue = None
        self._chunks.clear()
        self._held = 0
        if self._paused:
            self._paused = False
            if self._resume is not None:
                self._resume()

    def peek_buffered(self) -> list[bytes]:
        """The bytes received and not consumed, left in place."""
        return list(self._chunks)


NO_BODY = ReqBody(0)
