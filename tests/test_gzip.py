"""gzip as varnishd 7.1 does it: the filter chains (filters.py) on their own, then through the server.

The .vtc cases in tests/vtc/g*.vtc check the same behaviours against the wire (and pass against
varnishd 7.1 with `vtest --varnishd`); these add what a .vtc cannot: unit checks of each filter,
and memory bounds for a 256 MB body (four times the 64 MB bound: a body held whole would show).
"""

from __future__ import annotations

import gzip
import socket
import zlib

import pytest
from serverproc import memory_kb
from test_cache_support import Resp, cache_factory

from cacheserver.counters import Counters
from cacheserver.filters import (
    BUILTIN,
    DeliverCtx,
    FetchCtx,
    Filter,
    FilterError,
    Registry,
    crc32_combine,
    open_chain,
    stack,
    vdp_default_list,
    vfp_default_list,
)
from cacheserver.params import Params
from cacheserver.storage import ObjCore
from vcl.runtime import HttpMessage

make = pytest.fixture(cache_factory)


def _beresp(*headers: tuple[str, str], status: int = 200) -> HttpMessage:
    resp = HttpMessage(proto="HTTP/1.1", status=status, reason="OK")
    for name, value in headers:
        resp.headers.add(name, value)
    return resp


def _fetch(names: str, body_pieces: list[bytes], *headers: tuple[str, str], private: bool = False):
    """Run a fetch chain over pieces; (stored body, object, beresp, counters). The object is one
    for the cache unless `private` (a pass)."""
    resp, oc, counters = _beresp(*headers), ObjCore(), Counters()
    oc.private = private
    chain = open_chain(stack("vfp", names), FetchCtx(resp, oc, Params(), counters))
    out = b"".join(p for piece in body_pieces for p in chain.push(piece)) + b"".join(chain.end())
    chain.close()
    return out, oc, resp, counters


# -- which filters: the default lists ------------------------------------------------------------

@pytest.mark.parametrize("kw, expected", [
    (dict(content_encoding=None), ""),
    (dict(content_encoding="gzip"), " testgunzip"),
    (dict(content_encoding="br"), ""),
    (dict(content_encoding=None, do_gzip=True), " gzip"),
    (dict(content_encoding="gzip", do_gzip=True), " testgunzip"),      # already gzipped
    (dict(content_encoding="gzip", do_gunzip=True), " gunzip"),
    (dict(content_encoding=None, do_gunzip=True), ""),
    (dict(content_encoding="gzip", do_gunzip=True, gzip_support=False), " testgunzip"),
    (dict(content_encoding=None, do_gzip=True, gzip_support=False), ""),
    (dict(content_encoding=None, do_esi=True), " esi"),
    (dict(content_encoding="gzip", do_esi=True), " gunzip esi_gzip"),
    (dict(content_encoding=None, do_esi=True, do_gzip=True), " esi_gzip"),
    (dict(content_encoding="gzip", body_none=True), ""),
    (dict(content_encoding="gzip", content_length=0), ""),
])
def test_vfp_default_list_is_vbf_default_filter_list(kw, expected):
    args = dict(body_none=False, content_length=None, do_gzip=False, do_gunzip=False, do_esi=False,
                gzip_support=True)
    args.update(kw)
    assert vfp_default_list(**args) == expected


def test_vdp_default_list_order():
    assert vdp_default_list(esi=True, gunzip=True, range_=True) == " esi gunzip range"
    assert vdp_default_list(esi=False, gunzip=False, range_=False) == ""


def test_unknown_filter_names_the_rest_of_the_list():
    with pytest.raises(FilterError, match=r"Filter '...nope gzip' not found"):
        stack("vfp", "gzip nope gzip")
    with pytest.raises(FilterError):
        stack("vdp", "testgunzip")          # a VFP name is not a VDP


# -- running them: gzip, gunzip, testgunzip --------------------------------------------------------

