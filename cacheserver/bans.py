"""Bans: `ban` from the CLI and ban() from VCL, checked against objects at lookup (and by the lurker).

A ban is a list of and'ed tests on req.url, req.http.*, obj.status, obj.http.* and obj.ttl/age/grace/keep.
Each cached object remembers the newest ban that existed when it was inserted (or last checked); at
lookup only the bans newer than that are tested, as in Varnish's cache_ban.c.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cacheserver.params import parse_duration
from vcl.regex import check_regex, pcre_to_python
from vcl.runtime import HttpMessage

if TYPE_CHECKING:
    from cacheserver.storage import ObjCore


class BanError(ValueError):
    """A malformed ban; str() is Varnish's message, `status` its CLI status (104 or 106)."""

    def __init__(self, message: str, status: int = 106) -> None:
        super().__init__(message)
        self.status = status


_STRING_OPS = ("==", "!=", "~", "!~")
_DURATION_OPS = ("==", "!=", ">", ">=", "<", "<=")
_DURATION_FIELDS = ("obj.ttl", "obj.age", "obj.grace", "obj.keep")


@dataclass(slots=True)
class BanTest:
    field: str                 # req.url, req.http, obj.status, obj.http, obj.ttl, ...
    header: str | None         # lowercased header name for *.http
    op: str
    arg: str
    regex: re.Pattern | None = None
    number: float = 0.0

    @property
    def is_req(self) -> bool:
        return self.field.startswith("req.")

    def text(self) -> str:
        name = f"{self.field}.{self.header}" if self.header is not None else self.field
        arg = _format_duration(self.number) if self.field in _DURATION_FIELDS else self.arg
        return f"{name} {self.op} {arg}"


# ban.list's units, in milliseconds, largest first
_UNITS_MS = (("y", 31536000000), ("w", 604800000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000))


def _format_duration(value: float) -> str:
    """A duration as ban.list shows it (varnishd 7.1): its whole milliseconds, truncated, in the largest
    unit they are a whole number of (365d is 1y); else milliseconds below a second, seconds with three
    decimals above (1.5s is 1.500s, 0.9999s is 999ms)."""
    ms = int(value * 1000)
    sign, ms = ("-" if ms < 0 else ""), abs(ms)
    if ms == 0:
        return "0s"
    for unit, size in _UNITS_MS:
        if ms % size == 0:
            return f"{sign}{ms // size}{unit}"
    if ms < 1000:
        return f"{sign}{ms}ms"
    return f"{sign}{ms // 1000}.{ms % 1000:03d}s"


@dataclass(eq=False, slots=True)
class Ban:
    t: float
    tests: list[BanTest]
    completed: bool = False
    refs: int = 0
    spec: str = ""

    @property
    def has_req(self) -> bool:
        return any(t.is_req for t in self.tests)

    def matches(self, oc: ObjCore, req: HttpMessage | None, now: float) -> bool:
        for test in self.tests:
            if not _test(test, oc, req, now):
                return False
        return True


def _value(test: BanTest, oc: ObjCore, req: HttpMessage | None, now: float) -> str | float | None:
    f = test.field
    if f == "req.url":
        return req.url if req is not None else None
    if f == "req.http":
        return req.headers.get(test.header) if req is not None else None
    if f == "obj.http":
        return oc.http.headers.get(test.header)
    if f == "obj.status":
        return str(oc.http.status)
    age = now - oc.t_origin
    if f == "obj.ttl":
        return oc.ttl - age
    if f == "obj.age":
        return age
    if f == "obj.grace":
        return oc.grace
    return oc.keep


def _test(test: BanTest, oc: ObjCore, req: HttpMessage | None, now: float) -> bool:
    value = _value(test, oc, req, now)
    op = test.op
    if isinstance(value, float):
        n = test.number
        return {"==": value == n, "!=": value != n, ">": value > n, ">=": value >= n,
                "<": value < n, "<=": value <= n}[op]
    if op == "==":
        return value is not None and value == test.arg
    if op == "!=":
        return value is None or value != test.arg
    # A missing header is unequal to anything, but neither matches nor fails to match a regex
    # (varnishd 7.1: `!~` never kills an object for a header that is not there).
    if value is None:
        return False
    if op == "~":
        return test.regex.search(value) is not None
    return test.regex.search(value) is None


