"""ESI and gzip together, as varnishd stitches them (cache_esi_fetch.c, cache_esi_deliver.c).

An ESI page that is stored gzipped (`esi_gzip` fetch filter) is compressed so that each verbatim range
of it is a separate, byte-aligned run of deflate blocks that refers to nothing before it (a full flush
before and after). Delivery can then send the runs it keeps, as they are stored, and splice the
includes in between; the page's CRC is combined from each piece's CRC and length.

Between the runs, what an include delivers is made into deflate data too:
- a nested gzipped ESI page sends its own runs (no gzip header or trailer) and reports CRC and length;
- a gzipped object (ours or a backend's, its `gzip_bits` found by deflate_scan.py at fetch) is spliced
  as varnishd's ved_gzgz does it: its deflate data, the final block made not final, padded to a byte;
  CRC and length from its trailer;
- a gzipped object whose bits are not known (too big to scan) is inflated and re-sent as stored blocks;
- a plain body is sent as stored blocks (ved_pretend_gzip).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from cacheserver.esi_parse import EsiParser, Include
from cacheserver.filters import crc32_combine

# varnishd's gzip header for ESI pages (no name, no time, OS unix)
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
# An empty stored block with the final bit: what ends a spliced page before its trailer.
FINAL_BLOCK = b"\x01\x00\x00\xff\xff"

def stored_blocks(data: bytes | memoryview) -> Iterator[bytes]:
    """Plain bytes as non-final stored deflate blocks (at most 65535 bytes each)."""
    for i in range(0, len(data), 65535):
        part = data[i:i + 65535]
        n = len(part)
        yield bytes((0, n & 0xFF, n >> 8, ~n & 0xFF, (~n >> 8) & 0xFF)) + bytes(part)


class GzCrc:
    """CRC and length of the plain data a spliced piece stands for."""

    __slots__ = ("crc", "length")

    def __init__(self) -> None:
        self.crc = 0
        self.length = 0

    def add(self, crc: int, length: int) -> None:
        self.crc = crc32_combine(self.crc, crc, length)
        self.length += length

    def add_data(self, data: bytes | memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)

    def trailer(self) -> bytes:
        return FINAL_BLOCK + (self.crc & 0xFFFFFFFF).to_bytes(4, "little") + \
            (self.length & 0xFFFFFFFF).to_bytes(4, "little")


# -- fetch: parse and compress ---------------------------------------------------------------------

def _xfl(level: int) -> int:
    """The gzip header's XFL byte as zlib's deflate writes it for a compression level."""
    return 2 if level == 9 else 4 if level < 2 else 0


class GzipRuns:
    """Compresses a body being parsed so that every verbatim range is its own run of deflate blocks.

    `gz` lists, in page order, (cstart, cend, plain_length, crc) per verbatim range (offsets in the
    compressed body, gzip header included) and the Include entries between them."""

    def __init__(self, parser: EsiParser, level: int, memlevel: int) -> None:
        self.parser = parser
        self.z = zlib.compressobj(level, zlib.DEFLATED, -15, memlevel)
        # the stored object's header is zlib's own (varnishd's VGZ), whose XFL byte follows the
        # level; only an ESI delivery sends the fixed GZIP_HEADER
        self.header = GZIP_HEADER[:8] + bytes([_xfl(level)]) + GZIP_HEADER[9:]
        self.gz: list[tuple[int, int, int, int] | Include] = []
        self.cpos = len(GZIP_HEADER)       # compressed bytes so far
        self.done = 0                      # plain bytes compressed so far
        self.pbuf = bytearray()            # plain bytes from `done` on, not compressed yet
        self.seg_i = 0
        self.run: list[int] | None = None  # [cstart, plain_length, crc] of the open verbatim range
        self.crc = 0
        self.size = 0
        self.started = False
        self.flushed_at: dict[int, int] = {}   # body offset -> compressed bytes after a run boundary

    def _out(self, data: bytes, out: list[bytes]) -> None:
        if data:
            out.append(data)
            self.cpos += len(data)

    def _take(self, upto: int) -> bytes:
        n = upto - self.done
        data = bytes(self.pbuf[:n])
        del self.pbuf[:n]
        self.done = upto
        return data

    def _open(self, out: list[bytes]) -> None:
        if self.run is None:
            self._out(self.z.flush(zlib.Z_FULL_FLUSH), out)     # nothing before it is referred to
            self.run = [self.cpos, 0, 0]
            self.flushed_at[self.done] = self.cpos

    def _close(self, out: list[bytes]) -> None:
        if self.run is not None:
            self._out(self.z.flush(zlib.Z_FULL_FLUSH), out)     # byte-aligned end
            self.flushed_at[self.done] = self.cpos
            cstart, plen, crc = self.run
            self.run = None
            if plen:
                self.gz.append((cstart, self.cpos, plen, crc))

    def _verbatim(self, upto: int, out: list[bytes]) -> None:
        self._open(out)
        data = self._take(upto)
        self.run[1] += len(data)
        self.run[2] = zlib.crc32(data, self.run[2])
        self._out(self.z.compress(data), out)

    def _skip(self, upto: int, out: list[bytes]) -> None:
        self._close(out)
        self._out(self.z.compress(self._take(upto)), out)

    def out_at(self, offset: int) -> int:
        """The compressed length when the run boundary at body `offset` was flushed (VEP's o_last in
        a gzipped page); the last boundary before it if there was none there."""
        best = len(GZIP_HEADER)
        for at, cpos in self.flushed_at.items():
            if at <= offset:
                best = cpos
        return best

    def push(self, data: bytes) -> list[bytes]:
        """Feed the next plain piece; returns the compressed bytes to store."""
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.append(self.header)
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)
        self.pbuf += data
        self.parser.feed(data)
        self._advance(self.parser.classified(), False, out)
        return out

    def _advance(self, upto: int, final: bool, out: list[bytes]) -> None:
        """Compress the plain bytes up to `upto`, whose verbatim/skip fate the parser has decided."""
        segs = self.parser.segments
        while True:
            if self.seg_i >= len(segs):
                if self.done < upto:
                    self._skip(upto, out)      # after the last verbatim range: skipped bytes
                return
            seg = segs[self.seg_i]
            if isinstance(seg, Include):
                self._close(out)               # everything before it is decided: it ends the run
                self.gz.append(seg)
                self.seg_i += 1
                continue
            lo, hi = seg
            if self.done < lo:
                self._skip(min(lo, upto), out)
                if self.done < lo:
                    return
            if self.done < min(hi, upto):
                self._verbatim(min(hi, upto), out)
            if self.done < hi:
                return                         # the range goes on past what is decided
            if self.seg_i + 1 < len(segs) or final or upto > hi:
                self.seg_i += 1                # nothing can extend this range any more
                continue
            return                             # the last range may still grow

    def end(self, found: bool) -> tuple[list[bytes], tuple[int, int, int, int]]:
        """After parser.finish(): the rest of the body, the trailer, and the object's gzip bits."""
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.append(self.header)
        if found:
            self._advance(self.size, True, out)
        else:
            self._out(self.z.compress(self._take(self.size)), out)
        self._close(out)
        self._out(self.z.flush(zlib.Z_SYNC_FLUSH), out)
        last = self.cpos
        self._out(self.z.flush(zlib.Z_FINISH), out)
        self._out((self.crc & 0xFFFFFFFF).to_bytes(4, "little") + (self.size & 0xFFFFFFFF).to_bytes(4, "little"),
                  out)
        return out, (len(GZIP_HEADER) * 8, last * 8, last * 8 + 10, self.size)


