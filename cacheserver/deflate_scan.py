"""Where the blocks of a deflate stream lie, in bits: what varnishd's zlib (libvgz) records and Python's
zlib does not tell.

varnishd keeps, for every gzip object it stores, three bit offsets into the stored body (OA_GZIPBITS,
logged in the `Gzip` record): `start`, where the first deflate block begins; `last`, the BFINAL bit of
the final block's header; `stop`, just past the final block's end. ESI delivery uses them to splice a
gzipped fragment into a gzipped page without inflating it (clear the BFINAL bit, pad to a byte).

`GzipScanner` finds them by walking the blocks (RFC 1951 3.2.3) as the body arrives, a piece at a
time: a stored block is skipped by its length; a fixed or dynamic Huffman block is decoded symbol by
symbol (only code lengths are looked at: no output is made), since nothing else tells where it ends.
It holds at most about a kilobyte beyond the piece it is given. Bad input gets `DeflateError` saying
what is wrong (never another exception, never a loop without end), and `max_bytes` bounds the work:
past it, `ScanLimit`. `scan_gzip()` does it for a whole body at once.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DeflateError", "ScanLimit", "GzipBits", "GzipScanner", "scan_gzip", "gzip_header_length"]


class DeflateError(ValueError):
    """The data is not a well-formed deflate (or gzip) stream."""


class ScanLimit(DeflateError):
    """The stream is longer than the scan may read."""


class _Truncated(DeflateError):
    """The data ends before the stream does."""


class GzipBits(NamedTuple):
    """Bit offsets in the scanned buffer, as varnishd's OA_GZIPBITS."""

    start: int   # first block header
    last: int    # BFINAL bit of the final block
    stop: int    # first bit after the final block


# -- code tables ------------------------------------------------------------------------------------
# A decoding table is indexed by the next `bits` input bits (LSB first, as deflate sends Huffman codes
# bit-reversed). Only how many bits a symbol takes matters (no output is made), so a literal/length
# entry is a number: a literal's code length (1-15); 16 + code length + extra bits for a length (a
# distance follows); _END + code length for end of block; _INVALID for what is not a code. A distance
# entry is its code length plus extra bits, or _INVALID.

