"""vmod blob (Varnish 7.1): binary data from and to IDENTITY, BASE64, BASE64URL, BASE64URLNOPAD,
BASE64CF, HEX and URL encodings; comparison, length, sub-blobs and the `blob` object.

A BLOB at run time is `bytes`. The decoders follow vmod_blob_*.c rather than base64/binascii, because
varnishd's are lenient in their own ways (a partial base64 quantum decodes, an odd number of hex
digits gets a leading 0, `length` counts encoded characters) and the results must match.
same() compares where the bytes live, as varnishd compares pointers: Blob carries that identity.
"""

from __future__ import annotations

from vcl.runtime import Context, VCLFailure
from vmods import Func, ObjectType, Param, Vmod

VMOD = Vmod("blob")

ENCODINGS = ("IDENTITY", "BASE64", "BASE64URL", "BASE64URLNOPAD", "BASE64CF", "HEX", "URL")
CASES = ("LOWER", "UPPER", "DEFAULT")

_NULLPTR = object()          # where an empty blob without data points (NULL)
_NULL_BLOB_DATA = object()   # vrt_null_blob's data pointer


class Blob(bytes):
    """bytes that remember where they live: (origin, offset) stands for varnishd's data pointer."""

    origin: object
    offset: int

    @classmethod
    def make(cls, data: bytes, origin: object = None, offset: int = 0) -> Blob:
        b = cls(data)
        b.origin = b if origin is None else origin
        b.offset = offset
        return b


NULL_BLOB = Blob.make(b"", _NULL_BLOB_DATA)     # vrt_null_blob: what an empty result is


def _where(b: bytes) -> tuple[object, int]:
    if isinstance(b, Blob):
        return b.origin, b.offset
    return b, 0


def _fail(msg: str) -> VCLFailure:
    return VCLFailure(f"vmod blob error: {msg}")


# -- decoders: (text, limit) -> bytes; limit < 0: no limit; ValueError on an illegal encoding -----

_B64 = {
    "BASE64": ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", "="),
    "BASE64URL": ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", "="),
    "BASE64URLNOPAD": ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", ""),
    "BASE64CF": ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-~", "_"),
}
_B64_INDEX = {name: ({c: i for i, c in enumerate(alpha)}, pad) for name, (alpha, pad) in _B64.items()}


def _b64_out(out: bytearray, u: int, n: int) -> None:
    """vmod_blob_base64.c decode(): n-1 bytes from the top of the 24-bit group; n <= 1 is illegal."""
    if n <= 1:
        raise ValueError
    for _ in range(n - 1):
        out.append((u >> 16) & 0xFF)
        u = (u << 8) & 0xFFFFFFFF


def _b64_decode(enc: str, pieces: list[bytes], limit: int) -> bytes:
    """base64_decode() as varnishd runs it, quirks included: characters after a pad in the same
    piece still count (a new piece after a pad is illegal), and the final shift is taken modulo
    32 as the CPU does when the pads made the group longer than four."""
    index, pad = _B64_INDEX[enc]
    out = bytearray()
    u = n = term = 0
    left = limit if limit >= 0 else -1
    for piece in pieces:
        if left == 0:
            break
        if piece and term:
            raise ValueError
        if left > 0:
            piece = piece[:left]
            left -= len(piece)
        for ch in piece.decode("latin-1"):
            u = (u << 6) & 0xFFFFFFFF
            if pad and ch == pad:
                n += 1
                term += 1
                continue
            b = index.get(ch)
            if b is None:
                raise ValueError
            n += 1
            u |= b
            if n == 4:
                _b64_out(out, u, n - term)
                n = 0
    if n:
        if n - term != 0:
            u = (u << ((6 * (4 - n)) & 31)) & 0xFFFFFFFF
        _b64_out(out, u, n - term)
    return bytes(out)


_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


def _hex_decode(s: bytes, limit: int) -> bytes:
    if any(c not in _HEXDIGITS for c in s):
        raise ValueError
    if limit >= 0:
        s = s[:limit]
    if len(s) & 1:
        s = b"0" + s           # an odd count gets a leading zero nibble
    return bytes.fromhex(s.decode("ascii"))


def _url_decode(s: bytes, limit: int) -> bytes:
    if limit >= 0:
        s = s[:limit]
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c != 0x25:           # '%'
            out.append(c)
            i += 1
            continue
        pair = s[i + 1:i + 3]
        if len(pair) < 2 or any(x not in _HEXDIGITS for x in pair):
            raise ValueError
        out.append(int(pair, 16))
        i += 3
    return bytes(out)