# -- delivery: what an include sends into a gzipped page --------------------------------------------

# After a fragment's final block (its BFINAL bit cleared), what brings the deflate data to a byte
# boundary, by how many bits of the last byte the block used (ved_gzgz's choice): an empty stored block
# where its 3-bit header fits before the boundary or needs a byte more, else one to three empty fixed
# blocks (10 bits each) that end exactly on one. The first byte is OR-ed into the fragment's last.
_PAD = {
    1: (0, b"\x00\x00\xff\xff"), 3: (0, b"\x00\x00\xff\xff"), 5: (0, b"\x00\x00\xff\xff"),
    7: (0, b"\x00\x00\x00\xff\xff"),
    2: (0x08, b"\x20\x80\x00"), 4: (0x20, b"\x80\x00"), 6: (0x80, b"\x00"),
}


class Splicer:
    """Turns what an include delivers into deflate data for a gzipped parent page, keeping its CRC.

    Kinds: "raw" (a nested gzipped ESI page sends its own runs), "gzgz" (a gzipped object, spliced as
    varnishd's ved_gzgz does: its deflate data without the header, the last block's BFINAL bit cleared,
    padded to a byte; CRC and length from its trailer), "inflate" (a gzipped object whose bits are not
    known: inflated and sent as stored blocks), "plain" (sent as stored blocks, ved_pretend_gz)."""

    def __init__(self, kind: str, bits: tuple[int, int, int, int] | None, limit: int) -> None:
        self.kind = kind
        self.bits = bits
        self.crc = GzCrc()
        self.pos = 0              # object bytes seen
        self.tail = b""           # the object's last bytes: its trailer
        self.limit = limit
        self.z = None
        if kind == "gzgz":
            self.set_bits(bits)
        elif kind == "inflate":
            self.z = zlib.decompressobj(31)

    def set_bits(self, bits: tuple[int, int, int, int] | None) -> None:
        """The object's gzip bits, once it is complete; without them it can only be inflated."""
        self.bits = bits
        if bits is None or bits[1] < 0 or bits[2] <= bits[1] or bits[0] % 8:
            self.kind = "inflate"
            self.z = zlib.decompressobj(31)
        else:
            self.kind = "gzgz"

    def push(self, data: bytes) -> Iterable[bytes]:
        kind = self.kind
        if kind == "raw":
            return (data,)
        if kind == "plain":
            self.crc.add_data(data)
            return stored_blocks(data)
        if kind == "inflate":
            return self._inflate(data)
        return self._gzgz(data)

    def _gzgz(self, data: bytes) -> list[bytes]:
        start, last, stop = self.bits[0] // 8, self.bits[1], self.bits[2]
        out: list[bytes] = []
        pos = self.pos
        i, n = 0, len(data)
        if pos < start:                                    # the gzip header
            k = min(start - pos, n)
            i, pos = k, pos + k
        if i < n and pos < last // 8:                      # the blocks before the last
            k = min(last // 8 - pos, n - i)
            out.append(data[i:i + k])
            i, pos = i + k, pos + k
        if i < n and pos == last // 8:                     # the last block's first byte: not final
            out.append(bytes((data[i] & ~(1 << (last & 7)) & 0xFF,)))
            i, pos = i + 1, pos + 1
        if i < n and pos < stop // 8:                      # the rest of the last block
            k = min(stop // 8 - pos, n - i)
            out.append(data[i:i + k])
            i, pos = i + k, pos + k
        if i < n and stop & 7 and pos == stop // 8:        # its last byte, and a pad to the boundary
            mask, pad = _PAD[stop & 7]
            out.append(bytes((data[i] | mask,)) + pad)
            i, pos = i + 1, pos + 1
        if i < n:                                          # the trailer
            self.tail = (self.tail + data[i:])[-8:]
            pos += n - i
        self.pos = pos
        return out

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        z = self.z
        try:
            out = z.decompress(data, self.limit)
            while True:
                if out:
                    self.crc.add_data(out)
                    yield from stored_blocks(out)
                if not z.unconsumed_tail or z.eof:
                    break
                out = z.decompress(z.unconsumed_tail, self.limit)
        except zlib.error:
            self.z = zlib.decompressobj(31)   # a broken fragment: what came out so far stays

    def finish(self, reported: GzCrc | None) -> GzCrc:
        """CRC and length of what was sent (a nested page reports its own)."""
        if self.kind == "raw":
            return reported or GzCrc()
        if self.kind == "gzgz" and len(self.tail) == 8:
            self.crc.crc = int.from_bytes(self.tail[:4], "little")
            self.crc.length = int.from_bytes(self.tail[4:], "little")
        return self.crc
