"""vmod directors (Varnish 7.1): round_robin, fallback, random, hash, shard, shard_param and lookup().

A director is a BACKEND value: anything with `resolve(ctx)` (the backend to use now, or None) and
`healthy(ctx)`. The server follows directors at fetch time (cacheserver.backends.resolve), so
`set req.backend_hint = rr.backend();` picks per fetch, as in Varnish. Health comes from
cacheserver.backends.healthy(): admin state from `backend.set_health`, probe results from the probe hook.

hash and shard choose exactly what varnishd 7.1 chooses: keys are VRT_HashStrands32 (SHA-256, the
last four bytes read little-endian), the shard ring is built and walked as shard_cfg.c / shard_dir.c do.
"""

from __future__ import annotations

import hashlib
import math
import time as _time

from cacheserver.backends import healthy as _healthy
from cacheserver.backends import live as _live
from vcl.rtlib import on_task_end
from vcl.runtime import BackendSpec, Context, VCLFailure
from vmods import Func, ObjectType, Param, Vmod
from vmods.vrnd import TESTABLE

VMOD = Vmod("directors")

# An optional argument left out (varnishd's `valid_NAME` is false). repr() is "Ellipsis", so the
# compiler can emit it as a default.
UNSET = ...

_CLIENT = frozenset({"vcl_recv", "vcl_pipe", "vcl_pass", "vcl_hash", "vcl_purge", "vcl_miss", "vcl_hit",
                     "vcl_deliver", "vcl_synth"})
_BACKEND = frozenset({"vcl_backend_fetch", "vcl_backend_response", "vcl_backend_error"})
_HOUSEKEEPING = frozenset({"vcl_init", "vcl_fini"})
# shard treats vcl_pipe like a backend task (vmod_directors_shard.c, #3329)
_TASK_REQ = _CLIENT - {"vcl_pipe"}
_TASK_BEREQ = _BACKEND | {"vcl_pipe"}


def hash_strands32(s: str | None) -> int:
    """VRT_HashStrands32: SHA-256 of the string, its last 4 bytes as a little-endian uint32."""
    digest = hashlib.sha256((s or "").encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[-4:], "little")


def _be_name(backend: object) -> str:
    """VRT_BACKEND_string: a backend's or director's VCL name."""
    name = getattr(backend, "vcl_name", None) or getattr(backend, "name", None)
    return str(name) if name else str(backend)


def _health(backend: object, ctx) -> tuple[bool, float]:
    """VRT_Healthy(ctx, be, &changed): health and when it last changed. A director's change time is
    the latest of its members' up to its first healthy one (vdir_any_healthy, sharddir_any_healthy)."""
    if isinstance(backend, BackendSpec):
        return _healthy(backend, ctx), _live(backend).changed
    changed = 0.0
    for member, _ in backend.members:
        ok, member_changed = _health(member, ctx)
        changed = max(changed, member_changed)
        if ok:
            return True, changed
    return False, changed


def _now(ctx) -> float:
    now = getattr(ctx, "now", None)
    return float(now) if isinstance(now, (int, float)) else _time.time()


def _task(ctx) -> dict:
    """The task's private storage (PRIV_TASK): a dict on ctx.priv_task."""
    task = ctx.priv_task
    if not isinstance(task, dict):
        task = {}
        ctx.priv_task = task
    return task


def _log(ctx, tag: str, text: str) -> None:
    log = getattr(ctx, "log", None)
    if isinstance(log, list):
        log.append((tag, text))


def _debug(ctx, text: str) -> None:
    """The shard's debug lines: varnishd writes them at once under vxid 0 (SHDBG is VSL(SLT_Debug, 0,
    ...)), not into the task's records; vcl_init's records are vxid 0 already, kept in order (the
    server writes vcl_fini's nowhere: those go out at once too)."""
    server = getattr(ctx, "server", None)
    if ctx.method == "vcl_init" or server is None:
        _log(ctx, "Debug", text)
        return
    server.vsl.write(0, "-", [("Debug", text)])


# -- vdir: the simple directors ------------------------------------------------------------------

