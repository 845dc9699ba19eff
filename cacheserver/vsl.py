"""The shared log (varnishd's VSL): a bounded ring of records in an mmap'd file in the work directory.

The server appends (tag, text) pairs to a per-task list (`Context.log`, a session's `vsl` list) and
flushes the list once at the end of the task: one `"\\0".join(map(" ".join, records))`, one copy into
the ring. Records are separated by NUL, so a text may carry further records pre-joined after it
("200\\0RespReason OK"): the hot path builds a run of records it always writes together in one string. Nothing is formatted for people on the server side; readers (`cachelog`, `cachencsa`, vtest's
logexpect) split and lay out the records in their own processes, and the server never waits for them.
The times of Timestamp and Hit records go in raw (`floats()`: a marker and the doubles' bytes in hex,
10x cheaper than "%.6f" of an epoch time, and a hit logs ten of them); the reader prints them "%.6f",
so what a reader sees is byte for byte what varnishd writes.

File layout (`_.vsl`): a 4 KiB header, then `size` bytes of ring.

  header: magic, size, pid, start time, `reserve` (end of the chunk being written), `head` (end of
  the last complete chunk), vsl_reclen, and NSEG segment starts (for a reader that lost its place).

Positions are absolute byte counts since the start (a u64 never wraps); a position's place in the ring
is `pos % size`. A chunk (one task's flush) is a 12-byte header (payload length, vxid, kind, flags,
the vsl_reclen in force when it was written) and its payload, padded to 8 bytes; readers cut each
record's text to vsl_reclen - 1 bytes as varnishd's VSLb does, so the writer never measures records; a chunk never straddles the end of the ring (a wrap marker, or
less than a header of room, sends the reader to the next lap). A reader at `pos` whose data may have
been overwritten (`reserve - pos > size`) is told how much it lost and resumes at the oldest segment
start still in the ring.
"""

from __future__ import annotations

import binascii
import mmap
import os
import re
import struct
import time
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

# varnishd 7.1's tags (vsl(7)), in one table: the reader validates names against it.
TAGS = (
    "Debug Error CLI SessOpen SessClose BackendOpen BackendReuse BackendClose HttpGarbage Backend Length "
    "FetchError ReqMethod ReqURL ReqProtocol ReqStatus ReqReason ReqHeader ReqUnset ReqLost "
    "RespMethod RespURL RespProtocol RespStatus RespReason RespHeader RespUnset RespLost "
    "BereqMethod BereqURL BereqProtocol BereqStatus BereqReason BereqHeader BereqUnset BereqLost "
    "BerespMethod BerespURL BerespProtocol BerespStatus BerespReason BerespHeader BerespUnset BerespLost "
    "ObjMethod ObjURL ObjProtocol ObjStatus ObjReason ObjHeader ObjUnset ObjLost "
    "BogoHeader LostHeader TTL Fetch_Body VCL_acl VCL_call VCL_trace VCL_return ReqStart Hit HitPass "
    "ExpBan ExpKill WorkThread ESI_xmlerror Hash Backend_health VCL_Log VCL_Error Gzip Link Begin End "
    "VSL Storage Timestamp ReqAcct PipeAcct BereqAcct VfpAcct Witness BackendStart H2RxHdr H2RxBody "
    "H2TxHdr H2TxBody HitMiss Filters SessError VCL_use Notice VdpAcct ProxyGarbage Proxy"
).split()
TAG_SET = frozenset(TAGS)

# vsl_mask's default (varnishd 7.1): these tags are only ever written as records of their own, never
# inside a pre-joined run, so masking them needs no split of the runs.
DEFAULT_MASK = frozenset(("Debug ObjProtocol ObjStatus ObjReason ObjHeader VCL_trace ExpKill WorkThread Hash "
                          "VfpAcct H2RxHdr H2RxBody H2TxHdr H2TxBody VdpAcct").split())
_TAG = itemgetter(0)

