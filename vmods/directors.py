"""vmod directors: round_robin, fallback, random, hash and shard (basic), over backends' health.

A director is a BACKEND value: anything with `resolve(ctx)` (the backend to use now, or None) and
`healthy(ctx)`. The server follows directors at fetch time (cacheserver.backends.resolve), so
`set req.backend_hint = rr.backend();` picks per fetch, as in Varnish. Health comes from
cacheserver.backends.healthy(): admin state from `backend.set_health`, probe results from the probe hook.
"""

from __future__ import annotations

import bisect
import hashlib
import random as _random
import struct

from cacheserver.backends import healthy as _healthy
from vcl.runtime import Context, VCLFailure
from vmods import Func, ObjectType, Param, Vmod

VMOD = Vmod("directors")


class Director:
    """Members in order, with their weights; subclasses choose among the healthy ones."""

    kind = "director"

    def __init__(self) -> None:
        self.vcl_name: str | None = None      # set by the server from `new NAME = ...`
        self.members: list[tuple[object, float]] = []

    @property
    def name(self) -> str:
        return self.vcl_name or self.kind

    def __str__(self) -> str:
        return self.name

    def add(self, backend: object, weight: float = 1.0) -> None:
        if backend is None:
            raise VCLFailure(f"{self.kind}.add_backend(): None backend cannot be added")
        self.members.append((backend, weight))

    def remove(self, backend: object) -> None:
        self.members = [(b, w) for b, w in self.members if b is not backend]

    def healthy_members(self, ctx) -> list[tuple[object, float]]:
        return [(b, w) for b, w in self.members if _healthy(b, ctx)]

    def healthy(self, ctx=None) -> bool:
        return any(_healthy(b, ctx) for b, _ in self.members)

    def resolve(self, ctx):  # pragma: no cover - every director overrides it
        raise NotImplementedError


class RoundRobin(Director):
    kind = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self.next = 0

    def resolve(self, ctx):
        n = len(self.members)
        for i in range(n):
            backend = self.members[(self.next + i) % n][0]
            if _healthy(backend, ctx):
                self.next = (self.next + i + 1) % n
                return backend
        return None


class Fallback(Director):
    kind = "fallback"

    def __init__(self, sticky: bool = False) -> None:
        super().__init__()
        self.sticky = sticky
        self.current = 0

    def resolve(self, ctx):
        n = len(self.members)
        start = self.current if self.sticky else 0
        for i in range(n):
            idx = (start + i) % n if self.sticky else i
            backend = self.members[idx][0]
            if _healthy(backend, ctx):
                self.current = idx
                return backend
        return None


def _pick_weighted(members: list[tuple[object, float]], point: float):
    """The member at `point` in [0, 1) of the cumulative weights."""
    total = sum(w for _, w in members)
    if total <= 0:
        return None
    target = point * total
    for backend, weight in members:
        if target < weight:
            return backend
        target -= weight
    return members[-1][0]


class Random(Director):
    kind = "random"

    def resolve(self, ctx):
        members = self.healthy_members(ctx)
        return _pick_weighted(members, _random.random()) if members else None


class Hash(Director):
    kind = "hash"

    def pick(self, ctx, key: str):
        members = self.healthy_members(ctx)
        if not members:
            return None
        digest = hashlib.sha256((key or "").encode("utf-8", "surrogateescape")).digest()
        point = struct.unpack(">I", digest[:4])[0] / 2**32
        return _pick_weighted(members, point)

    def resolve(self, ctx):
        url = ctx.bereq.url if getattr(ctx, "bereq", None) is not None else (
            ctx.req.url if getattr(ctx, "req", None) is not None else "")
        return self.pick(ctx, url)


def _h32(data: bytes) -> int:
    return struct.unpack(">I", hashlib.sha256(data).digest()[:4])[0]


class Shard(Director):
    """Consistent hashing on a ring of `replicas` points per backend; unhealthy ones are skipped."""

    kind = "shard"

    def __init__(self) -> None:
        super().__init__()
        self.idents: list[str] = []
        self.replicas = 67
        self.ring: list[tuple[int, int]] = []      # (point, member index), sorted
        self.by = "HASH"
        self.key = 0

    def add_shard(self, backend: object, ident: str | None, weight: float) -> bool:
        if backend is None:
            raise VCLFailure("shard.add_backend(): None backend cannot be added")
        ident = ident or getattr(backend, "name", str(backend))
        if any(i == ident and b is backend for (b, _), i in zip(self.members, self.idents, strict=True)):
            return False
        self.members.append((backend, weight))
        self.idents.append(ident)
        return True

    def remove_shard(self, backend: object | None, ident: str | None) -> bool:
        keep = [(m, i) for m, i in zip(self.members, self.idents, strict=True)
                if not ((backend is None or m[0] is backend) and (ident is None or i == ident))]
        self.members = [m for m, _ in keep]
        self.idents = [i for _, i in keep]
        return True

    def reconfigure(self, replicas: int = 67) -> bool:
        if replicas <= 0:
            raise VCLFailure("shard.reconfigure(): replicas must be > 0")
        self.replicas = replicas
        ring = []
        for idx, ident in enumerate(self.idents):
            for r in range(replicas):
                ring.append((_h32(f"{ident}{r}".encode()), idx))
        ring.sort()
        self.ring = ring
        return True

    def lookup(self, ctx, key: int, alt: int = 0, healthy_only: bool = True):
        if not self.ring:
            self.reconfigure(self.replicas)
        if not self.ring:
            return None
        start = bisect.bisect_left(self.ring, (key, -1)) % len(self.ring)
        seen: set[int] = set()
        skipped = 0
        for i in range(len(self.ring)):
            idx = self.ring[(start + i) % len(self.ring)][1]
            if idx in seen:
                continue
            seen.add(idx)
            backend = self.members[idx][0]
            if healthy_only and not _healthy(backend, ctx):
                continue
            if skipped < alt:
                skipped += 1
                continue
            return backend
        return None

    def key_for(self, ctx, by: str, key: int) -> int:
        if by == "KEY":
            return key & 0xFFFFFFFF
        if by == "URL":
            msg = getattr(ctx, "bereq", None) or getattr(ctx, "req", None)
            return _h32((msg.url if msg is not None else "").encode("utf-8", "surrogateescape"))
        digest = getattr(ctx, "hash", None)
        if isinstance(digest, bytes) and len(digest) >= 4:
            return struct.unpack(">I", digest[:4])[0]
        msg = getattr(ctx, "bereq", None) or getattr(ctx, "req", None)
        return _h32((msg.url if msg is not None else "").encode("utf-8", "surrogateescape"))

    def resolve(self, ctx):
        return self.lookup(ctx, self.key_for(ctx, self.by, self.key))