class Director:
    """Members in order with their weights (vmod_directors.c's vdir)."""

    kind = "director"

    def __init__(self) -> None:
        self.vcl_name: str | None = None      # set from `new NAME = ...`
        self.members: list[tuple[object, float]] = []

    @property
    def name(self) -> str:
        return self.vcl_name or self.kind

    def __str__(self) -> str:
        return self.name

    def add(self, backend: object, weight: float = 1.0) -> None:
        if backend is None:
            raise VCLFailure(f"{self.name}: None backend cannot be added")
        self.members.append((backend, weight))

    def remove(self, backend: object) -> int | None:
        """Removes the first occurrence; returns its index (None when absent)."""
        if backend is None:
            raise VCLFailure(f"{self.name}: None backend cannot be removed")
        for i, (b, _) in enumerate(self.members):
            if b is backend:
                del self.members[i]
                return i
        return None

    def healthy(self, ctx=None) -> bool:
        return any(_healthy(b, ctx) for b, _ in self.members)

    def pick_weighted(self, ctx, w: float):
        """vdir_pick_be: the healthy member at fraction w of the healthy members' total weight."""
        healthy = [(b, wt) for b, wt in self.members if _healthy(b, ctx)]
        total = sum(wt for _, wt in healthy)
        if total <= 0:
            return None
        target = w * total
        acc = 0.0
        for backend, weight in healthy:
            acc += weight
            if target < acc:
                return backend
        return healthy[-1][0]     # w == 1.0 exactly (cannot happen in varnishd's arithmetic)

    def resolve(self, ctx):  # pragma: no cover - every resolving director overrides it
        raise NotImplementedError


class RoundRobin(Director):
    kind = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self.next = 0
        # what varnishd's array still holds past the end (a removal moves the tail down a slot and
        # leaves the old last one behind; an addition writes the first): `nxt` may point there
        self.beyond: list[object | None] = []

    def add(self, backend: object, weight: float = 1.0) -> None:
        super().add(backend, weight)
        self.beyond = self.beyond[1:]

    def remove(self, backend: object) -> int | None:
        old_last = self.members[-1][0] if self.members else None
        i = super().remove(backend)
        if i is not None:
            # the removed one's slot is cleared first: removing the last leaves nothing behind
            # (varnishd then asserts on it; here it is skipped)
            self.beyond = [old_last if old_last is not backend else None] + self.beyond
        return i

    def resolve(self, ctx):
        n = len(self.members)
        nxt = self.next
        for _ in range(n):
            if nxt < n:
                backend = self.members[nxt][0]
            else:
                backend = self.beyond[nxt - n] if nxt - n < len(self.beyond) else None
            nxt = (nxt + 1) % n
            if backend is not None and _healthy(backend, ctx):
                self.next = nxt
                return backend
        self.next = nxt
        return None


class Fallback(Director):
    kind = "fallback"

    def __init__(self, sticky: bool = False) -> None:
        super().__init__()
        self.sticky = sticky
        self.cur = 0

    def remove(self, backend: object) -> int | None:
        i = super().remove(backend)
        if i is not None:
            # vdir_remove_backend keeps `cur` on the same member
            if i < self.cur:
                self.cur -= 1
            elif self.cur == len(self.members):
                self.cur = 0
        return i

    def resolve(self, ctx):
        n = len(self.members)
        if not self.sticky:
            self.cur = 0
        for _ in range(n):
            backend = self.members[self.cur][0]
            if _healthy(backend, ctx):
                return backend
            self.cur = (self.cur + 1) % n
        return None


class Random(Director):
    kind = "random"

    def resolve(self, ctx):
        return self.pick_weighted(ctx, TESTABLE.fraction())


class Hash(Director):
    """No resolve of its own: .backend(key) picks at once, as vmod_directors_hash.c."""

    kind = "hash"

    def pick(self, ctx, key: str | None):
        """.backend(key): the healthy member at the key's place in the weights."""
        return self.pick_weighted(ctx, hash_strands32(key) / 2**32)


# -- shard -----------------------------------------------------------------------------------------

_PARAM_FIELDS = ("by", "healthy", "rampup", "alt", "warmup")


class ShardParam:
    """A shard_param object, or one scope of parameters (vmod_directors_shard.c).

    `mask` names the fields set in this scope; unset ones come from `defaults`, down to the built-in
    defaults. `key` goes with by=KEY|BLOB.
    """

    kind = "shard_param"

    def __init__(self, vcl_name: str | None = None, defaults: ShardParam | None = None,
                 scope: str = "VCL") -> None:
        self.vcl_name = vcl_name
        self.defaults = defaults
        self.scope = scope
        self.mask: set[str] = set()
        self.by: str | None = None
        self.key = 0
        self.healthy: str | None = None
        self.rampup = True
        self.alt = 0
        self.warmup = -1.0

    def __str__(self) -> str:
        return self.vcl_name or self.kind

    def merge_from(self, other: ShardParam | None) -> None:
        """shard_param_merge: fill what this scope leaves unset from `other` and its defaults."""
        while other is not None and self.mask != set(_PARAM_FIELDS):
            for f in _PARAM_FIELDS:
                if f not in self.mask and f in other.mask:
                    setattr(self, f, getattr(other, f))
                    if f == "by" and other.by in ("KEY", "BLOB"):
                        self.key = other.key
            self.mask |= other.mask
            other = other.defaults


