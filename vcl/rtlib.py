"""Helpers the generated code calls: type-to-string conversions, regexes, ACLs, C-style arithmetic.

Everything expensive (regex compilation, ACL networks) happens in constructors, which the generated
module runs once at load; the methods used per request only match.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from email.utils import formatdate
from functools import lru_cache

from vcl.runtime import IP, BackendSpec, VCLFailure

# ------------------------------------------------------------------ conversions to STRING


def s_real(value: float | None) -> str:
    """REAL and DURATION in string context: 3 decimals (VRT_REAL_string)."""
    return "%.3f" % (value or 0.0)


def s_bytes(value: float | None) -> str:
    """BYTES in string context: a whole number of bytes (varnishd 7.1 prints 11264, not 11264.000)."""
    return "%.0f" % (value or 0.0)


_last_time: list = [None, ""]


def s_time(value: float | None) -> str:
    """TIME in string context: an HTTP date (VRT_TIME_string). Dates have one-second resolution,
    so the last one formatted is reused (`now` is formatted on many requests each second)."""
    second = int(value or 0.0)
    last = _last_time
    if last[0] != second:
        last[1] = formatdate(second, usegmt=True)
        last[0] = second
    return last[1]


def s_bool(value: object) -> str:
    return "true" if value else "false"


def s_ip(value: IP | None) -> str:
    return "" if value is None else value.addr


def s_backend(value: object) -> str:
    """BACKEND in string context: its VCL name; "" when there is none."""
    if value is None:
        return ""
    name = getattr(value, "vcl_name", None) or getattr(value, "name", None)
    return str(name) if name is not None else str(value)


def s_named(value: object) -> str:
    """ACL, PROBE, STEVEDORE in string context: the name."""
    if value is None:
        return ""
    return str(getattr(value, "name", value))


def resolve_backend(value: object, ctx, depth: int = 0):
    """The BackendSpec a BACKEND value stands for: a BackendSpec is itself; a director (any object
    with resolve(ctx), e.g. from vmod directors) is asked, possibly through other directors.
    None: no backend (e.g. `backend default none;`, or a director with no healthy backend)."""
    while value is not None and not isinstance(value, BackendSpec):
        resolve = getattr(value, "resolve", None)
        if resolve is None or depth > 16:
            return None
        value = resolve(ctx)
        depth += 1
    return value


def backend_name(value: object) -> str | None:
    return None if value is None else s_backend(value)


def backend_ip(value: object) -> IP | None:
    host = getattr(value, "host", None)
    return IP(host, int(getattr(value, "port", 0) or 0)) if host else None


def streq(a: str | None, b: str | None) -> bool:
    """VRT_strcmp(a, b) == 0: an unset string equals nothing, not even another unset one."""
    return a is not None and b is not None and a == b


def strcmp(a: str | None, b: str | None) -> int:
    if a is None or b is None:
        return 1
    return (a > b) - (a < b)


# ------------------------------------------------------------------ arithmetic with C semantics


def idiv(a: int, b: int) -> int:
    """INT / INT truncates toward zero, as C does."""
    if b == 0:
        raise VCLFailure("Division by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def imod(a: int, b: int) -> int:
    if b == 0:
        raise VCLFailure("Division by zero")
    return a - b * idiv(a, b)


def fdiv(a: float, b: float) -> float:
    if b == 0:
        raise VCLFailure("Division by zero")
    return a / b


# ------------------------------------------------------------------ regular expressions

_POSIX_CLASSES = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "ascii": "\\x00-\\x7f", "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "\\x21-\\x7e", "lower": "a-z",
    "print": "\\x20-\\x7e", "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v", "upper": "A-Z",
    "word": "\\w", "xdigit": "0-9A-Fa-f",
}
_GLOBAL_FLAGS = re.compile(r"\(\?([imsx]+)\)")


def pcre_to_python(pattern: str) -> str:
    """Translate the PCRE syntax VCL users write into Python `re` syntax.

    Handles inline flags in the middle of a pattern ("^(?i)foo" -> "^(?i:foo)"), POSIX classes
    ([[:upper:]]), \\z / \\Z / \\A, \\h, \\Q...\\E and (?<name>...) groups.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    # Scoped flag groups opened at each nesting level (their flags), closed at the level's end.
    owed: list[list[str]] = [[]]
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "Q":
                end = pattern.find("\\E", i + 2)
                lit = pattern[i + 2: end if end >= 0 else n]
                out.append(re.escape(lit))
                i = (end + 2) if end >= 0 else n
                continue
            if nxt == "z":
                out.append("\\Z")
            elif nxt == "Z":
                out.append("(?=\\n?\\Z)")
            elif nxt == "h":
                out.append("[ \\t]" if not in_class else " \\t")
            elif nxt == "k" and i + 2 < n and pattern[i + 2] in "<{'":
                close = {"<": ">", "{": "}", "'": "'"}[pattern[i + 2]]
                end = pattern.find(close, i + 3)
                out.append("(?P=%s)" % pattern[i + 3:end])
                i = end + 1
                continue
            else:
                out.append(c + nxt)
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                if end > 0:
                    name = pattern[i + 2:end]
                    neg = name.startswith("^")
                    cls = _POSIX_CLASSES.get(name.lstrip("^"))
                    if cls is not None and not neg:
                        out.append(cls)
                        i = end + 2
                        continue
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("\\]")
                i += 1
            continue
        if c == "(":
            m = _GLOBAL_FLAGS.match(pattern, i)
            if m and (i > 0 or len(owed) > 1):
                # Python only allows global flags at the very start: scope them to the rest of
                # the enclosing group instead, which is what PCRE means.
                out.append("(?%s:" % m.group(1))
                owed[-1].append(m.group(1))
                i = m.end()
                continue
            if pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
                out.append("(?P<")
                i += 3
                owed.append([])
                continue
            owed.append([])
            out.append(c)
            i += 1
            continue
        if c == ")":
            if len(owed) > 1:
                out.append(")" * len(owed.pop()))
            out.append(")")
            i += 1
            continue
        if c == "|" and owed[-1]:
            # PCRE carries a flag change into the following alternatives of the same group.
            out.append(")" * len(owed[-1]) + "|" + "".join("(?%s:" % f for f in owed[-1]))
            i += 1
            continue
        out.append(c)
        i += 1
    out.append(")" * len(owed[0]))
    return "".join(out)


