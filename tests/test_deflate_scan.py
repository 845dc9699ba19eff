"""cacheserver/deflate_scan.py: the start/last/stop bits of gzip bodies zlib makes, found by walking
their blocks. A bit position is checked by what it is for: splicing (ved_gzgz) the body into another
stream must give back its plain bytes, and a wrong `last` or `stop` breaks that."""

from __future__ import annotations

import random
import zlib

import pytest

from cacheserver.deflate_scan import DeflateError, GzipScanner, ScanLimit, scan_gzip
from cacheserver.esi_gzip import GZIP_HEADER, GzCrc, Splicer

TEXT = b"".join(b"<li class=\"item-%d\">Product %d, %s</li>\n" % (i, i * 7, b"x" * (i % 13)) for i in range(3000))
NOISE = random.Random(9).randbytes(50000)


def _gzip(data: bytes, level: int = 6, memlevel: int = 8, flush: int | None = None, step: int = 0) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, 31, memlevel)
    out = []
    for i in range(0, len(data), step or max(len(data), 1)):
        out.append(z.compress(data[i:i + (step or len(data))]))
        if flush is not None:
            out.append(z.flush(flush))
    out.append(z.flush())
    return b"".join(out)


def _spliced(bodies: list[tuple[bytes, bytes]], chunk: int = 1 << 20) -> bytes:
    """One gzip stream of several gzip bodies spliced as varnishd's ESI does, by their scanned bits."""
    total = GzCrc()
    out = [GZIP_HEADER]
    for gz, plain in bodies:
        sp = Splicer("gzgz", (*scan_gzip(gz), len(plain)), 32768)
        assert sp.kind == "gzgz"
        for i in range(0, len(gz), chunk):
            out += sp.push(gz[i:i + chunk])
        crc = sp.finish(None)
        total.add(crc.crc, crc.length)
    out.append(total.trailer())
    return b"".join(out)


@pytest.mark.parametrize("level", range(10))
def test_bits_of_every_level_splice_back_to_the_plain_bytes(level: int) -> None:
    for plain in (b"", b"x", b"FOOOOOOBAR", TEXT, NOISE):
        gz = _gzip(plain, level)
        start, last, stop = scan_gzip(gz)
        assert start == 80 and start <= last < stop
        assert gz[last // 8] >> (last & 7) & 1                  # the BFINAL bit is set there
        assert (stop + 7) // 8 + 8 == len(gz)                   # then only padding and the trailer
        assert zlib.decompress(_spliced([(gz, plain), (gz, plain)]), 31) == plain + plain


@pytest.mark.parametrize("flush", [zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH])
def test_flushed_streams(flush: int) -> None:
    gz = _gzip(TEXT, 6, 8, flush, 1000)
    bits = scan_gzip(gz)
    # the final block is the empty one Z_FINISH writes after the last flush: 10 bits, byte-aligned
    assert bits.last % 8 == 0 and bits.stop == bits.last + 10
    assert zlib.decompress(_spliced([(gz, TEXT), (_gzip(b"tail"), b"tail")]), 31) == TEXT + b"tail"


def test_every_stop_residue_gets_its_pad() -> None:
    """ved_gzgz pads differently for each of the 8 bit positions where a body can stop."""
    seen: dict[int, tuple[bytes, bytes]] = {}
    rnd = random.Random(3)
    for _ in range(500):
        plain = bytes(rnd.choice(b"abcdefgh <>") for _ in range(rnd.randrange(1, 300)))
        gz = _gzip(plain)
        seen.setdefault(scan_gzip(gz).stop & 7, (gz, plain))
        if len(seen) == 8:
            break
    assert sorted(seen) == list(range(8))
    bodies = [seen[r] for r in range(8)]
    for chunk in (1, 3, 64):
        page = _spliced(bodies, chunk)
        assert zlib.decompress(page, 31) == b"".join(p for _, p in bodies)


def test_chunked_feeding_finds_the_same_bits() -> None:
    for gz in (_gzip(TEXT, 9), _gzip(NOISE, 1), _gzip(TEXT, 6, 8, zlib.Z_SYNC_FLUSH, 777), _gzip(TEXT, 0)):
        want = scan_gzip(gz)
        for chunk in (1, 2, 7, 100, 4096):
            sc = GzipScanner()
            for i in range(0, len(gz), chunk):
                sc.feed(gz[i:i + chunk])
            assert sc.end() == want, chunk


def test_header_fields_move_the_start() -> None:
    plain = b"hello hello hello"
    raw = zlib.compress(plain, 6, wbits=-15)
    trailer = zlib.crc32(plain).to_bytes(4, "little") + len(plain).to_bytes(4, "little")
    head = b"\x1f\x8b\x08\x1e\0\0\0\0\0\x03" + b"\x04\x00abcd" + b"name\0" + b"comment\0"
    head += (zlib.crc32(head) & 0xFFFF).to_bytes(2, "little")
    bits = scan_gzip(head + raw + trailer)
    assert bits.start == len(head) * 8
    assert zlib.decompress(head + raw + trailer, 31) == plain


@pytest.mark.parametrize("bad, message", [
    (b"", "cut short"),
    (b"\x1f\x8b\x08\0\0\0\0\0\0\x03", "ends inside"),
    (b"PK\x03\x04" + b"\0" * 20, "no gzip magic"),
    (b"\x1f\x8b\x07" + b"\0" * 20, "not deflate"),
    (b"\x1f\x8b\x08\0\0\0\0\0\0\x03\x07\0\0\0\0\0\0\0\0", "invalid block type"),                # BTYPE 3
    (b"\x1f\x8b\x08\0\0\0\0\0\0\x03\x01\x05\x00\x00\x00hello" + b"\0" * 8, "complement"),
    (b"\x1f\x8b\x08\0\0\0\0\0\0\x03\x01\x05\x00\xfa\xffhel", "ends"),                       # cut short
    (b"\x1f\x8b\x08\0\0\0\0\0\0\x03\xff\xff\xff\xff\xff\xff\xff\xff" * 3, "over-subscribed|invalid"),
])
def test_corrupt_input_gets_a_clear_error(bad: bytes, message: str) -> None:
    with pytest.raises(DeflateError, match=message):
        scan_gzip(bad)


def test_truncated_and_junk_are_errors() -> None:
    gz = _gzip(TEXT)
    for cut in (11, len(gz) // 2, len(gz) - 9, len(gz) - 1):
        with pytest.raises(DeflateError):
            scan_gzip(gz[:cut])
    with pytest.raises(DeflateError, match="junk"):
        scan_gzip(gz + b"x")


def test_random_damage_never_raises_anything_else() -> None:
    rnd = random.Random(5)
    gz = _gzip(TEXT[:20000])
    for _ in range(300):
        bad = bytearray(gz)
        for _ in range(rnd.randrange(1, 4)):
            bad[rnd.randrange(10, len(bad) - 8)] ^= 1 << rnd.randrange(8)
        try:
            scan_gzip(bytes(bad))
        except DeflateError:
            pass


def test_the_work_is_bounded() -> None:
    gz = _gzip(NOISE, 6)
    assert scan_gzip(gz, max_bytes=len(gz)).stop > 0
    sc = GzipScanner(max_bytes=len(gz) - 1)
    with pytest.raises(ScanLimit):
        for i in range(0, len(gz), 1000):
            sc.feed(gz[i:i + 1000])
    # what it holds between pieces stays small, whatever the body's size
    sc = GzipScanner()
    for i in range(0, len(gz), 4096):
        sc.feed(gz[i:i + 4096])
        assert len(sc.buf) < 4096 + 1024