def _builtin_defaults() -> ShardParam:
    p = ShardParam("builtin defaults", None, "VMOD")
    p.mask = set(_PARAM_FIELDS)
    return p


SHARD_PARAM_DEFAULT = _builtin_defaults()


class ParamBlob(bytes):
    """The BLOB shard_param.use() returns: it stands for the parameter object."""

    param: ShardParam

    def __new__(cls, param: ShardParam) -> ParamBlob:
        self = super().__new__(cls, b"shard_param")
        self.param = param
        return self


def _param_of_blob(blob) -> ShardParam | None:
    return blob.param if isinstance(blob, ParamBlob) else None


def _blob_key(blob: bytes) -> int:
    """shard_blob_key: the first four bytes big-endian (a shorter blob as if zeros led it)."""
    return int.from_bytes(bytes(blob[:4]), "big")


def _param_args(ctx, p: ShardParam, func: str, args: dict) -> ShardParam:
    """shard_param_args: check the given arguments and set them on p (fails the task when wrong)."""
    by = args.get("by", "HASH")
    if by == "KEY":
        if "key" not in args:
            raise _fail(p, f"{func} missing key argument with by={by}")
        key = args["key"]
        if key < 0 or key > 0xFFFFFFFF:
            raise _fail(p, f"{func} invalid key argument {key} with by={by}")
        p.key = key
    elif by == "BLOB":
        if "key_blob" not in args:
            raise _fail(p, f"{func} missing key_blob argument with by={by}")
        blob = args["key_blob"]
        if not blob:
            _log(ctx, "Error", f"vmod_directors: shard {p}: {func} by=BLOB but no or empty key_blob "
                 "- using key 0")
            p.key = 0
        else:
            p.key = _blob_key(blob)
    elif "key" in args or "key_blob" in args:
        raise _fail(p, f"{func} key and key_blob arguments are invalid with by={by}")
    p.by = by
    if "alt" in args:
        if args["alt"] < 0:
            raise _fail(p, f"{func} invalid alt argument {args['alt']}")
        p.alt = args["alt"]
    if "warmup" in args:
        w = args["warmup"]
        if (w < 0 and w != -1) or w > 1:
            raise _fail(p, f"{func} invalid warmup argument {w:f}")
        p.warmup = w
    if "rampup" in args:
        p.rampup = bool(args["rampup"])
    if "healthy" in args:
        p.healthy = args["healthy"]
    p.mask = {f for f in _PARAM_FIELDS if f in args}
    return p


def _fail(who, msg: str) -> VCLFailure:
    return VCLFailure(f"vmod_directors: shard {who}: {msg}")


def _param_task(ctx, owner: object, who: str, pa: ShardParam) -> ShardParam:
    """shard_param_task_l: the task-scoped parameters of `owner` (created on first use)."""
    task = _task(ctx)
    key = ("shard_param", id(owner))
    p = task.get(key)
    if p is not None:
        return p
    if owner is pa or pa.scope != "VCL":
        defaults = pa
    else:
        defaults = _param_task(ctx, pa, str(pa), pa)
    p = ShardParam(who, defaults, "TASK")
    task[key] = p
    return p


def _param_task_r(ctx, owner: object, pa: ShardParam) -> ShardParam:
    """shard_param_task_r: the task-scoped parameters if this task has any, else the VCL ones."""
    p = _task(ctx).get(("shard_param", id(owner))) if isinstance(ctx.priv_task, dict) else None
    if p is not None:
        return p
    if owner is pa or pa.scope != "VCL":
        return pa
    return _param_task_r(ctx, pa, pa)


def _param_read(ctx, owner: object, p: ShardParam) -> ShardParam:
    """vmod_shard_param_read: the effective parameters, all fields resolved."""
    if ctx.method is None or ctx.method in _TASK_BEREQ:
        p = _param_task_r(ctx, owner, p)
    out = ShardParam()         # a scratch copy: nothing reads its name, scope or defaults
    out.merge_from(p)
    return out


class _ShardBackend:
    __slots__ = ("backend", "ident", "rampup", "replicas")

    def __init__(self, backend: object, ident: str | None, rampup: float, replicas: int = 0) -> None:
        self.backend = backend
        self.ident = ident
        self.rampup = rampup            # NaN: the director's rampup duration
        self.replicas = replicas

    def ident_or_name(self) -> str:
        return self.ident if self.ident is not None else _be_name(self.backend)