def _decode(enc: str, strands: tuple, limit: int) -> bytes:
    """The bytes the STRANDS pieces stand for (base64 looks at the piece boundaries)."""
    pieces = [p.encode("utf-8", "surrogateescape") for p in strands if p]
    if enc.startswith("BASE64"):
        return _b64_decode(enc, pieces, limit)
    data = b"".join(pieces)
    if enc == "IDENTITY":
        return data[:limit] if limit >= 0 else data
    if enc == "HEX":
        return _hex_decode(data, limit)
    return _url_decode(data, limit)


def _decoded_size(enc: str, text: str) -> int:
    """decode_l(): the space varnishd sets aside; 0 means "nothing to decode"."""
    n = len(text.encode("utf-8", "surrogateescape"))
    if enc == "HEX":
        return (n + 1) >> 1
    if enc.startswith("BASE64"):
        return (n * 3) >> 2
    return n


# -- encoders --------------------------------------------------------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _encode(enc: str, case: str, data: bytes) -> str:
    if not data:
        return ""
    if enc == "IDENTITY":
        # the result is a C string: it ends at the first NUL
        return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if enc == "HEX":
        out = data.hex()
        return out.upper() if case == "UPPER" else out
    if enc == "URL":
        digits = "0123456789ABCDEF" if case == "UPPER" else "0123456789abcdef"
        return "".join(chr(c) if c in _UNRESERVED else f"%{digits[c >> 4]}{digits[c & 15]}" for c in data)
    alpha, pad = _B64[enc]
    out = []
    for i in range(0, len(data) - 2, 3):
        v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
        out.append(alpha[v >> 18] + alpha[(v >> 12) & 63] + alpha[(v >> 6) & 63] + alpha[v & 63])
    rest = len(data) % 3
    if rest == 1:
        v = data[-1] << 16
        out.append(alpha[v >> 18] + alpha[(v >> 12) & 63] + pad * 2)
    elif rest == 2:
        v = (data[-2] << 16) | (data[-1] << 8)
        out.append(alpha[v >> 18] + alpha[(v >> 12) & 63] + alpha[(v >> 6) & 63] + pad)
    return "".join(out)


def _check_case(enc: str, case: str) -> None:
    """Only HEX and URL have a case; anything but DEFAULT with the others fails."""
    if enc not in ("HEX", "URL") and case != "DEFAULT":
        raise _fail(f"case {case} is illegal with encoding {enc}")


# -- functions -------------------------------------------------------------------------------------

_ENC = Param("decoding", "ENUM", "IDENTITY", optional=True, enum=ENCODINGS)


def _joined(strands: tuple) -> str:
    return "".join(p for p in strands if p)


def _first(strands: tuple) -> str:
    """What varnishd's errors quote of a STRANDS argument: its first strand (strings->p[0]), which
    printf shows as "(null)" when unset."""
    return "(null)" if not strands or strands[0] is None else strands[0]


_STRANDS = Param("encoded", "STRANDS", pieces=True)


@VMOD.func("decode", "BLOB", [_ENC, Param("length", "INT", 0, optional=True), _STRANDS])
def decode(ctx: Context, decoding: str, length: int, strands: tuple) -> bytes:
    """The bytes `encoded` stands for; the first `length` characters only when length > 0."""
    try:
        data = _decode(decoding, strands, length if length > 0 else -1)
    except ValueError:
        raise _fail(f'cannot decode, illegal encoding beginning with "{_first(strands)}"') from None
    return Blob.make(data) if data else NULL_BLOB


@VMOD.func("encode", "STRING", [Param("encoding", "ENUM", "IDENTITY", optional=True, enum=ENCODINGS),
                                Param("case", "ENUM", "DEFAULT", optional=True, enum=CASES),
                                Param("blob", "BLOB")])
def encode(ctx: Context, encoding: str, case: str, blob: bytes | None) -> str | None:
    _check_case(encoding, case)
    if blob is None:
        return None
    return _encode(encoding, case, bytes(blob))


@VMOD.func("transcode", "STRING", [_ENC, Param("encoding", "ENUM", "IDENTITY", optional=True, enum=ENCODINGS),
                                   Param("case", "ENUM", "DEFAULT", optional=True, enum=CASES),
                                   Param("length", "INT", 0, optional=True), _STRANDS])
