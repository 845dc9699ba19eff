"""cacheserver.reqbody: a request body read as it arrives."""

from __future__ import annotations

import asyncio

import pytest

from cacheserver.reqbody import HIGH_WATER, NO_BODY, ReqBody, ReqBodyError


async def collect(body: ReqBody) -> bytes:
    return b"".join([data async for data in body.chunks()])


def run(coro):
    return asyncio.run(coro)


def test_streamed_once_as_it_arrives():
    async def main():
        body = ReqBody(10)
        got = []

        async def consume():
            async for data in body.chunks():
                got.append(data)

        task = asyncio.create_task(consume())
        body.feed(b"01234")
        await asyncio.sleep(0)
        assert got == [b"01234"]          # the consumer had the first part before the rest came
        body.feed(b"56789")
        body.finish()
        await task
        assert got == [b"01234", b"56789"]
        with pytest.raises(ReqBodyError, match="already consumed"):
            await collect(body)
    run(main())


def test_cached_within_the_limit_replays():
    async def main():
        body = ReqBody(None)                 # chunked: the size is known only at the end
        body.feed(b"abc")
        body.feed(b"def")
        body.finish()
        assert await body.cache(6)
        assert await collect(body) == b"abcdef"
        assert await collect(body) == b"abcdef"
    run(main())


def test_cache_refuses_a_declared_length_over_the_limit_without_reading():
    async def main():
        body = ReqBody(2000)
        assert not await body.cache(1000)
        assert body.received == 0
        assert body.error == "Request body too big to cache"
    run(main())


def test_cache_refuses_a_chunked_body_once_it_passes_the_limit():
    async def main():
        body = ReqBody(None)
        body.feed(b"x" * 600)
        body.feed(b"x" * 600)
        assert not await body.cache(1000)
    run(main())


def test_the_producer_is_paused_past_the_high_water_mark_and_resumed_when_read():
    async def main():
        events = []
        body = ReqBody(None, pause=lambda: events.append("pause"), resume=lambda: events.append("resume"))
        body.feed(b"x" * (HIGH_WATER // 2))
        assert events == []
        body.feed(b"x" * (HIGH_WATER // 2 + 1))
        assert events == ["pause"]
        body.finish()
        await collect(body)
        assert events == ["pause", "resume"]
    run(main())


def test_a_stalled_client_fails_the_body_after_the_timeout():
    async def main():
        body = ReqBody(100, timeout=0.05)
        body.feed(b"part")
        with pytest.raises(ReqBodyError, match="timeout"):
            await collect(body)
    run(main())


def test_a_client_that_goes_away_fails_the_body():
    async def main():
        body = ReqBody(100)
        body.fail("client closed the connection")
        with pytest.raises(ReqBodyError, match="closed"):
            await collect(body)
    run(main())


def test_100_continue_is_sent_once_when_the_body_is_first_waited_for():
    async def main():
        sent = []
        body = ReqBody(3, want_continue=lambda: sent.append(1))
        task = asyncio.create_task(collect(body))
        await asyncio.sleep(0)
        assert sent == [1]
        body.feed(b"abc")
        body.finish()
        assert await task == b"abc"
        body.send_continue()
        assert sent == [1]
    run(main())


def test_no_100_continue_when_the_client_sent_its_body_anyway():
    sent = []
    body = ReqBody(3, want_continue=lambda: sent.append(1))
    body.feed(b"abc")
    body.send_continue()
    assert sent == []


def test_ignored_bodies_drop_what_arrives():
    body = ReqBody(1 << 30)
    body.feed(b"x" * 1000)
    body.ignore()
    body.feed(b"y" * 1000)
    assert body.peek_buffered() == []
    assert body.received == 2000


def test_no_body_is_empty_and_replayable():
    async def main():
        assert not NO_BODY.present
        assert await collect(NO_BODY) == b""
        assert await collect(NO_BODY) == b""
        assert await NO_BODY.cache(0)
    run(main())