class Shard:
    """The shard director: a consistent-hashing ring of `replicas` points per backend."""

    kind = "shard"

    def __init__(self) -> None:
        self.vcl_name: str | None = None
        self.backends: list[_ShardBackend] = []
        self.circle: list[tuple[int, int]] = []       # (point, backend index), sorted by point
        self.warmup = 0.0
        self.rampup_duration = 0.0
        self.debug_flags = 0
        self.param: ShardParam = SHARD_PARAM_DEFAULT
        # add/remove/clear wait in the task that made them until reconfigure() (or the task's end)
        self._pending: list[tuple[str, _ShardBackend | None, float]] = []
        self._pending_ctx: object = None

    @property
    def name(self) -> str:
        return self.vcl_name or self.kind

    def __str__(self) -> str:
        return self.name

    # configuration --------------------------------------------------------------------------

    def _change(self, ctx, task: str, sb: _ShardBackend | None, weight: float = 1.0) -> bool:
        if self._pending and self._pending_ctx is not ctx:
            self._apply_pending()        # the earlier task ended: its changes apply with 67 replicas
        if self._pending_ctx is not ctx and getattr(ctx, "method", "") in _CLIENT:
            # a client task's changes apply when it ends (shard_change_fini): until then, even
            # the fetches it makes see the director as it was
            self._pending_open = True
            on_task_end(ctx, lambda: self._task_ended(ctx))
        self._pending_ctx = ctx
        self._pending.append((task, sb, weight))
        return True

    _pending_open = False

    def _task_ended(self, ctx) -> None:
        """shard_change_fini: the ending task's changes apply, what they log goes in its records."""
        self._pending_open = False
        self.settle(ctx)

    def _apply_pending(self, replicas: int = 67, ctx=None) -> bool:
        """change_reconfigure: apply the queued changes and rebuild the ring (logging into ctx, when
        there is one)."""
        if not self._pending:
            return True
        tasks, self._pending, self._pending_ctx = self._pending, [], None
        self._pending_open = False
        last_clear = max((i for i, (t, _, _) in enumerate(tasks) if t == "clear"), default=-1)
        if last_clear >= 0:
            self.backends = []
            tasks = tasks[last_clear + 1:]
        # removals leave holes that later additions fill, then the tail fills the rest (shard_cfg.c)
        slots: list[_ShardBackend | None] = list(self.backends)
        for task, sb, weight in tasks:
            assert sb is not None
            if task == "add":
                if any(b is not None and _same(sb, b) for b in slots):
                    existing = next(b for b in slots if b is not None and _same(sb, b))
                    self._notice(ctx, f"backend {_be_name(existing.backend)}"
                                 f"{'/' + existing.ident if existing.ident else ''} already exists - skipping")
                    continue
                sb.replicas = min(int(replicas * weight), 0xFFFFFFFF)
                hole = next((i for i, b in enumerate(slots) if b is None), None)
                if hole is None:
                    slots.append(sb)
                else:
                    slots[hole] = sb
            else:
                for i, b in enumerate(slots):
                    if b is not None and _del_match(sb, b):
                        slots[i] = None
        # finalize: trailing holes go, inner holes take the last backend
        while slots and slots[-1] is None:
            slots.pop()
        while None in slots:
            hole = slots.index(None)
            slots[hole] = slots.pop()
            while slots and slots[-1] is None:
                slots.pop()
        self.backends = [b for b in slots if b is not None]
        self.circle = []
        if not self.backends:
            self._err(ctx, ".reconfigure() no backends")
            return False
        self._build_circle(ctx)
        return True

    def _build_circle(self, ctx=None) -> None:
        n = len(self.backends)
        rmax = (0xFFFFFFFF - 1) // n
        circle = []
        for host, b in enumerate(self.backends):
            ident = b.ident_or_name()
            for j in range(min(b.replicas, rmax)):
                circle.append((hash_strands32(f"{ident}{j}"), host))
        circle.sort(key=lambda c: c[0])
        self.circle = circle
        if self.debug_flags & 2 and ctx is not None:     # SHDBG_CIRCLE
            for i, (point, host) in enumerate(circle):
                _debug(ctx,
                     f"vmod_directors: shard: hashcircle[{i:5d}] = {{point = {point:8x}, host = {host:2d}}}")

    def _err(self, ctx, msg: str) -> None:
        self._pending_log("Error", ctx, msg)

    def _notice(self, ctx, msg: str) -> None:
        self._pending_log("Notice", ctx, msg)

    def _pending_log(self, tag: str, ctx, msg: str) -> None:
        if ctx is not None:
            _log(ctx, tag, f"vmod_directors: shard {self.name}: {msg}")

    def reconfigure(self, ctx, replicas: int = 67) -> bool:
        if replicas <= 0:
            self._err(ctx, f".reconfigure() invalid replicas argument {replicas}")
            return False
        return self._apply_pending(replicas, ctx)

    def settle(self, ctx=None) -> None:
        """Changes left by a task that has ended take effect (shard_change_fini: 67 replicas); what
        they log goes to ctx, the ending task, when known."""
        if self._pending and not self._pending_open:
            self._apply_pending(ctx=ctx)

    # lookup -------------------------------------------------------------------------------------

    def _lookup(self, key: int) -> int:
        """shard_lookup: varnishd's binary search, quirks included (a key past the last point
        lands on the last point, not on the first)."""
        circle = self.circle
        n = len(circle)
        high, low = n, 0
        for _ in range(n.bit_length() + 2):       # a binary search: log2(n) + 1 steps at most
            i = (high + low) // 2
            point = circle[i][0]
            if point == key:
                return i
            if i == n - 1:
                return n - 1
            if point < key <= circle[i + 1][0]:
                return i + 1
            if point > key:
                if i == 0:
                    return 0
                high = i
            else:
                low = i
        raise AssertionError("shard lookup did not end")      # pragma: no cover

    def pick(self, ctx, key: int, alt: int, warmup: float, rampup: bool, healthy: str):
        """sharddir_pick_be."""
        self.settle()
        if not self.backends or not self.circle:
            self._err(ctx, "no backends")
            return None
        alt_max = len(self.backends) - 1
        # (validate_alt's "invalid negative parameter" cannot happen: shard_param_args refuses alt < 0)
        if alt > alt_max:
            self._err(ctx, f"parameter alt={alt} limited to {alt_max}")
            alt = alt_max
        state = _Walk(self, ctx, self._lookup(key))
        if self.debug_flags & 1:
            _debug(ctx, f"vmod_directors: shard: lookup key {key:x} idx {state.idx} "
                 f"host {self.circle[state.idx][1]}")
        if alt > 0 and state.next(alt - 1, healthy == "ALL") == -1:
            return self.backends[state.previous[0]].backend if state.previous else None
        if state.next(0, healthy != "IGNORE") == -1:
            return self.backends[state.previous[0]].backend if state.previous else None
        assert state.last is not None
        chosen = state.last
        be = self.backends[chosen[0]].backend
        if warmup == -1:
            warmup = self.warmup
        if alt > 0 or healthy == "IGNORE" or (not rampup and warmup == 0) or state.next(0, True) == -1:
            return be
        prev, last = state.previous, state.last
        assert prev is not None and last is not None
        chosen_r = self._rampup_of(prev[0])
        alt_r = self._rampup_of(last[0])
        now = _now(ctx)
        if self.debug_flags & 4:       # SHDBG_RAMPWARM
            _debug(ctx, f"vmod_directors: shard: chosen host {prev[0]} rampup {chosen_r:f} "
                 f"changed {now - prev[1]:f}")
            _debug(ctx, f"vmod_directors: shard: alt host {last[0]} rampup {alt_r:f} "
                 f"changed {now - last[1]:f}")
        if now - prev[1] < chosen_r:
            # the chosen backend is ramping up: it keeps the request unless the dice say otherwise
            if not rampup or now - last[1] < alt_r or TESTABLE.double() * chosen_r < now - prev[1]:
                return be
        elif warmup == 0 or TESTABLE.double() > warmup:
            return be
        return self.backends[last[0]].backend

    def report(self, now: float) -> list[tuple[str, str, bool, float, float]]:
        """For backend.list -p (vmod_shard_list): each backend's name, ident, health, how far its
        rampup has come (0 to 1) and the seconds it has left."""
        self.settle()
        rows = []
        for host, b in enumerate(self.backends):
            ok, changed = _health(b.backend, None)
            done, left = 0.0, 0.0
            if ok:
                ramp = self._rampup_of(host)
                if changed + ramp > now:
                    done, left = (now - changed) / ramp, changed + ramp - now
                else:
                    done = 1.0
            rows.append((_be_name(b.backend), b.ident_or_name(), ok, done, left))
        return rows

    def _rampup_of(self, host: int) -> float:
        r = self.backends[host].rampup
        return self.rampup_duration if math.isnan(r) else r

    @staticmethod
    def key_for(ctx, p: ShardParam) -> int:
        """shard_get_key."""
        by = p.by or "HASH"
        if by in ("KEY", "BLOB"):
            return p.key
        if by == "HASH" and ctx.method in _TASK_BEREQ:      # ctx->bo: vcl_pipe has the request's digest too
            digest = getattr(ctx, "hash", None)
            if isinstance(digest, (bytes, bytearray)) and len(digest) >= 4:
                return int.from_bytes(digest[:4], "big")
        msg = ctx.req if getattr(ctx, "req", None) is not None else getattr(ctx, "bereq", None)
        return hash_strands32(msg.url if msg is not None else "")

    def resolve(self, ctx):
        p = _param_read(ctx, self, self.param)
        return self.pick(ctx, self.key_for(ctx, p), p.alt, p.warmup, p.rampup, p.healthy or "CHOSEN")

    def healthy(self, ctx=None) -> bool:
        self.settle()
        return any(_healthy(b.backend, ctx) for b in self.backends)

    @property
    def members(self) -> list[tuple[object, float]]:
        """For backend.list: the members, as the other directors show them."""
        self.settle()
        return [(b.backend, 1.0) for b in self.backends]


