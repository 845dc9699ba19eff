"""Object storage: object heads (one per hash) holding object cores (variants, markers, busy fetches).

Bodies live in a byte-bounded LRU (stevedores.py) for the main store `s0`; objects with a short TTL and
hit-for-miss / hit-for-pass markers go to the unbounded Transient store, as in varnishd. Lookup follows
cache_hash.c: busy objects make later requests wait, bans and Vary are checked per object, a stale
object in grace is delivered while one background fetch refreshes it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from time import time as _wall
from typing import TYPE_CHECKING

from cacheserver.bans import BanList
from cacheserver.stevedores import TRANSIENT, Stevedore, parse_specs
from cacheserver.stored_http import StoredHttp, fields_size
from vcl.runtime import HttpMessage

if TYPE_CHECKING:
    from cacheserver.bans import Ban
    from cacheserver.params import Params

# Bookkeeping bytes charged per object besides its headers and body.
OBJECT_OVERHEAD = 72                 # bytes a bare private object costs (a cached request body's)
OBJECT_BASE = 125                    # an object's fixed bytes in its store, before its fields
SEGMENT_OVERHEAD = 48                # one more storage segment (varnishd's struct storage)
# Unread bytes a fetch may run ahead of its only reader when the body is not kept (pass, too big).
STREAM_WINDOW = 1 << 20

# Lookup outcomes
HIT, GRACE, MISS, HITMISS, HITPASS, BUSY = "hit", "grace", "miss", "hitmiss", "hitpass", "busy"


# varnishd's synth response object: STV_NewObject(Transient) with 1024 bytes for its attributes,
# its body one more allocation (measured against varnishd 7.1's SMA.Transient counters)
SYNTH_OBJECT = 1144


class Held:
    """Storage held by something that is not a cached object (a synth response's body)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _oc_flags(oc: ObjCore) -> int:
    """The objcore flags varnishd's ExpKill records show: OC_F_DYING (0x80) is the one we keep."""
    return 0x80 if oc.dying else 0

def _time_up(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


class ObjCore:
    """One object (or a busy placeholder, or a hit-for-miss/pass marker) under an object head."""

    __slots__ = ("head", "http", "chunks", "base", "length", "buffered", "complete", "failed", "keep_body",
                 "readers", "_wakeup", "_space", "t_origin", "ttl", "grace", "keep", "xid", "hits", "busy",
                 "hfm", "hfp", "private", "uncacheable", "vary", "ban", "size", "store", "dying", "exp_at", "body_cache",
                 "t_lastuse", "clen", "expected", "alloc", "seg", "fast_head", "gzipped", "gzip_bits", "gzip_changed",
                 "esi_data", "__weakref__")

    def __init__(self, head: ObjHead | None = None, xid: int = 0) -> None:
        self.head = head
        self.http: HttpMessage | StoredHttp | None = None   # StoredHttp once it is cached (unbusy)
        self.chunks: list[bytes] = []
        self.base = 0                    # absolute index of chunks[0] (chunks before it were dropped)
        self.length = 0                  # body bytes appended so far
        self.buffered = 0                # bytes still held in chunks
        self.complete = False
        self.failed = False
        self.keep_body = True            # False: chunks are dropped once every reader has them
        self.readers: list[list[int]] | tuple = ()   # a list once a reader opens (most never do)
        self._wakeup: list[asyncio.Future] | None = None    # readers waiting for more body
        self._space: asyncio.Future | None = None
        self.t_origin = 0.0
        self.ttl = 0.0
        self.grace = 0.0
        self.keep = 0.0
        self.xid = xid
        self.hits = 0
        self.busy = head is not None      # a fetch is filling it and its headers are not known yet
        self.hfm = False
        self.hfp = False
        self.private = head is None       # pass and synthetic objects: never in the hash
        self.uncacheable = False          # beresp.uncacheable when it was made (obj.uncacheable)
        self.fast_head = None             # plain hits' template (hit_template.py), shared
        self.vary: tuple[tuple[str, str | None], ...] | None = None
        self.ban: Ban | None = None
        self.size = 0
        self.store = ""                   # "s0", "Transient" or "" (not stored)
        self.dying = False
        self.exp_at = 0.0
        self.body_cache: bytes | None = None
        self.t_lastuse = 0.0
        self.clen: int | None = None      # Content-Length the backend announced, while streaming
        self.expected = 0                 # body bytes to reserve up front (a known Content-Length)
        # a body of unknown length takes storage a segment (fetch_chunksize) at a time, as varnishd's
        # VFP_GetStorage: the bytes so taken, and the size of the last segment
        self.alloc = 0
        self.seg = 0
        self.gzipped = False              # the body is stored gzipped (OF_GZIPED)
        self.gzip_bits: tuple[int, int, int, int] | None = None   # OA_GZIPBITS, see filters.py
        self.gzip_changed = False         # a fetch filter gzipped or gunzipped it (OF_CHGGZIP)
        self.esi_data = None              # the ESI parse of the body, when it has one (OA_ESIDATA)

    # -- body streaming ---------------------------------------------------------------------------

    def append(self, data: bytes) -> None:
        if not data:
            return
        self.chunks.append(data)
        self.length += len(data)
        self.buffered += len(data)
        self._wake()

    def finish(self, ok: bool) -> None:
        self.complete = ok
        self.failed = not ok
        self._wake()
        if self._space is not None and not self._space.done():
            self._space.set_result(None)

    def body(self) -> bytes:
        """The whole body of a complete, kept object."""
        if self.body_cache is None:
            self.body_cache = b"".join(self.chunks)
            if not self.readers and self.base == 0:
                # one buffer instead of many; streaming readers index chunks, so only without them
                self.chunks = [self.body_cache] if self.body_cache else []
        return self.body_cache

    def _wake(self) -> None:
        waiting = self._wakeup
        if waiting is not None:
            self._wakeup = None
            for fut in waiting:
                if not fut.done():
                    fut.set_result(True)

    async def wait_more(self, timeout: float | None = None) -> bool:
        """Wait until the body grows or ends: True; False when `timeout` seconds passed first."""
        # a future per waiting reader: one that gives up (or whose task is cancelled) must not end
        # the others' wait, as a shared future would
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._wakeup is None:
            self._wakeup = [fut]
        else:
            self._wakeup.append(fut)
        if timeout is None:
            return await fut
        timer = loop.call_later(max(timeout, 0), _time_up, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def open_reader(self) -> list[int]:
        cell = [self.base]
        if self.readers:
            self.readers.append(cell)
        else:
            self.readers = [cell]
        return cell

    def close_reader(self, cell: list[int]) -> None:
        if cell in self.readers:
            self.readers.remove(cell)
            if not self.readers:
                self.readers = ()       # the shared empty tuple, not an empty list per cached object
        self._trim()
        if not self.readers and self.body_cache is not None and self.base == 0 and len(self.chunks) > 1:
            self.chunks = [self.body_cache]     # the last streaming reader left: keep one copy

    def read(self, cell: list[int]) -> bytes:
        """Bytes available to a reader past its position; b"" when it must wait (or the end)."""
        start = cell[0] - self.base
        if start >= len(self.chunks):
            return b""
        data = self.chunks[start:]
        cell[0] = self.base + len(self.chunks)
        self._trim()
        return data[0] if len(data) == 1 else b"".join(data)

    def _trim(self) -> None:
        if self.keep_body or not self.chunks:
            return
        readers = self.readers
        # (one reader, a pass's client, is the common case: no generator for it)
        if len(readers) == 1:
            low = readers[0][0]
        else:
            low = min((c[0] for c in readers), default=self.base + len(self.chunks))
        drop = low - self.base
        if drop > 0:
            self.buffered -= sum(map(len, self.chunks[:drop]))
            del self.chunks[:drop]
            self.base = low
            if self._space is not None and self.buffered < STREAM_WINDOW and not self._space.done():
                self._space.set_result(None)

    async def wait_space(self) -> None:
        """Flow control for bodies that are not kept: wait until the reader caught up."""
        while not self.keep_body and self.buffered >= STREAM_WINDOW and self.readers and not self.failed:
            self._space = asyncio.get_running_loop().create_future()
            await self._space
            self._space = None

    def drop_body(self) -> None:
        """Stop keeping the body: what every reader has seen is freed from now on."""
        self.keep_body = False
        self.body_cache = None
        self._trim()

    # -- freshness --------------------------------------------------------------------------------

    def fresh(self, now: float) -> bool:
        return now < self.t_origin + self.ttl

    def in_grace(self, now: float) -> bool:
        return now < self.t_origin + self.ttl + self.grace

    def compute_size(self, with_body: bool = True) -> int:
        """What varnishd's malloc store holds for it: the object (a fixed part, then each of the
        status line's fields and each header as "Name: value", NUL-ended, in 8-byte units) and the
        body (measured against varnishd 7.1's SMA counters)."""
        body = max(self.length, self.expected, self.alloc) if with_body else 0
        http = self.http
        head = OBJECT_BASE + len(http.proto) + len(str(http.status)) + len(http.reason) + 3
        head += fields_size(http)
        self.size = ((head + 7) & ~7) + body
        return self.size


class ObjHead:
    """Everything stored under one hash digest."""

    __slots__ = ("digest", "ocs", "waiters")

    def __init__(self, digest: bytes) -> None:
        self.digest = digest
        self.ocs: list[ObjCore] = []               # newest first
        self.waiters: list[asyncio.Future] | tuple = ()   # requests waiting for a busy object

    def add_waiter(self, fut: asyncio.Future) -> None:
        """A request waits for this head's busy object (rush() wakes it)."""
        if self.waiters:
            self.waiters.append(fut)
        else:
            self.waiters = [fut]        # heads with nobody waiting share the empty tuple

    def rush(self) -> None:
        """Wake every request waiting on this head, so it looks up again."""
        waiters, self.waiters = self.waiters, ()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def vary_match(oc: ObjCore, req: HttpMessage, gzip_support: bool = False) -> bool:
    if not oc.vary:
        return True
    get = req.headers.get
    for name, value in oc.vary:
        if gzip_support and name == "accept-encoding":
            # varnishd's vry_cmp: with gzip support everybody gets the one (gzipped) object,
            # gunzipped on delivery as needed; skipped when matching, not when recording
            continue
        if get(name) != value:
            return False
    return True


def vary_of(vary_header: str | None, bereq: HttpMessage) -> tuple[tuple[str, str | None], ...] | None:
    """The Vary names of a response with the request's values for them, as VRY_Create records."""
    if not vary_header:
        return None
    names = []
    for part in vary_header.split(","):
        name = part.strip().lower()
        if name and name not in names:
            names.append(name)
    get = bereq.headers.get
    # '*' is no special case in varnishd's VRY_Create: a field no request has, recorded as absent
    return tuple((n, get(n)) for n in names) or None


def _req_ttl(oc: ObjCore, req_ttl: float | None) -> float:
    """EXP_Ttl: the object's TTL, or req.ttl when that is set (above 0) and shorter."""
    return min(oc.ttl, req_ttl) if req_ttl is not None and req_ttl > 0 else oc.ttl


class LookupResult:
    __slots__ = ("kind", "oc", "busy", "replaces")

    def __init__(self, kind: str, oc: ObjCore | None = None, busy: ObjCore | None = None,
                 replaces: ObjCore | None = None) -> None:
        self.kind = kind
        self.oc = oc        # the object found (hit, grace, hitmiss) or the stale one kept for revalidation
        self.busy = busy    # a busy object this request must fill (miss, or the background fetch of grace)
        # a live hit-for-miss object the fetch supersedes (varnishd's stale_oc of HSH_HITMISS); an
        # expired one is only named in the HitMiss record
        self.replaces = replaces


class Storage:
    """The cache proper: object heads, the s0 LRU, Transient, expiry and bans."""

    def __init__(self, max_bytes: int, counters, params: Params,
                 specs: list[tuple[str, int | None]] | None = None) -> None:
        self.counters = counters
        self.fetchfrag = 0          # debug.fragfetch: the bytes a fetch takes storage (and reads) in
        self.params = params
        self.heads: dict[bytes, ObjHead] = {}
        self.bans = BanList(counters)
        self._exp: list[tuple[float, int, ObjCore]] = []
        self._seq = itertools.count()
        self._exp_timer: asyncio.TimerHandle | None = None
        self._exp_timer_at = 0.0
        self._lurker: asyncio.TimerHandle | None = None
        self.configure(specs or [("s0", max_bytes), (TRANSIENT, None)])

    def configure(self, specs: list[tuple[str, int | None]] | list[str]) -> None:
        """The stevedores, as (name, bytes or None) or raw -s arguments; done before objects exist."""
        if specs and isinstance(specs[0], str):
            specs = parse_specs(specs)
        for name in list(self.counters.extra):
            if name.startswith("SMA."):
                del self.counters.extra[name]
        self.stevedores: dict[str, Stevedore] = {
            name: Stevedore(name, size, self.counters, self._evicted) for name, size in specs}
        if TRANSIENT not in self.stevedores:
            self.stevedores[TRANSIENT] = Stevedore(TRANSIENT, None, self.counters, self._evicted)
        self._rotation = ([st for name, st in self.stevedores.items() if name != TRANSIENT]
                          or [self.stevedores[TRANSIENT]])      # -s Transient=... alone
        self._next = 0
        self.max_bytes = max((st.max_bytes or 0) for st in self._rotation)

    # -- lookup -----------------------------------------------------------------------------------

    def lookup(self, digest: bytes, req: HttpMessage, now: float, *, always_miss: bool = False,
               ignore_busy: bool = False, req_ttl: float | None = None,
               req_grace: float | None = None, ignore_vary: bool = False,
               log: list | None = None, rushed: bool = False) -> LookupResult:
        """`rushed`: again after the waiting list, where varnishd reuses the objhead it kept
        rather than search the critbit tree (no hcb_* counted)."""
        head = self.heads.get(digest)
        self.counters.hcb_nolock += not rushed  # critbit: a lookup first tries without the lock
        if head is None:
            head = self.heads[digest] = ObjHead(digest)
            self.counters.n_objecthead += 1
            if not rushed:
                self.counters.hcb_lock += 1     # not in the tree: locked again, and inserted
                self.counters.hcb_insert += 1
        if always_miss:
            return LookupResult(MISS, None, self._new_busy(head))
        busy_found = False
        stale: ObjCore | None = None
        bans = self.bans
        gzip_support = bool(self.params.http_gzip_support)
        strangelove = 0                 # variants looked at that did not match (varnishd's name)
        for oc in list(head.ocs):
            if oc.busy:
                if not ignore_busy:
                    busy_found = True
                continue
            if oc.dying or oc.ttl <= 0 or now >= oc.exp_at:
                continue
            if oc.ban is not bans.newest and bans.check(oc, req, now):
                if log is not None:
                    log.append(("ExpBan", f"{oc.xid} banned lookup"))    # in the request's log
                self.remove(oc)
                continue
            if oc.vary is not None and not ignore_vary and not vary_match(oc, req, gzip_support):
                strangelove += 1
                continue
            if now < oc.t_origin + _req_ttl(oc, req_ttl):
                if strangelove:
                    self._variants_notice(strangelove, log)
                if oc.hfp:
                    self.counters.cache_hitpass += 1
                    return LookupResult(HITPASS, oc)
                if oc.hfm:
                    self.counters.cache_hitmiss += 1
                    return LookupResult(HITMISS, oc, self._new_busy(head), replaces=oc)
                oc.hits += 1
                self._touch(oc, now)
                return LookupResult(HIT, oc)
            # only an object past its own TTL (not just req.ttl) serves grace or revalidation
            if now >= oc.t_origin + oc.ttl and (stale is None or oc.t_origin > stale.t_origin):
                stale = oc
        if strangelove:
            self._variants_notice(strangelove, log)
        if stale is not None and stale.hfm:
            self.counters.cache_hitmiss += 1
            return LookupResult(HITMISS, stale, self._new_busy(head))     # stale: for the HitMiss record
        if stale is not None and stale.hfp:
            stale = None
        in_grace = False
        if stale is not None:
            # EXP_Ttl_grace: the window starts at the TTL as req.ttl shortens it, and req.grace shortens it
            grace = stale.grace if req_grace is None or req_grace < 0 else min(stale.grace, req_grace)
            in_grace = now < stale.t_origin + _req_ttl(stale, req_ttl) + grace
        if not busy_found:
            busy = self._new_busy(head)
            if in_grace:
                stale.hits += 1
                self._touch(stale, now)
                return LookupResult(GRACE, stale, busy)
            return LookupResult(MISS, stale, busy)
        if in_grace:
            # another fetch refreshes it already: deliver the stale object without waiting
            stale.hits += 1
            self._touch(stale, now)
            return LookupResult(GRACE, stale, None)
        return LookupResult(BUSY, stale)

    def _variants_notice(self, count: int, log: list | None) -> None:
        """HSH_Lookup's Notice when a lookup went through vary_notice or more non-matching variants."""
        if log is not None and self.params is not None and count >= self.params.vary_notice:
            log.append(("Notice", f"vsl: High number of variants ({count})"))

    def _new_busy(self, head: ObjHead) -> ObjCore:
        # the head may have been dropped when the lookup removed its last object (ban, expiry)
        if head.digest not in self.heads:
            self.heads[head.digest] = head
            self.counters.n_objecthead += 1
        oc = ObjCore(head)
        self.counters.n_objectcore += 1
        head.ocs.insert(0, oc)
        return oc

    def _touch(self, oc: ObjCore, now: float) -> None:
        # as varnishd: an object moves on the LRU at most once per lru_interval
        if oc.store and now - oc.t_lastuse >= self._lru_interval:
            oc.t_lastuse = now
            if self.stevedores[oc.store].touch(oc):
                self.counters.n_lru_moved += 1

    @property
    def _lru_interval(self) -> float:
        return self.params.lru_interval

    # -- the fetch side ---------------------------------------------------------------------------

    def unbusy(self, oc: ObjCore, bereq: HttpMessage | None, vary_header: str | None,
               store: str | None = None) -> bool:
        """The fetch knows the headers: the object becomes visible. False when it cannot be stored.

        `store` is beresp.storage ("s0", "Transient") when VCL chose one.
        """
        head = oc.head
        oc.busy = False
        if oc.http is not None:
            oc.http = StoredHttp.of(oc.http)     # kept compact while it is cached
        if bereq is not None:
            oc.vary = vary_of(vary_header, bereq)
        oc.ban = None
        self.bans.move(oc, self.bans.newest)
        # the object itself first; if even that finds no room, Transient salvages it (short-lived),
        # unless Transient was the store it did not fit in (varnishd's vbf_allocobj)
        first = self.store_for(oc, store)
        ok = self._account(oc, with_body=False, hint=store) or (first != TRANSIENT and self._salvage(oc))
        # then the body (what arrived, or all it announced), as one storage allocation would be
        if max(oc.length, oc.expected, oc.alloc):
            ok = ok and self._account(oc)
        oc.t_lastuse = _wall()
        if ok:
            self.counters.n_object += 1
            self._schedule_expiry(oc)
        else:
            self._unlink(oc)
        if head is not None:
            head.rush()
        return ok

    def _salvage(self, oc: ObjCore) -> bool:
        """No room in the chosen store: Transient takes the object, short-lived, as varnishd does."""
        # vbf_allocobj: the TTL (counted from t_origin, so an old object may already be expired)
        oc.ttl = min(oc.ttl, self.params.shortlived)
        oc.grace = oc.keep = 0.0
        return self._account(oc, with_body=False, hint=TRANSIENT)

    def abandon(self, oc: ObjCore) -> None:
        """A busy object that will never be filled (fetch failed, miss turned pass)."""
        if oc.busy:
            oc.busy = False
            self._unlink(oc)
            if oc.head is not None:
                oc.head.rush()

    def grow(self, oc: ObjCore) -> bool:
        """The object's body grew: charge it to its store; False when it no longer fits.

        A body of known length was charged whole; one of unknown length takes another segment of
        fetch_chunksize whenever the last is full (even exactly: the fetch asks for room before it
        learns that the body ended), each one allocation."""
        length = oc.length
        if length <= oc.expected or length < oc.alloc:
            return True              # within what is allocated
        chunk = self.fetchfrag or (int(self.params.fetch_chunksize) if self.params is not None else 16384)
        stored = oc.store != "" and (oc.keep_body or oc.hfm or oc.hfp)
        # (a hit-for-miss/pass body is charged while it is fetched, and freed after: slim())
        while oc.alloc <= length:
            oc.alloc += chunk
            oc.seg = chunk
            if stored and not self._account(oc):
                return False
        return True

    def trim(self, oc: ObjCore) -> None:
        """A body of unknown length is whole: as varnishd's sml_trimstore, an empty last segment is
        freed, and one with 512 bytes or more unused is moved to an allocation of what it holds."""
        unused = oc.alloc - oc.length
        if not oc.seg or unused <= 0:
            return
        used = oc.seg - unused
        if used > 0 and unused < 512:
            return
        oc.alloc = oc.length
        if oc.store:
            self.stevedores[oc.store].trim(oc, used, oc.seg)

    def hold_transient(self, head: int, body_len: int) -> Held | None:
        """Transient storage for an object no one else will use (a synth response, a backend error
        object nothing caches): the object, then its body; None when it cannot fit."""
        st = self.stevedores[TRANSIENT]
        nuke_limit = self.params.nuke_limit if self.params is not None else 50
        held = Held(head)
        if not st.charge(held, 0, nuke_limit):
            return None
        if body_len:
            held.size += body_len
            if not st.charge(held, head, nuke_limit):
                return None
        return held

    def account_private(self, oc: ObjCore) -> None:
        """A private (pass) object's fetch is over: varnishd held it in Transient (the object, then
        its body as `grow` took it: one allocation for a known length, segments otherwise, the
        last trimmed) and frees it once delivered. Counted here; it is released at once since
        nothing here keeps it there (the body itself streams through `oc`)."""
        held = self.hold_transient(oc.compute_size(with_body=False), 0)
        if held is None:
            return
        st = self.stevedores[TRANSIENT]
        nuke_limit = self.params.nuke_limit if self.params is not None else 50
        length = oc.length
        if length and length <= oc.expected:
            held.size += length
            st.charge(held, held.size - length, nuke_limit)
        elif oc.seg and oc.alloc:
            for _ in range(oc.alloc // oc.seg):
                held.size += oc.seg
                if not st.charge(held, held.size - oc.seg, nuke_limit):
                    return
            unused = oc.alloc - length
            used = oc.seg - unused
            if 0 < unused and (used <= 0 or unused >= 512):
                st.trim(held, max(used, 0), oc.seg)
        st.release(held)

    def release_held(self, held: Held) -> None:
        self.stevedores[TRANSIENT].release(held)

    def slim(self, oc: ObjCore) -> None:
        """The fetch of an object that keeps no body (hit-for-miss, hit-for-pass) is over: its body's
        storage is freed, the object stays (varnishd's ObjSlim)."""
        if oc.store and oc.size:
            old = oc.size
            if oc.compute_size(with_body=False) < old:
                self.stevedores[oc.store].shrink(oc, old)

    def _account(self, oc: ObjCore, with_body: bool = True, hint: str | None = None) -> bool:
        """Charge the object's size to its store, choosing one the first time; False: no room."""
        old = oc.size
        oc.compute_size(with_body)
        nuke_limit = self.params.nuke_limit
        if oc.store:
            if self.stevedores[oc.store].charge(oc, old, nuke_limit):
                return True
            oc.store = ""
            return False
        shortlived = self.params.shortlived
        if oc.hfm or oc.hfp or oc.ttl + oc.grace + oc.keep < shortlived:
            st = self.stevedores[TRANSIENT]           # whatever the hint, as varnishd (counted by the fetch)
        else:
            st = self.stevedores.get(hint) if hint else None
            if st is None:
                st = self.stevedores[self.next_stevedore()]
        if not st.charge(oc, 0, nuke_limit):
            return False
        oc.store = st.name
        return True

    def store_for(self, oc: ObjCore, hint: str | None) -> str:
        """The stevedore `_account` will give a new object (what its Storage record names)."""
        shortlived = self.params.shortlived
        if oc.private or oc.hfm or oc.hfp or oc.ttl + oc.grace + oc.keep < shortlived:
            return TRANSIENT
        return hint if hint in self.stevedores else self._rotation[self._next % len(self._rotation)].name

    def next_stevedore(self) -> str:
        """The default storage: the stevedores other than Transient, taken in turn."""
        st = self._rotation[self._next % len(self._rotation)]
        self._next += 1
        return st.name

    def _evicted(self, oc: ObjCore) -> None:
        self.counters.n_lru_nuked += 1
        oc.store = ""
        self._drop(oc)

    # -- removal ----------------------------------------------------------------------------------

    def _unlink(self, oc: ObjCore) -> None:
        head = oc.head
        if head is not None:
            if oc in head.ocs:
                head.ocs.remove(oc)
                self.counters.n_objectcore -= 1
            if not head.ocs and not head.waiters and self.heads.get(head.digest) is head:
                del self.heads[head.digest]
                self.counters.n_objecthead -= 1
        oc.dying = True

    def _drop(self, oc: ObjCore) -> None:
        """Forget an object that was counted in n_object (store accounting done by the caller)."""
        if oc.dying:
            return
        self._unlink(oc)
        self.counters.n_object -= 1
        self.bans.release(oc)
        if oc.store:
            self.stevedores[oc.store].release(oc)
        oc.store = ""
        if oc.complete and not oc.readers:
            oc.chunks = []
            oc.body_cache = None

    def remove(self, oc: ObjCore) -> None:
        if oc.dying:
            return
        self._drop(oc)
        if oc.exp_at and self._exp_logged():
            # varnishd posts the killed object to its expiry thread (OC_EF_REMOVE|REFD|POSTED)
            self._exp_log(f"EXP_Inbox flg=26 p=0x{id(oc):x} e={oc.exp_at:.6f} f=0x{_oc_flags(oc):x}")

    def purge(self, digest: bytes, ttl: float = 0.0, grace: float = 0.0, keep: float = 0.0,
              now: float | None = None) -> int:
        """HSH_Purge: every object of `digest` that is neither busy nor dying; returns how many.

        With ttl, grace and keep all 0 (`return (purge)`, purge.hard()) they are removed. Otherwise
        (purge.soft()) each timer is only ever lowered, as EXP_Reduce: the TTL to `now + ttl`, grace
        and keep to the given values; NaN leaves a timer alone."""
        head = self.heads.get(digest)
        if head is None:
            return 0
        hard = ttl == 0 and grace == 0 and keep == 0
        now = _wall() if now is None else now
        count = 0
        for oc in list(head.ocs):
            if oc.busy or oc.dying:
                continue
            count += 1
            if hard:
                # varnishd rearms it to expire now (EXP_Rearm mails it to the expiry thread), and the
                # thread kills it as an expired object (n_expired)
                self._schedule_expiry(oc, now)
                self.counters.n_expired += 1
                self._exp_kill(oc, -0.0)
                self._drop(oc)
                if self._exp_logged():
                    self._exp_root(now)
                continue
            if not math.isnan(ttl) and now + ttl - oc.t_origin < oc.ttl:
                oc.ttl = now + ttl - oc.t_origin
            if not math.isnan(grace) and grace < oc.grace:
                oc.grace = grace
            if not math.isnan(keep) and keep < oc.keep:
                oc.keep = keep
            self.reschedule(oc)
        if hard:
            self.counters.n_obj_purged += count
        return count

    def objects(self) -> list[ObjCore]:
        return [oc for head in self.heads.values() for oc in head.ocs if not oc.busy]

    @property
    def used_bytes(self) -> int:
        return sum(st.bytes for st in self.stevedores.values())

    def storage_var(self, name: str, field: str) -> object:
        """storage.NAME.free_space / used_space / happy for VCL."""
        st = self.stevedores.get(name)
        if field == "happy":
            return st is not None
        if st is None:
            return 0.0
        if field == "free_space" and st.max_bytes is None:
            return 999999999999999.0     # an unbounded store: VRT_INTEGER_MAX, as varnishd reports it
        return float(st.space if field == "free_space" else st.bytes)

    # -- expiry -----------------------------------------------------------------------------------

    def _schedule_expiry(self, oc: ObjCore, at: float | None = None) -> None:
        """Post the object to the expiry heap, due at `at` (default: when its timers end)."""
        before = oc.exp_at
        if at is None:
            at = oc.t_origin + max(oc.ttl, 0.0) + max(oc.grace, 0.0) + max(oc.keep, 0.0)
        logged = self._exp_logged()
        if logged:
            now = _wall()
            if before:
                # a known object's timers changed: the worker's EXP_Rearm
                self._exp_log(f"EXP_Rearm p=0x{id(oc):x} E={before:.6f} e={at:.6f} f=0x{_oc_flags(oc):x}")
            self._exp_root(now)                # the woken thread looks at its heap's root first
        oc.exp_at = at
        heapq.heappush(self._exp, (at, next(self._seq), oc))
        self.counters.exp_mailed += 1        # varnishd mails the object to its expiry thread,
        self.counters.exp_received += 1      # which takes it at once here
        if logged:
            # the thread's records for its inbox (an insert: OC_EF_INSERT|MOVE|REFD|POSTED, a move:
            # MOVE|REFD|POSTED), then its look at the heap's root
            flags = 0x1e if before == 0.0 else 0xe
            self._exp_log(f"EXP_Inbox flg={flags:x} p=0x{id(oc):x} e={before:.6f} f=0x{_oc_flags(oc):x}",
                          f"EXP_When p=0x{id(oc):x} e={at:.6f} f=0x{flags:x}")
            self._exp_root(now)
        self._arm_expiry()

    def reschedule(self, oc: ObjCore) -> None:
        """TTL/grace/keep of a stored object changed (revalidation, VCL)."""
        if not oc.dying and not oc.busy:
            self._schedule_expiry(oc)

    vsl = None    # the shared log (the server sets it): the expiry thread's ExpKill records, vxid 0

    def _exp_logged(self) -> bool:
        """Whether ExpKill records are wanted (vsl_mask masks them by default): else none is made."""
        return self.vsl is not None and self.vsl.wants("ExpKill")

    def _exp_log(self, *texts: str) -> None:
        self.vsl.write(0, "-", [("ExpKill", text) for text in texts])

    def _exp_root(self, now: float) -> ObjCore | None:
        """The object at the root of the expiry heap, logged as varnishd's thread looks at it
        (EXP_expire: how far its timer is from now); stale heap entries are dropped first."""
        exp = self._exp
        while exp:
            at, _, oc = exp[0]
            if oc.dying or at != oc.exp_at:
                heapq.heappop(exp)
                continue
            if self._exp_logged():
                self._exp_log(f"EXP_expire p=0x{id(oc):x} e={at - now:.6f} f=0x{_oc_flags(oc):x}")
            return oc
        return None

    def _exp_kill(self, oc: ObjCore, ttl_left: float) -> None:
        if self._exp_logged():
            self._exp_log("EXP_Expired x=%d t=%.0f" % (oc.xid, ttl_left))

    def _arm_expiry(self) -> None:
        if not self._exp:
            return
        at = self._exp[0][0]
        if self._exp_timer is not None and self._exp_timer_at <= at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._exp_timer is not None:
            self._exp_timer.cancel()
        self._exp_timer_at = at
        delay = max(at - _wall(), 0.0)
        self._exp_timer = loop.call_later(min(delay, 3600.0) + 0.001, self._expire)

    def _expire(self) -> None:
        self._exp_timer = None
        now = _wall()
        while True:
            oc = self._exp_root(now)
            if oc is None or oc.exp_at > now:
                break
            heapq.heappop(self._exp)
            self.counters.n_expired += 1
            self._exp_kill(oc, oc.t_origin + oc.ttl - now)
            self._drop(oc)                   # the thread kills it itself: no inbox record
        self._arm_expiry()

    # -- bans -------------------------------------------------------------------------------------

    def ban(self, expr: str | list[str]) -> None:
        self.bans.dups = bool(self.params.ban_dups)
        self.bans.add(expr)
        if self._lurker_sleep() > 0:
            self.bans.trim()        # varnishd kicks its lurker, which drops the unreferenced tail
        self._arm_lurker(self._lurker_sleep())

    def _lurker_sleep(self) -> float:
        return float(self.params.ban_lurker_sleep)

    def _arm_lurker(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._lurker is not None:
            if self._lurker.when() <= loop.time() + delay:
                return
            self._lurker.cancel()           # a new ban: the lurker looks sooner than it planned
        self._lurker = loop.call_later(delay, self._lurk)

    def _ban_cutoff(self) -> None:
        """ban_cutoff: objects still on a ban past the newest ban_cutoff ones are expunged by the
        lurker (bans_lurker_obj_killed_cutoff), so that the list stays that short."""
        cutoff = int(self.params.ban_cutoff)
        bans = self.bans.bans
        if cutoff <= 0 or len(bans) <= cutoff:
            return
        old = {id(b) for b in bans[cutoff:]}
        for oc in [oc for oc in self.objects() if id(oc.ban) in old]:
            self.counters.bans_lurker_obj_killed_cutoff += 1
            if self.vsl is not None:
                self.vsl.write(0, "-", [("ExpBan", f"{oc.xid} killed for lurker cutoff")])
            self.remove(oc)

    def _lurk(self) -> None:
        """The ban lurker: obj-only bans older than ban_lurker_age are tested against every object.

        It sleeps while no such ban is due, so a cache with bans costs nothing between them.
        """
        self._lurker = None
        if self._lurker_sleep() <= 0:
            return                      # ban_lurker_sleep 0 disables the lurker, as varnishd's
        min_age = self.params.ban_lurker_age
        now = _wall()
        self._ban_cutoff()
        self.bans.trim()                # varnishd's lurker drops unreferenced bans at the tail
        pending = [b for b in self.bans.bans if not b.completed and not b.has_req]
        if not pending:
            return
        due = [b for b in pending if now - b.t >= min_age]
        if due:
            killed = self.bans.lurk(self.objects(), now, min_age)
            if killed and self.vsl is not None:
                # the lurker's records belong to no transaction
                self.vsl.write(0, "-", [("ExpBan", f"{oc.xid} banned by lurker") for oc in killed])
            for oc in killed:
                self.remove(oc)
            self.bans.trim()
            self._arm_lurker(1.0)
            return
        self._arm_lurker(max(min(b.t for b in pending) + min_age - now, 0.05))

    def kick_lurker(self) -> None:
        """ban_lurker_age or ban_lurker_sleep changed: the lurker looks again now (varnishd's
        wakes every ban_lurker_sleep and reads them afresh)."""
        self._arm_lurker(0.0)