def transcode(ctx: Context, decoding: str, encoding: str, case: str, length: int, strands: tuple) -> str:
    _check_case(encoding, case)
    encoded = _joined(strands)
    if _decoded_size(decoding, encoded) == 0:
        return ""
    limit = length if length > 0 else -1
    try:
        data = _decode(decoding, strands, limit)
    except ValueError:
        raise _fail(f'cannot decode, illegal encoding beginning with "{_first(strands)}"') from None
    if limit < 0 and encoding == decoding and encoding not in ("HEX", "URL"):
        return encoded          # decoded fine: the input is its own encoding
    return _encode(encoding, case, data)


@VMOD.func("same", "BOOL", [Param("", "BLOB"), Param("", "BLOB")])
def same(ctx: Context, a: bytes | None, b: bytes | None) -> bool:
    """True when both are the same bytes in the same place (not merely equal)."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    (oa, fa), (ob, fb) = _where(a), _where(b)
    return len(a) == len(b) and oa is ob and fa == fb


@VMOD.func("equal", "BOOL", [Param("", "BLOB"), Param("", "BLOB")])
def equal(ctx: Context, a: bytes | None, b: bytes | None) -> bool:
    if a is b:
        return True
    if a is None or b is None:
        return False
    return bytes(a) == bytes(b)


@VMOD.func("length", "INT", [Param("", "BLOB")])
def length(ctx: Context, blob: bytes | None) -> int:
    return 0 if blob is None else len(blob)


@VMOD.func("sub", "BLOB", [Param("", "BLOB"), Param("length", "BYTES"),
                           Param("offset", "BYTES", 0.0, optional=True)])
def sub(ctx: Context, blob: bytes | None, length: float, offset: float = 0.0) -> bytes:
    """`length` bytes of the blob from `offset`, sharing its place (same() is true for the whole)."""
    if not blob:
        raise _fail("blob is empty in blob.sub()")
    n, off = int(length), int(offset)
    if n < 0 or off < 0:
        raise _fail("size or offset negative in blob.sub()")
    if off + n > len(blob):
        raise _fail(f"size {n} from offset {off} requires more bytes than blob length {len(blob)} in blob.sub()")
    if n == 0:
        return NULL_BLOB
    origin, base = _where(blob)
    return Blob.make(bytes(blob[off:off + n]), origin, base + off)


# -- the blob object -------------------------------------------------------------------------------

class BlobObject:
    """`new b = blob.blob(DECODING, "...")`: a blob decoded once at load, its encodings cached."""

    def __init__(self, vcl_name: str, decoding: str, strands: tuple) -> None:
        self.vcl_name = vcl_name
        encoded = _joined(strands)
        self.encodings: dict[tuple[str, str], str] = {}
        if _decoded_size(decoding, encoded) == 0:
            self.blob = Blob.make(b"", _NULLPTR)
            return
        try:
            data = _decode(decoding, strands, -1)
        except ValueError:
            raise _fail(f'cannot create blob {vcl_name}, illegal encoding beginning with "{_first(strands)}"') from None
        self.blob = Blob.make(data) if data else Blob.make(b"", _NULL_BLOB_DATA)

    def get(self) -> bytes:
        return self.blob

    def encode(self, encoding: str, case: str) -> str:
        _check_case(encoding, case)
        if not self.blob:
            return ""
        key = (encoding, "UPPER" if case == "UPPER" else "LOWER")
        if key not in self.encodings:
            self.encodings[key] = _encode(encoding, key[1], bytes(self.blob))
        return self.encodings[key]


_obj = ObjectType("blob", Func("blob", lambda ctx, name, decoding, encoded: BlobObject(name, decoding, encoded),
                               "VOID", [_ENC, _STRANDS], frozenset({"vcl_init"}), takes_name=True))
_obj.methods["get"] = Func("get", lambda o, ctx: o.get(), "BLOB", [])
_obj.methods["encode"] = Func("encode", lambda o, ctx, encoding, case: o.encode(encoding, case), "STRING",
                              [Param("encoding", "ENUM", "IDENTITY", optional=True, enum=ENCODINGS),
                               Param("case", "ENUM", "DEFAULT", optional=True, enum=CASES)])
VMOD.objects["blob"] = _obj