class _Walk:
    """shard_state: a walk around the ring from idx, each backend seen once."""

    def __init__(self, shard: Shard, ctx, idx: int) -> None:
        self.shard = shard
        self.ctx = ctx
        self.idx = idx
        self.picked: set[int] = set()
        self.previous: tuple[int, float] | None = None      # (host, changed)
        self.last: tuple[int, float] | None = None

    def next(self, skip: int, healthy_only: bool) -> int:
        """shard_next: the skip-th usable backend from here; -1 when the ring is exhausted."""
        shard = self.shard
        n_backend = len(shard.backends)
        chosen = -1
        while len(self.picked) < n_backend and skip >= 0:
            c = shard.circle[self.idx][1]
            if c not in self.picked:
                self.picked.add(c)
                ok, changed = _health(shard.backends[c].backend, self.ctx)
                slot = None
                if ok:
                    if skip == 0:
                        chosen, slot = c, "last"
                    else:
                        slot = "previous"
                    skip -= 1
                elif not healthy_only:
                    if skip == 0:
                        chosen, slot = c, "last"
                    skip -= 1
                if slot == "last" and self.last is not None:
                    self.previous = self.last
                if slot == "last":
                    self.last = (c, changed)
                elif slot == "previous":
                    self.previous = (c, changed)
                if chosen != -1:
                    break
            self.idx = (self.idx + 1) % len(shard.circle)
        return chosen


