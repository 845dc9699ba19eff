"""Object storage: a byte-bounded LRU (cachetools) keyed by hash digest and Vary variant."""

from __future__ import annotations

from dataclasses import dataclass, field

from cachetools import LRUCache

from vcl.runtime import HttpMessage

# Bookkeeping bytes charged per object besides its headers and body.
_OVERHEAD = 256


@dataclass(slots=True, eq=False)
class CachedObject:
    http: HttpMessage                  # status, reason and headers as they will be delivered
    body: bytes
    t_origin: float                    # when the object was fresh (now - Age at fetch)
    ttl: float
    grace: float
    keep: float
    xid: int                           # the backend transaction that made it
    hits: int = 0
    cached: bool = False               # lives in the cache (not a pass or a one-off synth)
    hit_for_pass: bool = False
    hit_for_miss: bool = False
    vary: tuple[str, ...] = ()         # lowercased names from the Vary header
    vary_values: tuple = ()
    size: int = field(default=0)

    def compute_size(self) -> int:
        self.size = _OVERHEAD + len(self.body) + sum(len(n) + len(v) + 4 for n, v in self.http.headers.items())
        return self.size

    def expired(self, now: float) -> bool:
        """Past TTL + grace + keep: no use at all any more."""
        return now >= self.t_origin + self.ttl + self.grace + self.keep

    def fresh(self, now: float) -> bool:
        return now < self.t_origin + self.ttl


class _ByteLRU(LRUCache):
    def __init__(self, max_bytes: int, on_evict) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda obj: obj.size)
        self._on_evict = on_evict

    def popitem(self):
        key, obj = super().popitem()
        self._on_evict(key, obj)
        return key, obj


class Storage:
    """The cache proper. Objects bigger than the whole store are not kept."""

    def __init__(self, max_bytes: int, counters) -> None:
        self.counters = counters
        self.max_bytes = max_bytes
        self._lru = _ByteLRU(max_bytes, self._evicted)
        # digest -> the Vary header-name tuples seen for it, newest first
        self._varies: dict[bytes, list[tuple[str, ...]]] = {}

    def _evicted(self, key, obj: CachedObject) -> None:
        self.counters.n_lru_nuked += 1
        self.counters.n_object -= 1

    @staticmethod
    def _variant(req: HttpMessage, names: tuple[str, ...]) -> tuple:
        get = req.headers.get
        return tuple(get(n) for n in names)

    def lookup(self, digest: bytes, req: HttpMessage, now: float) -> CachedObject | None:
        """The freshest usable variant for this request, or None."""
        for names in self._varies.get(digest, ()):
            key = (digest, names, self._variant(req, names))
            obj = self._lru.get(key)
            if obj is None:
                continue
            if obj.expired(now):
                self._remove(key)
                self.counters.n_expired += 1
                continue
            return obj
        return None

    def insert(self, digest: bytes, req: HttpMessage, obj: CachedObject) -> None:
        obj.compute_size()
        if obj.size > self.max_bytes:
            return
        obj.cached = True
        names = obj.vary
        variants = self._varies.setdefault(digest, [])
        if names not in variants:
            variants.insert(0, names)
        key = (digest, names, self._variant(req, names))
        if key in self._lru:
            self._remove(key)
        self._lru[key] = obj
        self.counters.n_object += 1

    def _remove(self, key) -> None:
        if self._lru.pop(key, None) is not None:
            self.counters.n_object -= 1

    def purge(self, digest: bytes) -> int:
        """Remove every variant of `digest`; returns how many went."""
        gone = 0
        for names in self._varies.pop(digest, ()):
            for key in [k for k in self._lru.keys() if k[0] == digest and k[1] == names]:
                self._remove(key)
                gone += 1
        self.counters.n_obj_purged += gone
        return gone

    def objects(self):
        return list(self._lru.items())

    def remove_object(self, key) -> None:
        self._remove(key)

    @property
    def used_bytes(self) -> int:
        return self._lru.currsize