class Regex:
    """A VCL regex compiled once at load."""

    __slots__ = ("source", "compiled", "search")

    def __init__(self, source: str) -> None:
        self.source = source
        self.compiled = re.compile(pcre_to_python(source))
        self.search = self.compiled.search

    def match(self, subject: str | None) -> bool:
        return self.search(subject if subject is not None else "") is not None

    def __repr__(self) -> str:
        return f"Regex({self.source!r})"


def check_regex(source: str) -> str | None:
    """None if `source` compiles, else the reason (for a compile-time error)."""
    try:
        re.compile(pcre_to_python(source))
    except re.error as exc:
        return str(exc)
    return None


_SUB_TOKEN = re.compile(r"\\([0-9&\\])")


@lru_cache(maxsize=256)
def _sub_template(sub: str):
    """Split a VCL substitution string into literal parts and group numbers."""
    parts: list[str | int] = []
    pos = 0
    for m in _SUB_TOKEN.finditer(sub):
        if m.start() > pos:
            parts.append(sub[pos:m.start()])
        g = m.group(1)
        if g == "\\":
            parts.append("\\")
        else:
            parts.append(0 if g == "&" else int(g))
        pos = m.end()
    if pos < len(sub):
        parts.append(sub[pos:])
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)  # type: ignore[arg-type]
    return tuple(parts)


def regsub(regex: Regex, subject: str | None, sub: str | None, all_: bool) -> str:
    """regsub()/regsuball(): \\0 or \\& is the match, \\1..\\9 the groups (unmatched groups: "")."""
    subject = subject if subject is not None else ""
    template = _sub_template(sub if sub is not None else "")
    if isinstance(template, str):
        def repl(m: re.Match, t: str = template) -> str:
            return t
    else:
        def repl(m: re.Match, t: tuple = template) -> str:
            out = []
            for p in t:
                if isinstance(p, str):
                    out.append(p)
                else:
                    try:
                        out.append(m.group(p) or "")
                    except IndexError:
                        out.append("")
            return "".join(out)
    return regex.compiled.sub(repl, subject, count=0 if all_ else 1)