def _same(a: _ShardBackend, b: _ShardBackend) -> bool:
    """shardcfg_backend_cmp == 0: same ident (a backend's name standing in for a missing ident)."""
    if a.ident is None and b.ident is None:
        return a.backend is b.backend
    return a.ident_or_name() == b.ident_or_name()


def _del_match(spec: _ShardBackend, b: _ShardBackend) -> bool:
    """Removal by backend matches all its instances; by ident, that ident."""
    if spec.ident is None:
        return spec.backend is b.backend
    return _same(spec, b)


# -- registration ----------------------------------------------------------------------------------

def _obj(name: str, ctor, params: list[Param] | None = None) -> ObjectType:
    obj = ObjectType(name, Func(name, ctor, "VOID", params or [], frozenset({"vcl_init"})))
    VMOD.objects[name] = obj
    return obj


def _method(obj: ObjectType, name: str, impl, ret: str = "VOID", params: list[Param] | None = None) -> None:
    obj.methods[name] = Func(name, impl, ret, params or [])


def _opt(name: str, type_: str, default: object = UNSET, enum: tuple[str, ...] = ()) -> Param:
    return Param(name, type_, default, optional=True, enum=enum)


def _given(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not UNSET}


# vmod_directors.vcc leaves these arguments unnamed: they cannot be passed by name
_BE = [Param("", "BACKEND")]

_rr = _obj("round_robin", lambda ctx: RoundRobin())
_method(_rr, "add_backend", lambda d, ctx, be: d.add(be), "VOID", list(_BE))
_method(_rr, "remove_backend", lambda d, ctx, be: d.remove(be) and None, "VOID", list(_BE))
_method(_rr, "backend", lambda d, ctx: d, "BACKEND")

_fb = _obj("fallback", lambda ctx, sticky=False: Fallback(bool(sticky)),
           [Param("sticky", "BOOL", False, optional=True)])
_method(_fb, "add_backend", lambda d, ctx, be: d.add(be), "VOID", list(_BE))
_method(_fb, "remove_backend", lambda d, ctx, be: d.remove(be) and None, "VOID", list(_BE))
_method(_fb, "backend", lambda d, ctx: d, "BACKEND")

_rnd = _obj("random", lambda ctx: Random())
_method(_rnd, "add_backend", lambda d, ctx, be, w: d.add(be, w), "VOID",
        _BE + [Param("", "REAL")])
_method(_rnd, "remove_backend", lambda d, ctx, be: d.remove(be) and None, "VOID", list(_BE))
_method(_rnd, "backend", lambda d, ctx: d, "BACKEND")

