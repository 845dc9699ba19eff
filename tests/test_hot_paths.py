"""The shortcuts the hit path takes (bench/hit_micro.py counts their worth) give what the long way gives."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from test_coalesced_writes import _exchange

from cacheserver import fsm
from vcl.runtime import Headers


def test_digest_memo_gives_sha256_and_stays_bounded(monkeypatch):
    monkeypatch.setattr(fsm, "_DIGESTS", {})
    monkeypatch.setattr(fsm, "_DIGESTS_MAX", 4)
    for i in range(10):
        text = f"/obj{i}\0host\0"
        want = hashlib.sha256(text.encode()).digest()
        assert fsm._digest_of(text) == want
        assert fsm._digest_of(text) == want       # from the table now
        assert len(fsm._DIGESTS) <= 4
    assert fsm._digest_of("/\udcff\0x\0") == hashlib.sha256(b"/\xff\0x\0").digest()   # raw bytes kept
    long = "/" + "x" * fsm._DIGEST_KEY_MAX + "\0"
    assert fsm._digest_of(long) == hashlib.sha256(long.encode()).digest()
    assert long not in fsm._DIGESTS               # long inputs are hashed, not kept


def test_all_str_tells_strands_and_bytes_apart():
    assert fsm._all_str([]) and fsm._all_str(["a", "b"])
    assert not fsm._all_str(["a", ("b", None)])
    assert not fsm._all_str([b"a"])


def test_header_scans():
    h = Headers([("Host", "x"), ("Cache-Control", "a"), ("cache-control", "b")])
    assert h.get_lower("host") == "x" and h.get_lower("cookie") is None
    assert h.count("cache-control") == 2 and h.count("host") == 1 and h.count("range") == 0
    assert h.has_none(frozenset({"range", "if-none-match"}))
    assert not h.has_none(frozenset({"range", "host"}))


@pytest.mark.parametrize("path", ["/miss", "/pass"])
def test_a_body_that_came_with_the_head_is_whole_before_the_client_looks(path, monkeypatch):
    """The fetch finishes such an object first: the client writes it at once (no streaming state);
    a body still to come is streamed, its head sent first."""
    streamed = []
    stream = fsm._ASYNC_STEPS["stream"]

    async def spy(request):
        streamed.append(request.oc.complete)
        return await stream(request)
    monkeypatch.setitem(fsm._ASYNC_STEPS, "stream", spy)
    writes, got = asyncio.run(_exchange(path))
    assert writes == [got] and got.endswith(b"\r\n\r\nhello")
    assert streamed == []
    writes, got = asyncio.run(_exchange(path + "2", asyncio.Event()))
    assert len(writes) == 2 and writes[1] == b"hello"
    assert streamed == [False]