_LEN_EXTRA = (0,) * 8 + (1,) * 4 + (2,) * 4 + (3,) * 4 + (4,) * 4 + (5,) * 4 + (0,)   # symbols 257-285
_DIST_EXTRA = (0, 0, 0, 0) + tuple(n // 2 for n in range(2, 28))                       # symbols 0-29
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
_INVALID = 1 << 20
_END = 64


def _reverse(code: int, length: int) -> int:
    out = 0
    for _ in range(length):
        out = (out << 1) | (code & 1)
        code >>= 1
    return out


def _table(lengths: list[int], entry, what: str, invalid: int = _INVALID) -> tuple[list[int], int]:
    """The decoding table for canonical Huffman code lengths (RFC 1951 3.2.2); `entry(symbol, length)`
    makes each entry. An over-subscribed set of lengths is an error; an incomplete one leaves entries
    that are not codes (decoding one is an error)."""
    bits = max(lengths, default=0)
    if bits == 0:
        return [invalid] * 2, 1
    counts = [0] * 16
    for n in lengths:
        counts[n] += 1
    counts[0] = 0
    left = 1
    for n in range(1, 16):
        left = (left << 1) - counts[n]
        if left < 0:
            raise DeflateError(f"over-subscribed {what} code")
    next_code = [0] * 16
    code = 0
    for n in range(1, 16):
        code = (code + counts[n - 1]) << 1
        next_code[n] = code
    size = 1 << bits
    table = [invalid] * size
    for sym, n in enumerate(lengths):
        if n:
            rev = _reverse(next_code[n], n)
            next_code[n] += 1
            table[rev::1 << n] = [entry(sym, n)] * (size >> n)
    return table, bits


def _litlen_entry(sym: int, n: int) -> int:
    if sym < 256:
        return n
    if sym == 256:
        return _END + n
    if sym <= 285:
        return 16 + n + _LEN_EXTRA[sym - 257]
    return _INVALID                     # 286, 287: in the fixed code, never valid in data


def _dist_entry(sym: int, n: int) -> int:
    if sym < 30:
        return n + _DIST_EXTRA[sym]
    return _INVALID


def _cl_entry(sym: int, n: int) -> int:
    return sym << 4 | n


_FIXED = (_table([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8, _litlen_entry, "literal/length"),
          _table([5] * 32, _dist_entry, "distance"))


# -- the scan --------------------------------------------------------------------------------------

class _Bits:
    """An LSB-first bit reader over a buffer, from a bit offset; reading past its end raises _Truncated."""

    __slots__ = ("data", "end", "pos", "buf", "cnt")

    def __init__(self, data: bytes | bytearray, bit: int) -> None:
        self.data = data
        self.end = len(data)
        self.pos = bit >> 3       # next byte to load
        self.buf = 0
        self.cnt = 0              # bits in buf
        self.take(bit & 7)

    def tell(self) -> int:
        return self.pos * 8 - self.cnt

    def need(self, n: int) -> None:
        while self.cnt < n:
            if self.pos >= self.end:
                raise _Truncated("deflate data ends inside a block")
            take = min(7, self.end - self.pos)
            self.buf |= int.from_bytes(self.data[self.pos:self.pos + take], "little") << self.cnt
            self.pos += take
            self.cnt += take * 8

    def take(self, n: int) -> int:
        self.need(n)
        v = self.buf & ((1 << n) - 1)
        self.buf >>= n
        self.cnt -= n
        return v

    def align(self) -> None:
        drop = self.cnt & 7
        self.buf >>= drop
        self.cnt -= drop


def _dynamic_tables(rd: _Bits) -> tuple[tuple[list[int], int], tuple[list[int], int]]:
    hlit = rd.take(5) + 257
    hdist = rd.take(5) + 1
    hclen = rd.take(4) + 4
    if hlit > 286 or hdist > 30:
        raise DeflateError("too many length or distance symbols")
    cl = [0] * 19
    for i in range(hclen):
        cl[_CL_ORDER[i]] = rd.take(3)
    cl_table, cl_bits = _table(cl, _cl_entry, "code length", -1)
    cl_mask = (1 << cl_bits) - 1
    lengths: list[int] = []
    total = hlit + hdist
    while len(lengths) < total:
        rd.need(cl_bits)
        e = cl_table[rd.buf & cl_mask]
        if e < 0:
            raise DeflateError("invalid code length code")
        rd.take(e & 15)
        sym = e >> 4
        if sym < 16:
            lengths.append(sym)
            continue
        if sym == 16:
            if not lengths:
                raise DeflateError("repeat of a code length with none before it")
            lengths += [lengths[-1]] * (3 + rd.take(2))
        elif sym == 17:
            lengths += [0] * (3 + rd.take(3))
        else:
            lengths += [0] * (11 + rd.take(7))
    if len(lengths) > total:
        raise DeflateError("code lengths repeat past the end")
    if lengths[256] == 0:
        raise DeflateError("no end-of-block code")
    return (_table(lengths[:hlit], _litlen_entry, "literal/length"),
            _table(lengths[hlit:], _dist_entry, "distance"))


def _skip_huffman(data: bytearray, bit: int, lit: tuple[list[int], int], dist: tuple[list[int], int],
                  final: bool) -> tuple[int, bool]:
    """Step over the symbols of a Huffman block from bit offset `bit` of `data`: (the bit after its
    end-of-block code, True), or (where to go on from, False) when more data is needed first."""
    lt, lbits = lit
    dt, dbits = dist
    lmask = (1 << lbits) - 1
    dmask = (1 << dbits) - 1
    end = len(data)
    pos = bit >> 3
    buf = cnt = 0
    skip = bit & 7
    while cnt >= 0:
        if cnt < 48:                  # enough for the longest length + distance pair (15+5+15+13)
            take = end - pos
            if take >= 7:
                take = 7
            elif not final:
                return pos * 8 - cnt + skip, False
            if take > 0:
                buf |= int.from_bytes(data[pos:pos + take], "little") << cnt
                pos += take
                cnt += take * 8
            if skip:                  # the block starts inside a byte
                buf >>= skip
                cnt -= skip
                skip = 0
        e = lt[buf & lmask]
        if e < 16:                    # a literal
            buf >>= e
            cnt -= e
            continue
        if e < _END:                  # a length, then a distance
            e -= 16
            buf >>= e
            d = dt[buf & dmask]
            if d == _INVALID:
                raise DeflateError("invalid distance code")
            buf >>= d
            cnt -= e + d
            continue
        if e == _INVALID:
            raise DeflateError("invalid literal/length code")
        cnt -= e - _END               # end of block
        if cnt < 0:
            break
        return pos * 8 - cnt, True
    raise _Truncated("deflate data ends inside a block")


# A block header is parsed only once this many bytes of it are at hand (or the body has ended): a
# dynamic header takes at most 3 + 14 + 19*3 + 316*14 bits, under 600 bytes.
_HEADER_BYTES = 640
_GZIP_HEADER_MAX = 65536


class GzipScanner:
    """Feed a one-member gzip body piece by piece (`feed`), then `end()` gives its bits."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.buf = bytearray()    # what is not consumed yet
        self.base = 0             # body offset of buf[0]
        self.bit = 0              # next bit to read, in buf
        self.total = 0
        self.state = "gzip"       # gzip header, block header, stored, huffman, trailer, done
        self.final = False        # the current block is the last one
        self.remaining = 0        # bytes of the current stored block still to come
        self.tables: tuple | None = None
        self.start = self.last = self.stop = -1

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.total += len(data)
        if self.max_bytes is not None and self.total > self.max_bytes:
            raise ScanLimit(f"gzip body longer than {self.max_bytes} bytes: not scanned")
        self.buf += data
        self._run(False)
        done = self.bit >> 3
        if done:
            del self.buf[:done]
            self.base += done
            self.bit -= done * 8

    def end(self) -> GzipBits:
        self._run(True)
        if self.state != "done":
            raise DeflateError("gzip data ends early")
        return GzipBits(self.start, self.last, self.stop)

    def _block_done(self) -> None:
        if self.final:
            self.stop = self.base * 8 + self.bit
            self.bit = (self.bit + 7) & ~7
            self.state = "trailer"
        else:
            self.state = "block"

    def _run(self, final: bool) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == "huffman":
                self.bit, ended = _skip_huffman(buf, self.bit, *self.tables, final)
                if not ended:
                    return
                self._block_done()
            elif state == "block":
                if not final and len(buf) - (self.bit >> 3) < _HEADER_BYTES:
                    return
                self._block_header()
            elif state == "stored":
                n = min(self.remaining, len(buf) - (self.bit >> 3))
                self.bit += n * 8
                self.remaining -= n
                if self.remaining:
                    if final:
                        raise DeflateError("deflate data ends inside a block")
                    return
                self._block_done()
            elif state == "gzip":
                try:
                    self.bit = gzip_header_length(buf) * 8
                except _Truncated:
                    if final or len(buf) > _GZIP_HEADER_MAX:
                        raise DeflateError("gzip header cut short") from None
                    return
                self.start = self.bit
                self.state = "block"
            elif state == "trailer":
                if len(buf) - (self.bit >> 3) < 8:
                    if final:
                        raise DeflateError("gzip trailer missing")
                    return
                self.bit += 64
                self.state = "done"
            else:
                if len(buf) > self.bit >> 3:
                    raise DeflateError("junk after the gzip trailer")
                return

    def _block_header(self) -> None:
        rd = _Bits(self.buf, self.bit)
        try:
            header = self.base * 8 + rd.tell()
            self.final = bool(rd.take(1))
            btype = rd.take(2)
            if btype == 0:
                rd.align()
                length = rd.take(16)
                if rd.take(16) != length ^ 0xFFFF:
                    raise DeflateError("stored block length does not match its complement")
                self.remaining = length
                self.state = "stored"
            elif btype == 1:
                self.tables = _FIXED
                self.state = "huffman"
            elif btype == 2:
                self.tables = _dynamic_tables(rd)
                self.state = "huffman"
            else:
                raise DeflateError("invalid block type 3")
        except _Truncated:
            raise DeflateError("deflate data ends inside a block header") from None
        if self.final:
            self.last = header
        self.bit = rd.tell()


def gzip_header_length(data: bytes | bytearray | memoryview) -> int:
    """The length of the gzip member header at the start of `data` (RFC 1952 2.3); _Truncated when
    `data` ends inside it."""
    if len(data) >= 1 and data[0] != 0x1F or len(data) >= 2 and data[1] != 0x8B:
        raise DeflateError("not gzip data (no gzip magic)")
    if len(data) >= 3 and data[2] != 8:
        raise DeflateError("gzip data not deflate-compressed")
    if len(data) >= 4 and data[3] & 0xE0:
        raise DeflateError("reserved gzip header flags set")
    if len(data) < 10:
        raise _Truncated("gzip header cut short")
    flags = data[3]
    pos = 10
    if flags & 4:                                           # FEXTRA
        if len(data) < pos + 2:
            raise _Truncated("gzip header cut short")
        pos += 2 + int.from_bytes(data[pos:pos + 2], "little")
    for bit in (8, 16):                                     # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = bytes(data[pos:pos + _GZIP_HEADER_MAX]).find(b"\0")
            if end < 0:
                raise _Truncated("gzip header cut short")
            pos += end + 1
    if flags & 2:                                           # FHCRC
        pos += 2
    if pos > len(data):
        raise _Truncated("gzip header cut short")
    return pos


def scan_gzip(data: bytes | bytearray | memoryview, max_bytes: int | None = None) -> GzipBits:
    """The bits of a whole one-member gzip body (offsets in `data`), as varnishd records them."""
    scanner = GzipScanner(max_bytes)
    scanner.feed(data)
    return scanner.end()