# ------------------------------------------------------------------ ACLs


@lru_cache(maxsize=4096)
def _addr_key(addr: str) -> tuple[int, int] | None:
    """(IP version, address as an int) for an address string; IPv4-mapped IPv6 counts as IPv4."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


class Acl:
    """An ACL prepared at load: networks as (version, mask, network) integers, most specific first;
    the first entry that contains the address decides, as in Varnish."""

    __slots__ = ("name", "entries", "log", "_table")

    def __init__(self, name: str, entries: list[tuple[bool, str]], log: bool = False) -> None:
        """entries: (negated, "address/prefix") pairs, already resolved."""
        self.name = name
        nets = [(neg, ipaddress.ip_network(net, strict=False)) for neg, net in entries]
        nets.sort(key=lambda e: (e[1].version, -e[1].prefixlen))
        self.entries = tuple(nets)
        self._table = tuple((net.version, int(net.netmask), int(net.network_address), not neg)
                            for neg, net in nets)
        self.log = log

    def match(self, ip: IP | None) -> bool:
        if ip is None:
            return False
        key = _addr_key(ip.addr)
        if key is None:
            return False
        version, value = key
        for ver, mask, net, result in self._table:
            if ver == version and value & mask == net:
                return result
        return False

    def __str__(self) -> str:
        return self.name


def resolve_acl_entry(addr: str, mask: int | None) -> list[str]:
    """The networks an ACL entry stands for: one literal address, or every address a name resolves to
    (done once at load, like VCC). Raises ValueError if the entry is not valid."""
    try:
        ip = ipaddress.ip_address(addr)
        if mask is not None and mask > ip.max_prefixlen:
            raise ValueError(f"Too wide mask (/{mask}) for IPv{ip.version}")
        return [f"{ip}/{mask if mask is not None else ip.max_prefixlen}"]
    except ValueError:
        if _looks_numeric(addr):
            raise
    try:
        infos = socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise LookupError(f"DNS lookup({addr}): {exc.strerror or exc}") from None
    out = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        prefix = mask if mask is not None else ip.max_prefixlen
        net = f"{ip}/{min(prefix, ip.max_prefixlen)}"
        if net not in out:
            out.append(net)
    return out


def _looks_numeric(addr: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*", addr))


# ------------------------------------------------------------------ misc


def storage_var(ctx, name: str, field: str):
    """storage.NAME.free_space/used_space/happy, from the server's storage when it exposes one."""
    server = getattr(ctx, "server", None)
    getter = getattr(server, "storage_var", None)
    if getter is not None:
        return getter(name, field)
    return True if field == "happy" else 0.0


def fail(message: str) -> None:
    raise VCLFailure(message)


def fmod(a: float, b: float) -> float:
    if b == 0:
        raise VCLFailure("Division by zero")
    return math.fmod(a, b)


def body_set(ctx, text: str) -> None:
    """set resp.body / beresp.body = ...: replace the synthetic body."""
    ctx.synth_body = [text]


def body_add(ctx, text: str) -> None:
    """synthetic(...) and set resp.body += ...: append to the synthetic body."""
    if ctx.synth_body is None:
        ctx.synth_body = [text]
    else:
        ctx.synth_body.append(text)


def hash_data(ctx, value: str | None) -> None:
    """hash_data(): an unset string adds nothing, as in Varnish."""
    if value is None:
        return
    if ctx.hash_parts is None:
        ctx.hash_parts = [value]
    else:
        ctx.hash_parts.append(value)


def ban(ctx, expression: str | None) -> None:
    """ban(): hand the ban expression to the server; errors are logged, not raised (like Varnish)."""
    server = getattr(ctx, "server", None)
    add = getattr(server, "ban", None)
    if add is None:
        ctx.log.append(("VCL_Error", "ban(): no server to add the ban to"))
        return
    try:
        result = add(expression or "")
    except Exception as exc:  # noqa: BLE001 - any ban error is reported in the log, like Varnish
        ctx.log.append(("VCL_Error", f"ban(): {exc}"))
        return
    if isinstance(result, str) and result:
        ctx.log.append(("VCL_Error", f"ban(): {result}"))