_hash = _obj("hash", lambda ctx: Hash())
_method(_hash, "add_backend", lambda d, ctx, be, w=1.0: d.add(be, w), "VOID",
        _BE + [Param("weight", "REAL", 1.0, optional=True)])
_method(_hash, "remove_backend", lambda d, ctx, be: d.remove(be) and None, "VOID", list(_BE))
_method(_hash, "backend", lambda d, ctx, key: d.pick(ctx, key), "BACKEND", [Param("", "STRANDS")])


def _shard_set_warmup(d: Shard, ctx: Context, probability: float) -> None:   # the compiler passes the 0.0 default
    if probability < 0 or probability >= 1:
        d._notice(ctx, f".set_warmup({probability:f}) ignored")
        return
    d.warmup = probability


def _shard_set_rampup(d: Shard, ctx: Context, duration: float) -> None:
    d.rampup_duration = max(0.0, duration)


def _shard_associate(d: Shard, ctx: Context, param=None) -> None:
    if param is None:
        d.param = SHARD_PARAM_DEFAULT
        return
    p = _param_of_blob(param)
    if p is None:
        raise _fail(d, "shard .associate param invalid")
    d.param = p


def _shard_add(d: Shard, ctx: Context, backend, ident=UNSET, rampup=UNSET, weight=UNSET) -> bool:
    if backend is None:
        raise _fail(d, "None backend cannot be added")
    w = 1.0
    if weight is not UNSET:
        if weight >= 1:
            w = weight
        else:
            d._notice(ctx, f".add_backend(weight={weight:f}) ignored")
    ident_s = ident if ident is not UNSET and ident else None
    ramp = rampup if rampup is not UNSET else math.nan
    return d._change(ctx, "add", _ShardBackend(backend, ident_s, ramp), w)


def _shard_remove(d: Shard, ctx: Context, backend=None, ident=None) -> bool:
    if backend is None and ident is None:      # both default to None: never UNSET
        raise _fail(d, ".remove_backend(): either backend or ident are required")
    return d._change(ctx, "remove", _ShardBackend(backend, ident or None, 0.0))


def _shard_clear(d: Shard, ctx: Context) -> bool:
    return d._change(ctx, "clear", None)


def _shard_backend(d: Shard, ctx: Context, by=UNSET, key=UNSET, key_blob=UNSET, alt=UNSET, warmup=UNSET,
                   rampup=UNSET, healthy=UNSET, param=UNSET, resolve=UNSET):
    """vmod_shard_backend: LAZY returns the director (with task parameters), NOW picks."""
    args = _given(by=by, key=key, key_blob=key_blob, alt=alt, warmup=warmup, rampup=rampup,
                  healthy=healthy)
    method = ctx.method
    if resolve is not UNSET:
        how = resolve
    else:
        how = "LAZY" if method in _HOUSEKEEPING else "NOW"
    if how == "LAZY":
        if not args and param is UNSET:
            return d
        if method not in _TASK_BEREQ:
            raise _fail(d, ".backend(resolve=LAZY) with other parameters can only be used in "
                        "backend/pipe context")
        p = _param_task(ctx, d, d.name, d.param)
    else:
        if method in _HOUSEKEEPING:
            raise _fail(d, ".backend(resolve=NOW) can not be used in vcl_init{}/vcl_fini{}")
        p = ShardParam(d.name, _param_task_r(ctx, d, d.param), "STACK")
    if param is not UNSET:
        pp = _param_of_blob(param)
        if pp is None:
            raise _fail(d, ".backend(key_blob) param invalid")
        p.defaults = pp
    _param_args(ctx, p, "shard.backend()", args)
    if how == "LAZY":
        return d
    p.merge_from(p.defaults)
    return d.pick(ctx, d.key_for(ctx, p), p.alt, p.warmup, p.rampup, p.healthy or "CHOSEN")


_sh = _obj("shard", lambda ctx: Shard())
_method(_sh, "set_warmup", _shard_set_warmup, "VOID", [Param("probability", "REAL", 0.0, optional=True)])
_method(_sh, "set_rampup", _shard_set_rampup, "VOID", [Param("duration", "DURATION", 0.0, optional=True)])
_method(_sh, "associate", _shard_associate, "VOID", [Param("param", "BLOB", None, optional=True)])
_method(_sh, "add_backend", _shard_add, "BOOL",
        [Param("backend", "BACKEND"), _opt("ident", "STRING"), _opt("rampup", "DURATION"), _opt("weight", "REAL")])
_method(_sh, "remove_backend", _shard_remove, "BOOL",
        [Param("backend", "BACKEND", None, optional=True), Param("ident", "STRING", None, optional=True)])