def split_args(expr: str) -> list[str]:
    """Split a ban string as varnishd's argument parser does: blanks separate, "..." quotes."""
    out: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        if expr[i].isspace():
            i += 1
            continue
        if expr[i] == '"':
            i += 1
            buf = []
            while i < n and expr[i] != '"':
                if expr[i] == "\\" and i + 1 < n:
                    i += 1
                    buf.append({"n": "\n", "r": "\r", "t": "\t"}.get(expr[i], expr[i]))
                else:
                    buf.append(expr[i])
                i += 1
            if i >= n:
                raise BanError("Missing '\"'", 106)
            i += 1
            out.append("".join(buf))
            continue
        j = i
        while j < n and not expr[j].isspace():
            j += 1
        out.append(expr[i:j])
        i = j
    return out


def build(args: list[str]) -> list[BanTest]:
    """The tests of a ban from its arguments (field op arg [&& field op arg]...)."""
    if len(args) < 3:
        raise BanError("Too few parameters", 104)
    if len(args) % 4 != 3:       # counted first, as varnishd's ccf_ban: `a == "b"c` is four words
        raise BanError("Wrong number of arguments")
    tests: list[BanTest] = []
    i = 0
    while True:
        tests.append(_build_test(args[i], args[i + 1], args[i + 2]))
        i += 3
        if i == len(args):
            return tests
        if args[i] != "&&":
            raise BanError(f'Found "{args[i]}" expected &&')
        i += 1


# BAN_AddTest's field table, in its order: a field is the first one the name starts with (so
# "obj.ttlx" is obj.ttl, as varnishd reads it); an http one takes the rest as the header name.
_FIELDS = ("req.url", "req.http.", "obj.status", "obj.http.") + _DURATION_FIELDS


def _build_test(name: str, op: str, arg: str) -> BanTest:
    header = None
    fld = next((f for f in _FIELDS if name.startswith(f)), None)
    if fld is None:
        raise BanError(f'Unknown or unsupported field "{name}"')
    if fld.endswith(".http."):                           # varnishd takes an empty header name too
        fld, header = fld[:8], name[9:].lower()
    test = BanTest(fld, header, op, arg)
    if fld in _DURATION_FIELDS:
        if op not in _DURATION_OPS:
            raise BanError(f'expected conditional (==, !=, >, >=, < or <=) got "{op}"')
        try:
            if not arg.strip()[-1:].isalpha():
                raise ValueError(arg)            # a ban's duration needs its unit, as varnishd's
            test.number = parse_duration(arg)
        except ValueError:
            raise BanError(f'expected duration <n.nn>[ms|s|m|h|d|w|y] got "{arg}"') from None
        return test
    if op not in _STRING_OPS:
        raise BanError(f'expected conditional (==, !=, ~ or !~) got "{op}"')
    if op in ("~", "!~"):
        reason = check_regex(arg)
        if reason is not None:
            raise BanError(f"Regex compile error: {reason}")
        test.regex = re.compile(pcre_to_python(arg), re.DOTALL)
    return test