MAGIC = b"CSVSL\x00\x01\x00"
HEADER_SIZE = 4096
NSEG = 16
# magic, size, pid, t_start, reserve, head, reclen, nseg, closed
_HDR = struct.Struct("<8sQQdQQIIQ")
_SEG = struct.Struct("<%dQ" % NSEG)
_SEG_AT = 128
_RESERVE_AT = 32
_HEAD_AT = 40
_CLOSED_AT = 56
_U64 = struct.Struct("<Q")
_CHUNK = struct.Struct("<IIBBH")       # payload length, vxid, kind, flags, vsl_reclen (0: none)
_WRAP = 1                              # flags: the rest of this lap is empty
KIND_CODE = {"c": 1, "b": 2, "-": 0}
KIND_CHAR = {1: "c", 2: "b", 0: "-"}

# Raw times in a record's text (Timestamp, Hit): FLOATS then the little-endian doubles in hex; the
# reader prints each "%.6f", space-separated (expand_floats).
FLOATS = "\x01"
_FLOATS_IN = (b"Timestamp", b"Hit")
_FLOATS_RE = re.compile(rb"\x01((?:[0-9a-f]{16})+)(?![0-9a-f])")
_PACK1 = struct.Struct("<d").pack
_PACK3 = struct.Struct("<ddd").pack
_hex = binascii.b2a_hex


def floats(a: float, b: float, c: float) -> str:
    """Three times for a record's text, printed by the reader as "%.6f %.6f %.6f"."""
    return FLOATS + _PACK3(a, b, c).hex()


def floats_bytes(a: float, b: float, c: float) -> bytes:
    """floats() for an encoded payload (a hit template's tail)."""
    return b"\x01" + _hex(_PACK3(a, b, c))


def float1(a: float) -> str:
    """One time for a record's text, printed by the reader as "%.6f"."""
    return FLOATS + _PACK1(a).hex()


