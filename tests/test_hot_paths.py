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


class _Sink(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data) -> None:
        self.out += data

    def get_extra_info(self, name, default=None):
        return {"peername": ("10.0.0.9", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_session_logs_the_vcl_each_request_runs_in():
    """VCL_use and ReqStart are made once per session and VCL: a vcl.use between two requests of a
    kept-alive connection shows in the second's records."""
    from inproc import RecordingLog

    from cacheserver.protocol import ClientProtocol
    from cacheserver.server import Server

    async def run() -> list[str]:
        srv = Server()
        srv.vsl = log = RecordingLog()
        for name in ("one", "two"):
            srv.vcl_load(name, 'vcl 4.1;\nbackend default none;\nsub vcl_recv { return (synth(200)); }\n', "t.vcl")
        srv.vcl_use("one")
        proto = ClientProtocol(srv, "a7")
        proto.connection_made(_Sink())
        proto.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        srv.vcl_use("two")
        proto.data_received(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        return log.texts("VCL_use") + log.texts("ReqStart")

    assert asyncio.run(run()) == ["one", "two", "10.0.0.9 5555 a7", "10.0.0.9 5555 a7"]