@dataclass
class BanList:
    """Newest first. Starts with one completed ban, as varnishd does, so every object has a ban."""

    counters: object
    dups: bool = True
    bans: list[Ban] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bans.append(Ban(time.time(), [], completed=True))
        self.counters.bans += 1
        self.counters.bans_completed += 1
        self.counters.bans_added += 1        # varnishd counts the initial ban as added

    @property
    def newest(self) -> Ban:
        return self.bans[0]

    def add(self, expr: str | list[str]) -> Ban:
        args = split_args(expr) if isinstance(expr, str) else list(expr)
        tests = build(args)
        ban = Ban(time.time(), tests, spec=" && ".join(t.text() for t in tests))
        c = self.counters
        # bans on obj.ttl/obj.age are relative to when they were made: never duplicates
        if self.dups and not any(t.field in ("obj.ttl", "obj.age") for t in tests):
            for old in self.bans:
                if not old.completed and old.spec == ban.spec:
                    self._complete(old)
                    c.bans_dups += 1
        self.bans.insert(0, ban)
        c.bans += 1
        c.bans_added += 1
        if ban.has_req:
            c.bans_req += 1
        else:
            c.bans_obj += 1
        return ban

    def _complete(self, ban: Ban) -> None:
        if not ban.completed:
            ban.completed = True
            self.counters.bans_completed += 1
            if ban.has_req:
                self.counters.bans_req -= 1
            else:
                self.counters.bans_obj -= 1

    def check(self, oc: ObjCore, req: HttpMessage | None, now: float) -> bool:
        """True when a ban newer than the object's kills it; else the object is marked checked."""
        newest = self.bans[0]
        if oc.ban is newest:
            return False
        c = self.counters
        c.bans_tested += 1
        for ban in self.bans:
            if ban is oc.ban:
                break
            if ban.completed:
                continue
            if req is None and ban.has_req:
                continue
            c.bans_tests_tested += len(ban.tests)
            if ban.matches(oc, req, now):
                c.bans_obj_killed += 1
                return True
        if req is None and any(b.has_req and not b.completed for b in self._newer_than(oc.ban)):
            return False      # the lurker cannot move an object past a req.* ban
        self.move(oc, newest)
        return False

    def _newer_than(self, ban: Ban | None) -> list[Ban]:
        out = []
        for b in self.bans:
            if b is ban:
                break
            out.append(b)
        return out

    def move(self, oc: ObjCore, ban: Ban | None) -> None:
        """Point the object at `ban` (its ref moves), then drop unreferenced bans at the tail."""
        if oc.ban is not None:
            oc.ban.refs -= 1
        oc.ban = ban
        if ban is not None:
            ban.refs += 1
        self.trim()

    def release(self, oc: ObjCore) -> None:
        self.move(oc, None)

    def trim(self) -> None:
        bans = self.bans
        c = self.counters
        while len(bans) > 1 and bans[-1].refs <= 0:
            old = bans.pop()
            if not old.completed:
                self._complete(old)
            c.bans -= 1
            c.bans_completed -= 1
            c.bans_deleted += 1

    def lurk(self, objects: list[ObjCore], now: float, min_age: float) -> list[ObjCore]:
        """The ban lurker's pass: objects killed by obj-only bans at least `min_age` old."""
        killed = []
        for oc in objects:
            if oc.ban is self.bans[0]:
                continue
            candidates = [b for b in self._newer_than(oc.ban)
                          if not b.completed and not b.has_req and now - b.t >= min_age]
            if not candidates:
                continue
            c = self.counters
            c.bans_lurker_tested += 1
            hit = False
            for ban in candidates:
                c.bans_lurker_tests_tested += len(ban.tests)
                if ban.matches(oc, None, now):
                    hit = True
                    break
            if hit:
                c.bans_lurker_obj_killed += 1
                killed.append(oc)
            else:
                dest = self._lurker_destination(oc, now, min_age)
                if dest is not None:
                    self.move(oc, dest)
        # every object older than a due obj-only ban was tested against it (a req ban between
        # keeps an object where it is, not from being tested): the ban is done
        for ban in self.bans:
            if not ban.completed and not ban.has_req and now - ban.t >= min_age:
                self._complete(ban)
        return killed

    def _lurker_destination(self, oc: ObjCore, now: float, min_age: float) -> Ban | None:
        """How far the lurker takes an object it tested: past every newer ban it could test, up to
        (not past) the first req ban still pending or obj ban not yet due (the next pass goes on
        from there); None when that is where it is."""
        dest = None
        for ban in reversed(self._newer_than(oc.ban)):       # oldest first
            if not ban.completed and (ban.has_req or now - ban.t < min_age):
                break
            dest = ban
        return dest

    def listing(self) -> str:
        """`ban.list` output, as varnishd prints it."""
        lines = ["Present bans:"]
        for ban in self.bans:
            lines.append(f"{ban.t:.6f} {ban.refs:5d} {'C' if ban.completed else '-'}  "
                         f"{'' if ban.completed else ban.spec}")
        return "\n".join(lines) + "\n"