def test_gzip_vfp_rewrites_headers_and_records_exact_bits():
    body = b"abcdefgh" * 5000
    out, oc, resp, counters = _fetch(" gzip", [body[:7], body[7:]], ("ETag", '"x"'),
                                     ("Content-Length", str(len(body))), ("Vary", "Cookie"))
    # varnishd's bytes: gzip_level 6, gzip_memlevel 8, 32 KB window, nothing flushed before Z_FINISH
    z = zlib.compressobj(6, zlib.DEFLATED, 31, 8)
    assert out == z.compress(body) + z.flush()
    assert resp.headers.get("Content-Encoding") == "gzip" and resp.headers.get("Content-Length") is None
    assert resp.headers.get("ETag") == 'W/"x"' and resp.headers.get("Vary") == "Cookie, Accept-Encoding"
    assert oc.gzipped and counters.n_gzip == 1
    start, last, stop, length = oc.gzip_bits
    assert (start, length) == (80, len(body))
    # `last` is the final block's BFINAL bit; the block ends at `stop`, padding, then the trailer
    assert out[last // 8] >> (last % 8) & 1 and start <= last < stop
    assert (stop + 7) // 8 + 8 == len(out)


def test_gzip_vfp_leaves_encoded_and_partial_bodies_alone():
    out, oc, resp, counters = _fetch(" gzip", [b"abc"], ("Content-Encoding", "br"))
    assert out == b"abc" and not oc.gzipped and counters.n_gzip == 0
    resp = _beresp(status=206)
    chain = open_chain(stack("vfp", "gzip"), FetchCtx(resp, ObjCore(), Params(), Counters()))
    assert chain.filters == []


def test_gunzip_vfp_stores_plain_in_bounded_pieces():
    body = b"\0" * (8 << 20)
    packed = gzip.compress(body)
    resp, oc, counters = _beresp(("Content-Encoding", "gzip"), ("ETag", '"e"')), ObjCore(), Counters()
    chain = open_chain(stack("vfp", "gunzip"), FetchCtx(resp, oc, Params(), counters))
    sizes = [len(p) for p in chain.push(packed)] + [len(p) for p in chain.end()]
    assert sum(sizes) == len(body) and max(sizes) <= Params().gzip_buffer
    assert resp.headers.get("Content-Encoding") is None and resp.headers.get("ETag") == 'W/"e"'
    assert not oc.gzipped and counters.n_gunzip == 1


def test_a_pass_is_not_scanned_for_its_bits():
    """The bit scan costs several times the inflate: a pass, delivered once, goes without it."""
    packed = gzip.compress(b"hello" * 1000, mtime=0)
    _, cached, *_ = _fetch("testgunzip", [packed], ("Content-Encoding", "gzip"))
    _, passed, *_ = _fetch("testgunzip", [packed], ("Content-Encoding", "gzip"), private=True)
    assert cached.gzip_bits[1] > 0 and passed.gzip_bits == (80, -1, -1, 5000)


def test_testgunzip_passes_bytes_through_and_learns_the_length():
    body = b"hello" * 1000
    packed = gzip.compress(body)
    out, oc, resp, counters = _fetch("testgunzip", [packed[:3], packed[3:20], packed[20:]],
                                     ("Content-Encoding", "gzip"))
    assert out == packed and oc.gzipped and counters.n_test_gunzip == 1
    assert oc.gzip_bits[0] == 80 and oc.gzip_bits[3] == len(body)
    assert resp.headers.get("Vary") == "Accept-Encoding"


@pytest.mark.parametrize("names", ["testgunzip", "gunzip"])
@pytest.mark.parametrize("bad, message", [
    (b"not gzip at all", "Invalid Gzip data"),
    (gzip.compress(b"x" * 100, mtime=0)[:-10], "[Gg]unzip (error at the very end|failed)"),  # cut short
    (gzip.compress(b"x" * 100, mtime=0) + b"junk", "Junk after gzip data"),
], ids=["not-gzip", "cut-short", "junk-after"])   # the same ids in every xdist worker
def test_corrupt_gzip_is_a_filter_error(names, bad, message):
    with pytest.raises(FilterError, match=message):
        _fetch(names, [bad], ("Content-Encoding", "gzip"))


def test_gunzip_vdp_sets_length_from_the_bits_only_when_complete():
    body = b"payload " * 100
    stored, oc, _, _ = _fetch("gzip", [body])
    for complete, fetched, length in ((True, False, len(body)), (False, False, -1), (True, True, -1)):
        oc.complete = complete
        resp = _beresp(("Content-Encoding", "gzip"))
        dc = DeliverCtx(resp, oc, _beresp(), len(stored), Params(), Counters(), None, fetched)
        chain = open_chain(stack("vdp", "gunzip"), dc)
        assert dc.length == length and resp.headers.get("Content-Encoding") is None
        assert b"".join(chain.push(stored)) + b"".join(chain.end()) == body


def test_a_vmod_can_register_its_own_filter():
    from vmods import Vmod

    vmod = Vmod("rot")

    @vmod.filter
    class Upper(Filter):
        name = "upper"
        kind = "vdp"

        def push(self, data):
            return (data.upper(),)

    class VCL:
        uses = {"rot"}

    import vmods
    vmods.KNOWN["rot"] = __name__
    globals()["VMOD"] = vmod
    try:
        filters = stack("vdp", "gunzip upper", VCL())
        assert [f.name for f in filters] == ["gunzip", "upper"]
        with pytest.raises(FilterError):
            stack("vdp", "upper")                         # a VCL that does not import it
    finally:
        del vmods.KNOWN["rot"]
    assert isinstance(vmod.filters, Registry) and "upper" not in BUILTIN.vdp


def test_crc32_combine_is_zlibs():
    a, b = b"first part " * 99, b"second, longer part " * 1234
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b""), 0) == zlib.crc32(a)