def _print_floats(m: re.Match) -> bytes:
    raw = bytes.fromhex(m[1].decode("ascii"))
    return b" ".join([b"%.6f" % v for v in struct.unpack("<%dd" % (len(raw) // 8), raw)])


def expand_floats(text: bytes) -> bytes:
    """A record's text with its raw times printed, as the writer would have printed them."""
    return _FLOATS_RE.sub(_print_floats, text) if b"\x01" in text else text


FILE_NAME = "_.vsl"
COUNTERS_FILE = "_.vsc"
DEFAULT_SIZE = 8 << 20


def _align(n: int) -> int:
    return (n + 7) & ~7


def masked_tags(vsl_mask: object) -> frozenset[str]:
    """The tags the vsl_mask parameter's text ("-Debug,-VCL_trace,...") leaves out of the log."""
    return frozenset(b.strip()[1:] for b in str(vsl_mask or "").split(",") if b.strip().startswith("-"))


def _decode(payload: bytes) -> list[tuple[str, str]]:
    """A payload's records as (tag, text) pairs (the writer's slow path, with a mask to apply)."""
    return [(tag, text) for tag, _, text in
            (rec.partition(" ") for rec in payload.decode("utf-8", "surrogateescape").split("\0"))]


class VslWriter:
    """The server's end of the ring. One per server; not thread-safe (the event loop is the only writer).

    With `params` set, records of the tags the `vsl_mask` parameter masks are left out, as varnishd's
    VSLb leaves them out."""

    params = None
    _mask_text: object = None
    _masked: frozenset = DEFAULT_MASK
    _split = False                # a masked tag may sit inside a pre-joined run: filter record by record

    def __init__(self, path: str | os.PathLike, size: int = DEFAULT_SIZE, reclen: int = 255) -> None:
        size = max(_align(size), 64 * 1024)
        self.path = Path(path)
        self.size = size
        self.reclen = reclen
        # Chunks are bounded so that a reader always has a whole lap minus one chunk to catch up in.
        self.max_chunk = size // 8
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, HEADER_SIZE + size)
            self.mm = mmap.mmap(fd, HEADER_SIZE + size)
        finally:
            os.close(fd)
        self.mm[0:_HDR.size] = _HDR.pack(MAGIC, size, os.getpid(), time.time(), 0, 0, reclen, NSEG, 0)
        os.replace(tmp, self.path)       # readers never see a half-made header
        self.head = 0
        self.segsize = size // NSEG
        self.last_seg = -1
        self.closed = False

    def write(self, vxid: int, kind: str, records: list, tail: bytes = b"") -> None:
        """Append one task's records, [(tag, text), ...], as one chunk (or several, if huge).

        `tail`: further records already encoded as a payload ("Tag text" joined by NULs; the hot path
        formats them from a template made once), written after `records`. Like a pre-joined run, it
        holds none of the default-masked tags."""
        if self.closed or not (records or tail):
            return
        params = self.params
        if params is not None:
            if params.vsl_mask is not self._mask_text:
                self._set_mask(params.vsl_mask)
            if params.vsl_reclen != self.reclen:
                self.reclen = int(params.vsl_reclen)      # changed at run time: applies from now
            if self._split:
                self._write_masked(vxid, kind, [*records, *_decode(tail)] if tail else records)
                return
            if not self._masked.isdisjoint(map(_TAG, records)):
                records = [r for r in records if r[0] not in self._masked]
        try:
            payload = "\0".join(map(" ".join, records)).encode("utf-8", "surrogateescape")
        except TypeError:
            # a text that is not a str (a vmod's mistake): make it one rather than lose the task
            payload = "\0".join(f"{t} {x}" for t, x in records).encode("utf-8", "surrogateescape")
        if tail:
            payload = payload + b"\0" + tail if payload else tail
        elif not payload:
            return
        if len(payload) + _CHUNK.size > self.max_chunk:
            self._write_big(vxid, kind, payload)
            return
        self._put(vxid, KIND_CODE.get(kind, 0), payload)

    def wants(self, tag: str) -> bool:
        """Whether records of `tag` are written now (vsl_mask), so a caller can skip making them."""
        params = self.params
        if params is None or self.closed:
            return not self.closed
        if params.vsl_mask is not self._mask_text:
            self._set_mask(params.vsl_mask)
        return tag not in self._masked

    def _set_mask(self, text: object) -> None:
        self._mask_text = text
        self._masked = masked_tags(text)
        self._split = not self._masked <= DEFAULT_MASK

    def _write_masked(self, vxid: int, kind: str, records: list) -> None:
        # the slow path, only with tags masked beyond the default: each record of each run looked at
        lines = "\0".join(f"{t} {x}" for t, x in records).split("\0")
        masked = self._masked
        kept = [line for line in lines if line.partition(" ")[0] not in masked]
        if kept:
            self.params, params = None, self.params       # write the rest as it is
            try:
                self.write(vxid, kind, [tuple(line.split(" ", 1)) if " " in line else (line, "")
                                        for line in kept])
            finally:
                self.params = params

    def _write_big(self, vxid: int, kind: str, payload: bytes) -> None:
        # Oversized: each record cut to vsl_reclen (as varnishd cuts), in as many chunks as needed.
        code = KIND_CODE.get(kind, 0)
        limit = self.max_chunk - _CHUNK.size
        part: list[bytes] = []
        used = 0
        for rec in payload.split(b"\0"):
            tag_len = rec.find(b" ") + 1
            if rec[:tag_len - 1] in _FLOATS_IN:
                rec = rec[:tag_len] + expand_floats(rec[tag_len:])
            rec = rec[: tag_len + self.reclen - 1]
            if used + len(rec) + 1 > limit and part:
                self._put(vxid, code, b"\0".join(part))
                part, used = [], 0
            part.append(rec)
            used += len(rec) + 1
        if part:
            self._put(vxid, code, b"\0".join(part))

    def _put(self, vxid: int, code: int, payload: bytes) -> None:
        mm = self.mm
        size = self.size
        total = (_CHUNK.size + len(payload) + 7) & ~7     # _align(), inline: once per task
        h = self.head
        off = h % size
        room = size - off
        if room < total:
            if room >= _CHUNK.size:
                _U64.pack_into(mm, _RESERVE_AT, h + room)
                _CHUNK.pack_into(mm, HEADER_SIZE + off, 0, 0, 0, _WRAP, 0)
            h += room
            off = 0
        # reserve first: a reader checks it after copying, so it knows when its copy may be torn
        _U64.pack_into(mm, _RESERVE_AT, h + total)
        seg = h // self.segsize
        if seg > self.last_seg:
            for k in range(max(self.last_seg + 1, seg - NSEG + 1), seg + 1):
                _U64.pack_into(mm, _SEG_AT + 8 * (k % NSEG), h)
            self.last_seg = seg
        at = HEADER_SIZE + off
        # readers cut each record's text to vsl_reclen - 1 bytes, as varnishd's VSLb (so the
        # writer never looks at record lengths); the value in force is kept with each chunk
        _CHUNK.pack_into(mm, at, len(payload), vxid & 0xFFFFFFFF, code, 0,
                         self.reclen if self.reclen <= 0xFFFF else 0)
        mm[at + _CHUNK.size:at + _CHUNK.size + len(payload)] = payload
        self.head = h + total
        _U64.pack_into(mm, _HEAD_AT, self.head)

    def close(self) -> None:
        """Mark the log closed (readers then call the work directory stale) and unmap it."""
        if self.closed:
            return
        self.closed = True
        _U64.pack_into(self.mm, _CLOSED_AT, 1)
        self.mm.close()


class NullWriter:
    """The log when there is no work directory to put it in (unit tests, embedded servers)."""

    closed = True

    def wants(self, tag: str) -> bool:
        return False

    def write(self, vxid: int, kind: str, records: list, tail: bytes = b"") -> None:
        pass

    def close(self) -> None:
        pass


NULL = NullWriter()


class LogError(Exception):
    """The work directory or its log cannot be read: missing, stale, not ours."""


class Record:
    """One record as a reader sees it."""

    __slots__ = ("vxid", "kind", "tag", "text")

    def __init__(self, vxid: int, kind: str, tag: str, text: str) -> None:
        self.vxid = vxid
        self.kind = kind
        self.tag = tag
        self.text = text

    def __repr__(self) -> str:
        return f"Record({self.vxid}, {self.kind!r}, {self.tag!r}, {self.text!r})"


class Overrun:
    """The reader fell a lap behind: `lost` bytes of records were overwritten before it read them."""

    __slots__ = ("lost",)

    def __init__(self, lost: int) -> None:
        self.lost = lost


def log_path(work_dir: str | os.PathLike) -> Path:
    return Path(work_dir) / FILE_NAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VslReader:
    """Reads the ring of another process; never writes to it.

    `tail=True` starts at the newest record (varnishlog without -d), else at the oldest still there.
    """

    def __init__(self, work_dir: str | os.PathLike, tail: bool = False) -> None:
        self.work_dir = Path(work_dir)
        path = log_path(work_dir)
        if not self.work_dir.is_dir():
            raise LogError(f"Work directory {self.work_dir} does not exist (is the server running with -n?)")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise LogError(f"No log in {self.work_dir}: {FILE_NAME} is missing (no server ran with this -n)")\
                from None
        try:
            length = os.fstat(fd).st_size
            if length < HEADER_SIZE:
                raise LogError(f"{path} is not a cacheserver log")
            self.mm = mmap.mmap(fd, length, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, size, pid, t_start, _, _, reclen, nseg, _ = _HDR.unpack_from(self.mm, 0)
        if magic != MAGIC or nseg != NSEG or HEADER_SIZE + size > length:
            raise LogError(f"{path} is not a cacheserver log")
        self.size = size
        self.pid = pid
        self.t_start = t_start
        self.reclen = reclen
        self.segsize = size // NSEG
        self.pos = self._head() if tail else self._oldest()

    def stale(self) -> str | None:
        """Why the log is no longer written, or None while its server lives."""
        if _U64.unpack_from(self.mm, _CLOSED_AT)[0]:
            return f"the server (pid {self.pid}) that wrote {self.work_dir} has stopped"
        if not _pid_alive(self.pid):
            return f"stale work directory {self.work_dir}: its server (pid {self.pid}) is gone"
        return None

    def _head(self) -> int:
        return _U64.unpack_from(self.mm, _HEAD_AT)[0]

    def _reserve(self) -> int:
        return _U64.unpack_from(self.mm, _RESERVE_AT)[0]

    def _oldest(self) -> int:
        """The oldest chunk start that is still whole in the ring."""
        reserve = self._reserve()
        low = reserve - self.size
        if low <= 0:
            return 0
        k = -(-low // self.segsize)
        head_seg = reserve // self.segsize
        while k <= head_seg:
            start = _U64.unpack_from(self.mm, _SEG_AT + 8 * (k % NSEG))[0]
            if start >= low and start >= k * self.segsize:
                return start
            k += 1
        return self._head()

    def read(self) -> Iterator[Record | Overrun]:
        """Every whole chunk written since the last call, as records (and Overrun notices)."""
        mm = self.mm
        size = self.size
        head = self._head()
        while self.pos < head:
            pos = self.pos
            if self._reserve() - pos > size:
                self._lost(pos)
                yield Overrun(self.pos - pos)
                continue
            off = pos % size
            room = size - off
            if room < _CHUNK.size:
                self.pos = pos + room
                continue
            length, vxid, code, flags, reclen = _CHUNK.unpack_from(mm, HEADER_SIZE + off)
            if flags & _WRAP:
                self.pos = pos + room
                continue
            if _CHUNK.size + length > room:
                # a torn header: the writer lapped us while we read it
                self._lost(pos)
                yield Overrun(self.pos - pos)
                continue
            start = HEADER_SIZE + off + _CHUNK.size
            payload = mm[start:start + length]
            if self._reserve() - pos > size:
                self._lost(pos)
                yield Overrun(self.pos - pos)
                continue
            self.pos = pos + _align(_CHUNK.size + length)
            kind = KIND_CHAR.get(code, "-")
            cut = reclen - 1 if reclen else -1
            for rec in payload.split(b"\0"):
                tag, _, text = rec.partition(b" ")
                if tag in _FLOATS_IN:
                    text = expand_floats(text)
                if len(text) > cut >= 0:
                    text = text[:cut]            # bytes, as varnishd cuts: a character may be split
                yield Record(vxid, kind, tag.decode("ascii", "replace"),
                             text.decode("utf-8", "surrogateescape"))

    def _lost(self, pos: int) -> None:
        new = self._oldest()
        self.pos = new if new > pos else self._head()

    def close(self) -> None:
        self.mm.close()


# -- the per-task helpers the server calls -----------------------------------------------------------
# They only build (tag, text) pairs from values the task has at hand; no layout for people.

def timestamp(records: list, event: str, now: float, t_start: float, t_prev: float) -> None:
    records.append(("Timestamp", event + ": " + floats(now, now - t_start, now - t_prev)))


def headers(records: list, tag: str, fields: list) -> None:
    records.extend([(tag, f[0] + ": " + f[1]) for f in fields])


def bereq_acct(bo) -> tuple[str, str]:
    """A fetch's BereqAcct record: bereq head, body and total sent, beresp head, body and total read."""
    a, b, c, d = bo.acct_bereq_hdr, bo.acct_bereq_body, bo.acct_beresp_hdr, bo.acct_beresp_body
    return ("BereqAcct", "%d %d %d %d %d %d" % (a, b, a + b, c, d, c + d))
