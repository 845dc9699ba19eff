"""ESI pages stored gzipped (cacheserver/esi_gzip.py): every verbatim range is its own run of deflate
data, so that a page can be cut out of the stored body and spliced with its includes under one CRC."""

from __future__ import annotations

import random
import zlib

import pytest

from cacheserver.deflate_scan import scan_gzip
from cacheserver.esi_gzip import GZIP_HEADER, GzCrc, GzipRuns, Splicer, crc32_combine, stored_blocks
from cacheserver.esi_parse import EsiParser, Include, parse, render

DOCS = [
    b'<html>a<esi:include src="/x"/>b<esi:remove>gone</esi:remove>c<!--esi <p>in</p> -->d'
    b'<esi:comment text="x"/>e</html>',
    b'<p>' + b'y' * 100000 + b'<esi:include src="/q"/>' + b'z' * 5000 + b'</p>',
    b'<esi:include src="/first"/><esi:include src="/second"/>',
    b'<p>unterminated<esi:include src="/x"',
]


def _fragment(inc: Include) -> bytes:
    return ("[" + inc.src + "]").encode()


def _store(body: bytes, chunk: int) -> tuple[bytes, GzipRuns, object]:
    ps = EsiParser("/")
    runs = GzipRuns(ps, 6, 8)
    out: list[bytes] = []
    for i in range(0, len(body), chunk):
        out += runs.push(body[i:i + chunk])
    doc = ps.finish()
    tail, bits = runs.end(doc is not None)
    return b"".join(out + tail), runs, (doc, bits)


@pytest.mark.parametrize("body", DOCS)
@pytest.mark.parametrize("chunk", [1, 3, 7, 100, 65536])
def test_stored_body_is_the_whole_gzip_and_its_runs_splice_into_the_page(body: bytes, chunk: int) -> None:
    stored, runs, (doc, bits) = _store(body, chunk)
    # the stored object is one valid gzip member of the whole body (resp.do_esi = false sends it)
    assert zlib.decompress(stored, 31) == body
    assert bits[0] == 80 and bits[3] == len(body) and bits[1] % 8 == 0
    # the page: header, runs as stored, includes as stored blocks, one trailer
    crc = GzCrc()
    pieces = [GZIP_HEADER]
    for g in runs.gz:
        if isinstance(g, Include):
            data = _fragment(g)
            pieces += stored_blocks(data)
            crc.add_data(data)
        else:
            cstart, cend, plen, c = g
            pieces.append(stored[cstart:cend])
            crc.add(c, plen)
    pieces.append(crc.trailer())
    assert zlib.decompress(b"".join(pieces), 31) == render(parse(body, "/")[0], body, _fragment)


def test_crc32_combine() -> None:
    rnd = random.Random(1)
    for _ in range(50):
        a = rnd.randbytes(rnd.randrange(0, 5000))
        b = rnd.randbytes(rnd.randrange(0, 70000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def _splice(splicer: Splicer, body: bytes, chunk: int) -> tuple[bytes, GzCrc]:
    out = b"".join(p for i in range(0, len(body), chunk) for p in splicer.push(body[i:i + chunk]))
    return out, splicer.finish(None)


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_splicers_make_deflate_data_with_its_crc(chunk: int) -> None:
    plain = b"fragment " * 500
    body = zlib.compress(plain, 6, wbits=31)
    scanned = (*scan_gzip(body), len(plain))
    for kind, bits, data in (("gzgz", scanned, body),
                             ("gzgz", None, body),          # bits not known: inflated instead
                             ("inflate", None, body),
                             ("plain", None, plain)):
        out, crc = _splice(Splicer(kind, bits, 32768), data, chunk)
        page = GZIP_HEADER + out + crc.trailer()
        assert zlib.decompress(page, 31) == plain, kind
        assert (crc.crc, crc.length) == (zlib.crc32(plain), len(plain)), kind


@pytest.mark.parametrize(("level", "xfl"), [(6, 0), (9, 2), (1, 4), (0, 4)])
def test_stored_gzip_header_is_zlibs_for_the_level(level: int, xfl: int) -> None:
    """A page parsed for ESI and stored gzipped carries the header varnishd's deflate writes for
    gzip_level (XFL 2 only at 9): with no ESI markup it is delivered as stored, header and all."""
    ps = EsiParser("/")
    runs = GzipRuns(ps, level, 8)
    body = b"var shop = {};\n" * 200
    stored = b"".join(runs.push(body) + runs.end(ps.finish() is not None)[0])
    assert stored[:10] == bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, xfl, 3])
    zlib_own = zlib.compressobj(level, zlib.DEFLATED, 31)
    assert stored[:10] == (zlib_own.compress(body) + zlib_own.flush())[:10]
    assert zlib.decompress(stored, 31) == body
