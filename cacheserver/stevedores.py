"""Stevedores: the named stores objects are kept in (`-s name=malloc,SIZE`), each a byte-bounded LRU.

`s0`, `s1`, ... are the -s arguments in order (or the names given); Transient is unbounded unless
`-s Transient=malloc,SIZE` bounds it. A store charges an object's size (headers, body, bookkeeping)
and evicts least recently used objects to make room, at most nuke_limit of them per allocation.
Counters appear as varnishstat names them: SMA.<name>.c_req / c_fail (allocations asked for, refused),
c_bytes / c_freed (bytes allocated, freed), g_alloc / g_bytes / g_space (outstanding allocations, bytes
held, bytes left).
"""

from __future__ import annotations

import math
from typing import Callable

from cachetools import LRUCache

from cacheserver.params import parse_bytes

TRANSIENT = "Transient"


class _ByteLRU:
    """A bounded store's objects, least recently used first, and the bytes each was charged.

    cachetools' LRUCache keeps the order, mapping each object to its size when charged; it counts
    entries, not bytes (a weighed LRUCache keeps one more map per object, some 100 bytes each), so
    the bytes are summed here and eviction is ours, nuke_limit and all.
    """

    __slots__ = ("max_bytes", "currsize", "_sizes", "on_evict")

    def __init__(self, max_bytes: int, on_evict: Callable) -> None:
        self.max_bytes = max_bytes
        self.currsize = 0
        self._sizes: LRUCache = LRUCache(maxsize=math.inf)
        self.on_evict = on_evict             # an object pushed out to make room (popitem)

    def __contains__(self, oc) -> bool:
        return oc in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def put(self, oc) -> None:
        """Hold `oc` at its current size, as the most recently used."""
        sizes = self._sizes
        self.currsize += oc.size - sizes.get(oc, 0)
        sizes[oc] = oc.size

    def use(self, oc) -> bool:
        """`oc` was used: it goes last; False when it is not held."""
        try:
            self._sizes[oc]                  # a read is a use: LRUCache moves it last
        except KeyError:
            return False
        return True

    def pop(self, oc) -> bool:
        """Stop holding `oc`; False when it was not held."""
        size = self._sizes.pop(oc, None)
        if size is None:
            return False
        self.currsize -= size
        return True

    def popitem(self) -> None:
        """Push out the least recently used object."""
        oc, size = self._sizes.popitem()
        self.currsize -= size
        self.on_evict(oc)