# -- registration ----------------------------------------------------------------------------------

def _obj(name: str, ctor, params: list[Param] | None = None) -> ObjectType:
    obj = ObjectType(name, Func(name, ctor, "VOID", params or [], frozenset({"vcl_init"})))
    VMOD.objects[name] = obj
    return obj


def _method(obj: ObjectType, name: str, impl, ret: str = "VOID", params: list[Param] | None = None) -> None:
    obj.methods[name] = Func(name, impl, ret, params or [])


def _add(d: Director, ctx: Context, backend, weight: float = 1.0) -> None:
    d.add(backend, weight)


def _remove(d: Director, ctx: Context, backend) -> None:
    d.remove(backend)


def _backend(d: Director, ctx: Context):
    return d


def _healthy_method(d: Director, ctx: Context) -> bool:
    return d.healthy(ctx)


_BE = [Param("backend", "BACKEND")]

for _name, _cls in (("round_robin", RoundRobin), ("random", Random), ("hash", Hash)):
    _o = _obj(_name, lambda ctx, _c=_cls: _c())
    if _name == "round_robin":
        _method(_o, "add_backend", _add, "VOID", list(_BE))
    else:
        _method(_o, "add_backend", _add, "VOID", _BE + [Param("weight", "REAL", 1.0, optional=True)])
    _method(_o, "remove_backend", _remove, "VOID", list(_BE))
    _method(_o, "healthy", _healthy_method, "BOOL")
    if _name == "hash":
        _method(_o, "backend", lambda d, ctx, key: d.pick(ctx, key), "BACKEND", [Param("key", "STRING")])
    else:
        _method(_o, "backend", _backend, "BACKEND")

_fb = _obj("fallback", lambda ctx, sticky=False: Fallback(bool(sticky)),
           [Param("sticky", "BOOL", False, optional=True)])
_method(_fb, "add_backend", _add, "VOID", list(_BE))
_method(_fb, "remove_backend", _remove, "VOID", list(_BE))
_method(_fb, "backend", _backend, "BACKEND")
_method(_fb, "healthy", _healthy_method, "BOOL")


def _shard_add(d: Shard, ctx: Context, backend, ident: str | None = None, rampup: float = 0.0,
               weight: float = 1.0) -> bool:
    return d.add_shard(backend, ident, weight)


def _shard_remove(d: Shard, ctx: Context, backend=None, ident: str | None = None) -> bool:
    return d.remove_shard(backend, ident)


def _shard_clear(d: Shard, ctx: Context) -> bool:
    d.members, d.idents, d.ring = [], [], []
    return True


def _shard_backend(d: Shard, ctx: Context, by: str = "HASH", key: int = 0, key_blob=None, alt: int = 0,
                   warmup: float = -1.0, rampup: bool = True, healthy: str = "CHOSEN", param=None,
                   resolve: str | None = None):
    if resolve == "LAZY" or (resolve is None and ctx.method == "vcl_init"):
        d.by, d.key = by, key
        return d
    return d.lookup(ctx, d.key_for(ctx, by, key), alt, healthy_only=healthy != "IGNORE")


_sh = _obj("shard", lambda ctx: Shard())
_method(_sh, "add_backend", _shard_add, "BOOL",
        _BE + [Param("ident", "STRING", None, optional=True), Param("rampup", "DURATION", 0.0, optional=True),
               Param("weight", "REAL", 1.0, optional=True)])
_method(_sh, "remove_backend", _shard_remove, "BOOL",
        [Param("backend", "BACKEND", None, optional=True), Param("ident", "STRING", None, optional=True)])
_method(_sh, "clear", _shard_clear, "BOOL")
_method(_sh, "reconfigure", lambda d, ctx, replicas=67: d.reconfigure(replicas), "BOOL",
        [Param("replicas", "INT", 67, optional=True)])
_method(_sh, "backend", _shard_backend, "BACKEND",
        [Param("by", "ENUM", "HASH", optional=True, enum=("HASH", "URL", "KEY", "BLOB")),
         Param("key", "INT", 0, optional=True), Param("key_blob", "BLOB", None, optional=True),
         Param("alt", "INT", 0, optional=True), Param("warmup", "REAL", -1.0, optional=True),
         Param("rampup", "BOOL", True, optional=True),
         Param("healthy", "ENUM", "CHOSEN", optional=True, enum=("CHOSEN", "IGNORE", "ALL")),
         Param("param", "BLOB", None, optional=True),
         Param("resolve", "ENUM", None, optional=True, enum=("NOW", "LAZY"))])
_method(_sh, "healthy", _healthy_method, "BOOL")