# -- through the server ----------------------------------------------------------------------------


def _read_to_eof(sock: socket.socket, pid: int, peak: int) -> tuple[bytes, int, int]:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, head
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    got, n = len(rest), 0
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
        n += 1
        if n % 64 == 0:
            peak = max(peak, memory_kb(pid))
    return head, got, peak


def test_a_large_gzip_body_is_gunzipped_for_a_plain_client_in_bounded_memory(make):
    size = 1 << 28
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    block = b"z" * (1 << 20)
    packed = [z.compress(block) for _ in range(size // len(block))] + [z.flush()]
    packed = [p for p in packed if p]
    length = sum(map(len, packed))
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n",
                    lambda req: Resp(headers=[("Content-Encoding", "gzip")], body_gen=lambda: iter(packed),
                                     length=length))
    pid = cache.proc.proc.pid
    before = memory_kb(pid)
    with cache.proc.connect() as sock:
        sock.settimeout(60)             # a bound on a stall, not on the machine's speed
        # HTTP/1.0: the plain length is unknown while streaming, so the body ends at close
        sock.sendall(b"GET /big HTTP/1.0\r\nHost: x\r\n\r\n")
        head, got, peak = _read_to_eof(sock, pid, before)
    assert b"Content-Encoding" not in head and got == size
    assert peak - before < 64 * 1024, (before, peak)
    counters = cache.cli.counters()
    assert counters["n_gunzip"] == 1 and counters["n_test_gunzip"] == 1


def test_a_large_plain_body_is_gzipped_on_fetch_in_bounded_memory(make):
    size = 1 << 28
    block = b"y" * (1 << 20)
    vcl = ("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n"
           "sub vcl_backend_response { set beresp.do_gzip = true; }\n")
    cache, _ = make(vcl, lambda req: Resp(body_gen=lambda: (block for _ in range(size // len(block))),
                                          length=size), "-p", "gzip_level=1")
    pid = cache.proc.proc.pid
    before = memory_kb(pid)
    with cache.proc.connect() as sock:
        sock.settimeout(60)             # a bound on a stall, not on the machine's speed
        sock.sendall(b"GET /big HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        head, rest = head.split(b"\r\n\r\n", 1)
        d = zlib.decompressobj(31)
        plain = len(d.decompress(rest, 1 << 20))
        peak = before
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            plain += len(d.decompress(d.unconsumed_tail + chunk, 1 << 24))
            while d.unconsumed_tail:
                plain += len(d.decompress(d.unconsumed_tail, 1 << 24))
            peak = max(peak, memory_kb(pid))
    assert b"Content-Encoding: gzip" in head and d.eof and plain == size
    assert peak - before < 64 * 1024, (before, peak)