class Stevedore:
    def __init__(self, name: str, max_bytes: int | None, counters, on_evict: Callable) -> None:
        self.name = name
        self.max_bytes = max_bytes            # None: unbounded
        self.counters = counters
        self.lru = _ByteLRU(max_bytes, self._nuked) if max_bytes is not None else None
        self._on_evict = on_evict
        self.used = 0                         # unbounded stores only
        self.prefix = f"SMA.{name}."
        extra = counters.extra
        for name in ("c_req", "c_fail", "c_bytes", "c_freed"):
            extra[self.prefix + name] = extra.get(self.prefix + name, 0)
        self.allocs = 0                       # allocations held here (g_alloc)
        # allocations each object holds: itself, then one per body segment (sma_alloc's count)
        self.nallocs: dict[object, int] = {}
        self.gauge()

    @property
    def bytes(self) -> int:
        return self.lru.currsize if self.lru is not None else self.used

    @property
    def space(self) -> int:
        return self.max_bytes - self.lru.currsize if self.lru is not None else 0

    def gauge(self) -> None:
        extra = self.counters.extra
        extra[self.prefix + "g_alloc"] = self.allocs
        extra[self.prefix + "g_bytes"] = self.bytes
        extra[self.prefix + "g_space"] = self.space

    def fail(self) -> None:
        self.counters.extra[self.prefix + "c_fail"] += 1

    def charge(self, oc, old: int, nuke_limit: int) -> bool:
        """Hold `oc` at its current size (it held `old` here before); False when it cannot fit."""
        extra = self.counters.extra
        if not 0 < oc.size < old:
            extra[self.prefix + "c_req"] += 1     # (a shrink, ObjSlim's, frees without asking for any)
        if self.lru is None:
            self._account(oc, old, old > 0)
            self.used += oc.size - old
            self.gauge()
            return True
        lru = self.lru
        held = oc in lru
        if not held:
            old = 0
        if oc.size > self.max_bytes or not self._make_room(oc, old, held, nuke_limit):
            self.fail()
            if held:
                lru.pop(oc)                     # what it held is given back
                self.counters.extra[self.prefix + "c_freed"] += old
                self.allocs -= self.nallocs.pop(oc, 1)
                self.gauge()
            return False
        lru.put(oc)
        self._account(oc, old, held)
        self.gauge()
        return True

    def _account(self, oc, old: int, held: bool) -> None:
        """Bytes allocated (a growing object allocates its growth) and objects held."""
        extra = self.counters.extra
        if oc.size > old:
            extra[self.prefix + "c_bytes"] += oc.size - old
        elif oc.size < old:
            extra[self.prefix + "c_freed"] += old - oc.size
        n = self.nallocs.get(oc, 0) if held else 0
        new = 1 if held and oc.size < old else n + 1    # shrunk (ObjSlim): the object alone stays
        self.nallocs[oc] = new
        self.allocs += new - n

    def trim(self, oc, used: int, seg: int) -> None:
        """The object's last segment (`seg` bytes) gave way to one of `used` bytes (none if 0)."""
        old = oc.size
        if hasattr(oc, "compute_size"):
            oc.compute_size()
        else:
            oc.size -= seg - used               # a Held: its size is all there is
        extra = self.counters.extra
        if used:
            extra[self.prefix + "c_req"] += 1
            extra[self.prefix + "c_bytes"] += used
        elif self.nallocs.get(oc, 0) > 1:
            self.nallocs[oc] -= 1               # an empty last segment is freed, not moved
            self.allocs -= 1
        extra[self.prefix + "c_freed"] += seg
        if self.lru is None:
            self.used += oc.size - old
        elif oc in self.lru:
            self.lru.put(oc)                    # its new, smaller size
        self.gauge()

    def shrink(self, oc, old: int) -> None:
        """`oc` gave back its body's segments (from `old` bytes to its size now): freed, no new
        allocation; the object's own stays."""
        self.counters.extra[self.prefix + "c_freed"] += old - oc.size
        if self.lru is None:
            self.used += oc.size - old
        elif oc in self.lru:
            self.lru.put(oc)
        self.allocs -= self.nallocs.get(oc, 1) - 1
        self.nallocs[oc] = 1
        self.gauge()

    def _make_room(self, oc, old: int, held: bool, nuke_limit: int) -> bool:
        lru = self.lru
        if held:
            lru.use(oc)                      # most recently used: never its own victim
        nuked = 0
        while lru.currsize - old + oc.size > self.max_bytes:
            if nuked >= nuke_limit or len(lru) <= (1 if held else 0):
                self.counters.n_lru_limited += 1
                return False
            # varnishd's allocation failed first (c_fail), it nukes one and asks again (c_req)
            extra = self.counters.extra
            extra[self.prefix + "c_fail"] += 1
            extra[self.prefix + "c_req"] += 1
            lru.popitem()
            nuked += 1
        return True

    def release(self, oc) -> None:
        if self.lru is None:
            self.used -= oc.size
        elif not self.lru.pop(oc):
            self.gauge()
            return                              # evicted already (_nuked freed it)
        self._freed(oc)
        self.gauge()

    def _nuked(self, oc) -> None:
        self._freed(oc)
        self._on_evict(oc)

    def _freed(self, oc) -> None:
        self.counters.extra[self.prefix + "c_freed"] += oc.size
        self.allocs -= self.nallocs.pop(oc, 1)

    def touch(self, oc) -> bool:
        return self.lru is not None and self.lru.use(oc)


def parse_specs(specs: list[str] | None, default_bytes: int = 256 << 20) -> list[tuple[str, int | None]]:
    """`-s` arguments to (name, bytes or None) in order; s0 alone when there are none (as varnishd,
    not when the only one names Transient: then Transient is the only storage, cached objects too)."""
    out: list[tuple[str, int | None]] = []
    n = 0
    for spec in specs or []:
        name, sep, rest = spec.partition("=")
        if not sep:
            name, rest = "", spec
        kind, _, args = rest.partition(",")
        parts = [p for p in args.split(",")] if args else []
        size_text = (parts[1] if len(parts) > 1 else "") if kind == "file" else (parts[0] if parts else "")
        size = parse_bytes(size_text) if size_text else None
        if name == TRANSIENT:
            out.append((TRANSIENT, size))
            continue
        if not name:
            name = f"s{n}"
            n += 1
        out.append((name, size if size is not None else default_bytes))
    if not specs:
        out.insert(0, ("s0", default_bytes))
    if not any(name == TRANSIENT for name, _ in out):
        out.append((TRANSIENT, None))
    return out