_method(_sh, "clear", _shard_clear, "BOOL")
_method(_sh, "reconfigure", lambda d, ctx, replicas=67: d.reconfigure(ctx, replicas), "BOOL",
        [Param("replicas", "INT", 67, optional=True)])
_method(_sh, "key", lambda d, ctx, s: hash_strands32(s), "INT", [Param("", "STRANDS")])
_BY = ("HASH", "URL", "KEY", "BLOB")
_HEALTHY = ("CHOSEN", "IGNORE", "ALL")
_method(_sh, "backend", _shard_backend, "BACKEND",
        [_opt("by", "ENUM", enum=_BY), _opt("key", "INT"), _opt("key_blob", "BLOB"), _opt("alt", "INT"),
         _opt("warmup", "REAL"), _opt("rampup", "BOOL"), _opt("healthy", "ENUM", enum=_HEALTHY),
         _opt("param", "BLOB"), _opt("resolve", "ENUM", enum=("NOW", "LAZY"))])
_method(_sh, "debug", lambda d, ctx, i: setattr(d, "debug_flags", i & 0xFFFFFFFF), "VOID",
        [Param("i", "INT")])


def _param_prep(p: ShardParam, ctx: Context, who: str) -> ShardParam:
    """shard_param_prep: in vcl_init the object itself, in backend tasks a task copy; never client."""
    if ctx.method in _TASK_REQ:
        raise VCLFailure(f"vmod_directors: shard {p}: {who} may only be used in vcl_init and in "
                         "backend/pipe context")
    if ctx.method in _TASK_BEREQ:
        return _param_task(ctx, p, str(p), p)
    return p


def _sp_set(p: ShardParam, ctx: Context, by=UNSET, key=UNSET, key_blob=UNSET, alt=UNSET, warmup=UNSET,
            rampup=UNSET, healthy=UNSET) -> None:
    target = _param_prep(p, ctx, "shard_param.set()")
    _param_args(ctx, target, "shard_param.set()",
                _given(by=by, key=key, key_blob=key_blob, alt=alt, warmup=warmup, rampup=rampup,
                       healthy=healthy))


def _sp_clear(p: ShardParam, ctx: Context) -> None:
    _param_prep(p, ctx, "shard_param.clear()").mask = set()


def _sp_field(p: ShardParam, ctx: Context, field: str):
    """shard_param.get_<field>(): the effective value."""
    pp = _param_read(ctx, p, p)
    if field == "by":
        return pp.by or "HASH"
    if field == "healthy":
        return pp.healthy or "CHOSEN"
    if field == "key":
        return Shard.key_for(ctx, pp)
    return getattr(pp, field)


def _sp_get(field: str):
    return lambda p, ctx: _sp_field(p, ctx, field)


_sp = _obj("shard_param", lambda ctx: ShardParam(None, SHARD_PARAM_DEFAULT, "VCL"))
_method(_sp, "clear", _sp_clear, "VOID")
_method(_sp, "set", _sp_set, "VOID",
        [_opt("by", "ENUM", enum=_BY), _opt("key", "INT"), _opt("key_blob", "BLOB"), _opt("alt", "INT"),
         _opt("warmup", "REAL"), _opt("rampup", "BOOL"), _opt("healthy", "ENUM", enum=_HEALTHY)])
_method(_sp, "get_by", _sp_get("by"), "STRING")
_method(_sp, "get_key", _sp_get("key"), "INT")
_method(_sp, "get_alt", _sp_get("alt"), "INT")
_method(_sp, "get_warmup", _sp_get("warmup"), "REAL")
_method(_sp, "get_rampup", _sp_get("rampup"), "BOOL")
_method(_sp, "get_healthy", _sp_get("healthy"), "STRING")
_method(_sp, "use", lambda p, ctx: ParamBlob(p), "BLOB")


# 7.1 checks where it runs at run time only (VCC accepts it anywhere)
@VMOD.func("lookup", "BACKEND", [Param("name", "STRING")])
def lookup(ctx: Context, name: str | None):
    """The backend called `name` in this VCL (VRT_LookupDirector); None when there is none."""
    if ctx.method not in _HOUSEKEEPING:
        raise VCLFailure("lookup() may only be called from vcl_init / vcl_fini")
    backends = getattr(ctx.vcl, "backends", None) or {}
    if name in backends:
        return backends[name]
    # directors are backends too (VRT_AddDirector puts them on the same list)
    try:
        instances = ctx.vcl.instances
    except (AttributeError, KeyError, TypeError):
        return None
    # instances are kept under their lowercased names; VRT_LookupDirector compares names exactly
    obj = instances.get(name.lower()) if name else None
    if getattr(obj, "vcl_name", None) != name:
        return None
    return obj if callable(getattr(obj, "resolve", None)) else None
